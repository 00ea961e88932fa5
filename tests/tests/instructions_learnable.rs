//! The built-in `instructions` task is what the default fine-tune needs: the real Gemma 3 270M
//! cannot do it (exact match 0 on the validation split: a base model, it repeats the question),
//! and a plain LoRA loop over the data pipeline's batches teaches it in 40 steps (about three
//! minutes on 2 CPU cores). The trainer's end-to-end test checks the same through
//! `automodel-cli finetune`; this one checks the dataset itself.
use std::sync::Arc;
use std::time::Instant;

use automodel_core::CpuAutodiff as A;
use automodel_data::{
    BadSamples, ChatTemplate, Conversation, Dataset, EncodeConfig, Encoder, Loader, LoaderConfig,
    Message, Position, Role, Sample, builtin,
};
use automodel_peft::{LoraConfig, config::Targets};
use automodel_text::generate::TextPrompt;
use automodel_text::{CausalLm, Generate, GenerationConfig, TrainOptions};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::DType;

#[test]
fn lora_learns_the_instruction_task_that_the_base_model_cannot_do() {
    let (steps, lr, bs) = (40, 1e-3, 8);
    let dev = Default::default();
    let (model, tok) =
        automodel::convert::load_gguf::<A>(&automodel_parity::gemma3_270m_path(), &dev, DType::F32)
            .unwrap();
    let cfg = LoraConfig {
        r: 8,
        alpha: 16.0,
        target_modules: Some(Targets::List(
            [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
        )),
        ..Default::default()
    };
    let (mut model, _) = automodel_peft::apply_lora(model, &cfg).unwrap();
    let enc = Arc::new(
        Encoder::new(
            ChatTemplate::gemma(),
            tok.clone(),
            None,
            EncodeConfig::default(),
        )
        .unwrap(),
    );
    let train = Arc::new(
        Dataset::prepare(
            builtin::records("instructions", "train", None).unwrap(),
            &enc,
            BadSamples::Fail,
        )
        .unwrap(),
    );
    let val = builtin::records("instructions", "validation", Some(32)).unwrap();
    let eval = |m: &automodel_text::gemma3::Gemma3ForCausalLM<A>| {
        let inner = m.valid();
        let mut hits = 0;
        for r in &val {
            let Ok(Sample::Chat(c)) = &r.sample else {
                panic!()
            };
            let q = Conversation {
                messages: vec![Message::text(Role::User, c.messages[0].text_content())],
            };
            let text = enc.template.render(&q, true).unwrap();
            let ids: Vec<i64> = tok
                .encode(&text, false)
                .unwrap()
                .into_iter()
                .map(i64::from)
                .collect();
            let stop: Vec<i64> = tok.stop_ids().into_iter().map(i64::from).collect();
            let out = inner
                .generate(
                    &TextPrompt::single(ids),
                    &GenerationConfig::greedy(8, stop.clone()),
                    |_| {},
                )
                .unwrap();
            let generated: Vec<u32> = out.generated[0]
                .iter()
                .filter(|t| !stop.contains(t) && **t != 0)
                .map(|&t| t as u32)
                .collect();
            let pred = tok.decode(&generated, true).unwrap();
            let gold = c.messages[1].text_content();
            if builtin::exact_match(&pred, &gold) {
                hits += 1;
            }
        }
        hits as f64 / val.len() as f64
    };
    let before = eval(&model);
    eprintln!("before: exact match {before:.3}");
    assert!(
        before <= 0.1,
        "the base model should not do the task yet: {before}"
    );
    let loader = Loader::new(
        enc.clone(),
        train,
        LoaderConfig {
            batch_size: bs,
            workers: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
        .init();
    let t0 = Instant::now();
    let mut losses = Vec::new();
    for (step, b) in loader.iter(Position::default()).take(steps).enumerate() {
        let (_, b) = b.unwrap();
        let out = model
            .forward_train(&b.to_device::<A>(&dev), TrainOptions::train())
            .unwrap();
        let loss = out.loss.unwrap().mean();
        let lv: f32 = loss.clone().into_scalar();
        losses.push(lv);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
        if step % 5 == 0 || step + 1 == steps {
            eprintln!(
                "step {step} loss {lv:.4} t {:.1}s",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let after = eval(&model);
    eprintln!("after: exact match {after:.3}");
    assert!(
        losses[steps - 1] < 0.2 * losses[0],
        "the loss falls clearly: {losses:?}"
    );
    // 0.66–0.91 seen (the float order of the CPU kernels moves it); the base model scores 0
    assert!(after >= 0.4, "exact match after {steps} steps: {after}");
}

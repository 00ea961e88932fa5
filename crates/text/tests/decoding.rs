//! KV cache, KV sharing and training-mode behaviour on a random tiny model.

use automodel_core::CpuBackend as B;
use automodel_text::generate::{TextPrompt, ids_tensor, positions_from_mask};
use automodel_text::{
    CausalLm, ForwardOptions, Gemma3nForCausalLM, Gemma3nTextConfig, Generate, GenerationConfig,
    TextError, TrainBatch, TrainOptions,
};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::{DType, Distribution};

fn model() -> Gemma3nForCausalLM<B> {
    let dev = Default::default();
    automodel_core::seed::<B>(&dev, 7);
    let mut m =
        Gemma3nForCausalLM::<B>::init(&Gemma3nTextConfig::tiny(), &dev, DType::F32).unwrap();
    // Switch the per-layer-embedding branch on (HF initialises its scale to zero).
    for l in &mut m.model.layers {
        l.altup.correct_output_scale =
            Param::from_tensor(Tensor::random([64], Distribution::Normal(0.0, 0.5), &dev));
    }
    m
}

fn ids(n: usize) -> Vec<Vec<i64>> {
    vec![
        (0..n as i64).map(|i| 3 + (i * 37) % 250).collect(),
        (0..n as i64).map(|i| 5 + (i * 11) % 240).collect(),
    ]
}

fn flat(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

#[test]
fn chunked_prefill_with_cache_equals_one_pass() {
    let m = model();
    let dev = Default::default();
    let all = ids(14);
    let one = m
        .forward(
            ids_tensor::<B>(&all, &dev),
            None,
            None,
            ForwardOptions::default(),
        )
        .unwrap();
    let want = flat(m.lm_logits(one.model.last_hidden_state));

    let mut cache = m.model.new_cache();
    let mut got = Vec::new();
    for (start, len) in [(0, 9), (9, 1), (10, 4)] {
        let chunk: Vec<Vec<i64>> = all.iter().map(|r| r[start..start + len].to_vec()).collect();
        let out = m
            .model
            .forward(
                ids_tensor::<B>(&chunk, &dev),
                None,
                None,
                Some(&mut cache),
                ForwardOptions::default(),
            )
            .unwrap();
        got.push(m.lm_logits(out.last_hidden_state));
    }
    let got = flat(Tensor::cat(got, 1));
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "cached vs uncached: {diff}");

    // 14 tokens seen; sliding layers (window 8) keep 7 keys, global layers all 14;
    // the two KV-reusing layers own no entry.
    assert_eq!(cache.seq_len(), 14);
    assert_eq!(cache.owned_layers(), 4);
    assert_eq!(cache.layer_len(0), 7);
    assert_eq!(cache.layer_len(1), 14);
    assert_eq!(cache.layer_len(2), 7);
    assert_eq!(cache.layer_len(4), 0);
    assert_eq!(cache.layer_len(5), 0);
}

#[test]
fn greedy_generation_matches_recomputation_and_stops_at_eos() {
    let m = model();
    let dev = Default::default();
    let prompt = ids(11);
    let out = m
        .generate(
            &TextPrompt::new(prompt.clone()),
            &GenerationConfig::greedy(6, vec![]),
            |_| {},
        )
        .unwrap();
    assert_eq!(out.generated[0].len(), 6);
    // Every generated token is the argmax of an uncached forward over the sequence so far.
    let seq: Vec<Vec<i64>> = out
        .sequences
        .iter()
        .map(|r| r[..r.len() - 1].to_vec())
        .collect();
    let full = m
        .forward(
            ids_tensor::<B>(&seq, &dev),
            None,
            None,
            ForwardOptions::default(),
        )
        .unwrap();
    let logits = full.logits.narrow(1, 10, 6);
    let best = logits
        .argmax(2)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap();
    let generated: Vec<i64> = out.generated.iter().flatten().copied().collect();
    assert_eq!(best, generated);

    // Stopping: the first generated id of row 0 as eos ends row 0; row 1 continues until done.
    let eos = out.generated[0][0];
    let stopped = m
        .generate(
            &TextPrompt::new(prompt),
            &GenerationConfig::greedy(6, vec![eos]),
            |_| {},
        )
        .unwrap();
    assert_eq!(stopped.generated[0][0], eos);
    if stopped.generated[0].len() > 1 {
        assert!(
            stopped.generated[0][1..].iter().all(|&t| t == 0),
            "finished rows are padded"
        );
    }
}

#[test]
fn left_padded_batch_decodes_like_the_unpadded_row() {
    let m = model();
    let short: Vec<i64> = ids(6)[0].clone();
    let alone = m
        .generate(
            &TextPrompt::single(short.clone()),
            &GenerationConfig::greedy(4, vec![]),
            |_| {},
        )
        .unwrap();
    let long = ids(9)[1].clone();
    let padded = [vec![0, 0, 0], short.clone()].concat();
    let mask = vec![[vec![0; 3], vec![1; 6]].concat(), vec![1; 9]];
    assert_eq!(
        positions_from_mask(&mask)[0],
        vec![0, 0, 0, 0, 1, 2, 3, 4, 5]
    );
    let batch = m
        .generate(
            &TextPrompt::new(vec![padded, long]).with_mask(mask),
            &GenerationConfig::greedy(4, vec![]),
            |_| {},
        )
        .unwrap();
    assert_eq!(batch.generated[0], alone.generated[0]);
}

#[test]
fn kv_sharing_is_active_without_a_cache() {
    // Changing the producer's K projection must change what the reusing layers compute.
    let mut m = model();
    let dev = Default::default();
    let x = ids_tensor::<B>(&ids(10), &dev);
    let opts = ForwardOptions {
        trace: true,
        ..Default::default()
    };
    let before = m.forward(x.clone(), None, None, opts).unwrap();
    let k = m.model.layers[2].self_attn.k_proj.as_mut().unwrap();
    k.weight = Param::from_tensor(k.weight.val() * 2.0 + 0.1);
    let after = m.forward(x, None, None, opts).unwrap();
    let d = |name: &str| {
        let a = flat(before.model.traces[name].clone());
        let b = flat(after.model.traces[name].clone());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(
        d("trace.text.layer4.attn_out") > 1e-4,
        "layer 4 reuses layer 2's K/V"
    );
    // Layers before the producer are untouched.
    assert_eq!(d("trace.text.layer1.attn_out"), 0.0);
}

#[test]
fn training_mode_clips_altup_coefficients() {
    let mut m = model();
    let dev = Default::default();
    let x = ids_tensor::<B>(&ids(8), &dev);
    let big = Tensor::<B, 2>::random([4, 16], Distribution::Normal(0.0, 400.0), &dev);
    m.model.layers[0].altup.prediction_coefs.weight = Param::from_tensor(big.clone());
    let eval = flat(
        m.forward(x.clone(), None, None, ForwardOptions::default())
            .unwrap()
            .logits,
    );
    let train = flat(
        m.forward(
            x.clone(),
            None,
            None,
            ForwardOptions {
                training: true,
                ..Default::default()
            },
        )
        .unwrap()
        .logits,
    );
    m.model.layers[0].altup.prediction_coefs.weight = Param::from_tensor(big.clamp(-120.0, 120.0));
    let clamped = flat(
        m.forward(x, None, None, ForwardOptions::default())
            .unwrap()
            .logits,
    );
    assert_ne!(eval, train);
    assert_eq!(train, clamped);
}

#[test]
fn out_of_range_ids_are_an_error() {
    let m = model();
    let x = ids_tensor::<B>(&[vec![1, 2, 272]], &Default::default());
    match m.forward(x, None, None, ForwardOptions::default()) {
        Err(TextError::Input(msg)) => assert!(msg.contains("[0, 272)"), "{msg}"),
        other => panic!("expected an input error, got {:?}", other.map(|_| ())),
    }
}

/// A packed row (two samples, segment ids 1 and 2, positions restarting) gives each sample the
/// loss and logits it has alone: attention never crosses samples.
#[test]
fn packed_samples_train_as_if_alone() {
    let m = model();
    let dev = Default::default();
    let all = ids(12);
    let (a, b) = (all[0][..5].to_vec(), all[1][..7].to_vec());
    let t = |rows: Vec<Vec<i64>>| ids_tensor::<B>(&rows, &dev);
    let alone = |x: &Vec<i64>| {
        let out = m
            .forward_train(
                &TrainBatch::text(t(vec![x.clone()]), t(vec![x.clone()])),
                TrainOptions {
                    return_logits: true,
                    ..TrainOptions::eval()
                },
            )
            .unwrap();
        let sum = out.loss.unwrap().sum.into_scalar().elem::<f32>();
        (sum, flat(out.logits.unwrap()))
    };
    let ((sa, la), (sb, lb)) = (alone(&a), alone(&b));
    let packed: Vec<i64> = [a.clone(), b.clone()].concat();
    // the first token of the second sample is not predicted from the first sample
    let mut labels = packed.clone();
    labels[a.len()] = -100;
    let segments: Vec<i64> = [vec![1; a.len()], vec![2; b.len()]].concat();
    let positions: Vec<i64> = (0..a.len() as i64).chain(0..b.len() as i64).collect();
    let batch = TrainBatch {
        attention_mask: t(vec![segments]),
        position_ids: Some(t(vec![positions])),
        ..TrainBatch::text(t(vec![packed]), t(vec![labels]))
    };
    let out = m
        .forward_train(
            &batch,
            TrainOptions {
                return_logits: true,
                ..TrainOptions::eval()
            },
        )
        .unwrap();
    let loss = out.loss.unwrap();
    assert_eq!(loss.num_label_tokens, a.len() - 1 + b.len() - 1);
    let sum = loss.sum.into_scalar().elem::<f32>();
    assert!(
        (sum - (sa + sb)).abs() <= 1e-4 * sum.abs(),
        "{sum} vs {sa} + {sb}"
    );
    let logits = flat(out.logits.unwrap());
    let joined: Vec<f32> = [la, lb].concat();
    let diff = logits
        .iter()
        .zip(&joined)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "packed vs alone: {diff}");
}

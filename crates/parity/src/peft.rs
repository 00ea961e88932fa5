//! The LoRA cases `make_peft_golden.py` writes: the Python-written adapter loaded onto the base
//! model, then the adapted logits and loss, the gradient of every `lora_A`/`lora_B` (by PEFT
//! key), the merged weights and the merged model's logits; for the real 270M the loss, last
//! logits, top-10 ids and the gradients given. (The `steps.*` tensors check the trainer's
//! optimizer, not the adapter.)

use std::path::Path;

use automodel::{ForwardOptions, Gemma3nForConditionalGeneration};
use automodel_core::AutodiffBackend;
use automodel_core::tree;
use automodel_peft::files::PEFT_PREFIX;
use automodel_peft::{load_adapter, merge};
use automodel_text::generate::ids_tensor;
use automodel_text::{CausalLm, TrainBatch, TrainOptions};
use burn::module::AutodiffModule;
use burn::tensor::DType;

use crate::compare::{Check, Tolerance, compare};
use crate::gemma3::REL_MAX;
use crate::multimodal::{inputs, train_batch};
use crate::tensors::{check, data_values, ids, reference, values};
use crate::text::{GRAD, LOGITS, LOSS};
use crate::{ParityError, open};

/// Merged weights: "1e-5 absolute".
const MERGED: Tolerance = Tolerance::Elementwise {
    atol: 1e-5,
    rtol: 0.0,
};

/// Every `grad.<adapter key>` of the reference against ours; no adapter matrix may lack one.
fn lora_gradient_checks(
    got: &automodel_core::weights::TensorMap,
    outputs: &automodel_core::weights::SafeTensorsFiles,
) -> Result<Vec<Check>, ParityError> {
    let mut checks = Vec::new();
    for name in outputs.names().filter(|n| n.starts_with("grad.")) {
        let key = &name["grad.".len()..];
        checks.push(match got.get(key) {
            Some(g) => check(name, data_values(g.clone()), outputs, GRAD)?,
            None => Check::failed(name, GRAD, "no gradient for this adapter matrix"),
        });
    }
    for key in got.keys() {
        if !outputs.contains(&format!("grad.{key}")) {
            checks.push(Check::failed(
                format!("grad.{key}"),
                GRAD,
                "a gradient the reference does not have (a frozen weight trained?)",
            ));
        }
    }
    Ok(checks)
}

/// `lora_text`, `lora_multimodal`: the tiny Gemma 3n with the Python-written adapter.
pub fn tiny<B: AutodiffBackend>(dir: &Path, device: &B::Device) -> Result<Vec<Check>, ParityError> {
    let outputs = open(dir, "outputs.safetensors")?;
    let base = Gemma3nForConditionalGeneration::<B>::from_pretrained(dir, device, DType::F32)?;
    let (model, cfg, _, _) = load_adapter(base, dir)?;
    let input = inputs::<B>(&open(dir, "inputs.safetensors")?, device, true)?;
    let out = model.forward(&input, ForwardOptions::default())?;
    let mut checks = vec![check("logits", values(out.logits), &outputs, LOGITS)?];
    let loss = model
        .forward_train(&train_batch(&input, device), TrainOptions::gradients())?
        .loss
        .map(|l| l.mean())
        .ok_or_else(|| ParityError::Case {
            path: dir.into(),
            message: "no labelled token".into(),
        })?;
    checks.push(check(
        "loss",
        (values(loss.clone()).0, vec![]),
        &outputs,
        LOSS,
    )?);
    if outputs.contains("steps.loss.0") {
        checks.extend(adamw_steps(
            model.clone(),
            &train_batch(&input, device),
            &outputs,
        )?);
    }
    let grads = loss.backward();
    checks.extend(lora_gradient_checks(
        &tree::hf_grads(&model, PEFT_PREFIX, &grads),
        &outputs,
    )?);

    let merged = merge(model.valid(), &cfg);
    let weights = tree::hf_tensors(&merged, "");
    for name in outputs.names().filter(|n| n.starts_with("merged.")) {
        let key = &name["merged.".len()..];
        checks.push(match weights.get(key) {
            Some(w) => check(name, data_values(w.clone()), &outputs, MERGED)?,
            None => Check::failed(name, MERGED, "the merged model has no such weight"),
        });
    }
    if weights.keys().any(|k| k.contains(".lora_")) {
        checks.push(Check::failed(
            "merged",
            MERGED,
            "adapters remain after the merge",
        ));
    }
    let inner_input = automodel::MultimodalInput::<B::InnerBackend> {
        input_ids: input.input_ids.clone(),
        attention_mask: input.attention_mask.clone(),
        pixel_values: input.pixel_values.clone().map(|p| p.inner()),
        audio: input.audio.clone().map(|a| automodel::AudioInput {
            features: a.features.inner(),
            valid: a.valid,
        }),
        labels: None,
    };
    let ml = merged
        .forward(&inner_input, ForwardOptions::default())?
        .logits;
    checks.push(check("merged_logits", values(ml), &outputs, LOGITS)?);
    Ok(checks)
}

/// Losses and pre-clip norms of the optimizer steps: "1e-4 relative".
const STEP_SCALAR: Tolerance = Tolerance::Elementwise {
    atol: 0.0,
    rtol: 1e-4,
};

/// The `steps.*` of `lora_text`: the trainer's optimizer pieces (AdamW, global-norm clipping at
/// 1.0, linear warm-up over 3 steps from `lr·(s+1)/3`) for as many steps as the reference took,
/// on the same batch, from the saved adapter. The losses and pre-clip norms are compared at each
/// step; the final LoRA tensors, over all of them together, must have at least 99.9 % of their
/// elements within 1e-4 of their tensor's largest value and every element within 0.06 (twice the
/// summed learning rates: an element whose gradient is at the float32 noise floor may step the
/// other way).
fn adamw_steps<B: AutodiffBackend>(
    mut model: Gemma3nForConditionalGeneration<B>,
    batch: &TrainBatch<B>,
    outputs: &automodel_core::weights::SafeTensorsFiles,
) -> Result<Vec<Check>, ParityError> {
    use automodel_train::optim::{Optimizer, OptimizerConfig, clip_factor, global_grad_norm};
    use automodel_train::schedule::{LrSchedule, LrSchedulerConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::ElementConversion;
    let steps = outputs
        .names()
        .filter(|n| n.starts_with("steps.loss."))
        .count();
    let lr = 1e-2;
    let config = OptimizerConfig {
        lr,
        weight_decay: 0.01,
        ..OptimizerConfig::default()
    };
    let fail = |m: String| ParityError::Case {
        path: "lora_text".into(),
        message: m,
    };
    let mut opt = Optimizer::<B>::new(config, "").map_err(|e| fail(e.to_string()))?;
    let schedule = LrSchedule::new(
        lr,
        LrSchedulerConfig {
            lr_warmup_steps: 3,
            ..Default::default()
        },
        steps,
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut checks = Vec::new();
    for s in 0..steps {
        let loss = model
            .forward_train(batch, TrainOptions::gradients())?
            .loss
            .ok_or_else(|| fail("no labelled token".into()))?
            .mean();
        let lv: f64 = loss.clone().into_scalar().elem();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let norm = global_grad_norm(&model, &grads);
        for (name, v) in [("loss", lv), ("grad_norm", norm)] {
            checks.push(check(
                &format!("steps.{name}.{s}"),
                (vec![v], vec![]),
                outputs,
                STEP_SCALAR,
            )?);
        }
        model = opt.step(
            schedule.at(s),
            model,
            &mut grads,
            clip_factor(norm, Some(1.0)),
        );
    }
    let got = tree::hf_tensors(&model, PEFT_PREFIX);
    let (mut total, mut close, mut worst, mut worst_ref) = (0usize, 0usize, 0f64, 0f64);
    let mut missing = Vec::new();
    for name in outputs.names().filter(|n| n.starts_with("steps.final.")) {
        let key = &name["steps.final.".len()..];
        let Some(g) = got.get(key) else {
            missing.push(key.to_string());
            continue;
        };
        let (a, _) = data_values(g.clone());
        let (b, _) = reference(outputs, name)?;
        let max_ref = b.iter().fold(0f64, |m, &x| m.max(x.abs()));
        worst_ref = worst_ref.max(max_ref);
        for (x, y) in a.iter().zip(&b) {
            let e = (*x - *y).abs();
            total += 1;
            close += usize::from(e <= 1e-4 * max_ref);
            worst = worst.max(e);
        }
    }
    let share = close as f64 / total.max(1) as f64;
    checks.push(Check {
        name: format!("steps.final.* ({total} values)"),
        max_abs_err: worst,
        max_ref: worst_ref,
        tolerance: Tolerance::Elementwise {
            atol: 0.06,
            rtol: 0.0,
        },
        passed: missing.is_empty() && total > 0 && share >= 0.999 && worst <= 0.06,
        note: Some(if missing.is_empty() {
            format!(
                "{:.3} % within 1e-4·max|ref| (≥ 99.9 % needed)",
                100.0 * share
            )
        } else {
            format!(
                "no such LoRA tensor after the steps: {}",
                missing.join(", ")
            )
        }),
    });
    Ok(checks)
}

/// `lora_gemma3_270m`: the real Gemma 3 270M (`gguf`) with the Python-written adapter.
pub fn gemma3_270m<B: AutodiffBackend>(
    dir: &Path,
    gguf: &Path,
    device: &B::Device,
) -> Result<Vec<Check>, ParityError> {
    let outputs = open(dir, "outputs.safetensors")?;
    let base = crate::gemma3::load::<B>(gguf, device)?;
    let (model, _, _, _) = load_adapter(base, dir)?;
    let prompt = ids(&outputs, "input_ids")?;
    let t = prompt.len();
    let ids_t = ids_tensor::<B>(std::slice::from_ref(&prompt), device);
    let out = model.forward_train(
        &TrainBatch::text(ids_t.clone(), ids_t),
        TrainOptions {
            return_logits: true,
            ..TrainOptions::gradients()
        },
    )?;
    let loss = out.loss.expect("labels = ids").mean();
    let logits = out.logits.expect("asked for").inner();
    let v = logits.dims()[2];
    let mut checks = vec![check(
        "loss",
        (values(loss.clone().inner()).0, vec![]),
        &outputs,
        crate::gemma3::LOSS,
    )?];
    let (all, _) = values(logits);
    let last = all[(t - 1) * v..t * v].to_vec();
    let (want, ws) = reference(&outputs, "last_logits")?;
    checks.push(compare("last_logits", &last, &[v], &want, &ws, REL_MAX));
    let got_top = crate::gemma3::top10(&all, t, v);
    let (want_top, ts) = reference(&outputs, "top10_ids")?;
    checks.push(compare(
        "top10_ids",
        &got_top,
        &[t, 10],
        &want_top,
        &ts,
        Tolerance::Exact,
    ));
    let grads = loss.backward();
    let got = tree::hf_grads(&model, PEFT_PREFIX, &grads);
    for name in outputs.names().filter(|n| n.starts_with("grad.")) {
        let key = &name["grad.".len()..];
        checks.push(match got.get(key) {
            Some(g) => check(name, data_values(g.clone()), &outputs, REL_MAX)?,
            None => Check::failed(name, REL_MAX, "no gradient for this adapter matrix"),
        });
    }
    Ok(checks)
}

//! The LoRA cases `make_peft_golden.py` writes: the Python-written adapter loaded onto the base
//! model, then the adapted logits and loss, the gradient of every `lora_A`/`lora_B` (by PEFT
//! key), the merged weights and the merged model's logits; for the real 270M the loss, last
//! logits, top-10 ids and the gradients given. (The `steps.*` tensors check the trainer's
//! optimizer, not the adapter.)

use std::path::Path;

use automodel_core::AutodiffBackend;
use automodel_core::tree;
use automodel_gemma3n::Gemma3nForConditionalGeneration;
use automodel_peft::files::PEFT_PREFIX;
use automodel_peft::{load_adapter, merge};
use automodel_text::ForwardOptions;
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
        let settings = AdamwSteps::from_meta(dir, &crate::read_meta(dir)?)?;
        checks.extend(adamw_steps(
            model.clone(),
            &train_batch(&input, device),
            &outputs,
            &settings,
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
    let inner_input = automodel_gemma3n::MultimodalInput::<B::InnerBackend> {
        input_ids: input.input_ids.clone(),
        attention_mask: input.attention_mask.clone(),
        pixel_values: input.pixel_values.clone().map(|p| p.inner()),
        audio: input.audio.clone().map(|a| automodel_gemma3n::AudioInput {
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

/// The optimizer settings of a case's `steps.*`, from its `meta.json` (`adamw`): nothing about
/// the public case is assumed.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamwSteps {
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// Global-norm clipping (`None`: none).
    pub clip_grad_norm: Option<f64>,
    /// Linear warm-up `lr·(s+1)/warmup_steps` at step `s < warmup_steps`, then constant.
    pub warmup_steps: usize,
    pub steps: usize,
    /// The rate the reference used at each step (`meta.json`'s `steps[].lr`), when recorded.
    pub lrs: Vec<f64>,
}

impl AdamwSteps {
    /// Read `meta.json`'s `adamw` object; every field is required, with its type, and a missing
    /// or mistyped one is named.
    pub fn from_meta(dir: &Path, meta: &serde_json::Value) -> Result<Self, ParityError> {
        let fail = |m: String| ParityError::Case {
            path: dir.join("meta.json"),
            message: m,
        };
        let a = meta
            .get("adamw")
            .filter(|a| a.is_object())
            .ok_or_else(|| fail("the case has `steps.*` tensors but no `adamw` object".into()))?;
        let num = |k: &str| {
            a.get(k)
                .and_then(|v| v.as_f64())
                .filter(|v| v.is_finite())
                .ok_or_else(|| fail(format!("`adamw.{k}`: expected a finite number")))
        };
        let count = |k: &str| {
            a.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| fail(format!("`adamw.{k}`: expected a whole number ≥ 0")))
        };
        if let Some(name) = a.get("name").and_then(|v| v.as_str())
            && name != "adamw"
        {
            return Err(fail(format!(
                "`adamw.name` is `{name}`; only `adamw` is checked"
            )));
        }
        let betas = match a
            .get("betas")
            .and_then(|v| v.as_array())
            .map(|b| b.as_slice())
        {
            Some([b1, b2]) => match (b1.as_f64(), b2.as_f64()) {
                (Some(b1), Some(b2)) => [b1, b2],
                _ => return Err(fail("`adamw.betas`: expected two numbers".into())),
            },
            _ => return Err(fail("`adamw.betas`: expected two numbers".into())),
        };
        let clip_grad_norm = match a.get("clip_grad_norm") {
            Some(serde_json::Value::Null) => None,
            Some(_) => Some(num("clip_grad_norm")?),
            None => {
                return Err(fail(
                    "`adamw.clip_grad_norm`: expected a number, or null for no clipping".into(),
                ));
            }
        };
        Ok(Self {
            lr: num("lr")?,
            betas,
            eps: num("eps")?,
            weight_decay: num("weight_decay")?,
            clip_grad_norm,
            warmup_steps: count("warmup_steps")?,
            steps: count("steps")?,
            lrs: match meta.get("steps").and_then(|v| v.as_array()) {
                None => Vec::new(),
                Some(steps) => steps
                    .iter()
                    .enumerate()
                    .map(|(i, st)| {
                        st.get("lr")
                            .and_then(|v| v.as_f64())
                            .ok_or_else(|| fail(format!("`steps[{i}].lr`: expected a number")))
                    })
                    .collect::<Result<_, _>>()?,
            },
        })
    }
}

/// The `steps.*` of a LoRA case: the trainer's optimizer pieces (AdamW, global-norm clipping,
/// linear warm-up, with the settings of `meta.json`) for the steps the reference took, on the
/// same batch, from the saved adapter. The losses and pre-clip norms are compared at each step;
/// the final LoRA tensors, over all of them together, must have at least 99.9 % of their
/// elements within 1e-4 of their tensor's largest value and every element within twice the
/// summed learning rates (an element whose gradient is at the float32 noise floor may step the
/// other way; AdamW moves an element by at most about the rate per step).
fn adamw_steps<B: AutodiffBackend>(
    mut model: Gemma3nForConditionalGeneration<B>,
    batch: &TrainBatch<B>,
    outputs: &automodel_core::weights::SafeTensorsFiles,
    settings: &AdamwSteps,
) -> Result<Vec<Check>, ParityError> {
    use automodel_train::optim::{Optimizer, OptimizerConfig, clip_factor, global_grad_norm};
    use automodel_train::schedule::{LrSchedule, LrSchedulerConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::ElementConversion;
    let fail = |m: String| ParityError::Case {
        path: "steps".into(),
        message: m,
    };
    let steps = outputs
        .names()
        .filter(|n| n.starts_with("steps.loss."))
        .count();
    if steps != settings.steps {
        return Err(fail(format!(
            "meta.json's `adamw.steps` is {}, the outputs hold {steps} `steps.loss.*`",
            settings.steps
        )));
    }
    let lr = settings.lr;
    let config = OptimizerConfig {
        lr,
        betas: settings.betas,
        eps: settings.eps,
        weight_decay: settings.weight_decay,
        ..OptimizerConfig::default()
    };
    let mut opt = Optimizer::<B>::new(config, "").map_err(|e| fail(e.to_string()))?;
    let schedule = LrSchedule::new(
        lr,
        LrSchedulerConfig {
            lr_warmup_steps: settings.warmup_steps,
            ..Default::default()
        },
        steps,
    )
    .map_err(|e| fail(e.to_string()))?;
    let final_atol = 2.0 * (0..steps).map(|s| schedule.at(s)).sum::<f64>();
    let mut checks = Vec::new();
    for (s, &want) in settings.lrs.iter().enumerate() {
        let got = schedule.at(s);
        let err = (got - want).abs();
        checks.push(Check {
            name: format!("steps.lr.{s}"),
            max_abs_err: err,
            max_ref: want.abs(),
            tolerance: STEP_SCALAR,
            passed: s < steps && err <= 1e-4 * want.abs(),
            note: (s >= steps).then(|| "meta.json lists more steps than were taken".into()),
            open: None,
        });
    }
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
            clip_factor(norm, settings.clip_grad_norm),
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
            atol: final_atol,
            rtol: 0.0,
        },
        passed: missing.is_empty() && total > 0 && share >= 0.999 && worst <= final_atol,
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
        open: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn public_meta() -> serde_json::Value {
        let dir = crate::golden_peft_dir_for_tests().join("lora_text");
        crate::read_meta(&dir).unwrap()
    }

    #[test]
    fn the_steps_settings_come_from_meta_json() {
        let dir = Path::new("case");
        let s = AdamwSteps::from_meta(dir, &public_meta()).unwrap();
        assert_eq!(
            (s.lr, s.betas, s.eps, s.weight_decay, s.clip_grad_norm),
            (1e-2, [0.9, 0.999], 1e-8, 0.01, Some(1.0))
        );
        assert_eq!((s.warmup_steps, s.steps, s.lrs.len()), (3, 4, 4));

        // other settings are taken as written
        let mut meta = public_meta();
        meta["adamw"]["lr"] = 5e-3.into();
        meta["adamw"]["clip_grad_norm"] = serde_json::Value::Null;
        meta["adamw"]["warmup_steps"] = 0.into();
        let s = AdamwSteps::from_meta(dir, &meta).unwrap();
        assert_eq!((s.lr, s.clip_grad_norm, s.warmup_steps), (5e-3, None, 0));

        // a missing or mistyped setting is named, never replaced by a default
        for (key, bad) in [
            ("eps", serde_json::Value::Null),
            ("betas", serde_json::json!([0.9])),
            ("warmup_steps", serde_json::json!(-1)),
            ("lr", serde_json::json!("0.01")),
        ] {
            let mut meta = public_meta();
            meta["adamw"][key] = bad;
            let err = AdamwSteps::from_meta(dir, &meta).unwrap_err().to_string();
            assert!(err.contains(&format!("adamw.{key}")), "{key}: {err}");
        }
        let mut meta = public_meta();
        meta.as_object_mut().unwrap().remove("adamw");
        let err = AdamwSteps::from_meta(dir, &meta).unwrap_err().to_string();
        assert!(err.contains("no `adamw` object"), "{err}");
    }

    /// The same case with another learning rate in `meta.json`: the harness steps with it, so
    /// the losses after the first step and the rates no longer match the reference.
    #[test]
    fn a_case_is_stepped_with_its_own_learning_rate() {
        type A = automodel_core::CpuAutodiff;
        let src = crate::golden_peft_dir_for_tests().join("lora_text");
        let tmp = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
        let dev = Default::default();
        let failed = |dir: &Path| -> Vec<String> {
            tiny::<A>(dir, &dev)
                .unwrap()
                .into_iter()
                .filter(|c| !c.passed)
                .map(|c| c.name)
                .collect()
        };
        assert_eq!(failed(tmp.path()), Vec::<String>::new());
        let mut meta = crate::read_meta(tmp.path()).unwrap();
        meta["adamw"]["lr"] = 2e-2.into();
        std::fs::write(tmp.path().join("meta.json"), meta.to_string()).unwrap();
        let f = failed(tmp.path());
        assert!(f.contains(&"steps.lr.0".to_string()), "{f:?}");
        assert!(f.contains(&"steps.loss.1".to_string()), "{f:?}");
        assert!(!f.contains(&"steps.loss.0".to_string()), "{f:?}");
    }
}

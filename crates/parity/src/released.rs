//! The `released` case: Gemma 3n at its released widths (`reference/make_released_golden.py`),
//! weights from the counter formula on both sides (no weights in the folder). float32: the loss,
//! the last positions' logits, the last hidden state, both towers and the merged features, and
//! the gradients of the tensors `meta.json` lists as `trainable` (everything else frozen, as in
//! the reference). bfloat16 (where the device has it): the same outputs against PyTorch's
//! bf16-rounded weights computed in float32, within twice PyTorch's own bf16 spread.

use std::collections::BTreeSet;
use std::path::Path;

use automodel_core::AutodiffBackend;
use automodel_core::Backend;
use automodel_core::tree;
use automodel_core::weights::{COUNTER_FORMULA, SafeTensorsFiles};
use automodel_gemma3n::{ConditionalOutput, Gemma3nConfig, Gemma3nForConditionalGeneration};
use automodel_text::{CausalLm, ForwardOptions, TrainOptions};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::DType;

use crate::compare::{Check, Tolerance, compare};
use crate::multimodal::{inputs, shared_output, train_batch};
use crate::tensors::{Values, check, data_values, output_check, reference, values};
use crate::text::{EMBED, GRAD, HIDDEN, LOGITS, LOSS, string_list};
use crate::{ParityError, open, read_meta};

/// The outputs compared in bfloat16, against `bf16_fp32_compute.<name>` (PyTorch's distance
/// to it is `meta.json`'s `bf16.spread.<name>`).
const BF16_OUTPUTS: [&str; 4] = ["loss", "logits_tail", "image_features", "audio_features"];
/// Ours may be this many times further from the fp32 computation than PyTorch's bf16 is.
const BF16_SPREAD_FACTOR: f64 = 2.0;
/// bfloat16 outputs that fail and are not explained yet (issue 46): printed `[OPEN]` with their
/// numbers on every run. Measured 2026-12-08: our bf16 logits tail is 3.07 from the fp32
/// computation where PyTorch's eager and SDPA bf16 runs are 1.02 and 1.24 (the loss and both
/// features are within PyTorch's spread; the float32 case matches to 1.1e-4; a bf16 matmul of
/// K = 8192 is within half an output ulp).
const OPEN: [(&str, &str); 1] = [(
    "logits_tail",
    "issue 46: bf16 logits 2.5x further from fp32 than PyTorch's bf16, cause not found yet",
)];

fn case_error(dir: &Path, message: impl Into<String>) -> ParityError {
    ParityError::Case {
        path: dir.join("meta.json"),
        message: message.into(),
    }
}

/// The seed of the counter-formula weights, refusing another formula.
fn counter_seed(dir: &Path, meta: &serde_json::Value) -> Result<u64, ParityError> {
    let formula = meta.pointer("/weights/formula").and_then(|v| v.as_str());
    if formula != Some(COUNTER_FORMULA) {
        return Err(case_error(
            dir,
            format!("`weights.formula` must be \"{COUNTER_FORMULA}\", found {formula:?}"),
        ));
    }
    meta.pointer("/weights/seed")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| case_error(dir, "`weights.seed` (unsigned integer) is missing"))
}

/// One output of ours by its reference name.
fn output_values<B: Backend>(
    name: &str,
    out: &ConditionalOutput<B>,
    loss: Option<&Tensor<B, 1>>,
    tail: usize,
) -> Option<Values> {
    match name {
        "loss" => loss.map(|l| (values(l.clone()).0, vec![])),
        "logits_tail" => {
            let t = out.logits.dims()[1];
            Some(values(out.logits.clone().narrow(
                1,
                t - tail.min(t),
                tail.min(t),
            )))
        }
        n => shared_output(n, out).flatten(),
    }
}

fn tolerance(name: &str) -> Tolerance {
    match name {
        "loss" => LOSS,
        "logits_tail" => LOGITS,
        "last_hidden_state" => HIDDEN,
        "audio_tower_mask" => Tolerance::Exact,
        _ => EMBED,
    }
}

/// `released`: float32 forward and backward, then bfloat16 forward.
pub fn run<B: AutodiffBackend>(dir: &Path, device: &B::Device) -> Result<Vec<Check>, ParityError> {
    let meta = read_meta(dir)?;
    let seed = counter_seed(dir, &meta)?;
    let tail =
        meta.get("logits_tail_positions")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| case_error(dir, "`logits_tail_positions` is missing"))? as usize;
    let case = Case {
        cfg: Gemma3nConfig::from_file(dir.join("config.json"))?,
        inputs: open(dir, "inputs.safetensors")?,
        outputs: open(dir, "outputs.safetensors")?,
        dir: dir.to_path_buf(),
        seed,
        tail,
        meta,
    };
    let mut checks = float32::<B>(&case, device)?;
    match automodel_core::device::check_dtype::<B>(device, DType::BF16) {
        Ok(()) => checks.extend(bfloat16::<B::InnerBackend>(&case, device)?),
        Err(e) => tracing::warn!("{}: bfloat16 part skipped: {e}", dir.display()),
    }
    Ok(checks)
}

/// What both parts read: the folder, its config, the counter seed, the logits tail length,
/// `meta.json`, the inputs and the reference outputs.
struct Case {
    dir: std::path::PathBuf,
    cfg: Gemma3nConfig,
    seed: u64,
    tail: usize,
    meta: serde_json::Value,
    inputs: SafeTensorsFiles,
    outputs: SafeTensorsFiles,
}

fn float32<B: AutodiffBackend>(case: &Case, device: &B::Device) -> Result<Vec<Check>, ParityError> {
    let (dir, cfg, seed, tail) = (case.dir.as_path(), &case.cfg, case.seed, case.tail);
    let (meta, inputs_file, outputs) = (&case.meta, &case.inputs, &case.outputs);
    let trainable = string_list(meta, "trainable");
    if trainable.is_empty() {
        return Err(case_error(
            dir,
            "`trainable` (the gradients saved) is empty",
        ));
    }
    let model =
        Gemma3nForConditionalGeneration::<B>::from_counter_weights(cfg, seed, device, DType::F32)?;
    let model = tree::set_trainable(model, "", |k| trainable.contains(k));
    // the outputs without autodiff (no graph kept), then the loss with it
    let mut checks = Vec::new();
    {
        let inner = model.valid();
        let input = inputs::<B::InnerBackend>(inputs_file, device, true)?;
        let out = inner.forward(&input, ForwardOptions::default())?;
        for name in outputs
            .names()
            .filter(|n| !n.starts_with("grad.") && !n.starts_with("bf16") && *n != "loss")
        {
            let got = output_values(name, &out, None, tail);
            checks.push(output_check(name, got, outputs, tolerance(name))?);
        }
    }
    let input = inputs::<B>(inputs_file, device, true)?;
    let loss = model
        .forward_train(&train_batch(&input, device), TrainOptions::gradients())?
        .loss
        .map(|l| l.mean());
    let got = loss.clone().map(|l| (values(l).0, vec![]));
    checks.push(output_check("loss", got, outputs, LOSS)?);
    let loss = loss.ok_or_else(|| case_error(dir, "no labelled token"))?;
    let grads = loss.backward();
    let got = tree::hf_grads(&model, "", &grads);
    let ours: BTreeSet<String> = tree::param_infos(&model, "")
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| p.key)
        .collect();
    for key in &trainable {
        let name = format!("grad.{key}");
        checks.push(match got.get(key) {
            Some(g) => check(&name, data_values(g.clone()), outputs, GRAD)?,
            None if !ours.contains(key) => {
                Check::failed(&name, GRAD, "the model has no such trainable parameter")
            }
            None => Check::failed(&name, GRAD, "no gradient reached this parameter"),
        });
    }
    Ok(checks)
}

fn bfloat16<B: Backend>(case: &Case, device: &B::Device) -> Result<Vec<Check>, ParityError> {
    let (dir, cfg, seed, tail) = (case.dir.as_path(), &case.cfg, case.seed, case.tail);
    let (meta, inputs_file, outputs) = (&case.meta, &case.inputs, &case.outputs);
    let model =
        Gemma3nForConditionalGeneration::<B>::from_counter_weights(cfg, seed, device, DType::BF16)?;
    let input = inputs::<B>(inputs_file, device, true)?;
    let out = model.forward(&input, ForwardOptions::default())?;
    let loss = model
        .forward_train(&train_batch(&input, device), TrainOptions::default())?
        .loss
        .map(|l| l.mean());
    let mut checks = Vec::new();
    for name in BF16_OUTPUTS {
        let spread = meta
            .pointer(&format!("/bf16/spread/{name}/max_abs"))
            .and_then(|v| v.as_f64())
            .ok_or_else(|| case_error(dir, format!("`bf16.spread.{name}.max_abs` is missing")))?;
        let tol = Tolerance::RelMax {
            rel: 0.0,
            abs: BF16_SPREAD_FACTOR * spread,
        };
        let label =
            format!("bf16.{name} (vs bf16 weights in fp32; PyTorch's bf16 is {spread:.3e} off)");
        let Some((got, shape)) = output_values(name, &out, loss.as_ref(), tail) else {
            checks.push(Check::failed(label, tol, "not computed"));
            continue;
        };
        let (want, want_shape) = reference(outputs, &format!("bf16_fp32_compute.{name}"))?;
        let mut c = compare(label, &got, &shape, &want, &want_shape, tol);
        if got.iter().any(|x| !x.is_finite()) {
            c.passed = false;
            c.note = Some("inf or NaN".into());
        } else if let Some((_, why)) = OPEN.iter().find(|(n, _)| *n == name) {
            c.open = Some((*why).into());
        }
        checks.push(c);
    }
    Ok(checks)
}

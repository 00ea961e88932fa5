//! The text-decoder cases: `text` (forward + backward), `generate` and `text_bf16`.

use std::collections::BTreeSet;
use std::path::Path;

use automodel_core::AutodiffBackend;
use automodel_core::Backend;
use automodel_core::tree::{self, ParamInfo};
use automodel_core::weights::{SafeTensorsFiles, TensorMap};
use automodel_text::generate::{TextPrompt, ids_tensor};
use automodel_text::{
    CausalLm, ForwardOptions, Gemma3nForCausalLM, Gemma3nTextConfig, Generate, GenerateOutput,
    GenerationConfig, TrainBatch, TrainOptions,
};
use burn::prelude::*;
use burn::tensor::DType;

use crate::compare::{Check, Tolerance, compare};
use crate::tensors::{check, data_values, id_values, output_check, reference, rows, values};
use crate::{ParityError, open, read_meta};

pub(crate) const EMBED: Tolerance = Tolerance::Elementwise {
    atol: 1e-4,
    rtol: 1e-4,
};
pub(crate) const HIDDEN: Tolerance = Tolerance::Elementwise {
    atol: 1e-3,
    rtol: 1e-3,
};
pub(crate) const LOGITS: Tolerance = HIDDEN;
pub(crate) const LOSS: Tolerance = Tolerance::Elementwise {
    atol: 1e-4,
    rtol: 1e-5,
};
pub(crate) const GRAD: Tolerance = Tolerance::RelMax {
    rel: 1e-3,
    abs: 1e-7,
};
const BF16_LOGITS: Tolerance = Tolerance::Elementwise {
    atol: 1.0,
    rtol: 5e-2,
};

/// Backpropagate the case's loss and check the gradient of every parameter of `module` (keys
/// under `prefix`; see [`gradient_checks`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn loss_gradient_checks<B: AutodiffBackend, M: Module<B>>(
    dir: &Path,
    loss: Option<Tensor<B, 1>>,
    module: &M,
    prefix: &str,
    outputs: &SafeTensorsFiles,
    meta: &serde_json::Value,
    ours_prefix: impl Fn(&str) -> bool,
) -> Result<Vec<Check>, ParityError> {
    let loss = loss.ok_or_else(|| ParityError::Case {
        path: dir.into(),
        message: "no labelled token".into(),
    })?;
    let grads = loss.backward();
    let infos = tree::param_infos(module, prefix);
    let got = tree::hf_grads(module, prefix, &grads);
    gradient_checks(&infos, &got, outputs, meta, ours_prefix)
}

fn load_model<B: Backend>(
    dir: &Path,
    device: &B::Device,
    dtype: DType,
) -> Result<Gemma3nForCausalLM<B>, ParityError> {
    let cfg = Gemma3nTextConfig::from_file(dir.join("config.json"))?;
    let files = open(dir, "model.safetensors")?;
    Ok(Gemma3nForCausalLM::from_files(&files, &cfg, device, dtype)?)
}

pub(crate) fn string_list(meta: &serde_json::Value, key: &str) -> BTreeSet<String> {
    meta.get(key)
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Tolerance class of a forward output.
pub(crate) fn forward_tolerance(name: &str) -> Option<Tolerance> {
    Some(match name {
        "logits" => LOGITS,
        "loss" => LOSS,
        "last_hidden_state" => HIDDEN,
        "inputs_embeds" | "per_layer_inputs" | "per_layer_token_embeds" => EMBED,
        n if n.starts_with("hidden_states.") || n.starts_with("trace.text.") => HIDDEN,
        _ => return None,
    })
}

/// `text`: logits, loss, hidden states, per-layer inputs, traces and the gradient of every text
/// parameter.
pub fn forward_backward<B: AutodiffBackend>(
    dir: &Path,
    device: &B::Device,
) -> Result<Vec<Check>, ParityError> {
    let meta = read_meta(dir)?;
    let inputs = open(dir, "inputs.safetensors")?;
    let outputs = open(dir, "outputs.safetensors")?;
    let model = load_model::<B>(dir, device, DType::F32)?;
    let ids = rows(&inputs, "input_ids")?;
    let mask = rows(&inputs, "attention_mask")?;
    let labels = rows(&inputs, "labels")?;
    let ids_t = ids_tensor::<B>(&ids, device);
    let opts = ForwardOptions {
        output_hidden_states: true,
        trace: true,
        training: false,
    };
    let mask_t = ids_tensor::<B>(&mask, device);
    let out = model.forward(ids_t.clone(), Some(mask_t.clone()), None, opts)?;
    // The loss and its gradients come from the training entry point (the memory-lean head).
    let batch = TrainBatch {
        attention_mask: mask_t,
        ..TrainBatch::text(ids_t.clone(), ids_tensor::<B>(&labels, device))
    };
    let loss = model
        .forward_train(&batch, TrainOptions::gradients())?
        .loss
        .map(|l| l.mean());

    let mut checks = Vec::new();
    for name in outputs.names().filter(|n| !n.starts_with("grad.")) {
        let Some(tol) = forward_tolerance(name) else {
            checks.push(Check::failed(
                name,
                Tolerance::Exact,
                "not computed by the text decoder",
            ));
            continue;
        };
        let got = match name {
            "logits" => Some(values(out.logits.clone())),
            "loss" => loss.clone().map(|l| (values(l).0, vec![])),
            "last_hidden_state" => Some(values(out.model.last_hidden_state.clone())),
            "inputs_embeds" => Some(values(out.model.inputs_embeds.clone())),
            "per_layer_inputs" => Some(values(out.model.per_layer_inputs.clone())),
            "per_layer_token_embeds" => {
                Some(values(model.model.per_layer_token_embeds(ids_t.clone())))
            }
            n => match n.strip_prefix("hidden_states.") {
                Some(i) => i
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| out.model.hidden_states.get(i).cloned())
                    .map(values),
                None => out.model.traces.get(n).cloned().map(values),
            },
        };
        checks.push(output_check(name, got, &outputs, tol)?);
    }
    checks.extend(loss_gradient_checks(
        dir,
        loss,
        &model.model,
        &model.prefix,
        &outputs,
        &meta,
        |k| k.starts_with(&model.prefix),
    )?);
    Ok(checks)
}

/// Every parameter's gradient against `grad.<key>` (relative-max tolerance); parameters the
/// reference lists as zero/None must have no or an all-zero gradient; reference gradients of
/// parameters (selected by `ours_prefix`) the model lacks are failures.
pub(crate) fn gradient_checks(
    params: &[ParamInfo],
    grads: &TensorMap,
    outputs: &SafeTensorsFiles,
    meta: &serde_json::Value,
    ours_prefix: impl Fn(&str) -> bool,
) -> Result<Vec<Check>, ParityError> {
    let mut checks = Vec::new();
    let zero_or_none: BTreeSet<String> = string_list(meta, "grad_params_zero")
        .union(&string_list(meta, "grad_params_none"))
        .cloned()
        .collect();
    let ours: BTreeSet<&str> = params.iter().map(|p| p.key.as_str()).collect();
    for p in params {
        let key = &p.key;
        let name = format!("grad.{key}");
        let g = grads.get(key).cloned();
        if outputs.contains(&name) {
            match g {
                Some(g) => checks.push(check(&name, data_values(g), outputs, GRAD)?),
                None => checks.push(Check::failed(
                    &name,
                    GRAD,
                    "no gradient reached this parameter",
                )),
            }
        } else if zero_or_none.contains(key.as_str()) {
            let (v, shape) = g
                .map(data_values)
                .unwrap_or_else(|| (vec![0.0; p.numel()], p.shape.clone()));
            let zeros = vec![0.0; v.len()];
            checks.push(compare(
                format!("{name} (zero in reference)"),
                &v,
                &shape,
                &zeros,
                &shape,
                Tolerance::Exact,
            ));
        } else {
            checks.push(Check::failed(
                &name,
                GRAD,
                "the reference neither has this gradient nor lists it as zero",
            ));
        }
    }
    for name in outputs.names().filter(|n| n.starts_with("grad.")) {
        let key = &name["grad.".len()..];
        if ours_prefix(key) && !ours.contains(key) {
            checks.push(Check::failed(
                name,
                GRAD,
                "the reference has a gradient for a parameter the model lacks",
            ));
        }
    }
    Ok(checks)
}

/// `generate`: greedy ids exactly, per-step logits with the cache, and the same logits
/// recomputed without a cache.
pub fn generate<B: Backend>(dir: &Path, device: &B::Device) -> Result<Vec<Check>, ParityError> {
    let meta = read_meta(dir)?;
    let inputs = open(dir, "inputs.safetensors")?;
    let outputs = open(dir, "outputs.safetensors")?;
    let model = load_model::<B>(dir, device, DType::F32)?;
    let prompt = rows(&inputs, "input_ids")?;
    let mask = rows(&inputs, "attention_mask")?;
    let default_eos = model.config().eos_token_id.as_ref().map(|e| e.to_vec());
    let greedy = model.generate(
        &TextPrompt::new(prompt.clone()).with_mask(mask.clone()),
        &generation_settings(&meta, &outputs, default_eos)?,
        |_| {},
    )?;
    let mut checks = generation_checks(&greedy, &outputs)?;

    // Without a cache: one forward over the sequence minus its last token.
    let seq: Vec<Vec<i64>> = greedy
        .sequences
        .iter()
        .map(|r| r[..r.len() - 1].to_vec())
        .collect();
    let p = prompt[0].len();
    let full_mask: Vec<Vec<i64>> = mask
        .iter()
        .map(|m| [m.as_slice(), &vec![1; seq[0].len() - p]].concat())
        .collect();
    let out = model.forward(
        ids_tensor::<B>(&seq, device),
        Some(ids_tensor::<B>(&full_mask, device)),
        None,
        ForwardOptions::default(),
    )?;
    checks.push(nocache_check(out.logits, p, &outputs)?);
    Ok(checks)
}

/// The greedy settings the reference generated with: `max_new_tokens` and the stop ids from
/// `meta.json` (`generate_kwargs.eos_token_id`, else `default_eos`).
pub(crate) fn generation_settings(
    meta: &serde_json::Value,
    outputs: &SafeTensorsFiles,
    default_eos: Option<Vec<i64>>,
) -> Result<GenerationConfig, ParityError> {
    let want_new = rows(outputs, "generated_ids")?;
    let max_new = meta
        .get("max_new_tokens")
        .and_then(|v| v.as_u64())
        .map_or(want_new.first().map_or(0, |r| r.len()), |v| v as usize);
    let eos: Vec<i64> = match meta.pointer("/generate_kwargs/eos_token_id") {
        Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_i64()).collect(),
        _ => default_eos.unwrap_or_default(),
    };
    Ok(GenerationConfig::greedy(max_new, eos))
}

/// A greedy run against the reference: generated ids and sequences exactly, the logits of every
/// cached step within the logits tolerance.
pub(crate) fn generation_checks<B: Backend>(
    greedy: &GenerateOutput<B>,
    outputs: &SafeTensorsFiles,
) -> Result<Vec<Check>, ParityError> {
    let steps = Tensor::stack::<3>(greedy.step_logits.clone(), 1);
    Ok(vec![
        check(
            "generated_ids",
            id_values(&greedy.generated),
            outputs,
            Tolerance::Exact,
        )?,
        check(
            "sequences",
            id_values(&greedy.sequences),
            outputs,
            Tolerance::Exact,
        )?,
        check("step_logits", values(steps), outputs, LOGITS)?,
    ])
}

/// The logits of one uncached forward over the generated sequence (minus its last token) at the
/// positions that chose each new token, from the last prompt position `p − 1` on.
pub(crate) fn nocache_check<B: Backend>(
    logits: Tensor<B, 3>,
    p: usize,
    outputs: &SafeTensorsFiles,
) -> Result<Check, ParityError> {
    let n = logits.dims()[1] - (p - 1);
    let got = values(logits.narrow(1, p - 1, n));
    check("nocache_logits", got, outputs, LOGITS)
}

/// `text_bf16`: the model in bfloat16, forward only (a smoke test with the README tolerance).
pub fn bf16<B: Backend>(dir: &Path, device: &B::Device) -> Result<Vec<Check>, ParityError> {
    low_precision::<B>(dir, device, DType::BF16)
}

/// float16 smoke test on the `text` case: the model loaded in float16 gives float16 logits close
/// to the float32 reference's (float16's 10-bit mantissa: the same tolerance as bfloat16's
/// 7-bit one is ample) and no inf/NaN. Not a golden case of its own: the reference has no
/// float16 run.
pub fn f16<B: Backend>(dir: &Path, device: &B::Device) -> Result<Vec<Check>, ParityError> {
    low_precision::<B>(dir, device, DType::F16)
}

/// The `text` case's model loaded in `dtype`: its logits in that dtype, finite, against the
/// float32 reference at bfloat16's tolerance.
fn low_precision<B: Backend>(
    dir: &Path,
    device: &B::Device,
    dtype: DType,
) -> Result<Vec<Check>, ParityError> {
    let inputs = open(dir, "inputs.safetensors")?;
    let outputs = open(dir, "outputs.safetensors")?;
    let model = load_model::<B>(dir, device, dtype)?;
    let ids = rows(&inputs, "input_ids")?;
    let mask = rows(&inputs, "attention_mask")?;
    let out = model.forward(
        ids_tensor::<B>(&ids, device),
        Some(ids_tensor::<B>(&mask, device)),
        None,
        ForwardOptions::default(),
    )?;
    let dtype_ok = out.logits.dtype() == dtype;
    let got = values(out.logits);
    let finite = got.0.iter().all(|x| x.is_finite());
    let (want, shape) = reference(&outputs, "logits")?;
    let name = if dtype == DType::F16 { "f16" } else { "bf16" };
    let mut c = compare(
        format!("logits ({name})"),
        &got.0,
        &got.1,
        &want,
        &shape,
        BF16_LOGITS,
    );
    if !dtype_ok {
        c.passed = false;
        c.note = Some(format!("logits were not computed in {dtype:?}"));
    } else if !finite {
        c.passed = false;
        c.note = Some("logits hold inf or NaN".into());
    }
    Ok(vec![c])
}

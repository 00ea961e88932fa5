//! The full-model cases: `image`, `audio`, `multimodal` (every output and every gradient) and
//! `generate_multimodal`.

use std::path::Path;

use automodel_core::AutodiffBackend;
use automodel_core::Backend;
use automodel_core::weights::SafeTensorsFiles;
use automodel_gemma3n::{
    AudioInput, ConditionalOutput, Gemma3nForConditionalGeneration, MultimodalInput,
};
use automodel_text::generate::ids_tensor;
use automodel_text::{CausalLm, TrainBatch, TrainOptions};
use automodel_text::{ForwardOptions, Generate};
use burn::prelude::*;
use burn::tensor::{DType, TensorData};

use crate::compare::{Check, Tolerance};
use crate::tensors::{Values, float_tensor, output_check, reference, rows, values};
use crate::text::{
    EMBED, forward_tolerance, generation_checks, generation_settings, loss_gradient_checks,
    nocache_check,
};
use crate::{ParityError, open, read_meta};

/// The model inputs of a case folder (media included when present).
pub(crate) fn inputs<B: Backend>(
    files: &SafeTensorsFiles,
    device: &B::Device,
    with_labels: bool,
) -> Result<MultimodalInput<B>, ParityError> {
    let pixel_values = if files.contains("pixel_values") {
        Some(float_tensor::<B, 4>(files, "pixel_values", device)?)
    } else {
        None
    };
    let audio = if files.contains("input_features") {
        let features = float_tensor::<B, 3>(files, "input_features", device)?;
        let frames = features.dims()[1];
        let (m, _) = reference(files, "input_features_mask")?;
        Some(AudioInput {
            features,
            valid: m
                .chunks(frames.max(1))
                .map(|r| r.iter().map(|&x| x != 0.0).collect())
                .collect(),
        })
    } else {
        None
    };
    Ok(MultimodalInput {
        input_ids: rows(files, "input_ids")?,
        attention_mask: Some(rows(files, "attention_mask")?),
        pixel_values,
        audio,
        labels: if with_labels {
            Some(rows(files, "labels")?)
        } else {
            None
        },
    })
}

/// The same inputs as a training batch of tensors.
pub(crate) fn train_batch<B: Backend>(
    input: &MultimodalInput<B>,
    device: &B::Device,
) -> TrainBatch<B> {
    let ids = ids_tensor::<B>(&input.input_ids, device);
    let mask = input
        .attention_mask
        .as_ref()
        .map_or_else(|| ids.ones_like(), |m| ids_tensor::<B>(m, device));
    let labels = input
        .labels
        .as_ref()
        .map_or_else(|| ids.full_like(-100), |l| ids_tensor::<B>(l, device));
    let audio = input.audio.as_ref().map(|a| {
        let [n, f] = [a.valid.len(), a.valid.first().map_or(0, |r| r.len())];
        let flat: Vec<bool> = a.valid.iter().flatten().copied().collect();
        let valid = Tensor::from_data(TensorData::new(flat, [n, f]), device);
        (a.features.clone(), valid)
    });
    TrainBatch {
        attention_mask: mask,
        pixel_values: input.pixel_values.clone(),
        audio,
        ..TrainBatch::text(ids, labels)
    }
}

/// The outputs every full-model case reads off a forward the same way: the last hidden state,
/// both towers' outputs, the audio padding mask and the merged features (`None` for any other
/// name; `Some(None)` when the forward had no such input).
pub(crate) fn shared_output<B: Backend>(
    name: &str,
    out: &ConditionalOutput<B>,
) -> Option<Option<Values>> {
    Some(match name {
        "last_hidden_state" => Some(values(out.text.last_hidden_state.clone())),
        "image_features" => out.image_features.clone().map(values),
        "audio_features" => out.audio_features.clone().map(values),
        "vision_tower_output" => out.vision.as_ref().map(|v| values(v.features.clone())),
        "audio_tower_output" => out.audio.as_ref().map(|a| values(a.encodings.clone())),
        "audio_tower_mask" => out.audio.as_ref().map(|a| {
            (
                a.padding
                    .iter()
                    .flatten()
                    .map(|&p| if p { 1.0 } else { 0.0 })
                    .collect(),
                vec![a.padding.len(), a.padding[0].len()],
            )
        }),
        _ => return None,
    })
}

/// `image`, `audio`, `multimodal`: every output tensor and every parameter's gradient.
pub fn forward_backward<B: AutodiffBackend>(
    dir: &Path,
    device: &B::Device,
) -> Result<Vec<Check>, ParityError> {
    let meta = read_meta(dir)?;
    let outputs = open(dir, "outputs.safetensors")?;
    let model = Gemma3nForConditionalGeneration::<B>::from_pretrained(dir, device, DType::F32)?;
    let input = inputs::<B>(&open(dir, "inputs.safetensors")?, device, true)?;
    let opts = ForwardOptions {
        output_hidden_states: true,
        trace: true,
        training: false,
    };
    let out = model.forward(&input, opts)?;
    // The loss and its gradients come from the training entry point (the memory-lean head).
    let loss = model
        .forward_train(&train_batch(&input, device), TrainOptions::gradients())?
        .loss
        .map(|l| l.mean());

    let mut checks = Vec::new();
    for name in outputs.names().filter(|n| !n.starts_with("grad.")) {
        let tol = forward_tolerance(name).unwrap_or(match name {
            "audio_tower_mask" => Tolerance::Exact,
            _ => EMBED,
        });
        let got = match name {
            "logits" => Some(values(out.logits.clone())),
            "loss" => loss.clone().map(|l| (values(l).0, vec![])),
            "inputs_embeds" => Some(values(out.text.inputs_embeds.clone())),
            "per_layer_inputs" => Some(values(out.text.per_layer_inputs.clone())),
            "per_layer_token_embeds" => Some(values(out.per_layer_token_embeds.clone())),
            n if shared_output(n, &out).is_some() => shared_output(n, &out).flatten(),
            n if n.starts_with("hidden_states.") => n["hidden_states.".len()..]
                .parse::<usize>()
                .ok()
                .and_then(|i| out.text.hidden_states.get(i).cloned())
                .map(values),
            n if n.starts_with("trace.text.") => out.text.traces.get(n).cloned().map(values),
            n if n.starts_with("trace.vision.") => out
                .vision
                .as_ref()
                .and_then(|v| v.traces.get(n).cloned())
                .map(values),
            n if n.starts_with("trace.audio.") => out
                .audio
                .as_ref()
                .and_then(|a| a.traces.get(n).cloned())
                .map(values),
            _ => None,
        };
        checks.push(output_check(name, got, &outputs, tol)?);
    }
    checks.extend(loss_gradient_checks(
        dir,
        loss,
        &model,
        "",
        &outputs,
        &meta,
        |_| true,
    )?);
    Ok(checks)
}

/// `generate_multimodal`: greedy ids exactly, cached step logits, and uncached recomputation.
pub fn generate<B: Backend>(dir: &Path, device: &B::Device) -> Result<Vec<Check>, ParityError> {
    let meta = read_meta(dir)?;
    let outputs = open(dir, "outputs.safetensors")?;
    let model = Gemma3nForConditionalGeneration::<B>::from_pretrained(dir, device, DType::F32)?;
    let prompt = inputs::<B>(&open(dir, "inputs.safetensors")?, device, false)?;
    let cfg = generation_settings(&meta, &outputs, None)?;
    let greedy = model.generate(&prompt, &cfg, |_| {})?;
    let mut checks = generation_checks(&greedy, &outputs)?;
    let p = prompt.input_ids[0].len();
    let seq: Vec<Vec<i64>> = greedy
        .sequences
        .iter()
        .map(|r| r[..r.len() - 1].to_vec())
        .collect();
    let full = MultimodalInput {
        input_ids: seq.clone(),
        attention_mask: Some(vec![vec![1; seq[0].len()]; seq.len()]),
        labels: None,
        ..prompt
    };
    let out = model.forward(&full, ForwardOptions::default())?;
    checks.push(nocache_check(out.logits, p, &outputs)?);
    Ok(checks)
}

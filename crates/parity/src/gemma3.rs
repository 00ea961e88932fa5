//! The real Gemma 3 270M (`golden-gemma3-270m`, made by `make_gemma3_270m_golden.py`): the GGUF
//! file dequantized and run by [`Gemma3ForCausalLM`], against Hugging Face's outputs.

use std::path::Path;

use automodel_core::AutodiffBackend;
use automodel_core::Backend;
use automodel_core::tree;
use automodel_gguf::GgufFile;
use automodel_text::gemma3::Gemma3ForCausalLM;
use automodel_text::generate::{TextPrompt, ids_tensor};
use automodel_text::{CausalLm, Generate, GenerationConfig, TrainBatch, TrainOptions};
use burn::tensor::DType;

use crate::compare::{Check, Tolerance, compare};
use crate::tensors::{data_values, ids, reference, values};
use crate::{ParityError, open, read_meta};

/// "within 1e-3 of the reference's largest magnitude"
pub(crate) const REL_MAX: Tolerance = Tolerance::RelMax {
    rel: 1e-3,
    abs: 0.0,
};
pub(crate) const LOSS: Tolerance = Tolerance::Elementwise {
    atol: 0.0,
    rtol: 1e-4,
};

/// Load the GGUF as a Gemma 3 model.
pub fn load<B: Backend>(
    gguf: &Path,
    device: &B::Device,
) -> Result<Gemma3ForCausalLM<B>, ParityError> {
    automodel_models::convert::load_gguf::<B>(gguf, device, DType::F32)
        .map(|(model, _)| model)
        .map_err(|e| ParityError::Case {
            path: gguf.to_path_buf(),
            message: e.to_string(),
        })
}

/// The tokenizer cases (`tokenizer_cases.json`): ids with and without `<bos>`, and decoding
/// with special tokens skipped, all exact.
pub fn tokenizer(dir: &Path, gguf: &Path) -> Result<Vec<Check>, ParityError> {
    let err = |m: String| ParityError::Case {
        path: gguf.to_path_buf(),
        message: m,
    };
    let file = GgufFile::open(gguf).map_err(|e| err(e.to_string()))?;
    let tok =
        automodel_tokenizer::GemmaTokenizer::from_gguf(&file).map_err(|e| err(e.to_string()))?;
    let path = dir.join("tokenizer_cases.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ParityError::Case {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let cases: serde_json::Value = serde_json::from_str(&text).map_err(|e| ParityError::Case {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut checks = Vec::new();
    if let Some(v) = cases.get("vocab_size").and_then(|v| v.as_u64()) {
        let got = tok.vocab_size() as f64;
        checks.push(compare(
            "tokenizer.vocab_size",
            &[got],
            &[1],
            &[v as f64],
            &[1],
            Tolerance::Exact,
        ));
    }
    let list = cases
        .get("cases")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    for (i, c) in list.iter().enumerate() {
        let text = c.get("text").and_then(|t| t.as_str()).unwrap_or_default();
        let ids = |k: &str| -> Vec<f64> {
            c.get(k)
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_default()
        };
        for (key, bos) in [("ids_with_bos", true), ("ids_no_special", false)] {
            let want = ids(key);
            let got: Vec<f64> = tok
                .encode(text, bos)
                .map_err(|e| err(e.to_string()))?
                .into_iter()
                .map(|x| x as f64)
                .collect();
            checks.push(compare(
                format!("tokenizer.case{i}.{key}"),
                &got,
                &[got.len()],
                &want,
                &[want.len()],
                Tolerance::Exact,
            ));
        }
        let with_bos: Vec<u32> = ids("ids_with_bos").into_iter().map(|x| x as u32).collect();
        let decoded = tok
            .decode(&with_bos, true)
            .map_err(|e| err(e.to_string()))?;
        let want = c
            .get("decoded")
            .and_then(|t| t.as_str())
            .unwrap_or_default();
        let mut chk = compare(
            format!("tokenizer.case{i}.decoded"),
            &[0.0],
            &[1],
            &[0.0],
            &[1],
            Tolerance::Exact,
        );
        if decoded != want {
            chk.passed = false;
            chk.note = Some(format!("decoded {decoded:?}, reference {want:?}"));
        }
        checks.push(chk);
    }
    Ok(checks)
}

/// The ten largest logits' ids at every position of `[t, v]` values, largest first (ties by
/// id), flat (all `v` ids when `v < 10`). NaN ranks above every number (IEEE total order), so
/// NaN logits give ids that differ from the reference: a failed check, never a panic.
pub(crate) fn top10(all: &[f64], t: usize, v: usize) -> Vec<f64> {
    let k = v.min(10);
    let mut out = Vec::with_capacity(t * k);
    for pos in 0..t {
        let row = &all[pos * v..(pos + 1) * v];
        let larger_first = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]);
        let mut idx: Vec<usize> = (0..v).collect();
        if v > k {
            idx.select_nth_unstable_by(k, larger_first);
        }
        let mut top: Vec<usize> = idx[..k].to_vec();
        top.sort_by(|a, b| larger_first(a, b).then(a.cmp(b)));
        out.extend(top.iter().map(|&x| x as f64));
    }
    out
}

/// Every check of the folder against the model in `gguf`.
pub fn run<B: AutodiffBackend>(
    dir: &Path,
    gguf: &Path,
    device: &B::Device,
) -> Result<Vec<Check>, ParityError> {
    let meta = read_meta(dir)?;
    let outputs = open(dir, "outputs.safetensors")?;
    let model = load::<B>(gguf, device)?;
    let mut checks = tokenizer(dir, gguf)?;
    let n_prompts = meta
        .get("prompts")
        .and_then(|p| p.as_array())
        .map_or(0, |a| a.len());
    for i in 0..n_prompts {
        let p = format!("prompt{i}");
        let prompt = ids(&outputs, &format!("{p}.input_ids"))?;
        let t = prompt.len();
        let out = model.forward(
            ids_tensor::<B>(std::slice::from_ref(&prompt), device),
            None,
            None,
            None,
            None,
        )?;
        let logits = out.logits.inner();
        let v = logits.dims()[2];
        let (all, _) = values(logits.clone());
        // top-10 ids at every position, exactly
        let (want_top, top_shape) = reference(&outputs, &format!("{p}.top10_ids"))?;
        let got_top = top10(&all, t, v);
        let lse: Vec<f64> = (0..t)
            .map(|pos| {
                let row = &all[pos * v..(pos + 1) * v];
                let m = row.iter().cloned().fold(f64::MIN, f64::max);
                m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
            })
            .collect();
        checks.push(compare(
            format!("{p}.top10_ids"),
            &got_top,
            &[t, 10],
            &want_top,
            &top_shape,
            Tolerance::Exact,
        ));
        let (want_lse, ls) = reference(&outputs, &format!("{p}.logsumexp"))?;
        checks.push(compare(
            format!("{p}.logsumexp"),
            &lse,
            &[t],
            &want_lse,
            &ls,
            REL_MAX,
        ));
        let last = all[(t - 1) * v..t * v].to_vec();
        let (want_last, ws) = reference(&outputs, &format!("{p}.last_logits"))?;
        checks.push(compare(
            format!("{p}.last_logits"),
            &last,
            &[v],
            &want_last,
            &ws,
            REL_MAX,
        ));
        let want_greedy = ids(&outputs, &format!("{p}.greedy_ids"))?;
        let inner = burn::module::AutodiffModule::valid(&model);
        let greedy = inner
            .generate(
                &TextPrompt::single(prompt),
                &GenerationConfig::greedy(want_greedy.len(), vec![]),
                |_| {},
            )?
            .generated
            .remove(0);
        let as_f = |v: &[i64]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        checks.push(compare(
            format!("{p}.greedy_ids"),
            &as_f(&greedy),
            &[greedy.len()],
            &as_f(&want_greedy),
            &[want_greedy.len()],
            Tolerance::Exact,
        ));
    }

    // The paragraph: loss, hidden states and gradients.
    let paragraph = ids(&outputs, "paragraph.input_ids")?;
    let ids_t = ids_tensor::<B>(std::slice::from_ref(&paragraph), device);
    let out = model.forward(ids_t.clone(), None, None, None, None)?;
    // The loss and its gradients come from the training entry point (the memory-lean head).
    let batch = TrainBatch::text(ids_t.clone(), ids_t);
    let loss = model
        .forward_train(&batch, TrainOptions::gradients())?
        .loss
        .map(|l| l.mean())
        .ok_or_else(|| ParityError::Case {
            path: dir.into(),
            message: "no loss".into(),
        })?;
    let (want, ws) = reference(&outputs, "paragraph.loss")?;
    checks.push(compare(
        "paragraph.loss",
        &values(loss.clone().inner()).0,
        &[],
        &want,
        &ws,
        LOSS,
    ));
    let h1 = values(out.layer_outputs[0].clone().inner().squeeze_dim::<2>(0));
    let (want, ws) = reference(&outputs, "paragraph.hidden_state_layer1")?;
    checks.push(compare(
        "paragraph.hidden_state_layer1",
        &h1.0,
        &h1.1,
        &want,
        &ws,
        REL_MAX,
    ));
    let last = values(out.last_hidden_state.clone().inner().squeeze_dim::<2>(0));
    let (want, ws) = reference(&outputs, "paragraph.last_hidden_state")?;
    checks.push(compare(
        "paragraph.last_hidden_state",
        &last.0,
        &last.1,
        &want,
        &ws,
        REL_MAX,
    ));
    let grads = loss.backward();
    let got_grads = tree::hf_grads(&model, "", &grads);
    for name in outputs.names().filter(|n| n.starts_with("grad.")) {
        let key = &name["grad.".len()..];
        match got_grads.get(key) {
            Some(g) => {
                let (want, ws) = reference(&outputs, name)?;
                let (got, gs) = data_values(g.clone());
                checks.push(compare(name, &got, &gs, &want, &ws, REL_MAX));
            }
            None => checks.push(Check::failed(
                name,
                REL_MAX,
                "no gradient for this parameter",
            )),
        }
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::top10;

    #[test]
    fn top10_ranks_nan_instead_of_panicking_and_takes_short_rows() {
        let mut row: Vec<f64> = (0..20).map(f64::from).collect();
        row[3] = f64::NAN;
        let top = top10(&row, 1, 20);
        assert_eq!(
            top[0], 3.0,
            "NaN ranks first, so the ids differ from a finite reference"
        );
        assert_eq!(&top[1..4], &[19.0, 18.0, 17.0]);
        assert_eq!(top10(&[0.5, 2.0, 1.0], 1, 3), vec![1.0, 2.0, 0.0]);
    }
}

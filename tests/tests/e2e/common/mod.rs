//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::PathBuf;

use automodel_core::weights::SafeTensorsFiles;

/// A case folder of the golden reference.
pub fn case(name: &str) -> PathBuf {
    let d = automodel_parity::golden_dir().join(name);
    assert!(
        d.is_dir(),
        "golden case {} not found (set AUTOMODEL_GOLDEN_DIR)",
        d.display()
    );
    d
}

/// A 2-D integer tensor of a safetensors file as rows.
pub fn rows(files: &SafeTensorsFiles, name: &str) -> Vec<Vec<i64>> {
    let shape = files.shape(name).unwrap().to_vec();
    files
        .to_i64_vec(name)
        .unwrap()
        .chunks(shape[1])
        .map(|c| c.to_vec())
        .collect()
}

/// Largest absolute difference ([`automodel_parity::max_abs_diff`]).
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    automodel_parity::max_abs_diff(a, b)
}

/// Run one golden case through the parity runner; every check must pass. Returns the checks.
pub fn passing_checks(name: &str) -> Vec<automodel_parity::Check> {
    let dir = automodel_parity::golden_dir();
    let mut reports = automodel_parity::run::<automodel_core::CpuAutodiff>(
        &dir,
        &Default::default(),
        Some(&[name.to_string()]),
        None,
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(reports.len(), 1, "exactly one `{name}` folder");
    let r = reports.pop().unwrap();
    assert_all_pass(&r);
    r.checks
}

/// The case ran (not skipped) and every check passed.
pub fn assert_all_pass(r: &automodel_parity::CaseReport) {
    assert!(r.skipped.is_none(), "{} skipped: {:?}", r.case, r.skipped);
    let failed: Vec<String> = r
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{}: {} failed checks:\n{}",
        r.case,
        failed.len(),
        failed.join("\n")
    );
}

/// Every parameter of `module` got a gradient that is not all zero, and the module has exactly
/// one parameter per tensor the case's checkpoint stores under `stored_prefix` (the module's
/// keys are that prefix plus its own paths).
pub fn assert_every_parameter_learns<B, M>(
    module: &M,
    grads: &B::Gradients,
    case_name: &str,
    stored_prefix: &str,
) where
    B: automodel_core::AutodiffBackend,
    M: burn::module::Module<B>,
{
    let got = automodel_core::tree::hf_grads(module, stored_prefix, grads);
    let infos = automodel_core::tree::param_infos(module, stored_prefix);
    let stored = SafeTensorsFiles::open(case(case_name).join("model.safetensors")).unwrap();
    let stored_keys: Vec<&str> = stored
        .names()
        .filter(|k| k.starts_with(stored_prefix))
        .collect();
    let ours: Vec<&str> = infos.iter().map(|p| p.key.as_str()).collect();
    let mut sorted = ours.clone();
    sorted.sort();
    assert_eq!(sorted, stored_keys, "one parameter per stored tensor");
    for k in ours {
        let g = got
            .get(k)
            .unwrap_or_else(|| panic!("{k} got no gradient"))
            .clone();
        let v = g
            .convert_dtype(burn::tensor::DType::F32)
            .to_vec::<f32>()
            .unwrap();
        assert!(v.iter().any(|x| *x != 0.0), "{k} has an all-zero gradient");
    }
}

/// Logits of a text-only forward of the full model, flat.
pub fn text_logits<B: automodel_core::Backend>(
    m: &automodel_gemma3n::Gemma3nForConditionalGeneration<B>,
    ids: &[Vec<i64>],
) -> Vec<f32> {
    m.forward(
        &automodel_gemma3n::MultimodalInput::text(ids.to_vec()),
        automodel_text::ForwardOptions::default(),
    )
    .unwrap()
    .logits
    .into_data()
    .convert::<f32>()
    .to_vec::<f32>()
    .unwrap()
}

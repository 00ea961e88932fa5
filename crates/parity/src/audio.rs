//! The audio cases: `audio_feature_extractor`, and the tower outputs of `audio`.

use std::path::Path;

use crate::compare::{Check, Tolerance, compare};
use crate::tensors::reference;
use crate::{ParityError, open};
use automodel_audio::features::{FeatureExtractor, FeatureExtractorConfig};

const LOG_MEL: Tolerance = Tolerance::Elementwise {
    atol: 1e-3,
    rtol: 0.0,
};
/// The window is float32 arithmetic; numpy's float32 cosine is not correctly rounded, so one ulp
/// (of values up to 1) is allowed.
const WINDOW: Tolerance = Tolerance::Elementwise {
    atol: 1.2e-7,
    rtol: 0.0,
};
/// The filterbank is float64 arithmetic on both sides; only the last bits may differ.
const FILTERS: Tolerance = Tolerance::Elementwise {
    atol: 1e-12,
    rtol: 0.0,
};

fn flat_features(
    f: &automodel_audio::features::AudioFeatures,
) -> (Vec<f64>, Vec<usize>, Vec<f64>, Vec<usize>) {
    let b = f.features.len();
    let t = f.frames();
    let m = f
        .features
        .first()
        .and_then(|x| x.first())
        .map_or(0, |r| r.len());
    let feats = f
        .features
        .iter()
        .flatten()
        .flatten()
        .map(|&x| x as f64)
        .collect();
    let mask = f
        .mask
        .iter()
        .flatten()
        .map(|&x| if x { 1.0 } else { 0.0 })
        .collect();
    (feats, vec![b, t, m], mask, vec![b, t])
}

/// `audio_feature_extractor`: window, filterbank, batch features and mask, single-clip features.
pub fn feature_extractor(dir: &Path) -> Result<Vec<Check>, ParityError> {
    let inputs = open(dir, "inputs.safetensors")?;
    let outputs = open(dir, "outputs.safetensors")?;
    let cfg_path = dir.join("preprocessor_config.json");
    let cfg = if cfg_path.is_file() {
        FeatureExtractorConfig::from_file(&cfg_path)?
    } else {
        FeatureExtractorConfig::default()
    };
    let fe = FeatureExtractor::new(cfg)?;
    let (wave, shape) = reference(&inputs, "raw_audio")?;
    let (lens, _) = reference(&inputs, "raw_audio_lengths")?;
    let clips: Vec<Vec<f32>> = (0..shape[0])
        .map(|i| {
            wave[i * shape[1]..i * shape[1] + lens[i] as usize]
                .iter()
                .map(|&x| x as f32)
                .collect()
        })
        .collect();
    let mut checks = Vec::new();
    let check = |name: &str, got: &[f64], got_shape: &[usize], tol| -> Result<Check, ParityError> {
        let (want, ws) = reference(&outputs, name)?;
        Ok(compare(name, got, got_shape, &want, &ws, tol))
    };
    if outputs.contains("window") {
        let w: Vec<f64> = fe.window().iter().map(|&x| x as f64).collect();
        checks.push(check("window", &w, &[w.len()], WINDOW)?);
    }
    if outputs.contains("mel_filters") {
        let m = fe.mel_filters().to_vec();
        let mels = fe.config.feature_size;
        checks.push(check("mel_filters", &m, &[m.len() / mels, mels], FILTERS)?);
    }
    let refs: Vec<&[f32]> = clips.iter().map(|c| c.as_slice()).collect();
    let batch = fe.extract(&refs)?;
    let (f, fs, m, ms) = flat_features(&batch);
    checks.push(check("input_features", &f, &fs, LOG_MEL)?);
    checks.push(check("input_features_mask", &m, &ms, Tolerance::Exact)?);
    if outputs.contains("single_input_features") {
        let single = fe.extract(&refs[refs.len() - 1..])?;
        let (f, fs, m, ms) = flat_features(&single);
        checks.push(check("single_input_features", &f, &fs, LOG_MEL)?);
        checks.push(check(
            "single_input_features_mask",
            &m,
            &ms,
            Tolerance::Exact,
        )?);
    }
    Ok(checks)
}

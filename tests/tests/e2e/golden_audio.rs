//! The audio tower and feature extractor against Hugging Face.

use crate::common;

use automodel_audio::decode::load_audio;
use automodel_audio::encoder::AUDIO_PREFIX;
use automodel_audio::features::{FeatureExtractor, FeatureExtractorConfig};
use automodel_audio::{AudioEncoder, Gemma3nAudioConfig};
use automodel_core::Backend;
use automodel_core::init::Initializer;
use automodel_core::pretrained::Pretrained;
use automodel_core::weights::SafeTensorsFiles;
use automodel_core::{CpuAutodiff, CpuBackend};
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use common::{case, max_diff};

fn checks(name: &str) -> Vec<automodel_parity::Check> {
    common::passing_checks(name)
}

#[test]
fn feature_extractor_matches() {
    let names: Vec<String> = checks("audio_feature_extractor")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        names,
        [
            "window",
            "mel_filters",
            "input_features",
            "input_features_mask",
            "single_input_features",
            "single_input_features_mask"
        ]
    );
}

/// The `audio` case through the full model: tower output and mask, every block, the audio
/// features and the 202 gradients the reference lists.
#[test]
fn audio_case_matches_including_every_gradient() {
    let names: Vec<String> = checks("audio").into_iter().map(|c| c.name).collect();
    for must in [
        "audio_tower_output",
        "audio_tower_mask",
        "audio_features",
        "trace.audio.subsample",
        "trace.audio.conformer0",
        "trace.audio.conformer1",
        "logits",
        "loss",
    ] {
        assert!(names.iter().any(|n| n == must), "{must} not checked");
    }
    let grads = names
        .iter()
        .filter(|n| n.starts_with("grad.") && !n.ends_with("(zero in reference)"))
        .count();
    assert_eq!(grads, 202);
}

/// Minimal float32 WAV writer for the round trip below.
fn write_wav_f32(path: &std::path::Path, samples: &[f32], rate: u32) {
    let data_len = (samples.len() * 4) as u32;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&3u16.to_le_bytes()); // IEEE float
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 4).to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&32u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        b.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

/// File → decode → features: the golden clips written as WAV give HF's `input_features`.
#[test]
fn wav_files_give_the_reference_features() {
    let dir = case("audio");
    let inputs = SafeTensorsFiles::open(dir.join("inputs.safetensors")).unwrap();
    let raw = inputs.to_f32_vec("raw_audio").unwrap();
    let lens = inputs.to_i64_vec("raw_audio_lengths").unwrap();
    let width = raw.len() / lens.len();
    let tmp = tempfile::tempdir().unwrap();
    let mut clips = Vec::new();
    for (i, &n) in lens.iter().enumerate() {
        let p = tmp.path().join(format!("clip{i}.wav"));
        write_wav_f32(&p, &raw[i * width..i * width + n as usize], 16_000);
        clips.push(load_audio(&p, 16_000).unwrap().samples);
    }
    let fe = FeatureExtractor::new(FeatureExtractorConfig::default()).unwrap();
    let refs: Vec<&[f32]> = clips.iter().map(|c| c.as_slice()).collect();
    let f = fe.extract(&refs).unwrap();
    let got: Vec<f32> = f.features.iter().flatten().flatten().copied().collect();
    let want = inputs.to_f32_vec("input_features").unwrap();
    assert!(
        max_diff(&got, &want) <= 1e-3,
        "log-mel max diff {}",
        max_diff(&got, &want)
    );
    let mask: Vec<i64> = f.mask.iter().flatten().map(|&m| m as i64).collect();
    assert_eq!(mask, inputs.to_i64_vec("input_features_mask").unwrap());
}

fn tower<B: Backend>(dtype: DType) -> AudioEncoder<B> {
    let dir = case("audio");
    let cfg = Gemma3nAudioConfig::from_file(dir.join("config.json")).unwrap();
    let files = SafeTensorsFiles::open(dir.join("model.safetensors")).unwrap();
    AudioEncoder::from_files(&files, &cfg, &Default::default(), dtype).unwrap()
}

fn mel<B: Backend>() -> (Tensor<B, 3>, Vec<Vec<bool>>) {
    let inputs = SafeTensorsFiles::open(case("audio").join("inputs.safetensors")).unwrap();
    let f = inputs.to_f32_vec("input_features").unwrap();
    let m = inputs.to_i64_vec("input_features_mask").unwrap();
    let valid = m
        .chunks(57)
        .map(|r| r.iter().map(|&x| x != 0).collect())
        .collect();
    (
        Tensor::from_data(TensorData::new(f, [2, 57, 128]), &Default::default()),
        valid,
    )
}

#[test]
fn every_tower_parameter_gets_a_gradient() {
    let t = tower::<CpuAutodiff>(DType::F32);
    let (x, valid) = mel::<CpuAutodiff>();
    let out = t.forward(x, &valid).unwrap();
    let grads = out.encodings.powi_scalar(2).mean().backward();
    common::assert_every_parameter_learns(&t, &grads, "audio", AUDIO_PREFIX);
}

#[test]
fn bf16_tower_runs_in_bf16_close_to_f32() {
    let (x, valid) = mel::<CpuBackend>();
    let a = tower::<CpuBackend>(DType::F32)
        .forward(x.clone(), &valid)
        .unwrap()
        .encodings;
    let b = tower::<CpuBackend>(DType::BF16)
        .forward(x, &valid)
        .unwrap()
        .encodings;
    assert_eq!(b.dtype(), DType::BF16);
    let (a, b) = (
        a.into_data().to_vec::<f32>().unwrap(),
        b.cast(DType::F32).into_data().to_vec::<f32>().unwrap(),
    );
    let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(
        max_diff(&a, &b) < 0.5 && mean < 0.05,
        "bf16 vs f32: max {} mean {mean}",
        max_diff(&a, &b)
    );
}

/// The released audio configuration has 681,348,640 parameters (built in bf16 zeros to keep it
/// light: only shapes matter here).
#[test]
fn released_audio_tower_size() {
    let cfg = Gemma3nAudioConfig::default();
    let t = AudioEncoder::<CpuBackend>::new(
        &Initializer::shapes(&Default::default(), DType::BF16),
        &cfg,
    )
    .unwrap();
    assert_eq!(t.num_params(), 681_348_640);
}

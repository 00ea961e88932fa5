//! Decoding WAV, FLAC, MP3 and OGG/Vorbis to 16 kHz mono.

use std::path::PathBuf;

use automodel_audio::decode::{decode_audio, load_audio, resample};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Dominant frequency by counting upward zero crossings.
fn frequency(x: &[f32], rate: f32) -> f32 {
    let ups = x.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
    ups as f32 / (x.len() as f32 / rate)
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
}

#[test]
fn every_format_decodes_to_16k_mono() {
    let wav = load_audio(fixture("tone.wav"), 16_000).unwrap();
    assert_eq!(wav.sample_rate, 16_000);
    assert!(
        (wav.samples.len() as i64 - 8000).abs() <= 2,
        "{}",
        wav.samples.len()
    );
    // a −6 dB sine has RMS 0.5/√2
    assert!(
        (rms(&wav.samples) - 0.3536).abs() < 0.01,
        "rms {}",
        rms(&wav.samples)
    );
    assert!((frequency(&wav.samples, 16_000.0) - 440.0).abs() < 6.0);

    let flac = load_audio(fixture("tone.flac"), 16_000).unwrap();
    assert_eq!(flac.samples, wav.samples, "FLAC is lossless");

    for lossy in ["tone.mp3", "tone.ogg"] {
        let w = load_audio(fixture(lossy), 16_000).unwrap();
        // encoder delay/padding may add a few milliseconds; measure the steady middle part
        assert!(
            w.samples.len() >= 7900 && w.samples.len() <= 9000,
            "{lossy}: {}",
            w.samples.len()
        );
        let mid = &w.samples[1000..7000];
        assert!(
            (rms(mid) - 0.3536).abs() < 0.02,
            "{lossy}: rms {}",
            rms(mid)
        );
        assert!(
            (frequency(mid, 16_000.0) - 440.0).abs() < 12.0,
            "{lossy}: {} Hz",
            frequency(mid, 16_000.0)
        );
    }
}

#[test]
fn keeps_the_native_rate_when_asked() {
    let w = load_audio(fixture("tone.wav"), 44_100).unwrap();
    assert_eq!(w.samples.len(), 22_050);
}

#[test]
fn unreadable_audio_names_the_file() {
    let err = decode_audio(
        b"RIFF....WAVEjunk".to_vec(),
        Some("wav"),
        "broken.wav",
        16_000,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("broken.wav"), "{err}");
    let err = decode_audio(Vec::new(), None, "empty.flac", 16_000)
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty.flac"), "{err}");
    let err = load_audio("/nonexistent/clip.mp3", 16_000)
        .unwrap_err()
        .to_string();
    assert!(err.contains("clip.mp3"), "{err}");
}

#[test]
fn resampling_preserves_pitch() {
    let rate = 48_000.0f32;
    let x: Vec<f32> = (0..48_000)
        .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / rate).sin())
        .collect();
    let y = resample(&x, 48_000, 16_000).unwrap();
    assert!((y.len() as i64 - 16_000).abs() <= 2);
    assert!((frequency(&y[100..15_900], 16_000.0) - 1000.0).abs() < 5.0);
}

/// Inputs `cargo xtask fuzz` found to crash the decoder (kept in tests/fixtures/fuzz-*): each is
/// an error naming the file.
#[test]
fn fuzz_found_inputs_are_errors() {
    let names: Vec<String> = std::fs::read_dir(fixture(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("fuzz-"))
        .collect();
    assert!(!names.is_empty());
    for name in &names {
        let e = load_audio(fixture(name), 16_000).unwrap_err().to_string();
        assert!(
            e.contains(name.as_str()) && e.contains("cannot decode"),
            "{e}"
        );
    }
}

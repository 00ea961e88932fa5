//! The log-mel front end, exactly as HF `Gemma3nAudioFeatureExtractor` computes it: HTK
//! pre-emphasis inside 513-sample frames, periodic Hann window, |rFFT| of size 1024 (float32),
//! HTK mel filterbank (float64) between 125 and 7600 Hz, `ln(max(·, 1e-5))`.

use std::path::Path;
use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};
use serde::Deserialize;

use crate::error::AudioError;

/// `preprocessor_config.json` settings of the feature extractor (HF names and defaults).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct FeatureExtractorConfig {
    pub feature_size: usize,
    pub sampling_rate: usize,
    pub padding_value: f32,
    pub min_frequency: f64,
    pub max_frequency: f64,
    pub preemphasis: f64,
    pub preemphasis_htk_flavor: bool,
    pub fft_overdrive: bool,
    pub dither: f64,
    pub input_scale_factor: f64,
    pub frame_length: usize,
    pub hop_length: usize,
    pub mel_floor: f64,
    pub max_length: usize,
    pub pad_to_multiple_of: usize,
    pub per_bin_mean: Option<Vec<f64>>,
    pub per_bin_stddev: Option<Vec<f64>>,
}

impl Default for FeatureExtractorConfig {
    fn default() -> Self {
        Self {
            feature_size: 128,
            sampling_rate: 16_000,
            padding_value: 0.0,
            min_frequency: 125.0,
            max_frequency: 7600.0,
            preemphasis: 0.97,
            preemphasis_htk_flavor: true,
            fft_overdrive: true,
            dither: 0.0,
            input_scale_factor: 1.0,
            frame_length: 512,
            hop_length: 160,
            mel_floor: 1e-5,
            max_length: 480_000,
            pad_to_multiple_of: 128,
            per_bin_mean: None,
            per_bin_stddev: None,
        }
    }
}

/// Features of a batch: `[B][frames][mel]` and the per-frame validity mask (true = real audio).
#[derive(Debug, Clone, PartialEq)]
pub struct AudioFeatures {
    pub features: Vec<Vec<Vec<f32>>>,
    pub mask: Vec<Vec<bool>>,
}

impl AudioFeatures {
    /// Number of frames (equal for every clip of the batch).
    pub fn frames(&self) -> usize {
        self.mask.first().map_or(0, |m| m.len())
    }
}

/// The feature extractor with its precomputed window, filterbank and FFT plan.
pub struct FeatureExtractor {
    pub config: FeatureExtractorConfig,
    window: Vec<f32>,
    mel_filters: Vec<f64>,
    fft_length: usize,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for FeatureExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureExtractor")
            .field("config", &self.config)
            .finish()
    }
}

impl FeatureExtractorConfig {
    /// Read `preprocessor_config.json` (fields of other processors are ignored).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, AudioError> {
        Ok(automodel_core::config::read_config(
            path.as_ref(),
            automodel_core::config::deserialize,
        )?)
    }
}

impl FeatureExtractor {
    /// Validate the settings and precompute the window, filterbank and FFT.
    pub fn new(config: FeatureExtractorConfig) -> Result<Self, AudioError> {
        let c = &config;
        if c.frame_length == 0 || c.hop_length == 0 || c.feature_size == 0 || c.sampling_rate == 0 {
            return Err(AudioError::config(
                "frame_length",
                "frame_length, hop_length, feature_size and sampling_rate must be positive",
            ));
        }
        if c.dither != 0.0 {
            return Err(AudioError::config(
                "dither",
                "dithering is random; only 0.0 is supported",
            ));
        }
        if !(c.min_frequency >= 0.0
            && c.min_frequency < c.max_frequency
            && c.max_frequency <= c.sampling_rate as f64 / 2.0)
        {
            return Err(AudioError::config(
                "max_frequency",
                "need 0 <= min_frequency < max_frequency <= sampling_rate / 2",
            ));
        }
        for (name, v) in [
            ("per_bin_mean", &c.per_bin_mean),
            ("per_bin_stddev", &c.per_bin_stddev),
        ] {
            if let Some(v) = v
                && v.len() != c.feature_size
            {
                return Err(AudioError::config(
                    name,
                    format!("needs {} values", c.feature_size),
                ));
            }
        }
        let mut fft_length = c.frame_length.next_power_of_two();
        if c.fft_overdrive {
            fft_length *= 2;
        }
        // Periodic Hann window.
        let n = c.frame_length;
        let window = (0..n)
            .map(|i| {
                // HF: 0.5 · (1 − cos(2π · arange_f32 / n)) in float32. numpy's float32 cosine is
                // not correctly rounded, so single values may differ from it by one ulp.
                let a = (2.0 * std::f64::consts::PI) as f32 * i as f32 / n as f32;
                0.5f32 * (1.0f32 - (a as f64).cos() as f32)
            })
            .collect();
        let mel_filters = htk_mel_filters(
            fft_length / 2 + 1,
            c.feature_size,
            c.min_frequency,
            c.max_frequency,
            c.sampling_rate,
        );
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(fft_length);
        Ok(Self {
            config,
            window,
            mel_filters,
            fft_length,
            fft,
        })
    }

    /// The analysis window (float32, periodic Hann).
    pub fn window(&self) -> &[f32] {
        &self.window
    }

    /// The mel filterbank, `[fft_length/2 + 1][feature_size]` row-major, float64.
    pub fn mel_filters(&self) -> &[f64] {
        &self.mel_filters
    }

    /// Features of a batch of mono clips at `sampling_rate`: each clip is truncated to
    /// `max_length`, all are zero-padded to the longest and then to a multiple of
    /// `pad_to_multiple_of`; a frame is valid iff its first sample is a real sample.
    pub fn extract(&self, clips: &[&[f32]]) -> Result<AudioFeatures, AudioError> {
        let c = &self.config;
        if clips.is_empty() {
            return Err(AudioError::Input("no audio clips given".into()));
        }
        let lens: Vec<usize> = clips.iter().map(|x| x.len().min(c.max_length)).collect();
        let longest = *lens.iter().max().unwrap();
        let mut padded_len = longest;
        if c.pad_to_multiple_of > 0 {
            padded_len = padded_len.div_ceil(c.pad_to_multiple_of) * c.pad_to_multiple_of;
        }
        let frame = c.frame_length + 1;
        if padded_len < frame {
            return Err(AudioError::Input(format!(
                "clips must be at least {frame} samples long ({:.1} ms); the longest has {longest}",
                frame as f64 * 1000.0 / c.sampling_rate as f64
            )));
        }
        let n_frames = (padded_len - frame) / c.hop_length + 1;
        let mut features = Vec::with_capacity(clips.len());
        let mut mask = Vec::with_capacity(clips.len());
        for (clip, &len) in clips.iter().zip(&lens) {
            let mut wave = vec![c.padding_value; padded_len];
            wave[..len].copy_from_slice(&clip[..len]);
            if c.input_scale_factor != 1.0 {
                let s = c.input_scale_factor as f32;
                wave.iter_mut().for_each(|x| *x *= s);
            }
            features.push(self.log_mel(&wave, n_frames));
            mask.push((0..n_frames).map(|t| t * c.hop_length < len).collect());
        }
        Ok(AudioFeatures { features, mask })
    }

    fn log_mel(&self, wave: &[f32], n_frames: usize) -> Vec<Vec<f32>> {
        let c = &self.config;
        let n = c.frame_length;
        let bins = self.fft_length / 2 + 1;
        let mels = c.feature_size;
        let pre = c.preemphasis as f32;
        let first = (1.0 - c.preemphasis) as f32;
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut out = Vec::with_capacity(n_frames);
        let mut mag = vec![0.0f32; bins];
        for t in 0..n_frames {
            let s = &wave[t * c.hop_length..t * c.hop_length + n + 1];
            input.iter_mut().for_each(|x| *x = 0.0);
            for i in 0..n {
                let v = if c.preemphasis > 0.0 {
                    if c.preemphasis_htk_flavor {
                        if i == 0 {
                            s[0] * first
                        } else {
                            s[i] - pre * s[i - 1]
                        }
                    } else {
                        s[i + 1] - pre * s[i]
                    }
                } else {
                    s[i]
                };
                input[i] = v * self.window[i];
            }
            self.fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .expect("sizes match the plan");
            for (m, z) in mag.iter_mut().zip(&spectrum) {
                *m = z.norm();
            }
            let mut row = Vec::with_capacity(mels);
            for m in 0..mels {
                let mut acc = 0.0f64;
                for (b, &v) in mag.iter().enumerate() {
                    acc += v as f64 * self.mel_filters[b * mels + m];
                }
                let mut x = acc.max(c.mel_floor).ln();
                if let Some(mean) = &c.per_bin_mean {
                    x -= mean[m];
                }
                if let Some(std) = &c.per_bin_stddev {
                    x /= std[m];
                }
                row.push(x as f32);
            }
            out.push(row);
        }
        out
    }
}

/// HTK mel filterbank without area normalisation, `[n_bins][n_mels]` row-major.
pub fn htk_mel_filters(
    n_bins: usize,
    n_mels: usize,
    f_min: f64,
    f_max: f64,
    sampling_rate: usize,
) -> Vec<f64> {
    let mel = |f: f64| 2595.0 * (1.0 + f / 700.0).log10();
    let inv = |m: f64| 700.0 * (10f64.powf(m / 2595.0) - 1.0);
    let (m_min, m_max) = (mel(f_min), mel(f_max));
    let pts: Vec<f64> = (0..n_mels + 2)
        .map(|i| inv(m_min + (m_max - m_min) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut fb = vec![0.0f64; n_bins * n_mels];
    let fft_length = 2 * (n_bins - 1);
    for b in 0..n_bins {
        let freq = (b as f32 * (sampling_rate as f32 / fft_length as f32)) as f64;
        for m in 0..n_mels {
            let down = (freq - pts[m]) / (pts[m + 1] - pts[m]);
            let up = (pts[m + 2] - freq) / (pts[m + 2] - pts[m + 1]);
            fb[b * n_mels + m] = down.min(up).max(0.0);
        }
    }
    fb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_mask_follow_the_padding_rules() {
        let fe = FeatureExtractor::new(FeatureExtractorConfig::default()).unwrap();
        let a = vec![0.1f32; 12_000];
        let b = vec![0.1f32; 6_400];
        let f = fe.extract(&[&a, &b]).unwrap();
        // 12000 → 12032 samples → (12032 − 513) / 160 + 1 = 72 frames; frame t valid iff 160·t < len
        assert_eq!(f.frames(), 72);
        assert_eq!(f.mask[0].iter().filter(|m| **m).count(), 72);
        assert_eq!(f.mask[1].iter().filter(|m| **m).count(), 40);
        assert!(f.features[0].iter().flatten().all(|x| x.is_finite()));
        assert!(fe.extract(&[&[0.0f32; 100]]).is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        let c = FeatureExtractorConfig {
            dither: 0.1,
            ..Default::default()
        };
        assert!(
            FeatureExtractor::new(c)
                .unwrap_err()
                .to_string()
                .contains("dither")
        );
        let c = FeatureExtractorConfig {
            max_frequency: 9000.0,
            ..Default::default()
        };
        assert!(FeatureExtractor::new(c).is_err());
    }
}

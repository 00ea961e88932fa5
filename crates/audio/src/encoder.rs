//! `Gemma3nAudioEncoder`: SSCP → conformer blocks → time reduction → zero the padded steps.

use std::collections::BTreeMap;
use std::path::Path;

use automodel_core::Backend;
use automodel_core::ConfigError;
use automodel_core::init::Initializer;
use automodel_core::pretrained::Pretrained;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use crate::config::Gemma3nAudioConfig;
use crate::conformer::ConformerBlock;
use crate::error::AudioError;
use crate::sscp::SubSampleConvProjection;

/// Key prefix of the tower inside a `Gemma3nForConditionalGeneration` checkpoint.
pub const AUDIO_PREFIX: &str = "model.audio_tower.";

/// Output of the audio tower.
#[derive(Debug, Clone)]
pub struct AudioOutput<B: Backend> {
    /// `[B, T_audio, hidden]`, padded steps zeroed.
    pub encodings: Tensor<B, 3>,
    /// `[B][T_audio]`, true = padded step (the tower's own convention).
    pub padding: Vec<Vec<bool>>,
    /// `trace.audio.subsample`, `trace.audio.conformer{i}` (before the reduction).
    pub traces: BTreeMap<String, Tensor<B, 3>>,
}

/// The Gemma 3n USM-style conformer audio encoder.
#[derive(Module, Debug)]
pub struct AudioEncoder<B: Backend> {
    pub subsample_conv_projection: SubSampleConvProjection<B>,
    pub conformer: Vec<ConformerBlock<B>>,
    #[module(skip)]
    pub config: Gemma3nAudioConfig,
}

impl<B: Backend> AudioEncoder<B> {
    /// The encoder `cfg` describes, filled by `init`; the config is validated first.
    pub fn new(init: &Initializer<B>, cfg: &Gemma3nAudioConfig) -> Result<Self, AudioError> {
        cfg.validate()?;
        Ok(Self {
            subsample_conv_projection: SubSampleConvProjection::new(init, cfg),
            conformer: (0..cfg.conf_num_hidden_layers)
                .map(|_| ConformerBlock::new(init, cfg))
                .collect(),
            config: cfg.clone(),
        })
    }
}

impl<B: Backend> Pretrained<B> for AudioEncoder<B> {
    type Config = Gemma3nAudioConfig;
    type Error = AudioError;
    const PREFIX: &'static str = AUDIO_PREFIX;
    const PROBE: &'static str = "subsample_conv_projection.input_proj_linear.weight";

    fn build(init: &Initializer<B>, cfg: &Gemma3nAudioConfig) -> Result<Self, AudioError> {
        Self::new(init, cfg)
    }
    fn read_config(path: &Path) -> Result<Gemma3nAudioConfig, ConfigError> {
        Gemma3nAudioConfig::from_file(path)
    }
    fn init_std(cfg: &Gemma3nAudioConfig) -> f64 {
        cfg.initializer_range
    }
}

impl<B: Backend> AudioEncoder<B> {
    /// `mel` `[B, T, F]` with `valid` `[B][T]` (true = real frame, the feature extractor's mask).
    pub fn forward(
        &self,
        mel: Tensor<B, 3>,
        valid: &[Vec<bool>],
    ) -> Result<AudioOutput<B>, AudioError> {
        self.run(mel, valid, false)
    }

    /// Like [`Self::forward`], also keeping the SSCP and per-block outputs.
    pub fn forward_traced(
        &self,
        mel: Tensor<B, 3>,
        valid: &[Vec<bool>],
    ) -> Result<AudioOutput<B>, AudioError> {
        self.run(mel, valid, true)
    }

    fn run(
        &self,
        mel: Tensor<B, 3>,
        valid: &[Vec<bool>],
        trace: bool,
    ) -> Result<AudioOutput<B>, AudioError> {
        let [b, t_in, f] = mel.dims();
        if f != self.config.input_feat_size {
            return Err(AudioError::Input(format!(
                "features have {f} mel bins, expected input_feat_size {}",
                self.config.input_feat_size
            )));
        }
        if valid.len() != b || valid.iter().any(|v| v.len() != t_in) {
            return Err(AudioError::Input(format!(
                "the mask must be [{b}, {t_in}] like the features"
            )));
        }
        let dtype = self
            .subsample_conv_projection
            .input_proj_linear
            .weight
            .val()
            .dtype();
        let mut traces = BTreeMap::new();
        let mut x = self.subsample_conv_projection.forward(mel.cast(dtype));
        let t = x.dims()[1];
        // Padding of sub-sampled step i: the input frame i · (product of time strides).
        let stride: usize = self
            .config
            .sscp_conv_stride_size
            .iter()
            .map(|s| s[0])
            .product();
        let padding: Vec<Vec<bool>> = valid
            .iter()
            .map(|v| (0..t).map(|i| !v[(i * stride).min(t_in - 1)]).collect())
            .collect();
        if trace {
            traces.insert("trace.audio.subsample".to_string(), x.clone());
        }
        for (i, block) in self.conformer.iter().enumerate() {
            x = block.forward(x, &padding);
            if trace {
                traces.insert(format!("trace.audio.conformer{i}"), x.clone());
            }
        }
        let r = self.config.conf_reduction_factor;
        let keep: Vec<i64> = (0..t).step_by(r).map(|i| i as i64).collect();
        let n = keep.len();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(keep, [n]), &x.device());
        let x = x.select(1, idx);
        let padding: Vec<Vec<bool>> = padding
            .iter()
            .map(|p| p.iter().step_by(r).copied().collect())
            .collect();
        let mask: Vec<bool> = padding.iter().flatten().copied().collect();
        let mask = Tensor::<B, 3, Bool>::from_data(TensorData::new(mask, [b, n, 1]), &x.device());
        let h = x.dims()[2];
        let encodings = x.mask_fill(mask.expand([b, n, h]), 0.0);
        Ok(AudioOutput {
            encodings,
            padding,
            traces,
        })
    }
}

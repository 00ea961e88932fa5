//! `MobileNetV5Encoder`: stem → stages of blocks → multi-scale fusion adapter.

use std::collections::BTreeMap;
use std::path::Path;

use automodel_core::Backend;
use automodel_core::ConfigError;
use automodel_core::init::Initializer;
use automodel_core::pretrained::Pretrained;
use burn::prelude::*;

use crate::blocks::Block;
use crate::config::{EncoderArgs, Gemma3nVisionConfig, NUM_FEATURES};
use crate::conv::{ConvNormAct, ConvSpec};
use crate::error::VisionError;
use crate::msfa::Msfa;

/// Key prefix of the encoder inside a `Gemma3nForConditionalGeneration` checkpoint.
pub const VISION_PREFIX: &str = "model.vision_tower.timm_model.";

/// HF's `TimmWrapperModel` around the encoder: its only field is `timm_model`, so the encoder's
/// keys are `vision_tower.timm_model.*` in a full checkpoint.
#[derive(Module, Debug)]
pub struct VisionTower<B: Backend> {
    pub timm_model: MobileNetV5Encoder<B>,
}

/// Output of [`MobileNetV5Encoder::forward_traced`].
#[derive(Debug, Clone)]
pub struct VisionOutput<B: Backend> {
    /// The MSFA output `[N, 2048, r, r]`.
    pub features: Tensor<B, 4>,
    /// `trace.vision.stem` and `trace.vision.stage{i}`.
    pub traces: BTreeMap<String, Tensor<B, 4>>,
}

/// The Gemma 3n vision tower (timm `mobilenetv5_300m_enc`, `forward_features`).
#[derive(Module, Debug)]
pub struct MobileNetV5Encoder<B: Backend> {
    pub conv_stem: ConvNormAct<B>,
    pub blocks: Vec<Vec<Block<B>>>,
    pub msfa: Msfa<B>,
    /// Feature indices fed to the MSFA (0 = stem, i = output of stage i−1).
    #[module(skip)]
    pub msfa_indices: Vec<usize>,
}

impl<B: Backend> MobileNetV5Encoder<B> {
    /// The encoder `args` describes, filled by `init`.
    pub fn new(init: &Initializer<B>, args: &EncoderArgs) -> Result<Self, VisionError> {
        let eps = args.eps;
        // The stem conv has a bias; its norm is followed by GELU.
        let stem = ConvSpec::full(3, args.stem_size, 3, 2).with_bias();
        let conv_stem = ConvNormAct::new(init, stem, true, eps);
        let mut chs = args.stem_size;
        let mut feature_chs = vec![chs];
        let mut blocks = Vec::new();
        for stage in &args.stages {
            let mut st = Vec::new();
            for b in stage {
                st.push(Block::new(init, chs, b, args.layer_scale, eps));
                chs = b.out_chs();
            }
            feature_chs.push(chs);
            blocks.push(st);
        }
        let n = feature_chs.len() as i64;
        let mut msfa_indices = Vec::new();
        for &i in &args.msfa_indices {
            let j = if i < 0 { n + i } else { i };
            if !(0..n).contains(&j) {
                return Err(VisionError::config(
                    "model_args.msfa_indices",
                    format!("index {i} is outside the {n} feature maps"),
                ));
            }
            msfa_indices.push(j as usize);
        }
        let msfa_in: usize = msfa_indices.iter().map(|&i| feature_chs[i]).sum();
        let msfa = Msfa::new(
            init,
            msfa_in,
            NUM_FEATURES,
            args.msfa_output_resolution,
            eps,
        );
        Ok(Self {
            conv_stem,
            blocks,
            msfa,
            msfa_indices,
        })
    }
}

impl<B: Backend> Pretrained<B> for MobileNetV5Encoder<B> {
    type Config = Gemma3nVisionConfig;
    type Error = VisionError;
    const PREFIX: &'static str = VISION_PREFIX;
    const PROBE: &'static str = "conv_stem.conv.weight";

    fn build(init: &Initializer<B>, cfg: &Gemma3nVisionConfig) -> Result<Self, VisionError> {
        Self::new(init, &cfg.encoder_args()?)
    }
    fn read_config(path: &Path) -> Result<Gemma3nVisionConfig, ConfigError> {
        Gemma3nVisionConfig::from_file(path)
    }
    fn init_std(cfg: &Gemma3nVisionConfig) -> f64 {
        cfg.initializer_range
    }
}

impl<B: Backend> MobileNetV5Encoder<B> {
    /// `pixel_values` `[N, 3, H, W]` → `[N, 2048, r, r]`.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 4> {
        self.run(pixel_values, None)
    }

    /// Like [`Self::forward`], also returning the stem and stage outputs.
    pub fn forward_traced(&self, pixel_values: Tensor<B, 4>) -> VisionOutput<B> {
        let mut traces = BTreeMap::new();
        let features = self.run(pixel_values, Some(&mut traces));
        VisionOutput { features, traces }
    }

    fn run(
        &self,
        x: Tensor<B, 4>,
        mut traces: Option<&mut BTreeMap<String, Tensor<B, 4>>>,
    ) -> Tensor<B, 4> {
        let dtype = self.conv_stem.bn.weight.val().dtype();
        let mut x = self.conv_stem.forward(x.cast(dtype));
        let mut feats = Vec::new();
        if self.msfa_indices.contains(&0) {
            feats.push(x.clone());
        }
        if let Some(t) = traces.as_deref_mut() {
            t.insert("trace.vision.stem".into(), x.clone());
        }
        for (si, stage) in self.blocks.iter().enumerate() {
            for b in stage {
                x = b.forward(x);
            }
            if self.msfa_indices.contains(&(si + 1)) {
                feats.push(x.clone());
            }
            if let Some(t) = traces.as_deref_mut() {
                t.insert(format!("trace.vision.stage{si}"), x.clone());
            }
        }
        self.msfa.forward(feats)
    }
}

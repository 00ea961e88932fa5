//! The Gemma 3n vision tower — timm's MobileNet-V5 encoder (`mobilenetv5_300m_enc`) — and the
//! image processor, on Burn.
//!
//! * [`config`]: `vision_config`, timm block arguments and the released block list;
//! * [`conv`]: TF-"SAME" convolutions (f32 accumulation), `RmsNorm2d`, conv-norm-act;
//! * [`blocks`]: EdgeResidual, Universal Inverted Residual, Mobile multi-query attention;
//! * [`msfa`]: the multi-scale fusion adapter;
//! * [`encoder`]: the whole tower, loading `model.vision_tower.timm_model.*` weights;
//! * [`processor`]: decode, RGB, antialiased bilinear resize (torchvision's uint8 path),
//!   rescale, optional normalisation, batching.

pub mod blocks;
pub mod config;
pub mod conv;
pub mod encoder;
pub mod error;
pub mod msfa;
pub mod processor;

pub use config::Gemma3nVisionConfig;
pub use encoder::{MobileNetV5Encoder, VISION_PREFIX, VisionOutput, VisionTower};
pub use error::VisionError;

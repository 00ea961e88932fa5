//! `vision_config` of Gemma 3n and the MobileNet-V5 block list.
//!
//! The block list comes from `vision_config.model_args.block_args` (timm's decoded block dicts,
//! one list per stage) when present, else from the released `mobilenetv5_300m_enc` architecture,
//! written in timm's arch-string notation and decoded by [`decode_block`].

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use automodel_core::config::{ConfigError, deserialize, read_config};

/// Width of the MSFA output (hard-coded in timm's `MobileNetV5Encoder`).
pub const NUM_FEATURES: usize = 2048;

/// The Gemma 3n `vision_config` (HF names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gemma3nVisionConfig {
    pub architecture: String,
    pub hidden_size: usize,
    pub rms_norm_eps: f64,
    pub vocab_size: usize,
    pub vocab_offset: usize,
    pub initializer_range: f64,
    pub model_args: Option<Value>,
}

impl Default for Gemma3nVisionConfig {
    fn default() -> Self {
        Self {
            architecture: "mobilenetv5_300m_enc".into(),
            hidden_size: 2048,
            rms_norm_eps: 1e-6,
            vocab_size: 128,
            vocab_offset: 262_144,
            initializer_range: 0.02,
            model_args: None,
        }
    }
}

/// `er`: EdgeResidual (FusedMBConv), timm's names.
#[derive(Debug, Clone, PartialEq)]
pub struct ErArgs {
    pub exp_kernel_size: usize,
    pub exp_ratio: f64,
    pub pw_kernel_size: usize,
    pub stride: usize,
    pub out_chs: usize,
    /// Expansion computed from this width instead of the input's (0 = the input's).
    pub force_in_chs: usize,
    pub noskip: bool,
}

/// `uir`: Universal Inverted Residual, timm's names (kernel 0 = no such depthwise conv).
#[derive(Debug, Clone, PartialEq)]
pub struct UirArgs {
    pub dw_kernel_size_start: usize,
    pub dw_kernel_size_mid: usize,
    pub dw_kernel_size_end: usize,
    pub exp_ratio: f64,
    pub stride: usize,
    pub out_chs: usize,
    pub noskip: bool,
}

/// `mqa`: Mobile multi-query attention, timm's names.
#[derive(Debug, Clone, PartialEq)]
pub struct MqaArgs {
    pub num_heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
    /// Stride of the key/value down-sampling (1 = none).
    pub kv_stride: usize,
    pub dw_kernel_size: usize,
    pub stride: usize,
    pub out_chs: usize,
    pub noskip: bool,
}

/// One block of the encoder (timm `BlockArgs`).
#[derive(Debug, Clone, PartialEq)]
pub enum BlockArgs {
    EdgeResidual(ErArgs),
    Uir(UirArgs),
    Mqa(MqaArgs),
}

impl BlockArgs {
    /// Output channels.
    pub fn out_chs(&self) -> usize {
        match self {
            BlockArgs::EdgeResidual(a) => a.out_chs,
            BlockArgs::Uir(a) => a.out_chs,
            BlockArgs::Mqa(a) => a.out_chs,
        }
    }

    /// Stride of the block.
    pub fn stride(&self) -> usize {
        match self {
            BlockArgs::EdgeResidual(a) => a.stride,
            BlockArgs::Uir(a) => a.stride,
            BlockArgs::Mqa(a) => a.stride,
        }
    }
}

/// Everything needed to build the encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderArgs {
    pub stem_size: usize,
    pub stages: Vec<Vec<BlockArgs>>,
    pub msfa_output_resolution: usize,
    /// Feature indices fed to the MSFA (0 = stem, i = stage i−1; negative counts from the end).
    pub msfa_indices: Vec<i64>,
    pub layer_scale: bool,
    pub eps: f64,
}

/// The released `mobilenetv5_300m_enc` block list (timm arch strings).
pub fn mobilenetv5_300m_arch() -> Vec<Vec<String>> {
    let mut s2 = vec!["uir_r1_a5_k5_s2_e6_c640".to_string()];
    s2.extend(std::iter::repeat_n(
        "uir_r1_a5_k0_s1_e4_c640".to_string(),
        7,
    ));
    s2.push("uir_r1_a0_k0_s1_e1_c640".into());
    for _ in 0..14 {
        s2.push("mqa_r1_k3_h12_v2_s1_d64_c640".into());
        s2.push("uir_r1_a0_k0_s1_e2_c640".into());
    }
    let mut s3 = vec!["uir_r1_a5_k5_s2_e6_c1280".to_string()];
    for _ in 0..19 {
        s3.push("mqa_r1_k3_h16_s1_d96_c1280".into());
        s3.push("uir_r1_a0_k0_s1_e2_c1280".into());
    }
    vec![
        [
            "er_r1_k3_s2_e4_c128",
            "er_r1_k3_s1_e4_c128",
            "er_r1_k3_s1_e4_c128",
        ]
        .map(String::from)
        .to_vec(),
        [
            "uir_r1_a3_k5_s2_e6_c256",
            "uir_r1_a5_k0_s1_e4_c256",
            "uir_r1_a3_k0_s1_e4_c256",
            "uir_r1_a5_k0_s1_e4_c256",
            "uir_r1_a3_k0_s1_e4_c256",
        ]
        .map(String::from)
        .to_vec(),
        s2,
        s3,
    ]
}

/// Decode one timm arch string (`er_r1_k3_s2_e4_c128`, `uir_r1_a3_k5_s2_e6_c256`,
/// `mqa_r1_k3_h12_v2_s1_d64_c640`). Repeats (`r`) must be 1.
pub fn decode_block(s: &str) -> Result<BlockArgs, ConfigError> {
    let bad = |m: String| ConfigError::field("block_args", format!("`{s}`: {m}"));
    let mut parts = s.split('_');
    let kind = parts.next().unwrap_or_default();
    let mut opt = std::collections::HashMap::new();
    let mut noskip = false;
    for p in parts {
        if p == "noskip" {
            noskip = true;
            continue;
        }
        let (k, v) = p.split_at(1);
        opt.insert(k.to_string(), v.to_string());
    }
    let int = |k: &str, default: Option<usize>| -> Result<usize, ConfigError> {
        match opt.get(k) {
            Some(v) => v
                .parse()
                .map_err(|_| bad(format!("`{k}{v}` is not a number"))),
            None => default.ok_or_else(|| bad(format!("option `{k}` is missing"))),
        }
    };
    let float = |k: &str, default: f64| -> Result<f64, ConfigError> {
        opt.get(k).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| bad(format!("`{k}{v}` is not a number")))
        })
    };
    if int("r", Some(1))? != 1 {
        return Err(bad("repeats other than r1 are not supported".into()));
    }
    Ok(match kind {
        "er" => BlockArgs::EdgeResidual(ErArgs {
            exp_kernel_size: int("k", None)?,
            exp_ratio: float("e", 1.0)?,
            pw_kernel_size: int("p", Some(1))?,
            stride: int("s", Some(1))?,
            out_chs: int("c", None)?,
            force_in_chs: int("f", Some(0))?,
            noskip,
        }),
        "uir" => BlockArgs::Uir(UirArgs {
            dw_kernel_size_start: int("a", Some(0))?,
            dw_kernel_size_mid: int("k", Some(0))?,
            dw_kernel_size_end: int("b", Some(0))?,
            exp_ratio: float("e", 1.0)?,
            stride: int("s", Some(1))?,
            out_chs: int("c", None)?,
            noskip,
        }),
        "mqa" => {
            let d = int("d", None)?;
            BlockArgs::Mqa(MqaArgs {
                num_heads: int("h", None)?,
                key_dim: d,
                value_dim: d,
                kv_stride: int("v", Some(1))?,
                dw_kernel_size: int("k", Some(3))?,
                stride: int("s", Some(1))?,
                out_chs: int("c", None)?,
                noskip,
            })
        }
        other => {
            return Err(bad(format!(
                "block type `{other}` is not supported (er, uir, mqa)"
            )));
        }
    })
}

/// Decode one of timm's block dicts (as HF stores them in `model_args.block_args`).
pub fn block_from_json(v: &Value, at: &str) -> Result<BlockArgs, ConfigError> {
    let field = |k: &str| format!("{at}.{k}");
    let int = |k: &str, default: Option<usize>| -> Result<usize, ConfigError> {
        match v.get(k) {
            Some(x) if !x.is_null() => x
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| ConfigError::field(field(k), "must be a non-negative integer")),
            _ => default.ok_or_else(|| ConfigError::field(field(k), "is missing")),
        }
    };
    let float = |k: &str, default: f64| -> Result<f64, ConfigError> {
        match v.get(k) {
            Some(x) if !x.is_null() => x
                .as_f64()
                .ok_or_else(|| ConfigError::field(field(k), "must be a number")),
            _ => Ok(default),
        }
    };
    let noskip = v.get("noskip").and_then(|x| x.as_bool()).unwrap_or(false);
    if let Some(se) = v.get("se_ratio").and_then(|x| x.as_f64())
        && se != 0.0
    {
        return Err(ConfigError::field(
            field("se_ratio"),
            "squeeze-excite is not supported (expected 0)",
        ));
    }
    let kind = v
        .get("block_type")
        .and_then(|x| x.as_str())
        .ok_or_else(|| ConfigError::field(field("block_type"), "is missing"))?;
    Ok(match kind {
        "er" => BlockArgs::EdgeResidual(ErArgs {
            exp_kernel_size: int("exp_kernel_size", None)?,
            exp_ratio: float("exp_ratio", 1.0)?,
            pw_kernel_size: int("pw_kernel_size", Some(1))?,
            stride: int("stride", Some(1))?,
            out_chs: int("out_chs", None)?,
            force_in_chs: int("force_in_chs", Some(0))?,
            noskip,
        }),
        "uir" => BlockArgs::Uir(UirArgs {
            dw_kernel_size_start: int("dw_kernel_size_start", Some(0))?,
            dw_kernel_size_mid: int("dw_kernel_size_mid", Some(0))?,
            dw_kernel_size_end: int("dw_kernel_size_end", Some(0))?,
            exp_ratio: float("exp_ratio", 1.0)?,
            stride: int("stride", Some(1))?,
            out_chs: int("out_chs", None)?,
            noskip,
        }),
        "mqa" => BlockArgs::Mqa(MqaArgs {
            num_heads: int("num_heads", None)?,
            key_dim: int("key_dim", None)?,
            value_dim: int("value_dim", None)?,
            kv_stride: int("kv_stride", Some(1))?,
            dw_kernel_size: int("dw_kernel_size", Some(3))?,
            stride: int("stride", Some(1))?,
            out_chs: int("out_chs", None)?,
            noskip,
        }),
        other => {
            return Err(ConfigError::field(
                field("block_type"),
                format!("`{other}` is not supported (er, uir, mqa)"),
            ));
        }
    })
}

impl Gemma3nVisionConfig {
    /// Read `vision_config` from a full Gemma 3n `config.json` (or a bare vision config).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        read_config(path.as_ref(), Self::from_value)
    }

    /// From a parsed full or bare config.
    pub fn from_value(v: &Value) -> Result<Self, ConfigError> {
        let (inner, section) = match v.get("vision_config") {
            Some(x) => (x, "vision_config"),
            None => (v, ""),
        };
        let cfg: Self = deserialize(inner).map_err(|e| e.under(section))?;
        cfg.encoder_args().map_err(|e| e.under(section))?;
        Ok(cfg)
    }

    /// The encoder description: `model_args` when given, else the released 300M architecture.
    pub fn encoder_args(&self) -> Result<EncoderArgs, ConfigError> {
        if self.architecture != "mobilenetv5_300m_enc" {
            return Err(ConfigError::field(
                "architecture",
                format!(
                    "`{}` is not supported (only \"mobilenetv5_300m_enc\")",
                    self.architecture
                ),
            ));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(ConfigError::field("rms_norm_eps", "must be positive"));
        }
        let args = self.model_args.as_ref().filter(|a| !a.is_null());
        let get_usize = |k: &str, default: usize| -> Result<usize, ConfigError> {
            match args.and_then(|a| a.get(k)) {
                Some(x) => x.as_u64().map(|x| x as usize).ok_or_else(|| {
                    ConfigError::field(format!("model_args.{k}"), "must be a positive integer")
                }),
                None => Ok(default),
            }
        };
        let stages = match args.and_then(|a| a.get("block_args")) {
            Some(b) => {
                let stages = b.as_array().ok_or_else(|| {
                    ConfigError::field("model_args.block_args", "must be a list of stages")
                })?;
                stages
                    .iter()
                    .enumerate()
                    .map(|(si, st)| {
                        let blocks = st.as_array().ok_or_else(|| {
                            ConfigError::field(
                                format!("model_args.block_args[{si}]"),
                                "must be a list of blocks",
                            )
                        })?;
                        blocks
                            .iter()
                            .enumerate()
                            .map(|(bi, blk)| {
                                block_from_json(blk, &format!("model_args.block_args[{si}][{bi}]"))
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => mobilenetv5_300m_arch()
                .iter()
                .map(|st| {
                    st.iter()
                        .map(|s| decode_block(s))
                        .collect::<Result<Vec<_>, _>>()
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if stages.is_empty() || stages.iter().any(|s| s.is_empty()) {
            return Err(ConfigError::field(
                "model_args.block_args",
                "needs at least one non-empty stage",
            ));
        }
        let msfa_indices = match args.and_then(|a| a.get("msfa_indices")) {
            Some(x) => x
                .as_array()
                .and_then(|a| a.iter().map(|i| i.as_i64()).collect::<Option<Vec<_>>>())
                .ok_or_else(|| {
                    ConfigError::field("model_args.msfa_indices", "must be a list of integers")
                })?,
            None => vec![-2, -1],
        };
        if msfa_indices.is_empty() {
            return Err(ConfigError::field(
                "model_args.msfa_indices",
                "needs at least one feature map",
            ));
        }
        let stem_size = get_usize("stem_size", 64)?;
        let msfa_output_resolution = get_usize("msfa_output_resolution", 16)?;
        if stem_size == 0 || msfa_output_resolution == 0 {
            return Err(ConfigError::field(
                "model_args",
                "stem_size and msfa_output_resolution must be positive",
            ));
        }
        Ok(EncoderArgs {
            stem_size,
            stages,
            msfa_output_resolution,
            msfa_indices,
            layer_scale: true,
            eps: self.rms_norm_eps,
        })
    }
}

/// timm's `make_divisible(v, 8)`: round to a multiple of 8, never more than 10 % below `v`.
pub fn make_divisible(v: f64) -> usize {
    let divisor = 8usize;
    let mut new_v = divisor.max(((v + divisor as f64 / 2.0) as usize) / divisor * divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_strings_decode() {
        assert_eq!(
            decode_block("mqa_r1_k3_h12_v2_s1_d64_c640").unwrap(),
            BlockArgs::Mqa(MqaArgs {
                num_heads: 12,
                key_dim: 64,
                value_dim: 64,
                kv_stride: 2,
                dw_kernel_size: 3,
                stride: 1,
                out_chs: 640,
                noskip: false
            })
        );
        assert!(matches!(
            decode_block("uir_r1_a3_k5_s2_e6_c256").unwrap(),
            BlockArgs::Uir(UirArgs {
                dw_kernel_size_start: 3,
                dw_kernel_size_mid: 5,
                stride: 2,
                out_chs: 256,
                ..
            })
        ));
        assert!(decode_block("xx_r1").is_err());
        let arch = mobilenetv5_300m_arch();
        assert_eq!(arch.iter().map(|s| s.len()).sum::<usize>(), 84);
        assert_eq!(make_divisible(128.0 * 4.0), 512);
        assert_eq!(make_divisible(20.0), 24);
    }

    #[test]
    fn bad_block_args_name_the_field() {
        let v = serde_json::json!({"vision_config": {"model_args": {"block_args": [[{"block_type": "uir", "stride": 1}]]}}});
        let err = Gemma3nVisionConfig::from_value(&v).unwrap_err();
        assert_eq!(
            err.field_name(),
            Some("vision_config.model_args.block_args[0][0].out_chs")
        );
    }
}

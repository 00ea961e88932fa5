//! Weights computed from a formula instead of read from a file: every element of a tensor is a
//! hash of the tensor's name, the seed and the element's index, so any program computes the same
//! values bit for bit (numpy does: `reference/counter_weights.py`) and a released-size model needs
//! neither a download nor gigabytes of committed files.
//!
//! The formula (version `counter-v1`), all integer arithmetic wrapping on 64 bits:
//!
//! ```text
//! key(name)  = splitmix64(fnv1a64(utf8(name)) ^ seed)
//! bits(i)    = splitmix64(key + i)               for the row-major element index i
//! u(i)       = (bits(i) >> 40) / 2^24            exact in f32, in [0, 1)
//! value(i)   = center + scale · (2·u(i) − 1)     two f32 roundings (no fused multiply-add)
//! ```
//!
//! `(center, scale)` depend on the name and shape only ([`counter_rule`]): norm scales around
//! one, biases and 1-D scales around zero, matrices with variance `1/fan_in`, and the few
//! tensors whose neutral initialisation would leave a path inert (AltUp's router and
//! coefficients, the per-layer embedding branch) large enough that the path matters.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{DType, TensorData};

use super::TensorSource;
use crate::error::{KeyProblem, WeightError};

/// The name of the formula, recorded where weights were made with it.
pub const COUNTER_FORMULA: &str = "counter-v1";

fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// `(center, scale)` of the tensor `name` of HF shape `shape`: its values are uniform in
/// `center ± scale`.
pub fn counter_rule(name: &str, shape: &[usize]) -> (f32, f32) {
    let ends = |s: &str| name.ends_with(s);
    if shape.len() <= 1 {
        return if ends(".bias") {
            (0.0, 0.2)
        } else if ends("altup.correct_output_scale") || ends("per_dim_scale") {
            (0.0, 0.9)
        } else if ends("layer_scale.gamma") {
            (0.5, 0.3)
        } else if ends("self_attn.q_norm.weight") || ends("self_attn.k_norm.weight") {
            (0.5, 0.13)
        } else {
            (1.0, 0.25) // every kind of norm scale
        };
    }
    let fan_in: usize = shape[1..].iter().product();
    let scale = if ends("language_model.embed_tokens.weight") {
        // tied with the LM head: logits of standard deviation 4 whatever the width
        (48.0 / fan_in as f64).sqrt()
    } else if ends("embed_tokens_per_layer.weight") {
        0.43
    } else if ends("embedding.weight") {
        1.7 // the vision and audio hard-token tables
    } else if ends("altup.modality_router.weight") {
        // the router's input is RMS-normalised and scaled by 1/hidden
        (3.0 * fan_in as f64).sqrt()
    } else if ends("altup.prediction_coefs.weight") || ends("altup.correction_coefs.weight") {
        0.17
    } else {
        (3.0 / fan_in.max(1) as f64).sqrt() // variance 1/fan_in
    };
    (0.0, scale as f32)
}

/// The values of tensor `name` (shape `shape`) under `seed`, row-major.
pub fn counter_values(name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    counter_fill(name, shape, seed, |x| x)
}

/// [`counter_values`] rounded by `round` as they are made (to bfloat16, say), so a large table
/// never exists in float32 as a whole.
fn counter_fill<T: Copy + Default + Send>(
    name: &str,
    shape: &[usize],
    seed: u64,
    round: impl Fn(f32) -> T + Sync,
) -> Vec<T> {
    let n: usize = shape.iter().product();
    let (center, scale) = counter_rule(name, shape);
    let key = splitmix64(fnv1a64(name.as_bytes()) ^ seed);
    let mut out = vec![T::default(); n];
    let fill = |start: usize, chunk: &mut [T]| {
        for (j, v) in chunk.iter_mut().enumerate() {
            let bits = splitmix64(key.wrapping_add((start + j) as u64));
            let u = (bits >> 40) as f32 / (1u64 << 24) as f32;
            *v = round(center + scale * (2.0 * u - 1.0));
        }
    };
    const CHUNK: usize = 1 << 20;
    if n > CHUNK {
        use rayon::prelude::*;
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| fill(c * CHUNK, chunk));
    } else {
        fill(0, &mut out);
    }
    out
}

/// A [`TensorSource`] of counter-formula weights for a given set of names and HF shapes (usually
/// a model's own parameters, [`crate::tree::param_infos`]).
#[derive(Debug, Clone)]
pub struct CounterWeights {
    seed: u64,
    shapes: BTreeMap<String, Vec<usize>>,
    dtype: DType,
}

impl CounterWeights {
    /// Weights for `(name, HF shape)` pairs.
    pub fn new(seed: u64, shapes: impl IntoIterator<Item = (String, Vec<usize>)>) -> Self {
        Self {
            seed,
            shapes: shapes.into_iter().collect(),
            dtype: DType::F32,
        }
    }

    /// Hand the values out rounded to `dtype` (bfloat16 or float16, round to nearest even, as
    /// PyTorch's `.to(dtype)` rounds; anything else: float32): a bfloat16 model never holds a
    /// float32 copy of its largest table.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl TensorSource for CounterWeights {
    fn tensor_names(&self) -> Vec<String> {
        self.shapes.keys().cloned().collect()
    }

    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shapes.get(name).cloned()
    }

    fn tensor_data(&self, name: &str) -> Result<TensorData, WeightError> {
        let shape = self.shapes.get(name).ok_or_else(|| WeightError::Mismatch {
            problems: vec![KeyProblem::Missing {
                key: name.to_string(),
                expected: Vec::new(),
            }],
        })?;
        let shape = shape.clone();
        Ok(match self.dtype {
            DType::BF16 => TensorData::new(
                counter_fill(name, &shape, self.seed, half::bf16::from_f32),
                shape,
            ),
            DType::F16 => TensorData::new(
                counter_fill(name, &shape, self.seed, half::f16::from_f32),
                shape,
            ),
            _ => TensorData::new(counter_values(name, &shape, self.seed), shape),
        })
    }

    fn origin(&self) -> Option<PathBuf> {
        Some(PathBuf::from(format!(
            "<{COUNTER_FORMULA} weights, seed {}>",
            self.seed
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_formula() {
        // the first element by hand, step by step
        let name = "model.layers.0.mlp.down_proj.weight";
        let shape = [4usize, 3];
        let key = splitmix64(fnv1a64(name.as_bytes()) ^ 7);
        let u = (splitmix64(key) >> 40) as f32 / 16_777_216.0;
        let scale = (1.0f64).sqrt() as f32; // 3 / fan_in(3)
        let v = counter_values(name, &shape, 7);
        assert_eq!(v.len(), 12);
        assert_eq!(v[0].to_bits(), (0.0 + scale * (2.0 * u - 1.0)).to_bits());
        assert!(v.iter().all(|x| x.abs() < 1.0));
        // another seed or name changes every value; the same inputs give the same bits
        assert_ne!(v, counter_values(name, &shape, 8));
        assert_ne!(
            v,
            counter_values("model.layers.1.mlp.down_proj.weight", &shape, 7)
        );
        assert_eq!(v, counter_values(name, &shape, 7));
    }

    #[test]
    fn chunked_and_serial_fills_agree() {
        // above one chunk the fill runs in parallel chunks: the values must not depend on it
        let shape = [3usize, (1 << 20) / 3 + 5];
        let v = counter_values("x.weight", &shape, 1);
        let key = splitmix64(fnv1a64(b"x.weight") ^ 1);
        let (c, s) = counter_rule("x.weight", &shape);
        for i in [0, (1 << 20) - 1, 1 << 20, v.len() - 1] {
            let u = (splitmix64(key.wrapping_add(i as u64)) >> 40) as f32 / 16_777_216.0;
            assert_eq!(v[i].to_bits(), (c + s * (2.0 * u - 1.0)).to_bits(), "{i}");
        }
    }

    #[test]
    fn bfloat16_values_are_the_rounded_float32_ones() {
        let shape = vec![2usize, (1 << 20) + 3];
        let w = CounterWeights::new(3, [("t.weight".to_string(), shape.clone())])
            .with_dtype(DType::BF16);
        let got = w.tensor_data("t.weight").unwrap();
        assert_eq!(got.dtype, DType::BF16);
        let want: Vec<half::bf16> = counter_values("t.weight", &shape, 3)
            .into_iter()
            .map(half::bf16::from_f32)
            .collect();
        assert_eq!(got.to_vec::<half::bf16>().unwrap(), want);
        assert!(w.tensor_data("other").is_err());
    }

    #[test]
    fn norms_sit_around_one_and_matrices_scale_with_fan_in() {
        assert_eq!(counter_rule("a.input_layernorm.weight", &[8]), (1.0, 0.25));
        assert_eq!(counter_rule("a.q_proj.bias", &[8]), (0.0, 0.2));
        let (_, s) = counter_rule("a.q_proj.weight", &[16, 12]);
        assert_eq!(s, 0.5);
        let (_, s) = counter_rule("a.conv.weight", &[16, 3, 2, 2]);
        assert_eq!(s, 0.5);
    }

    #[test]
    fn known_values_match_numpy() {
        // printed by `python3 reference/counter_weights.py` (numpy): both sides agree bit for bit
        let v = counter_values("model.language_model.norm.weight", &[4], 1234);
        let want: [u32; 4] = KNOWN_NORM_BITS;
        assert_eq!(v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
    }

    const KNOWN_NORM_BITS: [u32; 4] = [1062749928, 1062815852, 1066796218, 1064294752];
}

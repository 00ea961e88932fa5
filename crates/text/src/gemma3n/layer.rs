//! One Gemma 3n decoder layer: AltUp predict → attention + LAuReL → FFN → AltUp correct → PLE.

use std::collections::BTreeMap;

use automodel_core::Backend;
use automodel_core::init::Initializer;
use automodel_core::nn::{Linear, RmsNorm, gelu_tanh};
use burn::prelude::*;

use super::altup::{AltUp, stream};
use super::config::Gemma3nTextConfig;
use super::laurel::Laurel;
use crate::attention::{Attention, AttentionSpec, LayerInputs};
use crate::mlp::Mlp;

/// HF `Gemma3nTextDecoderLayer`.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub self_attn: Attention<B>,
    pub mlp: Mlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub pre_feedforward_layernorm: RmsNorm<B>,
    pub post_feedforward_layernorm: RmsNorm<B>,
    pub altup: AltUp<B>,
    pub laurel: Laurel<B>,
    pub per_layer_input_gate: Linear<B>,
    pub per_layer_projection: Linear<B>,
    pub post_per_layer_input_norm: RmsNorm<B>,
    #[module(skip)]
    pub altup_correct_scale: bool,
}

/// Where a layer writes the intermediate tensors the golden files trace.
pub type Traces<B> = BTreeMap<String, Tensor<B, 3>>;

impl<B: Backend> DecoderLayer<B> {
    /// Layer `attn.layer_idx` of `cfg` (its FFN width and sparsity come from the config).
    pub fn new(init: &Initializer<B>, cfg: &Gemma3nTextConfig, attn: AttentionSpec) -> Self {
        let (h, p, eps) = (
            cfg.hidden_size,
            cfg.hidden_size_per_layer_input,
            cfg.rms_norm_eps,
        );
        let idx = attn.layer_idx;
        let norm = || RmsNorm::new(init, h, eps, false);
        Self {
            self_attn: Attention::new(init, attn),
            mlp: Mlp::new(
                init,
                h,
                cfg.intermediate_sizes()[idx],
                cfg.activation_sparsity()[idx],
            ),
            input_layernorm: norm(),
            post_attention_layernorm: norm(),
            pre_feedforward_layernorm: norm(),
            post_feedforward_layernorm: norm(),
            altup: AltUp::new(init, cfg),
            laurel: Laurel::new(init, cfg),
            per_layer_input_gate: Linear::new(init, h, p),
            per_layer_projection: Linear::new(init, p, h),
            post_per_layer_input_norm: norm(),
            altup_correct_scale: cfg.altup_correct_scale,
        }
    }

    /// `x`: streams `[K, B, T, H]`; `per_layer_input`: this layer's PLE slice `[B, T, P]`.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        per_layer_input: Tensor<B, 3>,
        layer: LayerInputs<'_, B>,
        training: bool,
        traces: Option<&mut Traces<B>>,
    ) -> Tensor<B, 4> {
        let predictions = self.altup.predict(x, training);
        let active = self.altup.active(&predictions);
        let normed = self.input_layernorm.forward(active.clone());
        let laurel = self.laurel.forward(normed.clone());
        let attn = self.self_attn.forward(normed, layer);
        let attn_normed = self.post_attention_layernorm.forward(attn.clone());
        let attn_laurel = (active + attn_normed + laurel.clone()) / std::f64::consts::SQRT_2;
        let mlp = self
            .mlp
            .forward(self.pre_feedforward_layernorm.forward(attn_laurel.clone()));
        let out = attn_laurel + self.post_feedforward_layernorm.forward(mlp.clone());
        if let Some(tr) = traces {
            let i = self.self_attn.spec.layer_idx;
            tr.insert(format!("trace.text.layer{i}.attn_out"), attn);
            tr.insert(format!("trace.text.layer{i}.mlp_out"), mlp);
            tr.insert(format!("trace.text.layer{i}.laurel_out"), laurel);
        }

        let corrected = self.altup.correct(predictions, out, training);
        let mut first = stream(&corrected, self.altup.active_idx);
        if self.altup_correct_scale {
            first = self.altup.scale_corrected_output(first);
        }
        let gate = gelu_tanh(self.per_layer_input_gate.forward(first)) * per_layer_input;
        let ple = self
            .post_per_layer_input_norm
            .forward(self.per_layer_projection.forward(gate));
        // HF adds the per-layer embedding to streams 1.. (`corrected_predictions[1:] += ...`).
        let k = corrected.dims()[0];
        let streams: Vec<Tensor<B, 4>> = (0..k)
            .map(|j| {
                let s = corrected.clone().narrow(0, j, 1);
                if j == 0 {
                    s
                } else {
                    s + ple.clone().unsqueeze_dim::<4>(0)
                }
            })
            .collect();
        Tensor::cat(streams, 0)
    }
}

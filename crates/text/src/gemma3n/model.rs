//! `Gemma3nTextModel` and `Gemma3nForCausalLM`.

use std::path::Path;

use automodel_core::Backend;
use automodel_core::init::Initializer;
use automodel_core::loss::{causal_lm_loss, lm_head_loss};
use automodel_core::nn::{Embedding, Linear, RmsNorm, softcap_opt};
use automodel_core::tree;
use automodel_core::weights::{SafeTensorsFiles, WeightLoader};
use burn::prelude::*;
use burn::tensor::{DType, Int};

use super::altup::{match_magnitude, rms, stream};
use super::config::Gemma3nTextConfig;
use super::layer::{DecoderLayer, Traces};
use crate::attention::{AttentionSpec, SharedKv, StepInputs};
use crate::cache::KvCache;
use crate::config::{KvSharing, LayerType};
use crate::error::TextError;
use crate::generate::{TextDecoder, Tokens};
use crate::train::{CausalLm, TrainBatch, TrainOptions, TrainOutput};

/// Key prefix of the text decoder inside a `Gemma3nForConditionalGeneration` checkpoint.
pub const CONDITIONAL_PREFIX: &str = "model.language_model.";

/// What a forward pass should produce beyond the final hidden state.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions {
    /// Keep the 4-stream input of every layer and the final streams (HF `output_hidden_states`).
    pub output_hidden_states: bool,
    /// Keep `attn_out`/`mlp_out`/`laurel_out` of every layer (`trace.text.layer{i}.*`).
    pub trace: bool,
    /// Training-mode behaviour (AltUp coefficient clipping).
    pub training: bool,
}

/// Outputs of [`Gemma3nTextModel::forward_embeds`].
#[derive(Debug, Clone)]
pub struct TextModelOutput<B: Backend> {
    /// After AltUp unembedding, stream mean and the final norm: `[B, T, H]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[K, B, T, H]` per layer input plus the final streams (if requested).
    pub hidden_states: Vec<Tensor<B, 4>>,
    /// The embeddings the decoder ran on, `[B, T, H]`.
    pub inputs_embeds: Tensor<B, 3>,
    /// The combined per-layer inputs, `[B, T, L, P]`.
    pub per_layer_inputs: Tensor<B, 4>,
    /// Traced intermediate tensors (if requested).
    pub traces: Traces<B>,
}

/// The Gemma 3n MatFormer text decoder (HF `Gemma3nTextModel`).
#[derive(Module, Debug)]
pub struct Gemma3nTextModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub embed_tokens_per_layer: Embedding<B>,
    pub per_layer_model_projection: Linear<B>,
    pub per_layer_projection_norm: RmsNorm<B>,
    pub altup_projections: Vec<Linear<B>>,
    pub altup_unembed_projections: Vec<Linear<B>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    #[module(skip)]
    pub config: Gemma3nTextConfig,
}

impl<B: Backend> Gemma3nTextModel<B> {
    /// What follows each optimizer step in training: every layer's AltUp prediction
    /// coefficients clamped to ±`altup_coef_clip` ([`AltUp::clamp_prediction_coefs`]).
    ///
    /// [`AltUp::clamp_prediction_coefs`]: super::altup::AltUp::clamp_prediction_coefs
    pub fn after_optimizer_step(mut self) -> Self {
        self.layers = self
            .layers
            .into_iter()
            .map(|mut l| {
                l.altup = l.altup.clamp_prediction_coefs();
                l
            })
            .collect();
        self
    }

    /// The decoder `cfg` describes, filled by `init` (random, or shapes to load a checkpoint
    /// into). The config is validated first: a bad value is an error naming the field.
    pub fn new(init: &Initializer<B>, cfg: &Gemma3nTextConfig) -> Result<Self, TextError> {
        cfg.validate()?;
        let (h, l, p, eps) = (
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.hidden_size_per_layer_input,
            cfg.rms_norm_eps,
        );
        let k = cfg.altup_num_inputs;
        let pad = cfg.pad_token_id.and_then(|p| usize::try_from(p).ok());
        let sharing = cfg.kv_sharing()?;
        let types = cfg.layer_types();
        let layers = (0..l)
            .map(|i| {
                let spec = AttentionSpec {
                    hidden_size: h,
                    num_heads: cfg.num_attention_heads,
                    num_kv_heads: cfg.num_key_value_heads,
                    head_dim: cfg.head_dim,
                    query_scale: None,
                    rms_norm_eps: eps,
                    norm_plus_one: false,
                    v_norm: true,
                    layer_idx: i,
                    layer_type: types[i],
                    sharing: sharing[i],
                };
                DecoderLayer::new(init, cfg, spec)
            })
            .collect();
        Ok(Self {
            embed_tokens: Embedding::new(init, cfg.vocab_size, h, pad),
            embed_tokens_per_layer: Embedding::new(
                init,
                cfg.vocab_size_per_layer_input,
                l * p,
                pad,
            ),
            per_layer_model_projection: Linear::new(init, h, l * p),
            per_layer_projection_norm: RmsNorm::new(init, p, eps, false),
            altup_projections: (0..k - 1).map(|_| Linear::new(init, h, h)).collect(),
            altup_unembed_projections: (0..k - 1).map(|_| Linear::new(init, h, h)).collect(),
            layers,
            norm: RmsNorm::new(init, h, eps, false),
            config: cfg.clone(),
        })
    }

    /// An empty decoding cache: sliding layers keep their window, KV-reusing layers own nothing.
    pub fn new_cache(&self) -> KvCache<B> {
        let w = self.config.sliding_window;
        let (windows, owners) = self
            .layers
            .iter()
            .map(|l| {
                let s = &l.self_attn.spec;
                (
                    (s.layer_type == LayerType::Sliding).then_some(w),
                    !matches!(s.sharing, KvSharing::Reuse { .. }),
                )
            })
            .unzip();
        KvCache::new(windows, owners)
    }

    /// Where the weights live.
    pub fn device(&self) -> B::Device {
        self.embed_tokens.weight.device()
    }

    /// Model dtype (that of the embedding table).
    pub fn dtype(&self) -> DType {
        self.embed_tokens.weight.val().dtype()
    }

    /// Check that every id is in `[0, vocab_size)`.
    pub fn check_ids(&self, ids: &Tensor<B, 2, Int>) -> Result<(), TextError> {
        if ids.dims()[1] == 0 {
            return Err(TextError::Input("input_ids is empty".into()));
        }
        let min: i64 = ids.clone().min().into_scalar().elem();
        let max: i64 = ids.clone().max().into_scalar().elem();
        let v = self.config.vocab_size as i64;
        if min < 0 || max >= v {
            return Err(TextError::Input(format!(
                "input_ids must be in [0, {v}) (vocab_size); found ids in [{min}, {max}]"
            )));
        }
        Ok(())
    }

    /// Scaled token embeddings `embed_tokens[ids] · √H` (scale rounded to the weight dtype).
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let scale = (self.config.hidden_size as f64).sqrt() as f32;
        self.embed_tokens.forward(ids) * scale as f64
    }

    /// The token part of the per-layer inputs, `embed_tokens_per_layer[ids] · √P` reshaped to
    /// `[B, T, L, P]`; ids outside `[0, vocab_size_per_layer_input)` are looked up as 0.
    pub fn per_layer_token_embeds(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 4> {
        let [b, t] = ids.dims();
        let (l, p) = (
            self.config.num_hidden_layers,
            self.config.hidden_size_per_layer_input,
        );
        let v = self.config.vocab_size_per_layer_input as i64;
        let outside = ids
            .clone()
            .greater_equal_elem(v)
            .bool_or(ids.clone().lower_elem(0));
        let ids = ids.mask_fill(outside, 0);
        let scale = (p as f64).sqrt() as f32;
        (self.embed_tokens_per_layer.forward(ids) * scale as f64).reshape([b, t, l, p])
    }

    /// Combine the context part (a projection of `inputs_embeds`) with the token part:
    /// `(RMSNorm(proj(E)·H^-½) + token)·2^-½`; without a token part HF returns the projection
    /// alone (no 2^-½).
    pub fn project_per_layer_inputs(
        &self,
        inputs_embeds: Tensor<B, 3>,
        token: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let [b, t, _] = inputs_embeds.dims();
        let (l, p) = (
            self.config.num_hidden_layers,
            self.config.hidden_size_per_layer_input,
        );
        let scale = (self.config.hidden_size as f32).powf(-0.5) as f64;
        let proj =
            (self.per_layer_model_projection.forward(inputs_embeds) * scale).reshape([b, t, l, p]);
        let proj = self.per_layer_projection_norm.forward(proj);
        match token {
            None => proj,
            Some(tok) => (proj + tok) * (1.0f32 / 2.0f32.sqrt()) as f64,
        }
    }

    /// The tied LM head: `softcap(h·Eᵀ)` with the embedding table.
    pub fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = self.embed_tokens.tied_head(hidden);
        softcap_opt(logits, self.config.final_logit_softcapping)
    }

    /// Logits `[B, V]` of the last position of `hidden` `[B, T, H]`.
    pub fn last_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, t, _] = hidden.dims();
        self.lm_logits(hidden.narrow(1, t - 1, 1))
            .reshape([b, self.config.vocab_size])
    }

    /// The training output from the final hidden states: the memory-lean loss over the
    /// batch's labels, and the full logits when asked.
    pub fn train_output(
        &self,
        hidden: Tensor<B, 3>,
        batch: &TrainBatch<B>,
        opts: TrainOptions,
    ) -> TrainOutput<B> {
        let logits = opts.return_logits.then(|| self.lm_logits(hidden.clone()));
        let loss = lm_head_loss(
            hidden,
            self.embed_tokens.weight.val(),
            self.config.final_logit_softcapping,
            batch.labels.clone(),
            opts.with_grad,
        );
        TrainOutput { loss, logits }
    }

    /// Forward from token ids (`[B, T]`). `attention_mask` (1 = real token) and `position_ids`
    /// default to all ones and to consecutive positions after whatever `cache` holds.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        position_ids: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
        opts: ForwardOptions,
    ) -> Result<TextModelOutput<B>, TextError> {
        self.check_ids(&ids)?;
        let embeds = self.embed(ids.clone());
        let token = self.per_layer_token_embeds(ids);
        self.forward_embeds(
            embeds,
            Some(token),
            attention_mask,
            position_ids,
            cache,
            opts,
        )
    }

    /// Forward from embeddings (`[B, T, H]`, e.g. with multimodal soft tokens merged in) and the
    /// token part of the per-layer inputs.
    pub fn forward_embeds(
        &self,
        inputs_embeds: Tensor<B, 3>,
        per_layer_token_embeds: Option<Tensor<B, 4>>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        position_ids: Option<Tensor<B, 2, Int>>,
        mut cache: Option<&mut KvCache<B>>,
        opts: ForwardOptions,
    ) -> Result<TextModelOutput<B>, TextError> {
        let cfg = &self.config;
        let device = self.device();
        let dtype = inputs_embeds.dtype();
        let [b, t, h] = inputs_embeds.dims();
        if h != cfg.hidden_size {
            return Err(TextError::Input(format!(
                "inputs_embeds has width {h}, expected hidden_size {}",
                cfg.hidden_size
            )));
        }
        let geometry = cfg.attention_geometry()?;
        let (mask, pos) = (attention_mask, position_ids);
        let step = StepInputs::new(b, t, mask, pos, cache.as_deref(), geometry, &device, dtype)?;

        let per_layer_inputs =
            self.project_per_layer_inputs(inputs_embeds.clone(), per_layer_token_embeds);

        // AltUp streams: the embeddings plus K−1 magnitude-matched projections.
        let target = rms(inputs_embeds.clone());
        let mut streams = vec![inputs_embeds.clone()];
        for proj in &self.altup_projections {
            streams.push(match_magnitude(
                proj.forward(inputs_embeds.clone()),
                target.clone(),
            ));
        }
        let mut x = Tensor::stack::<4>(streams, 0);

        let mut hidden_states = Vec::new();
        let mut traces = Traces::new();
        let mut shared = SharedKv::new();
        let (l, p) = (cfg.num_hidden_layers, cfg.hidden_size_per_layer_input);
        for (i, layer) in self.layers.iter().enumerate() {
            if opts.output_hidden_states {
                hidden_states.push(x.clone());
            }
            let pli = per_layer_inputs.clone().narrow(2, i, 1).reshape([b, t, p]);
            let inputs = step.layer(&layer.self_attn, &mut shared, cache.as_deref_mut());
            x = layer.forward(
                x,
                pli,
                inputs,
                opts.training,
                opts.trace.then_some(&mut traces),
            );
        }
        debug_assert_eq!(self.layers.len(), l);
        if opts.output_hidden_states {
            hidden_states.push(x.clone());
        }

        // Unembed: magnitude-match streams 1.. to stream 0, average, norm.
        let x0 = stream(&x, 0);
        let target = rms(x0.clone());
        let mut outs = vec![x0];
        for (j, proj) in self.altup_unembed_projections.iter().enumerate() {
            outs.push(match_magnitude(
                proj.forward(stream(&x, j + 1)),
                target.clone(),
            ));
        }
        let merged = Tensor::stack::<4>(outs, 0).mean_dim(0).squeeze_dim::<3>(0);
        let last_hidden_state = self.norm.forward(merged);

        if let Some(c) = cache {
            step.commit(c);
        }
        Ok(TextModelOutput {
            last_hidden_state,
            hidden_states,
            inputs_embeds,
            per_layer_inputs,
            traces,
        })
    }
}

/// Outputs of [`Gemma3nForCausalLM::forward`].
#[derive(Debug, Clone)]
pub struct CausalLmOutput<B: Backend> {
    /// Soft-capped logits `[B, T, V]`.
    pub logits: Tensor<B, 3>,
    /// Mean causal-LM loss over labelled tokens, when labels were given and any is labelled.
    pub loss: Option<Tensor<B, 1>>,
    /// The decoder's outputs.
    pub model: TextModelOutput<B>,
}

/// The text decoder with its tied, soft-capped LM head (HF `Gemma3nForCausalLM`).
#[derive(Module, Debug)]
pub struct Gemma3nForCausalLM<B: Backend> {
    pub model: Gemma3nTextModel<B>,
    /// Key prefix the weights were loaded from (and are saved under).
    #[module(skip)]
    pub prefix: String,
}

impl<B: Backend> Gemma3nForCausalLM<B> {
    /// Load from a checkpoint (file, folder or index) whose keys follow one of the HF layouts:
    /// `model.language_model.*` (full Gemma 3n), `model.*` (text-only causal LM) or bare names.
    /// `config.json` is read from the folder unless a config is given.
    pub fn from_pretrained(
        path: impl AsRef<Path>,
        config: Option<Gemma3nTextConfig>,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, TextError> {
        let path = path.as_ref();
        let cfg = match config {
            Some(c) => c,
            None => {
                let dir = automodel_core::weights::checkpoint_dir(path);
                Gemma3nTextConfig::from_file(dir.join("config.json"))?
            }
        };
        let files = SafeTensorsFiles::open(path)?;
        Self::from_files(&files, &cfg, device, dtype)
    }

    /// Load from opened checkpoint files.
    pub fn from_files(
        files: &SafeTensorsFiles,
        cfg: &Gemma3nTextConfig,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, TextError> {
        let prefix = detect_prefix(files);
        let loader = WeightLoader::<B>::new(files, prefix.clone(), device, dtype);
        let model = Gemma3nTextModel::new(&Initializer::shapes(device, dtype), cfg)?;
        let model = tree::load(model, &loader);
        let reuse = reusing_layers(cfg)?;
        loader.finish(|rel| ignored_key(rel, &reuse))?;
        Ok(Self { model, prefix })
    }

    /// Random initialisation (`initializer_range`).
    pub fn init(
        cfg: &Gemma3nTextConfig,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, TextError> {
        let init = Initializer::random(device, dtype, cfg.initializer_range);
        Ok(Self {
            model: Gemma3nTextModel::new(&init, cfg)?,
            prefix: CONDITIONAL_PREFIX.to_string(),
        })
    }

    /// The config.
    pub fn config(&self) -> &Gemma3nTextConfig {
        &self.model.config
    }

    /// Tied head: `softcap(h·Eᵀ)`.
    pub fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.model.lm_logits(hidden)
    }

    /// Forward with optional labels (`[B, T]`, `-100` = ignored), full logits.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        labels: Option<Tensor<B, 2, Int>>,
        opts: ForwardOptions,
    ) -> Result<CausalLmOutput<B>, TextError> {
        let out = self.model.forward(ids, attention_mask, None, None, opts)?;
        let logits = self.lm_logits(out.last_hidden_state.clone());
        let loss = labels.and_then(|l| causal_lm_loss(logits.clone(), l));
        Ok(CausalLmOutput {
            logits,
            loss,
            model: out,
        })
    }

    /// Write `config.json` (a bare text config) and the weights in HF layout (single file, or
    /// shards of at most `max_shard_bytes` with an index), atomically. Returns the files written.
    pub fn save_pretrained(
        &self,
        dir: impl AsRef<Path>,
        max_shard_bytes: Option<usize>,
    ) -> Result<Vec<std::path::PathBuf>, TextError> {
        let mut cfg = serde_json::to_value(&self.model.config).expect("serialisable");
        if let Some(o) = cfg.as_object_mut() {
            o.insert("model_type".into(), "gemma3n_text".into());
            o.insert(
                "architectures".into(),
                serde_json::json!(["Gemma3nForCausalLM"]),
            );
        }
        let (model, prefix) = (&self.model, &self.prefix);
        Ok(tree::save_pretrained(
            model,
            prefix,
            &cfg,
            dir.as_ref(),
            max_shard_bytes,
        )?)
    }
}

crate::generate::text_generate!(Gemma3nForCausalLM);

impl<B: Backend> TextDecoder<B> for Gemma3nForCausalLM<B> {
    fn decode(&self, t: Tokens<B>, cache: &mut KvCache<B>) -> Result<Tensor<B, 2>, TextError> {
        let opts = ForwardOptions::default();
        let out = (self.model).forward(t.ids, t.mask, t.positions, Some(cache), opts)?;
        Ok(self.model.last_logits(out.last_hidden_state))
    }
    fn new_cache(&self) -> KvCache<B> {
        self.model.new_cache()
    }
    fn max_positions(&self) -> usize {
        self.model.config.max_position_embeddings
    }
    fn device(&self) -> B::Device {
        self.model.device()
    }
}

impl<B: Backend> CausalLm<B> for Gemma3nForCausalLM<B> {
    type Error = TextError;

    fn after_optimizer_step(self) -> Self {
        Self {
            model: self.model.after_optimizer_step(),
            prefix: self.prefix,
        }
    }

    fn forward_train(
        &self,
        batch: &TrainBatch<B>,
        opts: TrainOptions,
    ) -> Result<TrainOutput<B>, TextError> {
        batch.validate()?;
        let fwd = ForwardOptions {
            training: opts.training,
            ..Default::default()
        };
        let out = self.model.forward(
            batch.input_ids.clone(),
            Some(batch.attention_mask.clone()),
            batch.position_ids.clone(),
            None,
            fwd,
        )?;
        Ok(self.model.train_output(out.last_hidden_state, batch, opts))
    }
}

/// Indices of the layers that reuse another layer's K/V.
pub fn reusing_layers(cfg: &Gemma3nTextConfig) -> Result<Vec<usize>, TextError> {
    Ok(cfg
        .kv_sharing()?
        .iter()
        .enumerate()
        .filter(|(_, m)| matches!(m, KvSharing::Reuse { .. }))
        .map(|(i, _)| i)
        .collect())
}

/// Which HF layout a checkpoint uses for the text decoder.
pub fn detect_prefix(files: &SafeTensorsFiles) -> String {
    for p in [CONDITIONAL_PREFIX, "model.", ""] {
        if files.contains(&format!("{p}embed_tokens.weight")) {
            return p.to_string();
        }
    }
    CONDITIONAL_PREFIX.to_string()
}

/// Keys (relative to the text prefix) a checkpoint may hold that the model deliberately does not use: the (zero) K/V weights
/// released checkpoints keep for KV-reusing layers, and a duplicated tied `lm_head`.
pub fn ignored_key(rel: &str, reuse: &[usize]) -> bool {
    if rel == "lm_head.weight" {
        return true;
    }
    if let Some(rest) = rel.strip_prefix("layers.")
        && let Some((idx, tail)) = rest.split_once('.')
        && let Ok(i) = idx.parse::<usize>()
    {
        return reuse.contains(&i)
            && matches!(
                tail,
                "self_attn.k_proj.weight" | "self_attn.v_proj.weight" | "self_attn.k_norm.weight"
            );
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use automodel_core::CpuAutodiff as A;

    /// The trainer calls the hook through `CausalLm`: every layer's AltUp prediction
    /// coefficients end within ±`altup_coef_clip`.
    #[test]
    fn the_after_step_hook_clamps_every_layers_altup_coefficients() {
        let mut cfg = Gemma3nTextConfig::tiny();
        cfg.altup_coef_clip = Some(0.25);
        let mut m = Gemma3nForCausalLM::<A>::init(&cfg, &Default::default(), DType::F32).unwrap();
        for l in &mut m.model.layers {
            let w = &mut l.altup.prediction_coefs.weight;
            let big = Tensor::full(w.shape(), 2.0, &Default::default());
            *w = burn::module::Param::from_tensor(big.require_grad());
        }
        let m = CausalLm::after_optimizer_step(m);
        assert!(m.model.layers.len() > 1);
        for l in &m.model.layers {
            let v: Vec<f32> = l
                .altup
                .prediction_coefs
                .weight
                .val()
                .into_data()
                .to_vec()
                .unwrap();
            assert!(v.iter().all(|&x| x == 0.25), "{v:?}");
        }
    }
}

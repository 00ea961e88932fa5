//! Tiny, exact model files made in code, for tests of what users' files can get wrong: a
//! Gemma 3 GGUF (six layers, the last global; hidden size 16, a 300-token vocabulary) that loads, generates and
//! converts, and that a test then breaks one field or tensor at a time.

use automodel_gguf::{GgufValue, GgufWriter};

/// Sizes of [`tiny_gemma3_gguf`].
pub const TINY_LAYERS: usize = 6;
pub const TINY_HIDDEN: usize = 16;
pub const TINY_FFN: usize = 32;
pub const TINY_HEADS: usize = 2;
pub const TINY_KV_HEADS: usize = 1;
pub const TINY_HEAD_DIM: usize = 8;
pub const TINY_CONTEXT: usize = 64;

/// Words of the tiny vocabulary (after the control and byte tokens).
const WORDS: [&str; 40] = [
    "▁", "a", "e", "i", "o", "u", "t", "n", "s", "r", "h", "l", "d", "c", "m", "w", "▁the", "▁a",
    "▁is", "▁of", "▁to", "▁and", "▁in", "▁it", "▁water", "▁boils", "▁at", "▁hot", "▁cold", "er",
    "in", "on", "an", "th", "he", "re", "at", "en", "▁w", "▁b",
];

/// The tiny vocabulary: `<pad>`, `<eos>`, `<bos>`, `<unk>`, `<start_of_turn>`,
/// `<end_of_turn>`, the 256 byte tokens, then [`WORDS`]; with sentencepiece scores and token
/// types (3 control, 6 byte, 1 normal).
pub fn tiny_vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens: Vec<String> = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<start_of_turn>",
        "<end_of_turn>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut types = vec![3, 3, 3, 2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for w in WORDS {
        tokens.push(w.to_string());
        types.push(1);
    }
    let scores = (0..tokens.len()).map(|i| -(i as f32)).collect();
    (tokens, scores, types)
}

/// Deterministic values in (-scale, scale) (a fixed linear congruential sequence).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A complete, loadable Gemma 3 GGUF of the tiny sizes above (F32 tensors, llama.cpp names,
/// norms stored as `1 + w`). Change it with [`GgufWriter::set`], [`GgufWriter::remove`],
/// [`GgufWriter::tensor_raw`] … and write it with [`GgufWriter::write`].
pub fn tiny_gemma3_gguf() -> GgufWriter {
    let (tokens, scores, types) = tiny_vocab();
    let v = tokens.len();
    let (h, f, hd) = (TINY_HIDDEN, TINY_FFN, TINY_HEAD_DIM);
    let (q, kv) = (TINY_HEADS * hd, TINY_KV_HEADS * hd);
    let u32v = |x: usize| GgufValue::U32(x as u32);
    let mut w = GgufWriter::new();
    w.set("general.architecture", GgufValue::String("gemma3".into()))
        .set("general.name", GgufValue::String("tiny-gemma3".into()))
        .set("gemma3.block_count", u32v(TINY_LAYERS))
        .set("gemma3.embedding_length", u32v(h))
        .set("gemma3.feed_forward_length", u32v(f))
        .set("gemma3.attention.head_count", u32v(TINY_HEADS))
        .set("gemma3.attention.head_count_kv", u32v(TINY_KV_HEADS))
        .set("gemma3.attention.key_length", u32v(hd))
        .set("gemma3.attention.value_length", u32v(hd))
        .set(
            "gemma3.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-6),
        )
        .set("gemma3.context_length", u32v(TINY_CONTEXT))
        .set("gemma3.attention.sliding_window", u32v(4))
        .set("gemma3.rope.freq_base", GgufValue::F32(1e6))
        .set("tokenizer.ggml.model", GgufValue::String("llama".into()))
        .set(
            "tokenizer.ggml.tokens",
            GgufValue::Array(tokens.into_iter().map(GgufValue::String).collect()),
        )
        .set(
            "tokenizer.ggml.scores",
            GgufValue::Array(scores.into_iter().map(GgufValue::F32).collect()),
        )
        .set(
            "tokenizer.ggml.token_type",
            GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
        )
        .set("tokenizer.ggml.bos_token_id", GgufValue::U32(2))
        .set("tokenizer.ggml.eos_token_id", GgufValue::U32(1))
        .set("tokenizer.ggml.unknown_token_id", GgufValue::U32(3))
        .set("tokenizer.ggml.padding_token_id", GgufValue::U32(0));
    let mut seed = 0;
    let mut matrix = |w: &mut GgufWriter, name: &str, rows: usize, cols: usize| {
        seed += 1;
        w.tensor_f32(name, &[rows, cols], &values(rows * cols, seed, 0.3));
    };
    let norm = |w: &mut GgufWriter, name: &str, n: usize| {
        let vals: Vec<f32> = values(n, n as u64, 0.1).iter().map(|x| 1.0 + x).collect();
        w.tensor_f32(name, &[n], &vals);
    };
    matrix(&mut w, "token_embd.weight", v, h);
    norm(&mut w, "output_norm.weight", h);
    for l in 0..TINY_LAYERS {
        let b = |s: &str| format!("blk.{l}.{s}.weight");
        matrix(&mut w, &b("attn_q"), q, h);
        matrix(&mut w, &b("attn_k"), kv, h);
        matrix(&mut w, &b("attn_v"), kv, h);
        matrix(&mut w, &b("attn_output"), h, q);
        norm(&mut w, &b("attn_q_norm"), hd);
        norm(&mut w, &b("attn_k_norm"), hd);
        for n in [
            "attn_norm",
            "post_attention_norm",
            "ffn_norm",
            "post_ffw_norm",
        ] {
            norm(&mut w, &b(n), h);
        }
        matrix(&mut w, &b("ffn_gate"), f, h);
        matrix(&mut w, &b("ffn_up"), f, h);
        matrix(&mut w, &b("ffn_down"), h, f);
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use automodel_core::CpuBackend as B;
    use burn::tensor::DType;

    #[test]
    fn the_tiny_gguf_loads_and_encodes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tiny.gguf");
        tiny_gemma3_gguf().write(&p).unwrap();
        let (m, tok) =
            automodel_models::convert::load_gguf::<B>(&p, &Default::default(), DType::F32).unwrap();
        assert_eq!(m.config.num_hidden_layers, TINY_LAYERS);
        assert_eq!(m.config.vocab_size, tiny_vocab().0.len());
        let ids = tok.encode("the water boils", true).unwrap();
        assert_eq!(ids[0], 2, "bos first");
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            "the water boils",
            "{ids:?}"
        );
    }
}

//! The Gemma tokenizer on the `tokenizers` crate.
//!
//! From a GGUF vocabulary it is assembled as Hugging Face assembles it (transformers'
//! `GGUFGemmaConverter`): runs of spaces respelled as `▁`, BPE merges derived from the vocabulary
//! (ranked by vocabulary order), byte fallback, `" " → "▁"` normalisation, and a
//! `Replace("▁", " ") + ByteFallback + Fuse` decoder. Control tokens (`<bos>`, `<start_of_turn>`,
//! …) are special tokens. A `tokenizer.json` can be loaded instead, and either can be saved.

use std::collections::HashMap;
use std::path::Path;

use automodel_gguf::{GgufFile, GgufValue};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, Tokenizer};

/// Errors building, loading, saving or running the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

fn tk(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Tokenizer(e.to_string())
}

/// A vocabulary in llama.cpp's terms (`tokenizer.ggml.tokens`, `.scores`, `.token_type`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlamaVocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
}

/// SentencePiece's byte-fallback pieces: `<0x00>` … `<0xFF>`.
fn is_byte_piece(p: &str) -> bool {
    p.len() == 6
        && p.starts_with("<0x")
        && p.ends_with('>')
        && p[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// The Gemma tokenizer.
#[derive(Clone)]
pub struct GemmaTokenizer {
    pub inner: Tokenizer,
    pub bos_id: u32,
    pub eos_id: u32,
    pub pad_id: u32,
}

impl std::fmt::Debug for GemmaTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GemmaTokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

/// A run of spaces, as the vocabulary spells it: `▁` per space.
fn respell(token: &str) -> String {
    if !token.is_empty() && token.chars().all(|c| c == ' ') {
        "▁".repeat(token.chars().count())
    } else {
        token.to_string()
    }
}

/// BPE merges derived from a vocabulary, as `GGUFTokenizerSkeleton(merge_ranks_from_vocab_order=True)`
/// derives them: every split of a token into two vocabulary pieces is a merge; merges are ordered
/// by the token's position, and a token's own splits by the pieces' scores (higher first).
pub fn derive_merges(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // `vocab` in HF is a dict: a duplicated token keeps the score of its last occurrence.
    let score = |t: &str| scores[index[t]];
    let mut merges = Vec::new();
    for token in tokens {
        let mut local: Vec<(&str, &str)> = Vec::new();
        for (i, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(i);
            if index.contains_key(l) && index.contains_key(r) {
                local.push((l, r));
            }
        }
        local.sort_by(|a, b| {
            (score(b.0), score(b.1))
                .partial_cmp(&(score(a.0), score(a.1)))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        merges.extend(
            local
                .into_iter()
                .map(|(l, r)| (l.to_string(), r.to_string())),
        );
    }
    merges
}

impl GemmaTokenizer {
    /// Build from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        Self::from_gguf_with(file, false)
    }

    /// The Gemma 3n vocabulary built on a Gemma 3 GGUF's: Hugging Face's Gemma 3n conversion
    /// puts `<start_of_audio>` at id 256,000 (Gemma 3's `<end_of_image>`) and appends 256
    /// multimodal ids from 262,144 (`<end_of_image>`, `<image_soft_token>`, …, `<end_of_audio>`,
    /// `<audio_soft_token>`, …), all special.
    pub fn gemma3n_from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        Self::from_gguf_with(file, true)?.with_gemma3n_multimodal_tokens()
    }

    fn from_gguf_with(file: &GgufFile, gemma3n: bool) -> Result<Self, TokenizerError> {
        let path = file.path.display().to_string();
        let bad = |m: &str| TokenizerError::File {
            path: path.clone(),
            message: m.to_string(),
        };
        match file.get("tokenizer.ggml.model").and_then(|v| v.as_str()) {
            Some("llama") | Some("gemma4") => {}
            other => {
                return Err(bad(&format!(
                    "tokenizer.ggml.model is {other:?}; expected a Gemma (sentencepiece) vocabulary"
                )));
            }
        }
        let arr = |k: &str| {
            file.get(k)
                .and_then(|v| v.as_array())
                .ok_or_else(|| bad(&format!("`{k}` is missing")))
        };
        let mut tokens: Vec<String> = arr("tokenizer.ggml.tokens")?
            .iter()
            .map(|v| v.as_str().map(respell))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("tokens must be strings"))?;
        if gemma3n {
            match tokens.get_mut(GEMMA3N_BOA_ID) {
                Some(t) if t == "<end_of_image>" => *t = "<start_of_audio>".into(),
                other => {
                    return Err(bad(&format!(
                        "id {GEMMA3N_BOA_ID} is {other:?}; expected Gemma 3's `<end_of_image>` to turn into Gemma 3n's `<start_of_audio>`"
                    )));
                }
            }
        }
        let scores: Vec<f32> = arr("tokenizer.ggml.scores")?
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("scores must be numbers"))?;
        let types: Vec<u64> = match file.get("tokenizer.ggml.token_type") {
            Some(GgufValue::Array(a)) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        if scores.len() != tokens.len() || types.len() != tokens.len() {
            return Err(bad("tokens, scores and token types differ in length"));
        }
        if tokens.is_empty() {
            return Err(bad("`tokenizer.ggml.tokens` is empty"));
        }
        // every special id must name a token of the vocabulary
        let id = |k: &str, d: u32| -> Result<u32, TokenizerError> {
            let v = match file.get(k) {
                None => u64::from(d),
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| bad(&format!("`{k}` is {v:?}, expected a token id")))?,
            };
            if v >= tokens.len() as u64 {
                return Err(bad(&format!(
                    "`{k}` is {v}, outside the vocabulary of {} tokens",
                    tokens.len()
                )));
            }
            Ok(v as u32)
        };
        let (bos, eos, unk, pad) = (
            id("tokenizer.ggml.bos_token_id", 2)?,
            id("tokenizer.ggml.eos_token_id", 1)?,
            id("tokenizer.ggml.unknown_token_id", 3)?,
            id("tokenizer.ggml.padding_token_id", 0)?,
        );
        let merges = derive_merges(&tokens, &scores);
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(
                tokens
                    .get(unk as usize)
                    .cloned()
                    .unwrap_or_else(|| "<unk>".into()),
            )
            .fuse_unk(true)
            .byte_fallback(true)
            .build()
            .map_err(tk)?;
        let mut inner = Tokenizer::new(bpe);
        inner
            .with_normalizer(Some(Replace::new(" ", "▁").map_err(tk)?))
            .map_err(tk)?;
        let decoder = DecoderSequence::new(vec![
            DecoderWrapper::Replace(Replace::new("▁", " ").map_err(tk)?),
            DecoderWrapper::ByteFallback(ByteFallback::default()),
            DecoderWrapper::Fuse(Fuse::default()),
        ]);
        inner.with_decoder(Some(decoder));
        // As HF's GGUF converter: control tokens (type 3) are special (matched whole, skipped
        // when decoding); user-defined tokens (type 4, e.g. `<start_of_image>`) are plain added
        // tokens, also matched whole (llama.cpp never splits them).
        let added = |kind: u64, special: bool| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(&types)
                .filter(|(_, t)| **t == kind)
                .map(|(s, _)| AddedToken::from(s.clone(), special).normalized(false))
                .collect()
        };
        inner.add_special_tokens(added(3, true)).map_err(tk)?;
        inner.add_tokens(added(4, false)).map_err(tk)?;
        let mut this = Self {
            inner,
            bos_id: bos,
            eos_id: eos,
            pad_id: pad,
        };
        this.set_bos_template(&tokens[bos as usize])?;
        Ok(this)
    }

    fn set_bos_template(&mut self, bos: &str) -> Result<(), TokenizerError> {
        let post = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .map_err(tk)?
            .try_pair(format!("{bos} $A $B"))
            .map_err(tk)?
            .special_tokens(vec![(bos.to_string(), self.bos_id)])
            .build()
            .map_err(tk)?;
        self.inner.with_post_processor(Some(post));
        Ok(())
    }

    /// Load a Hugging Face `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let p = path.as_ref();
        let file_err = |message: String| TokenizerError::File {
            path: p.display().to_string(),
            message,
        };
        // the tokenizers crate panics on some malformed files (an `expect` in its decoder's
        // deserializer, found by `cargo xtask fuzz`): that is an unreadable file, not the end
        // of the program
        let inner = std::panic::catch_unwind(|| Tokenizer::from_file(p))
            .map_err(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                file_err(format!(
                    "not a readable tokenizer.json (the parser stopped: {why})"
                ))
            })?
            .map_err(|e| file_err(e.to_string()))?;
        // it also trusts the file at use: a post-processor naming a special token the file does
        // not define panics in `encode`; try the file once here, so that such a file is refused
        // when it is loaded
        let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner
                .encode("a b", true)
                .map(|e| inner.decode(e.get_ids(), false))
        }));
        if !matches!(probe, Ok(Ok(Ok(_)))) {
            return Err(file_err(
                "not a usable tokenizer.json: encoding a test string with it fails (its post-processor or decoder does not match its vocabulary)".into(),
            ));
        }
        let id = |t: &str, d: u32| inner.token_to_id(t).unwrap_or(d);
        let (bos_id, eos_id, pad_id) = (id("<bos>", 2), id("<eos>", 1), id("<pad>", 0));
        Ok(Self {
            inner,
            bos_id,
            eos_id,
            pad_id,
        })
    }

    /// Write `tokenizer.json`, atomically (a temporary file renamed into place).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let p = path.as_ref();
        let file_err = |message: String| TokenizerError::File {
            path: p.display().to_string(),
            message,
        };
        let text = self
            .inner
            .to_string(true)
            .map_err(|e| file_err(e.to_string()))?;
        automodel_core::weights::write_atomic(p, text.as_bytes())
            .map_err(|e| file_err(e.to_string()))
    }

    /// Ids that end generation: `<eos>`, and `<end_of_turn>` (chat turns end with it) when the
    /// vocabulary has it.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids = vec![self.eos_id];
        ids.extend(self.inner.token_to_id("<end_of_turn>"));
        ids
    }

    /// Hugging Face's `tokenizer_config.json` for this vocabulary: the Gemma special tokens, BOS
    /// added and EOS not, so `AutoTokenizer` encodes as [`GemmaTokenizer::encode`] with BOS.
    pub fn hf_tokenizer_config(&self) -> serde_json::Value {
        let name = |id: u32| self.inner.id_to_token(id);
        serde_json::json!({
            "tokenizer_class": "GemmaTokenizer",
            "bos_token": name(self.bos_id),
            "eos_token": name(self.eos_id),
            "pad_token": name(self.pad_id),
            "unk_token": self.inner.token_to_id("<unk>").and_then(name),
            "add_bos_token": true,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
        })
    }

    /// Token ids of `text`; with `add_bos` the `<bos>` id first.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        Ok(self
            .inner
            .encode(text, add_bos)
            .map_err(tk)?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids` (special tokens dropped when `skip_special`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner.decode(ids, skip_special).map_err(tk)
    }

    /// The vocabulary as llama.cpp's `llama` (SentencePiece) tokenizer stores it: pieces by id,
    /// scores and token types (1 normal, 3 control, 4 user-defined, 6 byte). Control tokens are
    /// the special added tokens, user-defined ones the other added tokens (a run of `▁` among
    /// them is a run of spaces again, as SentencePiece spells it); byte pieces are `<0xXX>`.
    /// Scores keep the vocabulary's merge order: a normal piece scores `-id` (SentencePiece
    /// writes `c - id`, an order-preserving shift), control and user-defined pieces -1000, bytes 0.
    pub fn llama_vocab(&self) -> LlamaVocab {
        let added = self.inner.get_added_tokens_decoder();
        let n = self.vocab_size();
        let mut v = LlamaVocab::default();
        for id in 0..n as u32 {
            let piece = self.inner.id_to_token(id).unwrap_or_default();
            let (piece, ty, score) = match added.get(&id) {
                Some(t) if t.special => (piece, 3, -1000.0),
                Some(_) if !piece.is_empty() && piece.chars().all(|c| c == '\u{2581}') => {
                    (" ".repeat(piece.chars().count()), 4, -1000.0)
                }
                Some(_) => (piece, 4, -1000.0),
                None if is_byte_piece(&piece) => (piece, 6, 0.0),
                None => (piece, 1, -(id as f32)),
            };
            v.tokens.push(piece);
            v.types.push(ty);
            v.scores.push(score);
        }
        v
    }

    /// Number of ids (base vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Gemma 3n extends the 262,144-piece Gemma vocabulary by 256 multimodal ids: 128 vision ids
    /// from 262,144 (`<end_of_image>`, `<image_soft_token>`, then reserved) and 128 audio ids from
    /// 262,272 (`<end_of_audio>`, `<audio_soft_token>`, then reserved). Adds them as special tokens
    /// at exactly those ids.
    fn with_gemma3n_multimodal_tokens(mut self) -> Result<Self, TokenizerError> {
        let base = self.inner.get_vocab_size(true);
        if base != 262_144 {
            return Err(TokenizerError::Tokenizer(format!(
                "expected the 262,144-id Gemma vocabulary, found {base} ids"
            )));
        }
        let mut names = Vec::with_capacity(256);
        for (offset, first, second, kind) in [
            (0, "<end_of_image>", "<image_soft_token>", "vision"),
            (128, "<end_of_audio>", "<audio_soft_token>", "audio"),
        ] {
            for i in 0..128 {
                names.push(match i {
                    0 => first.to_string(),
                    1 => second.to_string(),
                    _ => format!("<reserved_{kind}_{}>", offset + i),
                });
            }
        }
        let added: Vec<AddedToken> = names
            .iter()
            .map(|n| AddedToken::from(n.clone(), true))
            .collect();
        self.inner.add_special_tokens(added).map_err(tk)?;
        for (i, n) in names.iter().enumerate() {
            let want = 262_144 + i as u32;
            if self.inner.token_to_id(n) != Some(want) {
                return Err(TokenizerError::Tokenizer(format!(
                    "`{n}` did not land at id {want}"
                )));
            }
        }
        Ok(self)
    }
}

/// Gemma 3n's `<start_of_audio>` (HF's conversion: "Should be ID=256_000").
const GEMMA3N_BOA_ID: usize = 256_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_vocabulary_order_then_scores() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, -1.0, -2.0, -3.0, -4.0, -5.0];
        let m = derive_merges(&tokens, &scores);
        assert_eq!(
            m,
            vec![
                ("a".into(), "b".into()),
                ("b".into(), "c".into()),
                ("a".into(), "bc".into()),
                ("ab".into(), "c".into())
            ]
        );
        assert_eq!(respell("   "), "▁▁▁");
        assert_eq!(respell("a b"), "a b");
    }

    /// A small valid tokenizer.json, as a JSON value.
    fn small() -> serde_json::Value {
        serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [{"id": 0, "content": "<bos>", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": null,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": {"<bos>": 0, "a": 1, "b": 2, " ": 3, "ab": 4}, "merges": [["a", "b"]]}
        })
    }

    fn load(v: &serde_json::Value) -> Result<GemmaTokenizer, TokenizerError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, v.to_string()).unwrap();
        GemmaTokenizer::from_file(&p)
    }

    #[test]
    fn malformed_tokenizer_files_are_errors_not_panics() {
        // found by `cargo xtask fuzz`: the tokenizers crate panics on both
        let ok = small();
        assert!(load(&ok).is_ok());
        // a decoder that is not an object: an `expect` in the crate's deserializer
        let mut bad = ok.clone();
        bad["decoder"] = serde_json::json!(5);
        let e = load(&bad).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
        // a template naming a special token the file does not define: a panic in `encode`
        let mut bad = ok.clone();
        bad["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<x>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}
        });
        let e = load(&bad).unwrap_err().to_string();
        assert!(e.contains("not a usable tokenizer.json"), "{e}");
    }
}

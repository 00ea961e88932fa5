//! `Gemma3nProcessor` with the real Gemma vocabulary (the 270M's, extended by Gemma 3n's 256
//! multimodal ids): HF's placeholder expansion, the same token layout as the golden multimodal
//! inputs, media batching and its errors.

use crate::common;

use automodel_audio::features::{FeatureExtractor, FeatureExtractorConfig};
use automodel_core::CpuBackend as B;
use automodel_core::weights::SafeTensorsFiles;
use automodel_gemma3n::processor::{Padding, Prompt};
use automodel_gemma3n::{Gemma3nConfig, Gemma3nProcessor};
use automodel_gguf::GgufFile;
use automodel_tokenizer::GemmaTokenizer;
use automodel_vision::processor::{ImageProcessorConfig, RgbImage};
use common::{case, rows};

fn gguf() -> GgufFile {
    let p = automodel_parity::gemma3_270m_path();
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask fetch-model gemma-3-270m` first",
        p.display()
    );
    GgufFile::open(&p).unwrap()
}

fn processor() -> Gemma3nProcessor {
    let tok = GemmaTokenizer::gemma3n_from_gguf(&gguf()).unwrap();
    Gemma3nProcessor::new(
        tok,
        ImageProcessorConfig::default(),
        FeatureExtractor::new(FeatureExtractorConfig::default()).unwrap(),
        &Gemma3nConfig::released("E2B").unwrap(),
    )
    .unwrap()
}

fn image() -> RgbImage {
    RgbImage {
        height: 20,
        width: 30,
        data: (0..20 * 30 * 3).map(|i| (i % 251) as u8).collect(),
    }
}

/// The runs `[open, soft × n, close]` of a row, as (start, n); the token before and after.
fn runs(ids: &[i64], open: i64, soft: i64, close: i64) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, &t) in ids.iter().enumerate() {
        if t == open {
            let n = ids[i + 1..].iter().take_while(|&&x| x == soft).count();
            assert_eq!(ids[i + 1 + n], close, "a run ends with its close marker");
            out.push((i, n));
        }
    }
    out
}

#[test]
fn prompts_expand_like_hugging_face_and_like_the_golden_layout() {
    let p = processor();
    let text = "<start_of_turn>user\nWhat is here?<image_soft_token> And here:<audio_soft_token><end_of_turn>\n";
    assert_eq!(
        p.expand("a<image_soft_token>b"),
        format!(
            "a\n\n<start_of_image>{}<end_of_image>\n\nb",
            "<image_soft_token>".repeat(256)
        )
    );
    let prompts = [
        Prompt {
            text: text.into(),
            images: vec![image()],
            audio: vec![vec![0.25; 16_000]],
        },
        Prompt {
            text: "Short.".into(),
            ..Default::default()
        },
    ];
    let input = p
        .process::<B>(&prompts, Padding::Right, &Default::default())
        .unwrap();
    let (row, mask) = (
        &input.input_ids[0],
        &input.attention_mask.as_ref().unwrap()[0],
    );
    assert_eq!(row[0], 2, "<bos> first");
    let cfg = Gemma3nConfig::released("E2B").unwrap();
    let img = runs(row, cfg.boi_token_id, cfg.image_token_id, cfg.eoi_token_id);
    let aud = runs(row, cfg.boa_token_id, cfg.audio_token_id, cfg.eoa_token_id);
    assert_eq!(img.len(), 1);
    assert_eq!(img[0].1, 256, "vision_soft_tokens_per_image placeholders");
    assert_eq!(aud.len(), 1);
    assert_eq!(aud[0].1, 188, "audio_soft_tokens_per_image placeholders");
    // "\n\n" (id 108) on both sides of each run, as in the golden inputs
    for (start, n) in [img[0], aud[0]] {
        assert_eq!(row[start - 1], 108);
        assert_eq!(row[start + n + 2], 108);
    }
    // the golden multimodal case has the same layout with the tiny model's ids
    let golden = rows(
        &SafeTensorsFiles::open(case("multimodal").join("inputs.safetensors")).unwrap(),
        "input_ids",
    );
    let g = runs(&golden[0], 254, 257, 256);
    assert_eq!(g.len(), 1);
    assert_eq!(
        (golden[0][g[0].0 - 1], golden[0][g[0].0 + g[0].1 + 2]),
        (108, 108)
    );
    let ga = runs(&golden[0], 255, 265, 264);
    assert_eq!(
        (golden[0][ga[0].0 - 1], golden[0][ga[0].0 + ga[0].1 + 2]),
        (108, 108)
    );
    // right padding of the short row
    let short = &input.input_ids[1];
    let short_mask = &input.attention_mask.as_ref().unwrap()[1];
    assert_eq!(short.len(), row.len());
    let real = short_mask.iter().filter(|&&m| m == 1).count();
    assert!(short[real..].iter().all(|&t| t == 0) && short_mask[..real].iter().all(|&m| m == 1));
    assert!(mask.iter().all(|&m| m == 1));
    // media
    assert_eq!(
        input.pixel_values.as_ref().unwrap().dims(),
        [1, 3, 768, 768]
    );
    let audio = input.audio.as_ref().unwrap();
    assert_eq!(audio.features.dims()[0], 1);
    assert_eq!(audio.features.dims()[2], 128);
    // left padding puts the pad first
    let left = p
        .process::<B>(&prompts, Padding::Left, &Default::default())
        .unwrap();
    assert_eq!(left.input_ids[1][row.len() - real..], short[..real]);
}

#[test]
fn placeholders_must_match_the_media_and_the_tokenizer_the_config() {
    let p = processor();
    let err = p
        .process::<B>(
            &[Prompt {
                text: "two <image_soft_token><image_soft_token>".into(),
                images: vec![image()],
                audio: vec![],
            }],
            Padding::Right,
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("2 `<image_soft_token>` placeholder(s) for 1 images"),
        "{err}"
    );
    // a vocabulary without Gemma 3n's multimodal ids cannot serve the model
    let err = Gemma3nProcessor::new(
        GemmaTokenizer::from_gguf(&gguf()).unwrap(),
        ImageProcessorConfig::default(),
        FeatureExtractor::new(FeatureExtractorConfig::default()).unwrap(),
        &Gemma3nConfig::released("E2B").unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("image_token_id"), "{err}");
}

#[test]
fn a_prompt_that_starts_with_bos_gets_no_second_one() {
    let p = processor();
    let ids = p
        .encode(&Prompt {
            text: "<bos><start_of_turn>user\nHi<end_of_turn>\n".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(&ids[..2], &[2, 105]);
    let ids = p
        .encode(&Prompt {
            text: "<start_of_turn>user\nHi<end_of_turn>\n".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(&ids[..2], &[2, 105]);
}

/// Tokens the vocabulary marks as user-defined (`<start_of_image>`) or control are matched whole,
/// as Hugging Face's GGUF converter adds them, in the GGUF and the `tokenizer.json` paths.
#[test]
fn marked_tokens_are_matched_whole() {
    let tok = GemmaTokenizer::from_gguf(&gguf()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    tok.save(dir.path().join("tokenizer.json")).unwrap();
    let reloaded = GemmaTokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    for t in [&tok, &reloaded] {
        assert_eq!(t.encode("<start_of_image>", false).unwrap(), [255_999]);
        assert_eq!(
            t.encode("a<start_of_turn>b", false).unwrap().len(),
            3,
            "text, one marker, text"
        );
    }
    let g3n = GemmaTokenizer::gemma3n_from_gguf(&gguf()).unwrap();
    g3n.save(dir.path().join("tokenizer.json")).unwrap();
    let g3n_json = GemmaTokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    for t in [&g3n, &g3n_json] {
        assert_eq!(t.encode("<start_of_audio>", false).unwrap(), [256_000]);
        assert_eq!(
            t.encode("<end_of_image><image_soft_token>", false).unwrap(),
            [262_144, 262_145]
        );
        // glued to text on both sides, repeated, and after a newline run
        let ids = t
            .encode(
                "see<start_of_image><image_soft_token><image_soft_token><end_of_image>now",
                false,
            )
            .unwrap();
        assert_eq!(ids[1..5], [255_999, 262_145, 262_145, 262_144]);
        assert_eq!(ids.len(), 6, "{ids:?}");
        let ids = t
            .encode("user\n\n\n<start_of_audio><audio_soft_token>", false)
            .unwrap();
        assert_eq!(ids[ids.len() - 2..], [256_000, 262_273]);
        assert_eq!(
            t.decode(&ids, false).unwrap(),
            "user\n\n\n<start_of_audio><audio_soft_token>"
        );
    }
}

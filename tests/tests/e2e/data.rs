//! The data pipeline with the real Gemma vocabulary (the 270M's, extended by Gemma 3n's
//! multimodal ids): answer-only labels against hand-written expectations, the media token
//! layout, packing that never lets a sample see another (checked through a model), a
//! deterministic resumable order, and every bad-input case.

use std::path::Path;
use std::sync::Arc;

use automodel_audio::features::{FeatureExtractor, FeatureExtractorConfig};
use automodel_core::CpuBackend as B;
use automodel_core::init::Initializer;
use automodel_core::loss::IGNORE_INDEX;
use automodel_data::{
    BadSamples, ChatTemplate, Conversation, DataConfig, Dataset, EncodeConfig, Encoder, LabelMode,
    Loader, LoaderConfig, Media, Message, Overlong, Packing, Part, Position, Role, Sample, builtin,
    stats,
};
use automodel_gemma3n::{Gemma3nConfig, Gemma3nProcessor};
use automodel_gguf::GgufFile;
use automodel_text::gemma3::{Gemma3ForCausalLM, Gemma3TextConfig};
use automodel_text::{CausalLm, TrainOptions};
use automodel_tokenizer::GemmaTokenizer;
use automodel_vision::processor::ImageProcessorConfig;
use burn::tensor::DType;

fn tokenizer() -> GemmaTokenizer {
    let p = automodel_parity::gemma3_270m_path();
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask fetch-model gemma-3-270m` first",
        p.display()
    );
    GemmaTokenizer::gemma3n_from_gguf(&GgufFile::open(&p).unwrap()).unwrap()
}

fn encoder(config: EncodeConfig) -> Encoder {
    let tok = tokenizer();
    let processor = Gemma3nProcessor::new(
        tok.clone(),
        ImageProcessorConfig::default(),
        FeatureExtractor::new(FeatureExtractorConfig::default()).unwrap(),
        &Gemma3nConfig::released("E2B").unwrap(),
    )
    .unwrap();
    Encoder::new(ChatTemplate::gemma(), tok, Some(processor), config).unwrap()
}

fn ids(enc: &Encoder, s: &str) -> Vec<i64> {
    enc.tokenizer
        .encode(s, false)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect()
}

/// Ids and labels of `pieces` (text, labelled?) tokenized one by one.
fn expect(enc: &Encoder, pieces: &[(&str, bool)]) -> (Vec<i64>, Vec<i64>) {
    let (mut i, mut l) = (Vec::new(), Vec::new());
    for (text, on) in pieces {
        let t = ids(enc, text);
        l.extend(t.iter().map(|&x| if *on { x } else { IGNORE_INDEX }));
        i.extend(t);
    }
    (i, l)
}

#[test]
fn labels_cover_every_assistant_turn_through_end_of_turn() {
    let enc = encoder(EncodeConfig::default());
    assert_eq!(enc.spans.marker, ids(&enc, "<start_of_turn>model\n"));
    assert_eq!(enc.spans.stop, ids(&enc, "<end_of_turn>")[0]);
    assert_eq!(enc.spans.marker.len(), 3, "<start_of_turn>, model, \\n");

    // single turn, no system
    let e = enc
        .encode(&Sample::Chat(Conversation::qa("Hi", "Hello there")))
        .unwrap();
    let want = expect(
        &enc,
        &[
            (
                "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
                false,
            ),
            ("Hello there<end_of_turn>", true),
            ("\n", false),
        ],
    );
    assert_eq!((e.ids.clone(), e.labels.clone()), want);

    // multi-turn with a system turn (folded into the first user turn)
    let conv = Conversation {
        messages: vec![
            Message::text(Role::System, "Be brief."),
            Message::text(Role::User, "Hi"),
            Message::text(Role::Assistant, "Hello."),
            Message::text(Role::User, "How are you?"),
            Message::text(Role::Assistant, "Fine, thanks."),
        ],
    };
    let e = enc.encode(&Sample::Chat(conv.clone())).unwrap();
    let want = expect(
        &enc,
        &[
            (
                "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n",
                false,
            ),
            ("Hello.<end_of_turn>", true),
            (
                "\n<start_of_turn>user\nHow are you?<end_of_turn>\n<start_of_turn>model\n",
                false,
            ),
            ("Fine, thanks.<end_of_turn>", true),
            ("\n", false),
        ],
    );
    assert_eq!((e.ids.clone(), e.labels.clone()), want);
    assert_eq!(
        e.label_tokens(),
        want.1.iter().filter(|&&l| l != IGNORE_INDEX).count()
    );

    // the `all` option trains on every token; plain text too, with <eos> last
    let all = encoder(EncodeConfig {
        labels: LabelMode::All,
        ..Default::default()
    });
    let e = all.encode(&Sample::Chat(conv)).unwrap();
    assert_eq!(e.labels, e.ids);
    let t = all
        .encode(&Sample::Text("Once upon a time".into()))
        .unwrap();
    assert_eq!(t.ids[0], 2);
    assert_eq!(*t.ids.last().unwrap(), 1);
    assert_eq!(t.labels, t.ids);

    // what `automodel-cli data --show` prints
    let shown = stats::show(
        &enc,
        &automodel_data::Prepared {
            origin: automodel_data::Origin {
                file: "x".into(),
                position: 0,
                is_line: false,
            },
            sample: Sample::Text(String::new()),
            encoded: enc
                .encode(&Sample::Chat(Conversation::qa("Hi", "Hello there")))
                .unwrap(),
        },
    );
    assert_eq!(
        shown,
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n⟦Hello there<end_of_turn>⟧\n"
    );
}

fn runs(ids: &[i64], open: i64, soft: i64, close: i64) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, &t) in ids.iter().enumerate() {
        if t == open {
            let n = ids[i + 1..].iter().take_while(|&&x| x == soft).count();
            assert_eq!(ids[i + 1 + n], close);
            out.push((i, n));
        }
    }
    out
}

#[test]
fn image_audio_and_mixed_prompts_have_the_processor_layout_and_no_media_labels() {
    let enc = encoder(EncodeConfig::default());
    let cfg = Gemma3nConfig::released("E2B").unwrap();
    let shapes = builtin::records("shapes", "train", Some(1)).unwrap();
    let tones = builtin::records("tones", "train", Some(1)).unwrap();
    let (Ok(Sample::Chat(img)), Ok(Sample::Chat(aud))) = (&shapes[0].sample, &tones[0].sample)
    else {
        panic!()
    };
    let mixed = Conversation {
        messages: vec![
            Message {
                role: Role::User,
                content: [
                    img.messages[0].content.clone(),
                    aud.messages[0].content.clone(),
                ]
                .concat(),
            },
            Message::text(Role::Assistant, "both"),
        ],
    };
    for (conv, n_img, n_aud) in [(img, 1, 0), (aud, 0, 1), (&mixed, 1, 1)] {
        let e = enc.encode(&Sample::Chat(conv.clone())).unwrap();
        assert_eq!((e.images.len(), e.audio.len()), (n_img, n_aud));
        let i = runs(
            &e.ids,
            cfg.boi_token_id,
            cfg.image_token_id,
            cfg.eoi_token_id,
        );
        let a = runs(
            &e.ids,
            cfg.boa_token_id,
            cfg.audio_token_id,
            cfg.eoa_token_id,
        );
        assert_eq!(i.iter().map(|r| r.1).collect::<Vec<_>>(), vec![256; n_img]);
        assert_eq!(a.iter().map(|r| r.1).collect::<Vec<_>>(), vec![188; n_aud]);
        // "\n\n" around every run, as HF's processor expands it (merged with a neighbouring
        // newline into one token: "user\n" + "\n\n" is "\n\n\n")
        let text = |t: i64| enc.tokenizer.decode(&[t as u32], false).unwrap();
        for (start, n) in i.iter().chain(&a) {
            assert!(text(e.ids[start - 1]).ends_with("\n\n"), "{start}");
            assert!(text(e.ids[start + n + 2]).starts_with("\n\n"), "{start}");
        }
        // the labels are exactly the answer and <end_of_turn>
        let labelled: Vec<i64> = e
            .labels
            .iter()
            .copied()
            .filter(|&l| l != IGNORE_INDEX)
            .collect();
        let answer = conv.messages.last().unwrap().text_content();
        assert_eq!(labelled, ids(&enc, &format!("{answer}<end_of_turn>")));
        // batching decodes and preprocesses the media
        let b = enc.collate(&[(0, &e)]).unwrap();
        assert_eq!(b.pixels.as_ref().map(|p| p.1[0]).unwrap_or(0), n_img);
        assert_eq!(b.audio.as_ref().map(|a| a.shape[0]).unwrap_or(0), n_aud);
        assert_eq!(b.num_label_tokens, labelled.len());
    }
}

/// A small random Gemma 3 over the real vocabulary.
fn tiny_model() -> Gemma3ForCausalLM<B> {
    let cfg = Gemma3TextConfig {
        vocab_size: 262_144,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 8,
        sliding_window: 8,
        query_pre_attn_scalar: 8.0,
        max_position_embeddings: 512,
        ..Default::default()
    };
    Gemma3ForCausalLM::new(
        &Initializer::random(&Default::default(), DType::F32, 0.5),
        &cfg,
    )
    .unwrap()
}

fn instructions(n: usize) -> Vec<automodel_data::Record> {
    builtin::records("instructions", "train", Some(n)).unwrap()
}

#[test]
fn packed_samples_never_see_each_other() {
    let enc = Arc::new(encoder(EncodeConfig::default()));
    let data = Arc::new(Dataset::prepare(instructions(5), &enc, BadSamples::Fail).unwrap());
    let loader = |packing| {
        Loader::new(
            enc.clone(),
            data.clone(),
            LoaderConfig {
                batch_size: 8,
                shuffle: false,
                packing,
                workers: 0,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let packed = loader(Some(Packing {
        max_tokens: 128,
        strategy: Default::default(),
    }));
    let plan = packed.plan(0);
    assert!(plan[0].iter().any(|row| row.len() >= 3), "{plan:?}");
    let pb = packed.build(&plan[0]).unwrap().unwrap();
    let plain = loader(None);
    let ub = plain.build(&plain.plan(0)[0]).unwrap().unwrap();
    assert_eq!(pb.num_label_tokens, ub.num_label_tokens);

    let m = tiny_model();
    let dev = Default::default();
    let run = |b: &automodel_data::HostBatch| {
        let out = m
            .forward_train(
                &b.to_device::<B>(&dev),
                TrainOptions {
                    return_logits: true,
                    ..TrainOptions::eval()
                },
            )
            .unwrap();
        let loss = out.loss.unwrap();
        let [_, t, v] = out.logits.as_ref().unwrap().dims();
        (
            out.logits.unwrap().into_data().to_vec::<f32>().unwrap(),
            loss.sum.into_scalar(),
            loss.num_label_tokens,
            t,
            v,
        )
    };
    let (pl, ploss, pn, pt, v) = run(&pb);
    let (ul, uloss, un, ut, _) = run(&ub);
    assert_eq!(pn, un);
    assert!(
        (ploss - uloss).abs() < 1e-3 * uloss.abs(),
        "{ploss} vs {uloss}"
    );
    // every sample's logits in its packed row equal its own row's
    let pos = pb.position_ids.as_ref().unwrap();
    let mut checked = 0;
    for (r, row) in pb.attention_mask.iter().enumerate() {
        let mut col = 0;
        for seg in 1.. {
            let len = row.iter().filter(|&&s| s == seg).count();
            if len == 0 {
                break;
            }
            let sample = pb.samples[checked];
            let u = ub.samples.iter().position(|&s| s == sample).unwrap();
            assert_eq!(pos[r][col], 0, "positions restart");
            for k in 0..len {
                let a = &pl[((r * pt) + col + k) * v..][..v];
                let b = &ul[((u * ut) + k) * v..][..v];
                let d = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max);
                assert!(d < 1e-4, "sample {sample}, token {k}: {d}");
            }
            col += len;
            checked += 1;
        }
    }
    assert_eq!(checked, 5);
}

#[test]
fn the_order_is_seeded_and_resumes_mid_epoch_with_workers() {
    let enc = Arc::new(encoder(EncodeConfig::default()));
    let data = Arc::new(Dataset::prepare(instructions(10), &enc, BadSamples::Fail).unwrap());
    let loader = |seed, workers| {
        Loader::new(
            enc.clone(),
            data.clone(),
            LoaderConfig {
                batch_size: 3,
                seed,
                workers,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let take = |l: &Loader, from, n| -> Vec<(Position, Vec<usize>)> {
        l.iter(from)
            .take(n)
            .map(|b| {
                let (p, b) = b.unwrap();
                (p, b.samples)
            })
            .collect()
    };
    let a = take(&loader(7, 0), Position::default(), 10);
    assert_eq!(
        a,
        take(&loader(7, 2), Position::default(), 10),
        "workers keep the order"
    );
    assert_ne!(
        a,
        take(&loader(8, 0), Position::default(), 10),
        "the seed matters"
    );
    // 4 batches per epoch (3+3+3+1); epochs differ; every epoch covers every sample once
    assert_eq!(a[3].0, Position { epoch: 1, batch: 0 });
    let e0: Vec<usize> = a[..4].iter().flat_map(|x| x.1.clone()).collect();
    let e1: Vec<usize> = a[4..8].iter().flat_map(|x| x.1.clone()).collect();
    assert_ne!(e0, e1);
    let mut s = e0.clone();
    s.sort();
    assert_eq!(s, (0..10).collect::<Vec<_>>());
    // resuming from a saved position gives the rest of the uninterrupted run
    let saved = a[5].0;
    let resumed = take(&loader(7, 2), saved, 4);
    assert_eq!(resumed, a[6..10]);
}

#[test]
fn bad_input_is_named_skipped_and_counted_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("ok.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([200, 10, 10]))
        .save(&png)
        .unwrap();
    std::fs::write(dir.path().join("corrupt.png"), b"\x89PNG not really").unwrap();
    let long = "word ".repeat(500);
    let lines = [
        r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#.to_string(),
        r#"{"messages": [{"role": "user", "content": "Hi"}, "#.to_string(),
        r#"{"messages": [{"role": "user", "content": [{"type": "image", "path": "missing.png"}, {"type": "text", "text": "?"}]}, {"role": "assistant", "content": "x"}]}"#.to_string(),
        r#"{"messages": [{"role": "user", "content": [{"type": "image", "path": "corrupt.png"}, {"type": "text", "text": "?"}]}, {"role": "assistant", "content": "x"}]}"#.to_string(),
        r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}"#.to_string(),
        r#"{"messages": [{"role": "user", "content": "Hi"}]}"#.to_string(),
        format!(r#"{{"messages": [{{"role": "user", "content": "{long}"}}, {{"role": "assistant", "content": "ok"}}]}}"#),
        r#"{"messages": [{"role": "wizard", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#.to_string(),
        r#"{"messages": [{"role": "user", "content": [{"type": "image", "path": "ok.png"}, {"type": "text", "text": "Colour?"}]}, {"role": "assistant", "content": "red"}]}"#.to_string(),
    ];
    let file = dir.path().join("train.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (enc, records) = read_jsonl(&file);
    assert_eq!(records.len(), 9);

    // `fail`: the first bad record stops it, named by file and line
    let err = Dataset::prepare(records.clone(), &enc, BadSamples::Fail)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.jsonl:2") && err.contains("invalid JSON"),
        "{err}"
    );

    // `skip`: counted by reason
    let data = Dataset::prepare(records.clone(), &enc, BadSamples::Skip).unwrap();
    let kinds: Vec<(&str, usize)> = data
        .report
        .skipped
        .iter()
        .map(|(k, v)| (k.as_str(), v.len()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("empty assistant turn", 1),
            ("malformed", 1),
            ("no assistant turn", 1),
            ("no label token", 1),
            ("unknown role", 1)
        ]
    );
    assert_eq!(
        data.report.skipped["unknown role"][0].0,
        format!("{}:8", file.display())
    );
    // the over-long sample was truncated into its prompt: no label left, so it is skipped, not
    // kept silently
    assert!(data.report.skipped["no label token"][0].0.ends_with(":7"));
    // dropping instead
    let drop = encoder(EncodeConfig {
        max_length: Some(320),
        overlong: Overlong::Drop,
        ..Default::default()
    });
    let d = Dataset::prepare(records.clone(), &drop, BadSamples::Skip).unwrap();
    assert!(
        d.report.skipped["too long"][0]
            .1
            .contains("exceed max_length 320")
    );

    // media are decoded by the loader: missing and corrupt files are skipped and counted, the
    // good image trains; the run goes on
    let data = Arc::new(data);
    let loader = Loader::new(
        enc.clone(),
        data.clone(),
        LoaderConfig {
            batch_size: 2,
            shuffle: false,
            workers: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let batches: Vec<_> = loader
        .iter(Position::default())
        .take(2)
        .map(Result::unwrap)
        .collect();
    let used: usize = batches.iter().map(|b| b.1.samples.len()).sum();
    assert_eq!(used, 2, "the text sample and the good image");
    assert!(batches.iter().any(|b| b.1.pixels.is_some()));
    let report = loader.report.lock().unwrap().clone();
    let media = &report.skipped["unreadable media"];
    assert_eq!(media.len(), 2);
    assert!(
        media
            .iter()
            .any(|(o, m)| o.ends_with(":3") && m.contains("missing.png"))
    );
    assert!(media.iter().any(|(o, _)| o.ends_with(":4")));
    // a dataset whose every image is unreadable ends with an error, not an endless loop
    let unreadable: Vec<_> = records[2..4].to_vec();
    let none = Arc::new(Dataset::prepare(unreadable, &enc, BadSamples::Skip).unwrap());
    let l = Loader::new(
        enc.clone(),
        none,
        LoaderConfig {
            workers: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let err = first_error(&l);
    assert!(err.contains("no sample's media could be read"), "{err}");
    // `fail` stops at the missing image, naming it
    let strict = Loader::new(
        enc,
        data,
        LoaderConfig {
            batch_size: 2,
            shuffle: false,
            workers: 0,
            bad_samples: BadSamples::Fail,
            ..Default::default()
        },
    )
    .unwrap();
    let err = first_error(&strict);
    assert!(
        err.contains("train.jsonl:3") && err.contains("missing.png"),
        "{err}"
    );
}

/// The records of a chat JSONL file (samples up to 320 tokens) and their encoder.
fn read_jsonl(file: &Path) -> (Arc<Encoder>, Vec<automodel_data::Record>) {
    let cfg = DataConfig {
        path: Some(automodel_data::source::Paths::One(file.to_path_buf())),
        max_length: Some(320),
        ..Default::default()
    };
    let enc = Arc::new(encoder(cfg.encode_config()));
    (enc, cfg.read(Path::new("/")).unwrap())
}

/// The first error a loader's batches end in, from the start.
fn first_error(loader: &Loader) -> String {
    loader
        .iter(Position::default())
        .find_map(Result::err)
        .expect("an error")
        .to_string()
}

/// Data going bad while a run reads it. Text records are read and encoded once, when the run
/// starts: a JSONL file truncated (or a Parquet shard replaced) afterwards changes nothing. Media
/// are read per batch: an image deleted or corrupted after the start is skipped and counted
/// with its file and line (`skip`), or ends the run naming them (`fail`): no panic, no hang.
#[test]
fn data_going_bad_mid_run_follows_the_bad_samples_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    for p in [&a, &b] {
        image::RgbImage::from_pixel(8, 8, image::Rgb([10, 200, 10]))
            .save(p)
            .unwrap();
    }
    let line = |img: &str| {
        format!(
            r#"{{"messages": [{{"role": "user", "content": [{{"type": "image", "path": "{img}"}}, {{"type": "text", "text": "Colour?"}}]}}, {{"role": "assistant", "content": "green"}}]}}"#
        )
    };
    let file = dir.path().join("train.jsonl");
    std::fs::write(&file, [line("a.png"), line("b.png")].join("\n")).unwrap();
    let (enc, records) = read_jsonl(&file);
    let data = Arc::new(Dataset::prepare(records, &enc, BadSamples::Skip).unwrap());
    let loader = |policy| {
        Loader::new(
            enc.clone(),
            data.clone(),
            LoaderConfig {
                batch_size: 1,
                shuffle: false,
                // batches built when asked for: none read ahead of the files' change
                workers: 0,
                bad_samples: policy,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let skip = loader(BadSamples::Skip);
    let mut it = skip.iter(Position::default());
    // epoch 0: both images read
    for _ in 0..2 {
        assert!(it.next().unwrap().unwrap().1.pixels.is_some());
    }
    // the JSONL file is truncated, one image deleted, the other overwritten with junk
    std::fs::write(&file, &line("a.png")[..20]).unwrap();
    std::fs::remove_file(&a).unwrap();
    std::fs::write(&b, b"\x89PNG junk").unwrap();
    // epoch 1: both samples skipped and counted; a batch with nothing readable left is an
    // error, not a hang
    let next = it.next().unwrap();
    let err = next.unwrap_err().to_string();
    assert!(err.contains("no sample's media could be read"), "{err}");
    let report = skip.report.lock().unwrap().clone();
    let media = &report.skipped["unreadable media"];
    assert!(
        media
            .iter()
            .any(|(o, m)| o.ends_with("train.jsonl:1") && m.contains("a.png")),
        "{media:?}"
    );
    assert!(
        media.iter().any(|(o, _)| o.ends_with("train.jsonl:2")),
        "{media:?}"
    );
    // the records read at the start are unchanged by the truncation
    assert_eq!(data.len(), 2);
    // `fail` names the file and line at once
    let err = first_error(&loader(BadSamples::Fail));
    assert!(
        err.contains("train.jsonl:1") && err.contains("a.png"),
        "{err}"
    );
}

#[test]
fn a_media_sample_needs_a_model_that_takes_media() {
    let tok = tokenizer();
    let text_only =
        Encoder::new(ChatTemplate::gemma(), tok, None, EncodeConfig::default()).unwrap();
    let conv = Conversation {
        messages: vec![
            Message {
                role: Role::User,
                content: vec![Part::Image(Media::Bytes(vec![])), Part::Text("?".into())],
            },
            Message::text(Role::Assistant, "x"),
        ],
    };
    let err = text_only
        .encode(&Sample::Chat(conv))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no images or audio"), "{err}");
}

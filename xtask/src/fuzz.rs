//! `cargo xtask fuzz [--minutes N] [--target NAME]... [--seed S]`: a seeded, structure-aware
//! mutation fuzzer of the parsers that read users' files (no coverage-guided fuzzer builds on
//! stable Rust here: cargo-fuzz needs nightly, afl.rs an AFL++ toolchain).
//!
//! Each target starts from valid files made in code (a GGUF, a safetensors file, a Gemma 3n
//! config, the default recipe, chat JSONL, Parquet files as Hugging Face's datasets write them,
//! a `tokenizer.json`, a WAV clip, a PNG), mutates them (bit flips,
//! interesting integers over 1–8 bytes, inserted, deleted, duplicated and truncated ranges,
//! splices; for the text formats also numbers, lines and tokens), and runs the parser on each
//! in a child process with a 4 GiB address-space limit. A panic, an abort (an allocation the
//! input asked for), a signal or one input that takes over [`PER_INPUT_LIMIT_S`] (20 s, timed by
//! a watchdog thread in the child) is a crash: the input is kept in
//! `target/fuzz/crashes/<target>-<n>` and the run fails. Errors are the expected outcome.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A target: its name, the file name its parser reads, and the call.
type Target = (&'static str, &'static str, fn(&Path));

/// The longest one input may take before it counts as a hang (seconds).
pub const PER_INPUT_LIMIT_S: f64 = 20.0;

/// The exit code of a child whose watchdog saw one input run past its limit.
const HANG_EXIT: i32 = 4;

/// Targets only `fuzz-child` knows (never part of `fuzz`): they check the harness itself.
const SELF_TEST_TARGETS: &[Target] = &[
    // every input takes 5 s: with a limit under that, the watchdog must report a hang
    ("self-test-slow", "input", |_| {
        std::thread::sleep(Duration::from_secs(5))
    }),
];

/// The targets.
const TARGETS: &[Target] = &[
    ("gguf", "model.gguf", |p| {
        if let Ok(f) = automodel_gguf::GgufFile::open(p) {
            let names: Vec<String> = f.tensors.keys().cloned().collect();
            for n in &names {
                let _ = f.dequantize(n);
            }
            let _ = automodel_tokenizer::GemmaTokenizer::from_gguf(&f);
            let _ = automodel_gguf::gemma3::Gemma3Gguf::new(f);
        }
    }),
    ("safetensors", "model.safetensors", |p| {
        if let Ok(f) = automodel_core::weights::SafeTensorsFiles::open(p) {
            let names: Vec<String> = f.names().map(String::from).collect();
            for n in &names {
                let _ = f.to_f32_vec(n);
            }
        }
    }),
    ("config", "config.json", |p| {
        let _ = automodel_gemma3n::Gemma3nConfig::from_file(p);
        let _ = automodel_text::gemma3::Gemma3TextConfig::from_file(p);
        let _ = automodel_text::gemma3n::Gemma3nTextConfig::from_file(p);
    }),
    ("recipe", "recipe.yaml", |p| {
        let text = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        if let Ok(r) = automodel_train::Recipe::parse(p, &text, &[]) {
            let _ = r.validate();
            let _ = r.to_yaml();
        }
    }),
    ("jsonl", "train.jsonl", |p| {
        let _ = automodel_data::format::read_json_file(p, &Default::default());
    }),
    ("parquet", "train.parquet", |p| {
        let _ = automodel_data::parquet::read_parquet_file(p, &Default::default());
        let qa = automodel_data::format::Columns {
            prompt: "question".into(),
            completion: "answer".into(),
            ..Default::default()
        };
        let _ = automodel_data::parquet::read_parquet_file(p, &qa);
    }),
    ("tokenizer", "tokenizer.json", |p| {
        if let Ok(t) = automodel_tokenizer::GemmaTokenizer::from_file(p) {
            if let Ok(ids) = t.encode("Hello <bos> wörld ▁ 12\n", true) {
                let _ = t.decode(&ids, false);
                let _ = t.decode(&ids, true);
            }
            let _ = t.decode(&[0, 1, 2, 3, 4, 5, 6, 7, 1_000_000], false);
            let _ = t.llama_vocab();
            let _ = t.stop_ids();
        }
    }),
    ("wav", "clip.wav", |p| {
        let _ = automodel_audio::decode::load_audio(p, 16_000);
    }),
    ("image", "picture.png", |p| {
        let _ = automodel_vision::processor::load_image(p);
    }),
];

/// A small Parquet file with two string columns named `cols` and an image struct column
/// (`{bytes, path}`), as Hugging Face's datasets write them.
fn parquet_seed(
    cols: &[&str; 2],
    compression: parquet::basic::Compression,
) -> anyhow::Result<Vec<u8>> {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let schema = Arc::new(parquet::schema::parser::parse_message_type(&format!(
        "message schema {{ required binary {} (UTF8); required binary {} (UTF8); \
         required group image {{ required binary bytes; optional binary path (UTF8); }} }}",
        cols[0], cols[1]
    ))?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .build(),
    );
    let mut out = Vec::new();
    let mut w = SerializedFileWriter::new(&mut out, schema, props)?;
    let mut rg = w.next_row_group()?;
    let rows: [(&str, &str, &[u8]); 3] = [
        ("What is it?", "A cat.", b"\x89PNG\r\n"),
        ("2+2?", "4", b""),
        ("Colour?", "red", b"GIF89a"),
    ];
    let columns: [Vec<ByteArray>; 3] = [
        rows.iter().map(|r| ByteArray::from(r.0)).collect(),
        rows.iter().map(|r| ByteArray::from(r.1)).collect(),
        rows.iter().map(|r| ByteArray::from(r.2.to_vec())).collect(),
    ];
    for values in &columns {
        let mut c = rg.next_column()?.context("a column")?;
        c.typed::<ByteArrayType>().write_batch(values, None, None)?;
        c.close()?;
    }
    let mut c = rg.next_column()?.context("the path column")?;
    let paths = [ByteArray::from("a.png")];
    c.typed::<ByteArrayType>()
        .write_batch(&paths, Some(&[1, 0, 0]), None)?;
    c.close()?;
    rg.close()?;
    w.close()?;
    Ok(out)
}

/// Valid inputs of a target.
fn seeds(target: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let root = crate::bench::root();
    Ok(match target {
        "gguf" => {
            use automodel_gguf::GgufValue as V;
            let mut w = automodel_gguf::GgufWriter::new();
            let strings = |v: &[&str]| V::Array(v.iter().map(|s| V::String(s.to_string())).collect());
            w.set("general.architecture", V::String("gemma3".into()))
                .set("gemma3.block_count", V::U32(1))
                .set("gemma3.context_length", V::U32(32))
                .set("gemma3.embedding_length", V::U32(8))
                .set("gemma3.attention.head_count", V::U32(2))
                .set("tokenizer.ggml.model", V::String("llama".into()))
                .set("tokenizer.ggml.tokens", strings(&["<pad>", "<eos>", "<bos>", "a", "b"]))
                .set(
                    "tokenizer.ggml.scores",
                    V::Array((0..5).map(|i| V::F32(-(i as f32))).collect()),
                )
                .set("tokenizer.ggml.token_type", V::Array(vec![V::I32(3), V::I32(3), V::I32(3), V::I32(1), V::I32(1)]))
                .tensor_f32("token_embd.weight", &[5, 8], &[0.5; 40])
                .tensor_f32("output_norm.weight", &[8], &[1.0; 8]);
            vec![w.to_bytes()]
        }
        "safetensors" => {
            let header = r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},"__metadata__":{"format":"pt"}}"#;
            let mut v = (header.len() as u64).to_le_bytes().to_vec();
            v.extend(header.as_bytes());
            v.extend((0..4).flat_map(|i| (i as f32).to_le_bytes()));
            v.extend([0x80, 0x3f, 0x00, 0x40, 0x40, 0x40]);
            vec![v]
        }
        "config" => vec![std::fs::read(root.join("recipes/models/gemma3n-tiny/config.json"))?],
        "recipe" => ["default.yaml", "gemma3n-tiny-multimodal.yaml"]
            .iter()
            .map(|f| std::fs::read(root.join("recipes").join(f)))
            .collect::<Result<_, _>>()?,
        "jsonl" => vec![
            concat!(
                r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#,
                "\n",
                r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "image", "path": "a.png"}, {"type": "text", "text": "?"}]}, {"role": "assistant", "content": "red"}]}"#,
                "\n",
                r#"{"prompt": "2+2=", "completion": "4"}"#,
                "\n",
                r#"{"text": "plain text"}"#,
                "\n"
            )
            .as_bytes()
            .to_vec(),
        ],
        "parquet" => vec![
            parquet_seed(&["question", "answer"], parquet::basic::Compression::SNAPPY)?,
            parquet_seed(&["prompt", "completion"], parquet::basic::Compression::UNCOMPRESSED)?,
        ],
        "tokenizer" => {
            // the tokenizer of the GGUF seed, as tokenizer.json
            let dir = tempfile::tempdir()?;
            let gguf = dir.path().join("m.gguf");
            std::fs::write(&gguf, &seeds("gguf")?[0])?;
            let tok = automodel_tokenizer::GemmaTokenizer::from_gguf(&automodel_gguf::GgufFile::open(&gguf)?)?;
            let json = dir.path().join("tokenizer.json");
            tok.save(&json)?;
            vec![std::fs::read(json)?]
        }
        "wav" => {
            let samples: Vec<i16> = (0..1600).map(|i| ((i as f32 * 0.3).sin() * 8000.0) as i16).collect();
            let data = samples.len() as u32 * 2;
            let mut v = b"RIFF".to_vec();
            v.extend((36 + data).to_le_bytes());
            v.extend(b"WAVEfmt ");
            v.extend(16u32.to_le_bytes());
            v.extend(1u16.to_le_bytes()); // PCM
            v.extend(1u16.to_le_bytes()); // mono
            v.extend(16_000u32.to_le_bytes());
            v.extend(32_000u32.to_le_bytes());
            v.extend(2u16.to_le_bytes());
            v.extend(16u16.to_le_bytes());
            v.extend(b"data");
            v.extend(data.to_le_bytes());
            v.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
            vec![v]
        }
        "image" => {
            let img = image::RgbImage::from_fn(12, 9, |x, y| image::Rgb([x as u8 * 20, y as u8 * 25, 90]));
            let mut png = std::io::Cursor::new(Vec::new());
            img.write_to(&mut png, image::ImageFormat::Png)?;
            vec![png.into_inner()]
        }
        "self-test-slow" => vec![b"any".to_vec()],
        other => bail!("no target `{other}`"),
    })
}

/// xorshift64*: the same mutations for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 31,
    1 << 40,
    u64::MAX,
    u64::MAX / 2,
];

/// One mutation of `input` (several in a row, sometimes).
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], text: bool) {
    for _ in 0..1 + rng.below(4) {
        let n = input.len();
        match rng.below(if text { 10 } else { 7 }) {
            0 if n > 0 => {
                let i = rng.below(n);
                input[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let width = [1, 2, 4, 8][rng.below(4)];
                let i = rng.below(n);
                let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                for (k, b) in v.iter().take(width).enumerate() {
                    if i + k < n {
                        input[i + k] = *b;
                    }
                }
            }
            2 => {
                let i = rng.below(n + 1);
                let bytes: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                input.splice(i..i, bytes);
            }
            3 if n > 0 => {
                let i = rng.below(n);
                let len = 1 + rng.below((n - i).min(64));
                input.drain(i..i + len);
            }
            4 if n > 0 => {
                let i = rng.below(n);
                let len = 1 + rng.below((n - i).min(64));
                let dup: Vec<u8> = input[i..i + len].to_vec();
                let at = rng.below(n + 1);
                input.splice(at..at, dup);
            }
            5 if n > 0 => input.truncate(rng.below(n)),
            6 => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() && n > 0 {
                    let (i, j) = (rng.below(n), rng.below(other.len()));
                    input.truncate(i);
                    input.extend_from_slice(&other[j..]);
                }
            }
            // text: a number replaced by an extreme one, a line deleted or repeated
            7 => {
                let s = String::from_utf8_lossy(input).into_owned();
                let digits: Vec<usize> = s
                    .char_indices()
                    .filter(|(_, c)| c.is_ascii_digit())
                    .map(|(i, _)| i)
                    .collect();
                if let Some(&at) = digits.get(rng.below(digits.len())) {
                    let end = s[at..]
                        .find(|c: char| !c.is_ascii_digit())
                        .map_or(s.len(), |e| at + e);
                    let with = [
                        "0",
                        "-1",
                        "99999999999999999999",
                        "1e309",
                        "NaN",
                        "4294967296",
                        "0.0",
                    ][rng.below(7)];
                    *input = format!("{}{with}{}", &s[..at], &s[end..]).into_bytes();
                }
            }
            8 | 9 => {
                let s = String::from_utf8_lossy(input).into_owned();
                let mut lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let i = rng.below(lines.len());
                    if rng.below(2) == 0 {
                        lines.remove(i);
                    } else {
                        let l = lines[i];
                        lines.insert(rng.below(lines.len() + 1), l);
                    }
                    *input = lines.join("\n").into_bytes();
                }
            }
            _ => {}
        }
    }
}

/// `cargo xtask fuzz-child TARGET SEED SECONDS DIR [LIMIT_S]`: the mutation loop of one
/// target, in a process of its own (a crash ends it; the input is in `DIR/current`). Prints the
/// count. A watchdog thread ends the process with exit code 4 when one input runs past
/// `LIMIT_S` seconds (default [`PER_INPUT_LIMIT_S`]).
pub fn fuzz_child(args: &[String]) -> anyhow::Result<bool> {
    let (target, seed, seconds, dir, limit) = match args {
        [t, s, sec, d] => (t, s, sec, d, PER_INPUT_LIMIT_S),
        [t, s, sec, d, l] => (t, s, sec, d, l.parse().context("LIMIT_S: a number")?),
        _ => bail!("usage: cargo xtask fuzz-child TARGET SEED SECONDS DIR [LIMIT_S]"),
    };
    let (name, file, call) = *TARGETS
        .iter()
        .chain(SELF_TEST_TARGETS)
        .find(|t| t.0 == target)
        .with_context(|| format!("no target `{target}`"))?;
    // an input asking for a huge allocation makes it fail (an abort, a crash) instead of
    // swapping the machine
    // SAFETY: setrlimit on this process
    unsafe {
        let lim = libc::rlimit {
            rlim_cur: 4 << 30,
            rlim_max: 4 << 30,
        };
        libc::setrlimit(libc::RLIMIT_AS, &lim);
    }
    let dir = PathBuf::from(dir);
    let path = dir.join(file);
    let corpus = seeds(name)?;
    let text = matches!(name, "config" | "recipe" | "jsonl" | "tokenizer");
    let mut rng = Rng(seed.parse::<u64>()? | 1);
    let end = Instant::now() + Duration::from_secs_f64(seconds.parse()?);
    // when the current input started, in milliseconds since `t0` (u64::MAX: between inputs)
    static STARTED_MS: AtomicU64 = AtomicU64::new(u64::MAX);
    let t0 = Instant::now();
    let limit_ms = (limit * 1000.0) as u64;
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let started = STARTED_MS.load(Ordering::Acquire);
            let now = t0.elapsed().as_millis() as u64;
            if started != u64::MAX && now.saturating_sub(started) > limit_ms {
                eprintln!("an input took over {limit} s (a hang)");
                // SAFETY: ends the process at once, without running anything of the stuck
                // thread's (no destructors, no atexit handlers that could wait on it)
                unsafe { libc::_exit(HANG_EXIT) };
            }
        }
    });
    let mut runs = 0u64;
    while Instant::now() < end {
        let mut input = corpus[rng.below(corpus.len())].clone();
        mutate(&mut rng, &mut input, &corpus, text);
        std::fs::write(dir.join("current"), &input)?;
        std::fs::write(&path, &input)?;
        STARTED_MS.store(t0.elapsed().as_millis() as u64, Ordering::Release);
        if std::panic::catch_unwind(|| call(&path)).is_err() {
            std::process::exit(3);
        }
        STARTED_MS.store(u64::MAX, Ordering::Release);
        runs += 1;
    }
    println!("runs {runs}");
    Ok(true)
}

/// `cargo xtask fuzz [--minutes N] [--target NAME]... [--seed S]`: every target (or those
/// named) for an equal share of N minutes (default 1), in rounds of child processes.
pub fn fuzz(args: &[String]) -> anyhow::Result<bool> {
    let (mut minutes, mut seed, mut only) = (1.0f64, 1u64, Vec::<String>::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--minutes" => minutes = value()?.parse().context("--minutes: a number")?,
            "--seed" => seed = value()?.parse().context("--seed: a whole number")?,
            "--target" => only.push(value()?.clone()),
            other => bail!(
                "unknown option `{other}`; usage: cargo xtask fuzz [--minutes N] [--target NAME]... [--seed S]; targets: {}",
                TARGETS.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    let targets: Vec<&str> = TARGETS
        .iter()
        .map(|t| t.0)
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t))
        .collect();
    if targets.is_empty() {
        bail!("no target matches {only:?}");
    }
    let crashes_dir = crate::bench::root().join("target/fuzz/crashes");
    std::fs::create_dir_all(&crashes_dir)?;
    let exe = std::env::current_exe()?;
    let share = minutes * 60.0 / targets.len() as f64;
    let mut crashes = 0;
    for (k, target) in targets.iter().enumerate() {
        let work = tempfile::tempdir()?;
        let end = Instant::now() + Duration::from_secs_f64(share);
        let (mut runs, mut round) = (0u64, 0u64);
        while Instant::now() < end {
            // rounds of at most 60 s, each with its own seed
            let left = (end - Instant::now()).as_secs_f64().min(60.0);
            let s = seed
                .wrapping_mul(1_000_003)
                .wrapping_add(k as u64 * 7919 + round);
            // stderr into a file: a parser whose library catches its own panics still prints
            // each one, and a full pipe would stall the child
            let log = work.path().join("stderr");
            let mut child = Command::new(&exe)
                .args(["fuzz-child", target, &s.to_string(), &left.to_string()])
                .arg(work.path())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log)?)
                .spawn()?;
            // the child's watchdog times each input; this only bounds a child that could not
            // even run it (the last input may start just before `left` runs out)
            let deadline = Instant::now() + Duration::from_secs_f64(left + 2.0 * PER_INPUT_LIMIT_S);
            let status = loop {
                if let Some(s) = child.try_wait()? {
                    break Some(s);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let out = child.wait_with_output()?;
            match status {
                Some(s) if s.success() => {
                    let text = String::from_utf8_lossy(&out.stdout);
                    runs += text
                        .trim()
                        .strip_prefix("runs ")
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                }
                other => {
                    crashes += 1;
                    let keep = crashes_dir.join(format!("{target}-{s}"));
                    std::fs::copy(work.path().join("current"), &keep)?;
                    let why = match other {
                        Some(s) if s.code() == Some(HANG_EXIT) => {
                            format!("one input took over {PER_INPUT_LIMIT_S} s (a hang)")
                        }
                        None => "the child stopped answering (a hang)".to_string(),
                        Some(s) => format!("{s}"),
                    };
                    let err = std::fs::read_to_string(&log).unwrap_or_default();
                    let last = err
                        .lines()
                        .rfind(|l| l.contains("panicked") || l.contains("memory"))
                        .unwrap_or("");
                    eprintln!(
                        "{target}: crash ({why}) {last}; input kept in {}",
                        keep.display()
                    );
                }
            }
            round += 1;
        }
        println!("{target}: {runs} inputs in {share:.0} s, {round} round(s)");
    }
    if crashes > 0 {
        eprintln!("{crashes} crash(es); inputs in {}", crashes_dir.display());
        return Ok(false);
    }
    println!("no crash");
    Ok(true)
}

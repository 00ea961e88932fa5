//! `cargo xtask check-gguf`: export a model to GGUF in each type and let llama.cpp itself
//! (llama-cpp-python, `xtask/check_gguf.py`) load and run every file.
//!
//! Per type it checks that llama.cpp tokenizes each prompt as we do, that its greedy
//! continuation of each prompt equals ours on the same file (F32, F16, BF16, Q8_0: the same
//! weights in both engines), and how often its top-1 token agrees with ours on the same file at
//! every position of the prompt and our full-precision model's continuation (at least 95 % for
//! Q4_K_M). How often it agrees with the full-precision model itself is reported: that measures
//! the type's loss, not the file's correctness.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use automodel::models::export::ExportOptions;
use automodel::text::generate::TextPrompt;
use automodel::{AutoModel, Gemma3ForCausalLM, GemmaTokenizer, Generate, GenerationConfig};
use automodel_core::CpuBackend;
use automodel_gguf::export::FileType;
use burn::tensor::{DType, Int, Tensor};

const USAGE: &str = "usage: cargo xtask check-gguf [--model M] [--adapter DIR] \
[--types f16,q8_0,q4_k_m] [--new-tokens N] [--python PY] [--out DIR]";

/// The prompts: plain text, code, a chat turn through the Gemma template, and two turns of the
/// default recipe's task; then four longer passages (prose, a list, arithmetic, a dialogue), so
/// that a model that answers in a few tokens still gives a few hundred positions to compare
/// (each position is about 0.4 % of the Q4_K_M rate, not 1 %).
const PROMPTS: [&str; 10] = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
    "<start_of_turn>user\nName three primary colours.<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nReply with the last word of: orange river under quiet stone<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nWhich word comes first in \"paper lamps drift north\"? Answer with that word only.<end_of_turn>\n<start_of_turn>model\n",
    "The river rises in the hills to the north of the town and runs south through farmland, \
     woods and two small villages before it reaches the sea. In spring the water is high and fast;",
    "Shopping list for the week:\n1. bread\n2. milk\n3. eggs\n4. apples\n5.",
    "If a train leaves at 9:15 and the journey takes 2 hours and 50 minutes, it arrives at",
    "A: Did you finish the report yesterday?\nB: Almost. I still need to check the figures.\nA: \
     Can you send it to me before lunch?\nB:",
];

type B = CpuBackend;

/// Two tokens whose logits are closer than this are a tie for the check's purposes.
const NEAR_TIE: f32 = 0.1;

/// Greedy continuation of `ids` by `model` (at most `n` tokens, stopping at `<eos>`/`<end_of_turn>`).
fn greedy(model: &Gemma3ForCausalLM<B>, ids: &[i64], n: usize) -> anyhow::Result<Vec<i64>> {
    let cfg = GenerationConfig {
        max_new_tokens: n,
        do_sample: false,
        stop_ids: vec![1, 106],
        ..Default::default()
    };
    let mut out = Vec::new();
    model.generate(&TextPrompt::single(ids.to_vec()), &cfg, |t| out.push(t[0]))?;
    if let Some(p) = out.iter().position(|t| *t == 1 || *t == 106) {
        out.truncate(p + 1);
    }
    Ok(out)
}

/// The logits of the next token after `seq`.
fn next_logits(model: &Gemma3ForCausalLM<B>, seq: &[i64]) -> anyhow::Result<Vec<f32>> {
    let device = Default::default();
    let ids = Tensor::<B, 1, Int>::from_ints(seq, &device).reshape([1, seq.len()]);
    let out = model.forward(ids, None, None, None, None)?;
    let v = out.logits.dims()[2];
    let last = out.logits.slice([0..1, seq.len() - 1..seq.len(), 0..v]);
    Ok(last.into_data().convert::<f32>().to_vec::<f32>().unwrap())
}

/// The top-1 token at every position of `seq`.
fn argmax(model: &Gemma3ForCausalLM<B>, seq: &[i64]) -> anyhow::Result<Vec<i64>> {
    Ok(top1_and_logits(model, seq)?.0)
}

/// The top-1 token at every position of `seq`, and the logits `[T·V]`.
fn top1_and_logits(
    model: &Gemma3ForCausalLM<B>,
    seq: &[i64],
) -> anyhow::Result<(Vec<i64>, Vec<f32>)> {
    let device = Default::default();
    let ids = Tensor::<B, 1, Int>::from_ints(seq, &device).reshape([1, seq.len()]);
    let out = model.forward(ids, None, None, None, None)?;
    let top = out.logits.clone().argmax(2).reshape([seq.len()]);
    let logits = out
        .logits
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap();
    Ok((
        top.into_data().convert::<i64>().to_vec::<i64>().unwrap(),
        logits,
    ))
}

fn load_gemma3(path: &Path) -> anyhow::Result<(Gemma3ForCausalLM<B>, GemmaTokenizer)> {
    match AutoModel::<B>::from_pretrained(path, &Default::default(), DType::F32)? {
        AutoModel::Gemma3(m, t) => Ok((m, t)),
        _ => bail!("{}: check-gguf runs Gemma 3 models", path.display()),
    }
}

struct Args {
    model: Option<PathBuf>,
    adapter: Option<PathBuf>,
    types: Vec<FileType>,
    new_tokens: usize,
    python: String,
    out: PathBuf,
}

fn parse(args: &[String]) -> anyhow::Result<Args> {
    let mut a = Args {
        model: None,
        adapter: None,
        types: vec![FileType::F16, FileType::Q8_0, FileType::Q4KM],
        new_tokens: 24,
        python: "python3".into(),
        out: PathBuf::from("target/check-gguf"),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--model" => a.model = Some(value()?.into()),
            "--adapter" => a.adapter = Some(value()?.into()),
            "--types" => {
                a.types = value()?
                    .split(',')
                    .map(|t| t.parse::<FileType>().map_err(anyhow::Error::msg))
                    .collect::<anyhow::Result<_>>()?
            }
            "--new-tokens" => a.new_tokens = value()?.parse().context("--new-tokens")?,
            "--python" => a.python = value()?.clone(),
            "--out" => a.out = value()?.into(),
            other => bail!("unknown option `{other}`\n{USAGE}"),
        }
    }
    Ok(a)
}

/// One prompt's reference: our ids, and our full-precision continuation.
struct Reference {
    text: String,
    ids: Vec<i64>,
    sequence: Vec<i64>,
    argmax: Vec<i64>,
}

pub fn check_gguf(args: &[String]) -> anyhow::Result<bool> {
    let a = parse(args)?;
    let model = match &a.model {
        Some(m) => m.clone(),
        None => crate::fetch_model(&["gemma-3-270m".to_string()])?,
    };
    std::fs::create_dir_all(&a.out)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("check_gguf.py");
    let probe = Command::new(&a.python)
        .args(["-c", "import llama_cpp; print(llama_cpp.__version__)"])
        .output()
        .with_context(|| format!("running {}", a.python))?;
    if !probe.status.success() {
        bail!(
            "{} cannot import llama_cpp: install it with `{} -m pip install llama-cpp-python==0.3.36` (it builds llama.cpp from source, ~12 min on 2 cores)",
            a.python,
            a.python
        );
    }
    let version = String::from_utf8_lossy(&probe.stdout).trim().to_string();
    println!("llama-cpp-python {version}");

    // our full-precision model (adapter merged) and its continuations
    let (mut reference, tok) = load_gemma3(&model)?;
    if let Some(dir) = &a.adapter {
        let (m, cfg, _, _) = automodel::load_adapter(reference, dir)?;
        reference = automodel::merge(m, &cfg);
    }
    let mut refs = Vec::new();
    for text in PROMPTS {
        let ids: Vec<i64> = tok.encode(text, true)?.into_iter().map(i64::from).collect();
        let mut sequence = ids.clone();
        sequence.extend(greedy(&reference, &ids, a.new_tokens)?);
        let argmax = argmax(&reference, &sequence)?;
        refs.push(Reference {
            text: text.to_string(),
            ids,
            sequence,
            argmax,
        });
    }
    drop(reference);

    let mut ok = true;
    let mut table = vec![
        "| type | size (MB) | tokenization = ours | greedy continuation = ours on the same file | top-1 = ours on the same file | top-1 = our f32 model |".to_string(),
        "|---|---|---|---|---|---|".to_string(),
    ];
    for ty in &a.types {
        let path = a.out.join(format!("model-{}.gguf", ty.name()));
        let opts = ExportOptions {
            file_type: *ty,
            name: "check-gguf".into(),
            chat_template: None,
            overwrite: true,
        };
        let summary = automodel::export_gguf(&model, a.adapter.as_deref(), &path, &opts)?;
        let (ours, _) = load_gemma3(&path)?;
        let job = serde_json::json!({
            "model": path,
            "n_ctx": 256,
            "prompts": refs.iter().map(|r| serde_json::json!({
                "text": r.text, "ids": r.ids, "new_tokens": a.new_tokens, "sequence": r.sequence,
            })).collect::<Vec<_>>(),
        });
        let job_path = a.out.join(format!("job-{}.json", ty.name()));
        let res_path = a.out.join(format!("llama-{}.json", ty.name()));
        std::fs::write(&job_path, serde_json::to_vec_pretty(&job)?)?;
        let st = Command::new(&a.python)
            .arg(&script)
            .arg(&job_path)
            .arg(&res_path)
            .status()?;
        if !st.success() {
            bail!("llama.cpp could not load or run {} ({st})", path.display());
        }
        let res: serde_json::Value = serde_json::from_slice(&std::fs::read(&res_path)?)?;
        let (mut tok_ok, mut greedy_ok, mut agree, mut total) = (0, 0, 0usize, 0usize);
        let mut worst_margin = 0f32;
        let mut agree_f32 = 0usize;
        let mut clear_disagreements = 0usize;
        for (r, l) in refs
            .iter()
            .zip(res["prompts"].as_array().context("prompts")?)
        {
            let ids = |k: &str| -> Vec<i64> {
                l[k].as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
                    .unwrap_or_default()
            };
            if ids("tokenized") == r.ids {
                tok_ok += 1;
            } else {
                println!(
                    "  {}: llama.cpp tokenizes {:?} as {:?}, we as {:?}",
                    ty.name(),
                    r.text,
                    ids("tokenized"),
                    r.ids
                );
            }
            let mine = greedy(&ours, &r.ids, a.new_tokens)?;
            let theirs = ids("greedy");
            if theirs == mine {
                greedy_ok += 1;
            } else {
                // where they part, and by how much our own logits separate the two choices there
                let i = mine.iter().zip(&theirs).take_while(|(x, y)| x == y).count();
                let mut prefix = r.ids.clone();
                prefix.extend(&mine[..i]);
                let logits = next_logits(&ours, &prefix)?;
                let at = |t: Option<&i64>| t.map_or(f32::NAN, |t| logits[*t as usize]);
                let margin = at(mine.get(i)) - at(theirs.get(i));
                worst_margin = worst_margin.max(margin);
                let text =
                    |t: &[i64]| tok.decode(&t.iter().map(|t| *t as u32).collect::<Vec<_>>(), false);
                println!(
                    "  {}: {:?}: equal for {i} tokens, then llama.cpp {:?}, we {:?} (our logits differ by {margin:.3} there)",
                    ty.name(),
                    r.text,
                    text(&theirs[i..])?,
                    text(&mine[i..])?
                );
            }
            // every position of the prompt and the continuation: the next token predicted, by
            // llama.cpp and by us on this file, and by our full-precision model
            let la = ids("argmax");
            let (on_file, logits) = top1_and_logits(&ours, &r.sequence)?;
            let v = logits.len() / r.sequence.len();
            let here = (0..r.sequence.len())
                .filter(|p| la.get(*p) == on_file.get(*p))
                .count();
            println!(
                "  {}: {:?}: top-1 equal at {here}/{} positions",
                ty.name(),
                r.text.chars().take(40).collect::<String>(),
                r.sequence.len()
            );
            for p in 0..r.sequence.len() {
                total += 1;
                agree += usize::from(la.get(p) == on_file.get(p));
                if let (Some(&l), Some(&o)) = (la.get(p), on_file.get(p))
                    && l != o
                {
                    let gap = logits[p * v + o as usize] - logits[p * v + l as usize];
                    if gap >= NEAR_TIE {
                        clear_disagreements += 1;
                        println!(
                            "  {}: position {p} of {:?}: llama.cpp's top-1 is {gap:.3} below ours in our logits",
                            ty.name(),
                            r.text
                        );
                    }
                }
                agree_f32 += usize::from(la.get(p) == r.argmax.get(p));
            }
        }
        let n = refs.len();
        let rate = agree as f64 / total.max(1) as f64;
        let exact_expected = matches!(
            ty,
            FileType::F32 | FileType::F16 | FileType::Bf16 | FileType::Q8_0
        );
        // llama.cpp's CPU matmuls round activations to the weights' type (8-bit blocks for Q8_0,
        // bf16/f16 rows): where our own logits separate two tokens by less than NEAR_TIE the
        // engines may pick either; anywhere else a different greedy choice is a failure
        let greedy_pass = greedy_ok == n || worst_margin < NEAR_TIE;
        let pass =
            tok_ok == n && (!exact_expected || greedy_pass) && (exact_expected || rate >= 0.95);
        ok &= pass;
        table.push(format!(
            "| {} | {:.1} | {tok_ok}/{n} equal | {greedy_ok}/{n} equal{} | {:.1} % ({agree}/{total}; {clear_disagreements} beyond a near-tie) | {:.1} % |",
            ty.name(),
            summary.bytes as f64 / 1e6,
            if greedy_ok < n {
                format!(" (others part at a near-tie: our logits {worst_margin:.3} apart)")
            } else {
                String::new()
            },
            100.0 * rate,
            100.0 * agree_f32 as f64 / total.max(1) as f64
        ));
        println!("{}: {}", ty.name(), if pass { "passed" } else { "FAILED" });
    }
    println!("\nllama-cpp-python {version}, model {}", model.display());
    for l in &table {
        println!("{l}");
    }
    Ok(ok)
}

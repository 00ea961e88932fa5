//! `cargo xtask check-gguf`: export a model to GGUF in each type and let llama.cpp itself
//! (llama-cpp-python, `xtask/check_gguf.py`) load and run every file.
//!
//! Per type it checks that llama.cpp tokenizes each prompt as we do, that its greedy
//! continuation of each prompt equals ours on the same file (F32, F16, BF16, Q8_0: the same
//! weights in both engines), and how often its top-1 token agrees with ours on the same file at
//! every position of the prompt and our full-precision model's continuation. Each type passes
//! its own gate ([`gate`]): the float types and Q8_0 by that same-file agreement; Q4_K_M by
//! llama.cpp's own measure of a quantization, the KL divergence from and the same-top-token
//! rate against llama.cpp running the F16 file (`llama-perplexity --kl-divergence`). A
//! non-finite logit on either side fails every type. How often llama.cpp agrees with our
//! full-precision model itself is reported: that measures the type's loss, not the file.

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

/// Our logits put two tokens within [`NEAR_TIE`] (a NaN gap is none).
fn is_near_tie(gap: f32) -> bool {
    gap < NEAR_TIE
}

/// `x` under the bar, or not a number.
fn below(x: f64, bar: f64) -> bool {
    x.is_nan() || x < bar
}

/// `x` over the bar, or not a number.
fn above(x: f64, bar: f64) -> bool {
    x.is_nan() || x > bar
}

/// What a type must reach to pass (docs/export.md lists them with the measured values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    /// The same weights in both engines: the top-1 token equals ours on the same file at this
    /// share of positions at least, and a different greedy continuation or top-1 is allowed
    /// only where our logits put the two tokens within [`NEAR_TIE`] (or up to
    /// `clear_disagreements` beyond it: llama.cpp rounds Q8_0's activations to 8 bits).
    SameFile {
        min_agreement: f64,
        clear_disagreements: Option<usize>,
    },
    /// A lossy type, judged as llama.cpp judges one against its F16 file: the mean KL
    /// divergence per position at most `max_mean_kld` and the same top token at a share of
    /// positions at least `min_same_top`.
    AgainstF16 {
        max_mean_kld: f64,
        min_same_top: f64,
    },
}

/// The gate of each type.
pub fn gate(ty: FileType) -> Gate {
    match ty {
        FileType::F32 | FileType::F16 | FileType::Bf16 => Gate::SameFile {
            min_agreement: 0.99,
            clear_disagreements: Some(0),
        },
        FileType::Q8_0 => Gate::SameFile {
            min_agreement: 0.93,
            clear_disagreements: None,
        },
        _ => Gate::AgainstF16 {
            max_mean_kld: 0.05,
            min_same_top: 0.9,
        },
    }
}

/// What one type measured, for its gate.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub prompts: usize,
    pub tokenized_equal: usize,
    pub greedy_equal: usize,
    /// The largest gap in our logits where a greedy continuation parted (NaN: not finite).
    pub worst_margin: f32,
    pub agree: usize,
    pub positions: usize,
    pub clear_disagreements: usize,
    /// Non-finite logits: llama.cpp's (this file and the F16 reference) and ours.
    pub nonfinite: usize,
    /// KL divergence from the F16 file per position, and how many positions pick its top token.
    pub kld: Vec<f64>,
    pub same_top: usize,
}

impl Outcome {
    pub fn agreement(&self) -> f64 {
        self.agree as f64 / self.positions.max(1) as f64
    }
    pub fn mean_kld(&self) -> f64 {
        self.kld.iter().sum::<f64>() / self.kld.len().max(1) as f64
    }
    pub fn same_top_rate(&self) -> f64 {
        self.same_top as f64 / self.kld.len().max(1) as f64
    }

    /// Why the outcome fails its gate (empty: it passes).
    pub fn failures(&self, gate: Gate) -> Vec<String> {
        let mut why = Vec::new();
        if self.nonfinite > 0 {
            why.push(format!("{} non-finite logits", self.nonfinite));
        }
        if self.worst_margin.is_nan() {
            why.push("a continuation parted where a logit is not finite".into());
        }
        if self.tokenized_equal != self.prompts {
            why.push(format!(
                "tokenization differs on {} of {} prompts",
                self.prompts - self.tokenized_equal,
                self.prompts
            ));
        }
        match gate {
            Gate::SameFile {
                min_agreement,
                clear_disagreements,
            } => {
                if self.positions == 0 || below(self.agreement(), min_agreement) {
                    why.push(format!(
                        "top-1 agreement {:.1} % ({}/{}) below {:.0} %",
                        100.0 * self.agreement(),
                        self.agree,
                        self.positions,
                        100.0 * min_agreement
                    ));
                }
                if let Some(max) = clear_disagreements
                    && self.clear_disagreements > max
                {
                    why.push(format!(
                        "{} top-1 disagreements beyond a near-tie (at most {max})",
                        self.clear_disagreements
                    ));
                }
                if self.greedy_equal != self.prompts && !is_near_tie(self.worst_margin) {
                    why.push(format!(
                        "a greedy continuation parts where our logits are {:.3} apart (near-tie: {NEAR_TIE})",
                        self.worst_margin
                    ));
                }
            }
            Gate::AgainstF16 {
                max_mean_kld,
                min_same_top,
            } => {
                if self.kld.is_empty() {
                    why.push("no KL divergence against the F16 file was measured".into());
                } else {
                    if above(self.mean_kld(), max_mean_kld) {
                        why.push(format!(
                            "mean KL divergence from F16 {:.4} above {max_mean_kld}",
                            self.mean_kld()
                        ));
                    }
                    if below(self.same_top_rate(), min_same_top) {
                        why.push(format!(
                            "same top token as F16 at {:.1} % of positions, below {:.0} %",
                            100.0 * self.same_top_rate(),
                            100.0 * min_same_top
                        ));
                    }
                }
            }
        }
        why
    }
}

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
        "| type | size (MB) | tokenization = ours | greedy continuation = ours on the same file | top-1 = ours on the same file | top-1 = our f32 model | against llama.cpp on F16: mean KLD, same top | gate |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    // the lossy types are judged against llama.cpp on the F16 file: export and check it first
    let mut types = a.types.clone();
    if types
        .iter()
        .any(|t| matches!(gate(*t), Gate::AgainstF16 { .. }))
        && !types.contains(&FileType::F16)
    {
        types.insert(0, FileType::F16);
    }
    types.sort_by_key(|t| *t != FileType::F16);
    let f16_path = a.out.join(format!("model-{}.gguf", FileType::F16.name()));
    for ty in &types {
        let path = a.out.join(format!("model-{}.gguf", ty.name()));
        let opts = ExportOptions {
            file_type: *ty,
            name: "check-gguf".into(),
            chat_template: None,
            overwrite: true,
        };
        let summary = automodel::export_gguf(&model, a.adapter.as_deref(), &path, &opts)?;
        let (ours, _) = load_gemma3(&path)?;
        let gate = gate(*ty);
        let job = serde_json::json!({
            "model": path,
            "reference_model": matches!(gate, Gate::AgainstF16 { .. }).then_some(&f16_path),
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
        let mut o = Outcome {
            prompts: refs.len(),
            ..Default::default()
        };
        let mut agree_f32 = 0usize;
        for (r, l) in refs
            .iter()
            .zip(res["prompts"].as_array().context("prompts")?)
        {
            let ids = |k: &str| -> Vec<i64> {
                l[k].as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
                    .unwrap_or_default()
            };
            o.nonfinite += l["nonfinite"].as_u64().unwrap_or(0) as usize;
            if let Some(kld) = l["kld"].as_array() {
                o.kld
                    .extend(kld.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)));
            }
            if let Some(same) = l["same_top"].as_array() {
                o.same_top += same.iter().filter(|v| v.as_bool() == Some(true)).count();
            }
            if ids("tokenized") == r.ids {
                o.tokenized_equal += 1;
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
                o.greedy_equal += 1;
            } else {
                // where they part, and by how much our own logits separate the two choices there
                let i = mine.iter().zip(&theirs).take_while(|(x, y)| x == y).count();
                let mut prefix = r.ids.clone();
                prefix.extend(&mine[..i]);
                let logits = next_logits(&ours, &prefix)?;
                let at = |t: Option<&i64>| t.map_or(f32::NAN, |t| logits[*t as usize]);
                let margin = at(mine.get(i)) - at(theirs.get(i));
                // NaN stays NaN (f32::max would drop it) and fails the gate
                if margin.is_nan() || margin > o.worst_margin {
                    o.worst_margin = margin;
                }
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
            o.nonfinite += logits.iter().filter(|x| !x.is_finite()).count();
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
                o.positions += 1;
                o.agree += usize::from(la.get(p) == on_file.get(p));
                if let (Some(&l), Some(&mine)) = (la.get(p), on_file.get(p))
                    && l != mine
                {
                    let gap = logits[p * v + mine as usize] - logits[p * v + l as usize];
                    if !is_near_tie(gap) {
                        o.clear_disagreements += 1;
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
        let n = o.prompts;
        let failures = o.failures(gate);
        let pass = failures.is_empty();
        ok &= pass;
        table.push(format!(
            "| {} | {:.1} | {}/{n} equal | {}/{n} equal{} | {:.1} % ({}/{}; {} beyond a near-tie) | {:.1} % | {} | {} |",
            ty.name(),
            summary.bytes as f64 / 1e6,
            o.tokenized_equal,
            o.greedy_equal,
            if o.greedy_equal < n {
                format!(
                    " (the others part where our logits are at most {:.3} apart)",
                    o.worst_margin
                )
            } else {
                String::new()
            },
            100.0 * o.agreement(),
            o.agree,
            o.positions,
            o.clear_disagreements,
            100.0 * agree_f32 as f64 / o.positions.max(1) as f64,
            if o.kld.is_empty() {
                "–".to_string()
            } else {
                format!(
                    "{:.4}, {:.1} % ({}/{})",
                    o.mean_kld(),
                    100.0 * o.same_top_rate(),
                    o.same_top,
                    o.kld.len()
                )
            },
            match gate {
                Gate::SameFile { min_agreement, clear_disagreements } => format!(
                    "top-1 ≥ {:.0} %{}",
                    100.0 * min_agreement,
                    clear_disagreements.map_or(String::new(), |c| format!(", ≤ {c} beyond a near-tie"))
                ),
                Gate::AgainstF16 { max_mean_kld, min_same_top } => format!(
                    "KLD ≤ {max_mean_kld}, same top ≥ {:.0} %",
                    100.0 * min_same_top
                ),
            }
        ));
        for f in &failures {
            println!("  {}: {f}", ty.name());
        }
        println!("{}: {}", ty.name(), if pass { "passed" } else { "FAILED" });
    }
    println!("\nllama-cpp-python {version}, model {}", model.display());
    for l in &table {
        println!("{l}");
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::{FileType, Gate, NEAR_TIE, Outcome, gate};

    /// A same-file outcome that passes every gate of the float types.
    fn clean() -> Outcome {
        Outcome {
            prompts: 10,
            tokenized_equal: 10,
            greedy_equal: 10,
            worst_margin: 0.0,
            agree: 249,
            positions: 249,
            ..Default::default()
        }
    }

    #[test]
    fn each_float_type_is_gated_by_same_file_agreement() {
        let g = gate(FileType::F16);
        assert!(clean().failures(g).is_empty());
        let low = Outcome {
            agree: 240,
            ..clean()
        };
        assert!(
            low.failures(g)[0].contains("top-1 agreement"),
            "{:?}",
            low.failures(g)
        );
        let clear = Outcome {
            clear_disagreements: 1,
            ..clean()
        };
        assert!(clear.failures(g)[0].contains("beyond a near-tie"));
        // a continuation parting beyond a near-tie fails; within one it passes
        let parted = Outcome {
            greedy_equal: 9,
            worst_margin: 2.0 * NEAR_TIE,
            ..clean()
        };
        assert!(!parted.failures(g).is_empty());
        let tie = Outcome {
            greedy_equal: 9,
            worst_margin: 0.5 * NEAR_TIE,
            ..clean()
        };
        assert!(tie.failures(g).is_empty());
        // Q8_0 allows llama.cpp's 8-bit rounding some clear disagreements, not low agreement
        let q8 = gate(FileType::Q8_0);
        assert!(
            Outcome {
                agree: 241,
                clear_disagreements: 4,
                ..clean()
            }
            .failures(q8)
            .is_empty()
        );
        assert!(
            !Outcome {
                agree: 200,
                ..clean()
            }
            .failures(q8)
            .is_empty()
        );
        let untokenized = Outcome {
            tokenized_equal: 9,
            ..clean()
        };
        assert!(!untokenized.failures(g).is_empty());
    }

    #[test]
    fn a_nan_fails_every_type() {
        for ty in [FileType::F16, FileType::Q8_0, FileType::Q4KM] {
            let mut o = clean();
            o.kld = vec![0.01; 249];
            o.same_top = 249;
            assert!(
                o.failures(gate(ty)).is_empty(),
                "{ty:?}: {:?}",
                o.failures(gate(ty))
            );
            // a NaN margin where a continuation parts (f32::max would have dropped it)
            let nan = Outcome {
                greedy_equal: 9,
                worst_margin: f32::NAN,
                ..o.clone()
            };
            assert!(!nan.failures(gate(ty)).is_empty(), "{ty:?}");
            let nonfinite = Outcome {
                nonfinite: 1,
                ..o.clone()
            };
            assert!(
                nonfinite.failures(gate(ty))[0].contains("non-finite"),
                "{ty:?}"
            );
        }
        // a NaN divergence fails the KLD gate
        let mut o = clean();
        o.kld = vec![0.01, f64::NAN];
        o.same_top = 2;
        assert!(!o.failures(gate(FileType::Q4KM)).is_empty());
    }

    #[test]
    fn q4_k_m_is_gated_by_kl_divergence_and_same_top_against_f16() {
        let g = gate(FileType::Q4KM);
        let Gate::AgainstF16 {
            max_mean_kld,
            min_same_top,
        } = g
        else {
            panic!("{g:?}");
        };
        let with = |kld: f64, same: usize| Outcome {
            kld: vec![kld; 100],
            same_top: same,
            ..clean()
        };
        let at = (min_same_top * 100.0).ceil() as usize;
        assert!(with(0.5 * max_mean_kld, at).failures(g).is_empty());
        assert!(with(2.0 * max_mean_kld, 100).failures(g)[0].contains("KL divergence"));
        assert!(with(0.0, at - 1).failures(g)[0].contains("same top token"));
        // without the F16 reference there is nothing to judge: a failure, not a pass
        assert!(clean().failures(g)[0].contains("no KL divergence"));
    }
}

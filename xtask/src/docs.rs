//! `cargo xtask docs [--check]`: the measured figures of README.md and docs/ are blocks that
//! this command writes from the records the commands that measured them keep
//! (`docs/benchmarks.json` from `cargo xtask bench --record`, `docs/benchmarks-dp.json` from
//! `cargo xtask bench --only dp --record`, `docs/quickstart.json` from `cargo xtask quickstart
//! --record`). `--check` (CI) fails, naming the block, when a block
//! no longer matches its record, or when a record has no block.
//!
//! A block sits between `<!-- NAME:begin … -->` and `<!-- NAME:end -->`; whatever is between
//! the markers belongs to this command.

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bench::dp::{DpRecord, dp_markdown};
use crate::bench::report::{Row, markdown_table, summary_lines};
use crate::bench::root;

/// One generated block: where it lives and what it holds.
struct Block {
    file: &'static str,
    name: &'static str,
    /// The command whose record it shows (written into the begin marker).
    by: &'static str,
    text: String,
}

/// The bench records.
pub const BENCH_RECORDS: &str = "docs/benchmarks.json";
/// The data-parallel records.
pub const DP_RECORDS: &str = "docs/benchmarks-dp.json";
/// The Quick start records.
pub const QUICKSTART_RECORDS: &str = "docs/quickstart.json";

/// The records kept in `file` (relative to the workspace root; none when it does not exist).
pub fn read_records<T: DeserializeOwned>(file: &str) -> anyhow::Result<Vec<T>> {
    let path = root().join(file);
    match std::fs::read_to_string(&path) {
        Ok(s) => serde_json::from_str(&s).with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Write `records` into `file` (atomically) and rewrite every block from the records.
pub fn write_records<T: Serialize>(file: &str, records: &[T]) -> anyhow::Result<()> {
    let path = root().join(file);
    automodel_core::weights::write_atomic(
        &path,
        (serde_json::to_string_pretty(records)? + "\n").as_bytes(),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    write_all(false)?;
    eprintln!("recorded into {file} and the blocks it feeds");
    Ok(())
}

/// Add one record to the end of `file` and rewrite the blocks.
pub fn append_record<T: Serialize + DeserializeOwned>(file: &str, record: T) -> anyhow::Result<()> {
    let mut all: Vec<T> = read_records(file)?;
    all.push(record);
    write_records(file, &all)
}

fn blocks() -> anyhow::Result<Vec<Block>> {
    let rows: Vec<Row> = read_records(BENCH_RECORDS)?;
    let dp: Vec<DpRecord> = read_records(DP_RECORDS)?;
    let quick: Vec<crate::quickstart::QuickstartRecord> = read_records(QUICKSTART_RECORDS)?;
    let quick_text = match quick.last() {
        Some(r) => crate::quickstart::quickstart_markdown(r),
        None => "No record yet: `cargo xtask quickstart --record`.\n".into(),
    };
    let dp_text = match dp.last() {
        Some(r) => dp_markdown(r),
        None => "No record yet: `cargo xtask bench --only dp --record`.\n".into(),
    };
    Ok(vec![
        Block {
            file: "docs/benchmarks.md",
            name: "bench",
            by: "cargo xtask bench --record",
            text: markdown_table(&rows),
        },
        Block {
            file: "docs/benchmarks.md",
            name: "bench-dp",
            by: "cargo xtask bench --only dp --record",
            text: dp_text,
        },
        Block {
            file: "README.md",
            name: "quickstart",
            by: "cargo xtask quickstart --record",
            text: quick_text,
        },
        Block {
            file: "README.md",
            name: "bench-summary",
            by: "cargo xtask bench --baseline --rounds 3 --record",
            text: summary_lines(&rows),
        },
    ])
}

/// `text` with the block's contents replaced; an error names a missing marker.
fn splice(text: &str, b: &Block) -> anyhow::Result<String> {
    let begin_prefix = format!("<!-- {}:begin", b.name);
    let end = format!("<!-- {}:end -->", b.name);
    let Some(a) = text.find(&begin_prefix) else {
        bail!("{}: no `{begin_prefix} … -->` marker", b.file);
    };
    let Some(after_begin) = text[a..].find("-->").map(|i| a + i + 3) else {
        bail!("{}: the `{begin_prefix}` marker is not closed", b.file);
    };
    let Some(e) = text[after_begin..].find(&end).map(|i| after_begin + i) else {
        bail!("{}: no `{end}` after `{begin_prefix}`", b.file);
    };
    Ok(format!(
        "{}<!-- {}:begin (written by `{}`) -->\n{}{}",
        &text[..a],
        b.name,
        b.by,
        b.text,
        &text[e..]
    ))
}

/// Rewrite every block from its record (`check`: change nothing, fail on the first stale
/// block). Returns the blocks that were (or would be) rewritten.
pub fn write_all(check: bool) -> anyhow::Result<Vec<String>> {
    let mut stale = Vec::new();
    let blocks = blocks()?;
    let mut files: Vec<&str> = blocks.iter().map(|b| b.file).collect();
    files.sort_unstable();
    files.dedup();
    for file in files {
        let path = root().join(file);
        let old = std::fs::read_to_string(&path).with_context(|| format!("reading {file}"))?;
        let mut new = old.clone();
        for b in blocks.iter().filter(|b| b.file == file) {
            let next = splice(&new, b)?;
            if next != new {
                stale.push(format!("{file}: block `{}`", b.name));
            }
            new = next;
        }
        if !check && new != old {
            automodel_core::weights::write_atomic(&path, new.as_bytes())
                .with_context(|| format!("writing {file}"))?;
        }
    }
    Ok(stale)
}

/// `cargo xtask docs [--check]`.
pub fn docs(args: &[String]) -> anyhow::Result<bool> {
    let check = match args {
        [] => false,
        [a] if a == "--check" => true,
        _ => bail!("usage: cargo xtask docs [--check]"),
    };
    let stale = write_all(check)?;
    if check {
        if stale.is_empty() {
            println!("every generated block of README.md and docs/ matches its record");
            return Ok(true);
        }
        for s in &stale {
            eprintln!(
                "{s} does not match its record: run `cargo xtask docs` (or the command that records it)"
            );
        }
        return Ok(false);
    }
    for s in &stale {
        eprintln!("rewrote {s}");
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::{Block, splice};

    fn block(text: &str) -> Block {
        Block {
            file: "x.md",
            name: "b",
            by: "cmd",
            text: text.into(),
        }
    }

    #[test]
    fn a_block_is_replaced_between_its_markers_only() {
        let doc = "before\n<!-- b:begin (old) -->\nold figure\n<!-- b:end -->\nafter\n";
        let new = splice(doc, &block("new figure\n")).unwrap();
        assert_eq!(
            new,
            "before\n<!-- b:begin (written by `cmd`) -->\nnew figure\n<!-- b:end -->\nafter\n"
        );
        // splicing the same text again changes nothing (what --check relies on)
        assert_eq!(splice(&new, &block("new figure\n")).unwrap(), new);
        assert_ne!(splice(&new, &block("other\n")).unwrap(), new);
    }

    #[test]
    fn missing_markers_are_named() {
        let e = splice("no markers", &block("x")).unwrap_err().to_string();
        assert!(e.contains("x.md") && e.contains("<!-- b:begin"), "{e}");
        let e = splice("<!-- b:begin -->\nx", &block("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("<!-- b:end -->"), "{e}");
    }
}

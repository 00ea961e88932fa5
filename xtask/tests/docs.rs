//! `cargo xtask docs --check` (a CI step) fails when a generated block of README.md or docs/ no
//! longer matches the record it is written from, and passes once `cargo xtask docs` rewrote it.

use std::path::Path;

mod common;

fn xtask(root: &Path, args: &[&str]) -> (bool, String) {
    common::xtask(args, &[("AUTOMODEL_ROOT", root.as_os_str())])
}

#[test]
fn a_block_that_no_longer_matches_its_record_fails_the_check() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("docs")).unwrap();
    for f in [
        "README.md",
        "docs/benchmarks.md",
        "docs/benchmarks.json",
        "docs/benchmarks-dp.json",
        "docs/quickstart.json",
    ] {
        if repo.join(f).is_file() {
            std::fs::copy(repo.join(f), root.path().join(f)).unwrap();
        }
    }
    // the repository as committed passes
    let (ok, out) = xtask(root.path(), &["docs", "--check"]);
    assert!(ok, "{out}");

    // a figure edited by hand in the README's block
    let readme = root.path().join("README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    let begin = text.find("<!-- bench-summary:begin").unwrap();
    let line_end = begin + text[begin..].find('\n').unwrap() + 1;
    let edited = format!(
        "{}  * hand-written: 9.99× PyTorch's speed\n{}",
        &text[..line_end],
        &text[line_end..]
    );
    std::fs::write(&readme, edited).unwrap();
    let (ok, out) = xtask(root.path(), &["docs", "--check"]);
    assert!(!ok, "{out}");
    assert!(out.contains("README.md: block `bench-summary`"), "{out}");

    // rewritten from the record, it passes again
    let (ok, out) = xtask(root.path(), &["docs"]);
    assert!(ok, "{out}");
    assert!(!std::fs::read_to_string(&readme).unwrap().contains("9.99×"));
    let (ok, out) = xtask(root.path(), &["docs", "--check"]);
    assert!(ok, "{out}");

    // a record changed without rewriting its table
    let json = root.path().join("docs/benchmarks.json");
    let rows = std::fs::read_to_string(&json).unwrap();
    assert!(
        rows.contains("\"date\": \""),
        "the bench record has dated rows"
    );
    std::fs::write(&json, rows.replacen("\"date\": \"", "\"date\": \"1999-", 1)).unwrap();
    let (ok, out) = xtask(root.path(), &["docs", "--check"]);
    assert!(!ok, "{out}");
    assert!(out.contains("docs/benchmarks.md: block `bench`"), "{out}");

    // a block whose markers are gone is an error naming them
    std::fs::write(&readme, "no markers here\n").unwrap();
    let (ok, out) = xtask(root.path(), &["docs", "--check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("README.md: no `<!-- ") && out.contains(":begin"),
        "{out}"
    );
}

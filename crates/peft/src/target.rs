//! Target matching with PEFT's semantics (`check_target_module_exists`), plus Automodel's `*`
//! wildcards.

use regex::Regex;

use crate::config::Targets;

/// PEFT's shorthand for every linear layer except the output head.
pub const ALL_LINEAR: &str = "all-linear";

/// A regular expression that must match the whole module name (Python's `re.fullmatch`).
pub fn full_match_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("`{pattern}` is not a valid regular expression: {e}"))
}

/// A wildcard pattern (`*` = any run of characters) as a full-match regex.
fn wildcard(pattern: &str) -> Regex {
    let escaped: Vec<String> = pattern.split('*').map(regex::escape).collect();
    Regex::new(&format!("^{}$", escaped.join(".*"))).expect("escaped pattern")
}

/// A compiled [`Targets`].
#[derive(Debug, Clone)]
pub enum Matcher {
    All,
    Regex(Regex),
    /// Entries and how each matches: exact name or `.`-suffix, or a wildcard.
    List(Vec<(String, Option<Regex>)>),
}

impl Matcher {
    /// Compile `targets` (validated already).
    pub fn new(targets: &Targets) -> Result<Self, String> {
        Ok(match targets {
            Targets::Pattern(p) if p == ALL_LINEAR => Matcher::All,
            Targets::Pattern(p) => Matcher::Regex(full_match_regex(p)?),
            Targets::List(v) => Matcher::List(
                v.iter()
                    .map(|t| (t.clone(), t.contains('*').then(|| wildcard(t))))
                    .collect(),
            ),
        })
    }

    /// Whether the module `name` (e.g. `model.language_model.layers.0.self_attn.q_proj`) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Regex(r) => r.is_match(name),
            Matcher::List(v) => v.iter().any(|(t, w)| entry_matches(t, w.as_ref(), name)),
        }
    }

    /// The list entries (or the regex) that match none of `names`.
    pub fn unmatched<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) -> Vec<String> {
        match self {
            Matcher::All => Vec::new(),
            Matcher::Regex(r) => {
                if names.clone().any(|n| r.is_match(n)) {
                    Vec::new()
                } else {
                    vec![
                        r.as_str()
                            .trim_start_matches("^(?:")
                            .trim_end_matches(")$")
                            .to_string(),
                    ]
                }
            }
            Matcher::List(v) => v
                .iter()
                .filter(|(t, w)| !names.clone().any(|n| entry_matches(t, w.as_ref(), n)))
                .map(|(t, _)| t.clone())
                .collect(),
        }
    }
}

fn entry_matches(target: &str, wildcard: Option<&Regex>, name: &str) -> bool {
    match wildcard {
        Some(w) => w.is_match(name),
        None => name == target || name.ends_with(&format!(".{target}")),
    }
}

/// The names closest to `target` (by edit distance of the last component and of the whole
/// name), for error messages.
pub fn nearest<'a>(target: &str, names: impl Iterator<Item = &'a str>, n: usize) -> Vec<String> {
    let last = |s: &str| s.rsplit('.').next().unwrap_or(s).to_string();
    let t = last(target.trim_matches('*'));
    let mut scored: Vec<(usize, String)> = names
        .map(|name| {
            (
                strsim::levenshtein(&t, &last(name)).min(strsim::levenshtein(target, name)),
                last(name),
            )
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(n).map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_semantics() {
        let names = [
            "model.language_model.layers.0.self_attn.q_proj",
            "model.language_model.layers.0.altup.correction_coefs",
            "model.audio_tower.conformer.0.attention.attn.q_proj",
            "model.language_model.altup_projections.1",
        ];
        let list = Matcher::new(&Targets::List(vec![
            "q_proj".into(),
            "altup_projections.1".into(),
        ]))
        .unwrap();
        let hit: Vec<bool> = names.iter().map(|n| list.matches(n)).collect();
        assert_eq!(hit, [true, false, true, true]);
        // a suffix must start at a `.`: "proj" does not match "q_proj"
        assert!(
            !Matcher::new(&Targets::List(vec!["proj".into()]))
                .unwrap()
                .matches(names[0])
        );
        let regex = Matcher::new(&Targets::Pattern(
            r".*language_model.*\.(q_proj|k_proj)".into(),
        ))
        .unwrap();
        assert!(regex.matches(names[0]) && !regex.matches(names[2]));
        // full match, not search
        assert!(
            !Matcher::new(&Targets::Pattern("q_proj".into()))
                .unwrap()
                .matches(names[0])
        );
        let wild = Matcher::new(&Targets::List(vec!["*audio*".into()])).unwrap();
        assert!(wild.matches(names[2]) && !wild.matches(names[0]));
        assert_eq!(list.unmatched(names.iter().copied()), Vec::<String>::new());
        let typo = Matcher::new(&Targets::List(vec!["q_prj".into()])).unwrap();
        assert_eq!(typo.unmatched(names.iter().copied()), ["q_prj"]);
        assert_eq!(nearest("q_prj", names.iter().copied(), 1), ["q_proj"]);
    }
}

//! Answer-only labels, found the way Automodel finds them: render a two-turn conversation with a
//! sentinel answer to learn the assistant start marker (`<start_of_turn>model\n` for Gemma) and
//! the stop token (`<end_of_turn>`); then every assistant span — after a marker, through the
//! next stop token inclusive — is labelled, everything else is `-100`.

use automodel_core::loss::IGNORE_INDEX;
use automodel_tokenizer::GemmaTokenizer;

use crate::conversation::{Conversation, Message, Role};
use crate::error::DataError;
use crate::template::ChatTemplate;

const SENTINEL: &str = "XSENTINELMARKERX";

/// The token sequence that opens an assistant turn and the token that closes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerSpans {
    pub marker: Vec<i64>,
    pub stop: i64,
}

impl AnswerSpans {
    /// Derive the marker and stop token from `template` and `tokenizer`.
    pub fn derive(template: &ChatTemplate, tokenizer: &GemmaTokenizer) -> Result<Self, DataError> {
        let bad = |m: String| DataError::Template(format!("{}: {m}", template.source));
        let render = |c: &Conversation| template.render(c, false).map_err(|e| bad(e.to_string()));
        let with = render(&Conversation::qa("u", SENTINEL))?;
        let without = render(&Conversation {
            messages: vec![Message::text(Role::User, "u")],
        })?;
        let at = with
            .find(SENTINEL)
            .ok_or_else(|| bad("the rendered assistant turn does not contain its text".into()))?;
        let start = if with.starts_with(&without) && without.len() <= at {
            without.len()
        } else {
            return Err(bad(
                "a user turn renders differently before an assistant turn; cannot find the assistant marker".into(),
            ));
        };
        let ids = |s: &str| -> Result<Vec<i64>, DataError> {
            Ok(tokenizer
                .encode(s, false)?
                .into_iter()
                .map(i64::from)
                .collect())
        };
        let marker = ids(&with[start..at])?;
        let stop = ids(&with[at + SENTINEL.len()..])?
            .first()
            .copied()
            .ok_or_else(|| bad("nothing follows the assistant text; no stop token".into()))?;
        if marker.is_empty() {
            return Err(bad("the assistant turn has no opening marker".into()));
        }
        Ok(Self { marker, stop })
    }

    /// Labels for `ids`: the tokens of every assistant span (through its stop token), `-100`
    /// elsewhere.
    pub fn labels(&self, ids: &[i64]) -> Vec<i64> {
        let n = ids.len();
        let m = self.marker.len();
        let mut labels = vec![IGNORE_INDEX; n];
        let mut i = 0;
        while i + m <= n {
            if ids[i..i + m] == self.marker[..] {
                let mut j = i + m;
                while j < n && ids[j] != self.stop {
                    labels[j] = ids[j];
                    j += 1;
                }
                if j < n {
                    labels[j] = ids[j];
                }
                i = j + 1;
            } else {
                i += 1;
            }
        }
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_run_from_each_marker_through_the_stop_token() {
        let s = AnswerSpans {
            marker: vec![105, 9],
            stop: 106,
        };
        let ids = [
            2, 105, 7, 1, 106, 105, 9, 20, 21, 106, 5, 105, 9, 30, 106, 0,
        ];
        let l = s.labels(&ids);
        assert_eq!(
            l,
            [
                -100, -100, -100, -100, -100, -100, -100, 20, 21, 106, -100, -100, -100, 30, 106,
                -100
            ]
        );
        // a span cut by truncation runs to the end
        assert_eq!(s.labels(&[105, 9, 40, 41]), [-100, -100, 40, 41]);
    }
}

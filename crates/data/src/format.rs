//! Dataset files: JSONL and JSON arrays of records, each a message list, a prompt/completion
//! pair, or plain text (continued pre-training); a column mapping renames fields.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conversation::{Conversation, Message, Part, Role, media_value};
use crate::error::{DataError, Origin, SampleError};

/// One training sample.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// A conversation: the loss is on the assistant turns.
    Chat(Conversation),
    /// Plain text: the loss is on every token.
    Text(String),
}

/// Field names of a record (recipe `dataset.columns`); defaults are Hugging Face's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    pub messages: String,
    pub prompt: String,
    pub completion: String,
    pub text: String,
    /// An image (path or bytes) shown before the prompt.
    pub image: String,
    /// An audio clip (path or bytes) played before the prompt.
    pub audio: String,
    pub system: String,
    /// The user's text when a record has no prompt column (e.g. `Transcribe this audio.` for
    /// speech-recognition data that holds only `audio` and its transcript).
    pub default_prompt: Option<String>,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            messages: "messages".into(),
            prompt: "prompt".into(),
            completion: "completion".into(),
            text: "text".into(),
            image: "image".into(),
            audio: "audio".into(),
            system: "system".into(),
            default_prompt: None,
        }
    }
}

/// A record read from a file, or why it cannot be used.
#[derive(Debug, Clone)]
pub struct Record {
    pub origin: Origin,
    pub sample: Result<Sample, SampleError>,
}

/// Turn one JSON record into a sample, by the first of: messages, prompt/completion, text.
pub fn sample_from_json(v: &Value, cols: &Columns, base: &Path) -> Result<Sample, SampleError> {
    let obj = v
        .as_object()
        .ok_or_else(|| SampleError::Malformed("a record must be a JSON object".into()))?;
    if let Some(m) = obj.get(&cols.messages) {
        return Ok(Sample::Chat(Conversation::from_messages(m, base)?));
    }
    let string = |k: &str| obj.get(k).and_then(Value::as_str);
    let prompt = string(&cols.prompt).or(cols.default_prompt.as_deref());
    if let (Some(p), Some(c)) = (prompt, string(&cols.completion)) {
        let mut user = Vec::new();
        if let Some(img) = obj.get(&cols.image).filter(|v| !v.is_null()) {
            user.push(Part::Image(media_value(img, base)?));
        }
        if let Some(a) = obj.get(&cols.audio).filter(|v| !v.is_null()) {
            user.push(Part::Audio(media_value(a, base)?));
        }
        user.push(Part::Text(p.to_string()));
        let mut messages = Vec::new();
        if let Some(s) = string(&cols.system) {
            messages.push(Message::text(Role::System, s));
        }
        messages.push(Message {
            role: Role::User,
            content: user,
        });
        messages.push(Message::text(Role::Assistant, c));
        return Ok(Sample::Chat(Conversation { messages }));
    }
    if let Some(t) = string(&cols.text) {
        return Ok(Sample::Text(t.to_string()));
    }
    Err(SampleError::Malformed(format!(
        "expected `{}`, `{}` + `{}`, or `{}` (set dataset.columns to map other names)",
        cols.messages, cols.prompt, cols.completion, cols.text
    )))
}

/// Read a `.jsonl` (one record per line; a broken line is that record's error, named by line)
/// or `.json` (an array of records) file.
pub fn read_json_file(path: &Path, cols: &Columns) -> Result<Vec<Record>, DataError> {
    let bytes = automodel_core::read_file(path)?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::File {
        path: path.to_path_buf(),
        message: format!("not UTF-8 text: {e}"),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let is_jsonl =
        path.extension().is_some_and(|e| e == "jsonl") || !text.trim_start().starts_with('[');
    let mut out = Vec::new();
    if is_jsonl {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let origin = Origin {
                file: path.to_path_buf(),
                position: i + 1,
                is_line: true,
            };
            let sample = serde_json::from_str::<Value>(line)
                .map_err(|e| SampleError::Malformed(format!("invalid JSON: {e}")))
                .and_then(|v| sample_from_json(&v, cols, base));
            out.push(Record { origin, sample });
        }
    } else {
        let v: Value = serde_json::from_str(&text).map_err(|e| DataError::File {
            path: path.to_path_buf(),
            message: format!("invalid JSON: {e}"),
        })?;
        let list = v.as_array().ok_or_else(|| DataError::File {
            path: path.to_path_buf(),
            message: "expected a JSON array of records".into(),
        })?;
        for (i, r) in list.iter().enumerate() {
            out.push(Record {
                origin: Origin {
                    file: path.to_path_buf(),
                    position: i,
                    is_line: false,
                },
                sample: sample_from_json(r, cols, base),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::Media;
    use std::path::PathBuf;

    #[test]
    fn jsonl_and_json_records_of_every_kind() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("d.jsonl");
        std::fs::write(
            &jsonl,
            concat!(
                r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#, "\n",
                r#"{"question": "2+2?", "answer": "4", "picture": "p.png"}"#, "\n",
                "\n",
                r#"{"text": "Once upon a time"}"#, "\n",
                r#"{"messages": [broken"#, "\n",
            ),
        )
        .unwrap();
        let cols = Columns {
            prompt: "question".into(),
            completion: "answer".into(),
            image: "picture".into(),
            ..Default::default()
        };
        let recs = read_json_file(&jsonl, &cols).unwrap();
        assert_eq!(recs.len(), 4);
        assert!(matches!(recs[0].sample, Ok(Sample::Chat(_))));
        let Ok(Sample::Chat(c)) = &recs[1].sample else {
            panic!("{:?}", recs[1].sample)
        };
        assert_eq!(c.media().0, [&Media::Path(dir.path().join("p.png"))]);
        assert_eq!(recs[2].sample, Ok(Sample::Text("Once upon a time".into())));
        assert_eq!(
            recs[3].origin.position, 5,
            "the broken record is named by its line"
        );
        assert!(
            recs[3]
                .sample
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("invalid JSON")
        );

        let json = dir.path().join("d.json");
        std::fs::write(
            &json,
            r#"[{"prompt": "a", "completion": "b"}, {"other": 1}]"#,
        )
        .unwrap();
        let recs = read_json_file(&json, &Columns::default()).unwrap();
        assert!(recs[0].sample.is_ok());
        assert!(
            recs[1]
                .sample
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("dataset.columns")
        );
        std::fs::write(&json, "[{").unwrap();
        assert!(read_json_file(&json, &Columns::default()).is_err());
    }

    #[test]
    fn a_default_prompt_stands_in_for_a_missing_prompt_column() {
        let cols = Columns {
            completion: "transcript".into(),
            default_prompt: Some("Transcribe this audio.".into()),
            ..Default::default()
        };
        let v: Value =
            serde_json::from_str(r#"{"audio": "a.wav", "transcript": "hello"}"#).unwrap();
        let Sample::Chat(c) = sample_from_json(&v, &cols, Path::new("/d")).unwrap() else {
            panic!("a chat sample")
        };
        assert_eq!(c.messages[0].text_content(), "Transcribe this audio.");
        assert_eq!(c.media().1, [&Media::Path(PathBuf::from("/d/a.wav"))]);
        assert_eq!(c.messages[1].text_content(), "hello");
        // without it such a record is refused, naming the columns
        let e = sample_from_json(&v, &Columns::default(), Path::new("/d")).unwrap_err();
        assert!(e.to_string().contains("prompt"), "{e}");
    }
}

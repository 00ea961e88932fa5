//! Hugging Face's message-list conversations: roles, text / image / audio parts, and the checks
//! every training sample must pass.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::SampleError;

/// Who speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// HF's role names (`model` is Gemma's name for the assistant).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" | "model" => Some(Role::Assistant),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// Where a medium's bytes are.
#[derive(Debug, Clone, PartialEq)]
pub enum Media {
    /// A file (relative paths are resolved against the dataset file's folder).
    Path(PathBuf),
    /// Encoded bytes (PNG, JPEG, WAV, …) as datasets store them.
    Bytes(Vec<u8>),
    /// Decoded 16 kHz mono samples (built-in datasets).
    Samples(Vec<f32>),
    /// A decoded RGB image (built-in datasets).
    Image(automodel_vision::processor::RgbImage),
}

/// One part of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Image(Media),
    Audio(Media),
}

/// One turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
}

impl Message {
    /// A text-only turn.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: vec![Part::Text(text.into())],
        }
    }

    /// The concatenated text parts.
    pub fn text_content(&self) -> String {
        self.content
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// A conversation, the unit of training data.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

impl Conversation {
    /// A one-turn question and answer.
    pub fn qa(question: impl Into<String>, answer: impl Into<String>) -> Self {
        Self {
            messages: vec![
                Message::text(Role::User, question),
                Message::text(Role::Assistant, answer),
            ],
        }
    }

    /// Parse HF's message list (`[{"role": …, "content": "…" | [{"type": "text", "text": …},
    /// {"type": "image", "path"|"image"|"url": …}, {"type": "audio", "path"|"audio": …}]}]`);
    /// relative media paths are resolved against `base`.
    pub fn from_messages(v: &Value, base: &Path) -> Result<Self, SampleError> {
        let list = v
            .as_array()
            .ok_or_else(|| SampleError::Malformed("`messages` must be a list".into()))?;
        let mut messages = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| SampleError::Malformed(format!("message {i} has no `role`")))?;
            let role = Role::parse(role).ok_or_else(|| SampleError::UnknownRole(role.into()))?;
            let content = match m.get("content") {
                Some(Value::String(s)) => vec![Part::Text(s.clone())],
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| part(p, base))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.in_message(i))?,
                Some(Value::Null) | None => Vec::new(),
                Some(other) => {
                    return Err(SampleError::Malformed(format!(
                        "message {i}: `content` must be a string or a list, got {other}"
                    )));
                }
            };
            messages.push(Message { role, content });
        }
        Ok(Self { messages })
    }

    /// The checks a training conversation must pass: at least one assistant turn, no empty
    /// assistant turn, a system turn only first, no media in assistant turns.
    pub fn validate(&self) -> Result<(), SampleError> {
        if !self.messages.iter().any(|m| m.role == Role::Assistant) {
            return Err(SampleError::NoAssistant);
        }
        for (i, m) in self.messages.iter().enumerate() {
            if m.role == Role::System && i > 0 {
                return Err(SampleError::Malformed(format!(
                    "message {i}: a system turn must come first"
                )));
            }
            if m.role == Role::Assistant {
                if m.text_content().trim().is_empty() {
                    return Err(SampleError::EmptyAssistant(i));
                }
                if m.content.iter().any(|p| !matches!(p, Part::Text(_))) {
                    return Err(SampleError::Malformed(format!(
                        "message {i}: an assistant turn holds only text"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Images and clips in order of appearance.
    pub fn media(&self) -> (Vec<&Media>, Vec<&Media>) {
        let (mut images, mut audio) = (Vec::new(), Vec::new());
        for p in self.messages.iter().flat_map(|m| &m.content) {
            match p {
                Part::Image(m) => images.push(m),
                Part::Audio(m) => audio.push(m),
                Part::Text(_) => {}
            }
        }
        (images, audio)
    }
}

/// A medium in a JSON value: a path string (relative to `base`), or `{"path": …}` /
/// `{"bytes": [..]}` as HF datasets store image and audio columns.
pub(crate) fn media_value(v: &Value, base: &Path) -> Result<Media, SampleError> {
    let path = |s: &str| {
        if s.contains("://") {
            Err(SampleError::Malformed(format!(
                "`{s}`: remote media are not fetched; give a local path"
            )))
        } else {
            Ok(Media::Path(base.join(s)))
        }
    };
    match v {
        Value::String(s) => path(s),
        Value::Object(o) => {
            // Parquet's `{bytes: <binary>, path}` struct: the binary is itself `{"bytes": [..]}`
            if let Some(inner @ Value::Object(_)) = o.get("bytes") {
                return media_value(inner, base);
            }
            if let Some(Value::Array(bytes)) = o.get("bytes") {
                let b: Option<Vec<u8>> = bytes
                    .iter()
                    .map(|x| x.as_u64().and_then(|x| u8::try_from(x).ok()))
                    .collect();
                return b.map(Media::Bytes).ok_or_else(|| {
                    SampleError::Malformed("`bytes` must be a list of bytes".into())
                });
            }
            match o.get("path") {
                Some(Value::String(p)) => path(p),
                _ => Err(SampleError::Malformed(
                    "a media field needs `path` or `bytes`".into(),
                )),
            }
        }
        other => Err(SampleError::Malformed(format!(
            "a media field must be a path or an object, got {other}"
        ))),
    }
}

fn part(p: &Value, base: &Path) -> Result<Part, SampleError> {
    if let Value::String(s) = p {
        return Ok(Part::Text(s.clone()));
    }
    let kind = p
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| SampleError::Malformed("a content part has no `type`".into()))?;
    let media = || -> Result<Media, SampleError> {
        for key in ["path", "url", "image", "audio"] {
            match p.get(key) {
                None | Some(Value::Null) => {}
                Some(v) => return media_value(v, base),
            }
        }
        Err(SampleError::Malformed(format!(
            "a `{kind}` part needs a `path` (or `{kind}` with a path or bytes)"
        )))
    };
    Ok(match kind {
        "text" => Part::Text(
            p.get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| SampleError::Malformed("a `text` part has no `text`".into()))?
                .to_string(),
        ),
        "image" => Part::Image(media()?),
        "audio" => Part::Audio(media()?),
        other => {
            return Err(SampleError::Malformed(format!(
                "content type `{other}` is not supported (text, image, audio)"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_lists_parse_and_validate() {
        let v = serde_json::json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image", "path": "img/a.png"}, {"type": "text", "text": "What?"}]},
            {"role": "assistant", "content": "A cat."}
        ]);
        let c = Conversation::from_messages(&v, Path::new("/data")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.messages.len(), 3);
        assert_eq!(
            c.media().0,
            [&Media::Path(PathBuf::from("/data/img/a.png"))]
        );
        let bad =
            |v: Value| Conversation::from_messages(&v, Path::new(".")).and_then(|c| c.validate());
        assert!(matches!(
            bad(serde_json::json!([{"role": "robot", "content": "x"}])),
            Err(SampleError::UnknownRole(_))
        ));
        assert!(matches!(
            bad(serde_json::json!([{"role": "user", "content": "x"}])),
            Err(SampleError::NoAssistant)
        ));
        assert!(matches!(
            bad(
                serde_json::json!([{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}])
            ),
            Err(SampleError::EmptyAssistant(1))
        ));
        assert!(
            bad(serde_json::json!([{"role": "user", "content": [{"type": "video", "path": "v"}]}]))
                .is_err()
        );
        let remote = media_value(
            &serde_json::json!({"path": "https://x/a.png"}),
            Path::new("."),
        );
        assert!(remote.unwrap_err().to_string().contains("not fetched"));
    }
}

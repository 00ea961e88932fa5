//! Chat templates: the checkpoint's own Jinja template (`chat_template.jinja`, or the one in
//! `tokenizer_config.json`) rendered with minijinja and its Python-compatibility methods, or the
//! built-in Gemma template when the checkpoint has none.

use std::path::Path;

use minijinja::{Environment, Error, ErrorKind, context};
use serde_json::{Value, json};

use crate::conversation::{Conversation, Part};
use crate::error::{DataError, SampleError};

/// The Gemma 3n chat template as its checkpoints ship it (Gemma 3's text-only turns render the
/// same): `<bos><start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n…<end_of_turn>\n`,
/// a system turn folded into the first user turn, images and clips as their placeholders.
pub const GEMMA_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'audio' -%}
                {{ '<audio_soft_token>' }}
            {%- elif item['type'] == 'image' -%}
                {{ '<image_soft_token>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token` as the template sees it.
    pub bos_token: String,
    /// Where it came from (a file, or `built-in Gemma`).
    pub source: String,
    /// The template itself (Jinja), as written where it came from.
    pub jinja: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish()
    }
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// Compile `source` (Jinja).
    pub fn new(source: &str, bos_token: &str, origin: &str) -> Result<Self, DataError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| DataError::Template(format!("{origin}: {e}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            source: origin.to_string(),
            jinja: source.to_string(),
        })
    }

    /// The built-in Gemma template.
    pub fn gemma() -> Self {
        Self::new(GEMMA_TEMPLATE, "<bos>", "built-in Gemma")
            .expect("the built-in template compiles")
    }

    /// The template of a checkpoint folder: `chat_template.jinja`, else `tokenizer_config.json`'s
    /// `chat_template` (a string, or a list of named templates: `default`), else the built-in
    /// Gemma template.
    pub fn from_dir(dir: &Path) -> Result<Self, DataError> {
        let jinja = dir.join("chat_template.jinja");
        let tc = dir.join("tokenizer_config.json");
        let bos = automodel_core::config::read_json(&tc)
            .ok()
            .and_then(|v| v.get("bos_token").and_then(bos_text))
            .unwrap_or_else(|| "<bos>".into());
        if jinja.is_file() {
            let text = String::from_utf8(automodel_core::read_file(&jinja)?).map_err(|e| {
                DataError::File {
                    path: jinja.clone(),
                    message: e.to_string(),
                }
            })?;
            return Self::new(&text, &bos, &jinja.display().to_string());
        }
        if tc.is_file() {
            let v = automodel_core::config::read_json(&tc)?;
            let source = match v.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template").and_then(Value::as_str))
                    .map(str::to_string),
                _ => None,
            };
            if let Some(s) = source {
                return Self::new(&s, &bos, &format!("{} (chat_template)", tc.display()));
            }
        }
        Ok(Self {
            bos_token: bos,
            ..Self::gemma()
        })
    }

    /// Render `conversation` (HF's message dicts: media parts as `{"type": "image"}` and
    /// `{"type": "audio"}`), with `<start_of_turn>model\n` appended when
    /// `add_generation_prompt`.
    pub fn render(
        &self,
        conversation: &Conversation,
        add_generation_prompt: bool,
    ) -> Result<String, SampleError> {
        let messages: Vec<Value> = conversation
            .messages
            .iter()
            .map(|m| {
                let content: Vec<Value> = m
                    .content
                    .iter()
                    .map(|p| match p {
                        Part::Text(t) => json!({"type": "text", "text": t}),
                        Part::Image(_) => json!({"type": "image"}),
                        Part::Audio(_) => json!({"type": "audio"}),
                    })
                    .collect();
                json!({"role": m.role.as_str(), "content": content})
            })
            .collect();
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| SampleError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            bos_token => &self.bos_token,
            eos_token => "<eos>",
            add_generation_prompt => add_generation_prompt,
        })
        .map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            SampleError::Template(msg)
        })
    }
}

/// `bos_token` as `tokenizer_config.json` spells it (a string or an AddedToken object).
fn bos_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::{Message, Role};

    #[test]
    fn the_gemma_template_renders_turns_system_prefix_media_and_prompt() {
        let t = ChatTemplate::gemma();
        let conv = Conversation {
            messages: vec![
                Message::text(Role::System, "Be brief."),
                Message {
                    role: Role::User,
                    content: vec![
                        Part::Image(crate::conversation::Media::Bytes(vec![])),
                        Part::Text(" What is this? ".into()),
                    ],
                },
                Message::text(Role::Assistant, "A cat."),
            ],
        };
        assert_eq!(
            t.render(&conv, false).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\n<image_soft_token>What is this?<end_of_turn>\n<start_of_turn>model\nA cat.<end_of_turn>\n"
        );
        let q = Conversation {
            messages: vec![Message::text(Role::User, "Hi")],
        };
        assert!(
            t.render(&q, true)
                .unwrap()
                .ends_with("<start_of_turn>model\n")
        );
        let bad = Conversation {
            messages: vec![Message::text(Role::Assistant, "x")],
        };
        let err = t.render(&bad, false).unwrap_err().to_string();
        assert!(err.contains("alternate"), "{err}");
    }

    #[test]
    fn a_checkpoint_template_is_used_with_python_methods() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": "<s>", "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['role'].upper() }}: {{ m['content'][0]['text'].strip() }}\n{% endfor %}"}"#,
        )
        .unwrap();
        let t = ChatTemplate::from_dir(dir.path()).unwrap();
        let out = t.render(&Conversation::qa(" hi ", "yo"), false).unwrap();
        assert_eq!(out, "<s>USER: hi\nASSISTANT: yo\n");
        std::fs::write(dir.path().join("chat_template.jinja"), "{% if %}").unwrap();
        assert!(ChatTemplate::from_dir(dir.path()).is_err());
    }
}

//! Lenient decoding of an OpenAI Chat Completions request body into what the fake needs:
//! model, stream flags, message texts, tool availability and the requested response format.

use serde_json::Value;

/// One message reduced to its role and plain text.
#[derive(Clone, Debug)]
pub(crate) struct Message {
    pub(crate) role: String,
    pub(crate) text: String,
}

/// `response_format` of the request.
#[derive(Clone, Debug)]
pub(crate) enum ResponseFormat {
    Text,
    JsonObject,
    /// The JSON schema (`response_format.json_schema.schema`), `Null` when absent.
    JsonSchema(Value),
}

/// The decoded request.
#[derive(Clone, Debug)]
pub(crate) struct ChatRequest {
    pub(crate) model: String,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) messages: Vec<Message>,
    /// `tools` is a non-empty array and `tool_choice` is not `"none"`.
    pub(crate) tools_enabled: bool,
    pub(crate) format: ResponseFormat,
    /// `response_format` as sent, for the call log.
    pub(crate) response_format: Option<Value>,
    /// `tool_choice` as sent, for the call log.
    pub(crate) tool_choice: Option<Value>,
}

/// Why a request was rejected (mapped to an `invalid_request_error`).
#[derive(Clone, Debug)]
pub(crate) struct Invalid {
    pub(crate) message: String,
    pub(crate) param: Option<&'static str>,
}

impl ChatRequest {
    /// Decodes `body`; unknown fields are ignored, optional ones may be missing.
    pub(crate) fn parse(body: &Value) -> Result<Self, Invalid> {
        let obj = body.as_object().ok_or_else(|| Invalid {
            message: "The request body must be a JSON object.".into(),
            param: None,
        })?;
        let model = match obj.get("model").and_then(Value::as_str) {
            Some(m) if !m.is_empty() => m.to_owned(),
            _ => {
                return Err(Invalid {
                    message: "you must provide a model parameter".into(),
                    param: Some("model"),
                })
            }
        };
        let raw_messages = match obj.get("messages").and_then(Value::as_array) {
            Some(m) if !m.is_empty() => m,
            _ => {
                return Err(Invalid {
                    message: "'messages' must be a non-empty array.".into(),
                    param: Some("messages"),
                })
            }
        };
        let mut messages = Vec::with_capacity(raw_messages.len());
        for (i, m) in raw_messages.iter().enumerate() {
            let Some(role) = m.get("role").and_then(Value::as_str) else {
                return Err(Invalid {
                    message: format!("Missing required parameter: 'messages[{i}].role'."),
                    param: Some("messages"),
                });
            };
            messages.push(Message {
                role: role.to_owned(),
                text: content_text(m.get("content")),
            });
        }
        let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let include_usage = obj
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let has_tools = obj
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty());
        let choice_none = obj.get("tool_choice").and_then(Value::as_str) == Some("none");
        let format = match obj
            .get("response_format")
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str)
        {
            // llama.cpp servers take a schema beside `json_object`.
            Some("json_object") => match obj.get("response_format").and_then(|f| f.get("schema")) {
                Some(schema) => ResponseFormat::JsonSchema(schema.clone()),
                None => ResponseFormat::JsonObject,
            },
            Some("json_schema") => ResponseFormat::JsonSchema(
                obj.get("response_format")
                    .and_then(|f| f.get("json_schema"))
                    .and_then(|s| s.get("schema"))
                    .cloned()
                    .unwrap_or(Value::Null),
            ),
            _ => ResponseFormat::Text,
        };
        Ok(Self {
            model,
            stream,
            include_usage,
            messages,
            tools_enabled: has_tools && !choice_none,
            format,
            response_format: obj.get("response_format").cloned(),
            tool_choice: obj.get("tool_choice").cloned(),
        })
    }

    /// The call key: the text of all messages, joined by newlines.
    pub(crate) fn key(&self) -> String {
        let mut key = String::new();
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                key.push('\n');
            }
            key.push_str(&m.text);
        }
        key
    }
}

/// Best-effort `model` / `stream` of a body that failed validation (for the call log).
pub(crate) fn loose_model_stream(body: &Value) -> (String, bool) {
    (
        body.get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        body.get("stream").and_then(Value::as_bool).unwrap_or(false),
    )
}

/// Text of a message `content`: a string, an array of parts (text parts joined by newlines),
/// or nothing (`null`, e.g. an assistant message carrying only `tool_calls`).
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                other => other.get("text").and_then(Value::as_str),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_parts_null_content_and_flags() {
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null, "tool_calls": []},
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            "unknown_field": 1
        });
        let r = ChatRequest::parse(&body).unwrap();
        assert_eq!(r.key(), "sys\na\nb\n");
        assert!(r.stream && r.include_usage && r.tools_enabled);
        assert!(matches!(
            r.format,
            ResponseFormat::JsonSchema(Value::Object(_))
        ));
    }

    #[test]
    fn a_json_object_with_a_schema_is_answered_by_the_schema() {
        let body = json!({
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object", "schema": {"type": "object"}}
        });
        let r = ChatRequest::parse(&body).unwrap();
        assert!(matches!(
            r.format,
            ResponseFormat::JsonSchema(Value::Object(_))
        ));
        assert_eq!(r.response_format, body.get("response_format").cloned());
    }

    #[test]
    fn rejects_missing_messages() {
        assert!(ChatRequest::parse(&json!({"model": "m"})).is_err());
        assert!(
            ChatRequest::parse(&json!({"messages": [{"role": "user", "content": "x"}]})).is_err()
        );
    }
}

//! Deterministic answers and their OpenAI wire encodings: `chat.completion` objects,
//! `chat.completion.chunk` server-sent events, usage accounting and error bodies.

use serde_json::{json, Map, Value};

use crate::markers;
use crate::request::{ChatRequest, ResponseFormat};

/// Number of words of the last user message echoed in the answer.
const ECHO_WORDS: usize = 12;
/// In the last user message: propose its tool calls in every round, whatever the results.
pub(crate) const ENDLESS: &str = "[[tools:endless]]";
/// Maximum nesting followed when filling a JSON schema.
const MAX_SCHEMA_DEPTH: u32 = 12;

/// One requested function call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ToolCall {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) arguments: String,
}

/// What the fake model "says".
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Text(String),
    ToolCalls(Vec<ToolCall>),
}

impl Answer {
    /// Decides the answer for `req`: tool calls when the last user message asks for them (and
    /// no tool result follows yet), otherwise a deterministic echo of that message.
    pub(crate) fn for_request(req: &ChatRequest) -> Self {
        let last_user = req.messages.iter().rposition(|m| m.role == "user");
        let user_text = last_user.map_or("", |i| req.messages[i].text.as_str());
        let after = last_user.map_or(&req.messages[..], |i| &req.messages[i + 1..]);
        let tool_results: Vec<&str> = after
            .iter()
            .filter(|m| m.role == "tool")
            .map(|m| m.text.as_str())
            .collect();

        // `[[tools:endless]]`: the tool markers are proposed again every round.
        let endless = user_text.contains(ENDLESS);
        if req.tools_enabled && (tool_results.is_empty() || endless) {
            let calls = markers::tool_markers(user_text);
            if !calls.is_empty() {
                let h = if endless {
                    let round = req
                        .messages
                        .iter()
                        .filter(|m| m.role == "assistant")
                        .count();
                    fnv1a(format!("{user_text}\n{round}").as_bytes())
                } else {
                    fnv1a(user_text.as_bytes())
                };
                return Answer::ToolCalls(
                    calls
                        .into_iter()
                        .enumerate()
                        .map(|(i, m)| ToolCall {
                            id: format!("call_{h:016x}{i:02}"),
                            name: m.name,
                            arguments: m.arguments,
                        })
                        .collect(),
                );
            }
        }

        let stripped = markers::strip(user_text);
        let mut fill = stripped
            .split_whitespace()
            .take(ECHO_WORDS)
            .collect::<Vec<_>>()
            .join(" ");
        if !tool_results.is_empty() {
            if !fill.is_empty() {
                fill.push(' ');
            }
            fill.push_str(&format!("(tool result: {})", tool_results.join(" | ")));
        }
        let content = match &req.format {
            ResponseFormat::Text => format!("fake completion: {fill}").trim_end().to_owned(),
            ResponseFormat::JsonObject => json!({ "summary": fill }).to_string(),
            ResponseFormat::JsonSchema(schema) => {
                let value = match schema {
                    Value::Object(o) if !o.is_empty() => fill_schema(schema, schema, &fill, 0),
                    _ => json!({ "summary": fill }),
                };
                value.to_string()
            }
        };
        Answer::Text(content)
    }

    fn finish_reason(&self) -> &'static str {
        match self {
            Answer::Text(_) => "stop",
            Answer::ToolCalls(_) => "tool_calls",
        }
    }

    fn completion_chars(&self) -> usize {
        match self {
            Answer::Text(t) => t.chars().count(),
            Answer::ToolCalls(calls) => calls
                .iter()
                .map(|c| c.name.chars().count() + c.arguments.chars().count())
                .sum(),
        }
    }
}

/// A value satisfying (the common subset of) a JSON schema, strings filled with `words`.
fn fill_schema(schema: &Value, root: &Value, words: &str, depth: u32) -> Value {
    if depth > MAX_SCHEMA_DEPTH {
        return Value::Null;
    }
    let text = if words.is_empty() { "fake" } else { words };
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
            Some(target) => fill_schema(target, root, words, depth + 1),
            None => Value::String(text.to_owned()),
        };
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema
            .get(combinator)
            .and_then(Value::as_array)
            .and_then(|alts| {
                alts.iter()
                    .find(|a| a.get("type").and_then(Value::as_str) != Some("null"))
            })
        {
            return fill_schema(first, root, words, depth + 1);
        }
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ if schema.get("items").is_some() => "array",
        _ => "string",
    };
    match ty {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, sub) in props {
                    out.insert(name.clone(), fill_schema(sub, root, words, depth + 1));
                }
            }
            Value::Object(out)
        }
        "array" => {
            let min = schema
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .clamp(1, 8);
            let item = schema.get("items").map_or_else(
                || Value::String(text.to_owned()),
                |s| fill_schema(s, root, words, depth + 1),
            );
            Value::Array((0..min).map(|_| item.clone()).collect())
        }
        "integer" | "number" => json!(schema
            .get("minimum")
            .and_then(Value::as_i64)
            .unwrap_or_else(|| i64::try_from(words.split_whitespace().count()).unwrap_or(0))),
        "boolean" => Value::Bool(true),
        "null" => Value::Null,
        _ => Value::String(text.to_owned()),
    }
}

/// Token accounting: ≈ 4 characters per token, plus 3 tokens of framing per message.
pub(crate) fn usage(req: &ChatRequest, answer: &Answer) -> Value {
    let prompt_chars: usize = req.messages.iter().map(|m| m.text.chars().count()).sum();
    let prompt = prompt_chars.div_ceil(4) + 3 * req.messages.len();
    let completion = answer.completion_chars().div_ceil(4).max(1);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": 0, "audio_tokens": 0 },
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

/// Identity shared by a completion and all of its chunks.
pub(crate) struct Envelope<'a> {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
}

impl Envelope<'_> {
    fn base(&self, object: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("object".into(), json!(object));
        m.insert("created".into(), json!(self.created));
        m.insert("model".into(), json!(self.model));
        m.insert("service_tier".into(), json!("default"));
        m.insert("system_fingerprint".into(), json!("fp_llmq_fake"));
        m
    }

    /// A non-streaming `chat.completion` object.
    pub(crate) fn completion(&self, answer: &Answer, usage: Value) -> Value {
        let message = match answer {
            Answer::Text(t) => json!({
                "role": "assistant", "content": t, "refusal": null, "annotations": []
            }),
            Answer::ToolCalls(calls) => json!({
                "role": "assistant",
                "content": null,
                "refusal": null,
                "annotations": [],
                "tool_calls": calls.iter().map(|c| json!({
                    "id": c.id,
                    "type": "function",
                    "function": { "name": c.name, "arguments": c.arguments }
                })).collect::<Vec<_>>()
            }),
        };
        let mut m = self.base("chat.completion");
        m.insert(
            "choices".into(),
            json!([{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": answer.finish_reason()
            }]),
        );
        m.insert("usage".into(), usage);
        Value::Object(m)
    }

    /// The `data: ...\n\n` events of a streamed answer, ending with `data: [DONE]`.
    /// `usage` is sent in a final choice-less chunk when given.
    pub(crate) fn sse_events(&self, answer: &Answer, usage: Option<Value>) -> Vec<String> {
        let with_usage = usage.is_some();
        let chunk = |delta: Value, finish: Value| {
            let mut m = self.base("chat.completion.chunk");
            m.insert(
                "choices".into(),
                json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]),
            );
            if with_usage {
                m.insert("usage".into(), Value::Null);
            }
            Value::Object(m)
        };
        let mut chunks = Vec::new();
        match answer {
            Answer::Text(t) => {
                chunks.push(chunk(
                    json!({"role": "assistant", "content": "", "refusal": null}),
                    Value::Null,
                ));
                for piece in t.split_inclusive(' ') {
                    chunks.push(chunk(json!({ "content": piece }), Value::Null));
                }
            }
            Answer::ToolCalls(calls) => {
                chunks.push(chunk(
                    json!({"role": "assistant", "content": null, "refusal": null}),
                    Value::Null,
                ));
                for (i, c) in calls.iter().enumerate() {
                    chunks.push(chunk(
                        json!({"tool_calls": [{
                            "index": i, "id": c.id, "type": "function",
                            "function": { "name": c.name, "arguments": "" }
                        }]}),
                        Value::Null,
                    ));
                    chunks.push(chunk(
                        json!({"tool_calls": [{
                            "index": i, "function": { "arguments": c.arguments }
                        }]}),
                        Value::Null,
                    ));
                }
            }
        }
        chunks.push(chunk(json!({}), json!(answer.finish_reason())));
        if let Some(usage) = usage {
            let mut m = self.base("chat.completion.chunk");
            m.insert("choices".into(), json!([]));
            m.insert("usage".into(), usage);
            chunks.push(Value::Object(m));
        }
        let mut events: Vec<String> = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        events.push("data: [DONE]\n\n".to_owned());
        events
    }
}

/// An OpenAI error body.
pub(crate) fn error_body(
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Value {
    json!({ "error": { "message": message, "type": kind, "param": param, "code": code } })
}

/// 64-bit FNV-1a hash (stable across runs, used for deterministic ids).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(body: Value) -> ChatRequest {
        ChatRequest::parse(&body).unwrap()
    }

    #[test]
    fn echo_strips_markers_and_limits_words() {
        let r = req(json!({"model": "m", "messages": [
            {"role": "user", "content": "one two [[fault:500:times=1]] three four five six seven eight nine ten eleven twelve thirteen"}
        ]}));
        assert_eq!(
            Answer::for_request(&r),
            Answer::Text(
                "fake completion: one two three four five six seven eight nine ten eleven twelve"
                    .into()
            )
        );
    }

    #[test]
    fn json_schema_fills_required_properties() {
        let r = req(json!({"model": "m",
            "messages": [{"role": "user", "content": "classify this ticket"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "t", "strict": true, "schema": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "priority": {"type": "string", "enum": ["low", "high"]},
                    "score": {"type": "number"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "meta": {"$ref": "#/$defs/meta"},
                    "note": {"type": ["string", "null"]}
                },
                "required": ["label", "priority", "score", "tags", "meta", "note"],
                "additionalProperties": false,
                "$defs": {"meta": {"type": "object", "properties": {"ok": {"type": "boolean"}}}}
            }}}
        }));
        let Answer::Text(content) = Answer::for_request(&r) else {
            panic!("expected text")
        };
        let v: Value = serde_json::from_str(&content).unwrap();
        assert_eq!(
            v,
            json!({"label": "classify this ticket", "priority": "low", "score": 3,
                   "tags": ["classify this ticket"], "meta": {"ok": true},
                   "note": "classify this ticket"})
        );
    }

    #[test]
    fn usage_is_deterministic() {
        let r = req(json!({"model": "m", "messages": [
            {"role": "system", "content": "12345678"}, {"role": "user", "content": "abc"}
        ]}));
        let a = Answer::for_request(&r);
        let u = usage(&r, &a);
        // ceil(11 / 4) + 2 * 3 = 9; "fake completion: abc" = 20 chars -> 5
        assert_eq!(u["prompt_tokens"], 9);
        assert_eq!(u["completion_tokens"], 5);
        assert_eq!(u["total_tokens"], 14);
    }
}

//! The model provider: OpenAI-compatible chat completions. The wire types
//! are async-openai's; the transport is a plain reqwest client so that
//! every call the system makes is one recorded attempt (async-openai's
//! client retries 429 and 5xx on its own, out of sight), `Retry-After` is
//! read, and the timeout is the step's. Errors are classified here, once.

use std::time::Duration;

use async_openai::types::chat::{ChatCompletionMessageToolCalls, CreateChatCompletionResponse};
use llmq_shared::config::{Settings, StructuredOutput};
use llmq_shared::execution::{codes, Usage};
use llmq_shared::prompt::ChatMessage;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};

/// Why a provider call failed, and so whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("rate limited by the provider ({status}): {message}")]
    RateLimited {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("provider error {status}: {message}")]
    Server { status: u16, message: String },
    #[error("provider rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("no answer from the provider within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the provider: {0}")]
    Connection(String),
    #[error("malformed provider response: {0}")]
    BadResponse(String),
}

impl ProviderError {
    /// Retryable errors are worth another attempt; the rest are final.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Rejected { .. })
    }

    /// The delay the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => codes::PROVIDER_RATE_LIMITED,
            Self::Server { .. } => codes::PROVIDER_ERROR,
            Self::Rejected { .. } => codes::PROVIDER_REJECTED,
            Self::Timeout(_) => codes::PROVIDER_TIMEOUT,
            Self::Connection(_) => codes::PROVIDER_UNAVAILABLE,
            Self::BadResponse(_) => codes::PROVIDER_BAD_RESPONSE,
        }
    }
}

/// A model call's result: the answer's text, or the tool calls it
/// proposes (then `content` is whatever text came with them, often none).
#[derive(Clone, Debug)]
pub struct Generation {
    pub content: String,
    pub usage: Usage,
    pub tool_calls: Vec<ProposedCall>,
}

/// One tool call the model proposed, as it wrote it (the arguments are
/// JSON text the model produced: not trusted, not yet parsed).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProposedCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// Where a logical model is served.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub base_url: String,
    pub api_key: String,
    pub upstream_model: String,
    pub prompt_price_per_mtok: f64,
    pub completion_price_per_mtok: f64,
    /// How a `json` prompt asks this model for JSON.
    pub structured_output: StructuredOutput,
}

impl Endpoint {
    pub fn resolve(settings: &Settings, model: &str) -> Self {
        let m = settings.model(model);
        let (base_url, api_key) = settings.served_at(m.base_url, m.api_key);
        Self {
            base_url,
            api_key,
            upstream_model: m.upstream.unwrap_or_else(|| model.to_string()),
            prompt_price_per_mtok: m.prompt_price_per_mtok,
            completion_price_per_mtok: m.completion_price_per_mtok,
            structured_output: m.structured_output,
        }
    }

    /// The `response_format` asking this model for a `json` answer, if its
    /// mode sends one: the schema itself in `json_schema` mode (named after
    /// the prompt, `strict` as the version says), else JSON mode.
    pub fn response_format(
        &self,
        prompt: &str,
        schema: Option<&Value>,
        strict: bool,
    ) -> Option<Value> {
        match (self.structured_output, schema) {
            (StructuredOutput::JsonSchema, Some(schema)) => Some(json!({
                "type": "json_schema",
                "json_schema": {
                    "name": schema_name(prompt),
                    "schema": schema,
                    "strict": strict,
                }
            })),
            (StructuredOutput::JsonObjectSchema, Some(schema)) => Some(json!({
                "type": "json_object",
                "schema": schema,
            })),
            (StructuredOutput::None, _) => None,
            _ => Some(json!({ "type": "json_object" })),
        }
    }

    /// Whether the schema must be spelled out in the system message: the
    /// provider is not given it in `response_format`.
    pub fn needs_schema_in_prompt(&self, schema: Option<&Value>) -> bool {
        !(self.structured_output == StructuredOutput::JsonSchema && schema.is_some())
    }

    pub fn cost(&self, usage: &Usage) -> Option<f64> {
        let cost = (usage.prompt_tokens as f64 * self.prompt_price_per_mtok
            + usage.completion_tokens as f64 * self.completion_price_per_mtok)
            / 1_000_000.0;
        (self.prompt_price_per_mtok > 0.0 || self.completion_price_per_mtok > 0.0).then_some(cost)
    }
}

/// One HTTP client (and connection pool) for every provider call.
#[derive(Clone)]
pub struct ProviderClient {
    http: reqwest::Client,
}

impl ProviderClient {
    /// The pooled HTTP client, shared with the embeddings calls.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn new() -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ProviderError::Connection(e.to_string()))?;
        Ok(Self { http })
    }

    /// The request body: the rendered messages, then the version's (and the
    /// request's) parameters passed through as the provider expects them.
    /// A streamed call asks for the usage in its last chunk.
    pub fn request_body(
        endpoint: &Endpoint,
        messages: &[ChatMessage],
        params: &Map<String, Value>,
        response_format: Option<&Value>,
        stream: bool,
    ) -> Value {
        let mut body = Map::new();
        for (k, v) in params {
            body.insert(k.clone(), v.clone());
        }
        // A `json` prompt's format is the model's structured-output mode,
        // whatever the parameters said.
        if let Some(format) = response_format {
            body.insert("response_format".into(), format.clone());
        }
        body.insert(
            "model".into(),
            Value::String(endpoint.upstream_model.clone()),
        );
        body.insert("messages".into(), json!(messages));
        body.insert("stream".into(), Value::Bool(stream));
        if stream {
            body.insert("stream_options".into(), json!({"include_usage": true}));
        } else {
            body.remove("stream_options");
        }
        Value::Object(body)
    }

    fn post(
        &self,
        endpoint: &Endpoint,
        body: &Value,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let url = format!(
            "{}/chat/completions",
            endpoint.base_url.trim_end_matches('/')
        );
        let mut request = self.http.post(url).json(body).timeout(timeout);
        if !endpoint.api_key.is_empty() {
            request = request.bearer_auth(&endpoint.api_key);
        }
        request
    }

    /// One streamed chat completion (`body` asks for `stream: true`),
    /// bounded by `timeout` as a whole: each text fragment goes to
    /// `fragments` as it arrives; the answer is the same `Generation` a
    /// plain call gives (the usage from the last chunk). Never retries; a
    /// stream that breaks off is a failed call, classified like one.
    pub async fn chat_stream(
        &self,
        endpoint: &Endpoint,
        body: &Value,
        timeout: Duration,
        fragments: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<Generation, ProviderError> {
        let mut response = self
            .post(endpoint, body, timeout)
            .send()
            .await
            .map_err(|e| transport_error(e, timeout))?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| transport_error(e, timeout))?;
            return Err(status_error(status, &headers, &bytes));
        }
        let mut reader = StreamReader::default();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(e, timeout))?
        {
            for fragment in reader.push(&chunk)? {
                let _ = fragments.send(fragment);
            }
            if reader.done {
                break;
            }
        }
        reader.finish()
    }

    /// One chat completion, bounded by `timeout`. Never retries.
    pub async fn chat(
        &self,
        endpoint: &Endpoint,
        body: &Value,
        timeout: Duration,
    ) -> Result<Generation, ProviderError> {
        let response = self
            .post(endpoint, body, timeout)
            .send()
            .await
            .map_err(|e| transport_error(e, timeout))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport_error(e, timeout))?;
        if !status.is_success() {
            return Err(status_error(status, &headers, &bytes));
        }
        let parsed: CreateChatCompletionResponse = serde_json::from_slice(&bytes).map_err(|e| {
            ProviderError::BadResponse(format!("{e} (first bytes: {:?})", snippet(&bytes)))
        })?;
        let choice = parsed
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| ProviderError::BadResponse("no choices".into()))?;
        let tool_calls: Vec<ProposedCall> = choice
            .message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .filter_map(|call| match call {
                ChatCompletionMessageToolCalls::Function(f) => Some(ProposedCall {
                    id: f.id,
                    name: f.function.name,
                    arguments: f.function.arguments,
                }),
                // Only function tools are offered.
                ChatCompletionMessageToolCalls::Custom(_) => None,
            })
            .collect();
        let content = match (choice.message.content, tool_calls.is_empty()) {
            (Some(content), _) => content,
            (None, false) => String::new(),
            (None, true) => {
                return Err(ProviderError::BadResponse(
                    "the answer has no content".into(),
                ))
            }
        };
        let usage = parsed
            .usage
            .map(|u| Usage {
                prompt_tokens: u.prompt_tokens as i32,
                completion_tokens: u.completion_tokens as i32,
                total_tokens: u.total_tokens as i32,
                cost_usd: None,
            })
            .unwrap_or_default();
        Ok(Generation {
            content,
            usage,
            tool_calls,
        })
    }
}

/// OpenAI's rule for a schema's name: `[a-zA-Z0-9_-]`, at most 64.
fn schema_name(prompt: &str) -> String {
    let name: String = prompt
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "output".into()
    } else {
        name
    }
}

/// Reads the `data:` lines of a streamed completion (OpenAI's
/// `chat.completion.chunk` objects, then `data: [DONE]`).
#[derive(Default)]
struct StreamReader {
    line: Vec<u8>,
    content: String,
    usage: Option<Usage>,
    done: bool,
}

impl StreamReader {
    /// The text fragments in `bytes` (lines may span chunks).
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, ProviderError> {
        let mut fragments = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end_matches('\r').strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                self.done = true;
                break;
            }
            let chunk: Value = serde_json::from_str(data).map_err(|e| {
                ProviderError::BadResponse(format!("a stream chunk is not JSON: {e}"))
            })?;
            if let Some(error) = chunk.get("error") {
                return Err(ProviderError::Server {
                    status: 200,
                    message: error.to_string(),
                });
            }
            if let Some(text) = chunk
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                self.content.push_str(text);
                fragments.push(text.to_string());
            }
            if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
                let n = |k: &str| u.get(k).and_then(Value::as_i64).unwrap_or(0) as i32;
                self.usage = Some(Usage {
                    prompt_tokens: n("prompt_tokens"),
                    completion_tokens: n("completion_tokens"),
                    total_tokens: n("total_tokens"),
                    cost_usd: None,
                });
            }
        }
        Ok(fragments)
    }

    fn finish(self) -> Result<Generation, ProviderError> {
        if !self.done {
            return Err(ProviderError::BadResponse(
                "the stream ended before [DONE]".into(),
            ));
        }
        Ok(Generation {
            content: self.content,
            usage: self.usage.unwrap_or_default(),
            tool_calls: Vec::new(),
        })
    }
}

fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned()
}

pub(crate) fn transport_error(e: reqwest::Error, timeout: Duration) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout(timeout)
    } else if e.is_decode() || e.is_body() {
        // The connection broke mid-answer: a truncated response.
        ProviderError::BadResponse(e.to_string())
    } else {
        ProviderError::Connection(e.to_string())
    }
}

pub(crate) fn status_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| snippet(body));
    let code = status.as_u16();
    match status {
        StatusCode::TOO_MANY_REQUESTS => ProviderError::RateLimited {
            status: code,
            retry_after: headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64),
            message,
        },
        // 408 (request timeout) and 409 (conflict, e.g. overloaded) are
        // transient at OpenAI-compatible providers.
        s if s.is_server_error()
            || s == StatusCode::REQUEST_TIMEOUT
            || s == StatusCode::CONFLICT =>
        {
            ProviderError::Server {
                status: code,
                message,
            }
        }
        _ => ProviderError::Rejected {
            status: code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(mode: StructuredOutput) -> Endpoint {
        let mut settings = Settings::default();
        settings.models.insert(
            "m".into(),
            llmq_shared::config::ModelSettings {
                structured_output: mode,
                ..Default::default()
            },
        );
        Endpoint::resolve(&settings, "m")
    }

    #[test]
    fn the_models_mode_decides_the_response_format() {
        let schema = json!({"type": "object"});
        let e = endpoint(StructuredOutput::JsonSchema);
        let f = e
            .response_format("sentiment.v1", Some(&schema), false)
            .unwrap();
        assert_eq!(f["type"], "json_schema");
        assert_eq!(f["json_schema"]["name"], "sentiment_v1");
        assert_eq!(f["json_schema"]["schema"], schema);
        assert!(!e.needs_schema_in_prompt(Some(&schema)));
        // No schema to send: JSON mode.
        assert_eq!(
            e.response_format("p", None, false).unwrap()["type"],
            "json_object"
        );
        let e = endpoint(StructuredOutput::JsonMode);
        assert_eq!(
            e.response_format("p", Some(&schema), false).unwrap(),
            json!({"type": "json_object"})
        );
        assert!(e.needs_schema_in_prompt(Some(&schema)));
        let e = endpoint(StructuredOutput::JsonObjectSchema);
        assert_eq!(
            e.response_format("p", Some(&schema), false).unwrap(),
            json!({"type": "json_object", "schema": schema})
        );
        assert!(e.needs_schema_in_prompt(Some(&schema)));
        let e = endpoint(StructuredOutput::None);
        assert_eq!(e.response_format("p", Some(&schema), false), None);
        // The format replaces whatever the parameters said.
        let mut params = Map::new();
        params.insert("response_format".into(), json!({"type": "text"}));
        let format = json!({"type": "json_object"});
        let body = ProviderClient::request_body(&e, &[], &params, Some(&format), false);
        assert_eq!(body["response_format"], format);
    }

    #[test]
    fn a_stream_is_read_across_chunk_boundaries() {
        let mut r = StreamReader::default();
        let a = r
            .push(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel")
            .unwrap();
        assert!(a.is_empty());
        let b = r
            .push(b"lo \"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n")
            .unwrap();
        assert_eq!(b, ["Hello "]);
        let g = r.finish().unwrap();
        assert_eq!((g.content.as_str(), g.usage.total_tokens), ("Hello ", 4));
        let mut cut = StreamReader::default();
        cut.push(b"data: {\"choices\":[]}\n").unwrap();
        assert!(cut.finish().is_err());
    }

    #[test]
    fn statuses_are_classified_once() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        let e = status_error(StatusCode::TOO_MANY_REQUESTS, &h, b"{}");
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert!(status_error(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"").is_retryable());
        let rejected = status_error(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"error":{"message":"bad"}}"#,
        );
        assert!(!rejected.is_retryable());
        assert_eq!(
            rejected.to_string(),
            "provider rejected the request (400): bad"
        );
    }
}

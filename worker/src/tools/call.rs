//! One tool call over HTTP: the arguments as a JSON body (or the query,
//! for GET and DELETE), the credential header from configuration or the
//! environment, the `Idempotency-Key`, the tool's timeout, and retries
//! within the tool's policy. Errors are classified here, once, the way
//! provider errors are: 5xx, 408, 429 and connection failures are
//! retryable; a timeout (or a connection broken mid-answer) is retryable
//! only for an idempotent tool, since the call may have had its effect;
//! other 4xx answers are terminal for the call. Whatever the outcome, the
//! model is told (`content`); the execution goes on.

use std::time::Duration;

use llmq_shared::backoff::Backoff;
use llmq_shared::execution::{codes, ErrorInfo};
use llmq_shared::tool::CompiledTool;
use llmq_shared::Settings;
use serde_json::{json, Value};

use super::ToolRunner;

/// How a call ended, as the step records it and the model hears it.
#[derive(Debug)]
pub struct CallOutcome {
    /// The text the model is given: the (capped) result, or the error.
    pub content: String,
    pub error: Option<ErrorInfo>,
    pub retryable: Option<bool>,
    /// The HTTP status of the last try, if one answered.
    pub http_status: Option<u16>,
    pub tries: u32,
    /// The result was cut at the tool's `max_result_bytes`.
    pub truncated: bool,
}

enum Try {
    Done {
        status: u16,
        body: String,
        truncated: bool,
    },
    Failed {
        error: ErrorInfo,
        status: Option<u16>,
        retryable: bool,
    },
}

impl ToolRunner {
    /// Calls `tool` with `arguments`, trying again within its policy.
    pub async fn call(
        &self,
        settings: &Settings,
        tool: &CompiledTool,
        arguments: &Value,
        idempotency_key: &str,
    ) -> CallOutcome {
        let d = &tool.definition;
        let credential = match credential(settings, tool) {
            Ok(c) => c,
            Err(error) => {
                return CallOutcome {
                    content: error_content(&error),
                    error: Some(error),
                    retryable: Some(false),
                    http_status: None,
                    tries: 0,
                    truncated: false,
                }
            }
        };
        let mut backoff = Backoff::new(
            Duration::from_millis(d.retry.base_ms),
            Duration::from_millis(d.retry.max_ms),
        );
        // A tenant's tool points where the tenant said: checked like a
        // webhook destination before every call (no SSRF).
        if tool.tenant.is_some() {
            if let Err(e) = settings
                .tools
                .destination_policy()
                .check(&d.endpoint.url)
                .await
            {
                let error = ErrorInfo {
                    code: codes::TOOL_MISCONFIGURED.into(),
                    message: format!(
                        "tool {}: {}",
                        tool.name,
                        e.to_string().replace("webhook ", "")
                    ),
                };
                return CallOutcome {
                    content: error_content(&error),
                    error: Some(error),
                    retryable: Some(false),
                    http_status: None,
                    tries: 0,
                    truncated: false,
                };
            }
        }
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .try_once(tool, arguments, idempotency_key, credential.as_ref())
                .await
            {
                Try::Done {
                    status,
                    body,
                    truncated,
                } => {
                    return CallOutcome {
                        content: body,
                        error: None,
                        retryable: None,
                        http_status: Some(status),
                        tries,
                        truncated,
                    }
                }
                Try::Failed {
                    error,
                    status,
                    retryable,
                } => {
                    if retryable && tries < d.retry.max_attempts {
                        tracing::debug!(tool = %tool.name, code = %error.code, tries, "tool call failed; trying again");
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                    return CallOutcome {
                        content: error_content(&error),
                        error: Some(error),
                        retryable: Some(retryable),
                        http_status: status,
                        tries,
                        truncated: false,
                    };
                }
            }
        }
    }

    async fn try_once(
        &self,
        tool: &CompiledTool,
        arguments: &Value,
        idempotency_key: &str,
        credential: Option<&(String, String)>,
    ) -> Try {
        let d = &tool.definition;
        let timeout = Duration::from_millis(d.timeout_ms);
        let method = reqwest::Method::from_bytes(d.endpoint.method.as_bytes())
            .unwrap_or(reqwest::Method::POST);
        let query = matches!(method, reqwest::Method::GET | reqwest::Method::DELETE);
        let mut url = match reqwest::Url::parse(&d.endpoint.url) {
            Ok(url) => url,
            Err(e) => {
                return Try::Failed {
                    error: ErrorInfo {
                        code: codes::TOOL_MISCONFIGURED.into(),
                        message: format!("tool {}: its URL does not parse: {e}", tool.name),
                    },
                    status: None,
                    retryable: false,
                }
            }
        };
        if query {
            url.query_pairs_mut().extend_pairs(query_pairs(arguments));
        }
        let mut request = self
            .http
            .request(method, url)
            .timeout(timeout)
            .header("Idempotency-Key", idempotency_key);
        if !query {
            request = request.json(arguments);
        }
        if let Some((header, value)) = credential {
            request = request.header(header.as_str(), value.as_str());
        }
        let failed =
            |code: &str, message: String, status: Option<u16>, retryable: bool| Try::Failed {
                error: ErrorInfo {
                    code: code.into(),
                    message,
                },
                status,
                retryable,
            };
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return failed(
                    codes::TOOL_TIMEOUT,
                    format!("no answer from tool {} within {timeout:?}", tool.name),
                    None,
                    d.idempotent,
                )
            }
            Err(e) if e.is_connect() => {
                // Nothing was sent: safe to try again for any tool.
                return failed(
                    codes::TOOL_UNAVAILABLE,
                    format!("cannot reach tool {}: {e}", tool.name),
                    None,
                    true,
                );
            }
            Err(e) => {
                return failed(
                    codes::TOOL_UNAVAILABLE,
                    format!("tool {} call broke off: {e}", tool.name),
                    None,
                    d.idempotent,
                )
            }
        };
        let status = response.status();
        // Read at most the cap (plus one byte, to know it was cut).
        let cap = d.max_result_bytes;
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > cap {
                        truncated = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let code = if e.is_timeout() {
                        codes::TOOL_TIMEOUT
                    } else {
                        codes::TOOL_UNAVAILABLE
                    };
                    return failed(
                        code,
                        format!("tool {} answer broke off: {e}", tool.name),
                        Some(status.as_u16()),
                        d.idempotent,
                    );
                }
            }
        }
        let text = cap_text(&body, cap);
        let code = status.as_u16();
        if status.is_success() {
            return Try::Done {
                status: code,
                body: text,
                truncated,
            };
        }
        let message = format!("tool {} answered {code}: {}", tool.name, snippet(&text));
        if status.is_server_error() || code == 408 || code == 429 {
            failed(codes::TOOL_ERROR, message, Some(code), true)
        } else {
            failed(codes::TOOL_REJECTED, message, Some(code), false)
        }
    }
}

/// The credential header of `tool`, its value from the environment or
/// the `tools.secrets` setting; an error when it is not configured.
fn credential(
    settings: &Settings,
    tool: &CompiledTool,
) -> Result<Option<(String, String)>, ErrorInfo> {
    let Some(c) = &tool.definition.credential else {
        return Ok(None);
    };
    let value = match (&tool.tenant, &c.env, &c.secret) {
        // A tenant's tool reads only that tenant's secrets.
        (Some(tenant), _, Some(key)) => settings
            .tools
            .tenant_secrets
            .get(tenant)
            .and_then(|s| s.get(key))
            .cloned(),
        (Some(_), _, None) => None,
        (None, Some(var), _) => std::env::var(var).ok(),
        (None, None, Some(key)) => settings.tools.secrets.get(key).cloned(),
        (None, None, None) => None,
    };
    match value.filter(|v| !v.is_empty()) {
        Some(v) => Ok(Some((c.header.clone(), format!("{}{v}", c.prefix)))),
        None => Err(ErrorInfo {
            code: codes::TOOL_MISCONFIGURED.into(),
            message: format!(
                "tool {}: its credential ({}) is not configured",
                tool.name,
                c.env
                    .as_ref()
                    .map(|v| format!("environment variable {v}"))
                    .or_else(|| c.secret.as_ref().map(|s| match &tool.tenant {
                        Some(t) => format!("tools.tenant_secrets.{t}.{s}"),
                        None => format!("tools.secrets.{s}"),
                    }))
                    .unwrap_or_default()
            ),
        }),
    }
}

/// The top-level arguments as query pairs (strings as they are, other
/// values as JSON).
fn query_pairs(arguments: &Value) -> Vec<(String, String)> {
    arguments
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// At most `cap` bytes of `body` as text, cut at a character boundary.
pub fn cap_text(body: &[u8], cap: usize) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(cap)]);
    let mut text = text.into_owned();
    // A character cut in half became U+FFFD; keep the text honest.
    if body.len() > cap && text.ends_with('\u{FFFD}') {
        text.pop();
    }
    while text.len() > cap {
        text.pop();
    }
    text
}

fn snippet(text: &str) -> String {
    text.chars().take(200).collect()
}

/// What the model is told when a call failed or was refused.
pub fn error_content(error: &ErrorInfo) -> String {
    json!({"error": {"code": error.code, "message": error.message}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_capped_at_a_character_boundary() {
        assert_eq!(cap_text(b"hello", 10), "hello");
        assert_eq!(cap_text(b"hello", 3), "hel");
        let s = "aé".as_bytes(); // 'é' is 2 bytes
        assert_eq!(cap_text(s, 2), "a");
    }

    #[test]
    fn query_pairs_keep_strings_as_they_are() {
        let pairs = query_pairs(&json!({"city": "Oslo", "days": 2}));
        assert_eq!(
            pairs,
            vec![("city".into(), "Oslo".into()), ("days".into(), "2".into())]
        );
    }
}

//! One tool as written in `tools/<name>.toml`. Like a prompt version, the
//! definition is a contract: typed fields, unknown fields refused, and
//! [`ToolDefinition::check`] for what types cannot say. Errors name the
//! field (`endpoint.url`, `retry.max_attempts`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::prompt::FieldError;

/// Timeout of one call when the file names none.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Largest result passed back to the model when the file names no cap.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 16 * 1024;
/// The most attempts a tool's policy may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 10;

/// Methods a tool endpoint may use. `GET` and `DELETE` send the arguments
/// as query parameters, the others as a JSON body.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
}

fn default_method() -> String {
    "POST".into()
}

/// A header whose value comes from the environment (`env`) or from the
/// settings' `tools.secrets` (`secret`), exactly one of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub header: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Put before the value, e.g. `"Bearer "`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// Retries of one call (inside one run): timeouts, 5xx and connection
/// errors, with exponential backoff from `base_ms` capped at `max_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolRetry {
    pub max_attempts: u32,
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Default for ToolRetry {
    fn default() -> Self {
        Self {
            max_attempts: 2,
            base_ms: 100,
            max_ms: 2_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDefinition {
    /// What the model is told the tool does.
    pub description: String,
    pub endpoint: Endpoint,
    /// JSON Schema of the arguments (an object schema).
    pub parameters: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub retry: ToolRetry,
    /// A repeat of the same call (same `Idempotency-Key`) has no second
    /// effect. Only then is a call cut off by a dying worker made again;
    /// otherwise the execution fails `tool_outcome_unknown`.
    #[serde(default)]
    pub idempotent: bool,
    /// Results longer than this are cut (at a character boundary) before
    /// they reach the model and the trace.
    #[serde(default = "default_max_result")]
    pub max_result_bytes: usize,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_max_result() -> usize {
    DEFAULT_MAX_RESULT_BYTES
}

impl ToolDefinition {
    /// Parses a tool file's TOML, naming the field of the first error.
    pub fn from_toml(text: &str) -> Result<Self, FieldError> {
        let deserializer = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            let message = e.into_inner().message().trim().to_string();
            FieldError::new(if field == "." { String::new() } else { field }, message)
        })
    }

    /// Parses a definition sent as JSON (`PUT /v1/tools/{name}`), naming
    /// the field of the first error.
    pub fn from_json(value: &Value) -> Result<Self, FieldError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            FieldError::new(
                if field == "." { String::new() } else { field },
                e.into_inner().to_string(),
            )
        })
    }

    /// The rules a tenant's definition (registered through the API) must
    /// also pass: its credential can only name a secret of that tenant
    /// (`tools.tenant_secrets.<tenant>.<secret>`), never the worker's
    /// environment.
    pub fn check_for_tenant(&self) -> Vec<FieldError> {
        let mut errors = self.check();
        if self.credential.as_ref().is_some_and(|c| c.env.is_some()) {
            errors.push(FieldError::new(
                "credential.env",
                "a tool registered through the API cannot read the worker's environment; name a `secret` (tools.tenant_secrets.<tenant>.<secret>)",
            ));
        }
        errors
    }

    /// What types cannot say.
    pub fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.description.trim().is_empty() {
            errors.push(FieldError::new("description", "must not be empty"));
        }
        if !METHODS.contains(&self.endpoint.method.as_str()) {
            errors.push(FieldError::new(
                "endpoint.method",
                format!(
                    "{:?} is not one of {}",
                    self.endpoint.method,
                    METHODS.join(", ")
                ),
            ));
        }
        match reqwest_like_url(&self.endpoint.url) {
            Ok(()) => {}
            Err(m) => errors.push(FieldError::new("endpoint.url", m)),
        }
        if self.parameters.get("type").and_then(Value::as_str) != Some("object") {
            errors.push(FieldError::new(
                "parameters",
                "must be a JSON Schema with type = \"object\"",
            ));
        }
        if let Some(c) = &self.credential {
            if c.header.trim().is_empty() || !c.header.bytes().all(is_token_byte) {
                errors.push(FieldError::new(
                    "credential.header",
                    "must be a header name",
                ));
            }
            if c.env.is_some() == c.secret.is_some() {
                errors.push(FieldError::new(
                    "credential",
                    "name exactly one of `env` (an environment variable) or `secret` (a key of the tools.secrets setting)",
                ));
            }
        }
        if self.timeout_ms == 0 {
            errors.push(FieldError::new("timeout_ms", "must be at least 1"));
        }
        if self.retry.max_attempts == 0 || self.retry.max_attempts > MAX_ATTEMPTS_LIMIT {
            errors.push(FieldError::new(
                "retry.max_attempts",
                format!("must be 1..={MAX_ATTEMPTS_LIMIT}"),
            ));
        }
        if self.max_result_bytes == 0 {
            errors.push(FieldError::new("max_result_bytes", "must be at least 1"));
        }
        errors
    }

    /// The function the model is offered, in OpenAI's `tools` format.
    pub fn function(&self, name: &str) -> Value {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": name,
                "description": self.description,
                "parameters": self.parameters,
            }
        })
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An absolute http(s) URL (checked again by the HTTP client).
fn reqwest_like_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

//! The JSON shapes of docs/api.md: request bodies and the resources
//! returned. Conversion to and from the domain types lives here so
//! handlers stay thin.

pub mod prompts;
pub mod tenancy;

use chrono::{DateTime, Utc};
use llmq_shared::execution::{ErrorInfo, Usage};
use llmq_shared::ids::{Label, PromptName};
pub use llmq_shared::resource::{ExecutionResource, Links, PromptRef};
use llmq_shared::step::Step;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::services::error::ServiceError;
use crate::services::executions::plan::{nul_path, nul_path_in_map, DEFAULT_PRIORITY};
use crate::services::executions::{PromptTarget, SubmitRequest};

/// `POST /v1/executions`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitExecution {
    /// Prompt name in the registry.
    #[schema(pattern = r"^[a-z0-9._-]{1,64}$")]
    pub prompt: String,
    /// An exact version; exclusive with `label`.
    pub version: Option<i32>,
    /// A label such as `production` (the default) or `staging`.
    #[schema(pattern = r"^[a-z0-9._-]{1,64}$")]
    pub label: Option<String>,
    /// Checked against the JSON Schema of the version's `input_schema`
    /// (see the prompt's file); a violation is a 422 `invalid_input`
    /// naming the path.
    #[schema(value_type = Object)]
    pub input: Value,
    /// Override of the version's model; must be configured.
    pub model: Option<String>,
    /// Overrides of the version's parameters (temperature, max_tokens, ...).
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Map<String, Value>>,
    /// Publish the model's tokens as `delta` events on the execution's
    /// event stream while it generates.
    #[serde(default)]
    pub stream: bool,
    /// Where to POST the signed outcome (Standard Webhooks, signed with
    /// the tenant's secret of `POST /v1/webhook-secret`). `https`, and
    /// every address the host resolves to public, or 422
    /// `invalid_webhook_url`.
    pub webhook: Option<WebhookSpec>,
    /// 0..9.
    pub priority: Option<i16>,
    /// Opaque, returned as is.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// The end user, for per-user limits and analytics; a label split
    /// assigns the same user the same version.
    pub user: Option<String>,
    /// A segment of the label's rule (e.g. `beta`): its target wins over
    /// the split. Unknown segments fall back to the split.
    #[schema(pattern = r"^[a-z0-9._-]{1,64}$")]
    pub segment: Option<String>,
    /// The response cache: `true` reuses an earlier answer to exactly the
    /// same rendered prompt, version, model and parameters (of this
    /// organisation) and makes no model call; `false` refuses it even
    /// where the prompt version opts in. Absent: the version decides.
    pub cache: Option<bool>,
    /// How long an answer cached by this request may be reused, 1 to
    /// 2592000 seconds (default 3600); only with `cache: true`.
    pub cache_ttl_secs: Option<u32>,
}

/// The TTL of `cache: true` without `cache_ttl_secs`.
pub const DEFAULT_CACHE_TTL_SECS: u32 = 3600;
/// The longest `cache_ttl_secs`: 30 days.
pub const MAX_CACHE_TTL_SECS: u32 = 30 * 24 * 3600;

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
}

fn invalid(message: impl Into<String>) -> ServiceError {
    ServiceError::InvalidRequest(message.into())
}

fn no_nul(field: &str, value: &str) -> Result<(), ServiceError> {
    if value.contains('\0') {
        return Err(invalid(format!("{field} must not contain a NUL character")));
    }
    Ok(())
}

impl SubmitExecution {
    /// The domain request this body asks for, defaults applied. Refuses
    /// what cannot be stored (NUL characters: Postgres `text` and `jsonb`
    /// have no room for them) rather than accepting it. A `webhook.url`'s
    /// destination is checked by the submit service.
    pub fn into_request(self) -> Result<SubmitRequest, ServiceError> {
        let prompt =
            PromptName::parse(&self.prompt).map_err(|e| invalid(format!("prompt: {e}")))?;
        let target = match (self.version, self.label) {
            (Some(v), None) => PromptTarget::Version(v),
            (None, None) => PromptTarget::default(),
            (None, Some(l)) => {
                PromptTarget::Label(Label::parse(&l).map_err(|e| invalid(format!("label: {e}")))?)
            }
            (Some(_), Some(_)) => return Err(invalid("give either version or label, not both")),
        };
        let priority = self.priority.unwrap_or(DEFAULT_PRIORITY);
        if !(0..=9).contains(&priority) {
            return Err(invalid("priority must be between 0 and 9"));
        }
        let metadata = match self.metadata {
            None => serde_json::Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(invalid("metadata must be an object")),
        };
        let params = self.params.unwrap_or_default();
        let nul = nul_path(&self.input, "input")
            .or_else(|| nul_path_in_map(&metadata, "metadata"))
            .or_else(|| nul_path_in_map(&params, "params"));
        if let Some(path) = nul {
            return Err(invalid(format!("{path} must not contain a NUL character")));
        }
        if let Some(model) = &self.model {
            no_nul("model", model)?;
        }
        if let Some(user) = &self.user {
            no_nul("user", user)?;
        }
        if let Some(segment) = &self.segment {
            llmq_shared::prompt::validate_name(segment)
                .map_err(|e| invalid(format!("segment: {e}")))?;
        }
        let cache_ttl_secs = match (self.cache, self.cache_ttl_secs) {
            (Some(false), Some(_)) | (None, Some(_)) => {
                return Err(invalid("cache_ttl_secs needs cache: true"))
            }
            (Some(false), None) => Some(0),
            (Some(true), ttl) => {
                let ttl = ttl.unwrap_or(DEFAULT_CACHE_TTL_SECS);
                if !(1..=MAX_CACHE_TTL_SECS).contains(&ttl) {
                    return Err(invalid(format!(
                        "cache_ttl_secs must be between 1 and {MAX_CACHE_TTL_SECS}"
                    )));
                }
                Some(ttl as i32)
            }
            (None, None) => None,
        };
        Ok(SubmitRequest {
            prompt,
            target,
            input: self.input,
            model: self.model,
            params,
            priority,
            metadata,
            user: self.user,
            segment: self.segment,
            stream: self.stream,
            webhook_url: self.webhook.map(|w| w.url),
            cache_ttl_secs,
        })
    }
}

/// One recorded step attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepResource {
    pub seq: i32,
    /// `render`, `generate`, `finalize`, `tool:<name>`, ...
    pub kind: String,
    pub attempt: i32,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub latency_ms: Option<f64>,
    pub model: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    pub usage: Option<Usage>,
    /// Masked.
    #[schema(value_type = Option<serde_json::Value>)]
    pub input: Option<Value>,
    /// Masked; a string for a text answer.
    #[schema(value_type = Option<serde_json::Value>)]
    pub output: Option<Value>,
    pub error: Option<ErrorInfo>,
    pub retryable: Option<bool>,
}

impl From<&Step> for StepResource {
    fn from(s: &Step) -> Self {
        Self {
            seq: s.seq,
            kind: s.kind.name(),
            attempt: s.attempt,
            status: s.status.as_str().to_string(),
            started_at: s.started_at,
            finished_at: s.finished_at,
            latency_ms: s.latency_ms,
            model: s.model.clone(),
            params: s.params.clone(),
            usage: s.usage,
            input: s.input.clone(),
            output: s.output.clone(),
            error: s.error.clone(),
            retryable: s.retryable,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepList {
    pub execution_id: String,
    pub steps: Vec<StepResource>,
}

/// What `/readyz` found: each dependency reachable or not.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub postgres: bool,
    pub rabbitmq: bool,
}

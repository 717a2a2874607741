//! The JSON shapes of docs/api.md: request bodies and the resources returned.
//! Conversion from the domain types lives here so handlers stay thin.

use chrono::{DateTime, Utc};
use llmq_shared::execution::{ErrorInfo, Execution, ExecutionStatus, Usage};
use llmq_shared::step::Step;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `POST /v1/executions`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitExecution {
    /// Prompt name in the registry.
    pub prompt: String,
    /// An exact version; exclusive with `label`.
    pub version: Option<i32>,
    /// A label such as `production` (the default) or `staging`.
    pub label: Option<String>,
    /// Checked against the version's input schema.
    #[schema(value_type = Object)]
    pub input: Value,
    /// Override of the version's model; must be configured.
    pub model: Option<String>,
    /// Overrides of the version's parameters (temperature, max_tokens, ...).
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub stream: bool,
    pub webhook: Option<WebhookSpec>,
    /// 0..9.
    pub priority: Option<i16>,
    /// Opaque, returned as is.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// The end user, for per-user limits and analytics.
    pub user: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PromptRef {
    pub name: String,
    pub version: i32,
    pub label: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub self_: String,
    pub steps: String,
    pub events: String,
}

/// An execution as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionResource {
    pub id: String,
    pub status: ExecutionStatus,
    pub prompt: PromptRef,
    pub model: String,
    #[schema(value_type = Object)]
    pub input: Value,
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    pub error: Option<ErrorInfo>,
    pub usage: Option<Usage>,
    pub attempts: i32,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub user: Option<String>,
    pub priority: i16,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub links: Links,
}

impl From<&Execution> for ExecutionResource {
    fn from(e: &Execution) -> Self {
        let base = format!("/v1/executions/{}", e.id);
        Self {
            id: e.id.to_string(),
            status: e.status,
            prompt: PromptRef {
                name: e.prompt_name.clone(),
                version: e.prompt_version,
                label: e.prompt_label.clone(),
            },
            model: e.model.clone(),
            input: e.input.clone(),
            output: e.output.clone(),
            error: e.error.clone(),
            usage: e.usage,
            attempts: e.attempts,
            metadata: e.metadata.clone(),
            user: e.end_user.clone(),
            priority: e.priority,
            created_at: e.created_at,
            started_at: e.started_at,
            finished_at: e.finished_at,
            links: Links {
                steps: format!("{base}/steps"),
                events: format!("{base}/events"),
                self_: base,
            },
        }
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
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    /// Masked.
    #[schema(value_type = Option<Object>)]
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

//! The execution resource of docs/api.md, the JSON shape in which clients
//! (the API's answers) and webhook receivers (the `data` of a delivery's
//! payload) see an execution. It lives here so the API and the worker
//! build it the same way.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::execution::{ErrorInfo, Execution, ExecutionStatus, Usage};

#[derive(Debug, Serialize, ToSchema)]
pub struct PromptRef {
    pub name: String,
    pub version: i32,
    pub label: Option<String>,
    /// The arm of the label's rule: `split:<i>` (the i-th weighted
    /// target) or `segment:<name>`; absent for a label with one version
    /// or an exact version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub self_: String,
    pub steps: String,
    /// The execution's event stream (Server-Sent Events).
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
    /// A string for a text prompt, the parsed value for a JSON one; null
    /// until the execution succeeds.
    #[schema(value_type = Option<serde_json::Value>)]
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
    /// What the run noticed without failing: `retrieval_empty`,
    /// `retrieval_failed`, `retrieval_timed_out`, `retrieval_fallback`.
    pub flags: Vec<String>,
    pub links: Links,
}

impl From<&Execution> for ExecutionResource {
    fn from(e: &Execution) -> Self {
        let base = format!("/v1/executions/{}", e.id);
        Self {
            id: e.id.to_string(),
            status: e.status,
            prompt: PromptRef {
                name: crate::ids::public_prompt_name(&e.prompt_name).to_string(),
                version: e.prompt_version,
                label: e.prompt_label.clone(),
                arm: e.prompt_arm.clone(),
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
            flags: e.flags.clone(),
            links: Links {
                steps: format!("{base}/steps"),
                events: format!("{base}/events"),
                self_: base,
            },
        }
    }
}

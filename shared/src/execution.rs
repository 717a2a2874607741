//! The execution: one run of a prompt version on an input. Owns the id type,
//! the status machine and the error codes clients see. A status only moves
//! along the lifecycle in docs/architecture.md; terminal states never change.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An execution's id: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExecutionId(pub Uuid);

impl ExecutionId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for ExecutionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ExecutionId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl ExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown execution status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for ExecutionStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => return Err(UnknownStatus(other.to_string())),
        })
    }
}

/// Token usage and its price.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub total_tokens: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// Why an execution or a step failed, in the words clients see.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

/// An execution as stored.
#[derive(Clone, Debug)]
pub struct Execution {
    pub id: ExecutionId,
    pub tenant_id: String,
    pub prompt_name: String,
    pub prompt_version: i32,
    pub prompt_label: Option<String>,
    /// The arm of the label's rule it came through: `split:<i>`,
    /// `segment:<name>`, or none.
    pub prompt_arm: Option<String>,
    pub model: String,
    pub params: serde_json::Value,
    pub input: serde_json::Value,
    pub output: Option<serde_json::Value>,
    pub status: ExecutionStatus,
    pub error: Option<ErrorInfo>,
    pub attempts: i32,
    pub usage: Option<Usage>,
    pub metadata: serde_json::Value,
    pub end_user: Option<String>,
    pub priority: i16,
    pub stream: bool,
    pub webhook_url: Option<String>,
    /// The API key it was submitted with (its id; `config` for the
    /// configured key).
    pub key_id: Option<String>,
    /// The request asked for the response cache, reusing an answer for
    /// this long.
    pub cache_ttl_secs: Option<i32>,
    /// The answer came from the response cache.
    pub cached: bool,
    /// Submit reserved tokens or spend for it: its end settles them.
    pub reserved: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// What the run noticed without failing (e.g. `retrieval_empty`).
    pub flags: Vec<String>,
}

/// What the API records for a new execution.
#[derive(Clone, Debug)]
pub struct NewExecution {
    pub id: ExecutionId,
    pub tenant_id: String,
    pub prompt_name: String,
    pub prompt_version: i32,
    pub prompt_label: Option<String>,
    /// The arm of the label's rule it came through: `split:<i>`,
    /// `segment:<name>`, or none.
    pub prompt_arm: Option<String>,
    pub model: String,
    pub params: serde_json::Value,
    pub input: serde_json::Value,
    pub metadata: serde_json::Value,
    pub end_user: Option<String>,
    pub priority: i16,
    pub stream: bool,
    pub webhook_url: Option<String>,
    /// The API key it is submitted with (its id).
    pub key_id: Option<String>,
    /// The request asks for the response cache with this TTL.
    pub cache_ttl_secs: Option<i32>,
    /// Submit reserved tokens or spend for it (see `Execution::reserved`).
    pub reserved: bool,
}

/// Stable error codes, shared by the API and the worker.
pub mod codes {
    pub const PROVIDER_TIMEOUT: &str = "provider_timeout";
    pub const PROVIDER_RATE_LIMITED: &str = "provider_rate_limited";
    pub const PROVIDER_ERROR: &str = "provider_error";
    pub const PROVIDER_UNAVAILABLE: &str = "provider_unavailable";
    pub const PROVIDER_BAD_RESPONSE: &str = "provider_bad_response";
    pub const PROVIDER_REJECTED: &str = "provider_rejected";
    pub const TEMPLATE_ERROR: &str = "template_error";
    pub const INVALID_INPUT: &str = "invalid_input";
    pub const MODEL_NOT_ALLOWED: &str = "model_not_allowed";
    /// A request field the API documents but does not implement yet.
    pub const NOT_SUPPORTED: &str = "not_supported";
    pub const CANCELLED: &str = "cancelled";
    pub const WORKER_LOST: &str = "worker_lost";
    /// The execution's prompt version is stored but does not compile.
    pub const PROMPT_INVALID: &str = "prompt_invalid";
    /// The model's answer breaks the prompt's output contract.
    pub const INVALID_OUTPUT: &str = "invalid_output";
    /// The execution was claimed more often than its retry policy allows
    /// (plus the slack for killed workers); the model is not called again.
    pub const ATTEMPTS_EXHAUSTED: &str = "attempts_exhausted";
    pub const INTERNAL: &str = "internal_error";
    /// A tool call: the tool is not allowed for the prompt version.
    pub const TOOL_NOT_ALLOWED: &str = "tool_not_allowed";
    /// A tool call: the arguments break the tool's schema.
    pub const TOOL_INVALID_ARGUMENTS: &str = "tool_invalid_arguments";
    pub const TOOL_TIMEOUT: &str = "tool_timeout";
    /// A tool answered 5xx (retryable within its policy).
    pub const TOOL_ERROR: &str = "tool_error";
    /// A tool answered 4xx: terminal for that call, told to the model.
    pub const TOOL_REJECTED: &str = "tool_rejected";
    pub const TOOL_UNAVAILABLE: &str = "tool_unavailable";
    /// A tool's credential is not configured.
    pub const TOOL_MISCONFIGURED: &str = "tool_misconfigured";
    /// The model still asked for tools after `limits.max_tool_rounds`.
    pub const TOOL_ROUNDS_EXCEEDED: &str = "tool_rounds_exceeded";
    /// The model asked for more than `limits.max_tool_calls` calls.
    pub const TOOL_CALLS_EXCEEDED: &str = "tool_calls_exceeded";
    /// A non-idempotent tool call was in flight when its worker died: it
    /// may or may not have happened, so it is not made again.
    pub const TOOL_OUTCOME_UNKNOWN: &str = "tool_outcome_unknown";
    /// The prompt version allows a tool this worker has no definition of.
    pub const TOOL_UNDEFINED: &str = "tool_undefined";
    /// A provider limit (concurrency, requests or tokens per minute, or a
    /// pause after the provider's 429) had no room: the call was deferred.
    pub const PROVIDER_CAPACITY: &str = "provider_capacity";
    /// The organisation had its share of this worker's slots: deferred.
    pub const TENANT_CONCURRENCY: &str = "tenant_concurrency";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_its_name() {
        for s in [
            ExecutionStatus::Queued,
            ExecutionStatus::Running,
            ExecutionStatus::Succeeded,
            ExecutionStatus::Failed,
            ExecutionStatus::Cancelled,
        ] {
            assert_eq!(s.as_str().parse::<ExecutionStatus>().ok(), Some(s));
        }
        assert!("done".parse::<ExecutionStatus>().is_err());
    }

    #[test]
    fn execution_ids_are_time_ordered() {
        let a = ExecutionId::new();
        let b = ExecutionId::new();
        assert!(a < b);
        assert_eq!(a.0.get_version_num(), 7);
    }
}

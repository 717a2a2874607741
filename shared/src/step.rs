//! A step: one attempt of one stage of an execution's pipeline, recorded as
//! a row. A succeeded step is a checkpoint: a resumed execution reuses its
//! output instead of running it again.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::execution::{ErrorInfo, ExecutionId, Usage};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum StepKind {
    Retrieve,
    Render,
    Generate,
    Tool(String),
    Validate,
    Finalize,
}

impl StepKind {
    pub fn name(&self) -> String {
        match self {
            Self::Retrieve => "retrieve".into(),
            Self::Render => "render".into(),
            Self::Generate => "generate".into(),
            Self::Tool(name) => format!("tool:{name}"),
            Self::Validate => "validate".into(),
            Self::Finalize => "finalize".into(),
        }
    }

    /// The label used in metrics (tool names collapse into one series).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Retrieve => "retrieve",
            Self::Render => "render",
            Self::Generate => "generate",
            Self::Tool(_) => "tool",
            Self::Validate => "validate",
            Self::Finalize => "finalize",
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl From<StepKind> for String {
    fn from(k: StepKind) -> Self {
        k.name()
    }
}

impl TryFrom<String> for StepKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Ok(match s.as_str() {
            "retrieve" => Self::Retrieve,
            "render" => Self::Render,
            "generate" => Self::Generate,
            "validate" => Self::Validate,
            "finalize" => Self::Finalize,
            other => match other.strip_prefix("tool:") {
                Some(name) if !name.is_empty() => Self::Tool(name.to_string()),
                _ => return Err(format!("unknown step kind {other:?}")),
            },
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// A step row.
#[derive(Clone, Debug)]
pub struct Step {
    pub execution_id: ExecutionId,
    pub seq: i32,
    pub kind: StepKind,
    pub attempt: i32,
    pub status: StepStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub latency_ms: Option<f64>,
    pub model: Option<String>,
    pub params: Option<serde_json::Value>,
    pub usage: Option<Usage>,
    pub input: Option<serde_json::Value>,
    pub output: Option<serde_json::Value>,
    pub error: Option<ErrorInfo>,
    pub retryable: Option<bool>,
}

impl Step {
    /// A step that starts now; the caller fills in what it knows.
    pub fn start(execution_id: ExecutionId, seq: i32, kind: StepKind, attempt: i32) -> Self {
        Self {
            execution_id,
            seq,
            kind,
            attempt,
            status: StepStatus::Running,
            started_at: Utc::now(),
            finished_at: None,
            latency_ms: None,
            model: None,
            params: None,
            usage: None,
            input: None,
            output: None,
            error: None,
            retryable: None,
        }
    }

    /// Marks the step finished now, with its latency measured from its start.
    pub fn finish(&mut self, status: StepStatus) {
        let now = Utc::now();
        self.status = status;
        self.latency_ms =
            Some((now - self.started_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        self.finished_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_kinds_round_trip_through_their_names() {
        for k in [
            StepKind::Retrieve,
            StepKind::Render,
            StepKind::Generate,
            StepKind::Tool("search".into()),
            StepKind::Validate,
            StepKind::Finalize,
        ] {
            assert_eq!(StepKind::try_from(k.name()), Ok(k));
        }
        assert!(StepKind::try_from("tool:".to_string()).is_err());
    }
}

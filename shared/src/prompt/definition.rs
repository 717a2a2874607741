//! One prompt version as written in its file and stored in Postgres, and
//! the rule for prompt and label names.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Per-version overrides of timeouts and retries; unset values fall back
/// to the worker's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptLimits {
    pub generate_timeout_secs: Option<u64>,
    pub max_attempts: Option<u32>,
    pub retry_base_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    pub fallback_model: Option<String>,
}

/// One prompt version as written in its file and stored in Postgres.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptDefinition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub model: String,
    #[serde(default)]
    pub params: serde_json::Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub template: String,
    pub input_schema: Value,
    #[serde(default = "text_output")]
    pub output: Value,
    #[serde(default)]
    pub limits: PromptLimits,
}

pub(super) fn text_output() -> Value {
    serde_json::json!({"type": "text"})
}

impl PromptDefinition {
    /// sha256 of the definition with object keys sorted, so the same file
    /// always hashes the same whatever map order serde used.
    pub fn content_hash(&self) -> String {
        crate::canonical::json_sha256(&serde_json::to_value(self).unwrap_or(Value::Null))
    }
}

/// Prompt names and labels: lowercase letters, digits, `-`, `_`, `.`.
pub fn validate_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name (a-z, 0-9, -, _, . up to 64)"
        ))
    }
}

//! The JSON shapes of the tool routes (`/v1/tools`).

use chrono::{DateTime, Utc};
use llmq_shared::db::tools::StoredTool;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// A tool the tenant registered.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolResource {
    pub name: String,
    /// The definition: the fields of a `tools/<name>.toml` file, with the
    /// defaults filled in.
    #[schema(value_type = Object)]
    pub definition: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&StoredTool> for ToolResource {
    fn from(t: &StoredTool) -> Self {
        Self {
            name: t.name.clone(),
            definition: t.definition.clone(),
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// `GET /v1/tools`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolList {
    pub data: Vec<ToolResource>,
}

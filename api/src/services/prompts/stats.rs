//! Per-version figures of a prompt (`GET /v1/prompts/{name}/stats`).

use chrono::{DateTime, Utc};
use llmq_shared::db::stats::{self as db, VersionStats};
use llmq_shared::db::{prompts, DbError, Pool};
use llmq_shared::ids::TenantId;

use super::unknown_prompt;
use crate::services::error::Result;

/// Figures per version of `name`: through `label` only, when given; of
/// executions created at or after `since`, when given.
pub async fn prompt_stats(
    pool: &Pool,
    tenant: &TenantId,
    name: &str,
    label: Option<&str>,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<VersionStats>> {
    let client = pool.get().await.map_err(DbError::from)?;
    if prompts::list_versions(&client, name).await?.is_empty() {
        return Err(unknown_prompt(name));
    }
    Ok(db::prompt_stats(&client, tenant.as_str(), name, label, since).await?)
}

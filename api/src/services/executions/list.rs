//! Listing a tenant's executions, newest first, a page at a time. The
//! cursor is opaque to clients: the base64url of the last id of the page.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use llmq_shared::db::executions::{self as db, ExecutionFilter};
use llmq_shared::db::{DbError, Pool};
use llmq_shared::execution::{Execution, ExecutionId, ExecutionStatus};
use llmq_shared::ids::TenantId;
use uuid::Uuid;

use crate::services::error::{Result, ServiceError};

/// Page size when none is asked for, and the largest one served.
pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

/// A listing query, as received.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub prompt: Option<String>,
    pub version: Option<i32>,
    pub status: Option<String>,
    pub user: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// One page, and the cursor of the next when there is one.
pub struct Page {
    pub items: Vec<Execution>,
    pub next_cursor: Option<String>,
}

pub fn encode_cursor(id: ExecutionId) -> String {
    URL_SAFE_NO_PAD.encode(id.0.as_bytes())
}

fn decode_cursor(raw: &str) -> Result<ExecutionId> {
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| Uuid::from_slice(&b).ok())
        .map(ExecutionId)
        .ok_or_else(|| ServiceError::InvalidRequest("cursor: not a cursor this API issued".into()))
}

pub async fn list_executions(pool: &Pool, tenant: &TenantId, query: &ListQuery) -> Result<Page> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ServiceError::InvalidRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    if let Some(status) = &query.status {
        status.parse::<ExecutionStatus>().map_err(|_| {
            ServiceError::InvalidRequest(
                "status must be one of queued, running, succeeded, failed, cancelled".into(),
            )
        })?;
    }
    let prompt = query.prompt.as_deref().map(|p| tenant.prompt_key(p));
    let filter = ExecutionFilter {
        prompt: prompt.as_deref(),
        version: query.version,
        status: query.status.as_deref(),
        user: query.user.as_deref(),
        before: query.cursor.as_deref().map(decode_cursor).transpose()?,
    };
    let client = pool.get().await.map_err(DbError::from)?;
    let mut items = db::list_executions(&client, tenant.as_str(), &filter, limit + 1).await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|e| encode_cursor(e.id))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

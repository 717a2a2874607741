//! The outbox: an execution row carries `publish_due_at` until its
//! message is known to be on the queue. The API clears marks of publishes
//! it saw confirmed; the relay publishes the rows that fall due.

use uuid::Uuid;

use super::{GenericClient, Result};
use crate::execution::ExecutionId;

/// The API saw these publishes confirmed: drop their outbox marks. Only rows
/// never claimed qualify, so a later retry's mark is never cleared by a
/// stale confirmation.
/// A row deferred (`not_before` set: a worker kept it for later without
/// running it) keeps its mark, which is now the deferral's.
const MARK_PUBLISHED: &str =
    "UPDATE executions SET publish_due_at = NULL WHERE id = ANY($1) AND attempts = 0 AND status = 'queued' \
     AND not_before IS NULL";

pub async fn mark_published(client: &impl GenericClient, ids: &[Uuid]) -> Result<u64> {
    Ok(client
        .execute(&client.prepare_cached(MARK_PUBLISHED).await?, &[&ids])
        .await?)
}

const DUE: &str =
    "SELECT id, priority, tenant_id FROM executions WHERE publish_due_at <= now() AND status = 'queued' \
     ORDER BY publish_due_at LIMIT $1 FOR UPDATE SKIP LOCKED";
const CLEAR_DUE: &str = "UPDATE executions SET publish_due_at = NULL WHERE id = ANY($1)";

/// Rows whose publish is due, locked for this transaction so concurrent
/// relays never publish the same row at once.
pub async fn lock_due_for_publish(
    tx: &impl GenericClient,
    limit: i64,
) -> Result<Vec<(ExecutionId, i16, String)>> {
    let rows = tx.query(&tx.prepare_cached(DUE).await?, &[&limit]).await?;
    Ok(rows
        .iter()
        .map(|r| (ExecutionId(r.get(0)), r.get(1), r.get(2)))
        .collect())
}

pub async fn clear_publish_due(tx: &impl GenericClient, ids: &[Uuid]) -> Result<u64> {
    Ok(tx
        .execute(&tx.prepare_cached(CLEAR_DUE).await?, &[&ids])
        .await?)
}

/// Every statement of this module, for the test that prepares them all.
pub const ALL_SQL: &[&str] = &[MARK_PUBLISHED, DUE, CLEAR_DUE];

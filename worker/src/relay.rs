//! The outbox relay: publishes executions whose publish was never
//! confirmed (the API's failed or unconfirmed publishes), retries whose
//! delay has passed, and executions whose worker died (expired lease).
//! Safe in many processes at once: rows are locked with SKIP LOCKED while
//! published, and a duplicate message is absorbed by claiming.

use std::sync::Arc;
use std::time::Duration;

use llmq_shared::db::DbError;
use llmq_shared::db::{leases, outbox};
use llmq_shared::metrics as m;
use tokio_util::sync::CancellationToken;

use crate::context::WorkerContext;

const BATCH: i64 = 500;

pub async fn run_relay(ctx: Arc<WorkerContext>, stop: CancellationToken) {
    let interval = Duration::from_millis(ctx.settings.worker.relay_interval_ms.max(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(e) = relay_once(&ctx).await {
            tracing::warn!(error = %e, "outbox relay pass failed");
        }
    }
}

/// One pass; returns how many executions were published. An idle pass is
/// one transaction (the reap and the first due scan share it): two
/// commits a second at the default interval, whatever the load.
pub async fn relay_once(ctx: &WorkerContext) -> Result<usize, DbError> {
    let mut client = ctx.pool.get().await?;
    let mut published = 0;
    let mut first = true;
    let mut reaped_events = Vec::new();
    loop {
        let tx = client.transaction().await?;
        if std::mem::take(&mut first) {
            let reaped = leases::reap_expired_leases(&tx, BATCH).await?;
            if !reaped.written.is_empty() {
                tracing::warn!(
                    count = reaped.written.len(),
                    "requeued executions whose worker lease expired"
                );
                metrics::counter!(m::LEASES_REAPED).increment(reaped.written.len() as u64);
                // Announced once committed, below: never an event that
                // could still roll back.
                reaped_events = reaped.events(&[]);
            }
            // Without a channel every publish would fail at once: leave
            // the rows due for a later pass instead of failing each of
            // them every pass.
            if !ctx.publisher.is_connected().await {
                tx.commit().await?;
                announce(ctx, &mut reaped_events).await;
                return Ok(0);
            }
        }
        let due = outbox::lock_due_for_publish(&tx, BATCH).await?;
        if due.is_empty() {
            tx.commit().await?;
            announce(ctx, &mut reaped_events).await;
            return Ok(published);
        }
        let results =
            futures::future::join_all(due.iter().map(|(id, priority, tenant)| {
                ctx.publisher.publish_execution(*id, tenant, *priority)
            }))
            .await;
        let confirmed: Vec<_> = due
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|((id, _, _), _)| id.0)
            .collect();
        outbox::clear_publish_due(&tx, &confirmed).await?;
        tx.commit().await?;
        announce(ctx, &mut reaped_events).await;
        published += confirmed.len();
        metrics::counter!(m::OUTBOX_REPUBLISHED).increment(confirmed.len() as u64);
        if confirmed.len() < due.len() {
            tracing::warn!(
                unconfirmed = due.len() - confirmed.len(),
                "broker did not confirm; will try again"
            );
            return Ok(published);
        }
        if (due.len() as i64) < BATCH {
            return Ok(published);
        }
    }
}

/// Publishes the reap's events once its transaction has committed.
async fn announce(ctx: &WorkerContext, events: &mut Vec<llmq_shared::event_log::LogEvent>) {
    ctx.publisher
        .publish_events(&[], std::mem::take(events))
        .await;
}

//! The lease that makes one worker the only runner of an execution:
//! claiming (which counts the attempt), renewal, giving leases back on
//! shutdown, requeueing the executions of dead workers, and the cancel
//! requests a lease holder must act on.
//!
//! Invariant: `lease_owner` is set exactly while the status is `running`
//! (claiming sets it; every transition out of `running` clears it). The
//! single-row fences therefore test `id` and `lease_owner` only: adding
//! `status = 'running'` would let the planner pick a partial index over all
//! running rows instead of the primary key.

use std::sync::LazyLock;
use std::time::Duration;

use uuid::Uuid;

use super::events::{self, Logged};
use super::executions::{execution_columns, execution_from_row, parse_status};
use super::{GenericClient, Result};
use crate::event_log::{EventType, LogEvent};
use crate::execution::{Execution, ExecutionId, ExecutionStatus};

/// What claiming found.
#[derive(Debug)]
pub enum Claim {
    /// This worker now holds the lease; `attempts` counts this run.
    Claimed(Box<Execution>),
    NotFound,
    /// Already finished; the message is a duplicate.
    Terminal(ExecutionStatus),
    /// Another worker holds a live lease.
    Leased,
    /// A queued execution whose cancellation was requested: it never starts.
    CancelRequested,
    /// A retry whose delay is not over; the relay publishes it when it is.
    NotYet,
}

static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH f AS (UPDATE executions SET status = 'running', attempts = attempts + 1, lease_owner = $2, \
         lease_expires_at = now() + make_interval(secs => $3), publish_due_at = NULL, not_before = NULL, \
         started_at = coalesce(started_at, now()), updated_at = now(), event_seq = event_seq + 1 \
         WHERE id = ANY($1) AND NOT cancel_requested AND (not_before IS NULL OR not_before <= now()) \
           AND (status = 'queued' OR (status = 'running' AND (lease_expires_at < now() OR lease_owner = $2))) \
         RETURNING *, event_seq AS last), \
         {ev}, {hooks} SELECT {cols}, f.last, ev.data AS event_data FROM f JOIN ev ON ev.execution_id = f.id",
        ev = events::status_event_cte(
            "ev",
            "f",
            "last",
            &events::status_json("'running'", "attempts", ""),
            "true"
        ),
        cols = execution_columns!(),
        hooks = super::webhooks::started_deliveries_cte("f"),
    )
});
const CLAIM_MISS: &str =
    "SELECT id, status, cancel_requested, coalesce(not_before > now(), false) AS waiting \
     FROM executions WHERE id = ANY($1)";

/// Takes the lease on executions so that this worker alone runs them, in
/// one statement that also creates the `execution.started` webhook
/// deliveries of endpoints subscribed to them (once per execution);
/// answers what claiming found for each, in the order given, and the
/// `running` events the claims numbered.
pub async fn claim_executions(
    client: &impl GenericClient,
    ids: &[ExecutionId],
    owner: &str,
    lease: Duration,
) -> Result<(Vec<Claim>, Vec<LogEvent>)> {
    let secs = lease.as_secs_f64();
    let mut sorted: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    sorted.sort();
    sorted.dedup();
    let rows = client
        .query(
            &client.prepare_cached(&CLAIM).await?,
            &[&sorted, &owner, &secs],
        )
        .await?;
    let mut claims = std::collections::HashMap::with_capacity(ids.len());
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let execution = execution_from_row(row)?;
        events.push(LogEvent {
            execution_id: execution.id,
            tenant_id: execution.tenant_id.clone(),
            prompt_name: execution.prompt_name.clone(),
            seq: row.try_get("last")?,
            event_type: EventType::Status,
            data: row.try_get("event_data")?,
        });
        claims.insert(execution.id, Claim::Claimed(Box::new(execution)));
    }
    let missed: Vec<Uuid> = sorted
        .into_iter()
        .filter(|id| !claims.contains_key(&ExecutionId(*id)))
        .collect();
    if !missed.is_empty() {
        let rows = client
            .query(&client.prepare_cached(CLAIM_MISS).await?, &[&missed])
            .await?;
        for row in &rows {
            let status = parse_status(row.try_get("status")?)?;
            let claim = if status.is_terminal() {
                Claim::Terminal(status)
            } else if row.try_get("cancel_requested")? {
                Claim::CancelRequested
            } else if row.try_get("waiting")? {
                Claim::NotYet
            } else {
                Claim::Leased
            };
            claims.insert(ExecutionId(row.try_get("id")?), claim);
        }
    }
    let claims = ids
        .iter()
        .map(|id| claims.remove(id).unwrap_or(Claim::NotFound))
        .collect();
    Ok((claims, events))
}

const RENEW: &str = "UPDATE executions SET lease_expires_at = now() + make_interval(secs => $2) \
     WHERE id IN (SELECT id FROM executions WHERE lease_owner = $1 AND status = 'running' \
                  FOR UPDATE SKIP LOCKED)";

/// Extends every lease this worker holds, in one statement. Rows locked at
/// that moment are skipped, not waited for: they are being finished (or
/// cancelled) right now, and the next renewal, a third of a lease later,
/// takes them if they still run. Waiting would let a renewal and an outcome
/// batch, each holding rows the other wants, deadlock (seen in `make bench`:
/// Postgres broke it after `deadlock_timeout`, a second's stall).
pub async fn renew_leases(
    client: &impl GenericClient,
    owner: &str,
    lease: Duration,
) -> Result<u64> {
    Ok(client
        .execute(
            &client.prepare_cached(RENEW).await?,
            &[&owner, &lease.as_secs_f64()],
        )
        .await?)
}

/// `f AS (UPDATE …)` gives executions back to the queue (`$1` the
/// update's `WHERE`); with the `queued` event for `reason`, answering
/// rows of `events::ROW_SHAPE`.
fn requeue_sql(update: &str, reason: &str) -> String {
    format!(
        "WITH f AS ({update} RETURNING id, tenant_id, prompt_name, event_seq AS last, attempts), \
         {ev} {fence} UNION ALL {status_rows}",
        ev = events::status_event_cte(
            "ev",
            "f",
            "last",
            &events::status_json("'queued'", "attempts", &format!("'reason', '{reason}'")),
            "true"
        ),
        fence = events::fence_rows("f"),
        status_rows = events::status_rows("ev"),
    )
}

static RELEASE: LazyLock<String> = LazyLock::new(|| {
    requeue_sql(
        "UPDATE executions SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
         publish_due_at = now() + make_interval(secs => $3), updated_at = now(), event_seq = event_seq + 1 \
         WHERE id = ANY($1) AND lease_owner = $2",
        "released",
    )
});

/// Gives leases back (on shutdown) so the redelivered messages can be
/// claimed at once; the outbox mark covers a message the broker lost.
pub async fn release_leases(
    client: &impl GenericClient,
    ids: &[Uuid],
    owner: &str,
    republish_after: Duration,
) -> Result<Logged> {
    let rows = client
        .query(
            &client.prepare_cached(&RELEASE).await?,
            &[&ids, &owner, &republish_after.as_secs_f64()],
        )
        .await?;
    Logged::from_rows(&rows)
}

static REAP: LazyLock<String> = LazyLock::new(|| {
    requeue_sql(
        "UPDATE executions SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
         publish_due_at = now(), updated_at = now(), event_seq = event_seq + 1 \
         WHERE id IN (SELECT id FROM executions WHERE status = 'running' AND lease_expires_at < now() \
                      ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)",
        "lease_expired",
    )
});

/// Requeues executions whose worker died (lease expired) for the relay:
/// the executions requeued and their `queued` events.
pub async fn reap_expired_leases(client: &impl GenericClient, limit: i64) -> Result<Logged> {
    let rows = client
        .query(&client.prepare_cached(&REAP).await?, &[&limit])
        .await?;
    Logged::from_rows(&rows)
}

const CANCEL_REQUESTS: &str =
    "SELECT id FROM executions WHERE lease_owner = $1 AND status = 'running' AND cancel_requested";

/// Executions this worker runs whose cancellation was requested.
pub async fn cancel_requests(client: &impl GenericClient, owner: &str) -> Result<Vec<ExecutionId>> {
    let rows = client
        .query(&client.prepare_cached(CANCEL_REQUESTS).await?, &[&owner])
        .await?;
    Ok(rows.iter().map(|r| ExecutionId(r.get(0))).collect())
}

/// Every statement of this module, for the test that prepares them all.
pub static ALL_SQL: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    vec![
        CLAIM.as_str(),
        CLAIM_MISS,
        RENEW,
        RELEASE.as_str(),
        REAP.as_str(),
        CANCEL_REQUESTS,
    ]
});

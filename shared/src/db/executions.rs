//! Execution rows: creation (with its outbox mark), reads, the lease that
//! makes one worker the only runner, the outbox relay's queries and the
//! terminal transition. Every write a worker makes is fenced by its lease:
//! a worker that lost its lease changes nothing.
//!
//! Invariant: `lease_owner` is set exactly while the status is `running`
//! (claiming sets it; every transition out of `running` clears it). The
//! single-row fences therefore test `id` and `lease_owner` only: adding
//! `status = 'running'` would let the planner pick a partial index over all
//! running rows instead of the primary key.

use std::time::Duration;

use tokio_postgres::Row;
use uuid::Uuid;

use super::{DbError, GenericClient, Result};
use crate::execution::{ErrorInfo, Execution, ExecutionId, ExecutionStatus, NewExecution, Usage};
use crate::sanitize::{clean_json, clean_str};
use crate::step::Step;

macro_rules! execution_columns {
    () => {
        "id, tenant_id, prompt_name, prompt_version, prompt_label, model, params, input, output, status, \
         error_code, error_message, attempts, prompt_tokens, completion_tokens, total_tokens, cost_usd, \
         metadata, end_user, priority, stream, webhook_url, created_at, started_at, finished_at"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO executions (id, tenant_id, prompt_name, prompt_version, prompt_label, model, params, input, \
     metadata, end_user, priority, stream, webhook_url, status, publish_due_at) \
     SELECT n.*, 'queued', now() + make_interval(secs => $14) \
     FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::jsonb[], \
       $8::jsonb[], $9::jsonb[], $10::text[], $11::int2[], $12::bool[], $13::text[]) AS n \
     RETURNING ",
    execution_columns!()
);

/// Records new queued executions in one statement, answering them in the
/// order given. Each carries an outbox mark due after `republish_after`: if
/// the API's own publish is confirmed the mark is cleared, otherwise the
/// relay publishes the execution when it falls due.
pub async fn insert_executions(
    client: &impl GenericClient,
    new: &[&NewExecution],
    republish_after: Duration,
) -> Result<Vec<Execution>> {
    let secs = republish_after.as_secs_f64();
    let order: Vec<ExecutionId> = new.iter().map(|n| n.id).collect();
    // Key order, so concurrent batches never wait on each other in a cycle.
    let mut new = new.to_vec();
    new.sort_by_key(|n| n.id.0);
    let ids: Vec<_> = new.iter().map(|n| n.id.0).collect();
    let tenants: Vec<_> = new.iter().map(|n| n.tenant_id.as_str()).collect();
    let names: Vec<_> = new.iter().map(|n| n.prompt_name.as_str()).collect();
    let versions: Vec<_> = new.iter().map(|n| n.prompt_version).collect();
    let labels: Vec<_> = new.iter().map(|n| n.prompt_label.as_deref()).collect();
    let models: Vec<_> = new.iter().map(|n| n.model.as_str()).collect();
    let params: Vec<_> = new.iter().map(|n| &n.params).collect();
    let inputs: Vec<_> = new.iter().map(|n| &n.input).collect();
    let metadata: Vec<_> = new.iter().map(|n| &n.metadata).collect();
    let users: Vec<_> = new.iter().map(|n| n.end_user.as_deref()).collect();
    let priorities: Vec<_> = new.iter().map(|n| n.priority).collect();
    let streams: Vec<_> = new.iter().map(|n| n.stream).collect();
    let webhooks: Vec<_> = new.iter().map(|n| n.webhook_url.as_deref()).collect();
    let rows = client
        .query(
            &client.prepare_cached(INSERT).await?,
            &[
                &ids,
                &tenants,
                &names,
                &versions,
                &labels,
                &models,
                &params,
                &inputs,
                &metadata,
                &users,
                &priorities,
                &streams,
                &webhooks,
                &secs,
            ],
        )
        .await?;
    let mut by_id = rows
        .iter()
        .map(|r| execution_from_row(r).map(|e| (e.id, e)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    order
        .iter()
        .map(|id| {
            by_id
                .remove(id)
                .ok_or_else(|| DbError::Data(format!("execution {id} was not inserted")))
        })
        .collect()
}

const GET: &str = concat!(
    "SELECT ",
    execution_columns!(),
    " FROM executions WHERE id = $1 AND tenant_id = $2"
);

/// An execution of `tenant`; another tenant's is as absent as a missing one.
pub async fn get_execution(
    client: &impl GenericClient,
    tenant: &str,
    id: ExecutionId,
) -> Result<Option<Execution>> {
    let row = client
        .query_opt(&client.prepare_cached(GET).await?, &[&id.0, &tenant])
        .await?;
    row.as_ref().map(execution_from_row).transpose()
}

/// The API saw these publishes confirmed: drop their outbox marks. Only rows
/// never claimed qualify, so a later retry's mark is never cleared by a
/// stale confirmation.
const MARK_PUBLISHED: &str =
    "UPDATE executions SET publish_due_at = NULL WHERE id = ANY($1) AND attempts = 0 AND status = 'queued'";

pub async fn mark_published(client: &impl GenericClient, ids: &[Uuid]) -> Result<u64> {
    Ok(client
        .execute(&client.prepare_cached(MARK_PUBLISHED).await?, &[&ids])
        .await?)
}

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

const CLAIM: &str = concat!(
    "UPDATE executions SET status = 'running', attempts = attempts + 1, lease_owner = $2, \
     lease_expires_at = now() + make_interval(secs => $3), publish_due_at = NULL, not_before = NULL, \
     started_at = coalesce(started_at, now()), updated_at = now() \
     WHERE id = ANY($1) AND NOT cancel_requested AND (not_before IS NULL OR not_before <= now()) \
       AND (status = 'queued' OR (status = 'running' AND (lease_expires_at < now() OR lease_owner = $2))) \
     RETURNING ",
    execution_columns!()
);
const CLAIM_MISS: &str =
    "SELECT id, status, cancel_requested, coalesce(not_before > now(), false) AS waiting \
     FROM executions WHERE id = ANY($1)";

/// Takes the lease on executions so that this worker alone runs them, in
/// one statement; answers what claiming found for each, in the order given.
pub async fn claim_executions(
    client: &impl GenericClient,
    ids: &[ExecutionId],
    owner: &str,
    lease: Duration,
) -> Result<Vec<Claim>> {
    let secs = lease.as_secs_f64();
    let mut sorted: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    sorted.sort();
    sorted.dedup();
    let rows = client
        .query(
            &client.prepare_cached(CLAIM).await?,
            &[&sorted, &owner, &secs],
        )
        .await?;
    let mut claims = std::collections::HashMap::with_capacity(ids.len());
    for row in &rows {
        let execution = execution_from_row(row)?;
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
    Ok(ids
        .iter()
        .map(|id| claims.remove(id).unwrap_or(Claim::NotFound))
        .collect())
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

const RELEASE: &str =
    "UPDATE executions SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
     publish_due_at = now() + make_interval(secs => $3), updated_at = now() \
     WHERE id = ANY($1) AND lease_owner = $2";

/// Gives leases back (on shutdown) so the redelivered messages can be
/// claimed at once; the outbox mark covers a message the broker lost.
pub async fn release_leases(
    client: &impl GenericClient,
    ids: &[Uuid],
    owner: &str,
    republish_after: Duration,
) -> Result<u64> {
    Ok(client
        .execute(
            &client.prepare_cached(RELEASE).await?,
            &[&ids, &owner, &republish_after.as_secs_f64()],
        )
        .await?)
}

const REAP: &str =
    "UPDATE executions SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
     publish_due_at = now(), updated_at = now() \
     WHERE id IN (SELECT id FROM executions WHERE status = 'running' AND lease_expires_at < now() \
                  ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
     RETURNING id";

/// Requeues executions whose worker died (lease expired) for the relay.
pub async fn reap_expired_leases(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<ExecutionId>> {
    let rows = client
        .query(&client.prepare_cached(REAP).await?, &[&limit])
        .await?;
    Ok(rows.iter().map(|r| ExecutionId(r.get(0))).collect())
}

const DUE: &str =
    "SELECT id, priority FROM executions WHERE publish_due_at <= now() AND status = 'queued' \
     ORDER BY publish_due_at LIMIT $1 FOR UPDATE SKIP LOCKED";
const CLEAR_DUE: &str = "UPDATE executions SET publish_due_at = NULL WHERE id = ANY($1)";

/// Rows whose publish is due, locked for this transaction so concurrent
/// relays never publish the same row at once.
pub async fn lock_due_for_publish(
    tx: &impl GenericClient,
    limit: i64,
) -> Result<Vec<(ExecutionId, i16)>> {
    let rows = tx.query(&tx.prepare_cached(DUE).await?, &[&limit]).await?;
    Ok(rows
        .iter()
        .map(|r| (ExecutionId(r.get(0)), r.get(1)))
        .collect())
}

pub async fn clear_publish_due(tx: &impl GenericClient, ids: &[Uuid]) -> Result<u64> {
    Ok(tx
        .execute(&tx.prepare_cached(CLEAR_DUE).await?, &[&ids])
        .await?)
}

/// How an execution ends.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: ExecutionStatus,
    pub output: Option<serde_json::Value>,
    pub error: Option<ErrorInfo>,
    pub usage: Option<Usage>,
}

/// Terminal transitions and the steps that lead to them (the last
/// generate, the finalize) in one statement: a generate result is never
/// committed without its outcome, nor an outcome without its trace.
const FINISH: &str = concat!(
    "WITH o AS ( \
       SELECT * FROM UNNEST($20::uuid[], $21::text[], $22::jsonb[], $23::text[], $24::text[], $25::int[], \
         $26::int[], $27::int[], $28::float8[]) \
         AS o(id, status, output, error_code, error_message, prompt_tokens, completion_tokens, total_tokens, cost_usd)), \
     done AS ( \
       UPDATE executions e SET status = o.status, output = o.output, error_code = o.error_code, \
         error_message = o.error_message, prompt_tokens = o.prompt_tokens, \
         completion_tokens = o.completion_tokens, total_tokens = o.total_tokens, cost_usd = o.cost_usd, \
         finished_at = now(), updated_at = now(), lease_owner = NULL, lease_expires_at = NULL, \
         publish_due_at = NULL \
       FROM o WHERE e.id = o.id AND e.lease_owner = $19 RETURNING e.id), \
     written AS (",
    record_columns!(),
    "WHERE s.execution_id IN (SELECT id FROM done)",
    on_conflict!(),
    ") SELECT id FROM done"
);

/// One execution's end: its outcome and the steps written with it.
#[derive(Clone, Debug)]
pub struct Finish {
    pub id: ExecutionId,
    pub outcome: Outcome,
    pub steps: Vec<Step>,
}

/// Writes terminal states with their last steps, fenced by `owner`'s
/// leases. Answers the executions finished; one missing from the set had
/// lost its lease (someone else owns its outcome) and nothing of it was
/// written.
pub async fn finish_executions(
    client: &impl GenericClient,
    owner: &str,
    finishes: &[&Finish],
) -> Result<std::collections::HashSet<Uuid>> {
    let mut finishes = finishes.to_vec();
    finishes.sort_by_key(|f| f.id.0);
    let ids: Vec<_> = finishes.iter().map(|f| f.id.0).collect();
    let statuses: Vec<_> = finishes.iter().map(|f| f.outcome.status.as_str()).collect();
    // What Postgres cannot store (NUL) is removed: an outcome always lands.
    let outputs: Vec<_> = finishes
        .iter()
        .map(|f| f.outcome.output.as_ref().map(clean_json))
        .collect();
    let outputs: Vec<_> = outputs.iter().map(|o| o.as_deref()).collect();
    let codes: Vec<_> = finishes
        .iter()
        .map(|f| f.outcome.error.as_ref().map(|e| clean_str(&e.code)))
        .collect();
    let messages: Vec<_> = finishes
        .iter()
        .map(|f| f.outcome.error.as_ref().map(|e| clean_str(&e.message)))
        .collect();
    let usage = |f: fn(&Usage) -> i32| {
        finishes
            .iter()
            .map(|x| x.outcome.usage.as_ref().map(f))
            .collect::<Vec<_>>()
    };
    let (p, c, t) = (
        usage(|u| u.prompt_tokens),
        usage(|u| u.completion_tokens),
        usage(|u| u.total_tokens),
    );
    let costs: Vec<_> = finishes
        .iter()
        .map(|f| f.outcome.usage.and_then(|u| u.cost_usd))
        .collect();
    let steps: Vec<&Step> = finishes.iter().flat_map(|f| f.steps.iter()).collect();
    super::steps::write_steps(
        client,
        FINISH,
        owner,
        &steps,
        &[
            &ids, &statuses, &outputs, &codes, &messages, &p, &c, &t, &costs,
        ],
    )
    .await
}

const SCHEDULE_RETRY: &str =
    "UPDATE executions SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
       error_code = $3, error_message = $4, publish_due_at = now() + make_interval(secs => $5), \
       not_before = now() + make_interval(secs => $5), updated_at = now() \
     WHERE id = $1 AND lease_owner = $2";

/// Gives the execution back to the queue after a retryable error: the
/// relay publishes it again once `delay` has passed, so no worker slot is
/// held while it waits. The last error stays visible meanwhile.
pub async fn schedule_retry(
    client: &impl GenericClient,
    id: ExecutionId,
    owner: &str,
    delay: Duration,
    error: &ErrorInfo,
) -> Result<bool> {
    let n = client
        .execute(
            &client.prepare_cached(SCHEDULE_RETRY).await?,
            &[
                &id.0,
                &owner,
                &clean_str(&error.code),
                &clean_str(&error.message),
                &delay.as_secs_f64(),
            ],
        )
        .await?;
    Ok(n == 1)
}

const REQUEST_CANCEL: &str = concat!(
    "UPDATE executions SET cancel_requested = true, updated_at = now(), \
       status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END, \
       finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END, \
       error_code = CASE WHEN status = 'queued' THEN 'cancelled' ELSE error_code END, \
       error_message = CASE WHEN status = 'queued' THEN 'cancelled before it started' ELSE error_message END, \
       publish_due_at = CASE WHEN status = 'queued' THEN NULL ELSE publish_due_at END \
     WHERE id = $1 AND tenant_id = $2 AND status IN ('queued', 'running') RETURNING ",
    execution_columns!()
);

/// Cancels a queued execution at once, or asks its worker to stop a
/// running one at the next step boundary. None when it is not cancellable
/// (terminal, or not the tenant's).
pub async fn request_cancel(
    client: &impl GenericClient,
    tenant: &str,
    id: ExecutionId,
) -> Result<Option<Execution>> {
    let row = client
        .query_opt(
            &client.prepare_cached(REQUEST_CANCEL).await?,
            &[&id.0, &tenant],
        )
        .await?;
    row.as_ref().map(execution_from_row).transpose()
}

const CANCEL_UNCLAIMED: &str = "UPDATE executions SET status = 'cancelled', finished_at = now(), updated_at = now(), \
       error_code = 'cancelled', error_message = 'cancelled', lease_owner = NULL, lease_expires_at = NULL, \
       publish_due_at = NULL \
     WHERE id = $1 AND cancel_requested \
       AND (status = 'queued' OR (status = 'running' AND lease_expires_at < now()))";

/// Finishes a cancel request that no live worker will act on.
pub async fn cancel_unclaimed(client: &impl GenericClient, id: ExecutionId) -> Result<bool> {
    Ok(client
        .execute(&client.prepare_cached(CANCEL_UNCLAIMED).await?, &[&id.0])
        .await?
        == 1)
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

const FIND_IDEMPOTENT: &str = "SELECT execution_id, request_hash FROM idempotency_keys \
     WHERE tenant_id = $1 AND key = $2 AND expires_at > now()";
const CLAIM_IDEMPOTENCY_KEY: &str =
    "INSERT INTO idempotency_keys (tenant_id, key, request_hash, execution_id, expires_at) \
     VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) \
     ON CONFLICT (tenant_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, \
       execution_id = EXCLUDED.execution_id, created_at = now(), expires_at = EXCLUDED.expires_at \
     WHERE idempotency_keys.expires_at <= now()";

/// The execution an unexpired key created, with that request's hash.
pub async fn find_idempotent(
    client: &impl GenericClient,
    tenant: &str,
    key: &str,
) -> Result<Option<(ExecutionId, String)>> {
    let row = client
        .query_opt(
            &client.prepare_cached(FIND_IDEMPOTENT).await?,
            &[&tenant, &key],
        )
        .await?;
    Ok(row.map(|r| (ExecutionId(r.get(0)), r.get(1))))
}

/// Binds a key to a new execution; false when a live binding exists
/// (another request with the same key won the race).
pub async fn claim_idempotency_key(
    client: &impl GenericClient,
    tenant: &str,
    key: &str,
    request_hash: &str,
    id: ExecutionId,
    ttl: Duration,
) -> Result<bool> {
    let n = client
        .execute(
            &client.prepare_cached(CLAIM_IDEMPOTENCY_KEY).await?,
            &[&tenant, &key, &request_hash, &id.0, &ttl.as_secs_f64()],
        )
        .await?;
    Ok(n == 1)
}

pub(crate) fn parse_status(s: String) -> Result<ExecutionStatus> {
    s.parse()
        .map_err(|e: crate::execution::UnknownStatus| DbError::Data(e.to_string()))
}

fn execution_from_row(row: &Row) -> Result<Execution> {
    let prompt_tokens: Option<i32> = row.try_get("prompt_tokens")?;
    let usage = match prompt_tokens {
        Some(prompt_tokens) => Some(Usage {
            prompt_tokens,
            completion_tokens: row
                .try_get::<_, Option<i32>>("completion_tokens")?
                .unwrap_or(0),
            total_tokens: row.try_get::<_, Option<i32>>("total_tokens")?.unwrap_or(0),
            cost_usd: row.try_get("cost_usd")?,
        }),
        None => None,
    };
    let error = match row.try_get::<_, Option<String>>("error_code")? {
        Some(code) => Some(ErrorInfo {
            code,
            message: row
                .try_get::<_, Option<String>>("error_message")?
                .unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Execution {
        id: ExecutionId(row.try_get("id")?),
        tenant_id: row.try_get("tenant_id")?,
        prompt_name: row.try_get("prompt_name")?,
        prompt_version: row.try_get("prompt_version")?,
        prompt_label: row.try_get("prompt_label")?,
        model: row.try_get("model")?,
        params: row.try_get("params")?,
        input: row.try_get("input")?,
        output: row.try_get("output")?,
        status: parse_status(row.try_get("status")?)?,
        error,
        attempts: row.try_get("attempts")?,
        usage,
        metadata: row.try_get("metadata")?,
        end_user: row.try_get("end_user")?,
        priority: row.try_get("priority")?,
        stream: row.try_get("stream")?,
        webhook_url: row.try_get("webhook_url")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// Every statement of this module, for the test that prepares them all.
pub const ALL_SQL: &[&str] = &[
    INSERT,
    GET,
    MARK_PUBLISHED,
    CLAIM,
    CLAIM_MISS,
    RENEW,
    RELEASE,
    REAP,
    DUE,
    CLEAR_DUE,
    FINISH,
    SCHEDULE_RETRY,
    REQUEST_CANCEL,
    CANCEL_UNCLAIMED,
    CANCEL_REQUESTS,
    FIND_IDEMPOTENT,
    CLAIM_IDEMPOTENCY_KEY,
];

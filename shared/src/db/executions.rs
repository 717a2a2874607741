//! Execution rows: creation (with its outbox mark), reads, cancellation,
//! the retry give-back and the terminal transition with its last steps.
//! Leases live in `leases`, the outbox relay's queries in `outbox`,
//! idempotency keys in `idempotency`. Every write a worker makes here is
//! fenced by its lease (see the invariant in `leases`): a worker that lost
//! its lease changes nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use std::sync::LazyLock;

use serde_json::{json, Value};

use super::events::{self, Logged};
use super::{steps, webhooks, DbError, GenericClient, Result};
use crate::event_log::{EventType, LogEvent};
use crate::execution::{ErrorInfo, Execution, ExecutionId, ExecutionStatus, NewExecution, Usage};
use crate::sanitize::{clean_json, clean_str};
use crate::step::Step;

macro_rules! execution_columns {
    () => {
        "id, tenant_id, prompt_name, prompt_version, prompt_label, prompt_arm, model, params, input, output, status, \
         error_code, error_message, attempts, prompt_tokens, completion_tokens, total_tokens, cost_usd, \
         metadata, end_user, priority, stream, webhook_url, key_id, cache_ttl_secs, cached, reserved, created_at, started_at, finished_at, flags"
    };
}
pub(crate) use execution_columns;

const INSERT: &str = concat!(
    "INSERT INTO executions (id, tenant_id, prompt_name, prompt_version, prompt_label, prompt_arm, model, params, input, \
     metadata, end_user, priority, stream, webhook_url, key_id, cache_ttl_secs, reserved, status, publish_due_at) \
     SELECT n.id, n.tenant_id, n.prompt_name, n.prompt_version, n.prompt_label, n.prompt_arm, n.model, n.params, n.input, \
       n.metadata, n.end_user, n.priority, n.stream, n.webhook_url, n.key_id, n.cache_ttl_secs, n.reserved, 'queued', \
       now() + make_interval(secs => $14) \
     FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::jsonb[], \
       $8::jsonb[], $9::jsonb[], $10::text[], $11::int2[], $12::bool[], $13::text[], $15::timestamptz[], $16::text[], \
       $17::text[], $18::int[], $19::bool[]) \
       AS n(id, tenant_id, prompt_name, prompt_version, prompt_label, model, params, input, metadata, \
         end_user, priority, stream, webhook_url, accept_until, prompt_arm, key_id, cache_ttl_secs, reserved) \
     WHERE n.accept_until IS NULL OR n.accept_until > clock_timestamp() \
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
    let unconditional: Vec<_> = new.iter().map(|n| (*n, None)).collect();
    insert_executions_until(client, &unconditional, republish_after)
        .await?
        .into_iter()
        .zip(new)
        .map(|(e, n)| {
            e.ok_or_else(|| DbError::Data(format!("execution {} was not inserted", n.id)))
        })
        .collect()
}

/// Like `insert_executions`, but a row with an `accept_until` is written
/// only if the statement runs before that time, by the database's clock;
/// `None` answers such a row that was not written. The submit path gives
/// its request deadline here, so a statement that reaches the database
/// after the client was told 503 (a frozen network that thaws, a lock
/// that lets go) writes nothing.
pub async fn insert_executions_until(
    client: &impl GenericClient,
    new: &[(&NewExecution, Option<DateTime<Utc>>)],
    republish_after: Duration,
) -> Result<Vec<Option<Execution>>> {
    let secs = republish_after.as_secs_f64();
    let order: Vec<ExecutionId> = new.iter().map(|(n, _)| n.id).collect();
    // Key order, so concurrent batches never wait on each other in a cycle.
    let mut new = new.to_vec();
    new.sort_by_key(|(n, _)| n.id.0);
    let ids: Vec<_> = new.iter().map(|(n, _)| n.id.0).collect();
    let tenants: Vec<_> = new.iter().map(|(n, _)| n.tenant_id.as_str()).collect();
    let names: Vec<_> = new.iter().map(|(n, _)| n.prompt_name.as_str()).collect();
    let versions: Vec<_> = new.iter().map(|(n, _)| n.prompt_version).collect();
    let labels: Vec<_> = new.iter().map(|(n, _)| n.prompt_label.as_deref()).collect();
    let arms: Vec<_> = new.iter().map(|(n, _)| n.prompt_arm.as_deref()).collect();
    let models: Vec<_> = new.iter().map(|(n, _)| n.model.as_str()).collect();
    let params: Vec<_> = new.iter().map(|(n, _)| &n.params).collect();
    let inputs: Vec<_> = new.iter().map(|(n, _)| &n.input).collect();
    let metadata: Vec<_> = new.iter().map(|(n, _)| &n.metadata).collect();
    let users: Vec<_> = new.iter().map(|(n, _)| n.end_user.as_deref()).collect();
    let priorities: Vec<_> = new.iter().map(|(n, _)| n.priority).collect();
    let streams: Vec<_> = new.iter().map(|(n, _)| n.stream).collect();
    let webhooks: Vec<_> = new.iter().map(|(n, _)| n.webhook_url.as_deref()).collect();
    let accept_until: Vec<_> = new.iter().map(|(_, until)| *until).collect();
    let keys: Vec<_> = new.iter().map(|(n, _)| n.key_id.as_deref()).collect();
    let cache_ttls: Vec<_> = new.iter().map(|(n, _)| n.cache_ttl_secs).collect();
    let reserved: Vec<_> = new.iter().map(|(n, _)| n.reserved).collect();
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
                &accept_until,
                &arms,
                &keys,
                &cache_ttls,
                &reserved,
            ],
        )
        .await?;
    let mut by_id = rows
        .iter()
        .map(|r| execution_from_row(r).map(|e| (e.id, e)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    Ok(order.iter().map(|id| by_id.remove(id)).collect())
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

const GET_MANY: &str = concat!(
    "SELECT ",
    execution_columns!(),
    " FROM executions WHERE id = ANY($1)"
);

/// Several executions by id, in one round trip, for callers that already
/// hold each one's tenant (the webhook role: a delivery names its
/// execution). Absent ones are missing from the map.
pub async fn get_executions(
    client: &impl GenericClient,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Execution>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let rows = client
        .query(&client.prepare_cached(GET_MANY).await?, &[&ids])
        .await?;
    rows.iter()
        .map(|r| execution_from_row(r).map(|e| (e.id.0, e)))
        .collect()
}

/// How an execution ends.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: ExecutionStatus,
    pub output: Option<serde_json::Value>,
    pub error: Option<ErrorInfo>,
    pub usage: Option<Usage>,
    /// The answer came from the response cache: no model was called.
    pub cached: bool,
}

/// Terminal transitions and the steps that lead to them (the last
/// generate, the finalize) in one statement, with the webhook deliveries
/// they owe: a generate result is never committed without its outcome,
/// nor an outcome without its trace and its deliveries. The events it
/// numbers: the steps', then the terminal status, then `done`.
static FINISH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH o AS ( \
           SELECT * FROM UNNEST($2::uuid[], $3::text[], $4::jsonb[], $5::text[], $6::text[], $7::int[], \
             $8::int[], $9::int[], $10::float8[], $11::bool[]) \
             AS o(id, status, output, error_code, error_message, prompt_tokens, completion_tokens, total_tokens, cost_usd, cached)), \
         {steps}, \
         f AS ( \
           UPDATE executions e SET status = o.status, output = o.output, error_code = o.error_code, \
             error_message = o.error_message, prompt_tokens = o.prompt_tokens, \
             completion_tokens = o.completion_tokens, total_tokens = o.total_tokens, cost_usd = o.cost_usd, \
             cached = o.cached, finished_at = now(), updated_at = now(), lease_owner = NULL, lease_expires_at = NULL, \
             publish_due_at = NULL, event_seq = e.event_seq + coalesce(sc.n, 0) + 2 \
           FROM o LEFT JOIN sc ON sc.execution_id = o.id \
           WHERE e.id = o.id AND e.lease_owner = $1 \
           RETURNING e.id, e.tenant_id, e.webhook_url, e.prompt_name, e.event_seq AS last, \
             e.event_seq - coalesce(sc.n, 0) - 2 AS base, e.attempts, o.status, o.error_code, o.error_message, \
             e.model, e.prompt_version, e.end_user, e.key_id, o.prompt_tokens, o.completion_tokens, \
             o.total_tokens, o.cost_usd, o.cached), \
         {write}, \
         {hooks}, \
         {rollup}, \
         {ev} \
         {fence} UNION ALL {step_rows} UNION ALL {status_rows} UNION ALL {done}",
        steps = steps::step_ctes(12),
        write = steps::step_write_ctes("f"),
        hooks = webhooks::deliveries_cte("f"),
        rollup = super::usage::rollup_cte("f"),
        ev = events::status_event_cte(
            "ev",
            "f",
            "last - 1",
            &events::status_json("status", "attempts", &format!("'error', {}", events::error_json("error_code", "error_message"))),
            "true"
        ),
        fence = events::fence_rows("f"),
        step_rows = steps::step_rows(),
        status_rows = events::status_rows("ev"),
        done = events::done_rows("f", "true"),
    )
});

/// One execution's end: its outcome and the steps written with it.
#[derive(Clone, Debug)]
pub struct Finish {
    pub id: ExecutionId,
    pub outcome: Outcome,
    pub steps: Vec<Step>,
}

/// Writes terminal states with their last steps, fenced by `owner`'s
/// leases. Answers the executions finished (one missing from
/// `Logged::written` had lost its lease: someone else owns its outcome,
/// and nothing of it was written) and the events numbered.
pub async fn finish_executions(
    client: &impl GenericClient,
    owner: &str,
    finishes: &[&Finish],
) -> Result<Logged> {
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
    let cached: Vec<bool> = finishes.iter().map(|f| f.outcome.cached).collect();
    let steps: Vec<&Step> = finishes.iter().flat_map(|f| f.steps.iter()).collect();
    steps::write_steps(
        client,
        &FINISH,
        &[
            &owner, &ids, &statuses, &outputs, &codes, &messages, &p, &c, &t, &costs, &cached,
        ],
        &steps,
    )
    .await
}

/// A paid step's result kept on a running execution with the steps that
/// lead to it, before a step that can fail runs: a resumed run reuses the
/// result (unmasked, unlike the step row's copy) instead of paying again.
/// The outcome overwrites it.
static CHECKPOINT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {steps}, \
         f AS ( \
           UPDATE executions e SET output = $3, prompt_tokens = $4, completion_tokens = $5, \
             total_tokens = $6, cost_usd = $7, updated_at = now(), event_seq = e.event_seq + coalesce(sc.n, 0) \
           FROM (SELECT $2::uuid AS id) x LEFT JOIN sc ON sc.execution_id = x.id \
           WHERE e.id = x.id AND e.lease_owner = $1 \
           RETURNING e.id, e.tenant_id, e.prompt_name, e.event_seq AS last, e.event_seq - coalesce(sc.n, 0) AS base), \
         {write} \
         {fence} UNION ALL {step_rows}",
        steps = steps::step_ctes(8),
        write = steps::step_write_ctes("f"),
        fence = events::fence_rows("f"),
        step_rows = steps::step_rows(),
    )
});

/// Writes `steps` of execution `id` and keeps `output` and `usage` on its
/// row, fenced by `owner`'s lease; nothing written when the lease was lost.
pub async fn checkpoint(
    client: &impl GenericClient,
    owner: &str,
    id: ExecutionId,
    output: &serde_json::Value,
    usage: &Usage,
    steps: &[&Step],
) -> Result<Logged> {
    let output = clean_json(output);
    steps::write_steps(
        client,
        &CHECKPOINT,
        &[
            &owner,
            &id.0,
            &*output,
            &usage.prompt_tokens,
            &usage.completion_tokens,
            &usage.total_tokens,
            &usage.cost_usd,
        ],
        steps,
    )
    .await
}

static SCHEDULE_RETRY: LazyLock<String> = LazyLock::new(|| give_back_sql("attempts", "retry"));
/// A deferral does not count the run as an attempt.
static DEFER_CLAIMED: LazyLock<String> =
    LazyLock::new(|| give_back_sql("attempts - 1", "deferred"));

/// Gives a claimed execution back for a delay (`$5` seconds) with the
/// error that says why; `attempts` is the new attempt count, `reason` the
/// `queued` event's.
fn give_back_sql(attempts: &str, reason: &str) -> String {
    format!(
        "WITH f AS (UPDATE executions SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, attempts = {attempts}, \
           error_code = $3, error_message = $4, publish_due_at = now() + make_interval(secs => $5), \
           not_before = now() + make_interval(secs => $5), updated_at = now(), event_seq = event_seq + 1 \
         WHERE id = $1 AND lease_owner = $2 \
         RETURNING id, tenant_id, prompt_name, event_seq AS last, attempts, not_before), \
         {ev} {fence} UNION ALL {status_rows}",
        ev = events::status_event_cte(
            "ev",
            "f",
            "last",
            &events::status_json(
                "'queued'",
                "attempts",
                &format!(
                    "'reason', '{reason}', 'retry_at', {}, 'error', {}",
                    events::ts("not_before"),
                    events::error_json("$3::text", "$4::text")
                )
            ),
            "true"
        ),
        fence = events::fence_rows("f"),
        status_rows = events::status_rows("ev"),
    )
}

/// Gives a claimed execution back for `delay` because a provider limit
/// had no room for its call: like [`schedule_retry`], but the run is not
/// counted as an attempt (the model was not called) and the `queued`
/// event's reason is `deferred`, with `error` saying which limit.
pub async fn defer_claimed(
    client: &impl GenericClient,
    id: ExecutionId,
    owner: &str,
    delay: Duration,
    error: &ErrorInfo,
) -> Result<Logged> {
    give_back(client, &DEFER_CLAIMED, id, owner, delay, error).await
}

/// Gives the execution back to the queue after a retryable error: the
/// relay publishes it again once `delay` has passed, so no worker slot is
/// held while it waits. The last error stays visible meanwhile.
pub async fn schedule_retry(
    client: &impl GenericClient,
    id: ExecutionId,
    owner: &str,
    delay: Duration,
    error: &ErrorInfo,
) -> Result<Logged> {
    give_back(client, &SCHEDULE_RETRY, id, owner, delay, error).await
}

/// Runs one of the give-back statements (`SCHEDULE_RETRY`,
/// `DEFER_CLAIMED`): they take the same parameters.
async fn give_back(
    client: &impl GenericClient,
    sql: &str,
    id: ExecutionId,
    owner: &str,
    delay: Duration,
    error: &ErrorInfo,
) -> Result<Logged> {
    let rows = client
        .query(
            &client.prepare_cached(sql).await?,
            &[
                &id.0,
                &owner,
                &clean_str(&error.code),
                &clean_str(&error.message),
                &delay.as_secs_f64(),
            ],
        )
        .await?;
    Logged::from_rows(&rows)
}

/// Pushes queued executions (not yet claimed) back for their delay
/// without claiming them: no attempt is counted, no event is logged; the
/// relay publishes each again when its delay is over (and claiming
/// refuses it before). Rows no longer queued are left alone; a queued row
/// whose cancel was requested is deferred too (claiming it later cancels
/// it), so no row is left without a publish to come.
const DEFER_QUEUED: &str =
    "UPDATE executions e SET not_before = now() + make_interval(secs => d.secs), \
       publish_due_at = now() + make_interval(secs => d.secs), updated_at = now() \
     FROM (SELECT * FROM UNNEST($1::uuid[], $2::float8[]) AS d(id, secs) ORDER BY id) d \
     WHERE e.id = d.id AND e.status = 'queued' RETURNING e.id";

/// See [`DEFER_QUEUED`]: the ids deferred.
pub async fn defer_queued(
    client: &impl GenericClient,
    deferrals: &[(ExecutionId, Duration)],
) -> Result<Vec<uuid::Uuid>> {
    let mut deferrals = deferrals.to_vec();
    deferrals.sort_by_key(|(id, _)| id.0);
    let ids: Vec<_> = deferrals.iter().map(|(id, _)| id.0).collect();
    let secs: Vec<_> = deferrals.iter().map(|(_, d)| d.as_secs_f64()).collect();
    let rows = client
        .query(&client.prepare_cached(DEFER_QUEUED).await?, &[&ids, &secs])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

static REQUEST_CANCEL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH f AS (UPDATE executions SET cancel_requested = true, updated_at = now(), \
           status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END, \
           finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END, \
           error_code = CASE WHEN status = 'queued' THEN 'cancelled' ELSE error_code END, \
           error_message = CASE WHEN status = 'queued' THEN 'cancelled before it started' ELSE error_message END, \
           publish_due_at = CASE WHEN status = 'queued' THEN NULL ELSE publish_due_at END, \
           event_seq = CASE WHEN status = 'queued' THEN event_seq + 2 ELSE event_seq END \
         WHERE id = $1 AND tenant_id = $2 AND status IN ('queued', 'running') RETURNING *, event_seq AS last), \
         {ev}, {hooks} SELECT {cols}, (SELECT data FROM ev) AS event_data, last FROM f",
        ev = cancelled_event_cte(),
        hooks = webhooks::deliveries_cte("f"),
        cols = execution_columns!(),
    )
});

/// The status event of a cancel that ends an execution (CTE `f` with the
/// updated row and `last`, the number of its `done`).
fn cancelled_event_cte() -> String {
    events::status_event_cte(
        "ev",
        "f",
        "last - 1",
        &events::status_json(
            "'cancelled'",
            "attempts",
            &format!(
                "'error', {}",
                events::error_json("error_code", "error_message")
            ),
        ),
        "status = 'cancelled'",
    )
}

/// A cancel that ended an execution: the events to announce (its
/// cancelled status and `done`).
pub fn cancel_events(execution: &Execution, last: i32, data: Value) -> Vec<LogEvent> {
    let event = |seq, event_type, data| LogEvent {
        execution_id: execution.id,
        tenant_id: execution.tenant_id.clone(),
        prompt_name: execution.prompt_name.clone(),
        seq,
        event_type,
        data,
    };
    vec![
        event(last - 1, EventType::Status, data),
        event(last, EventType::Done, json!({"status": "cancelled"})),
    ]
}

/// Cancels a queued execution at once (with its webhook deliveries), or
/// asks its worker to stop a running one at the next step boundary. None when it is not cancellable
/// (terminal, or not the tenant's); else the execution and, when the
/// cancel ended it, the events it numbered.
pub async fn request_cancel(
    client: &impl GenericClient,
    tenant: &str,
    id: ExecutionId,
) -> Result<Option<(Execution, Vec<LogEvent>)>> {
    let row = client
        .query_opt(
            &client.prepare_cached(&REQUEST_CANCEL).await?,
            &[&id.0, &tenant],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let execution = execution_from_row(&row)?;
    let data: Option<Value> = row.try_get("event_data")?;
    let events = match data {
        Some(data) => cancel_events(&execution, row.try_get("last")?, data),
        None => Vec::new(),
    };
    Ok(Some((execution, events)))
}

static CANCEL_UNCLAIMED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH f AS (UPDATE executions SET status = 'cancelled', finished_at = now(), updated_at = now(), \
           error_code = 'cancelled', error_message = 'cancelled', lease_owner = NULL, lease_expires_at = NULL, \
           publish_due_at = NULL, event_seq = event_seq + 2 \
         WHERE id = $1 AND cancel_requested \
           AND (status = 'queued' OR (status = 'running' AND lease_expires_at < now())) \
         RETURNING *, event_seq AS last), \
         {ev}, {hooks} SELECT {cols}, (SELECT data FROM ev) AS event_data, last FROM f",
        ev = cancelled_event_cte(),
        hooks = webhooks::deliveries_cte("f"),
        cols = execution_columns!(),
    )
});

/// Finishes a cancel request that no live worker will act on, with its
/// webhook deliveries: the events it numbered (none when there was nothing to finish).
pub async fn cancel_unclaimed(
    client: &impl GenericClient,
    id: ExecutionId,
) -> Result<Vec<LogEvent>> {
    let row = client
        .query_opt(&client.prepare_cached(&CANCEL_UNCLAIMED).await?, &[&id.0])
        .await?;
    let Some(row) = row else {
        return Ok(Vec::new());
    };
    let execution = execution_from_row(&row)?;
    let data: Option<Value> = row.try_get("event_data")?;
    Ok(match data {
        Some(data) => cancel_events(&execution, row.try_get("last")?, data),
        None => Vec::new(),
    })
}

pub(crate) fn parse_status(s: String) -> Result<ExecutionStatus> {
    s.parse()
        .map_err(|e: crate::execution::UnknownStatus| DbError::Data(e.to_string()))
}

pub(crate) fn execution_from_row(row: &Row) -> Result<Execution> {
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
        prompt_arm: row.try_get("prompt_arm")?,
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
        key_id: row.try_get("key_id")?,
        cache_ttl_secs: row.try_get("cache_ttl_secs")?,
        cached: row.try_get("cached")?,
        reserved: row.try_get("reserved")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        flags: row.try_get("flags")?,
    })
}

/// What `list_executions` filters on; `None` is no filter.
#[derive(Clone, Debug, Default)]
pub struct ExecutionFilter<'a> {
    pub prompt: Option<&'a str>,
    pub version: Option<i32>,
    pub status: Option<&'a str>,
    pub user: Option<&'a str>,
    /// Only executions older than this one (the previous page's last).
    pub before: Option<ExecutionId>,
}

const LIST_FILTERS: &str = "AND ($3::int IS NULL OR prompt_version = $3) \
     AND ($4::text IS NULL OR status = $4) AND ($5::text IS NULL OR end_user = $5) \
     AND ($6::uuid IS NULL OR id < $6) ORDER BY id DESC LIMIT $7";
/// One prompt's: the (tenant_id, prompt_name, id DESC) index, newest first.
static LIST_BY_PROMPT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM executions WHERE tenant_id = $1 AND prompt_name = $2 {LIST_FILTERS}",
        execution_columns!()
    )
});
/// Every prompt's: the primary key (UUIDv7, time ordered) walked backwards.
static LIST_ALL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM executions WHERE tenant_id = $1 AND $2::text IS NULL {LIST_FILTERS}",
        execution_columns!()
    )
});

/// A tenant's executions matching `filter`, newest first, at most `limit`.
pub async fn list_executions(
    client: &impl GenericClient,
    tenant: &str,
    filter: &ExecutionFilter<'_>,
    limit: i64,
) -> Result<Vec<Execution>> {
    let sql = if filter.prompt.is_some() {
        LIST_BY_PROMPT.as_str()
    } else {
        LIST_ALL.as_str()
    };
    let before = filter.before.map(|id| id.0);
    client
        .query(
            &client.prepare_cached(sql).await?,
            &[
                &tenant,
                &filter.prompt,
                &filter.version,
                &filter.status,
                &filter.user,
                &before,
                &limit,
            ],
        )
        .await?
        .iter()
        .map(execution_from_row)
        .collect()
}

/// Every statement of this module, for the test that prepares them all.
pub static ALL_SQL: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    vec![
        DEFER_QUEUED,
        DEFER_CLAIMED.as_str(),
        INSERT,
        GET,
        GET_MANY,
        FINISH.as_str(),
        CHECKPOINT.as_str(),
        SCHEDULE_RETRY.as_str(),
        REQUEST_CANCEL.as_str(),
        CANCEL_UNCLAIMED.as_str(),
        LIST_BY_PROMPT.as_str(),
        LIST_ALL.as_str(),
    ]
});

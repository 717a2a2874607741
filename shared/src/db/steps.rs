//! Step rows: the execution's trace. Writes are upserts keyed by
//! (execution, seq), so a step is first written running and then finished,
//! and they are fenced by the writer's lease.

use std::borrow::Cow;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::events::{self, Logged};
use super::{DbError, GenericClient, Result};
use crate::execution::{ErrorInfo, ExecutionId, Usage};
use crate::sanitize::{clean_json, clean_str};
use crate::step::{Step, StepKind, StepStatus};

/// The step columns, in the order `write_steps` binds their arrays.
const COLUMNS: &[(&str, &str)] = &[
    ("execution_id", "uuid"),
    ("seq", "int"),
    ("kind", "text"),
    ("attempt", "int"),
    ("status", "text"),
    ("started_at", "timestamptz"),
    ("finished_at", "timestamptz"),
    ("latency_ms", "float8"),
    ("model", "text"),
    ("params", "jsonb"),
    ("prompt_tokens", "int"),
    ("completion_tokens", "int"),
    ("total_tokens", "int"),
    ("input", "jsonb"),
    ("output", "jsonb"),
    ("error_code", "text"),
    ("error_message", "text"),
    ("retryable", "bool"),
];

/// The CTEs naming a statement's step rows and the events they bring,
/// the step arrays bound from `$first` on (a statement's own parameters
/// come before them): `s` (the rows), `sn` (per row: `ns` is 1 when the
/// row starts a step, `nf` 1 when it finishes one; a row rewritten as it
/// was brings none) and `sc` (per execution: `n`, their sum). The one
/// place that numbers the step parameters.
pub(crate) fn step_ctes(first: usize) -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    let arrays: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("${}::{ty}[]", first + i))
        .collect();
    format!(
        "s AS (SELECT * FROM UNNEST({arrays}) AS s({cols})), \
         sn AS (SELECT s.execution_id, s.seq, (o.seq IS NULL)::int AS ns, \
           (s.status <> 'running' AND (o.seq IS NULL OR o.status = 'running'))::int AS nf \
           FROM s LEFT JOIN execution_steps o ON o.execution_id = s.execution_id AND o.seq = s.seq), \
         sc AS (SELECT execution_id, sum(ns + nf)::int AS n FROM sn GROUP BY execution_id)",
        cols = names.join(", "),
        arrays = arrays.join(", "),
    )
}

/// The CTEs writing the step rows of the executions in CTE `fenced`
/// (columns `id` and `base`, its last event number before the statement),
/// numbering their events from `base + 1` in step order: `num` (each row's
/// `before`, the last number ahead of its events) and `written` (the
/// upsert; a step is written running and then finished).
pub(crate) fn step_write_ctes(fenced: &str) -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    let updates: Vec<String> = names
        .iter()
        .filter(|n| {
            !matches!(
                **n,
                "execution_id" | "seq" | "kind" | "attempt" | "started_at"
            )
        })
        .map(|n| format!("{n} = EXCLUDED.{n}"))
        .collect();
    format!(
        "num AS (SELECT sn.*, (f.base + coalesce(sum(sn.ns + sn.nf) OVER (PARTITION BY sn.execution_id \
           ORDER BY sn.seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0))::int AS before \
           FROM sn JOIN {fenced} f ON f.id = sn.execution_id), \
         written AS (INSERT INTO execution_steps ({cols}, started_event, finished_event) \
           SELECT s.*, CASE WHEN num.ns = 1 THEN num.before + 1 END, \
             CASE WHEN num.nf = 1 THEN num.before + num.ns + 1 END \
           FROM s JOIN num ON num.execution_id = s.execution_id AND num.seq = s.seq \
           ORDER BY s.execution_id, s.seq \
           ON CONFLICT (execution_id, seq) DO UPDATE SET {updates}, \
             finished_event = coalesce(execution_steps.finished_event, EXCLUDED.finished_event))",
        cols = names.join(", "),
        updates = updates.join(", "),
    )
}

/// Rows of `events::ROW_SHAPE` for the step events CTE `num` numbered.
pub(crate) fn step_rows() -> &'static str {
    "SELECT execution_id, NULL::text, NULL::text, before + 1, 'step_started'::text, seq, NULL::jsonb \
       FROM num WHERE ns = 1 \
     UNION ALL SELECT execution_id, NULL::text, NULL::text, before + ns + 1, 'step_finished'::text, seq, NULL::jsonb \
       FROM num WHERE nf = 1"
}

/// Step writes of running executions: `$1` is the lease owner. The update
/// that numbers an execution's events is its fence (see the invariant in
/// `leases`).
static RECORD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {}, \
         f AS (UPDATE executions e SET event_seq = e.event_seq + sc.n FROM sc \
           WHERE e.id = sc.execution_id AND e.lease_owner = $1 \
           RETURNING e.id, e.tenant_id, e.prompt_name, e.event_seq AS last, e.event_seq - sc.n AS base), \
         {} \
         {} UNION ALL {}",
        step_ctes(2),
        step_write_ctes("f"),
        events::fence_rows("f"),
        step_rows(),
    )
});

/// Writes (or updates) steps of any number of executions in one statement,
/// each execution's fenced by `owner`'s lease on it. Answers the
/// executions whose steps were written: one missing from the set had lost
/// its lease, and none of its steps were written.
pub async fn record_steps(
    client: &impl GenericClient,
    owner: &str,
    steps: &[&Step],
) -> Result<Logged> {
    write_steps(client, &RECORD, &[&owner], steps).await
}

/// Runs `sql` (built with `step_ctes`), binding `leading` first and then
/// one array per step column, and answers what it wrote and numbered.
/// Rows go in in key order, so concurrent batches lock rows in the same
/// order.
pub(crate) async fn write_steps(
    client: &impl GenericClient,
    sql: &str,
    leading: &[&(dyn ToSql + Sync)],
    steps: &[&Step],
) -> Result<Logged> {
    let mut steps = steps.to_vec();
    steps.sort_by_key(|s| (s.execution_id.0, s.seq));
    let usage = |f: fn(&Usage) -> i32| {
        steps
            .iter()
            .map(|s| s.usage.as_ref().map(f))
            .collect::<Vec<_>>()
    };
    let ids: Vec<_> = steps.iter().map(|s| s.execution_id.0).collect();
    let seqs: Vec<_> = steps.iter().map(|s| s.seq).collect();
    let kinds: Vec<_> = steps.iter().map(|s| s.kind.name()).collect();
    let attempts: Vec<_> = steps.iter().map(|s| s.attempt).collect();
    let statuses: Vec<_> = steps.iter().map(|s| s.status.as_str()).collect();
    let started: Vec<_> = steps.iter().map(|s| s.started_at).collect();
    let finished: Vec<_> = steps.iter().map(|s| s.finished_at).collect();
    let latency: Vec<_> = steps.iter().map(|s| s.latency_ms).collect();
    let models: Vec<_> = steps.iter().map(|s| s.model.as_deref()).collect();
    // What Postgres cannot store (NUL) is removed here, whatever wrote it.
    let json = |f: fn(&Step) -> Option<&serde_json::Value>| {
        steps
            .iter()
            .map(|s| f(s).map(clean_json))
            .collect::<Vec<_>>()
    };
    let (params, inputs, outputs) = (
        json(|s| s.params.as_ref()),
        json(|s| s.input.as_ref()),
        json(|s| s.output.as_ref()),
    );
    let (params, inputs, outputs) = (refs(&params), refs(&inputs), refs(&outputs));
    let codes: Vec<_> = steps
        .iter()
        .map(|s| s.error.as_ref().map(|e| clean_str(&e.code)))
        .collect();
    let messages: Vec<_> = steps
        .iter()
        .map(|s| s.error.as_ref().map(|e| clean_str(&e.message)))
        .collect();
    let retryable: Vec<_> = steps.iter().map(|s| s.retryable).collect();
    let (prompt_tokens, completion_tokens, total_tokens) = (
        usage(|u| u.prompt_tokens),
        usage(|u| u.completion_tokens),
        usage(|u| u.total_tokens),
    );
    let mut all: Vec<&(dyn ToSql + Sync)> = leading.to_vec();
    all.extend_from_slice(&[
        &ids,
        &seqs,
        &kinds,
        &attempts,
        &statuses,
        &started,
        &finished,
        &latency,
        &models,
        &params,
        &prompt_tokens,
        &completion_tokens,
        &total_tokens,
        &inputs,
        &outputs,
        &codes,
        &messages,
        &retryable,
    ]);
    debug_assert_eq!(all.len(), leading.len() + COLUMNS.len());
    let rows = client
        .query(&client.prepare_cached(sql).await?, &all)
        .await?;
    Logged::from_rows(&rows)
}

fn refs<'a>(v: &'a [Option<Cow<'_, serde_json::Value>>]) -> Vec<Option<&'a serde_json::Value>> {
    v.iter().map(|c| c.as_deref()).collect()
}

const LIST: &str = "SELECT s.execution_id, s.seq, s.kind, s.attempt, s.status, s.started_at, s.finished_at, \
       s.latency_ms, s.model, s.params, s.prompt_tokens, s.completion_tokens, s.total_tokens, s.input, s.output, \
       s.error_code, s.error_message, s.retryable \
     FROM execution_steps s JOIN executions e ON e.id = s.execution_id \
     WHERE s.execution_id = $1 AND e.tenant_id = $2 ORDER BY s.seq";

/// The steps of an execution of `tenant`, in order.
pub async fn list_steps(
    client: &impl GenericClient,
    tenant: &str,
    id: ExecutionId,
) -> Result<Vec<Step>> {
    let rows = client
        .query(&client.prepare_cached(LIST).await?, &[&id.0, &tenant])
        .await?;
    rows.iter().map(step_from_row).collect()
}

const LIST_NUMBERED: &str =
    "SELECT execution_id, seq, kind, attempt, status, started_at, finished_at, \
       latency_ms, model, params, prompt_tokens, completion_tokens, total_tokens, input, output, \
       error_code, error_message, retryable, started_event, finished_event \
     FROM execution_steps WHERE execution_id = $1 AND (started_event > $2 OR finished_event > $2) \
     ORDER BY seq";

/// The steps of an execution with an event numbered after `after`, with
/// the numbers of their started and finished events (the caller has
/// checked the tenant).
pub(crate) async fn list_numbered_steps(
    client: &impl GenericClient,
    id: ExecutionId,
    after: i32,
) -> Result<Vec<(Step, Option<i32>, Option<i32>)>> {
    let rows = client
        .query(
            &client.prepare_cached(LIST_NUMBERED).await?,
            &[&id.0, &after],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                step_from_row(r)?,
                r.try_get("started_event")?,
                r.try_get("finished_event")?,
            ))
        })
        .collect()
}

fn step_from_row(row: &Row) -> Result<Step> {
    let kind: String = row.try_get("kind")?;
    let status: String = row.try_get("status")?;
    let prompt_tokens: Option<i32> = row.try_get("prompt_tokens")?;
    let completion_tokens: Option<i32> = row.try_get("completion_tokens")?;
    let total_tokens: Option<i32> = row.try_get("total_tokens")?;
    let usage = prompt_tokens.map(|p| Usage {
        prompt_tokens: p,
        completion_tokens: completion_tokens.unwrap_or(0),
        total_tokens: total_tokens.unwrap_or(0),
        cost_usd: None,
    });
    let error = row
        .try_get::<_, Option<String>>("error_code")?
        .map(|code| -> Result<ErrorInfo> {
            Ok(ErrorInfo {
                code,
                message: row
                    .try_get::<_, Option<String>>("error_message")?
                    .unwrap_or_default(),
            })
        })
        .transpose()?;
    let started_at: DateTime<Utc> = row.try_get("started_at")?;
    Ok(Step {
        execution_id: ExecutionId(row.try_get("execution_id")?),
        seq: row.try_get("seq")?,
        kind: StepKind::try_from(kind).map_err(DbError::Data)?,
        attempt: row.try_get("attempt")?,
        status: StepStatus::parse(&status)
            .ok_or_else(|| DbError::Data(format!("step status {status:?}")))?,
        started_at,
        finished_at: row.try_get("finished_at")?,
        latency_ms: row.try_get("latency_ms")?,
        model: row.try_get("model")?,
        params: row.try_get("params")?,
        usage,
        input: row.try_get("input")?,
        output: row.try_get("output")?,
        error,
        retryable: row.try_get("retryable")?,
    })
}

/// Every statement of this module, for the test that prepares them all.
pub static ALL_SQL: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| vec![RECORD.as_str(), LIST, LIST_NUMBERED]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_parameters_are_numbered_from_the_first_free_one() {
        let sql = step_ctes(11);
        assert!(sql.contains("UNNEST($11::uuid[], $12::int[]"), "{sql}");
        assert!(sql.contains("$28::bool[])"), "{sql}");
        assert!(!sql.contains("$29") && !sql.contains("$10:"), "{sql}");
        let write = step_write_ctes("f");
        assert!(
            write.contains("retryable = EXCLUDED.retryable") && !write.contains("seq = EXCLUDED")
        );
    }
}

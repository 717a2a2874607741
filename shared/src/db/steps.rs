//! Step rows: the execution's trace. Writes are upserts keyed by
//! (execution, seq), so a step is first written running and then finished,
//! and they are fenced by the writer's lease.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

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

/// `INSERT INTO execution_steps … SELECT s.* FROM UNNEST(…) AS s(…) WHERE
/// <filter> ON CONFLICT … DO UPDATE …`, the step arrays bound from `$first`
/// on (a statement's own parameters come before them). One statement
/// writes any number of steps; the upsert lets a step be written running
/// and then finished. The one place that numbers the step parameters.
pub(crate) fn upsert_sql(first: usize, filter: &str) -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    let arrays: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("${}::{ty}[]", first + i))
        .collect();
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
        "INSERT INTO execution_steps ({cols}) SELECT s.* FROM UNNEST({arrays}) AS s({cols}) \
         WHERE {filter} ON CONFLICT (execution_id, seq) DO UPDATE SET {updates}",
        cols = names.join(", "),
        arrays = arrays.join(", "),
        updates = updates.join(", "),
    )
}

/// Step writes of running executions: `$1` is the lease owner; the fence
/// is per execution (see the invariant in `leases`).
static RECORD: LazyLock<String> = LazyLock::new(|| {
    upsert_sql(
        2,
        "EXISTS (SELECT 1 FROM executions e WHERE e.id = s.execution_id AND e.lease_owner = $1)",
    ) + " RETURNING execution_id"
});

/// Writes (or updates) steps of any number of executions in one statement,
/// each execution's fenced by `owner`'s lease on it. Answers the
/// executions whose steps were written: one missing from the set had lost
/// its lease, and none of its steps were written.
pub async fn record_steps(
    client: &impl GenericClient,
    owner: &str,
    steps: &[&Step],
) -> Result<HashSet<Uuid>> {
    write_steps(client, &RECORD, &[&owner], steps).await
}

/// Runs `sql` (built with `upsert_sql`), binding `leading` first and then
/// one array per step column, and answers the execution ids it returns.
/// Rows go in in key order, so concurrent batches lock rows in the same
/// order.
pub(crate) async fn write_steps(
    client: &impl GenericClient,
    sql: &str,
    leading: &[&(dyn ToSql + Sync)],
    steps: &[&Step],
) -> Result<HashSet<Uuid>> {
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
    Ok(rows.iter().map(|r| r.get(0)).collect())
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
pub static ALL_SQL: LazyLock<Vec<&'static str>> = LazyLock::new(|| vec![RECORD.as_str(), LIST]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_parameters_are_numbered_from_the_first_free_one() {
        let sql = upsert_sql(11, "true");
        assert!(sql.contains("UNNEST($11::uuid[], $12::int[]"), "{sql}");
        assert!(sql.contains("$28::bool[])"), "{sql}");
        assert!(!sql.contains("$29") && !sql.contains("$10:"), "{sql}");
        assert!(sql.contains("retryable = EXCLUDED.retryable") && !sql.contains("seq = EXCLUDED"));
    }
}

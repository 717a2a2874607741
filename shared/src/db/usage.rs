//! The usage rollup: tokens, executions and cost per tenant, hour, model,
//! prompt version, end user and key. Workers add to it in the statement
//! that finishes executions ([`rollup_cte`] is part of `executions`'
//! `FINISH`), so it costs no commit of its own; readers sum its rows and
//! never scan executions.
//!
//! Invariant: every execution a worker finishes is counted exactly once,
//! in the same transaction that makes it terminal (a lost lease writes
//! neither). Rows are sharded by the writing backend (`pg_backend_pid()`):
//! concurrent transactions are on different backends, so they never wait
//! on each other's rollup rows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{GenericClient, Result};

/// The CTE `u` adding the executions finished in CTE `fenced` (columns
/// `tenant_id`, `model`, `prompt_name`, `prompt_version`, `end_user`,
/// `key_id`, `status`, `cached` and the token and cost columns) to the
/// rollup of the current hour (UTC). Groups are inserted in key order.
pub(crate) fn rollup_cte(fenced: &str) -> String {
    format!(
        "u AS (INSERT INTO usage_rollup AS r (tenant_id, hour, model, prompt_name, prompt_version, \
           end_user, key_id, shard, executions, succeeded, failed, cancelled, cached, prompt_tokens, \
           completion_tokens, total_tokens, cost_usd) \
         SELECT tenant_id, date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', model, \
           prompt_name, prompt_version, coalesce(end_user, ''), coalesce(key_id, ''), pg_backend_pid(), \
           count(*), count(*) FILTER (WHERE status = 'succeeded'), \
           count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'cancelled'), \
           count(*) FILTER (WHERE cached), sum(coalesce(prompt_tokens, 0)), \
           sum(coalesce(completion_tokens, 0)), sum(coalesce(total_tokens, 0)), \
           sum(coalesce(cost_usd, 0)) \
         FROM {fenced} GROUP BY tenant_id, model, prompt_name, prompt_version, coalesce(end_user, ''), \
           coalesce(key_id, '') \
         ORDER BY tenant_id, model, prompt_name, prompt_version, coalesce(end_user, ''), coalesce(key_id, '') \
         ON CONFLICT (tenant_id, hour, model, prompt_name, prompt_version, end_user, key_id, shard) \
         DO UPDATE SET executions = r.executions + EXCLUDED.executions, \
           succeeded = r.succeeded + EXCLUDED.succeeded, failed = r.failed + EXCLUDED.failed, \
           cancelled = r.cancelled + EXCLUDED.cancelled, cached = r.cached + EXCLUDED.cached, \
           prompt_tokens = r.prompt_tokens + EXCLUDED.prompt_tokens, \
           completion_tokens = r.completion_tokens + EXCLUDED.completion_tokens, \
           total_tokens = r.total_tokens + EXCLUDED.total_tokens, \
           cost_usd = r.cost_usd + EXCLUDED.cost_usd \
         RETURNING 1)"
    )
}

/// What usage figures are grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Model,
    Prompt,
    Version,
    User,
    Key,
    Day,
}

impl GroupBy {
    pub const NAMES: &'static [&'static str] =
        &["model", "prompt", "version", "user", "key", "day"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "model" => Self::Model,
            "prompt" => Self::Prompt,
            "version" => Self::Version,
            "user" => Self::User,
            "key" => Self::Key,
            "day" => Self::Day,
            _ => return None,
        })
    }

    /// The statement for this grouping: one fixed text per grouping, so
    /// nothing of the request is ever spliced into SQL.
    fn sql(self) -> &'static str {
        match self {
            Self::Model => BY_MODEL,
            Self::Prompt => BY_PROMPT,
            Self::Version => BY_VERSION,
            Self::User => BY_USER,
            Self::Key => BY_KEY,
            Self::Day => BY_DAY,
        }
    }
}

macro_rules! usage_sql {
    ($group:expr) => {
        concat!(
            "SELECT ",
            $group,
            " AS grp, sum(executions)::int8 AS executions, sum(succeeded)::int8 AS succeeded, \
             sum(failed)::int8 AS failed, sum(cancelled)::int8 AS cancelled, sum(cached)::int8 AS cached, \
             sum(prompt_tokens)::int8 AS prompt_tokens, sum(completion_tokens)::int8 AS completion_tokens, \
             sum(total_tokens)::int8 AS total_tokens, sum(cost_usd)::float8 AS cost_usd \
             FROM usage_rollup WHERE tenant_id = $1 AND hour >= $2 AND hour < $3 \
             GROUP BY grp ORDER BY grp"
        )
    };
}

const BY_MODEL: &str = usage_sql!("model");
const BY_PROMPT: &str = usage_sql!("prompt_name");
const BY_VERSION: &str = usage_sql!("prompt_name || ' v' || prompt_version");
const BY_USER: &str = usage_sql!("end_user");
const BY_KEY: &str = usage_sql!("key_id");
const BY_DAY: &str = usage_sql!("to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD')");

/// One group's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct UsageRow {
    /// The group's value: a model, a prompt, `<prompt> v<version>`, an end
    /// user (empty: none), a key id, or a UTC day `YYYY-MM-DD`.
    pub group: String,
    /// Executions finished by workers (whatever their status).
    pub executions: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// Answered from the response cache (no model call, no cost).
    pub cached: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    /// From the configured prices of each model (0 when none is set).
    pub cost_usd: f64,
}

/// The figures of `tenant` for the hours in `[from, to)` (an hour is
/// counted when it starts in the range), grouped by `group`.
pub async fn usage(
    client: &impl GenericClient,
    tenant: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    group: GroupBy,
) -> Result<Vec<UsageRow>> {
    let rows = client
        .query(
            &client.prepare_cached(group.sql()).await?,
            &[&tenant, &from, &to],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(UsageRow {
                group: r.try_get("grp")?,
                executions: r.try_get("executions")?,
                succeeded: r.try_get("succeeded")?,
                failed: r.try_get("failed")?,
                cancelled: r.try_get("cancelled")?,
                cached: r.try_get("cached")?,
                prompt_tokens: r.try_get("prompt_tokens")?,
                completion_tokens: r.try_get("completion_tokens")?,
                total_tokens: r.try_get("total_tokens")?,
                cost_usd: r.try_get("cost_usd")?,
            })
        })
        .collect()
}

/// Every statement of this module, for the test that prepares them all.
pub const ALL_SQL: &[&str] = &[BY_MODEL, BY_PROMPT, BY_VERSION, BY_USER, BY_KEY, BY_DAY];

//! Per-version figures of one prompt, for deciding a promotion from
//! evidence: one aggregate over the prompt's executions, read through the
//! (tenant_id, prompt_name, id) index. `since` becomes an id bound (ids are
//! UUIDv7, so they sort by creation time).

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{GenericClient, Result};

/// One version's figures. Rates are over finished executions; latency is
/// end to end (accepted to finished) of finished executions; tokens and
/// cost are averaged over the executions that report them.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct VersionStats {
    pub version: i32,
    pub executions: i64,
    /// Terminal ones; the rates are over these.
    pub finished: i64,
    pub succeeded: i64,
    pub invalid_output: i64,
    pub success_rate: Option<f64>,
    pub invalid_output_rate: Option<f64>,
    /// Accepted to finished, of finished executions.
    pub p50_latency_ms: Option<f64>,
    pub p95_latency_ms: Option<f64>,
    pub tokens_per_execution: Option<f64>,
    pub cost_per_execution_usd: Option<f64>,
}

const STATS: &str = "SELECT prompt_version, count(*) AS executions, \
       count(*) FILTER (WHERE finished_at IS NOT NULL) AS finished, \
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded, \
       count(*) FILTER (WHERE status = 'failed' AND error_code = 'invalid_output') AS invalid_output, \
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at) * 1000) \
         FILTER (WHERE finished_at IS NOT NULL) AS p50, \
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at) * 1000) \
         FILTER (WHERE finished_at IS NOT NULL) AS p95, \
       avg(total_tokens)::float8 AS tokens, avg(cost_usd) AS cost \
     FROM executions \
     WHERE tenant_id = $1 AND prompt_name = $2 AND ($3::text IS NULL OR prompt_label = $3) \
       AND ($4::uuid IS NULL OR id >= $4) \
     GROUP BY prompt_version ORDER BY prompt_version";

/// Figures per version of `prompt` (executions through `label` only, when
/// given; created at or after `since`, when given).
pub async fn prompt_stats(
    client: &impl GenericClient,
    tenant: &str,
    prompt: &str,
    label: Option<&str>,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<VersionStats>> {
    let bound = since.map(first_id_at);
    let rows = client
        .query(
            &client.prepare_cached(STATS).await?,
            &[&tenant, &prompt, &label, &bound],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let finished: i64 = r.try_get("finished")?;
            let succeeded: i64 = r.try_get("succeeded")?;
            let invalid_output: i64 = r.try_get("invalid_output")?;
            let rate = |n: i64| (finished > 0).then(|| n as f64 / finished as f64);
            Ok(VersionStats {
                version: r.try_get("prompt_version")?,
                executions: r.try_get("executions")?,
                finished,
                succeeded,
                invalid_output,
                success_rate: rate(succeeded),
                invalid_output_rate: rate(invalid_output),
                p50_latency_ms: r.try_get("p50")?,
                p95_latency_ms: r.try_get("p95")?,
                tokens_per_execution: r.try_get("tokens")?,
                cost_per_execution_usd: r.try_get("cost")?,
            })
        })
        .collect()
}

/// The smallest UUIDv7 of the millisecond `at`: every id created at or
/// after `at` sorts at or after it.
pub fn first_id_at(at: DateTime<Utc>) -> Uuid {
    let ms = at.timestamp_millis().max(0) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

/// Every statement of this module, for the test that prepares them all.
pub const ALL_SQL: &[&str] = &[STATS];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_id_bound_sorts_before_ids_of_its_millisecond_and_after_earlier_ones() {
        let before = Uuid::now_v7();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let at = Utc::now();
        let bound = first_id_at(at);
        std::thread::sleep(std::time::Duration::from_millis(1));
        let after = Uuid::now_v7();
        assert!(before < bound, "{before} {bound}");
        assert!(bound <= after);
        assert_eq!(bound.get_version_num(), 7);
    }
}

//! Usage figures (`GET /v1/usage`): the rollup the workers keep, summed
//! for one tenant over a time range and grouped by one dimension.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use llmq_shared::db::usage::{self as db, GroupBy, UsageRow};
use llmq_shared::db::{DbError, Pool};
use llmq_shared::ids::TenantId;

use crate::services::error::{Result, ServiceError};

/// A usage question in domain terms.
#[derive(Clone, Debug)]
pub struct UsageQuery {
    /// Start of the range; rounded down to its hour (the rollup's grain).
    pub from: DateTime<Utc>,
    /// End of the range (exclusive): hours starting before it count.
    pub to: DateTime<Utc>,
    pub group_by: GroupBy,
}

impl UsageQuery {
    /// From the query string's words: RFC 3339 times (default: the last
    /// 24 hours up to now) and a grouping name (default `model`).
    pub fn parse(from: Option<&str>, to: Option<&str>, group_by: Option<&str>) -> Result<Self> {
        let time = |field: &str, raw: &str| {
            DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ServiceError::InvalidRequest(format!("{field}: not an RFC 3339 time: {e}"))
                })
        };
        let to = to
            .map(|t| time("to", t))
            .transpose()?
            .unwrap_or_else(Utc::now);
        let from = from
            .map(|f| time("from", f))
            .transpose()?
            .unwrap_or(to - TimeDelta::hours(24));
        if from >= to {
            return Err(ServiceError::InvalidRequest(
                "from must be before to".into(),
            ));
        }
        let group_by = match group_by {
            None => GroupBy::Model,
            Some(g) => GroupBy::parse(g).ok_or_else(|| {
                ServiceError::InvalidRequest(format!(
                    "group_by must be one of {}",
                    GroupBy::NAMES.join(", ")
                ))
            })?,
        };
        let from = from.duration_trunc(TimeDelta::hours(1)).unwrap_or(from);
        Ok(Self { from, to, group_by })
    }
}

/// The figures of `tenant` for `query`. Prompts are named as the tenant
/// knows them (the registry keys another organisation's as `<org>/<name>`).
pub async fn usage(pool: &Pool, tenant: &TenantId, query: &UsageQuery) -> Result<Vec<UsageRow>> {
    let client = pool.get().await.map_err(DbError::from)?;
    let mut rows = db::usage(
        &client,
        tenant.as_str(),
        query.from,
        query.to,
        query.group_by,
    )
    .await?;
    if matches!(query.group_by, GroupBy::Prompt | GroupBy::Version) {
        for row in &mut rows {
            row.group = llmq_shared::ids::public_prompt_name(&row.group).to_string();
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_starts_on_an_hour_and_bad_words_are_refused() {
        let q = UsageQuery::parse(
            Some("2026-01-02T10:45:00Z"),
            Some("2026-01-03T00:00:00Z"),
            Some("day"),
        )
        .unwrap();
        assert_eq!(q.from.to_rfc3339(), "2026-01-02T10:00:00+00:00");
        assert_eq!(q.group_by, GroupBy::Day);
        assert!(UsageQuery::parse(None, None, Some("colour")).is_err());
        assert!(UsageQuery::parse(Some("yesterday"), None, None).is_err());
        assert!(UsageQuery::parse(
            Some("2026-01-03T00:00:00Z"),
            Some("2026-01-02T00:00:00Z"),
            None
        )
        .is_err());
    }
}

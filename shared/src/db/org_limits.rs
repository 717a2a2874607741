//! Per-organisation limit settings: the overrides of the configured
//! defaults, one JSON object per tenant (see `crate::limits`).

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{GenericClient, Result};

/// An organisation's stored overrides.
#[derive(Clone, Debug)]
pub struct StoredOrgLimits {
    pub overrides: Value,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

const GET_ORG_LIMITS: &str =
    "SELECT overrides, updated_at, updated_by FROM org_limits WHERE tenant_id = $1";
const PUT_ORG_LIMITS: &str =
    "INSERT INTO org_limits (tenant_id, overrides, updated_at, updated_by) \
     VALUES ($1, $2, now(), $3) \
     ON CONFLICT (tenant_id) DO UPDATE SET overrides = EXCLUDED.overrides, \
       updated_at = now(), updated_by = EXCLUDED.updated_by \
     RETURNING overrides, updated_at, updated_by";

/// Every statement of this module, for the test that prepares them all.
pub const ALL_SQL: &[&str] = &[GET_ORG_LIMITS, PUT_ORG_LIMITS];

/// The organisation's overrides, if it has any stored.
pub async fn get_org_limits(
    client: &impl GenericClient,
    tenant: &str,
) -> Result<Option<StoredOrgLimits>> {
    let stmt = client.prepare_cached(GET_ORG_LIMITS).await?;
    Ok(client
        .query_opt(&stmt, &[&tenant])
        .await?
        .map(|row| StoredOrgLimits {
            overrides: row.get(0),
            updated_at: row.get(1),
            updated_by: row.get(2),
        }))
}

/// Replaces the organisation's overrides.
pub async fn put_org_limits(
    client: &impl GenericClient,
    tenant: &str,
    overrides: &Value,
    actor: &str,
) -> Result<StoredOrgLimits> {
    let stmt = client.prepare_cached(PUT_ORG_LIMITS).await?;
    let row = client
        .query_one(&stmt, &[&tenant, overrides, &actor])
        .await?;
    Ok(StoredOrgLimits {
        overrides: row.get(0),
        updated_at: row.get(1),
        updated_by: row.get(2),
    })
}

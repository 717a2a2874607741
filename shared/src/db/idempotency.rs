//! Idempotency keys: a key binds a tenant's request (by its hash) to the
//! execution it created, until it expires.

use std::time::Duration;

use super::{GenericClient, Result};
use crate::execution::ExecutionId;

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

/// Every statement of this module, for the test that prepares them all.
pub const ALL_SQL: &[&str] = &[FIND_IDEMPOTENT, CLAIM_IDEMPOTENCY_KEY];

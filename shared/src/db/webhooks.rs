//! Webhook endpoints, tenant secrets, deliveries and their attempts.
//!
//! Deliveries are created by the statements that write terminal outcomes
//! (`deliveries_cte`, spliced into `executions`' finish and cancel
//! statements), so an outcome is never committed without them. The
//! delivery role takes due ones (`claim_due_deliveries`) by pushing their
//! due time past the attempt's timeout: no lock is held while a receiver
//! is called, and a worker that dies mid-attempt leaves the delivery due
//! again. Secrets are stored sealed (`crate::webhook::seal`) and are never
//! read back by the API.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{GenericClient, Result};
use crate::webhook::{Attempt, Delivery, Endpoint};

/// The CTE (`hooks AS (…)`) that creates one delivery per enabled
/// endpoint subscribed to the event and one for the execution's own
/// `webhook_url`, for the terminal rows of `source` (a CTE or table with
/// `id`, `tenant_id`, `webhook_url` and `status`). The unique key makes a
/// second terminal write of the same event create nothing.
pub(crate) fn deliveries_cte(source: &str) -> String {
    format!(
        "hooks AS ( \
           INSERT INTO webhook_deliveries (id, tenant_id, execution_id, endpoint_id, destination, url, \
             event_type, next_attempt_at) \
           SELECT gen_random_uuid(), d.tenant_id, d.id, w.id, w.id::text, w.url, 'execution.' || d.status, now() \
             FROM {source} d JOIN webhook_endpoints w ON w.tenant_id = d.tenant_id AND w.enabled \
               AND ('execution.' || d.status) = ANY (w.event_types) \
            WHERE d.status IN ('succeeded', 'failed', 'cancelled') \
           UNION ALL \
           SELECT gen_random_uuid(), d.tenant_id, d.id, NULL, d.webhook_url, d.webhook_url, \
               'execution.' || d.status, now() \
             FROM {source} d \
            WHERE d.webhook_url IS NOT NULL AND d.status IN ('succeeded', 'failed', 'cancelled') \
           ON CONFLICT DO NOTHING)"
    )
}

/// The `execution.started` deliveries for the rows of `source` (`id`,
/// `tenant_id`) a claim just started; only registered endpoints get them.
pub(crate) fn started_deliveries_cte(source: &str) -> String {
    format!(
        "started_hooks AS ( \
           INSERT INTO webhook_deliveries (id, tenant_id, execution_id, endpoint_id, destination, url, \
             event_type, next_attempt_at) \
           SELECT gen_random_uuid(), d.tenant_id, d.id, w.id, w.id::text, w.url, 'execution.started', now() \
             FROM {source} d JOIN webhook_endpoints w ON w.tenant_id = d.tenant_id AND w.enabled \
               AND 'execution.started' = ANY (w.event_types) \
           ON CONFLICT DO NOTHING)"
    )
}

// ---- endpoints ----

macro_rules! endpoint_columns {
    () => {
        "id, tenant_id, url, event_types, enabled, description, disabled_reason, created_at, updated_at"
    };
}

const INSERT_ENDPOINT: &str = concat!(
    "INSERT INTO webhook_endpoints (id, tenant_id, url, event_types, enabled, description, secret) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
    endpoint_columns!()
);

/// What a new endpoint is made of.
pub struct NewEndpoint<'a> {
    pub tenant: &'a str,
    pub url: &'a str,
    pub event_types: &'a [String],
    pub enabled: bool,
    pub description: &'a str,
    pub sealed_secret: &'a [u8],
}

pub async fn insert_endpoint(
    client: &impl GenericClient,
    new: &NewEndpoint<'_>,
) -> Result<Endpoint> {
    let row = client
        .query_one(
            &client.prepare_cached(INSERT_ENDPOINT).await?,
            &[
                &Uuid::now_v7(),
                &new.tenant,
                &new.url,
                &new.event_types,
                &new.enabled,
                &new.description,
                &new.sealed_secret,
            ],
        )
        .await?;
    endpoint_from_row(&row)
}

const LIST_ENDPOINTS: &str = concat!(
    "SELECT ",
    endpoint_columns!(),
    " FROM webhook_endpoints WHERE tenant_id = $1 ORDER BY id"
);

pub async fn list_endpoints(client: &impl GenericClient, tenant: &str) -> Result<Vec<Endpoint>> {
    let rows = client
        .query(&client.prepare_cached(LIST_ENDPOINTS).await?, &[&tenant])
        .await?;
    rows.iter().map(endpoint_from_row).collect()
}

const GET_ENDPOINT: &str = concat!(
    "SELECT ",
    endpoint_columns!(),
    " FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2"
);

pub async fn get_endpoint(
    client: &impl GenericClient,
    tenant: &str,
    id: Uuid,
) -> Result<Option<Endpoint>> {
    let row = client
        .query_opt(&client.prepare_cached(GET_ENDPOINT).await?, &[&id, &tenant])
        .await?;
    row.as_ref().map(endpoint_from_row).transpose()
}

/// Changes to an endpoint; `None` leaves a field as it is.
#[derive(Default)]
pub struct EndpointPatch<'a> {
    pub url: Option<&'a str>,
    pub event_types: Option<&'a [String]>,
    pub enabled: Option<bool>,
    pub description: Option<&'a str>,
}

const UPDATE_ENDPOINT: &str = concat!(
    "UPDATE webhook_endpoints SET url = COALESCE($3, url), event_types = COALESCE($4, event_types), \
       enabled = COALESCE($5, enabled), description = COALESCE($6, description), \
       disabled_reason = CASE WHEN $5 IS TRUE THEN NULL WHEN $5 IS FALSE THEN 'disabled through the API' \
         ELSE disabled_reason END, \
       failing_since = CASE WHEN $5 IS TRUE THEN NULL ELSE failing_since END, updated_at = now() \
     WHERE id = $1 AND tenant_id = $2 RETURNING ",
    endpoint_columns!()
);

pub async fn update_endpoint(
    client: &impl GenericClient,
    tenant: &str,
    id: Uuid,
    patch: &EndpointPatch<'_>,
) -> Result<Option<Endpoint>> {
    let row = client
        .query_opt(
            &client.prepare_cached(UPDATE_ENDPOINT).await?,
            &[
                &id,
                &tenant,
                &patch.url,
                &patch.event_types,
                &patch.enabled,
                &patch.description,
            ],
        )
        .await?;
    row.as_ref().map(endpoint_from_row).transpose()
}

const DELETE_ENDPOINT: &str = "DELETE FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2";

/// False when there was no such endpoint. Its pending deliveries fail
/// when they come due (the endpoint is gone).
pub async fn delete_endpoint(client: &impl GenericClient, tenant: &str, id: Uuid) -> Result<bool> {
    Ok(client
        .execute(
            &client.prepare_cached(DELETE_ENDPOINT).await?,
            &[&id, &tenant],
        )
        .await?
        == 1)
}

const ROTATE_ENDPOINT_SECRET: &str = concat!(
    "UPDATE webhook_endpoints SET previous_secret = secret, \
       previous_secret_until = now() + make_interval(secs => $4), secret = $3, updated_at = now() \
     WHERE id = $1 AND tenant_id = $2 RETURNING ",
    endpoint_columns!()
);

/// Replaces the secret; the old one keeps signing for `overlap`.
pub async fn rotate_endpoint_secret(
    client: &impl GenericClient,
    tenant: &str,
    id: Uuid,
    sealed: &[u8],
    overlap: Duration,
) -> Result<Option<Endpoint>> {
    let row = client
        .query_opt(
            &client.prepare_cached(ROTATE_ENDPOINT_SECRET).await?,
            &[&id, &tenant, &sealed, &overlap.as_secs_f64()],
        )
        .await?;
    row.as_ref().map(endpoint_from_row).transpose()
}

const PUT_TENANT_SECRET: &str = "INSERT INTO webhook_tenant_secrets (tenant_id, secret) VALUES ($1, $2) \
     ON CONFLICT (tenant_id) DO UPDATE SET previous_secret = webhook_tenant_secrets.secret, \
       previous_secret_until = now() + make_interval(secs => $3), secret = EXCLUDED.secret, updated_at = now() \
     RETURNING (xmax = 0) AS created";

/// Sets the tenant's secret for per-execution URLs; an existing one
/// keeps signing for `overlap`. True when the tenant had none.
pub async fn put_tenant_secret(
    client: &impl GenericClient,
    tenant: &str,
    sealed: &[u8],
    overlap: Duration,
) -> Result<bool> {
    let row = client
        .query_one(
            &client.prepare_cached(PUT_TENANT_SECRET).await?,
            &[&tenant, &sealed, &overlap.as_secs_f64()],
        )
        .await?;
    Ok(row.try_get("created")?)
}

// ---- delivery ----

/// A delivery taken by the delivery role for one attempt.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: Uuid,
    pub tenant_id: String,
    pub execution_id: Uuid,
    pub endpoint_id: Option<Uuid>,
    pub destination: String,
    pub url: String,
    pub event_type: String,
    pub attempts: i32,
    pub round_attempts: i32,
    pub created_at: DateTime<Utc>,
}

const CLAIM_DUE: &str = "WITH soonest AS ( \
       SELECT id, destination, next_attempt_at FROM webhook_deliveries \
       WHERE status = 'pending' AND next_attempt_at <= now() AND destination <> ALL ($3::text[]) \
       ORDER BY next_attempt_at LIMIT $1::bigint * 4), \
     due AS ( \
       SELECT id FROM ( \
         SELECT id, next_attempt_at, \
           row_number() OVER (PARTITION BY destination ORDER BY next_attempt_at) AS rn \
         FROM soonest) x \
       WHERE rn <= $2 ORDER BY next_attempt_at LIMIT $1) \
     UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $4) \
     FROM due WHERE d.id = due.id AND d.status = 'pending' AND d.next_attempt_at <= now() \
     RETURNING d.id, d.tenant_id, d.execution_id, d.endpoint_id, d.destination, d.url, d.event_type, \
       d.attempts, d.round_attempts, d.created_at";

/// Takes up to `limit` due deliveries, at most `per_destination` of each
/// destination and none of `busy` (destinations already at their bound
/// here), from the `4 × limit` due soonest (read off the due index, so a
/// scan costs the same however long the backlog is; a destination behind
/// a crowd of another's is reached once that one is busy), and moves each one's due time `hold` ahead: if this worker dies
/// mid-attempt, the delivery is due again then. A concurrent worker that
/// picked the same rows skips them (the due time is re-checked under the
/// row lock).
pub async fn claim_due_deliveries(
    client: &impl GenericClient,
    limit: i64,
    per_destination: i64,
    busy: &[String],
    hold: Duration,
) -> Result<Vec<Claimed>> {
    let rows = client
        .query(
            &client.prepare_cached(CLAIM_DUE).await?,
            &[&limit, &per_destination, &busy, &hold.as_secs_f64()],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Claimed {
                id: r.try_get("id")?,
                tenant_id: r.try_get("tenant_id")?,
                execution_id: r.try_get("execution_id")?,
                endpoint_id: r.try_get("endpoint_id")?,
                destination: r.try_get("destination")?,
                url: r.try_get("url")?,
                event_type: r.try_get("event_type")?,
                attempts: r.try_get("attempts")?,
                round_attempts: r.try_get("round_attempts")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

/// Where and with what a delivery is sent now.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub enabled: bool,
    /// Sealed: the current secret, then the previous one while it overlaps.
    pub secrets: Vec<Vec<u8>>,
}

const ENDPOINT_TARGETS: &str = "SELECT id, url, enabled, secret, \
       CASE WHEN previous_secret_until > now() THEN previous_secret END AS previous \
     FROM webhook_endpoints WHERE id = ANY($1)";
const TENANT_TARGETS: &str = "SELECT tenant_id, secret, \
       CASE WHEN previous_secret_until > now() THEN previous_secret END AS previous \
     FROM webhook_tenant_secrets WHERE tenant_id = ANY($1)";

fn sealed_secrets(row: &Row) -> Result<Vec<Vec<u8>>> {
    let mut secrets = vec![row.try_get::<_, Vec<u8>>("secret")?];
    if let Some(previous) = row.try_get::<_, Option<Vec<u8>>>("previous")? {
        secrets.push(previous);
    }
    Ok(secrets)
}

/// Each claimed delivery's target, by delivery id, in at most two round
/// trips for the whole batch: the endpoint's URL, state and secrets (absent:
/// it was deleted), or for a per-execution URL the tenant's secrets
/// (absent: the tenant has none).
pub async fn delivery_targets(
    client: &impl GenericClient,
    claimed: &[Claimed],
) -> Result<HashMap<Uuid, Target>> {
    let mut endpoint_ids: Vec<Uuid> = claimed.iter().filter_map(|c| c.endpoint_id).collect();
    endpoint_ids.sort_unstable();
    endpoint_ids.dedup();
    let mut tenants: Vec<&str> = claimed
        .iter()
        .filter(|c| c.endpoint_id.is_none())
        .map(|c| c.tenant_id.as_str())
        .collect();
    tenants.sort_unstable();
    tenants.dedup();

    let mut endpoints = HashMap::new();
    if !endpoint_ids.is_empty() {
        let stmt = client.prepare_cached(ENDPOINT_TARGETS).await?;
        for row in client.query(&stmt, &[&endpoint_ids]).await? {
            let id: Uuid = row.try_get("id")?;
            let target = Target {
                url: row.try_get("url")?,
                enabled: row.try_get("enabled")?,
                secrets: sealed_secrets(&row)?,
            };
            endpoints.insert(id, target);
        }
    }
    let mut tenant_secrets = HashMap::new();
    if !tenants.is_empty() {
        let stmt = client.prepare_cached(TENANT_TARGETS).await?;
        for row in client.query(&stmt, &[&tenants]).await? {
            let tenant: String = row.try_get("tenant_id")?;
            tenant_secrets.insert(tenant, sealed_secrets(&row)?);
        }
    }
    Ok(claimed
        .iter()
        .filter_map(|c| {
            let target = match c.endpoint_id {
                Some(endpoint) => endpoints.get(&endpoint).cloned(),
                None => tenant_secrets.get(&c.tenant_id).map(|secrets| Target {
                    url: c.url.clone(),
                    enabled: true,
                    secrets: secrets.clone(),
                }),
            };
            target.map(|t| (c.id, t))
        })
        .collect())
}

/// One attempt's result, as recorded.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub delivery: Uuid,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub latency_ms: f64,
    pub error: Option<String>,
    pub response_body: Option<String>,
    /// `pending` (retry after `retry_in`), `succeeded` or `failed`.
    pub outcome: &'static str,
    pub retry_in: Duration,
    pub delivered: bool,
    /// 410: disable the endpoint.
    pub gone: bool,
}

/// Many attempts' results in one statement (the role group-commits them):
/// each attempt's row, each delivery's state and next due time, and per
/// endpoint its failing streak and its disabling (410, or every attempt
/// failing for `$12` seconds). An endpoint row is written only when
/// something about it changes: a success on an endpoint that was not
/// failing leaves it alone, so a busy endpoint's row is not a point of
/// contention. Within one batch an endpoint with any success is not
/// failing, and one with any 410 is disabled.
const RECORD_ATTEMPTS: &str = "WITH r AS ( \
       SELECT * FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::int[], $5::float8[], \
         $6::text[], $7::text[], $8::text[], $9::float8[], $10::bool[], $11::bool[]) \
         AS r(delivery, attempt, at, status_code, latency_ms, error, response_body, outcome, \
           retry_in, delivered, gone)), \
     a AS ( \
       INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, latency_ms, error, \
         response_body) \
       SELECT delivery, attempt, at, status_code, latency_ms, error, response_body FROM r \
       ON CONFLICT DO NOTHING), \
     d AS ( \
       UPDATE webhook_deliveries w SET attempts = GREATEST(w.attempts, r.attempt), \
         round_attempts = w.round_attempts + 1, status = r.outcome, \
         next_attempt_at = CASE WHEN r.outcome = 'pending' THEN now() + make_interval(secs => r.retry_in) END, \
         last_status_code = r.status_code, last_error = r.error, \
         finished_at = CASE WHEN r.outcome = 'pending' THEN NULL ELSE now() END \
       FROM r WHERE w.id = r.delivery \
       RETURNING w.endpoint_id, r.delivered, r.gone, r.at), \
     e AS ( \
       SELECT endpoint_id, bool_or(delivered) AS delivered, bool_or(gone) AS gone, min(at) AS at \
       FROM d WHERE endpoint_id IS NOT NULL GROUP BY endpoint_id) \
     UPDATE webhook_endpoints w SET \
       failing_since = CASE WHEN e.delivered THEN NULL ELSE COALESCE(w.failing_since, e.at) END, \
       enabled = w.enabled AND NOT (e.gone OR (NOT e.delivered AND COALESCE(w.failing_since, e.at) <= now() - make_interval(secs => $12))), \
       disabled_reason = CASE WHEN NOT w.enabled THEN w.disabled_reason \
         WHEN e.gone THEN 'the receiver answered 410 Gone' \
         WHEN NOT e.delivered AND COALESCE(w.failing_since, e.at) <= now() - make_interval(secs => $12) \
           THEN 'every delivery failed since ' || to_char(COALESCE(w.failing_since, e.at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
         ELSE w.disabled_reason END, \
       updated_at = now() \
     FROM e WHERE w.id = e.endpoint_id \
       AND (e.gone OR NOT e.delivered OR w.failing_since IS NOT NULL)";

/// Records attempts and their consequences in one statement (see
/// `RECORD_ATTEMPTS`). An endpoint failing for `disable_after` is disabled.
pub async fn record_attempts(
    client: &impl GenericClient,
    records: &[AttemptRecord],
    disable_after: Duration,
) -> Result<()> {
    let deliveries: Vec<Uuid> = records.iter().map(|r| r.delivery).collect();
    let attempts: Vec<i32> = records.iter().map(|r| r.attempt).collect();
    let at: Vec<DateTime<Utc>> = records.iter().map(|r| r.at).collect();
    let codes: Vec<Option<i32>> = records.iter().map(|r| r.status_code).collect();
    let latency: Vec<f64> = records.iter().map(|r| r.latency_ms).collect();
    let errors: Vec<Option<&str>> = records.iter().map(|r| r.error.as_deref()).collect();
    let bodies: Vec<Option<&str>> = records.iter().map(|r| r.response_body.as_deref()).collect();
    let outcomes: Vec<&str> = records.iter().map(|r| r.outcome).collect();
    let retry_in: Vec<f64> = records.iter().map(|r| r.retry_in.as_secs_f64()).collect();
    let delivered: Vec<bool> = records.iter().map(|r| r.delivered).collect();
    let gone: Vec<bool> = records.iter().map(|r| r.gone).collect();
    client
        .execute(
            &client.prepare_cached(RECORD_ATTEMPTS).await?,
            &[
                &deliveries,
                &attempts,
                &at,
                &codes,
                &latency,
                &errors,
                &bodies,
                &outcomes,
                &retry_in,
                &delivered,
                &gone,
                &disable_after.as_secs_f64(),
            ],
        )
        .await?;
    Ok(())
}

const FAIL_UNSENDABLE: &str = "UPDATE webhook_deliveries SET status = 'failed', last_error = $2, \
       next_attempt_at = NULL, finished_at = now() WHERE id = $1 AND status = 'pending'";

/// Fails a delivery that cannot be attempted (endpoint deleted or
/// disabled, execution gone), saying why.
pub async fn fail_unsendable(client: &impl GenericClient, id: Uuid, reason: &str) -> Result<()> {
    client
        .execute(
            &client.prepare_cached(FAIL_UNSENDABLE).await?,
            &[&id, &reason],
        )
        .await?;
    Ok(())
}

const DEFER: &str =
    "UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => $2), \
       last_error = $3 WHERE id = $1 AND status = 'pending'";

/// Puts a delivery back without an attempt (the worker could not even
/// try: the database or its secret was unreadable).
pub async fn defer_delivery(
    client: &impl GenericClient,
    id: Uuid,
    delay: Duration,
    reason: &str,
) -> Result<()> {
    client
        .execute(
            &client.prepare_cached(DEFER).await?,
            &[&id, &delay.as_secs_f64(), &reason],
        )
        .await?;
    Ok(())
}

// ---- the delivery log ----

macro_rules! delivery_columns {
    () => {
        "id, execution_id, endpoint_id, url, event_type, status, attempts, next_attempt_at, \
         last_status_code, last_error, created_at, finished_at"
    };
}

const EXECUTION_DELIVERIES: &str = concat!(
    "SELECT ",
    delivery_columns!(),
    " FROM webhook_deliveries WHERE tenant_id = $1 AND execution_id = $2 ORDER BY created_at, id"
);
const ENDPOINT_DELIVERIES: &str = concat!(
    "SELECT ",
    delivery_columns!(),
    " FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2 AND ($3::text IS NULL OR status = $3) \
     ORDER BY created_at DESC, id LIMIT $4"
);
const ATTEMPTS: &str =
    "SELECT delivery_id, attempt, attempted_at, status_code, latency_ms, error, response_body \
     FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt";
const GET_DELIVERY: &str = concat!(
    "SELECT ",
    delivery_columns!(),
    " FROM webhook_deliveries WHERE tenant_id = $1 AND id = $2"
);

/// The deliveries of one execution, oldest first, with their attempts.
pub async fn execution_deliveries(
    client: &impl GenericClient,
    tenant: &str,
    execution: Uuid,
) -> Result<Vec<Delivery>> {
    let rows = client
        .query(
            &client.prepare_cached(EXECUTION_DELIVERIES).await?,
            &[&tenant, &execution],
        )
        .await?;
    with_attempts(client, &rows).await
}

/// An endpoint's deliveries, newest first, optionally of one status.
pub async fn endpoint_deliveries(
    client: &impl GenericClient,
    tenant: &str,
    endpoint: Uuid,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<Delivery>> {
    let rows = client
        .query(
            &client.prepare_cached(ENDPOINT_DELIVERIES).await?,
            &[&tenant, &endpoint, &status, &limit],
        )
        .await?;
    with_attempts(client, &rows).await
}

pub async fn get_delivery(
    client: &impl GenericClient,
    tenant: &str,
    id: Uuid,
) -> Result<Option<Delivery>> {
    let rows = client
        .query(&client.prepare_cached(GET_DELIVERY).await?, &[&tenant, &id])
        .await?;
    Ok(with_attempts(client, &rows).await?.pop())
}

async fn with_attempts(client: &impl GenericClient, rows: &[Row]) -> Result<Vec<Delivery>> {
    let mut deliveries = rows
        .iter()
        .map(delivery_from_row)
        .collect::<Result<Vec<_>>>()?;
    if deliveries.is_empty() {
        return Ok(deliveries);
    }
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
    let attempts = client
        .query(&client.prepare_cached(ATTEMPTS).await?, &[&ids])
        .await?;
    let mut by_id: std::collections::HashMap<Uuid, Vec<Attempt>> = Default::default();
    for r in &attempts {
        by_id
            .entry(r.try_get("delivery_id")?)
            .or_default()
            .push(Attempt {
                attempt: r.try_get("attempt")?,
                attempted_at: r.try_get("attempted_at")?,
                status_code: r.try_get("status_code")?,
                latency_ms: r.try_get("latency_ms")?,
                error: r.try_get("error")?,
                response_body: r.try_get("response_body")?,
            });
    }
    for d in &mut deliveries {
        d.attempt_log = by_id.remove(&d.id).unwrap_or_default();
    }
    Ok(deliveries)
}

const RETRY_DELIVERY: &str =
    "UPDATE webhook_deliveries SET status = 'pending', round_attempts = 0, \
       next_attempt_at = now(), finished_at = NULL \
     WHERE tenant_id = $1 AND id = $2 AND status <> 'pending'";

/// Sends a finished delivery (failed or succeeded) again, with a fresh
/// schedule and the same `webhook-id`. False when it is not the tenant's
/// or still pending.
pub async fn retry_delivery(client: &impl GenericClient, tenant: &str, id: Uuid) -> Result<bool> {
    Ok(client
        .execute(
            &client.prepare_cached(RETRY_DELIVERY).await?,
            &[&tenant, &id],
        )
        .await?
        == 1)
}

const RECOVER: &str = "UPDATE webhook_deliveries SET status = 'pending', round_attempts = 0, \
       next_attempt_at = now(), finished_at = NULL \
     WHERE tenant_id = $1 AND endpoint_id = $2 AND status = 'failed' AND created_at >= $3";

/// Sends again every failed delivery of the endpoint created since
/// `since`; answers how many.
pub async fn recover_endpoint(
    client: &impl GenericClient,
    tenant: &str,
    endpoint: Uuid,
    since: DateTime<Utc>,
) -> Result<u64> {
    Ok(client
        .execute(
            &client.prepare_cached(RECOVER).await?,
            &[&tenant, &endpoint, &since],
        )
        .await?)
}

fn endpoint_from_row(row: &Row) -> Result<Endpoint> {
    Ok(Endpoint {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        url: row.try_get("url")?,
        event_types: row.try_get("event_types")?,
        enabled: row.try_get("enabled")?,
        description: row.try_get("description")?,
        disabled_reason: row.try_get("disabled_reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn delivery_from_row(row: &Row) -> Result<Delivery> {
    Ok(Delivery {
        id: row.try_get("id")?,
        execution_id: row.try_get("execution_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        url: row.try_get("url")?,
        event_type: row.try_get("event_type")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_status_code: row.try_get("last_status_code")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
        attempt_log: Vec::new(),
    })
}

/// Every statement of this module, for the test that prepares them all.
pub static ALL_SQL: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    vec![
        INSERT_ENDPOINT,
        LIST_ENDPOINTS,
        GET_ENDPOINT,
        UPDATE_ENDPOINT,
        DELETE_ENDPOINT,
        ROTATE_ENDPOINT_SECRET,
        PUT_TENANT_SECRET,
        CLAIM_DUE,
        ENDPOINT_TARGETS,
        TENANT_TARGETS,
        RECORD_ATTEMPTS,
        FAIL_UNSENDABLE,
        DEFER,
        EXECUTION_DELIVERIES,
        ENDPOINT_DELIVERIES,
        ATTEMPTS,
        GET_DELIVERY,
        RETRY_DELIVERY,
        RECOVER,
    ]
});

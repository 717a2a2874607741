//! Organisations and their API keys. A key row is found by the sha256 of
//! the presented key (`crate::keys`); the secret itself is never stored.
//! Every query that lists or changes keys names the organisation, so one
//! organisation's admin cannot reach another's keys.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{GenericClient, Result};

/// An organisation.
#[derive(Clone, Debug)]
pub struct Organisation {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A key as stored (without its secret).
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub id: Uuid,
    pub tenant_id: String,
    pub prefix: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub end_user: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What a new key row holds.
pub struct NewKeyRow<'a> {
    pub id: Uuid,
    pub tenant_id: &'a str,
    pub key_hash: &'a str,
    pub prefix: &'a str,
    pub name: Option<&'a str>,
    pub scopes: &'a [String],
    pub end_user: Option<&'a str>,
    pub expires_at: Option<DateTime<Utc>>,
}

const INSERT_ORG: &str = "INSERT INTO organisations (id, name) VALUES ($1, $2) \
     ON CONFLICT (id) DO NOTHING RETURNING id, name, created_at";
const GET_ORG: &str = "SELECT id, name, created_at FROM organisations WHERE id = $1";
const LIST_ORGS: &str = "SELECT id, name, created_at FROM organisations ORDER BY id";
const LIST_ORG_IDS: &str = "SELECT id FROM organisations WHERE id <> 'default' ORDER BY id";
/// The prompt files' versions (the default organisation's, from files)
/// copied into an organisation's own registry (`<org>/<name>`); a version
/// the organisation already has under that number is kept.
const COPY_FILE_VERSIONS: &str =
    "INSERT INTO prompt_versions (prompt_name, version, definition, content_hash, source) \
     SELECT $1 || '/' || prompt_name, version, definition, content_hash, source FROM prompt_versions \
     WHERE source = 'file' AND strpos(prompt_name, '/') = 0 \
     ON CONFLICT (prompt_name, version) DO NOTHING";
/// `production` of each copied prompt, at its newest file version, unless
/// the organisation has moved it; each move is in the label's history
/// (actor `sync`), as the default organisation's are.
const COPY_FILE_LABELS: &str = "WITH newest AS ( \
       SELECT $1 || '/' || prompt_name AS name, max(version) AS version FROM prompt_versions \
       WHERE source = 'file' AND strpos(prompt_name, '/') = 0 GROUP BY prompt_name), \
     old AS ( \
       SELECT l.prompt_name, l.version FROM prompt_labels l \
       JOIN newest n ON l.prompt_name = n.name AND l.label = 'production'), \
     moved AS ( \
       INSERT INTO prompt_labels (prompt_name, label, version, updated_by) \
       SELECT name, 'production', version, 'sync' FROM newest \
       ON CONFLICT (prompt_name, label) DO UPDATE SET version = EXCLUDED.version, updated_at = now() \
       WHERE prompt_labels.updated_by = 'sync' AND prompt_labels.version < EXCLUDED.version \
       RETURNING prompt_name, version) \
     INSERT INTO prompt_label_moves (prompt_name, label, from_rule, to_rule, actor, reason) \
     SELECT m.prompt_name, 'production', \
       (SELECT jsonb_build_object('targets', jsonb_build_array(jsonb_build_object('version', o.version, 'weight', 1))) \
        FROM old o WHERE o.prompt_name = m.prompt_name), \
       jsonb_build_object('targets', jsonb_build_array(jsonb_build_object('version', m.version, 'weight', 1))), \
       'sync', 'newest prompt file' \
     FROM moved m";

const INSERT_KEY: &str = "INSERT INTO api_keys \
       (id, tenant_id, key_hash, prefix, name, scopes, end_user, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     RETURNING id, tenant_id, prefix, name, scopes, end_user, expires_at, revoked_at, created_at, last_used_at";
const LIST_KEYS: &str = "SELECT id, tenant_id, prefix, name, scopes, end_user, expires_at, revoked_at, created_at, last_used_at \
     FROM api_keys WHERE tenant_id = $1 ORDER BY id";
/// Revoking twice keeps the first time; answers the key's hash, which the
/// replicas' caches are keyed by.
const REVOKE_KEY: &str = "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) \
     WHERE tenant_id = $1 AND id = $2 \
     RETURNING key_hash, id, tenant_id, prefix, name, scopes, end_user, expires_at, revoked_at, created_at, last_used_at";
/// The look-up of a presented key, when an API process loads it into its
/// cache; `last_used_at` is therefore "last loaded", to within the cache's
/// entry age, and costs nothing per request.
const LOAD_KEY: &str = "UPDATE api_keys SET last_used_at = now() WHERE key_hash = $1 \
     RETURNING id, tenant_id, prefix, name, scopes, end_user, expires_at, revoked_at, created_at, last_used_at";

fn org_from_row(r: &Row) -> Result<Organisation> {
    Ok(Organisation {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
    })
}

fn key_from_row(r: &Row) -> Result<StoredKey> {
    Ok(StoredKey {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        prefix: r.try_get("prefix")?,
        name: r.try_get("name")?,
        scopes: r.try_get("scopes")?,
        end_user: r.try_get("end_user")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

/// Creates the organisation with its own copy of the prompt files; `None`
/// if the id is taken.
pub async fn create_org(
    client: &impl GenericClient,
    id: &str,
    name: &str,
) -> Result<Option<Organisation>> {
    let Some(row) = client
        .query_opt(&client.prepare_cached(INSERT_ORG).await?, &[&id, &name])
        .await?
    else {
        return Ok(None);
    };
    copy_file_prompts(client, id).await?;
    org_from_row(&row).map(Some)
}

/// Gives the organisation the prompt files' versions it lacks and moves
/// its `production` labels that only the sync ever moved.
pub async fn copy_file_prompts(client: &impl GenericClient, org: &str) -> Result<()> {
    client
        .execute(&client.prepare_cached(COPY_FILE_VERSIONS).await?, &[&org])
        .await?;
    client
        .execute(&client.prepare_cached(COPY_FILE_LABELS).await?, &[&org])
        .await?;
    Ok(())
}

pub async fn get_org(client: &impl GenericClient, id: &str) -> Result<Option<Organisation>> {
    client
        .query_opt(&client.prepare_cached(GET_ORG).await?, &[&id])
        .await?
        .as_ref()
        .map(org_from_row)
        .transpose()
}

pub async fn list_orgs(client: &impl GenericClient) -> Result<Vec<Organisation>> {
    client
        .query(&client.prepare_cached(LIST_ORGS).await?, &[])
        .await?
        .iter()
        .map(org_from_row)
        .collect()
}

/// Every organisation but `default`, whose registry the files sync into.
pub async fn list_org_ids(client: &impl GenericClient) -> Result<Vec<String>> {
    Ok(client
        .query(&client.prepare_cached(LIST_ORG_IDS).await?, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

pub async fn insert_key(client: &impl GenericClient, key: &NewKeyRow<'_>) -> Result<StoredKey> {
    let row = client
        .query_one(
            &client.prepare_cached(INSERT_KEY).await?,
            &[
                &key.id,
                &key.tenant_id,
                &key.key_hash,
                &key.prefix,
                &key.name,
                &key.scopes,
                &key.end_user,
                &key.expires_at,
            ],
        )
        .await?;
    key_from_row(&row)
}

pub async fn list_keys(client: &impl GenericClient, tenant: &str) -> Result<Vec<StoredKey>> {
    client
        .query(&client.prepare_cached(LIST_KEYS).await?, &[&tenant])
        .await?
        .iter()
        .map(key_from_row)
        .collect()
}

/// Marks the organisation's key revoked; its hash and row, or `None` for
/// no such key of this organisation.
pub async fn revoke_key(
    client: &impl GenericClient,
    tenant: &str,
    id: Uuid,
) -> Result<Option<(String, StoredKey)>> {
    let Some(row) = client
        .query_opt(&client.prepare_cached(REVOKE_KEY).await?, &[&tenant, &id])
        .await?
    else {
        return Ok(None);
    };
    Ok(Some((row.try_get("key_hash")?, key_from_row(&row)?)))
}

/// The key with this hash, revoked or expired or not.
pub async fn load_key(client: &impl GenericClient, hash: &str) -> Result<Option<StoredKey>> {
    client
        .query_opt(&client.prepare_cached(LOAD_KEY).await?, &[&hash])
        .await?
        .as_ref()
        .map(key_from_row)
        .transpose()
}

/// Every statement of this module, for the test that prepares them all.
pub const ALL_SQL: &[&str] = &[
    INSERT_ORG,
    GET_ORG,
    LIST_ORGS,
    LIST_ORG_IDS,
    COPY_FILE_VERSIONS,
    COPY_FILE_LABELS,
    INSERT_KEY,
    LIST_KEYS,
    REVOKE_KEY,
    LOAD_KEY,
];

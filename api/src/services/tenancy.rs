//! Organisations and their keys: create, list, show; create, list and
//! revoke keys. Who may see what: an admin key sees its own organisation
//! only; the `default` organisation's admin keys (the operator's) see
//! every organisation and alone create new ones. Anything else answers
//! 404, as an organisation that does not exist would.
//!
//! A key's secret exists only in the answer to its creation; the row
//! holds its hash. A revocation commits, drops the key from this
//! process's cache, then is announced to every API process (which drops
//! it too); a process that missed the announcement refuses the key once
//! its cache entry reaches `api.key_cache_secs`.

use chrono::{DateTime, Utc};
use llmq_shared::db::tenancy::{self as db, NewKeyRow, Organisation, StoredKey};
use llmq_shared::db::{DbError, Pool};
use llmq_shared::events::KeyRevoked;
use llmq_shared::ids::TenantId;
use llmq_shared::keys::{generate_key, Scopes};
use llmq_shared::queue::Publisher;
use uuid::Uuid;

use crate::auth::KeyCache;
use crate::services::error::{Result, ServiceError};

/// Who manages: the caller's organisation, and whether it is the operator.
#[derive(Clone, Debug)]
pub struct Manager {
    pub tenant: TenantId,
    pub operator: bool,
}

impl Manager {
    fn sees(&self, org: &str) -> bool {
        self.operator || self.tenant.as_str() == org
    }

    /// `org` as this manager may see it: its own, or any for the operator;
    /// another organisation is as absent as a missing one.
    pub fn must_see(&self, org: &str) -> Result<()> {
        if self.sees(org) {
            Ok(())
        } else {
            Err(no_org(org))
        }
    }
}

fn no_org(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("no organisation {id:?}"))
}

/// A key as asked for.
#[derive(Clone, Debug)]
pub struct KeyRequest {
    pub name: Option<String>,
    pub scopes: Scopes,
    pub user: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key just made: its row and the secret, shown this once.
pub struct CreatedKey {
    pub key: StoredKey,
    pub secret: String,
}

/// Creates an organisation (the operator only), with its own copy of the
/// prompt files.
#[tracing::instrument(skip_all, fields(org = %id), err)]
pub async fn create_org(
    pool: &Pool,
    manager: &Manager,
    id: &TenantId,
    name: Option<String>,
) -> Result<Organisation> {
    if !manager.operator {
        return Err(ServiceError::Forbidden(
            "only an admin key of the default organisation creates organisations".into(),
        ));
    }
    let name = name.unwrap_or_else(|| id.to_string());
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let created = db::create_org(&tx, id.as_str(), &name).await?;
    tx.commit().await.map_err(DbError::from)?;
    let org = created
        .ok_or_else(|| ServiceError::Conflict(format!("organisation {:?} exists", id.as_str())))?;
    tracing::info!(org = %org.id, "organisation created");
    Ok(org)
}

/// The organisations the manager sees.
pub async fn list_orgs(pool: &Pool, manager: &Manager) -> Result<Vec<Organisation>> {
    let client = pool.get().await.map_err(DbError::from)?;
    let mut orgs = db::list_orgs(&client).await?;
    orgs.retain(|o| manager.sees(&o.id));
    Ok(orgs)
}

pub async fn get_org(pool: &Pool, manager: &Manager, id: &str) -> Result<Organisation> {
    if !manager.sees(id) {
        return Err(no_org(id));
    }
    let client = pool.get().await.map_err(DbError::from)?;
    db::get_org(&client, id).await?.ok_or_else(|| no_org(id))
}

/// Makes a key of organisation `org`.
#[tracing::instrument(skip_all, fields(org), err)]
pub async fn create_key(
    pool: &Pool,
    manager: &Manager,
    org: &str,
    request: KeyRequest,
) -> Result<CreatedKey> {
    if !manager.sees(org) {
        return Err(no_org(org));
    }
    if request.scopes == Scopes::default() {
        return Err(ServiceError::InvalidRequest(
            "scopes: a key needs at least one scope".into(),
        ));
    }
    if request.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(ServiceError::InvalidRequest(
            "expires_at: must be in the future".into(),
        ));
    }
    for (field, value, max) in [("name", &request.name, 200), ("user", &request.user, 255)] {
        if value
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > max || v.contains('\0'))
        {
            return Err(ServiceError::InvalidRequest(format!(
                "{field}: 1 to {max} bytes, no NUL"
            )));
        }
    }
    let client = pool.get().await.map_err(DbError::from)?;
    if db::get_org(&client, org).await?.is_none() {
        return Err(no_org(org));
    }
    let new = generate_key();
    let scopes = request.scopes.names();
    let key = db::insert_key(
        &client,
        &NewKeyRow {
            id: Uuid::now_v7(),
            tenant_id: org,
            key_hash: &new.hash,
            prefix: &new.prefix,
            name: request.name.as_deref(),
            scopes: &scopes,
            end_user: request.user.as_deref(),
            expires_at: request.expires_at,
        },
    )
    .await?;
    tracing::info!(org, key.id = %key.id, key.prefix = %key.prefix, "API key created");
    Ok(CreatedKey {
        key,
        secret: new.secret,
    })
}

/// The first admin key of a deployment: every scope, in the default
/// organisation (`llmq-api bootstrap-admin`).
pub async fn bootstrap_admin(pool: &Pool, name: String) -> Result<CreatedKey> {
    let operator = Manager {
        tenant: TenantId::new(llmq_shared::ids::DEFAULT_TENANT),
        operator: true,
    };
    let request = KeyRequest {
        name: Some(name),
        scopes: Scopes::all(),
        user: None,
        expires_at: None,
    };
    create_key(pool, &operator, llmq_shared::ids::DEFAULT_TENANT, request).await
}

pub async fn list_keys(pool: &Pool, manager: &Manager, org: &str) -> Result<Vec<StoredKey>> {
    if !manager.sees(org) {
        return Err(no_org(org));
    }
    let client = pool.get().await.map_err(DbError::from)?;
    if db::get_org(&client, org).await?.is_none() {
        return Err(no_org(org));
    }
    Ok(db::list_keys(&client, org).await?)
}

/// Revokes one of `org`'s keys (again: no change) and drops it from every
/// API process's cache.
#[tracing::instrument(skip_all, fields(org, key.id = %id), err)]
pub async fn revoke_key(
    pool: &Pool,
    publisher: &Publisher,
    keys: &KeyCache,
    manager: &Manager,
    org: &str,
    id: Uuid,
) -> Result<StoredKey> {
    let unknown = || ServiceError::NotFound(format!("no key {id} in organisation {org:?}"));
    if !manager.sees(org) {
        return Err(no_org(org));
    }
    let client = pool.get().await.map_err(DbError::from)?;
    let (hash, key) = db::revoke_key(&client, org, id)
        .await?
        .ok_or_else(unknown)?;
    drop(client);
    keys.forget(&hash);
    publisher
        .publish_key_revoked(&KeyRevoked { key_hash: hash })
        .await;
    tracing::info!(org, key.id = %id, "API key revoked");
    Ok(key)
}

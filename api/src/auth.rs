//! Authentication and scopes. A bearer key stands for one organisation
//! (the tenant everything the caller sees belongs to), optionally one end
//! user, and a set of scopes.
//!
//! Keys are `llmq_sk_…` rows of `api_keys`, found by their sha256. The
//! look-up costs no database round trip per request: every API process
//! keeps a [`KeyCache`] of hash → key. An entry lives at most
//! `api.key_cache_secs` (the backstop), and a revocation is announced on
//! the events exchange so every process drops the key at once
//! (`crate::startup::forget_revoked_keys`). A key nobody issued is
//! remembered as unknown for `api.key_negative_cache_secs`, and look-ups
//! that miss the cache run at most `LOOKUPS` at a time, so a flood of
//! made-up keys cannot take the database's connections.
//!
//! The configured keys (`api.api_key`, `api.admin_key`) are the
//! development bootstrap of the `default` organisation; empty, they are
//! refused like any unknown key.
//!
//! Which scope a route needs is written once, in its OpenAPI security
//! requirement (`security(("bearer" = ["executions:read"]))`); the
//! extractor reads it from the route table (`crate::routes::required_scopes`),
//! so the document always says what is enforced.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use chrono::{DateTime, Utc};
use futures::future::LocalBoxFuture;
use llmq_shared::db::{tenancy, DbError, Pool};
use llmq_shared::ids::TenantId;
pub use llmq_shared::ids::DEFAULT_TENANT;
use llmq_shared::keys::{hash_key, looks_like_key, Scope, Scopes};
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::state::AppState;

/// `key_id` of a caller that presented `api.api_key`.
pub const CONFIG_KEY_ID: &str = "config";
/// `key_id` of a caller that presented `api.admin_key`.
pub const CONFIG_ADMIN_KEY_ID: &str = "config-admin";

/// Who is calling: everything they can see belongs to `tenant`.
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant: TenantId,
    /// The key's public id (`config` / `config-admin` for the configured
    /// development keys).
    pub key_id: String,
    /// The end user the key is bound to.
    pub user: Option<String>,
    pub scopes: Scopes,
    /// Has the `admin` scope.
    pub admin: bool,
}

impl Caller {
    fn new(tenant: TenantId, key_id: String, user: Option<String>, scopes: Scopes) -> Self {
        Self {
            tenant,
            key_id,
            user,
            admin: scopes.contains(Scope::Admin),
            scopes,
        }
    }

    /// 403 naming the scope when the key lacks it.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(ApiError::MissingScope(scope))
        }
    }

    /// May manage every organisation (create them, see them all): an
    /// admin key of the `default` organisation.
    pub fn is_operator(&self) -> bool {
        self.admin && self.tenant.is_default()
    }

    /// What the organisation services check this caller against.
    pub fn manager(&self) -> crate::services::tenancy::Manager {
        crate::services::tenancy::Manager {
            tenant: self.tenant.clone(),
            operator: self.is_operator(),
        }
    }

    /// Who the audit log names for this caller's label moves.
    pub fn actor(&self) -> String {
        match self.key_id.as_str() {
            CONFIG_KEY_ID => "api-key".into(),
            CONFIG_ADMIN_KEY_ID => "admin-key".into(),
            id => format!("key:{id}"),
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        // Owned copies: the future outlives the borrow of the request.
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let presented = bearer_token(req).map(str::to_string);
        let needed = req
            .match_pattern()
            .map(|pattern| crate::routes::required_scopes(req.method().as_str(), &pattern))
            .unwrap_or(&[]);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("no app state".into()))?;
            let caller = authenticate(&state, presented.as_deref()).await?;
            for scope in needed {
                caller.require(*scope)?;
            }
            Ok(caller)
        })
    }
}

fn bearer_token(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The caller a presented key stands for.
async fn authenticate(state: &AppState, presented: Option<&str>) -> Result<Caller, ApiError> {
    let presented = presented.ok_or(ApiError::Unauthorized)?;
    let api = &state.settings.api;
    if !api.admin_key.is_empty() && constant_time_eq(presented.as_bytes(), api.admin_key.as_bytes())
    {
        return Ok(Caller::new(
            TenantId::new(DEFAULT_TENANT),
            CONFIG_ADMIN_KEY_ID.into(),
            None,
            Scopes::all(),
        ));
    }
    if !api.api_key.is_empty() && constant_time_eq(presented.as_bytes(), api.api_key.as_bytes()) {
        return Ok(Caller::new(
            TenantId::new(DEFAULT_TENANT),
            CONFIG_KEY_ID.into(),
            None,
            config_key_scopes(),
        ));
    }
    if !looks_like_key(presented) {
        return Err(ApiError::Unauthorized);
    }
    // A look-up that misses the cache is bounded like any request's
    // database work: a database that stops answering is a 503, not a hang.
    let key = tokio::time::timeout(state.deadline(), state.keys.find(&state.pool, presented))
        .await
        .map_err(|_| {
            ApiError::Unavailable("the database did not answer in time; retry later".into())
        })??;
    match key {
        Some(key) if key.usable_at(Utc::now()) => Ok(Caller::new(
            key.tenant.clone(),
            key.id.clone(),
            key.user.clone(),
            key.scopes,
        )),
        _ => Err(ApiError::Unauthorized),
    }
}

/// What `api.api_key` may do: everything but promoting protected labels
/// and administration (those are `api.admin_key`'s).
pub fn config_key_scopes() -> Scopes {
    Scopes::all()
        .iter()
        .filter(|s| !matches!(s, Scope::Admin | Scope::PromptsPromote))
        .collect()
}

/// Compares without an early exit, so timing does not leak the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A key as the cache holds it.
#[derive(Clone, Debug)]
pub struct CachedKey {
    pub id: String,
    pub tenant: TenantId,
    pub user: Option<String>,
    pub scopes: Scopes,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

impl CachedKey {
    /// Not revoked and not expired at `now`.
    pub fn usable_at(&self, now: DateTime<Utc>) -> bool {
        !self.revoked && self.expires_at.is_none_or(|t| t > now)
    }
}

/// Look-ups that missed the cache, at most this many at a time.
const LOOKUPS: usize = 4;
/// Entries kept before the unknown ones are dropped.
const MAX_ENTRIES: usize = 100_000;

struct Entry {
    key: Option<Arc<CachedKey>>,
    at: Instant,
}

/// Hash of a presented key → the key (or "nobody issued it"). See the
/// module's doc for the invariants.
pub struct KeyCache {
    entries: RwLock<HashMap<String, Entry>>,
    max_age: Duration,
    negative_ttl: Duration,
    /// Bumped by every revocation: a look-up that started before one does
    /// not store what it read (it may predate the revocation).
    generation: AtomicU64,
    lookups: Semaphore,
}

impl KeyCache {
    pub fn new(max_age: Duration, negative_ttl: Duration) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            max_age,
            negative_ttl,
            generation: AtomicU64::new(0),
            lookups: Semaphore::new(LOOKUPS),
        }
    }

    /// The key a presented secret is, from the cache or else the database.
    pub async fn find(
        &self,
        pool: &Pool,
        presented: &str,
    ) -> Result<Option<Arc<CachedKey>>, ApiError> {
        let hash = hash_key(presented);
        if let Some(found) = self.cached(&hash) {
            return Ok(found);
        }
        let _permit = self
            .lookups
            .acquire()
            .await
            .map_err(|_| ApiError::Internal("key look-ups closed".into()))?;
        // Another request may have loaded it while this one waited.
        if let Some(found) = self.cached(&hash) {
            return Ok(found);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let client = pool.get().await.map_err(DbError::from)?;
        let stored = tenancy::load_key(&client, &hash).await?;
        drop(client);
        let key = stored.map(|k| {
            Arc::new(CachedKey {
                id: k.id.to_string(),
                tenant: TenantId::new(k.tenant_id),
                user: k.end_user,
                // A scope this version does not know is not granted.
                scopes: k
                    .scopes
                    .iter()
                    .filter_map(|s| Scope::parse(s).ok())
                    .collect(),
                expires_at: k.expires_at,
                revoked: k.revoked_at.is_some(),
            })
        });
        self.put(hash, key.clone(), generation);
        Ok(key)
    }

    /// `Some(found)` when a live entry answers.
    fn cached(&self, hash: &str) -> Option<Option<Arc<CachedKey>>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(hash)?;
        let ttl = if entry.key.is_some() {
            self.max_age
        } else {
            self.negative_ttl
        };
        (entry.at.elapsed() < ttl).then(|| entry.key.clone())
    }

    fn put(&self, hash: String, key: Option<Arc<CachedKey>>, generation: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.key.is_some() && e.at.elapsed() < self.max_age);
        }
        entries.insert(
            hash,
            Entry {
                key,
                at: Instant::now(),
            },
        );
    }

    /// Forgets the key with this hash (it was revoked).
    pub fn forget(&self, hash: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.remove(hash);
    }

    /// Forgets every key (revocations may have been missed).
    pub fn forget_all(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        assert!(constant_time_eq(b"dev-key", b"dev-key"));
        assert!(!constant_time_eq(b"dev-key", b"dev-kez"));
        assert!(!constant_time_eq(b"dev-key", b"dev-key2"));
    }

    #[test]
    fn a_revocation_during_a_look_up_keeps_the_stale_row_out() {
        let cache = KeyCache::new(Duration::from_secs(60), Duration::from_secs(5));
        let key = Arc::new(CachedKey {
            id: "k".into(),
            tenant: TenantId::new("acme"),
            user: None,
            scopes: Scopes::all(),
            expires_at: None,
            revoked: false,
        });
        let before = cache.generation.load(Ordering::Acquire);
        cache.forget("h");
        cache.put("h".into(), Some(key.clone()), before);
        assert!(cache.cached("h").is_none());
        let now = cache.generation.load(Ordering::Acquire);
        cache.put("h".into(), Some(key), now);
        assert!(cache.cached("h").is_some_and(|k| k.is_some()));
    }

    #[test]
    fn an_unknown_key_is_remembered_as_unknown_for_the_negative_ttl_only() {
        let cache = KeyCache::new(Duration::from_secs(60), Duration::from_millis(50));
        let generation = cache.generation.load(Ordering::Acquire);
        cache.put("nobody".into(), None, generation);
        assert!(matches!(cache.cached("nobody"), Some(None)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.cached("nobody").is_none());
    }

    #[test]
    fn an_expired_or_revoked_key_is_not_usable() {
        let now = Utc::now();
        let mut key = CachedKey {
            id: "k".into(),
            tenant: TenantId::new("acme"),
            user: None,
            scopes: Scopes::all(),
            expires_at: Some(now - chrono::Duration::seconds(1)),
            revoked: false,
        };
        assert!(!key.usable_at(now));
        key.expires_at = Some(now + chrono::Duration::seconds(60));
        assert!(key.usable_at(now));
        key.revoked = true;
        assert!(!key.usable_at(now));
    }
}

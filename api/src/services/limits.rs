//! Limits at submit and the per-organisation limit settings.
//!
//! A submit's limits are checked in one Redis round trip by
//! `llmq_shared::limits::Limiter` (request rate limits, token budgets and
//! spend caps together); this module estimates what a submit reserves,
//! turns the limiter's answer into service errors, keeps each
//! organisation's effective limits in memory (invalidated through the
//! broker when they change, and at most `limits.settings_cache_ms` old),
//! and reads and writes the settings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use llmq_shared::config::{ModelSettings, OrgLimits};
use llmq_shared::db::{org_limits as db, DbError, Pool};
use llmq_shared::events::OrgLimitsChanged;
use llmq_shared::execution::ExecutionId;
use llmq_shared::limits::{self, Admission, Estimate, LimitKind, Limiter, Subject};
use llmq_shared::prompt::{tokens, ChatMessage, CompiledPrompt};
use llmq_shared::queue::Publisher;
use serde_json::{json, Value};

use crate::services::error::{Refusal, Result, ServiceError};
use crate::services::tenancy::Manager;
use llmq_shared::ids::TenantId;

/// `RateLimit-Policy` and `RateLimit` header values of an answer.
pub type RateHeaders = Option<(String, String)>;

/// Each organisation's effective limits, as recently read.
pub struct OrgLimitsCache {
    ttl: Duration,
    generation: AtomicU64,
    entries: RwLock<HashMap<String, (Instant, Arc<OrgLimits>)>>,
}

impl OrgLimitsCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            generation: AtomicU64::new(0),
            entries: RwLock::default(),
        }
    }

    fn get(&self, tenant: &str) -> Option<Arc<OrgLimits>> {
        let map = self.entries.read().ok()?;
        let (at, limits) = map.get(tenant)?;
        (at.elapsed() < self.ttl).then(|| limits.clone())
    }

    /// Remembers limits read under `generation`, unless an invalidation
    /// came since (what was read may predate the change).
    fn put(&self, tenant: &str, limits: Arc<OrgLimits>, generation: u64) {
        if let Ok(mut map) = self.entries.write() {
            if self.generation.load(Ordering::Acquire) == generation {
                map.insert(tenant.to_string(), (Instant::now(), limits));
            }
        }
    }

    pub fn invalidate(&self, tenant: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut map) = self.entries.write() {
            map.remove(tenant);
        }
    }

    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut map) = self.entries.write() {
            map.clear();
        }
    }
}

/// What checking a submit's limits needs.
pub struct LimitDeps<'a> {
    pub pool: &'a Pool,
    pub limiter: &'a Arc<Limiter>,
    pub cache: &'a OrgLimitsCache,
}

/// Who a submit is counted against, besides its organisation and model.
#[derive(Clone, Debug)]
pub struct LimitKey<'a> {
    pub key_id: &'a str,
    /// The key's bound user, else the body's `user`.
    pub user: Option<&'a str>,
}

/// The organisation's limits: overrides over the configured defaults.
pub async fn effective_limits(deps: &LimitDeps<'_>, tenant: &str) -> Result<Arc<OrgLimits>> {
    if let Some(found) = deps.cache.get(tenant) {
        return Ok(found);
    }
    let generation = deps.cache.generation.load(Ordering::Acquire);
    let client = deps.pool.get().await.map_err(DbError::from)?;
    let stored = db::get_org_limits(&client, tenant).await?;
    let overrides = stored.map(|s| s.overrides).unwrap_or_else(|| json!({}));
    let limits = Arc::new(
        deps.limiter
            .effective(&overrides)
            .map_err(|e| ServiceError::Internal(format!("stored limits of {tenant}: {e}")))?,
    );
    deps.cache.put(tenant, limits.clone(), generation);
    Ok(limits)
}

/// What a submit reserves: the rendered messages' tokens with the model's
/// tokenizer plus the completion it may use (`max_tokens` of its
/// parameters, else `limits.default_max_tokens`), and their price.
pub fn estimate(
    compiled: &CompiledPrompt,
    model: &str,
    model_settings: &ModelSettings,
    messages: &[ChatMessage],
    params: &Value,
    default_max_tokens: u32,
) -> Estimate {
    let tokenizer = tokens::tokenizer_for(model, compiled.definition.tokenizer.as_deref());
    let prompt: u64 = messages
        .iter()
        .map(|m| tokens::count_tokens(tokenizer, &m.content) as u64)
        .sum();
    let completion = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| params.get(*k).and_then(Value::as_u64))
        .unwrap_or(default_max_tokens as u64);
    Estimate {
        tokens: prompt + completion,
        spend_micros: limits::spend_micros(
            prompt,
            completion,
            model_settings.prompt_price_per_mtok,
            model_settings.completion_price_per_mtok,
        ),
    }
}

/// Checks and takes every limit of one submit (one Redis round trip when
/// any applies, none otherwise) and reserves `estimate` under `id`.
/// Answers the rate headers, or the refusal.
pub async fn admit(
    deps: &LimitDeps<'_>,
    limits: &OrgLimits,
    id: ExecutionId,
    subject: &Subject<'_>,
    estimate: Estimate,
) -> Result<RateHeaders> {
    if !Limiter::any(limits) {
        return Ok(None);
    }
    match deps.limiter.admit(id, subject, limits, estimate).await {
        Admission::Admitted { rates } => Ok(limits::headers(&rates)),
        Admission::Refused {
            kind,
            limit,
            retry_after_secs,
            rates,
        } => {
            metrics::counter!(llmq_shared::metrics::LIMITS_REFUSED, "kind" => kind.as_str(), "limit" => limit.clone()).increment(1);
            let (code, message) = match kind {
                LimitKind::Requests => (
                    "rate_limited",
                    format!("the {limit} request rate limit is reached"),
                ),
                LimitKind::Tokens => (
                    "token_budget_exceeded",
                    format!(
                        "the {limit} token budget cannot take this request's estimate of {} tokens",
                        estimate.tokens
                    ),
                ),
                LimitKind::Spend => (
                    "budget_exhausted",
                    format!("the {limit} spend cap is reached"),
                ),
            };
            let frees_at: DateTime<Utc> =
                Utc::now() + chrono::Duration::seconds(retry_after_secs as i64);
            Err(ServiceError::Limited(Box::new(Refusal {
                code,
                message,
                retry_after_secs,
                details: json!({
                    "limit": limit,
                    "retry_after_secs": retry_after_secs,
                    "frees_at": frees_at,
                    "estimate_tokens": estimate.tokens,
                }),
                headers: limits::headers(&rates),
            })))
        }
        Admission::Unavailable { kind } => Err(ServiceError::LimitsUnavailable(format!(
            "the {} limits cannot be checked now (their store is unavailable); retry later",
            kind.as_str()
        ))),
    }
}

/// Gives a reservation that no execution will settle back (the submit
/// failed after it was admitted). In the background: the answer does not
/// wait for it, and an unreturned reservation expires by itself.
pub fn release(limiter: Arc<Limiter>, id: ExecutionId) {
    // Dropped at shutdown at worst: the reservation then expires by itself.
    tokio::spawn(async move {
        if let Err(e) = limiter.settle(id, 0, 0).await {
            tracing::debug!(error = %e, execution.id = %id, "reservation not released; it expires by itself");
        }
    });
}

/// An organisation's limit settings as the API shows them.
#[derive(Clone, Debug)]
pub struct OrgLimitsView {
    pub tenant: String,
    /// The fields set for this organisation.
    pub overrides: Value,
    /// Every field, after the defaults.
    pub effective: OrgLimits,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: Option<String>,
}

/// An organisation's limits, for its own admin keys and the operator's;
/// to anyone else the organisation is as absent as a missing one.
pub async fn read_org_limits(
    deps: &LimitDeps<'_>,
    manager: &Manager,
    tenant: &TenantId,
) -> Result<OrgLimitsView> {
    manager.must_see(tenant.as_str())?;
    let (limiter, tenant) = (deps.limiter, tenant.as_str());
    let client = deps.pool.get().await.map_err(DbError::from)?;
    let stored = db::get_org_limits(&client, tenant).await?;
    let overrides = stored
        .as_ref()
        .map(|s| s.overrides.clone())
        .unwrap_or_else(|| json!({}));
    Ok(OrgLimitsView {
        tenant: tenant.to_string(),
        effective: limiter
            .effective(&overrides)
            .map_err(|e| ServiceError::Internal(e.to_string()))?,
        overrides,
        updated_at: stored.as_ref().map(|s| s.updated_at),
        updated_by: stored.map(|s| s.updated_by),
    })
}

/// Replaces the organisation's overrides with `overrides` (an object of
/// `OrgLimits` fields; absent fields take the defaults) and tells every
/// replica. Only the operator changes them: an organisation does not raise
/// its own limits (its admin keys may read them).
pub async fn write_org_limits(
    deps: &LimitDeps<'_>,
    publisher: &Publisher,
    manager: &Manager,
    tenant: &TenantId,
    overrides: Value,
    actor: &str,
) -> Result<OrgLimitsView> {
    manager.must_see(tenant.as_str())?;
    if !manager.operator {
        return Err(ServiceError::Forbidden(
            "only the operator (an admin key of the default organisation) changes an organisation's limits".into(),
        ));
    }
    let (limiter, cache, tenant) = (deps.limiter, deps.cache, tenant.as_str());
    let Some(fields) = overrides.as_object() else {
        return Err(ServiceError::InvalidRequest(
            "the body must be an object of limit fields".into(),
        ));
    };
    if let Some((k, _)) = fields.iter().find(|(_, v)| v.is_null()) {
        return Err(ServiceError::InvalidRequest(format!(
            "{k}: null is not a limit; leave the field out to use the default"
        )));
    }
    let effective = limiter
        .effective(&overrides)
        .map_err(|e| ServiceError::InvalidRequest(format!("limits: {e}")))?;
    if [effective.spend_usd_per_day, effective.spend_usd_per_month]
        .iter()
        .any(|v| !v.is_finite() || *v < 0.0)
    {
        return Err(ServiceError::InvalidRequest(
            "spend caps must be finite and not negative".into(),
        ));
    }
    let client = deps.pool.get().await.map_err(DbError::from)?;
    let stored = db::put_org_limits(&client, tenant, &overrides, actor).await?;
    drop(client);
    cache.invalidate(tenant);
    publisher
        .publish_org_limits_changed(&OrgLimitsChanged {
            tenant: tenant.to_string(),
        })
        .await;
    Ok(OrgLimitsView {
        tenant: tenant.to_string(),
        overrides: stored.overrides,
        effective,
        updated_at: Some(stored.updated_at),
        updated_by: Some(stored.updated_by),
    })
}

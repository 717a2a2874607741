//! Submitting an execution: replay an idempotent retry, resolve the
//! prompt version, plan the row (`super::plan`), commit it, hand it to the
//! publisher. The row (with its outbox mark) is committed before the
//! answer; a publish the broker did not confirm is left to the outbox
//! relay, so an accepted execution is never lost.
//!
//! The deadline: running out of time answers `Unavailable`, and then
//! nothing is written. Before the row is handed to a write it is simply
//! withdrawn; once its batch was sent, the statement itself carries the
//! deadline and writes the row only if it runs before it (by the
//! database's clock; the answer waits `CLOCK_MARGIN` longer for skew). So
//! `Unavailable` means "not accepted" and a retry without an idempotency
//! key cannot make a second execution, and a database that stops
//! answering still gets an answer within the deadline and the margin. The
//! one case no client can rule out is a commit whose acknowledgement is
//! lost on the way back; an `Idempotency-Key` covers it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use llmq_shared::batch::Batcher;
use llmq_shared::config::ModelSettings;
use llmq_shared::db::prompts::{resolve_prompt, Unresolved, VersionRef};
use llmq_shared::db::{executions as db, idempotency, labels, prompts, DbError, Pool};
use llmq_shared::execution::{Execution, NewExecution};
use llmq_shared::ids::{IdempotencyKey, Label, TenantId};
use llmq_shared::prompt::{CompiledPrompt, LabelCache, LabelRule, PromptCache};
use tokio::time::Instant;

use super::plan::{plan_and_render, PromptTarget, SubmitRequest};
use crate::services::error::{Result, ServiceError};
use crate::services::limits::{self, LimitDeps, LimitKey, RateHeaders};
use crate::services::within_until;

/// What a submission produced.
pub enum Submitted {
    /// A new execution (202).
    Created(Execution),
    /// The execution an earlier request with the same idempotency key and
    /// body created (200).
    Existing(Execution),
}

/// A new execution waiting in the insert batcher, with the submit's
/// deadline: a batch that starts after it leaves the row out.
pub struct PendingInsert {
    pub new: NewExecution,
    pub deadline: Instant,
}

/// Group-committed inserts: `None` for an item whose deadline had passed
/// when its batch started (not written).
pub type Inserts = Batcher<PendingInsert, std::result::Result<Option<Execution>, DbError>>;

/// Accepted executions to publish with a confirm, in the background.
pub type PublishQueue = crate::outbox::Outbox;

/// Writes one batch of pending inserts in one statement: each row only if
/// the statement runs before its submit's deadline (see
/// `insert_executions_until`); an item already past it is not sent.
/// Answers one output per item, in order.
pub fn insert_pending<'a>(
    client: &'a deadpool_postgres::Object,
    items: &'a [PendingInsert],
    republish_after: Duration,
) -> BoxFuture<'a, llmq_shared::db::Result<Vec<Option<Execution>>>> {
    async move {
        let now = Instant::now();
        let wall = chrono::Utc::now();
        let live: Vec<(&NewExecution, Option<chrono::DateTime<chrono::Utc>>)> = items
            .iter()
            .filter(|p| p.deadline > now)
            .map(|p| {
                let left = chrono::Duration::from_std(p.deadline - now).unwrap_or_default();
                (&p.new, Some(wall + left))
            })
            .collect();
        let mut inserted = if live.is_empty() {
            Vec::new()
        } else {
            db::insert_executions_until(client, &live, republish_after).await?
        }
        .into_iter();
        Ok(items
            .iter()
            .map(|p| {
                if p.deadline > now {
                    inserted.next().flatten()
                } else {
                    None
                }
            })
            .collect())
    }
    .boxed()
}

/// How long past its deadline a submit waits for a write already sent:
/// covers the skew between this host's clock and the database's, which
/// `insert_executions_until` compares the deadline with.
const CLOCK_MARGIN: Duration = Duration::from_secs(1);

/// Everything a submission touches, and nothing more.
pub struct SubmitDeps<'a> {
    pub pool: &'a Pool,
    pub prompts: &'a PromptCache,
    pub labels: &'a LabelCache,
    pub models: &'a BTreeMap<String, ModelSettings>,
    pub inserts: &'a Inserts,
    pub to_publish: &'a PublishQueue,
    pub republish_after: Duration,
    pub idempotency_ttl: Duration,
    /// Which `webhook.url`s are accepted.
    pub destinations: &'a llmq_shared::webhook::destination::DestinationPolicy,
    /// Request rate limits, token budgets and spend caps.
    pub limits: LimitDeps<'a>,
}

fn out_of_time() -> ServiceError {
    ServiceError::Unavailable("the database did not answer in time; retry later".into())
}

#[tracing::instrument(skip_all, fields(prompt = %request.prompt, execution.id))]
pub async fn submit_execution(
    deps: &SubmitDeps<'_>,
    tenant: &TenantId,
    key: &LimitKey<'_>,
    mut request: SubmitRequest,
    idempotency_key: Option<IdempotencyKey>,
    deadline: Instant,
) -> Result<(Submitted, RateHeaders)> {
    if let Some(bound) = key.user {
        // A key bound to an end user submits as that user only.
        match &request.user {
            Some(asked) if asked != bound => {
                return Err(ServiceError::Forbidden(
                    "user: this key is bound to another end user".into(),
                ))
            }
            _ => request.user = Some(bound.to_string()),
        }
    }
    let idempotency = idempotency_key.map(|key| (key, request.fingerprint()));
    if let Some((key, hash)) = &idempotency {
        let replayed = within_until(deadline, async {
            let client = deps.pool.get().await.map_err(DbError::from)?;
            replay(&client, tenant, key, hash).await
        })
        .await?;
        if let Some(existing) = replayed {
            return Ok((Submitted::Existing(existing), None));
        }
    }
    if let Some(url) = &request.webhook_url {
        let check =
            crate::services::webhooks::check_destination(deps.destinations, "webhook.url", url);
        within_until(deadline, check).await?;
    }
    let (compiled, label, arm) = within_until(deadline, resolve(deps, tenant, &request)).await?;
    let user = request.user.clone();
    let (mut new, messages) = plan_and_render(tenant, request, &compiled, label, deps.models)?;
    new.prompt_arm = arm;
    new.key_id = Some(key.key_id.to_string());
    tracing::Span::current().record("execution.id", tracing::field::display(new.id));

    // Every limit in one Redis round trip; the reservation is the
    // execution's id, settled by whoever finishes it.
    let org_limits = within_until(
        deadline,
        limits::effective_limits(&deps.limits, tenant.as_str()),
    )
    .await?;
    // Only a token budget or a spend cap reserves the estimate: without
    // one the prompt's tokens are not counted at all.
    let reserves = llmq_shared::limits::Limiter::reserves(&org_limits);
    let estimate = if reserves {
        limits::estimate(
            &compiled,
            &new.model,
            &deps.models.get(&new.model).cloned().unwrap_or_default(),
            &messages,
            &new.params,
            deps.limits.limiter.settings().default_max_tokens,
        )
    } else {
        llmq_shared::limits::Estimate::default()
    };
    let subject = llmq_shared::limits::Subject {
        tenant: tenant.as_str(),
        key_id: key.key_id,
        user: user.as_deref(),
        model: &new.model,
    };
    let rate_headers = limits::admit(&deps.limits, &org_limits, new.id, &subject, estimate).await?;
    let id = new.id;
    let admitted = llmq_shared::limits::Limiter::any(&org_limits);
    new.reserved = reserves;
    let stored = store(deps, tenant, new, idempotency, deadline).await;
    if admitted && !matches!(stored, Ok(Submitted::Created(_))) {
        limits::release(deps.limits.limiter.clone(), id);
    }
    Ok((stored?, rate_headers))
}

/// Writes the planned row (group-committed, or with its idempotency key)
/// and hands it to the publisher.
async fn store(
    deps: &SubmitDeps<'_>,
    tenant: &TenantId,
    new: NewExecution,
    idempotency: Option<(IdempotencyKey, String)>,
    deadline: Instant,
) -> Result<Submitted> {
    let execution = match idempotency {
        // Group-committed with concurrent submits: one statement for many.
        // Past the deadline (plus the clock margin) the statement, if it
        // ever runs, writes nothing: answering 503 then is safe.
        None => tokio::time::timeout_at(
            deadline + CLOCK_MARGIN,
            deps.inserts.submit(PendingInsert { new, deadline }),
        )
        .await
        .map_err(|_| out_of_time())?
        .map_err(|e| ServiceError::Unavailable(e.to_string()))??
        .ok_or_else(out_of_time)?,
        Some((key, hash)) => {
            match insert_with_key(deps, tenant, &key, &hash, new, deadline).await? {
                Some(execution) => execution,
                None => {
                    let client = deps.pool.get().await.map_err(DbError::from)?;
                    return match replay(&client, tenant, &key, &hash).await? {
                        Some(existing) => Ok(Submitted::Existing(existing)),
                        None => Err(ServiceError::Conflict(
                            "a request with this Idempotency-Key is in progress; retry".into(),
                        )),
                    };
                }
            }
        }
    };

    // The row is durable now: that is what 202 promises. The publish is
    // confirmed in the background; until it is, the row's outbox mark
    // stands and the relay publishes it if the broker never confirms.
    if deps
        .to_publish
        .try_send((
            execution.id,
            execution.tenant_id.clone(),
            execution.priority,
        ))
        .is_err()
    {
        tracing::warn!("publish backlog full; the outbox relay will publish it");
    }
    metrics::counter!(llmq_shared::metrics::EXECUTIONS_SUBMITTED, "prompt" => execution.prompt_name.clone()).increment(1);
    Ok(Submitted::Created(execution))
}

/// Inserts the execution and binds the key to it in one transaction;
/// `None` when another request holds the key. The deadline bounds the work
/// before the commit (running out rolls back); the commit itself is waited
/// for, so a 503 never hides a committed row.
async fn insert_with_key(
    deps: &SubmitDeps<'_>,
    tenant: &TenantId,
    key: &IdempotencyKey,
    hash: &str,
    new: NewExecution,
    deadline: Instant,
) -> Result<Option<Execution>> {
    let mut client = within_until(deadline, async {
        Ok(deps.pool.get().await.map_err(DbError::from)?)
    })
    .await?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let prepared = within_until(deadline, async {
        let execution = db::insert_executions(&tx, &[&new], deps.republish_after)
            .await?
            .pop()
            .ok_or_else(|| ServiceError::Internal("insert answered no row".into()))?;
        let claimed = idempotency::claim_idempotency_key(
            &tx,
            tenant.as_str(),
            key.as_str(),
            hash,
            new.id,
            deps.idempotency_ttl,
        )
        .await?;
        Ok(claimed.then_some(execution))
    })
    .await?;
    let Some(execution) = prepared else {
        return Ok(None);
    };
    tx.commit().await.map_err(DbError::from)?;
    Ok(Some(execution))
}

/// The compiled prompt version a request names, with the label and the
/// arm of its rule it was reached through. Versions are immutable, so a
/// compiled one is reused for good; a label's rule is cached until a move
/// invalidates it or `api.label_cache_ms` passes. On a warm cache this
/// reads nothing from the database, split or not.
async fn resolve(
    deps: &SubmitDeps<'_>,
    tenant: &TenantId,
    request: &SubmitRequest,
) -> Result<(Arc<CompiledPrompt>, Option<Label>, Option<String>)> {
    // The organisation's own registry: another's prompt cannot be named.
    let key = tenant.prompt_key(request.prompt.as_str());
    let name = key.as_str();
    let (version, label, arm) = match &request.target {
        PromptTarget::Version(v) => (*v, None, None),
        PromptTarget::Label(l) => {
            let rule = label_rule(deps, name, l.as_str()).await?;
            let segment = request.segment.as_deref().or_else(|| {
                rule.segment_key
                    .as_deref()
                    .and_then(|k| request.metadata.get(k))
                    .and_then(|v| v.as_str())
            });
            let assigned = rule.assign(name, l.as_str(), request.user.as_deref(), segment);
            (assigned.version, Some(l.clone()), assigned.arm)
        }
    };
    if let Some(found) = deps.prompts.get(name, version) {
        return Ok((found, label, arm));
    }
    let client = deps.pool.get().await.map_err(DbError::from)?;
    let stored = resolve_prompt(&client, name, VersionRef::Number(version))
        .await?
        .map_err(|why| {
            ServiceError::NotFound(match why {
                Unresolved::UnknownPrompt => {
                    format!("no prompt named {:?}", request.prompt.as_str())
                }
                _ => format!(
                    "prompt {:?} has no version {version}",
                    request.prompt.as_str()
                ),
            })
        })?;
    drop(client);
    let compiled = deps
        .prompts
        .get_or_compile(&stored.name, stored.version, || stored.definition)
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    Ok((compiled, label, arm))
}

/// The rule of a label, from the cache or else the registry.
async fn label_rule(deps: &SubmitDeps<'_>, name: &str, label: &str) -> Result<Arc<LabelRule>> {
    if let Some(rule) = deps.labels.get(name, label) {
        return Ok(rule);
    }
    let generation = deps.labels.generation();
    let client = deps.pool.get().await.map_err(DbError::from)?;
    let Some(stored) = labels::get_label(&client, name, label).await? else {
        let exists = !prompts::list_versions(&client, name).await?.is_empty();
        let name = llmq_shared::ids::public_prompt_name(name);
        return Err(ServiceError::NotFound(if exists {
            format!("prompt {name:?} has no label {label:?}")
        } else {
            format!("no prompt named {name:?}")
        }));
    };
    let rule = Arc::new(stored.rule);
    deps.labels.put(name, label, rule.clone(), generation);
    Ok(rule)
}

/// The execution a live idempotency key points at, if the body matches;
/// a conflict if the same key came with a different body.
async fn replay(
    client: &deadpool_postgres::Object,
    tenant: &TenantId,
    key: &IdempotencyKey,
    hash: &str,
) -> Result<Option<Execution>> {
    let Some((id, stored_hash)) =
        idempotency::find_idempotent(client, tenant.as_str(), key.as_str()).await?
    else {
        return Ok(None);
    };
    if stored_hash != hash {
        return Err(ServiceError::Conflict(
            "Idempotency-Key was already used with a different request body".into(),
        ));
    }
    // On the connection already held: taking a second one here would let a
    // burst of retries hold every connection while waiting for another.
    db::get_execution(client, tenant.as_str(), id)
        .await?
        .ok_or_else(|| super::not_found(id))
        .map(Some)
}

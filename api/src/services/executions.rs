//! Submitting and reading executions. Submission is: resolve the prompt
//! label, validate and render the input (so template errors surface as
//! 422 now, not in the worker), commit the row, answer 202, and publish it
//! with a confirm in the background. The row (with its outbox mark) is
//! committed before the answer; a publish the broker did not confirm is
//! left to the outbox relay, so an accepted execution is never lost.

use std::sync::Arc;
use std::time::Duration;

use llmq_shared::canonical::json_sha256;
use llmq_shared::db::prompts::{resolve_prompt, Unresolved, VersionRef};
use llmq_shared::db::{executions as db, idempotency, steps as db_steps};
use llmq_shared::events::ExecutionEvent;
use llmq_shared::execution::{codes, Execution, ExecutionId, ExecutionStatus, NewExecution};
use llmq_shared::prompt::{validate_name, CompiledPrompt, DEFAULT_LABEL};
use llmq_shared::step::Step;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::resources::SubmitExecution;
use crate::state::AppState;

/// What a submission produced.
pub enum Submitted {
    /// A new execution (202).
    Created(Execution),
    /// The execution an earlier request with the same idempotency key and
    /// body created (200).
    Existing(Execution),
}

#[tracing::instrument(skip_all, fields(prompt = %req.prompt, execution.id), err(Display))]
pub async fn submit_execution(
    state: &AppState,
    caller: &Caller,
    req: SubmitExecution,
    idempotency_key: Option<&str>,
) -> Result<Submitted, ApiError> {
    check_request(&req)?;
    let idempotency = match idempotency_key {
        Some(key) => {
            check_idempotency_key(key)?;
            let hash = json_sha256(
                &serde_json::to_value(&req).map_err(|e| ApiError::Internal(e.to_string()))?,
            );
            Some((key, hash))
        }
        None => None,
    };
    if let Some((key, hash)) = &idempotency {
        let client = state.db().await?;
        if let Some(existing) = replay(caller, &client, key, hash).await? {
            return Ok(Submitted::Existing(existing));
        }
    }
    let version_ref = match (&req.version, &req.label) {
        (Some(v), None) => VersionRef::Number(*v),
        (None, label) => VersionRef::Label(label.as_deref().unwrap_or(DEFAULT_LABEL)),
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give either version or label, not both".into(),
            ))
        }
    };
    let (compiled, label) = resolve(state, &req.prompt, version_ref).await?;

    let violations = compiled.validate_input(&req.input);
    if let Some(first) = violations.first() {
        return Err(ApiError::Unprocessable {
            code: codes::INVALID_INPUT,
            message: format!("{}: {}", first.path, first.message),
            details: Some(serde_json::json!({ "violations": violations })),
        });
    }
    compiled
        .render(&req.input)
        .map_err(|e| ApiError::Unprocessable {
            code: codes::TEMPLATE_ERROR,
            message: e.to_string(),
            details: None,
        })?;

    let model = match &req.model {
        Some(m) if *m != compiled.definition.model && !state.settings.models.contains_key(m) => {
            return Err(ApiError::Unprocessable {
                code: "model_not_allowed",
                message: format!("model {m:?} is not configured"),
                details: None,
            })
        }
        Some(m) => m.clone(),
        None => compiled.definition.model.clone(),
    };
    let mut params = compiled.definition.params.clone();
    params.extend(req.params.clone().unwrap_or_default());

    let new = NewExecution {
        id: ExecutionId::new(),
        tenant_id: caller.tenant_id.clone(),
        prompt_name: compiled.name.clone(),
        prompt_version: compiled.version,
        prompt_label: label,
        model,
        params: Value::Object(params),
        input: req.input,
        metadata: req
            .metadata
            .unwrap_or_else(|| Value::Object(Default::default())),
        end_user: req.user,
        priority: req.priority.unwrap_or(5),
        stream: req.stream,
        webhook_url: req.webhook.map(|w| w.url),
    };
    tracing::Span::current().record("execution.id", tracing::field::display(new.id));
    let republish_after = state.settings.republish_after();
    let execution = match &idempotency {
        // Group-committed with concurrent submits: one statement for many.
        None => {
            state.inserts.submit(new).await.map_err(|e| {
                ApiError::from(llmq_shared::db::DbError::Unavailable(e.to_string()))
            })??
        }
        Some((key, hash)) => {
            // The execution and its key commit together or not at all.
            let mut client = state.db().await?;
            let tx = client
                .transaction()
                .await
                .map_err(llmq_shared::db::DbError::from)?;
            let execution = db::insert_executions(&tx, &[&new], republish_after)
                .await?
                .pop()
                .ok_or_else(|| ApiError::Internal("insert answered no row".into()))?;
            let ttl = Duration::from_secs(state.settings.api.idempotency_ttl_secs);
            if !idempotency::claim_idempotency_key(&tx, &caller.tenant_id, key, hash, new.id, ttl)
                .await?
            {
                drop(tx);
                return match replay(caller, &client, key, hash).await? {
                    Some(existing) => Ok(Submitted::Existing(existing)),
                    None => Err(ApiError::Conflict(
                        "a request with this Idempotency-Key is in progress; retry".into(),
                    )),
                };
            }
            tx.commit().await.map_err(llmq_shared::db::DbError::from)?;
            execution
        }
    };

    // The row is durable now: that is what 202 promises. The publish is
    // confirmed in the background; until it is, the row's outbox mark
    // stands and the relay publishes it if the broker never confirms.
    if state
        .to_publish
        .try_send((execution.id, execution.priority))
        .is_err()
    {
        tracing::warn!("publish backlog full; the outbox relay will publish it");
    }
    metrics::counter!(llmq_shared::metrics::EXECUTIONS_SUBMITTED, "prompt" => execution.prompt_name.clone()).increment(1);
    Ok(Submitted::Created(execution))
}

/// The compiled prompt version a request names, with the label it was
/// reached through. Versions are immutable, so a compiled one is reused
/// for good; a label is trusted for `api.label_cache_ms` after it was read.
async fn resolve(
    state: &AppState,
    name: &str,
    version_ref: VersionRef<'_>,
) -> Result<(Arc<CompiledPrompt>, Option<String>), ApiError> {
    let cached = match &version_ref {
        VersionRef::Number(v) => state.prompts.get(name, *v).map(|p| (p, None)),
        VersionRef::Label(l) => state
            .labels
            .get(name, l)
            .and_then(|v| state.prompts.get(name, v))
            .map(|p| (p, Some(l.to_string()))),
    };
    if let Some(found) = cached {
        return Ok(found);
    }
    let client = state.db().await?;
    let stored = resolve_prompt(&client, name, version_ref.clone())
        .await?
        .map_err(|why| {
            ApiError::NotFound(match (why, &version_ref) {
                (Unresolved::UnknownPrompt, _) => format!("no prompt named {name:?}"),
                (_, VersionRef::Number(v)) => format!("prompt {name:?} has no version {v}"),
                (_, VersionRef::Label(l)) => format!("prompt {name:?} has no label {l:?}"),
            })
        })?;
    drop(client);
    let compiled = state
        .prompts
        .get_or_compile(&stored.name, stored.version, || stored.definition)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(label) = &stored.label {
        state.labels.put(&stored.name, label, stored.version);
    }
    Ok((compiled, stored.label))
}

/// The execution a live idempotency key points at, if the body matches;
/// 409 if the same key came with a different body.
async fn replay(
    caller: &Caller,
    client: &deadpool_postgres::Object,
    key: &str,
    hash: &str,
) -> Result<Option<Execution>, ApiError> {
    let Some((id, stored_hash)) =
        idempotency::find_idempotent(client, &caller.tenant_id, key).await?
    else {
        return Ok(None);
    };
    if stored_hash != hash {
        return Err(ApiError::Conflict(
            "Idempotency-Key was already used with a different request body".into(),
        ));
    }
    // On the connection already held: taking a second one here would let a
    // burst of retries hold every connection while waiting for another.
    db::get_execution(client, &caller.tenant_id, id)
        .await?
        .ok_or_else(|| not_found(id))
        .map(Some)
}

fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        ));
    }
    Ok(())
}

/// Cancels a queued execution now, or asks the worker running it to stop
/// at the next step boundary (its in-flight model call is aborted).
#[tracing::instrument(skip_all, fields(execution.id = %id), err(Display))]
pub async fn cancel_execution(
    state: &AppState,
    caller: &Caller,
    id: ExecutionId,
) -> Result<Execution, ApiError> {
    let client = state.db().await?;
    match db::request_cancel(&client, &caller.tenant_id, id).await? {
        Some(execution) => {
            if execution.status == ExecutionStatus::Cancelled {
                state
                    .publisher
                    .publish_terminal_events(&[ExecutionEvent {
                        id,
                        status: ExecutionStatus::Cancelled,
                    }])
                    .await;
                metrics::counter!(llmq_shared::metrics::EXECUTIONS_FINISHED, "status" => "cancelled").increment(1);
            }
            Ok(execution)
        }
        None => {
            let existing = db::get_execution(&client, &caller.tenant_id, id)
                .await?
                .ok_or_else(|| not_found(id))?;
            Err(ApiError::Conflict(format!(
                "execution is already {}",
                existing.status
            )))
        }
    }
}

fn check_request(req: &SubmitExecution) -> Result<(), ApiError> {
    validate_name(&req.prompt).map_err(ApiError::BadRequest)?;
    if let Some(label) = &req.label {
        validate_name(label).map_err(ApiError::BadRequest)?;
    }
    if let Some(p) = req.priority {
        if !(0..=9).contains(&p) {
            return Err(ApiError::BadRequest(
                "priority must be between 0 and 9".into(),
            ));
        }
    }
    if req.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(ApiError::BadRequest("metadata must be an object".into()));
    }
    if let Some(w) = &req.webhook {
        if !(w.url.starts_with("https://") || w.url.starts_with("http://")) {
            return Err(ApiError::BadRequest(
                "webhook.url must be an http(s) URL".into(),
            ));
        }
    }
    Ok(())
}

/// An execution of the caller's tenant, or 404.
pub async fn get_execution(
    state: &AppState,
    caller: &Caller,
    id: ExecutionId,
) -> Result<Execution, ApiError> {
    let client = state.db().await?;
    db::get_execution(&client, &caller.tenant_id, id)
        .await?
        .ok_or_else(|| not_found(id))
}

/// Reads the execution, waiting up to `wait` for it to become terminal.
/// Watches its events before reading, so a finish between the read and
/// the wait is not missed; re-reads every second regardless.
pub async fn wait_for_execution(
    state: &AppState,
    caller: &Caller,
    id: ExecutionId,
    wait: Duration,
) -> Result<Execution, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut events = state.events.watch(id);
    loop {
        let execution = super::within(state.deadline(), get_execution(state, caller, id)).await?;
        let now = tokio::time::Instant::now();
        if execution.status.is_terminal() || now >= deadline {
            return Ok(execution);
        }
        let recheck = (deadline - now).min(Duration::from_secs(1));
        tokio::select! {
            _ = events.next() => {}
            _ = tokio::time::sleep(recheck) => {}
        }
    }
}

/// The step trace of an execution of the caller's tenant.
pub async fn list_steps(
    state: &AppState,
    caller: &Caller,
    id: ExecutionId,
) -> Result<Vec<Step>, ApiError> {
    let client = state.db().await?;
    let steps = db_steps::list_steps(&client, &caller.tenant_id, id).await?;
    if steps.is_empty() {
        // Distinguish "no steps yet" from "no such execution".
        db::get_execution(&client, &caller.tenant_id, id)
            .await?
            .ok_or_else(|| not_found(id))?;
    }
    Ok(steps)
}

fn not_found(id: ExecutionId) -> ApiError {
    ApiError::NotFound(format!("no execution {id}"))
}

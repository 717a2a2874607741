//! Submitting and reading executions. Submission is: resolve the prompt
//! label, validate and render the input (so template errors surface as
//! 422 now, not in the worker), commit the row, publish it with a confirm.
//! The row is committed before the answer; a publish the broker did not
//! confirm is left to the outbox relay, so an accepted execution is never
//! lost and the client still gets its 202.

use std::time::Duration;

use llmq_shared::db::prompts::{resolve_prompt, Unresolved, VersionRef};
use llmq_shared::db::{executions as db, steps as db_steps};
use llmq_shared::execution::{Execution, ExecutionId, NewExecution};
use llmq_shared::prompt::{validate_name, DEFAULT_LABEL};
use llmq_shared::step::Step;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::resources::SubmitExecution;
use crate::state::AppState;

#[tracing::instrument(skip_all, fields(prompt = %req.prompt, execution.id), err(Display))]
pub async fn submit_execution(state: &AppState, caller: &Caller, req: SubmitExecution) -> Result<Execution, ApiError> {
    check_request(&req)?;
    let version_ref = match (&req.version, &req.label) {
        (Some(v), None) => VersionRef::Number(*v),
        (None, label) => VersionRef::Label(label.as_deref().unwrap_or(DEFAULT_LABEL)),
        (Some(_), Some(_)) => return Err(ApiError::BadRequest("give either version or label, not both".into())),
    };
    let client = state.pool.get().await.map_err(llmq_shared::db::DbError::from)?;
    let stored = resolve_prompt(&client, &req.prompt, version_ref.clone()).await?.map_err(|why| {
        ApiError::NotFound(match (why, &version_ref) {
            (Unresolved::UnknownPrompt, _) => format!("no prompt named {:?}", req.prompt),
            (_, VersionRef::Number(v)) => format!("prompt {:?} has no version {v}", req.prompt),
            (_, VersionRef::Label(l)) => format!("prompt {:?} has no label {l:?}", req.prompt),
        })
    })?;
    let definition = stored.definition.clone();
    let compiled = state
        .prompts
        .get_or_compile(&stored.name, stored.version, || definition)
        .map_err(|e| ApiError::Internal(e.to_string()))?;

    let violations = compiled.validate_input(&req.input);
    if let Some(first) = violations.first() {
        return Err(ApiError::Unprocessable {
            code: "invalid_input",
            message: format!("{}: {}", first.path, first.message),
            details: Some(serde_json::json!({ "violations": violations })),
        });
    }
    compiled.render(&req.input).map_err(|e| ApiError::Unprocessable {
        code: "template_error",
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
        prompt_name: stored.name.clone(),
        prompt_version: stored.version,
        prompt_label: stored.label.clone(),
        model,
        params: Value::Object(params),
        input: req.input,
        metadata: req.metadata.unwrap_or_else(|| Value::Object(Default::default())),
        end_user: req.user,
        priority: req.priority.unwrap_or(5),
        stream: req.stream,
        webhook_url: req.webhook.map(|w| w.url),
        idempotency_key: None,
        request_hash: None,
    };
    tracing::Span::current().record("execution.id", tracing::field::display(new.id));
    let republish_after = Duration::from_secs(state.settings.api.republish_after_secs);
    let execution = db::insert_execution(&client, &new, republish_after).await?;
    drop(client);

    match state.publisher.publish_execution(execution.id, execution.priority).await {
        Ok(()) => {
            // Full channel: the mark stays and the relay publishes a harmless duplicate.
            let _ = state.confirmed.try_send(execution.id.0);
        }
        Err(e) => tracing::warn!(error = %e, "publish not confirmed; the outbox relay will publish it"),
    }
    metrics::counter!(llmq_shared::metrics::EXECUTIONS_SUBMITTED, "prompt" => execution.prompt_name.clone()).increment(1);
    Ok(execution)
}

fn check_request(req: &SubmitExecution) -> Result<(), ApiError> {
    validate_name(&req.prompt).map_err(ApiError::BadRequest)?;
    if let Some(label) = &req.label {
        validate_name(label).map_err(ApiError::BadRequest)?;
    }
    if let Some(p) = req.priority {
        if !(0..=9).contains(&p) {
            return Err(ApiError::BadRequest("priority must be between 0 and 9".into()));
        }
    }
    if req.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(ApiError::BadRequest("metadata must be an object".into()));
    }
    if let Some(w) = &req.webhook {
        if !(w.url.starts_with("https://") || w.url.starts_with("http://")) {
            return Err(ApiError::BadRequest("webhook.url must be an http(s) URL".into()));
        }
    }
    Ok(())
}

/// An execution of the caller's tenant, or 404.
pub async fn get_execution(state: &AppState, caller: &Caller, id: ExecutionId) -> Result<Execution, ApiError> {
    let client = state.pool.get().await.map_err(llmq_shared::db::DbError::from)?;
    db::get_execution(&client, &caller.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no execution {id}")))
}

/// Reads the execution, waiting up to `wait` for it to become terminal.
/// Registers for the wake-up before reading, so a finish between the read
/// and the wait is not missed; re-reads every second regardless.
pub async fn wait_for_execution(state: &AppState, caller: &Caller, id: ExecutionId, wait: Duration) -> Result<Execution, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let waiter = state.waiters.register(id);
    loop {
        let notified = waiter.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let execution = get_execution(state, caller, id).await?;
        let now = tokio::time::Instant::now();
        if execution.status.is_terminal() || now >= deadline {
            return Ok(execution);
        }
        let recheck = (deadline - now).min(Duration::from_secs(1));
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(recheck) => {}
        }
    }
}

/// The step trace of an execution of the caller's tenant.
pub async fn list_steps(state: &AppState, caller: &Caller, id: ExecutionId) -> Result<Vec<Step>, ApiError> {
    let client = state.pool.get().await.map_err(llmq_shared::db::DbError::from)?;
    let steps = db_steps::list_steps(&client, &caller.tenant_id, id).await?;
    if steps.is_empty() {
        // Distinguish "no steps yet" from "no such execution".
        db::get_execution(&client, &caller.tenant_id, id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no execution {id}")))?;
    }
    Ok(steps)
}

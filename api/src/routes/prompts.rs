//! `/v1/prompts` handlers: the registry (versions, diff), labels (move,
//! roll back, history) and per-version stats.

use actix_web::{get, post, put, web, HttpResponse};
use chrono::{DateTime, Utc};
use llmq_shared::db::prompts::Created;
use llmq_shared::prompt::validate_name;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::resources::prompts::{
    CreatedVersion, LabelHistory, LabelMoveResource, LabelResource, MoveLabel, PromptList,
    PromptResource, PromptStats, RollbackLabel, VersionDiff, VersionResource,
};
use crate::services::prompts::labels::{self as labels, Actor, LabelDeps};
use crate::services::prompts::{diff as diffs, stats as figures, versions};
use crate::services::within;
use crate::state::AppState;

fn name(raw: &str, field: &str) -> Result<String, ApiError> {
    validate_name(raw).map_err(|e| ApiError::BadRequest(format!("{field}: {e}")))?;
    Ok(raw.to_string())
}

fn deps(state: &AppState) -> LabelDeps<'_> {
    LabelDeps {
        pool: &state.pool,
        publisher: &state.publisher,
        labels: &state.labels,
        protected_labels: &state.settings.api.protected_labels,
    }
}

fn actor(caller: &Caller) -> Actor {
    Actor {
        name: caller.actor(),
        promote: caller
            .scopes
            .contains(llmq_shared::keys::Scope::PromptsPromote),
    }
}

/// List the prompts in the registry.
#[utoipa::path(
    tag = "prompts",
    responses((status = 200, body = PromptList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/prompts")]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let prompts = within(
        state.deadline(),
        versions::list_prompts(&state.pool, &caller.tenant),
    )
    .await?;
    Ok(HttpResponse::Ok().json(PromptList {
        prompts: prompts.into_iter().map(Into::into).collect(),
    }))
}

/// A prompt's versions and labels.
#[utoipa::path(
    tag = "prompts",
    params(("name" = String, Path)),
    responses((status = 200, body = PromptResource), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/prompts/{name}")]
pub async fn show(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = name(&path, "name")?;
    let (v, l) = within(
        state.deadline(),
        versions::show_prompt(&state.pool, &caller.tenant.prompt_key(&name)),
    )
    .await?;
    let protected = &state.settings.api.protected_labels;
    Ok(HttpResponse::Ok().json(PromptResource {
        name,
        versions: v.into_iter().map(Into::into).collect(),
        labels: l
            .into_iter()
            .map(|l| LabelResource::new(l, protected))
            .collect(),
    }))
}

/// Create the next version from a definition (the fields of a prompt file,
/// as JSON). The same content as an existing version answers that version.
#[utoipa::path(
    tag = "prompts",
    params(("name" = String, Path)),
    request_body(content = Object, description = "The definition: the fields of a prompts/<name>/v<N>.toml file"),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 201, description = "A new version", body = CreatedVersion),
        (status = 200, description = "An existing version has exactly this content; nothing stored", body = CreatedVersion),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "invalid_definition: a field, a template or the input schema is invalid", body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = ["prompts:write"]))
)]
#[post("/v1/prompts/{name}/versions")]
pub async fn create_version(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let name = name(&path, "name")?;
    let key = caller.tenant.prompt_key(&name);
    let work = versions::create_version(&state.pool, &key, body.into_inner());
    let (mut response, number, created) = match within(state.deadline(), work).await? {
        Created::New(v) => (HttpResponse::Created(), v, true),
        Created::Existing(v) => (HttpResponse::Ok(), v, false),
    };
    Ok(response.json(CreatedVersion {
        name,
        version: number,
        created,
    }))
}

/// One version with its definition.
#[utoipa::path(
    tag = "prompts",
    params(("name" = String, Path), ("version" = i32, Path)),
    responses((status = 200, body = VersionResource), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/prompts/{name}/versions/{version}")]
pub async fn version(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, i32)>,
) -> Result<HttpResponse, ApiError> {
    let (raw, number) = path.into_inner();
    let name = name(&raw, "name")?;
    let (info, definition) = within(
        state.deadline(),
        versions::get_version(&state.pool, &caller.tenant.prompt_key(&name), number),
    )
    .await?;
    Ok(HttpResponse::Ok().json(VersionResource::new(&name, info, &definition)))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct DiffQuery {
    pub from: i32,
    pub to: i32,
}

/// A field-level diff of two versions.
#[utoipa::path(
    tag = "prompts",
    params(("name" = String, Path), DiffQuery),
    responses((status = 200, body = VersionDiff), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/prompts/{name}/diff")]
pub async fn diff(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<DiffQuery>,
) -> Result<HttpResponse, ApiError> {
    let name = name(&path, "name")?;
    let key = caller.tenant.prompt_key(&name);
    let work = diffs::diff_versions(&state.pool, &key, query.from, query.to);
    let changes = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(VersionDiff {
        name,
        from: query.from,
        to: query.to,
        changes,
    }))
}

/// Move a label (promote): to a version, a weighted split, per-segment
/// targets. Recorded in the label's history; protected labels need the
/// prompts:promote scope. Every API process uses the new target for its next execution.
#[utoipa::path(
    tag = "prompts",
    params(("name" = String, Path), ("label" = String, Path)),
    request_body = MoveLabel,
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope), or the label is protected and the key lacks prompts:promote", body = ErrorBody),
        (status = 200, description = "The recorded move", body = LabelMoveResource),
        (status = 400, description = "Not exactly one of version and targets; a bad weight or name", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "Unknown prompt or version", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["prompts:write"]))
)]
#[put("/v1/prompts/{name}/labels/{label}")]
pub async fn move_label(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Json<MoveLabel>,
) -> Result<HttpResponse, ApiError> {
    let (raw_name, raw_label) = path.into_inner();
    let (name, label) = (name(&raw_name, "name")?, name(&raw_label, "label")?);
    let request = body.into_inner().into_request()?;
    let deps = deps(&state);
    let actor = actor(&caller);
    let key = caller.tenant.prompt_key(&name);
    let work = labels::move_label(&deps, &key, &label, request, &actor);
    let moved = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(LabelMoveResource::from(moved)))
}

/// Move a label back to where it pointed before its last move.
#[utoipa::path(
    tag = "prompts",
    params(("name" = String, Path), ("label" = String, Path)),
    request_body(content = Option<RollbackLabel>, description = "Optional: a reason for the audit log"),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope), or the label is protected and the key lacks prompts:promote", body = ErrorBody),
        (status = 200, description = "The recorded move", body = LabelMoveResource),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "No earlier target to roll back to", body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["prompts:write"]))
)]
#[post("/v1/prompts/{name}/labels/{label}/rollback")]
pub async fn rollback(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: Option<web::Json<RollbackLabel>>,
) -> Result<HttpResponse, ApiError> {
    let (raw_name, raw_label) = path.into_inner();
    let (name, label) = (name(&raw_name, "name")?, name(&raw_label, "label")?);
    let reason = body.and_then(|b| b.into_inner().reason);
    let deps = deps(&state);
    let actor = actor(&caller);
    let key = caller.tenant.prompt_key(&name);
    let work = labels::rollback_label(&deps, &key, &label, reason, &actor);
    let moved = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(LabelMoveResource::from(moved)))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct HistoryQuery {
    /// Newest moves to answer, 1..=1000 (default 100).
    pub limit: Option<i64>,
}

/// Every move of a label, newest first.
#[utoipa::path(
    tag = "prompts",
    params(("name" = String, Path), ("label" = String, Path), HistoryQuery),
    responses((status = 200, body = LabelHistory), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/prompts/{name}/labels/{label}/history")]
pub async fn history(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let (raw_name, raw_label) = path.into_inner();
    let (name, label) = (name(&raw_name, "name")?, name(&raw_label, "label")?);
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let key = caller.tenant.prompt_key(&name);
    let work = labels::label_history(&state.pool, &key, &label, limit);
    let moves = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(LabelHistory {
        name,
        label,
        moves: moves.into_iter().map(Into::into).collect(),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct StatsQuery {
    /// Only executions that came through this label.
    pub label: Option<String>,
    /// Only executions created at or after this time (RFC 3339).
    pub since: Option<String>,
}

/// Per-version figures: executions, success and invalid_output rates,
/// p50/p95 latency, tokens and cost per execution.
#[utoipa::path(
    tag = "prompts",
    params(("name" = String, Path), StatsQuery),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 200, body = PromptStats), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["executions:read"]))
)]
#[get("/v1/prompts/{name}/stats")]
pub async fn stats(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let name = name(&path, "name")?;
    let label = query
        .label
        .as_deref()
        .map(|l| name_ref(l, "label"))
        .transpose()?;
    let since = query
        .since
        .as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ApiError::BadRequest(format!("since: not an RFC 3339 time: {e}")))
        })
        .transpose()?;
    let key = caller.tenant.prompt_key(&name);
    let work = figures::prompt_stats(&state.pool, &caller.tenant, &key, label, since);
    let versions = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(PromptStats {
        name,
        label: label.map(str::to_string),
        since,
        versions,
    }))
}

fn name_ref<'a>(raw: &'a str, field: &str) -> Result<&'a str, ApiError> {
    validate_name(raw).map_err(|e| ApiError::BadRequest(format!("{field}: {e}")))?;
    Ok(raw)
}

//! Collection handlers: `/v1/collections/{name}` and its documents.

use actix_web::{delete, get, post, put, web, HttpResponse};
use serde::Deserialize;

use crate::auth::Caller;
use crate::collection_resources::{
    CollectionResource, DocumentList, DocumentResource, UpdateCollection, UpsertDocuments,
};
use crate::error::{ApiError, ErrorBody};
use crate::services::collections::{self as service, DocumentRequest};
use crate::services::within;
use crate::state::AppState;

/// Upsert documents: each is stored `pending` and embedded by the
/// workers; an unchanged text keeps its status (it is not re-embedded).
#[utoipa::path(
    tag = "collections",
    params(("name" = String, Path, description = "Collection name")),
    request_body = UpsertDocuments,
    responses(
        (status = 202, description = "Stored; indexing follows", body = DocumentList),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["prompts:write"]))
)]
#[post("/v1/collections/{name}/documents")]
pub async fn upsert_documents(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    body: web::Json<UpsertDocuments>,
) -> Result<HttpResponse, ApiError> {
    let docs = body
        .into_inner()
        .documents
        .into_iter()
        .map(|d| DocumentRequest {
            id: d.id,
            text: d.text,
            metadata: d.metadata,
        })
        .collect();
    let settings = &state.settings.retrieval;
    let work = service::upsert_documents(&state.pool, settings, &caller.tenant, &name, docs);
    let stored = within(state.deadline(), work).await?;
    Ok(HttpResponse::Accepted().json(DocumentList {
        data: stored.iter().map(DocumentResource::from).collect(),
        next_after: None,
    }))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

/// The collection's documents (without their texts), by id.
#[utoipa::path(
    tag = "collections",
    params(
        ("name" = String, Path, description = "Collection name"),
        ("status" = Option<String>, Query, description = "pending, indexed or failed"),
        ("after" = Option<String>, Query, description = "The previous page's next_after"),
        ("limit" = Option<i64>, Query, description = "1 to 500, default 100"),
    ),
    responses((status = 200, body = DocumentList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["prompts:write"]))
)]
#[get("/v1/collections/{name}/documents")]
pub async fn list_documents(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let work = service::list_documents(
        &state.pool,
        &caller.tenant,
        &name,
        q.status.as_deref(),
        q.after.as_deref(),
        limit,
    );
    let docs = within(state.deadline(), work).await?;
    let next_after = (docs.len() as i64 == limit)
        .then(|| docs.last().map(|d| d.id.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(DocumentList {
        data: docs.iter().map(DocumentResource::from).collect(),
        next_after,
    }))
}

/// One document, with its text.
#[utoipa::path(
    tag = "collections",
    params(("name" = String, Path, description = "Collection name"), ("id" = String, Path, description = "Document id")),
    responses((status = 200, body = DocumentResource), (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["prompts:write"]))
)]
#[get("/v1/collections/{name}/documents/{id}")]
pub async fn get_document(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, id) = path.into_inner();
    let work = service::get_document(&state.pool, &caller.tenant, &name, &id);
    let doc = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(DocumentResource::from(&doc)))
}

/// Delete a document and its chunks.
#[utoipa::path(
    tag = "collections",
    params(("name" = String, Path, description = "Collection name"), ("id" = String, Path, description = "Document id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["prompts:write"]))
)]
#[delete("/v1/collections/{name}/documents/{id}")]
pub async fn delete_document(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, id) = path.into_inner();
    let work = service::delete_document(&state.pool, &caller.tenant, &name, &id);
    within(state.deadline(), work).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A collection: its embedding model and its documents' counts.
#[utoipa::path(
    tag = "collections",
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, body = CollectionResource), (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["prompts:write"]))
)]
#[get("/v1/collections/{name}")]
pub async fn get_collection(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let work = service::get_collection(&state.pool, &caller.tenant, &name);
    let (c, counts) = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(CollectionResource::new(&c, &counts)))
}

/// Set a collection's embedding model (creating it if new): documents
/// embedded with another model are marked stale and re-embedded.
#[utoipa::path(
    tag = "collections",
    params(("name" = String, Path, description = "Collection name")),
    request_body = UpdateCollection,
    responses((status = 200, body = CollectionResource), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["prompts:write"]))
)]
#[put("/v1/collections/{name}")]
pub async fn put_collection(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    body: web::Json<UpdateCollection>,
) -> Result<HttpResponse, ApiError> {
    let model = body.into_inner().embedding_model;
    let work = service::set_embedding_model(&state.pool, &caller.tenant, &name, &model);
    let (c, counts) = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(CollectionResource::new(&c, &counts)))
}

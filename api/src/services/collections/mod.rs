//! Collections and their documents: upserts (validated, deduplicated,
//! committed as `pending` for the `indexer` role), reads and deletes, all
//! per tenant. Nothing here calls an embeddings endpoint: an upsert is
//! durable once it answers, and the workers embed.

use std::collections::HashSet;

use llmq_shared::config::RetrievalSettings;
use llmq_shared::db::collections::{
    self as db, Collection, CollectionCounts, Document, NewDocument,
};
use llmq_shared::db::{DbError, Pool};
use llmq_shared::ids::TenantId;
use llmq_shared::prompt::validate_name;
use llmq_shared::retrieval::{content_hash, DocumentStatus};
use serde_json::Value;

use crate::services::error::{Result, ServiceError};

/// A document as the client sent it.
pub struct DocumentRequest {
    pub id: String,
    pub text: String,
    pub metadata: Option<Value>,
}

fn check_collection_name(name: &str) -> Result<()> {
    validate_name(name).map_err(|m| ServiceError::InvalidRequest(format!("collection: {m}")))
}

fn check_document_id(id: &str, field: &str) -> Result<()> {
    if id.is_empty() || id.chars().count() > 256 || id.chars().any(char::is_control) {
        return Err(ServiceError::InvalidRequest(format!(
            "{field} must be 1 to 256 characters, without control characters"
        )));
    }
    Ok(())
}

fn not_found_collection(name: &str) -> ServiceError {
    ServiceError::NotFound(format!("no collection {name}"))
}

/// Upserts documents into `collection` (created with the configured
/// embedding model if new). An unchanged text keeps its status; a
/// changed one is pending until re-embedded.
#[tracing::instrument(skip_all, fields(collection = %collection, documents = docs.len()), err)]
pub async fn upsert_documents(
    pool: &Pool,
    settings: &RetrievalSettings,
    tenant: &TenantId,
    collection: &str,
    docs: Vec<DocumentRequest>,
) -> Result<Vec<Document>> {
    check_collection_name(collection)?;
    if docs.is_empty() || docs.len() > settings.max_documents_per_request {
        return Err(ServiceError::InvalidRequest(format!(
            "documents must hold 1 to {} documents",
            settings.max_documents_per_request
        )));
    }
    let mut seen = HashSet::new();
    let mut new = Vec::with_capacity(docs.len());
    for (i, d) in docs.into_iter().enumerate() {
        check_document_id(&d.id, &format!("documents[{i}].id"))?;
        if !seen.insert(d.id.clone()) {
            return Err(ServiceError::InvalidRequest(format!(
                "documents[{i}].id: {:?} appears twice in the request",
                d.id
            )));
        }
        if d.text.len() > settings.max_document_bytes || d.text.contains('\0') {
            return Err(ServiceError::InvalidRequest(format!(
                "documents[{i}].text must be at most {} bytes, without NUL",
                settings.max_document_bytes
            )));
        }
        let metadata = d
            .metadata
            .unwrap_or_else(|| Value::Object(Default::default()));
        if !metadata.is_object() {
            return Err(ServiceError::InvalidRequest(format!(
                "documents[{i}].metadata must be an object"
            )));
        }
        new.push(NewDocument {
            content_hash: content_hash(&d.text),
            id: d.id,
            text: d.text,
            metadata: llmq_shared::sanitize::clean_json(&metadata).into_owned(),
        });
    }
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    db::ensure_collection(&tx, tenant.as_str(), collection, &settings.embedding_model).await?;
    let stored = db::upsert_documents(&tx, tenant.as_str(), collection, &new).await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(stored)
}

/// A page of the collection's documents.
pub async fn list_documents(
    pool: &Pool,
    tenant: &TenantId,
    collection: &str,
    status: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Document>> {
    check_collection_name(collection)?;
    if let Some(s) = status {
        if DocumentStatus::parse(s).is_none() {
            return Err(ServiceError::InvalidRequest(format!(
                "status must be pending, indexed or failed, not {s:?}"
            )));
        }
    }
    let client = pool.get().await.map_err(DbError::from)?;
    if db::get_collection(&client, tenant.as_str(), collection)
        .await?
        .is_none()
    {
        return Err(not_found_collection(collection));
    }
    Ok(db::list_documents(&client, tenant.as_str(), collection, status, after, limit).await?)
}

pub async fn get_document(
    pool: &Pool,
    tenant: &TenantId,
    collection: &str,
    id: &str,
) -> Result<Document> {
    let client = pool.get().await.map_err(DbError::from)?;
    db::get_document(&client, tenant.as_str(), collection, id)
        .await?
        .ok_or_else(|| {
            ServiceError::NotFound(format!("no document {id} in collection {collection}"))
        })
}

/// Deletes a document with its chunks.
pub async fn delete_document(
    pool: &Pool,
    tenant: &TenantId,
    collection: &str,
    id: &str,
) -> Result<()> {
    let client = pool.get().await.map_err(DbError::from)?;
    if db::delete_document(&client, tenant.as_str(), collection, id).await? {
        Ok(())
    } else {
        Err(ServiceError::NotFound(format!(
            "no document {id} in collection {collection}"
        )))
    }
}

/// The collection and its counts.
pub async fn get_collection(
    pool: &Pool,
    tenant: &TenantId,
    name: &str,
) -> Result<(Collection, CollectionCounts)> {
    let client = pool.get().await.map_err(DbError::from)?;
    let c = db::get_collection(&client, tenant.as_str(), name)
        .await?
        .ok_or_else(|| not_found_collection(name))?;
    let counts = db::collection_counts(&client, tenant.as_str(), name).await?;
    Ok((c, counts))
}

/// Sets the collection's embedding model (creating the collection if
/// new); documents embedded otherwise become pending (stale).
pub async fn set_embedding_model(
    pool: &Pool,
    tenant: &TenantId,
    name: &str,
    model: &str,
) -> Result<(Collection, CollectionCounts)> {
    check_collection_name(name)?;
    if model.trim().is_empty() || model.len() > 200 {
        return Err(ServiceError::InvalidRequest(
            "embedding_model must be 1 to 200 characters".into(),
        ));
    }
    let client = pool.get().await.map_err(DbError::from)?;
    db::ensure_collection(&client, tenant.as_str(), name, model).await?;
    let c = db::set_collection_model(&client, tenant.as_str(), name, model)
        .await?
        .ok_or_else(|| not_found_collection(name))?;
    let counts = db::collection_counts(&client, tenant.as_str(), name).await?;
    Ok((c, counts))
}

//! The JSON shapes of the collection routes (docs/retrieval.md):
//! documents as upserted and as indexed, and a collection's counts.

use chrono::{DateTime, Utc};
use llmq_shared::db::collections::{Collection, CollectionCounts, Document};
use llmq_shared::retrieval::DocumentStatus;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// One document of an upsert.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentInput {
    /// The document's id in its collection (1 to 256 characters).
    pub id: String,
    pub text: String,
    /// Opaque, returned with the document and with its retrieved chunks.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// `POST /v1/collections/{name}/documents`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertDocuments {
    pub documents: Vec<DocumentInput>,
}

/// A document and where its indexing is.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentResource {
    pub id: String,
    pub collection: String,
    /// Only when one document is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// sha256 of the text.
    pub content_hash: String,
    pub status: DocumentStatus,
    /// The model its chunks were embedded with (null before the first
    /// indexing).
    pub embedding_model: Option<String>,
    /// Embedded with a model other than the collection's: it is being
    /// re-embedded.
    pub stale: bool,
    pub chunks: i32,
    pub attempts: i32,
    /// Why the last indexing attempt failed.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub indexed_at: Option<DateTime<Utc>>,
}

impl From<&Document> for DocumentResource {
    fn from(d: &Document) -> Self {
        Self {
            id: d.id.clone(),
            collection: d.collection.clone(),
            text: d.text.clone(),
            metadata: d.metadata.clone(),
            content_hash: d.content_hash.clone(),
            status: d.status,
            embedding_model: d.embedding_model.clone(),
            stale: d.stale,
            chunks: d.chunk_count,
            attempts: d.attempts,
            error: d.error.clone(),
            created_at: d.created_at,
            updated_at: d.updated_at,
            indexed_at: d.indexed_at,
        }
    }
}

/// A page of documents, by id.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentList {
    pub data: Vec<DocumentResource>,
    /// Pass as `after` for the next page; null on the last.
    pub next_after: Option<String>,
}

/// `PUT /v1/collections/{name}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCollection {
    /// Changing it re-embeds every document embedded otherwise.
    pub embedding_model: String,
}

/// A collection and its documents' counts by status.
#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionResource {
    pub name: String,
    pub embedding_model: String,
    pub pending: i64,
    pub indexed: i64,
    pub failed: i64,
    pub stale: i64,
    pub chunks: i64,
    pub created_at: DateTime<Utc>,
}

impl CollectionResource {
    pub fn new(c: &Collection, counts: &CollectionCounts) -> Self {
        Self {
            name: c.name.clone(),
            embedding_model: c.embedding_model.clone(),
            pending: counts.pending,
            indexed: counts.indexed,
            failed: counts.failed,
            stale: counts.stale,
            chunks: counts.chunks,
            created_at: c.created_at,
        }
    }
}

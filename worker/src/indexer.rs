//! The `indexer` role: turns pending documents into embedded chunks.
//!
//! A pass takes up to `retrieval.index_batch` due documents
//! (`claim_documents` holds them for `retrieval.index_hold_secs`, so a
//! dead indexer's documents come due again), chunks them by tokens, looks
//! every chunk up in the embedding cache (model + sha256 of the text
//! embedded), embeds only the missing ones, `retrieval.embed_batch` texts
//! per request, and writes each document's chunks with its `indexed`
//! mark in one transaction. A batch that was embedded is cached at once,
//! so a retry after a later batch failed does not pay for it again.
//! Failures are classified like model calls: a retryable one gives the
//! document back with the worker's backoff, a final one (or the last
//! attempt) marks it `failed` with the reason.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use llmq_shared::db::collections::{self as db, Claimed, IndexedChunk};
use llmq_shared::db::DbError;
use llmq_shared::metrics as m;
use llmq_shared::prompt::tokens::DEFAULT_TOKENIZER;
use llmq_shared::retrieval::{chunk::chunk_text, content_hash, vector};
use tokio_util::sync::CancellationToken;

use crate::context::WorkerContext;
use crate::embeddings::{embed, EmbeddingEndpoint, Use};
use crate::retry::{Decision, RetryPolicy};

/// Runs passes until `stop` fires; a full pass is followed by another at
/// once, an idle one waits `retrieval.index_poll_ms`.
pub async fn run_indexer(ctx: Arc<WorkerContext>, stop: CancellationToken) {
    let settings = &ctx.settings.retrieval;
    let poll = Duration::from_millis(settings.index_poll_ms.max(10));
    let batch = settings.index_batch.max(1);
    announce_search(&ctx).await;
    loop {
        let taken = tokio::select! {
            _ = stop.cancelled() => return,
            r = index_pass(&ctx) => r,
        };
        let full = match taken {
            Ok(n) => n >= batch,
            Err(e) => {
                tracing::warn!(error = %e, "indexing pass failed");
                false
            }
        };
        if !full {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}

/// Says which search serves `retrieve`: the built-in hybrid always; an
/// installed pgvector is reported, not used yet (no HNSW path is built).
async fn announce_search(ctx: &WorkerContext) {
    let pgvector = match ctx.pool.get().await {
        Ok(client) => db::pgvector_installed(&client).await.ok(),
        Err(_) => None,
    };
    tracing::info!(
        search = "hybrid: full-text candidates over GIN, embedding rerank",
        pgvector_installed = ?pgvector,
        "retrieval search"
    );
}

/// A document's chunks, with the cache key of each chunk's embedded text.
struct Prepared {
    doc: Claimed,
    chunks: Vec<(llmq_shared::retrieval::chunk::Chunk, String)>,
}

/// One pass; answers how many documents it took.
async fn index_pass(ctx: &WorkerContext) -> Result<usize, DbError> {
    let settings = &ctx.settings.retrieval;
    let claimed = {
        let client = ctx.pool.get().await?;
        db::claim_documents(
            &client,
            settings.index_batch.max(1) as i64,
            settings.index_hold_secs.max(1) as f64,
        )
        .await?
    };
    let taken = claimed.len();
    let mut by_model: HashMap<String, Vec<Claimed>> = HashMap::new();
    for doc in claimed {
        by_model
            .entry(doc.embedding_model.clone())
            .or_default()
            .push(doc);
    }
    for (model, docs) in by_model {
        index_documents(ctx, &model, docs).await?;
    }
    Ok(taken)
}

async fn index_documents(
    ctx: &WorkerContext,
    model: &str,
    docs: Vec<Claimed>,
) -> Result<(), DbError> {
    let settings = &ctx.settings.retrieval;
    let endpoint = EmbeddingEndpoint::resolve(&ctx.settings, model);
    let prepared: Vec<Prepared> = docs
        .into_iter()
        .map(|doc| {
            let chunks = chunk_text(
                DEFAULT_TOKENIZER,
                &doc.text,
                settings.chunk_tokens,
                settings.chunk_overlap,
            )
            .into_iter()
            .map(|c| {
                let key = content_hash(&format!("{}{}", endpoint.document_prefix, c.text));
                (c, key)
            })
            .collect();
            Prepared { doc, chunks }
        })
        .collect();

    // Cache first: only texts never embedded with this model are sent.
    let mut keys: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for p in &prepared {
        for (_, key) in &p.chunks {
            if seen.insert(key.clone()) {
                keys.push(key.clone());
            }
        }
    }
    let mut known: HashMap<String, Vec<u8>> = HashMap::new();
    if !keys.is_empty() {
        let client = ctx.pool.get().await?;
        known.extend(db::cached_embeddings(&client, model, &keys).await?);
    }
    let hits: usize = prepared
        .iter()
        .flat_map(|p| &p.chunks)
        .filter(|(_, k)| known.contains_key(k))
        .count();
    metrics::counter!(m::EMBEDDING_CACHE_HITS).increment(hits as u64);
    let mut missing: Vec<(String, String)> = Vec::new();
    let mut queued = HashSet::new();
    for p in &prepared {
        for (c, key) in &p.chunks {
            if !known.contains_key(key) && queued.insert(key.clone()) {
                missing.push((
                    key.clone(),
                    format!("{}{}", endpoint.document_prefix, c.text),
                ));
            }
        }
    }

    let timeout = Duration::from_secs(settings.embed_timeout_secs.max(1));
    let mut failure = None;
    for batch in missing.chunks(settings.embed_batch.max(1)) {
        let texts: Vec<String> = batch.iter().map(|(_, t)| t.clone()).collect();
        match embed(&ctx.provider, &endpoint, &texts, Use::Document, timeout).await {
            Ok(vectors) => {
                metrics::counter!(m::EMBEDDED_TEXTS, "use" => "document")
                    .increment(texts.len() as u64);
                let batch_keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
                let encoded: Vec<Vec<u8>> = vectors.iter().map(|v| vector::encode(v)).collect();
                let client = ctx.pool.get().await?;
                db::cache_embeddings(&client, model, &batch_keys, &encoded).await?;
                known.extend(batch_keys.into_iter().zip(encoded));
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }

    let policy = RetryPolicy {
        max_attempts: settings.index_max_attempts.max(1),
        base: Duration::from_millis(ctx.settings.worker.retry_base_ms),
        max: Duration::from_millis(ctx.settings.worker.retry_max_ms),
    };
    let mut client = ctx.pool.get().await?;
    for p in prepared {
        let complete = p.chunks.iter().all(|(_, k)| known.contains_key(k));
        if complete {
            let chunks: Vec<IndexedChunk> = p
                .chunks
                .iter()
                .map(|(c, key)| IndexedChunk {
                    ord: c.ord,
                    text: c.text.clone(),
                    tokens: c.tokens,
                    content_hash: content_hash(&c.text),
                    embedding: known.get(key).cloned().unwrap_or_default(),
                })
                .collect();
            let tx = client.transaction().await?;
            let stored = db::store_document_index(&tx, &p.doc, &chunks).await?;
            tx.commit().await?;
            let outcome = if stored { "indexed" } else { "superseded" };
            metrics::counter!(m::DOCUMENTS_INDEXED, "outcome" => outcome).increment(1);
            continue;
        }
        // Incomplete only when a batch failed.
        let Some(error) = &failure else { continue };
        let message = format!("embedding with {model}: {error}");
        let attempt = p.doc.attempts.max(1) as u32;
        match policy.decide(attempt, error.is_retryable(), error.retry_after()) {
            Decision::RetryAfter(delay) => {
                tracing::info!(collection = %p.doc.collection, document = %p.doc.id, error = %error, "indexing retried");
                db::retry_document(&client, &p.doc, delay.as_secs_f64(), &message).await?;
                metrics::counter!(m::DOCUMENTS_INDEXED, "outcome" => "retry").increment(1);
            }
            Decision::GiveUp => {
                tracing::warn!(collection = %p.doc.collection, document = %p.doc.id, error = %error, "indexing failed");
                db::fail_document(&client, &p.doc, &message).await?;
                metrics::counter!(m::DOCUMENTS_INDEXED, "outcome" => "failed").increment(1);
            }
        }
    }
    Ok(())
}

//! Collections, their documents and chunks, the embedding cache, and the
//! hybrid search over chunks.
//!
//! Durability: an upsert commits the document as `pending` with a due
//! time; the `indexer` role takes due documents (`claim_documents`,
//! `FOR UPDATE SKIP LOCKED`) by pushing their due time past a hold, so no
//! lock is held while embeddings are fetched, and a document whose
//! indexer died comes due again. The indexing's write
//! (`store_document_index`) replaces the document's chunks and marks it
//! `indexed` only if its text is still the one that was embedded: a
//! newer upsert wins.
//!
//! Search: a full-text query over the GIN index of `chunks.tsv` selects
//! the candidates, best `ts_rank` first; the caller reranks them with the
//! query's embedding. The words that select candidates are chosen with
//! the collection's term counts (`chunk_terms`, kept by triggers on
//! `chunks`), so the rows ranked are bounded by a budget, not by the
//! collection's size. No statement here scans a whole table.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Row;

use super::{DbError, GenericClient, Result};
use crate::retrieval::DocumentStatus;

/// A collection row.
#[derive(Clone, Debug)]
pub struct Collection {
    pub tenant_id: String,
    pub name: String,
    pub embedding_model: String,
    pub created_at: DateTime<Utc>,
}

/// A document row, with whether its chunks were embedded with a model
/// other than the collection's.
#[derive(Clone, Debug)]
pub struct Document {
    pub collection: String,
    pub id: String,
    /// Absent in listings.
    pub text: Option<String>,
    pub metadata: Value,
    pub content_hash: String,
    pub status: DocumentStatus,
    pub embedding_model: Option<String>,
    pub stale: bool,
    pub chunk_count: i32,
    pub attempts: i32,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub indexed_at: Option<DateTime<Utc>>,
}

/// A document as upserted.
pub struct NewDocument {
    pub id: String,
    pub text: String,
    pub metadata: Value,
    pub content_hash: String,
}

macro_rules! document_columns {
    () => {
        "d.collection, d.id, d.metadata, d.content_hash, d.status, d.embedding_model, \
         (d.embedding_model IS NOT NULL AND d.embedding_model <> c.embedding_model) AS stale, \
         d.chunk_count, d.attempts, d.error, d.created_at, d.updated_at, d.indexed_at"
    };
}

fn collection_from_row(row: &Row) -> Result<Collection> {
    Ok(Collection {
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        embedding_model: row.try_get("embedding_model")?,
        created_at: row.try_get("created_at")?,
    })
}

fn document_from_row(row: &Row, with_text: bool) -> Result<Document> {
    let status: String = row.try_get("status")?;
    Ok(Document {
        collection: row.try_get("collection")?,
        id: row.try_get("id")?,
        text: if with_text {
            Some(row.try_get("text")?)
        } else {
            None
        },
        metadata: row.try_get("metadata")?,
        content_hash: row.try_get("content_hash")?,
        status: DocumentStatus::parse(&status)
            .ok_or_else(|| DbError::Data(format!("unknown document status {status:?}")))?,
        embedding_model: row.try_get("embedding_model")?,
        stale: row.try_get("stale")?,
        chunk_count: row.try_get("chunk_count")?,
        attempts: row.try_get("attempts")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        indexed_at: row.try_get("indexed_at")?,
    })
}

// ---- collections ----

const ENSURE_COLLECTION: &str = "WITH ins AS ( \
       INSERT INTO collections (tenant_id, name, embedding_model) VALUES ($1, $2, $3) \
       ON CONFLICT DO NOTHING RETURNING tenant_id, name, embedding_model, created_at) \
     SELECT * FROM ins UNION ALL \
     SELECT tenant_id, name, embedding_model, created_at FROM collections \
      WHERE tenant_id = $1 AND name = $2 AND NOT EXISTS (SELECT 1 FROM ins)";

/// The collection, created with `model` if it does not exist yet.
pub async fn ensure_collection(
    client: &impl GenericClient,
    tenant: &str,
    name: &str,
    model: &str,
) -> Result<Collection> {
    let row = client
        .query_one(
            &client.prepare_cached(ENSURE_COLLECTION).await?,
            &[&tenant, &name, &model],
        )
        .await?;
    collection_from_row(&row)
}

const GET_COLLECTION: &str = "SELECT tenant_id, name, embedding_model, created_at \
     FROM collections WHERE tenant_id = $1 AND name = $2";

pub async fn get_collection(
    client: &impl GenericClient,
    tenant: &str,
    name: &str,
) -> Result<Option<Collection>> {
    let row = client
        .query_opt(
            &client.prepare_cached(GET_COLLECTION).await?,
            &[&tenant, &name],
        )
        .await?;
    row.as_ref().map(collection_from_row).transpose()
}

/// Changing the model makes every document embedded otherwise stale:
/// pending again, so the indexer re-embeds it. One statement.
const SET_COLLECTION_MODEL: &str = "WITH c AS ( \
       UPDATE collections SET embedding_model = $3, updated_at = now() \
        WHERE tenant_id = $1 AND name = $2 \
        RETURNING tenant_id, name, embedding_model, created_at), \
     stale AS ( \
       UPDATE documents d SET status = 'pending', attempts = 0, error = NULL, due_at = now(), \
              updated_at = now() \
         FROM c WHERE d.tenant_id = c.tenant_id AND d.collection = c.name \
          AND d.embedding_model IS DISTINCT FROM c.embedding_model) \
     SELECT * FROM c";

pub async fn set_collection_model(
    client: &impl GenericClient,
    tenant: &str,
    name: &str,
    model: &str,
) -> Result<Option<Collection>> {
    let row = client
        .query_opt(
            &client.prepare_cached(SET_COLLECTION_MODEL).await?,
            &[&tenant, &name, &model],
        )
        .await?;
    row.as_ref().map(collection_from_row).transpose()
}

/// Documents of a collection by status.
#[derive(Clone, Debug, Default)]
pub struct CollectionCounts {
    pub pending: i64,
    pub indexed: i64,
    pub failed: i64,
    pub stale: i64,
    pub chunks: i64,
}

const COLLECTION_COUNTS: &str = "SELECT \
       count(*) FILTER (WHERE d.status = 'pending') AS pending, \
       count(*) FILTER (WHERE d.status = 'indexed') AS indexed, \
       count(*) FILTER (WHERE d.status = 'failed') AS failed, \
       count(*) FILTER (WHERE d.embedding_model IS NOT NULL AND d.embedding_model <> c.embedding_model) AS stale, \
       coalesce(sum(d.chunk_count), 0)::bigint AS chunks \
     FROM collections c JOIN documents d ON d.tenant_id = c.tenant_id AND d.collection = c.name \
     WHERE c.tenant_id = $1 AND c.name = $2";

pub async fn collection_counts(
    client: &impl GenericClient,
    tenant: &str,
    name: &str,
) -> Result<CollectionCounts> {
    let row = client
        .query_one(
            &client.prepare_cached(COLLECTION_COUNTS).await?,
            &[&tenant, &name],
        )
        .await?;
    Ok(CollectionCounts {
        pending: row.try_get("pending")?,
        indexed: row.try_get("indexed")?,
        failed: row.try_get("failed")?,
        stale: row.try_get("stale")?,
        chunks: row.try_get("chunks")?,
    })
}

// ---- documents ----

/// An unchanged text keeps its status (an indexed document is not
/// re-embedded; a failed one is tried again); a changed one is pending.
const UPSERT_DOCUMENTS: &str = concat!(
    "WITH u AS ( \
       INSERT INTO documents AS d (tenant_id, collection, id, text, metadata, content_hash) \
       SELECT $1, $2, n.id, n.text, n.metadata, n.hash \
         FROM UNNEST($3::text[], $4::text[], $5::jsonb[], $6::text[]) AS n(id, text, metadata, hash) \
       ON CONFLICT (tenant_id, collection, id) DO UPDATE SET \
         text = EXCLUDED.text, metadata = EXCLUDED.metadata, content_hash = EXCLUDED.content_hash, \
         status = CASE WHEN d.content_hash = EXCLUDED.content_hash AND d.status <> 'failed' \
                       THEN d.status ELSE 'pending' END, \
         attempts = CASE WHEN d.content_hash = EXCLUDED.content_hash AND d.status <> 'failed' \
                         THEN d.attempts ELSE 0 END, \
         error = CASE WHEN d.content_hash = EXCLUDED.content_hash AND d.status <> 'failed' \
                      THEN d.error END, \
         due_at = CASE WHEN d.content_hash = EXCLUDED.content_hash AND d.status <> 'failed' \
                       THEN d.due_at ELSE now() END, \
         updated_at = now() \
       RETURNING d.*) \
     SELECT ",
    document_columns!(),
    " FROM u d JOIN collections c ON c.tenant_id = d.tenant_id AND c.name = d.collection ORDER BY d.id"
);

/// Upserts `docs` (distinct ids) into a collection that exists.
pub async fn upsert_documents(
    client: &impl GenericClient,
    tenant: &str,
    collection: &str,
    docs: &[NewDocument],
) -> Result<Vec<Document>> {
    let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    let metadata: Vec<&Value> = docs.iter().map(|d| &d.metadata).collect();
    let hashes: Vec<&str> = docs.iter().map(|d| d.content_hash.as_str()).collect();
    let rows = client
        .query(
            &client.prepare_cached(UPSERT_DOCUMENTS).await?,
            &[&tenant, &collection, &ids, &texts, &metadata, &hashes],
        )
        .await?;
    rows.iter().map(|r| document_from_row(r, false)).collect()
}

const LIST_DOCUMENTS: &str = concat!(
    "SELECT ",
    document_columns!(),
    " FROM documents d JOIN collections c ON c.tenant_id = d.tenant_id AND c.name = d.collection \
     WHERE d.tenant_id = $1 AND d.collection = $2 AND ($3::text IS NULL OR d.status = $3) \
       AND ($4::text IS NULL OR d.id > $4) ORDER BY d.id LIMIT $5"
);

/// A page of documents (without their texts), by id after `after`.
pub async fn list_documents(
    client: &impl GenericClient,
    tenant: &str,
    collection: &str,
    status: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Document>> {
    let rows = client
        .query(
            &client.prepare_cached(LIST_DOCUMENTS).await?,
            &[&tenant, &collection, &status, &after, &limit],
        )
        .await?;
    rows.iter().map(|r| document_from_row(r, false)).collect()
}

const GET_DOCUMENT: &str = concat!(
    "SELECT d.text, ",
    document_columns!(),
    " FROM documents d JOIN collections c ON c.tenant_id = d.tenant_id AND c.name = d.collection \
     WHERE d.tenant_id = $1 AND d.collection = $2 AND d.id = $3"
);

pub async fn get_document(
    client: &impl GenericClient,
    tenant: &str,
    collection: &str,
    id: &str,
) -> Result<Option<Document>> {
    let row = client
        .query_opt(
            &client.prepare_cached(GET_DOCUMENT).await?,
            &[&tenant, &collection, &id],
        )
        .await?;
    row.as_ref().map(|r| document_from_row(r, true)).transpose()
}

const DELETE_DOCUMENT: &str =
    "DELETE FROM documents WHERE tenant_id = $1 AND collection = $2 AND id = $3";

/// Deletes a document and its chunks; false when there was none.
pub async fn delete_document(
    client: &impl GenericClient,
    tenant: &str,
    collection: &str,
    id: &str,
) -> Result<bool> {
    let n = client
        .execute(
            &client.prepare_cached(DELETE_DOCUMENT).await?,
            &[&tenant, &collection, &id],
        )
        .await?;
    Ok(n > 0)
}

// ---- indexing ----

/// A pending document an indexer took.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub tenant_id: String,
    pub collection: String,
    pub id: String,
    pub text: String,
    pub content_hash: String,
    pub embedding_model: String,
    /// Including this one.
    pub attempts: i32,
}

const CLAIM_DOCUMENTS: &str = "WITH due AS ( \
       SELECT tenant_id, collection, id FROM documents \
        WHERE status = 'pending' AND due_at <= now() \
        ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
     UPDATE documents d SET due_at = now() + make_interval(secs => $2), attempts = d.attempts + 1 \
       FROM due, collections c \
      WHERE d.tenant_id = due.tenant_id AND d.collection = due.collection AND d.id = due.id \
        AND c.tenant_id = d.tenant_id AND c.name = d.collection \
     RETURNING d.tenant_id, d.collection, d.id, d.text, d.content_hash, d.attempts, \
               c.embedding_model";

/// Takes up to `limit` due pending documents for `hold_secs`.
pub async fn claim_documents(
    client: &impl GenericClient,
    limit: i64,
    hold_secs: f64,
) -> Result<Vec<Claimed>> {
    let rows = client
        .query(
            &client.prepare_cached(CLAIM_DOCUMENTS).await?,
            &[&limit, &hold_secs],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Claimed {
                tenant_id: r.try_get("tenant_id")?,
                collection: r.try_get("collection")?,
                id: r.try_get("id")?,
                text: r.try_get("text")?,
                content_hash: r.try_get("content_hash")?,
                embedding_model: r.try_get("embedding_model")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .collect()
}

const CACHED_EMBEDDINGS: &str = "SELECT content_hash, embedding FROM embedding_cache \
     WHERE model = $1 AND content_hash = ANY($2)";

/// The cached embeddings of `hashes` under `model`.
pub async fn cached_embeddings(
    client: &impl GenericClient,
    model: &str,
    hashes: &[String],
) -> Result<Vec<(String, Vec<u8>)>> {
    let rows = client
        .query(
            &client.prepare_cached(CACHED_EMBEDDINGS).await?,
            &[&model, &hashes],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("content_hash")?, r.try_get("embedding")?)))
        .collect()
}

const CACHE_EMBEDDINGS: &str = "INSERT INTO embedding_cache (model, content_hash, embedding) \
     SELECT $1, h, e FROM UNNEST($2::text[], $3::bytea[]) AS n(h, e) ON CONFLICT DO NOTHING";

pub async fn cache_embeddings(
    client: &impl GenericClient,
    model: &str,
    hashes: &[String],
    embeddings: &[Vec<u8>],
) -> Result<()> {
    client
        .execute(
            &client.prepare_cached(CACHE_EMBEDDINGS).await?,
            &[&model, &hashes, &embeddings],
        )
        .await?;
    Ok(())
}

/// One embedded chunk of a document being indexed.
pub struct IndexedChunk {
    pub ord: i32,
    pub text: String,
    pub tokens: i32,
    pub content_hash: String,
    pub embedding: Vec<u8>,
}

/// Marks the document indexed if it still holds the text that was
/// embedded (and its collection the model); the caller then replaces its
/// chunks in the same transaction.
const MARK_INDEXED: &str = "UPDATE documents d SET status = 'indexed', embedding_model = $5, \
       chunk_count = $6, error = NULL, indexed_at = now(), updated_at = now() \
       FROM collections c \
      WHERE d.tenant_id = $1 AND d.collection = $2 AND d.id = $3 AND d.content_hash = $4 \
        AND d.status = 'pending' AND c.tenant_id = d.tenant_id AND c.name = d.collection \
        AND c.embedding_model = $5";

const DELETE_CHUNKS: &str =
    "DELETE FROM chunks WHERE tenant_id = $1 AND collection = $2 AND document_id = $3";

const INSERT_CHUNKS: &str = "INSERT INTO chunks (tenant_id, collection, document_id, ord, text, \
       tokens, content_hash, embedding_model, embedding) \
     SELECT $1, $2, $3, n.ord, n.text, n.tokens, n.hash, $4, n.embedding \
       FROM UNNEST($5::int[], $6::text[], $7::int[], $8::text[], $9::bytea[]) \
         AS n(ord, text, tokens, hash, embedding)";

/// Writes a document's embedded chunks and marks it indexed, in the
/// transaction `tx`. False (and nothing written) when the document
/// changed or was deleted meanwhile.
pub async fn store_document_index(
    tx: &impl GenericClient,
    doc: &Claimed,
    chunks: &[IndexedChunk],
) -> Result<bool> {
    let count = chunks.len() as i32;
    let marked = tx
        .execute(
            &tx.prepare_cached(MARK_INDEXED).await?,
            &[
                &doc.tenant_id,
                &doc.collection,
                &doc.id,
                &doc.content_hash,
                &doc.embedding_model,
                &count,
            ],
        )
        .await?;
    if marked == 0 {
        return Ok(false);
    }
    tx.execute(
        &tx.prepare_cached(DELETE_CHUNKS).await?,
        &[&doc.tenant_id, &doc.collection, &doc.id],
    )
    .await?;
    let ords: Vec<i32> = chunks.iter().map(|c| c.ord).collect();
    let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
    let tokens: Vec<i32> = chunks.iter().map(|c| c.tokens).collect();
    let hashes: Vec<&str> = chunks.iter().map(|c| c.content_hash.as_str()).collect();
    let embeddings: Vec<&[u8]> = chunks.iter().map(|c| c.embedding.as_slice()).collect();
    tx.execute(
        &tx.prepare_cached(INSERT_CHUNKS).await?,
        &[
            &doc.tenant_id,
            &doc.collection,
            &doc.id,
            &doc.embedding_model,
            &ords,
            &texts,
            &tokens,
            &hashes,
            &embeddings,
        ],
    )
    .await?;
    Ok(true)
}

const RETRY_DOCUMENT: &str = "UPDATE documents SET due_at = now() + make_interval(secs => $5), \
       error = $6, updated_at = now() \
     WHERE tenant_id = $1 AND collection = $2 AND id = $3 AND content_hash = $4 AND status = 'pending'";

/// Gives a document back to be tried again after `delay_secs`.
pub async fn retry_document(
    client: &impl GenericClient,
    doc: &Claimed,
    delay_secs: f64,
    error: &str,
) -> Result<()> {
    client
        .execute(
            &client.prepare_cached(RETRY_DOCUMENT).await?,
            &[
                &doc.tenant_id,
                &doc.collection,
                &doc.id,
                &doc.content_hash,
                &delay_secs,
                &error,
            ],
        )
        .await?;
    Ok(())
}

const FAIL_DOCUMENT: &str = "UPDATE documents SET status = 'failed', error = $5, updated_at = now() \
     WHERE tenant_id = $1 AND collection = $2 AND id = $3 AND content_hash = $4 AND status = 'pending'";

/// Marks a document failed (its chunks, if any, stay searchable).
pub async fn fail_document(client: &impl GenericClient, doc: &Claimed, error: &str) -> Result<()> {
    client
        .execute(
            &client.prepare_cached(FAIL_DOCUMENT).await?,
            &[
                &doc.tenant_id,
                &doc.collection,
                &doc.id,
                &doc.content_hash,
                &error,
            ],
        )
        .await?;
    Ok(())
}

// ---- search ----

/// A candidate chunk as the full-text stage found it.
#[derive(Clone, Debug)]
pub struct CandidateRow {
    pub document_id: String,
    pub ord: i32,
    pub text: String,
    pub metadata: Value,
    pub embedding: Vec<u8>,
    pub rank: f32,
}

/// Bounded by `$6` (`retrieval.max_ranked`), not by the collection: the
/// query's lexemes are looked up in `chunk_terms` (how many chunks of
/// this collection hold each; one primary-key lookup per lexeme, written
/// as a subquery so that no statistics can make it a scan of the
/// collection's terms), then
///
/// 1. AND first: the chunks holding every lexeme (skipped when one is in
///    no chunk). GIN's AND is driven by the rarest lexeme's posting
///    list, so this is cheap whenever the query has a selective word.
/// 2. Only when that found fewer than `$5`, OR over the selective
///    lexemes: the rarest first, as long as their counts add up to at
///    most `$6` (the rarest always, whatever its count). A word most
///    chunks hold ("system" in a handbook) is left out of the candidate
///    selection instead of making every chunk a candidate, so a rare
///    word of the query still finds its chunk.
///
/// Each stage reads at most `$6` rows before anything is ranked (the cap
/// binds only when even the rarest lexeme is common: the candidates are
/// then a sample of the chunks holding it). The rows found are ranked by
/// `ts_rank` against all the query's lexemes OR-ed (a chunk sharing more
/// of them first), the best `$5` are kept, and only those are read in
/// full (text, embedding, the document's metadata), each by its primary
/// key (`LATERAL ... LIMIT 1`: the planner cannot turn these lookups
/// into a hash join over the whole `documents` table, which it did for a
/// 10,000-chunk collection, guessing 100 rows). Chunks embedded with
/// another model than the query's (`$4`) cannot be compared and are not
/// candidates. Lexemes go into the tsquery quoted, as they are (no second
/// normalisation).
pub const SEARCH_CANDIDATES: &str = r"WITH terms AS (
       SELECT x.term,
              coalesce((SELECT ct.chunks FROM chunk_terms ct
                         WHERE ct.tenant_id = $1 AND ct.collection = $2 AND ct.term = x.term), 0) AS df
         FROM unnest(tsvector_to_array(to_tsvector('english', $3))) AS x(term)),
     present AS (
       SELECT '''' || replace(replace(term, '\', '\\'), '''', '''''') || '''' AS lit,
              sum(df) OVER (ORDER BY df, term) AS running,
              row_number() OVER (ORDER BY df, term) AS n
         FROM terms WHERE df > 0),
     q AS (
       SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM terms WHERE df = 0)
                   THEN (SELECT string_agg(lit, ' & ') FROM present)::tsquery END AS every,
              (SELECT string_agg(lit, ' | ') FROM present WHERE running <= $6::bigint OR n = 1)::tsquery
                AS selective,
              (SELECT string_agg(lit, ' | ') FROM present)::tsquery AS ranked),
     every_hit AS MATERIALIZED (
       SELECT ch.document_id, ch.ord, ch.tsv FROM q, chunks ch
        WHERE ch.tsv @@ q.every AND ch.tenant_id = $1 AND ch.collection = $2
          AND ch.embedding_model = $4
        LIMIT $6),
     any_hit AS (
       SELECT ch.document_id, ch.ord, ch.tsv FROM q, chunks ch
        WHERE ch.tsv @@ q.selective AND ch.tenant_id = $1 AND ch.collection = $2
          AND ch.embedding_model = $4 AND (SELECT count(*) FROM every_hit) < $5
        LIMIT $6),
     best AS (
       SELECT h.document_id, h.ord, ts_rank(h.tsv, q.ranked) AS rank
         FROM (SELECT DISTINCT ON (document_id, ord) *
                 FROM (SELECT * FROM every_hit UNION ALL SELECT * FROM any_hit) u) h, q
        ORDER BY rank DESC, h.document_id, h.ord LIMIT $5)
     SELECT b.document_id, b.ord, ch.text, ch.embedding, d.metadata, b.rank
       FROM best b,
       LATERAL (SELECT text, embedding FROM chunks c
                 WHERE c.tenant_id = $1 AND c.collection = $2 AND c.document_id = b.document_id
                   AND c.ord = b.ord LIMIT 1) ch,
       LATERAL (SELECT metadata FROM documents d
                 WHERE d.tenant_id = $1 AND d.collection = $2 AND d.id = b.document_id LIMIT 1) d
      ORDER BY b.rank DESC, b.document_id, b.ord";

/// The best `limit` full-text candidates of `query`, each stage having
/// read at most `max_ranked` chunks (see `SEARCH_CANDIDATES`).
pub async fn search_candidates(
    client: &impl GenericClient,
    tenant: &str,
    collection: &str,
    query: &str,
    model: &str,
    limit: i64,
    max_ranked: i64,
) -> Result<Vec<CandidateRow>> {
    let rows = client
        .query(
            &client.prepare_cached(SEARCH_CANDIDATES).await?,
            &[&tenant, &collection, &query, &model, &limit, &max_ranked],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(CandidateRow {
                document_id: r.try_get("document_id")?,
                ord: r.try_get("ord")?,
                text: r.try_get("text")?,
                metadata: r.try_get("metadata")?,
                embedding: r.try_get("embedding")?,
                rank: r.try_get("rank")?,
            })
        })
        .collect()
}

/// Whether pgvector is installed in this database (then an HNSW index
/// could serve the search; the built-in hybrid runs either way).
const PGVECTOR_INSTALLED: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')";

pub async fn pgvector_installed(client: &impl GenericClient) -> Result<bool> {
    let row = client
        .query_one(&client.prepare_cached(PGVECTOR_INSTALLED).await?, &[])
        .await?;
    Ok(row.try_get(0)?)
}

// ---- execution flags ----

/// Adds flags to a running execution this worker holds the lease on
/// (fenced like every worker write); each flag is kept once.
const FLAG_EXECUTION: &str = "UPDATE executions SET \
       flags = ARRAY(SELECT DISTINCT f FROM unnest(flags || $3::text[]) AS f ORDER BY f) \
     WHERE id = $1 AND lease_owner = $2 AND status = 'running'";

/// False when the lease is not `owner`'s.
pub async fn flag_execution(
    client: &impl GenericClient,
    id: uuid::Uuid,
    owner: &str,
    flags: &[&str],
) -> Result<bool> {
    let n = client
        .execute(
            &client.prepare_cached(FLAG_EXECUTION).await?,
            &[&id, &owner, &flags],
        )
        .await?;
    Ok(n > 0)
}

/// Every statement, for the test that prepares them all.
pub const ALL_SQL: &[&str] = &[
    ENSURE_COLLECTION,
    GET_COLLECTION,
    SET_COLLECTION_MODEL,
    COLLECTION_COUNTS,
    UPSERT_DOCUMENTS,
    LIST_DOCUMENTS,
    GET_DOCUMENT,
    DELETE_DOCUMENT,
    CLAIM_DOCUMENTS,
    CACHED_EMBEDDINGS,
    CACHE_EMBEDDINGS,
    MARK_INDEXED,
    DELETE_CHUNKS,
    INSERT_CHUNKS,
    RETRY_DOCUMENT,
    FAIL_DOCUMENT,
    SEARCH_CANDIDATES,
    PGVECTOR_INSTALLED,
    FLAG_EXECUTION,
];

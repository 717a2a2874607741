-- Retrieval: collections of documents per tenant, their chunks with
-- embeddings, the embedding cache, and the flags an execution carries
-- when its retrieval came back empty or failed.
--
-- Search needs no extension: a GIN index over each chunk's tsvector
-- selects candidates and the query's embedding reranks them in the
-- worker. Embeddings are stored as bytea (little-endian f32), the form
-- the worker reads and writes in bulk.

-- A collection names the embedding model its chunks must be embedded
-- with; changing it marks every document embedded otherwise stale.
CREATE TABLE collections (
    tenant_id        text        NOT NULL,
    name             text        NOT NULL,
    embedding_model  text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- A document as upserted. `status` is pending until the indexer has
-- embedded every chunk of this exact text (`content_hash`) with the
-- collection's model; `due_at` is when a pending document may be taken
-- (a taken one's is pushed past the indexing hold, so a dead indexer's
-- document comes due again). `embedding_model` is the model its current
-- chunks were embedded with (NULL before the first indexing).
CREATE TABLE documents (
    tenant_id        text        NOT NULL,
    collection       text        NOT NULL,
    id               text        NOT NULL,
    text             text        NOT NULL,
    metadata         jsonb       NOT NULL DEFAULT '{}',
    content_hash     text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'indexed', 'failed')),
    embedding_model  text,
    chunk_count      int         NOT NULL DEFAULT 0,
    attempts         int         NOT NULL DEFAULT 0,
    error            text,
    due_at           timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    indexed_at       timestamptz,
    PRIMARY KEY (tenant_id, collection, id),
    FOREIGN KEY (tenant_id, collection) REFERENCES collections (tenant_id, name) ON DELETE CASCADE
);
CREATE INDEX documents_pending_idx ON documents (due_at) WHERE status = 'pending';

-- One chunk of a document: a window of tokens with overlap. `tsv` feeds
-- the GIN index that selects candidates. The index is kept without a
-- pending list (`fastupdate = off`): writes come from the indexer, off
-- the hot path, and a pending list makes the planner price the index as
-- a full scan until the next vacuum (a freshly loaded collection would
-- be searched by sequential scans).
CREATE TABLE chunks (
    tenant_id        text     NOT NULL,
    collection       text     NOT NULL,
    document_id      text     NOT NULL,
    ord              int      NOT NULL,
    text             text     NOT NULL,
    tokens           int      NOT NULL,
    content_hash     text     NOT NULL,
    embedding_model  text     NOT NULL,
    embedding        bytea    NOT NULL,
    tsv              tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    PRIMARY KEY (tenant_id, collection, document_id, ord),
    FOREIGN KEY (tenant_id, collection, document_id)
        REFERENCES documents (tenant_id, collection, id) ON DELETE CASCADE
);
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv) WITH (fastupdate = off);

-- Embeddings by model and the sha256 of the embedded text: an unchanged
-- chunk is never embedded twice, whichever document or tenant holds it.
CREATE TABLE embedding_cache (
    model         text        NOT NULL,
    content_hash  text        NOT NULL,
    embedding     bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, content_hash)
);

-- What an execution's run noticed without failing: `retrieval_empty`,
-- `retrieval_failed`, `retrieval_timed_out`, `retrieval_fallback`.
ALTER TABLE executions ADD COLUMN flags text[] NOT NULL DEFAULT '{}';

-- Per-collection term document frequencies: for every lexeme of a
-- collection's chunks (`chunks.tsv`), how many chunks hold it. The
-- search reads the query's lexemes here (primary-key lookups, a few
-- rows) to pick the selective ones, so the full-text stage reads only
-- posting lists whose length it knows to be within its budget instead
-- of ranking every chunk that shares a common word with the query.
--
-- Kept by statement-level triggers on `chunks`, in the transaction that
-- writes the chunks: the indexer's replace (delete then insert), a
-- document's or a collection's delete (cascaded to its chunks) and a
-- bulk load all keep it exact, whatever wrote them. Rows are written in
-- (tenant, collection, term) order so two indexers of one collection
-- take the row locks in the same order and cannot deadlock; a common
-- term's row serialises the indexing transactions of its collection for
-- the length of their (short) write, off the hot path. A term whose
-- count falls to zero is deleted.

CREATE TABLE chunk_terms (
    tenant_id   text   NOT NULL,
    collection  text   NOT NULL,
    term        text   NOT NULL,
    chunks      bigint NOT NULL,
    PRIMARY KEY (tenant_id, collection, term)
);

CREATE FUNCTION chunk_terms_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chunk_terms AS ct (tenant_id, collection, term, chunks)
    SELECT n.tenant_id, n.collection, t.term, count(*)
      FROM added n, unnest(tsvector_to_array(n.tsv)) AS t(term)
     GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (tenant_id, collection, term) DO UPDATE SET chunks = ct.chunks + EXCLUDED.chunks;
    RETURN NULL;
END $$;

CREATE FUNCTION chunk_terms_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- An upsert of negative counts, for the same lock order as the
    -- insert; then the terms no chunk holds any more go (a second
    -- statement: one statement cannot delete the rows it updated).
    INSERT INTO chunk_terms AS ct (tenant_id, collection, term, chunks)
    SELECT o.tenant_id, o.collection, t.term, -count(*)
      FROM removed o, unnest(tsvector_to_array(o.tsv)) AS t(term)
     GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (tenant_id, collection, term) DO UPDATE SET chunks = ct.chunks + EXCLUDED.chunks;
    DELETE FROM chunk_terms ct
     USING (SELECT DISTINCT o.tenant_id, o.collection, t.term
              FROM removed o, unnest(tsvector_to_array(o.tsv)) AS t(term)) g
     WHERE ct.tenant_id = g.tenant_id AND ct.collection = g.collection AND ct.term = g.term
       AND ct.chunks <= 0;
    RETURN NULL;
END $$;

CREATE TRIGGER chunk_terms_insert AFTER INSERT ON chunks
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION chunk_terms_added();
CREATE TRIGGER chunk_terms_delete AFTER DELETE ON chunks
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION chunk_terms_removed();

-- Chunks are never updated in place (the indexer replaces a document's
-- chunks), so no UPDATE trigger: refuse one rather than drift.
CREATE FUNCTION chunks_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'chunks are replaced, not updated (chunk_terms counts their terms)';
END $$;
CREATE TRIGGER chunks_no_update BEFORE UPDATE OF text ON chunks
    FOR EACH STATEMENT EXECUTE FUNCTION chunks_immutable();

INSERT INTO chunk_terms (tenant_id, collection, term, chunks)
SELECT c.tenant_id, c.collection, t.term, count(*)
  FROM chunks c, unnest(tsvector_to_array(c.tsv)) AS t(term)
 GROUP BY 1, 2, 3;

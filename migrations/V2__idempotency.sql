-- Idempotency keys: per tenant, expiring. A key maps to the execution it
-- created and the hash of the request body that created it.
CREATE TABLE idempotency_keys (
    tenant_id     text        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,
    execution_id  uuid        NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

-- The idempotency columns on executions were never written; the table above owns them.
ALTER TABLE executions DROP COLUMN idempotency_key, DROP COLUMN request_hash;

-- A retry waits until not_before: a stray duplicate message that arrives
-- earlier must not start it before its backoff (or Retry-After) is over.
ALTER TABLE executions ADD COLUMN not_before timestamptz;

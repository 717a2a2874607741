-- Webhooks: the endpoints a tenant registers, the tenant's secret for
-- per-execution URLs (`webhook.url` on submit), one delivery per terminal
-- transition and destination, and every attempt of a delivery.
--
-- Secrets are sealed (AEAD, key from `webhooks.encryption_key`): nonce
-- followed by ciphertext. `previous_secret` still signs until
-- `previous_secret_until` (rotation overlap).

CREATE TABLE webhook_endpoints (
    id                     uuid        PRIMARY KEY,
    tenant_id              text        NOT NULL,
    url                    text        NOT NULL,
    event_types            text[]      NOT NULL,
    enabled                boolean     NOT NULL DEFAULT true,
    description            text        NOT NULL DEFAULT '',
    disabled_reason        text,
    secret                 bytea       NOT NULL,
    previous_secret        bytea,
    previous_secret_until  timestamptz,
    -- The first failed attempt since the last success: past
    -- `webhooks.disable_after_failing_secs` the endpoint is disabled.
    failing_since          timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_tenant_idx ON webhook_endpoints (tenant_id, id);

CREATE TABLE webhook_tenant_secrets (
    tenant_id              text        PRIMARY KEY,
    secret                 bytea       NOT NULL,
    previous_secret        bytea,
    previous_secret_until  timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- Created in the statement that writes the terminal outcome (the worker's
-- finish batch, a cancel), so an outcome is never committed without its
-- deliveries. The id is the `webhook-id` header, the same on every attempt.
CREATE TABLE webhook_deliveries (
    id               uuid        PRIMARY KEY,
    tenant_id        text        NOT NULL,
    execution_id     uuid        NOT NULL,
    -- NULL for the execution's own `webhook.url`.
    endpoint_id      uuid,
    -- The endpoint's id, or the per-execution URL: what concurrency is
    -- bounded by, and one half of the uniqueness below.
    destination      text        NOT NULL,
    url              text        NOT NULL,
    event_type       text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    -- Attempts since creation or the last manual retry / recover: the
    -- position in `webhooks.retry_schedule_ms`.
    round_attempts   integer     NOT NULL DEFAULT 0,
    -- While pending: when the next attempt is due. A worker that takes a
    -- delivery moves it past its attempt's timeout, so a worker that dies
    -- mid-attempt leaves it due again rather than lost.
    next_attempt_at  timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    -- However often a terminal transition's messages are redelivered, one
    -- delivery per event and destination.
    UNIQUE (execution_id, event_type, destination)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, created_at)
    WHERE endpoint_id IS NOT NULL;

CREATE TABLE webhook_attempts (
    delivery_id    uuid        NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt        integer     NOT NULL,
    attempted_at   timestamptz NOT NULL,
    status_code    integer,
    latency_ms     double precision,
    error          text,
    -- The first KB of the receiver's answer.
    response_body  text,
    PRIMARY KEY (delivery_id, attempt)
);

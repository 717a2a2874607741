-- llmq initial schema: prompt registry, executions (with outbox and lease
-- columns), and the step trace.

CREATE TABLE prompt_versions (
    prompt_name   text        NOT NULL,
    version       integer     NOT NULL CHECK (version > 0),
    definition    jsonb       NOT NULL,  -- model, params, system, template, input_schema, output, limits
    content_hash  text        NOT NULL,  -- sha256 of the canonical definition: versions are immutable
    source        text        NOT NULL DEFAULT 'file',
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (prompt_name, version)
);

CREATE TABLE prompt_labels (
    prompt_name  text        NOT NULL,
    label        text        NOT NULL,
    version      integer     NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   text        NOT NULL,   -- 'sync' when the file sync set it, else the actor
    PRIMARY KEY (prompt_name, label),
    FOREIGN KEY (prompt_name, version) REFERENCES prompt_versions (prompt_name, version)
);

CREATE TABLE executions (
    id                 uuid        PRIMARY KEY,                -- UUIDv7: time ordered
    tenant_id          text        NOT NULL DEFAULT 'default', -- organisation, once tenants exist
    prompt_name        text        NOT NULL,
    prompt_version     integer     NOT NULL,
    prompt_label       text,
    model              text        NOT NULL,
    params             jsonb       NOT NULL DEFAULT '{}',
    input              jsonb       NOT NULL,
    output             jsonb,
    status             text        NOT NULL
                       CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    error_code         text,
    error_message      text,
    attempts           integer     NOT NULL DEFAULT 0,
    prompt_tokens      integer,
    completion_tokens  integer,
    total_tokens       integer,
    cost_usd           double precision,
    metadata           jsonb       NOT NULL DEFAULT '{}',
    end_user           text,
    priority           smallint    NOT NULL DEFAULT 5,
    stream             boolean     NOT NULL DEFAULT false,
    webhook_url        text,
    idempotency_key    text,
    request_hash       text,
    cancel_requested   boolean     NOT NULL DEFAULT false,
    lease_owner        text,
    lease_expires_at   timestamptz,
    -- Outbox: set while the row still has to be (re)published; the relay
    -- publishes rows whose time has come and clears it on confirm.
    publish_due_at     timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    finished_at        timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (prompt_name, prompt_version) REFERENCES prompt_versions (prompt_name, version)
);

CREATE INDEX executions_publish_due_idx ON executions (publish_due_at)
    WHERE publish_due_at IS NOT NULL;
CREATE INDEX executions_running_lease_idx ON executions (lease_expires_at)
    WHERE status = 'running';
CREATE INDEX executions_lease_owner_idx ON executions (lease_owner)
    WHERE status = 'running';
CREATE INDEX executions_tenant_created_idx ON executions (tenant_id, id DESC);

CREATE TABLE execution_steps (
    execution_id       uuid        NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    seq                integer     NOT NULL,
    kind               text        NOT NULL,
    attempt            integer     NOT NULL,
    status             text        NOT NULL
                       CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    started_at         timestamptz NOT NULL,
    finished_at        timestamptz,
    latency_ms         double precision,
    model              text,
    params             jsonb,
    prompt_tokens      integer,
    completion_tokens  integer,
    total_tokens       integer,
    input              jsonb,
    output             jsonb,
    error_code         text,
    error_message      text,
    retryable          boolean,
    PRIMARY KEY (execution_id, seq)
);

-- Usage and cost: the rollup the workers maintain as they finish
-- executions, the key an execution was submitted with, and the response
-- cache a request may ask for.

-- The API key an execution was submitted with (its id, never the key).
-- Until scoped keys exist every execution records 'config' (the key from
-- the configuration).
ALTER TABLE executions
    ADD COLUMN key_id          text,
    -- Set when the request asked for the response cache: how long a
    -- cached answer may be reused (seconds). NULL: the prompt version's
    -- own cache setting decides.
    ADD COLUMN cache_ttl_secs  integer,
    -- Whether the answer came from the response cache (no model call).
    ADD COLUMN cached          boolean NOT NULL DEFAULT false;

-- Token, execution and cost totals per hour and per dimension, added to by
-- the statement that finishes executions (never a scan of executions).
-- `shard` is the Postgres backend that wrote the row: two transactions in
-- flight at once are on different backends, so finishing batches never
-- wait on each other's rollup rows (and cannot deadlock on them); readers
-- sum over shards.
CREATE TABLE usage_rollup (
    tenant_id          text             NOT NULL,
    hour               timestamptz      NOT NULL,
    model              text             NOT NULL,
    prompt_name        text             NOT NULL,
    prompt_version     integer          NOT NULL,
    end_user           text             NOT NULL DEFAULT '',
    key_id             text             NOT NULL DEFAULT '',
    shard              integer          NOT NULL,
    executions         bigint           NOT NULL DEFAULT 0,
    succeeded          bigint           NOT NULL DEFAULT 0,
    failed             bigint           NOT NULL DEFAULT 0,
    cancelled          bigint           NOT NULL DEFAULT 0,
    cached             bigint           NOT NULL DEFAULT 0,
    prompt_tokens      bigint           NOT NULL DEFAULT 0,
    completion_tokens  bigint           NOT NULL DEFAULT 0,
    total_tokens       bigint           NOT NULL DEFAULT 0,
    cost_usd           double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, hour, model, prompt_name, prompt_version, end_user, key_id, shard)
);

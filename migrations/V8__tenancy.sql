-- Tenancy: organisations and their API keys.
--
-- An organisation is the tenant every row's `tenant_id` names. `default`
-- exists from the start: rows written before organisations existed are
-- its, the prompt files are synced into it, and the configured
-- development keys (`api.api_key`, `api.admin_key`) stand for it.
CREATE TABLE organisations (
    id          text        PRIMARY KEY,
    name        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO organisations (id, name) VALUES ('default', 'default');

-- A key is shown once, at creation; only its sha256 is stored (the key is
-- 32 random bytes, so a plain hash is as strong as a slow one), with its
-- first characters (`prefix`) to recognise it in listings. `scopes` is a
-- subset of executions:write, executions:read, prompts:write,
-- prompts:promote, webhooks:manage, admin. `end_user` binds every
-- execution the key submits to one end user. `last_used_at` is written
-- when an API process loads the key into its cache, not per request.
CREATE TABLE api_keys (
    id            uuid        PRIMARY KEY,
    tenant_id     text        NOT NULL REFERENCES organisations (id),
    key_hash      text        NOT NULL UNIQUE,
    prefix        text        NOT NULL,
    name          text,
    scopes        text[]      NOT NULL,
    end_user      text,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, id);

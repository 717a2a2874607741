-- Tools registered through the API (PUT /v1/tools/{name}), per tenant.
-- Tool files (tools/<name>.toml) are not stored: each worker reads them.
CREATE TABLE tools (
    tenant_id   text        NOT NULL,
    name        text        NOT NULL,
    definition  jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

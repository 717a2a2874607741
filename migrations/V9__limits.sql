-- Per-organisation limit settings: the fields an organisation overrides of
-- the configured defaults (`[limits.defaults]`), as a JSON object. Keyed by
-- the tenant id as text, without a foreign key: organisations themselves
-- are another table's. Counters and reservations live in Redis, not here.
CREATE TABLE org_limits (
    tenant_id   text        PRIMARY KEY,
    overrides   jsonb       NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL
);

-- The prompt registry through the API: labels that point at weighted
-- versions and per-segment targets, protected labels, the audit log of
-- every label move, the split arm an execution came through, and the
-- index the execution listing and the per-version stats read.

-- A label's rule. `version` stays the primary target (the heaviest), so
-- readers that only know one version per label keep working; `targets`
-- (a JSON array of {version, weight}) is NULL when the label points at
-- `version` alone. `segments` maps a segment name to its targets;
-- `segment_key` names a metadata key whose value selects the segment.
ALTER TABLE prompt_labels
    ADD COLUMN targets      jsonb,
    ADD COLUMN segments     jsonb   NOT NULL DEFAULT '{}',
    ADD COLUMN segment_key  text,
    ADD COLUMN protected    boolean NOT NULL DEFAULT false;

-- Every move of a label: who, when, from which rule to which, and why.
-- `from_rule` is NULL for the move that created the label. A rollback is
-- itself a move (to the previous move's `from_rule`).
CREATE TABLE prompt_label_moves (
    id           bigserial   PRIMARY KEY,
    prompt_name  text        NOT NULL,
    label        text        NOT NULL,
    from_rule    jsonb,
    to_rule      jsonb       NOT NULL,
    actor        text        NOT NULL,
    reason       text,
    moved_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prompt_label_moves_label_idx ON prompt_label_moves (prompt_name, label, id DESC);

-- Which arm of the label's rule an execution came through: `split:<i>`
-- (the i-th weighted target), `segment:<name>`, or NULL for a label with
-- one version, or an exact version.
ALTER TABLE executions ADD COLUMN prompt_arm text;

-- Listing (`GET /v1/executions?prompt=`) and per-version stats read a
-- tenant's executions of one prompt newest first; ids are UUIDv7, so id
-- order is creation order and `since` becomes an id bound. The unfiltered
-- listing walks the primary key backwards.
CREATE INDEX executions_tenant_prompt_idx ON executions (tenant_id, prompt_name, id DESC);

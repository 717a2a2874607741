-- No query lists executions by tenant yet; every update of an execution row
-- rewrites all of its indexes (status and lease columns change, so updates
-- are never HOT). The listing endpoint will bring the index it needs back.
DROP INDEX executions_tenant_created_idx;

//! Tools registered through the API, per tenant (`tools` table). The
//! definition is stored as the JSON the API checked; a worker compiles it
//! when an execution of that tenant needs it.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Row;

use super::{GenericClient, Result};

/// One registered tool.
#[derive(Clone, Debug)]
pub struct StoredTool {
    pub name: String,
    pub definition: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn stored(r: &Row) -> Result<StoredTool> {
    Ok(StoredTool {
        name: r.try_get("name")?,
        definition: r.try_get("definition")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const PUT: &str = "INSERT INTO tools (tenant_id, name, definition) VALUES ($1, $2, $3) \
     ON CONFLICT (tenant_id, name) DO UPDATE SET definition = EXCLUDED.definition, updated_at = now() \
     RETURNING name, definition, created_at, updated_at, (xmax = 0) AS created";

/// Creates or replaces `tenant`'s tool `name`; true when it was created.
pub async fn put_tool(
    client: &impl GenericClient,
    tenant: &str,
    name: &str,
    definition: &Value,
) -> Result<(StoredTool, bool)> {
    let row = client
        .query_one(
            &client.prepare_cached(PUT).await?,
            &[&tenant, &name, definition],
        )
        .await?;
    Ok((stored(&row)?, row.try_get("created")?))
}

const GET: &str = "SELECT name, definition, created_at, updated_at FROM tools \
     WHERE tenant_id = $1 AND name = $2";

pub async fn get_tool(
    client: &impl GenericClient,
    tenant: &str,
    name: &str,
) -> Result<Option<StoredTool>> {
    let row = client
        .query_opt(&client.prepare_cached(GET).await?, &[&tenant, &name])
        .await?;
    row.as_ref().map(stored).transpose()
}

const LIST: &str = "SELECT name, definition, created_at, updated_at FROM tools \
     WHERE tenant_id = $1 ORDER BY name";

pub async fn list_tools(client: &impl GenericClient, tenant: &str) -> Result<Vec<StoredTool>> {
    let rows = client
        .query(&client.prepare_cached(LIST).await?, &[&tenant])
        .await?;
    rows.iter().map(stored).collect()
}

const NAMED: &str = "SELECT name, definition, created_at, updated_at FROM tools \
     WHERE tenant_id = $1 AND name = ANY($2) ORDER BY name";

/// `tenant`'s tools among `names` (what one execution may call).
pub async fn named_tools(
    client: &impl GenericClient,
    tenant: &str,
    names: &[String],
) -> Result<Vec<StoredTool>> {
    let rows = client
        .query(&client.prepare_cached(NAMED).await?, &[&tenant, &names])
        .await?;
    rows.iter().map(stored).collect()
}

const DELETE: &str = "DELETE FROM tools WHERE tenant_id = $1 AND name = $2";

/// Removes `tenant`'s tool `name`; false when there was none.
pub async fn delete_tool(client: &impl GenericClient, tenant: &str, name: &str) -> Result<bool> {
    let n = client
        .execute(&client.prepare_cached(DELETE).await?, &[&tenant, &name])
        .await?;
    Ok(n > 0)
}

/// Every statement of this module, for the test that prepares them all.
pub const ALL_SQL: &[&str] = &[PUT, GET, LIST, NAMED, DELETE];

//! Tools registered through the API, per tenant: checked like a tool file
//! (the same contract, path-aware errors), plus the tenant rules (a
//! credential names only a secret of the tenant, never the worker's
//! environment) and the destination rules of webhooks (a public `https`
//! address unless `tools.allow_http` / `tools.allowed_hosts` say otherwise).

use llmq_shared::config::ToolSettings;
use llmq_shared::db::tools::{self as db, StoredTool};
use llmq_shared::db::{DbError, Pool};
use llmq_shared::ids::TenantId;
use llmq_shared::prompt::validate_name;
use llmq_shared::tool::{CompiledTool, ToolDefinition};
use serde_json::Value;

use super::error::{Result, ServiceError};

const INVALID: &str = "invalid_definition";

fn checked_name(name: &str) -> Result<()> {
    validate_name(name).map_err(|e| ServiceError::InvalidRequest(format!("name: {e}")))
}

/// Creates or replaces the tenant's tool `name`; true when it was created.
#[tracing::instrument(skip_all, fields(tool = name), err)]
pub async fn put_tool(
    pool: &Pool,
    settings: &ToolSettings,
    tenant: &TenantId,
    name: &str,
    body: Value,
) -> Result<(StoredTool, bool)> {
    checked_name(name)?;
    let definition = ToolDefinition::from_json(&body).map_err(|e| ServiceError::Rejected {
        code: INVALID,
        message: format!("definition: {e}"),
        details: None,
    })?;
    let compiled =
        CompiledTool::compile_for_tenant(tenant.as_str(), name, definition).map_err(|errors| {
            ServiceError::Rejected {
                code: INVALID,
                message: errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
                details: None,
            }
        })?;
    settings
        .destination_policy()
        .check(&compiled.definition.endpoint.url)
        .await
        .map_err(|e| ServiceError::Rejected {
            code: "tool_url_refused",
            message: format!("endpoint.url: {}", e.to_string().replace("webhook ", "")),
            details: None,
        })?;
    let stored = serde_json::to_value(&compiled.definition)
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    let client = pool.get().await.map_err(DbError::from)?;
    Ok(db::put_tool(&client, tenant.as_str(), name, &stored).await?)
}

pub async fn list_tools(pool: &Pool, tenant: &TenantId) -> Result<Vec<StoredTool>> {
    let client = pool.get().await.map_err(DbError::from)?;
    Ok(db::list_tools(&client, tenant.as_str()).await?)
}

pub async fn get_tool(pool: &Pool, tenant: &TenantId, name: &str) -> Result<StoredTool> {
    checked_name(name)?;
    let client = pool.get().await.map_err(DbError::from)?;
    db::get_tool(&client, tenant.as_str(), name)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("no tool {name}")))
}

pub async fn delete_tool(pool: &Pool, tenant: &TenantId, name: &str) -> Result<()> {
    checked_name(name)?;
    let client = pool.get().await.map_err(DbError::from)?;
    if db::delete_tool(&client, tenant.as_str(), name).await? {
        Ok(())
    } else {
        Err(ServiceError::NotFound(format!("no tool {name}")))
    }
}

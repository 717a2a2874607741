//! Creating and reading prompt versions. A version created here is checked
//! exactly as a prompt file is (the definition's own fields, then a compile
//! of its templates and input schema), stored with `source = 'api'`, and
//! never overwritten by the file sync. The same content posted twice
//! answers the version that already has it.

use llmq_shared::db::labels::StoredLabel;
use llmq_shared::db::prompts::{self as db, Created, PromptSummary, VersionInfo};
use llmq_shared::db::{labels, DbError, Pool};
use llmq_shared::ids::TenantId;
use llmq_shared::prompt::{CompiledPrompt, PromptDefinition, PromptError};
use serde_json::Value;

use super::unknown_prompt;
use crate::services::error::{Result, ServiceError};

/// A definition posted as JSON: its fields checked, then compiled.
pub fn parse_definition(name: &str, body: Value) -> Result<PromptDefinition> {
    // Path-aware, as a prompt file's load errors are: `params.top_p: ...`.
    let definition = PromptDefinition::from_json(&body).map_err(|e| ServiceError::Rejected {
        code: "invalid_definition",
        message: format!("definition: {e}"),
        details: None,
    })?;
    CompiledPrompt::compile(name, 0, definition.clone()).map_err(|e| ServiceError::Rejected {
        code: "invalid_definition",
        message: match e {
            PromptError::InvalidDefinition { message, .. } => message,
            other => other.to_string(),
        },
        details: None,
    })?;
    Ok(definition)
}

/// Stores the definition as the next version (or answers the version that
/// already has this exact content).
#[tracing::instrument(skip_all, fields(prompt = name), err)]
pub async fn create_version(pool: &Pool, name: &str, body: Value) -> Result<Created> {
    let definition = parse_definition(name, body)?;
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let created = db::create_version(&tx, name, &definition).await?;
    tx.commit().await.map_err(DbError::from)?;
    if let Created::New(version) = created {
        tracing::info!(prompt = name, version, "prompt version created");
    }
    Ok(created)
}

/// The organisation's prompts.
pub async fn list_prompts(pool: &Pool, tenant: &TenantId) -> Result<Vec<PromptSummary>> {
    let client = pool.get().await.map_err(DbError::from)?;
    Ok(db::list_prompts(&client, &tenant.prompt_namespace()).await?)
}

/// A prompt's versions and labels; 404 for an unknown prompt.
pub async fn show_prompt(pool: &Pool, name: &str) -> Result<(Vec<VersionInfo>, Vec<StoredLabel>)> {
    let client = pool.get().await.map_err(DbError::from)?;
    let versions = db::list_versions(&client, name).await?;
    if versions.is_empty() {
        return Err(unknown_prompt(name));
    }
    let labels = labels::list_labels(&client, name).await?;
    Ok((versions, labels))
}

/// One version with its definition.
pub async fn get_version(
    pool: &Pool,
    name: &str,
    version: i32,
) -> Result<(VersionInfo, PromptDefinition)> {
    let client = pool.get().await.map_err(DbError::from)?;
    let info = db::version_info(&client, name, version).await?;
    let stored = db::get_prompt_version(&client, name, version).await?;
    match (info, stored) {
        (Some(info), Some(stored)) => Ok((info, stored.definition)),
        _ if db::list_versions(&client, name).await?.is_empty() => Err(unknown_prompt(name)),
        _ => Err(ServiceError::NotFound(format!(
            "prompt {name:?} has no version {version}"
        ))),
    }
}

//! The prompt registry in Postgres: immutable versions and movable labels.
//! Syncing files is idempotent and refuses to change an existing version.

use serde_json::Value;
use tokio_postgres::Row;

use super::{DbError, GenericClient, Result};
use crate::prompt::{PromptDefinition, PromptFile, DEFAULT_LABEL};

/// A stored version, with the label it was reached through, if any.
#[derive(Clone, Debug)]
pub struct StoredPromptVersion {
    pub name: String,
    pub version: i32,
    pub label: Option<String>,
    pub definition: PromptDefinition,
}

const SELECT_HASH: &str =
    "SELECT content_hash FROM prompt_versions WHERE prompt_name = $1 AND version = $2";
const INSERT_VERSION: &str =
    "INSERT INTO prompt_versions (prompt_name, version, definition, content_hash, source) \
     VALUES ($1, $2, $3, $4, $5)";
/// Sync owns a label only while nobody else has moved it.
const SYNC_LABEL: &str = "INSERT INTO prompt_labels (prompt_name, label, version, updated_by) \
     VALUES ($1, $2, $3, 'sync') \
     ON CONFLICT (prompt_name, label) DO UPDATE SET version = EXCLUDED.version, updated_at = now() \
     WHERE prompt_labels.updated_by = 'sync' AND prompt_labels.version < EXCLUDED.version";
const SYNC_LOCK: &str = "SELECT pg_advisory_xact_lock(7433001)";

/// Loads prompt files into the registry inside one transaction. A version
/// already stored with different content is an error, not an overwrite.
pub async fn sync_prompt_files(
    client: &mut deadpool_postgres::Object,
    files: &[PromptFile],
) -> Result<usize> {
    let tx = client.transaction().await?;
    tx.execute(SYNC_LOCK, &[]).await?;
    let mut inserted = 0;
    for file in files {
        let hash = file.definition.content_hash();
        let existing = tx
            .query_opt(
                &tx.prepare_cached(SELECT_HASH).await?,
                &[&file.name, &file.version],
            )
            .await?;
        match existing {
            Some(row) if row.get::<_, String>(0) == hash => {}
            Some(_) => {
                return Err(DbError::Conflict(format!(
                    "prompt {} v{} in {} differs from the stored version; versions are immutable, add v{} instead",
                    file.name,
                    file.version,
                    file.path.display(),
                    file.version + 1
                )))
            }
            None => {
                let definition = to_json(&file.definition)?;
                tx.execute(
                    &tx.prepare_cached(INSERT_VERSION).await?,
                    &[&file.name, &file.version, &definition, &hash, &"file"],
                )
                .await?;
                inserted += 1;
            }
        }
    }
    let mut newest: std::collections::BTreeMap<&str, i32> = Default::default();
    for f in files {
        let v = newest.entry(f.name.as_str()).or_insert(f.version);
        *v = (*v).max(f.version);
    }
    for (name, version) in newest {
        tx.execute(
            &tx.prepare_cached(SYNC_LABEL).await?,
            &[&name, &DEFAULT_LABEL, &version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

fn to_json(d: &PromptDefinition) -> Result<Value> {
    serde_json::to_value(d).map_err(|e| DbError::Data(e.to_string()))
}

const BY_VERSION: &str =
    "SELECT prompt_name, version, NULL::text AS label, definition FROM prompt_versions \
     WHERE prompt_name = $1 AND version = $2";
const BY_LABEL: &str = "SELECT v.prompt_name, v.version, l.label, v.definition \
     FROM prompt_labels l JOIN prompt_versions v USING (prompt_name, version) \
     WHERE l.prompt_name = $1 AND l.label = $2";
const PROMPT_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM prompt_versions WHERE prompt_name = $1)";

/// How a request names a version.
#[derive(Clone, Debug)]
pub enum VersionRef<'a> {
    Number(i32),
    Label(&'a str),
}

/// Why a prompt reference did not resolve.
#[derive(Debug, Clone, PartialEq)]
pub enum Unresolved {
    UnknownPrompt,
    UnknownVersion,
    UnknownLabel,
}

pub async fn resolve_prompt(
    client: &impl GenericClient,
    name: &str,
    version: VersionRef<'_>,
) -> Result<std::result::Result<StoredPromptVersion, Unresolved>> {
    let row = match version {
        VersionRef::Number(v) => {
            client
                .query_opt(&client.prepare_cached(BY_VERSION).await?, &[&name, &v])
                .await?
        }
        VersionRef::Label(l) => {
            client
                .query_opt(&client.prepare_cached(BY_LABEL).await?, &[&name, &l])
                .await?
        }
    };
    if let Some(row) = row {
        return Ok(Ok(from_row(&row)?));
    }
    let exists: bool = client
        .query_one(&client.prepare_cached(PROMPT_EXISTS).await?, &[&name])
        .await?
        .get(0);
    Ok(Err(match (exists, version) {
        (false, _) => Unresolved::UnknownPrompt,
        (true, VersionRef::Number(_)) => Unresolved::UnknownVersion,
        (true, VersionRef::Label(_)) => Unresolved::UnknownLabel,
    }))
}

/// A version by number, for the worker (the execution names it exactly).
pub async fn get_prompt_version(
    client: &impl GenericClient,
    name: &str,
    version: i32,
) -> Result<Option<StoredPromptVersion>> {
    let row = client
        .query_opt(
            &client.prepare_cached(BY_VERSION).await?,
            &[&name, &version],
        )
        .await?;
    row.as_ref().map(from_row).transpose()
}

fn from_row(row: &Row) -> Result<StoredPromptVersion> {
    let definition: Value = row.try_get("definition")?;
    Ok(StoredPromptVersion {
        name: row.try_get("prompt_name")?,
        version: row.try_get("version")?,
        label: row.try_get("label")?,
        definition: serde_json::from_value(definition)
            .map_err(|e| DbError::Data(format!("prompt definition: {e}")))?,
    })
}

/// Every statement of this module, for the test that prepares them all.
pub const ALL_SQL: &[&str] = &[
    SELECT_HASH,
    INSERT_VERSION,
    SYNC_LABEL,
    SYNC_LOCK,
    BY_VERSION,
    BY_LABEL,
    PROMPT_EXISTS,
];

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
    "SELECT content_hash, source FROM prompt_versions WHERE prompt_name = $1 AND version = $2";
const INSERT_VERSION: &str =
    "INSERT INTO prompt_versions (prompt_name, version, definition, content_hash, source) \
     VALUES ($1, $2, $3, $4, $5)";
/// Sync owns a label only while nobody else has moved it. A move it makes
/// is recorded in the label's audit log like any other (actor `sync`).
const SYNC_LABEL: &str = "WITH old AS ( \
       SELECT version FROM prompt_labels WHERE prompt_name = $1 AND label = $2), \
     moved AS ( \
       INSERT INTO prompt_labels (prompt_name, label, version, updated_by) \
       VALUES ($1, $2, $3, 'sync') \
       ON CONFLICT (prompt_name, label) DO UPDATE SET version = EXCLUDED.version, updated_at = now() \
       WHERE prompt_labels.updated_by = 'sync' AND prompt_labels.version < EXCLUDED.version \
       RETURNING version) \
     INSERT INTO prompt_label_moves (prompt_name, label, from_rule, to_rule, actor, reason) \
     SELECT $1, $2, \
       (SELECT jsonb_build_object('targets', jsonb_build_array(jsonb_build_object('version', old.version, 'weight', 1))) FROM old), \
       jsonb_build_object('targets', jsonb_build_array(jsonb_build_object('version', moved.version, 'weight', 1))), \
       'sync', 'newest prompt file' \
     FROM moved";
const SYNC_LOCK: &str = "SELECT pg_advisory_xact_lock(7433001)";

/// `source` of a version read from a prompt file.
pub const SOURCE_FILE: &str = "file";
/// `source` of a version created with `POST /v1/prompts/{name}/versions`.
pub const SOURCE_API: &str = "api";

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
            Some(row) if row.get::<_, String>(1) == SOURCE_API => {
                return Err(DbError::Conflict(format!(
                    "prompt {} v{} in {} conflicts with version {} created through the API; \
                     the sync never overwrites it: rename the file to the next free version",
                    file.name,
                    file.version,
                    file.path.display(),
                    file.version
                )))
            }
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
                    &[&file.name, &file.version, &definition, &hash, &SOURCE_FILE],
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
    // Every other organisation gets its own copy of the files (a version
    // number it already used for a prompt of its own keeps its content).
    for org in super::tenancy::list_org_ids(&tx).await? {
        super::tenancy::copy_file_prompts(&tx, &org).await?;
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

/// A version's registry facts, without its definition.
#[derive(Clone, Debug)]
pub struct VersionInfo {
    pub version: i32,
    pub content_hash: String,
    pub source: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A prompt in the registry listing.
#[derive(Clone, Debug)]
pub struct PromptSummary {
    pub name: String,
    pub latest_version: i32,
    pub versions: i64,
    pub labels: Vec<String>,
}

const CREATE_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7433003))";
const SAME_CONTENT: &str = "SELECT version FROM prompt_versions \
     WHERE prompt_name = $1 AND content_hash = $2 ORDER BY version LIMIT 1";
const NEXT_VERSION: &str =
    "SELECT COALESCE(max(version), 0) + 1 FROM prompt_versions WHERE prompt_name = $1";
const LIST_PROMPTS: &str = "SELECT v.prompt_name, max(v.version) AS latest, count(*) AS versions, \
       COALESCE((SELECT array_agg(l.label ORDER BY l.label) FROM prompt_labels l \
                 WHERE l.prompt_name = v.prompt_name), '{}') AS labels \
     FROM prompt_versions v \
     WHERE CASE WHEN $1 = '' THEN strpos(v.prompt_name, '/') = 0 ELSE starts_with(v.prompt_name, $1) END \
     GROUP BY v.prompt_name ORDER BY v.prompt_name";
const LIST_VERSIONS: &str =
    "SELECT version, content_hash, source, created_at FROM prompt_versions \
     WHERE prompt_name = $1 ORDER BY version";
const VERSION_INFO: &str = "SELECT version, content_hash, source, created_at FROM prompt_versions \
     WHERE prompt_name = $1 AND version = $2";

/// Whether `create_version` stored a new version or found the same content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    New(i32),
    /// An existing version has exactly this content (same content hash).
    Existing(i32),
}

/// Stores `definition` as the prompt's next version, in the caller's
/// transaction; a definition identical to an existing version's answers
/// that version instead (versions are content-addressed: one content, one
/// number). Creation of one prompt's versions is serialized.
pub async fn create_version(
    client: &impl GenericClient,
    name: &str,
    definition: &PromptDefinition,
) -> Result<Created> {
    client
        .execute(&client.prepare_cached(CREATE_LOCK).await?, &[&name])
        .await?;
    let hash = definition.content_hash();
    if let Some(row) = client
        .query_opt(&client.prepare_cached(SAME_CONTENT).await?, &[&name, &hash])
        .await?
    {
        return Ok(Created::Existing(row.get(0)));
    }
    let next: i32 = client
        .query_one(&client.prepare_cached(NEXT_VERSION).await?, &[&name])
        .await?
        .get(0);
    let json = to_json(definition)?;
    client
        .execute(
            &client.prepare_cached(INSERT_VERSION).await?,
            &[&name, &next, &json, &hash, &SOURCE_API],
        )
        .await?;
    Ok(Created::New(next))
}

/// Every prompt of one organisation's registry (`namespace`: what its
/// prompt keys start with, see `TenantId::prompt_namespace`) with its
/// newest version and its labels; names as the organisation knows them.
pub async fn list_prompts(
    client: &impl GenericClient,
    namespace: &str,
) -> Result<Vec<PromptSummary>> {
    client
        .query(&client.prepare_cached(LIST_PROMPTS).await?, &[&namespace])
        .await?
        .iter()
        .map(|r| {
            let key: String = r.try_get(0)?;
            Ok(PromptSummary {
                name: crate::ids::public_prompt_name(&key).to_string(),
                latest_version: r.try_get(1)?,
                versions: r.try_get(2)?,
                labels: r.try_get(3)?,
            })
        })
        .collect()
}

/// The prompt's versions, oldest first; empty for an unknown prompt.
pub async fn list_versions(client: &impl GenericClient, name: &str) -> Result<Vec<VersionInfo>> {
    client
        .query(&client.prepare_cached(LIST_VERSIONS).await?, &[&name])
        .await?
        .iter()
        .map(info_from_row)
        .collect()
}

/// One version's registry facts.
pub async fn version_info(
    client: &impl GenericClient,
    name: &str,
    version: i32,
) -> Result<Option<VersionInfo>> {
    client
        .query_opt(
            &client.prepare_cached(VERSION_INFO).await?,
            &[&name, &version],
        )
        .await?
        .as_ref()
        .map(info_from_row)
        .transpose()
}

fn info_from_row(r: &Row) -> Result<VersionInfo> {
    Ok(VersionInfo {
        version: r.try_get("version")?,
        content_hash: r.try_get("content_hash")?,
        source: r.try_get("source")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Every statement of this module, for the test that prepares them all.
pub const ALL_SQL: &[&str] = &[
    CREATE_LOCK,
    SAME_CONTENT,
    NEXT_VERSION,
    LIST_PROMPTS,
    LIST_VERSIONS,
    VERSION_INFO,
    SELECT_HASH,
    INSERT_VERSION,
    SYNC_LABEL,
    SYNC_LOCK,
    BY_VERSION,
    BY_LABEL,
    PROMPT_EXISTS,
];

//! Labels in the registry: their rules (`crate::prompt::LabelRule`), the
//! protected flag, and the audit log of every move. A move locks its label
//! (an advisory lock per prompt and label, held to the commit), so moves of
//! one label are serialized and each recorded `from` is what the label
//! really pointed at before it.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Row;

use super::{DbError, GenericClient, Result};
use crate::prompt::{LabelRule, Target};

/// A label as stored.
#[derive(Clone, Debug)]
pub struct StoredLabel {
    pub label: String,
    pub rule: LabelRule,
    pub protected: bool,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// One recorded move.
#[derive(Clone, Debug)]
pub struct LabelMove {
    pub id: i64,
    pub label: String,
    pub from: Option<LabelRule>,
    pub to: LabelRule,
    pub actor: String,
    pub reason: Option<String>,
    pub moved_at: DateTime<Utc>,
}

const GET_LABEL: &str =
    "SELECT label, version, targets, segments, segment_key, protected, updated_at, updated_by \
     FROM prompt_labels WHERE prompt_name = $1 AND label = $2";
const LIST_LABELS: &str =
    "SELECT label, version, targets, segments, segment_key, protected, updated_at, updated_by \
     FROM prompt_labels WHERE prompt_name = $1 ORDER BY label";
const LOCK_LABEL: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 7433002))";
const MISSING_VERSIONS: &str = "SELECT v FROM UNNEST($2::int[]) AS v \
     WHERE NOT EXISTS (SELECT 1 FROM prompt_versions WHERE prompt_name = $1 AND version = v) ORDER BY v";
const WRITE_LABEL: &str = "INSERT INTO prompt_labels \
       (prompt_name, label, version, targets, segments, segment_key, protected, updated_at, updated_by) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, now(), $8) \
     ON CONFLICT (prompt_name, label) DO UPDATE SET version = EXCLUDED.version, targets = EXCLUDED.targets, \
       segments = EXCLUDED.segments, segment_key = EXCLUDED.segment_key, protected = EXCLUDED.protected, \
       updated_at = now(), updated_by = EXCLUDED.updated_by";
const RECORD_MOVE: &str = "INSERT INTO prompt_label_moves (prompt_name, label, from_rule, to_rule, actor, reason) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, label, from_rule, to_rule, actor, reason, moved_at";
const HISTORY: &str =
    "SELECT id, label, from_rule, to_rule, actor, reason, moved_at FROM prompt_label_moves \
     WHERE prompt_name = $1 AND label = $2 ORDER BY id DESC LIMIT $3";

/// The label, if it exists.
pub async fn get_label(
    client: &impl GenericClient,
    name: &str,
    label: &str,
) -> Result<Option<StoredLabel>> {
    let row = client
        .query_opt(&client.prepare_cached(GET_LABEL).await?, &[&name, &label])
        .await?;
    row.as_ref().map(label_from_row).transpose()
}

/// Every label of a prompt, by name.
pub async fn list_labels(client: &impl GenericClient, name: &str) -> Result<Vec<StoredLabel>> {
    client
        .query(&client.prepare_cached(LIST_LABELS).await?, &[&name])
        .await?
        .iter()
        .map(label_from_row)
        .collect()
}

/// Serializes moves of one label until the transaction ends. Take it
/// before reading the label a move starts from.
pub async fn lock_label(client: &impl GenericClient, name: &str, label: &str) -> Result<()> {
    client
        .execute(&client.prepare_cached(LOCK_LABEL).await?, &[&name, &label])
        .await?;
    Ok(())
}

/// The versions of `versions` the prompt does not have, ascending.
pub async fn missing_versions(
    client: &impl GenericClient,
    name: &str,
    versions: &[i32],
) -> Result<Vec<i32>> {
    Ok(client
        .query(
            &client.prepare_cached(MISSING_VERSIONS).await?,
            &[&name, &versions],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Points the label at `rule` (creating it) and records the move from
/// `from`, in the caller's transaction (which holds `lock_label`).
#[allow(clippy::too_many_arguments)]
pub async fn write_move(
    client: &impl GenericClient,
    name: &str,
    label: &str,
    from: Option<&LabelRule>,
    rule: &LabelRule,
    protected: bool,
    actor: &str,
    reason: Option<&str>,
) -> Result<LabelMove> {
    let targets = (rule.targets.len() > 1 || rule.targets.first().is_some_and(|t| t.weight != 1))
        .then(|| to_json(&rule.targets))
        .transpose()?;
    let segments = to_json(&rule.segments)?;
    client
        .execute(
            &client.prepare_cached(WRITE_LABEL).await?,
            &[
                &name,
                &label,
                &rule.primary(),
                &targets,
                &segments,
                &rule.segment_key,
                &protected,
                &actor,
            ],
        )
        .await?;
    let from = from.map(to_json).transpose()?;
    let to = to_json(rule)?;
    let row = client
        .query_one(
            &client.prepare_cached(RECORD_MOVE).await?,
            &[&name, &label, &from, &to, &actor, &reason],
        )
        .await?;
    move_from_row(&row)
}

/// The label's moves, newest first.
pub async fn label_history(
    client: &impl GenericClient,
    name: &str,
    label: &str,
    limit: i64,
) -> Result<Vec<LabelMove>> {
    client
        .query(
            &client.prepare_cached(HISTORY).await?,
            &[&name, &label, &limit],
        )
        .await?
        .iter()
        .map(move_from_row)
        .collect()
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| DbError::Data(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| DbError::Data(format!("{what}: {e}")))
}

fn label_from_row(row: &Row) -> Result<StoredLabel> {
    let version: i32 = row.try_get("version")?;
    let targets: Option<Value> = row.try_get("targets")?;
    let targets: Vec<Target> = match targets {
        Some(t) => from_json("label targets", t)?,
        None => vec![Target { version, weight: 1 }],
    };
    Ok(StoredLabel {
        label: row.try_get("label")?,
        rule: LabelRule {
            targets,
            segments: from_json("label segments", row.try_get("segments")?)?,
            segment_key: row.try_get("segment_key")?,
        },
        protected: row.try_get("protected")?,
        updated_at: row.try_get("updated_at")?,
        updated_by: row.try_get("updated_by")?,
    })
}

fn move_from_row(row: &Row) -> Result<LabelMove> {
    let from: Option<Value> = row.try_get("from_rule")?;
    Ok(LabelMove {
        id: row.try_get("id")?,
        label: row.try_get("label")?,
        from: from.map(|f| from_json("move from", f)).transpose()?,
        to: from_json("move to", row.try_get("to_rule")?)?,
        actor: row.try_get("actor")?,
        reason: row.try_get("reason")?,
        moved_at: row.try_get("moved_at")?,
    })
}

/// Every statement of this module, for the test that prepares them all.
pub const ALL_SQL: &[&str] = &[
    GET_LABEL,
    LIST_LABELS,
    LOCK_LABEL,
    MISSING_VERSIONS,
    WRITE_LABEL,
    RECORD_MOVE,
    HISTORY,
];

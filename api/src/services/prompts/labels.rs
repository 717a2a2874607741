//! Moving labels: promote (point a label at a version, a weighted split,
//! per-segment targets), roll back (back to where the last move found it),
//! and the audit log of every move. A move commits the label and its log
//! entry together, then clears this process's cached rule and announces
//! the move on the events exchange so every other API process clears its
//! own at once (the label TTL is the fallback if that message is lost).
//!
//! Protected labels (`api.protected_labels`, `production` by default, or a
//! label whose `protected` flag is set) are moved only by a key with the
//! `prompts:promote` scope; setting or clearing the flag needs it too.

use std::sync::Arc;

use llmq_shared::db::labels::{self as db, LabelMove};
use llmq_shared::db::{prompts, DbError, Pool};
use llmq_shared::events::LabelMoved;
use llmq_shared::prompt::{LabelCache, LabelRule};
use llmq_shared::queue::Publisher;

use super::unknown_prompt;
use crate::services::error::{Result, ServiceError};

/// Everything a label move touches.
pub struct LabelDeps<'a> {
    pub pool: &'a Pool,
    pub publisher: &'a Arc<Publisher>,
    pub labels: &'a LabelCache,
    pub protected_labels: &'a [String],
}

/// Who moves a label.
#[derive(Clone, Debug)]
pub struct Actor {
    /// Recorded in the audit log.
    pub name: String,
    /// May move protected labels (has `prompts:promote`).
    pub promote: bool,
}

/// A move as asked.
#[derive(Clone, Debug)]
pub struct MoveRequest {
    pub rule: LabelRule,
    /// Sets the label's protected flag; `None` keeps it.
    pub protected: Option<bool>,
    pub reason: Option<String>,
}

/// Points `label` at the rule asked for, recording the move.
#[tracing::instrument(skip_all, fields(prompt = name, label), err)]
pub async fn move_label(
    deps: &LabelDeps<'_>,
    name: &str,
    label: &str,
    request: MoveRequest,
    actor: &Actor,
) -> Result<LabelMove> {
    if let Some(problem) = request.rule.problem() {
        return Err(ServiceError::InvalidRequest(problem));
    }
    apply(
        deps,
        name,
        label,
        actor,
        request.reason.as_deref(),
        |_, _| Ok((request.rule.clone(), request.protected)),
    )
    .await
}

/// Moves `label` back to where it pointed before its last move (which
/// may itself have been a rollback: two rollbacks return to the start).
#[tracing::instrument(skip_all, fields(prompt = name, label), err)]
pub async fn rollback_label(
    deps: &LabelDeps<'_>,
    name: &str,
    label: &str,
    reason: Option<String>,
    actor: &Actor,
) -> Result<LabelMove> {
    let reason = reason.unwrap_or_else(|| "rollback".into());
    apply(
        deps,
        name,
        label,
        actor,
        Some(&reason),
        |_, last| match last.and_then(|m| m.from.clone()) {
            Some(previous) => Ok((previous, None)),
            None => Err(ServiceError::Conflict(format!(
                "label {label:?} of {name:?} has no earlier target to roll back to"
            ))),
        },
    )
    .await
}

/// The label's moves, newest first.
pub async fn label_history(
    pool: &Pool,
    name: &str,
    label: &str,
    limit: i64,
) -> Result<Vec<LabelMove>> {
    let client = pool.get().await.map_err(DbError::from)?;
    let moves = db::label_history(&client, name, label, limit).await?;
    if moves.is_empty() && db::get_label(&client, name, label).await?.is_none() {
        return Err(not_found(&client, name, label).await);
    }
    Ok(moves)
}

async fn not_found(
    client: &impl llmq_shared::db::GenericClient,
    name: &str,
    label: &str,
) -> ServiceError {
    match prompts::list_versions(client, name).await {
        Ok(v) if v.is_empty() => unknown_prompt(name),
        Ok(_) => ServiceError::NotFound(format!("prompt {name:?} has no label {label:?}")),
        Err(e) => e.into(),
    }
}

/// One move under the label's lock: `decide` sees the label as it is and
/// its last move, and answers the new rule and protected flag.
async fn apply(
    deps: &LabelDeps<'_>,
    name: &str,
    label: &str,
    actor: &Actor,
    reason: Option<&str>,
    decide: impl FnOnce(Option<&LabelRule>, Option<&LabelMove>) -> Result<(LabelRule, Option<bool>)>,
) -> Result<LabelMove> {
    let mut client = deps.pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    db::lock_label(&tx, name, label).await?;
    let current = db::get_label(&tx, name, label).await?;
    let last = db::label_history(&tx, name, label, 1).await?.pop();
    if current.is_none() && prompts::list_versions(&tx, name).await?.is_empty() {
        return Err(unknown_prompt(name));
    }
    let was_protected = current.as_ref().is_some_and(|c| c.protected);
    if (was_protected || deps.protected_labels.iter().any(|p| p == label)) && !actor.promote {
        return Err(ServiceError::Forbidden(format!(
            "label {label:?} is protected: moving it needs the prompts:promote scope"
        )));
    }
    let (rule, protected) = decide(current.as_ref().map(|c| &c.rule), last.as_ref())?;
    if protected.is_some_and(|p| p != was_protected) && !actor.promote {
        return Err(ServiceError::Forbidden(
            "setting or clearing a label's protected flag needs the prompts:promote scope".into(),
        ));
    }
    let mut versions: Vec<i32> = rule.versions().collect();
    versions.sort_unstable();
    versions.dedup();
    let missing = db::missing_versions(&tx, name, &versions).await?;
    if !missing.is_empty() {
        return Err(ServiceError::NotFound(format!(
            "prompt {name:?} has no version {}",
            missing
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let recorded = db::write_move(
        &tx,
        name,
        label,
        current.as_ref().map(|c| &c.rule),
        &rule,
        protected.unwrap_or(was_protected),
        &actor.name,
        reason,
    )
    .await?;
    tx.commit().await.map_err(DbError::from)?;
    deps.labels.invalidate(name, label);
    // Its own task, awaited: the request's deadline may drop this future,
    // and a committed move must still be announced.
    let publisher = deps.publisher.clone();
    let moved = LabelMoved {
        prompt: name.to_string(),
        label: label.to_string(),
    };
    let announce = tokio::spawn(async move { publisher.publish_label_moved(&moved).await });
    if announce.await.is_err() {
        tracing::warn!(prompt = name, label, "announcing the label move panicked");
    }
    tracing::info!(prompt = name, label, actor = %actor.name, "label moved");
    Ok(recorded)
}

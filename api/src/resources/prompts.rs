//! The JSON shapes of the prompt registry endpoints and the execution
//! listing (docs/api.md, "Prompts").

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use llmq_shared::db::labels::{LabelMove, StoredLabel};
use llmq_shared::db::prompts::{PromptSummary, VersionInfo};
use llmq_shared::db::stats::VersionStats;
use llmq_shared::prompt::{LabelRule, PromptDefinition, Target};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::ExecutionResource;
use crate::services::error::ServiceError;
use crate::services::prompts::labels::MoveRequest;

/// `GET /v1/prompts`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PromptList {
    pub prompts: Vec<PromptListItem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PromptListItem {
    pub name: String,
    pub latest_version: i32,
    pub versions: i64,
    pub labels: Vec<String>,
}

impl From<PromptSummary> for PromptListItem {
    fn from(p: PromptSummary) -> Self {
        Self {
            name: p.name,
            latest_version: p.latest_version,
            versions: p.versions,
            labels: p.labels,
        }
    }
}

/// One version's registry facts.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionSummary {
    pub version: i32,
    /// sha256 of the canonical definition.
    pub content_hash: String,
    /// `file` (synced from prompts/) or `api` (created through the API).
    pub source: String,
    pub created_at: DateTime<Utc>,
}

impl From<VersionInfo> for VersionSummary {
    fn from(v: VersionInfo) -> Self {
        Self {
            version: v.version,
            content_hash: v.content_hash,
            source: v.source,
            created_at: v.created_at,
        }
    }
}

/// Where a label points.
#[derive(Debug, Serialize, ToSchema)]
pub struct LabelResource {
    pub label: String,
    /// The primary (heaviest) version.
    pub version: i32,
    pub targets: Vec<Target>,
    pub segments: BTreeMap<String, Vec<Target>>,
    pub segment_key: Option<String>,
    /// Whether moving it needs the admin key (its flag, or
    /// `api.protected_labels`).
    pub protected: bool,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

impl LabelResource {
    pub fn new(l: StoredLabel, protected_labels: &[String]) -> Self {
        Self {
            version: l.rule.primary(),
            protected: l.protected || protected_labels.contains(&l.label),
            label: l.label,
            targets: l.rule.targets,
            segments: l.rule.segments,
            segment_key: l.rule.segment_key,
            updated_at: l.updated_at,
            updated_by: l.updated_by,
        }
    }
}

/// `GET /v1/prompts/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PromptResource {
    pub name: String,
    pub versions: Vec<VersionSummary>,
    pub labels: Vec<LabelResource>,
}

/// `GET /v1/prompts/{name}/versions/{version}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionResource {
    pub name: String,
    #[serde(flatten)]
    pub summary: VersionSummary,
    /// The definition, as in a prompt file.
    #[schema(value_type = Object)]
    pub definition: Value,
}

impl VersionResource {
    pub fn new(name: &str, info: VersionInfo, definition: &PromptDefinition) -> Self {
        Self {
            name: name.to_string(),
            summary: info.into(),
            definition: serde_json::to_value(definition).unwrap_or(Value::Null),
        }
    }
}

/// `POST /v1/prompts/{name}/versions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedVersion {
    pub name: String,
    pub version: i32,
    /// False when an existing version already had exactly this content
    /// (that version is answered, 200, and nothing is stored).
    pub created: bool,
}

/// `GET /v1/prompts/{name}/diff`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionDiff {
    pub name: String,
    pub from: i32,
    pub to: i32,
    pub changes: Vec<crate::services::prompts::diff::FieldChange>,
}

/// `PUT /v1/prompts/{name}/labels/{label}`: exactly one of `version` and
/// `targets`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveLabel {
    /// Point the label at this one version.
    pub version: Option<i32>,
    /// Or at weighted versions (a split), sticky per `user`.
    pub targets: Option<Vec<Target>>,
    /// Per-segment targets: a version, or weighted versions, per segment.
    #[schema(value_type = Option<Object>)]
    pub segments: Option<BTreeMap<String, SegmentTarget>>,
    /// A metadata key whose value names the request's segment when the
    /// request has no `segment`.
    pub segment_key: Option<String>,
    /// Set (or clear) the protected flag; needs the admin key.
    pub protected: Option<bool>,
    /// Why, for the audit log.
    pub reason: Option<String>,
}

/// A segment's target: one version or weighted versions.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SegmentTarget {
    Version(i32),
    Targets(Vec<Target>),
}

impl MoveLabel {
    pub fn into_request(self) -> Result<MoveRequest, ServiceError> {
        let invalid = |m: &str| ServiceError::InvalidRequest(m.to_string());
        let targets = match (self.version, self.targets) {
            (Some(v), None) => vec![Target {
                version: v,
                weight: 1,
            }],
            (None, Some(t)) => t,
            _ => return Err(invalid("give exactly one of version and targets")),
        };
        let segments = self
            .segments
            .unwrap_or_default()
            .into_iter()
            .map(|(name, t)| {
                let t = match t {
                    SegmentTarget::Version(version) => vec![Target { version, weight: 1 }],
                    SegmentTarget::Targets(t) => t,
                };
                (name, t)
            })
            .collect();
        if let Some(reason) = &self.reason {
            if reason.contains('\0') || reason.len() > 1000 {
                return Err(invalid("reason: at most 1000 characters, no NUL"));
            }
        }
        if let Some(key) = &self.segment_key {
            if key.is_empty() || key.contains('\0') || key.len() > 64 {
                return Err(invalid("segment_key: 1 to 64 characters, no NUL"));
            }
        }
        Ok(MoveRequest {
            rule: LabelRule {
                targets,
                segments,
                segment_key: self.segment_key,
            },
            protected: self.protected,
            reason: self.reason,
        })
    }
}

/// `POST .../labels/{label}/rollback`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackLabel {
    pub reason: Option<String>,
}

/// One recorded move.
#[derive(Debug, Serialize, ToSchema)]
pub struct LabelMoveResource {
    pub id: i64,
    pub label: String,
    /// Null for the move that created the label.
    pub from: Option<LabelRule>,
    pub to: LabelRule,
    pub actor: String,
    pub reason: Option<String>,
    pub moved_at: DateTime<Utc>,
}

impl From<LabelMove> for LabelMoveResource {
    fn from(m: LabelMove) -> Self {
        Self {
            id: m.id,
            label: m.label,
            from: m.from,
            to: m.to,
            actor: m.actor,
            reason: m.reason,
            moved_at: m.moved_at,
        }
    }
}

/// `GET .../labels/{label}/history`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LabelHistory {
    pub name: String,
    pub label: String,
    pub moves: Vec<LabelMoveResource>,
}

/// `GET /v1/prompts/{name}/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PromptStats {
    pub name: String,
    pub label: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub versions: Vec<VersionStats>,
}

/// `GET /v1/executions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionList {
    pub executions: Vec<ExecutionResource>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

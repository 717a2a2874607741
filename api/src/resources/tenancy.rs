//! The JSON shapes of the organisation and key routes (docs/tenancy.md).

use chrono::{DateTime, Utc};
use llmq_shared::db::tenancy::{Organisation, StoredKey};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/orgs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// a-z, 0-9, `-`, `_`, `.`; 1 to 64 characters. Fixed for good.
    #[schema(pattern = "^[a-z0-9._-]{1,64}$")]
    pub id: String,
    /// A display name (default: the id).
    pub name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrgResource {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// `/v1/orgs/{id}/keys`.
    pub keys: String,
}

impl From<Organisation> for OrgResource {
    fn from(o: Organisation) -> Self {
        Self {
            keys: format!("/v1/orgs/{}/keys", o.id),
            id: o.id,
            name: o.name,
            created_at: o.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrgList {
    pub organisations: Vec<OrgResource>,
}

/// `POST /v1/orgs/{id}/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Any of `executions:write`, `executions:read`, `prompts:write`,
    /// `prompts:promote`, `webhooks:manage`, `admin`; at least one.
    pub scopes: Vec<String>,
    /// What the key is for, shown in listings.
    pub name: Option<String>,
    /// Binds the key to one end user: its executions are that user's.
    pub user: Option<String>,
    /// When the key stops working (RFC 3339); never, when absent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key as listed: never its secret, only its first characters.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyResource {
    pub id: String,
    pub organisation: String,
    /// The key's first characters (`llmq_sk_` and 8 more).
    pub prefix: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub user: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When an API process last loaded the key into its cache (to within
    /// `api.key_cache_secs`), not every request.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<StoredKey> for KeyResource {
    fn from(k: StoredKey) -> Self {
        Self {
            id: k.id.to_string(),
            organisation: k.tenant_id,
            prefix: k.prefix,
            name: k.name,
            scopes: k.scopes,
            user: k.end_user,
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
        }
    }
}

/// A key just created: the only answer that holds its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyWithSecret {
    /// The bearer key, `llmq_sk_…`. Shown once; store it now.
    pub secret: String,
    #[serde(flatten)]
    pub key: KeyResource,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyResource>,
}

//! The JSON shapes of the webhook routes (docs/api.md, "Webhooks"):
//! endpoints, the secrets shown once, deliveries and their attempts.

use chrono::{DateTime, Utc};
use llmq_shared::webhook::{Attempt, Delivery, Endpoint};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/webhook-endpoints`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// `https` (plain `http` only when the deployment allows it); every
    /// address the host resolves to must be public.
    pub url: String,
    /// Any of `execution.succeeded`, `execution.failed`,
    /// `execution.cancelled`, `execution.started`.
    pub event_types: Vec<String>,
    /// Default true.
    pub enabled: Option<bool>,
    pub description: Option<String>,
}

/// `PATCH /v1/webhook-endpoints/{id}`: absent fields are left as they are.
/// Enabling an endpoint clears its disabled reason and failing streak.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub description: Option<String>,
}

/// A registered endpoint. Its secret is never part of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointResource {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub description: String,
    /// Why it was disabled: a 410 from the receiver, every delivery
    /// failing for `webhooks.disable_after_failing_secs`, or the API.
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Endpoint> for EndpointResource {
    fn from(e: &Endpoint) -> Self {
        Self {
            id: e.id.to_string(),
            url: e.url.clone(),
            event_types: e.event_types.clone(),
            enabled: e.enabled,
            description: e.description.clone(),
            disabled_reason: e.disabled_reason.clone(),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// An endpoint with its new signing secret: the only answer that shows it.
#[derive(Serialize, ToSchema)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: EndpointResource,
    /// `whsec_` + base64; shown once, never returned again.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    pub data: Vec<EndpointResource>,
}

/// The tenant's secret for per-execution `webhook.url`s, shown once.
#[derive(Serialize, ToSchema)]
pub struct WebhookSecret {
    /// `whsec_` + base64; shown once, never returned again.
    pub secret: String,
    /// False when this replaced an earlier secret, which keeps signing
    /// (a second signature) for `webhooks.rotation_overlap_secs`.
    pub created: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptResource {
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    /// Absent when there was no answer (timeout, refused destination).
    pub status_code: Option<i32>,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
    /// The first KB of the receiver's answer.
    pub response_body: Option<String>,
}

impl From<&Attempt> for AttemptResource {
    fn from(a: &Attempt) -> Self {
        Self {
            attempt: a.attempt,
            attempted_at: a.attempted_at,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error: a.error.clone(),
            response_body: a.response_body.clone(),
        }
    }
}

/// One event for one destination.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryResource {
    /// Also the `webhook-id` header of every attempt.
    pub id: String,
    pub execution_id: String,
    /// Absent for the execution's own `webhook.url`.
    pub endpoint_id: Option<String>,
    pub url: String,
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<AttemptResource>,
}

impl From<&Delivery> for DeliveryResource {
    fn from(d: &Delivery) -> Self {
        Self {
            id: d.id.to_string(),
            execution_id: d.execution_id.to_string(),
            endpoint_id: d.endpoint_id.map(|e| e.to_string()),
            url: d.url.clone(),
            event_type: d.event_type.clone(),
            status: d.status.clone(),
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_status_code: d.last_status_code,
            last_error: d.last_error.clone(),
            created_at: d.created_at,
            finished_at: d.finished_at,
            attempt_log: d.attempt_log.iter().map(AttemptResource::from).collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub data: Vec<DeliveryResource>,
}

impl DeliveryList {
    pub fn of(deliveries: &[Delivery]) -> Self {
        Self {
            data: deliveries.iter().map(DeliveryResource::from).collect(),
        }
    }
}

/// `POST /v1/webhook-endpoints/{id}/recover`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// Failed deliveries created at or after this time are sent again.
    pub since: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecoverResult {
    /// How many failed deliveries were queued again.
    pub requeued: u64,
}

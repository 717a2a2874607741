//! Webhooks, the parts both binaries need: event types, signing secrets
//! and Standard Webhooks signatures (`signing`), secrets sealed for
//! storage (`seal`), which destinations may be called (`destination`),
//! the retry schedule and how an answer is judged (`schedule`), and the
//! payload (`payload`). The repository is `crate::db::webhooks`.

pub mod destination;
pub mod payload;
pub mod schedule;
pub mod seal;
pub mod signing;

use crate::execution::ExecutionStatus;

/// Routing key, on the events exchange, of "deliveries are due" hints
/// that wake the delivery role (a manual retry, a recover).
pub const WEBHOOKS_DUE_KEY: &str = "webhooks.due";

/// The event types an endpoint can subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "execution.succeeded",
    "execution.failed",
    "execution.cancelled",
    "execution.started",
];

/// The event type a terminal status is announced as.
pub fn event_type(status: ExecutionStatus) -> String {
    format!("execution.{}", status.as_str())
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// `webhooks.encryption_key` is not base64 of 32 bytes.
    #[error("webhooks.encryption_key must be base64 of 32 bytes")]
    BadKey,
    /// A stored secret does not open with the configured key (the key
    /// changed, or the row was damaged).
    #[error("a stored webhook secret cannot be opened with webhooks.encryption_key")]
    Unsealable,
}

/// A registered endpoint, as stored (its secrets are not part of it).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub id: uuid::Uuid,
    pub tenant_id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub description: String,
    pub disabled_reason: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// One event for one destination, and its attempts.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The `webhook-id` of every attempt.
    pub id: uuid::Uuid,
    pub execution_id: uuid::Uuid,
    /// None for the execution's own `webhook.url`.
    pub endpoint_id: Option<uuid::Uuid>,
    pub url: String,
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub attempt_log: Vec<Attempt>,
}

/// One recorded attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub attempt: i32,
    pub attempted_at: chrono::DateTime<chrono::Utc>,
    pub status_code: Option<i32>,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
    /// The first KB of the answer.
    pub response_body: Option<String>,
}

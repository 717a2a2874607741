//! Webhook endpoints, the tenant's secret for per-execution URLs, and the
//! delivery log with its replays. Destinations are checked here, at
//! registration (and at submit, for `webhook.url`), and again by the
//! delivery role at each attempt.

pub mod deliveries;
pub mod endpoints;

use llmq_shared::db::Pool;
use llmq_shared::queue::Publisher;
use llmq_shared::webhook::destination::DestinationPolicy;
use llmq_shared::webhook::seal::Sealer;
use llmq_shared::webhook::WEBHOOKS_DUE_KEY;

use crate::services::error::{Result, ServiceError};

/// What the webhook services need.
pub struct WebhookDeps<'a> {
    pub pool: &'a Pool,
    pub publisher: &'a Publisher,
    pub sealer: &'a Sealer,
    pub policy: &'a DestinationPolicy,
    pub rotation_overlap: std::time::Duration,
}

/// The stable code of a refused destination.
pub const INVALID_WEBHOOK_URL: &str = "invalid_webhook_url";

/// Checks a destination as a registration must (scheme, credentials,
/// every resolved address public); `field` names it in the answer.
pub async fn check_destination(policy: &DestinationPolicy, field: &str, url: &str) -> Result<()> {
    if url.len() > 2048 || url.contains('\0') {
        return Err(ServiceError::InvalidRequest(format!(
            "{field} must be a URL of at most 2048 characters"
        )));
    }
    policy
        .check(url)
        .await
        .map(|_| ())
        .map_err(|e| ServiceError::Rejected {
            code: INVALID_WEBHOOK_URL,
            message: format!("{field}: {e}"),
            details: None,
        })
}

/// Wakes the delivery role (best effort: it polls anyway).
async fn wake_delivery(publisher: &Publisher) {
    if let Err(e) = publisher.publish_event(WEBHOOKS_DUE_KEY, b"{}").await {
        tracing::debug!(error = %e, "webhook wake-up not published");
    }
}

fn not_supported_status(status: &str) -> ServiceError {
    ServiceError::InvalidRequest(format!(
        "status must be pending, succeeded or failed, not {status:?}"
    ))
}

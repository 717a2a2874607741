//! One attempt of one delivery, from the claimed row to the recorded
//! result: what to send (the execution resource, signed with the
//! destination's secrets), the POST, the verdict and the next due time
//! (`llmq_shared::webhook::schedule` decides both), and the attempt's row.

use chrono::Utc;
use llmq_shared::db::webhooks::{self as db, AttemptRecord, Claimed};
use llmq_shared::db::{executions, DbError, Pool};
use llmq_shared::execution::ExecutionId;
use llmq_shared::resource::ExecutionResource;
use llmq_shared::webhook::payload::payload_body;
use llmq_shared::webhook::schedule::{judge, Schedule, Verdict};
use llmq_shared::webhook::seal::Sealer;
use llmq_shared::webhook::signing::{signature_header, Secret};
use std::time::Duration;

use super::send::Sender;

/// What every attempt needs.
pub struct Deliverer {
    pub pool: Pool,
    pub sender: Sender,
    pub sealer: Sealer,
    pub schedule: Schedule,
    pub max_payload_bytes: usize,
    pub disable_after: Duration,
}

/// How long a delivery whose secret cannot be opened waits before it is
/// tried again (the key may be fixed in the meantime).
const UNREADABLE_SECRET_DELAY: Duration = Duration::from_secs(300);

impl Deliverer {
    /// Makes one attempt of `claimed` and records it. A database error
    /// leaves the delivery as claimed: it is due again once the claim's
    /// hold is over.
    #[tracing::instrument(skip_all, fields(delivery.id = %claimed.id, execution.id = %claimed.execution_id))]
    pub async fn attempt(&self, claimed: &Claimed) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        let Some(target) = db::delivery_target(&client, claimed).await? else {
            let reason = match claimed.endpoint_id {
                Some(_) => "the endpoint was deleted",
                None => "the tenant has no webhook secret: create one with POST /v1/webhook-secret, then retry the delivery",
            };
            return db::fail_unsendable(&client, claimed.id, reason).await;
        };
        if !target.enabled {
            return db::fail_unsendable(&client, claimed.id, "the endpoint is disabled").await;
        }
        let secrets: Result<Vec<Secret>, _> =
            target.secrets.iter().map(|s| self.sealer.open(s)).collect();
        let Ok(secrets) = secrets else {
            tracing::error!("a webhook secret does not open with webhooks.encryption_key");
            let reason = "the signing secret cannot be opened with the configured encryption key";
            return db::defer_delivery(&client, claimed.id, UNREADABLE_SECRET_DELAY, reason).await;
        };
        let id = ExecutionId(claimed.execution_id);
        let Some(execution) = executions::get_execution(&client, &claimed.tenant_id, id).await?
        else {
            return db::fail_unsendable(&client, claimed.id, "the execution no longer exists")
                .await;
        };
        // No connection is held while the receiver is called.
        drop(client);

        let resource = ExecutionResource::from(&execution);
        let body = payload_body(
            &claimed.event_type,
            claimed.created_at,
            &resource,
            self.max_payload_bytes,
        );
        let webhook_id = claimed.id.to_string();
        let now = Utc::now();
        let timestamp = now.timestamp();
        let refs: Vec<&Secret> = secrets.iter().collect();
        let headers = [
            ("webhook-id", webhook_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                signature_header(&refs, &webhook_id, timestamp, &body),
            ),
        ];
        let answer = self.sender.post(&target.url, &headers, body).await;

        let verdict = judge(answer.status, answer.retry_after.as_deref(), Utc::now());
        let done = claimed.round_attempts as usize + 1;
        let (outcome, retry_in) = match verdict {
            Verdict::Delivered => ("succeeded", Duration::ZERO),
            Verdict::Gone => ("failed", Duration::ZERO),
            Verdict::Retry { retry_after } => match self.schedule.next_delay(done, retry_after) {
                Some(delay) => ("pending", delay),
                None => ("failed", Duration::ZERO),
            },
        };
        let error = answer.error.clone().or_else(|| match verdict {
            Verdict::Delivered => None,
            Verdict::Gone => Some("the receiver answered 410 Gone".into()),
            Verdict::Retry { .. } => answer.status.map(|s| format!("the receiver answered {s}")),
        });
        metrics::counter!(llmq_shared::metrics::WEBHOOK_ATTEMPTS, "outcome" => outcome)
            .increment(1);
        let client = self.pool.get().await?;
        db::record_attempt(
            &client,
            &AttemptRecord {
                delivery: claimed.id,
                attempt: claimed.attempts + 1,
                at: now,
                status_code: answer.status.map(i32::from),
                latency_ms: answer.latency.as_secs_f64() * 1000.0,
                error: error.as_deref(),
                response_body: answer.body.as_deref(),
                outcome,
                retry_in,
                delivered: verdict == Verdict::Delivered,
                gone: verdict == Verdict::Gone && claimed.endpoint_id.is_some(),
                disable_after: self.disable_after,
            },
        )
        .await
    }
}

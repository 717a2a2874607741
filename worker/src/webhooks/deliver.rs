//! One attempt of one delivery, from the claimed row to the recorded
//! result: what to send (the execution resource, signed with the
//! destination's secrets), the POST, the verdict and the next due time
//! (`llmq_shared::webhook::schedule` decides both), and the attempt's row.
//!
//! Round trips are per batch, not per attempt: a due scan's deliveries
//! get their targets and executions in one go ([`Deliverer::prepare`]),
//! and attempts' rows are group-committed ([`llmq_shared::batch`]).

use chrono::Utc;
use futures::FutureExt;
use llmq_shared::batch::Batcher;
use llmq_shared::db::webhooks::{self as db, AttemptRecord, Claimed, Target};
use llmq_shared::db::{executions, spawn_batcher, DbError, GenericClient, Pool};
use llmq_shared::execution::Execution;
use llmq_shared::resource::ExecutionResource;
use llmq_shared::webhook::payload::payload_body;
use llmq_shared::webhook::schedule::{judge, Schedule, Verdict};
use llmq_shared::webhook::seal::Sealer;
use llmq_shared::webhook::signing::{signature_header, Secret};
use std::time::Duration;

use super::send::Sender;

/// What every attempt needs.
pub struct Deliverer {
    pool: Pool,
    sender: Sender,
    sealer: Sealer,
    schedule: Schedule,
    max_payload_bytes: usize,
    records: Batcher<AttemptRecord, Result<(), DbError>>,
}

/// A claimed delivery with what its attempt sends: its target (None: the
/// endpoint was deleted, or the tenant has no secret) and its execution
/// (None: no longer kept).
pub struct Prepared {
    pub claimed: Claimed,
    target: Option<Target>,
    execution: Option<Execution>,
}

/// How long a delivery whose secret cannot be opened waits before it is
/// tried again (the key may be fixed in the meantime).
const UNREADABLE_SECRET_DELAY: Duration = Duration::from_secs(300);

impl Deliverer {
    pub fn new(
        pool: Pool,
        sender: Sender,
        sealer: Sealer,
        schedule: Schedule,
        max_payload_bytes: usize,
        disable_after: Duration,
    ) -> Self {
        let records = spawn_batcher("webhook_attempts", pool.clone(), move |client, records| {
            async move {
                db::record_attempts(client, records, disable_after).await?;
                Ok(vec![(); records.len()])
            }
            .boxed()
        });
        Self {
            pool,
            sender,
            sealer,
            schedule,
            max_payload_bytes,
            records,
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The targets and executions of a due scan's deliveries, in at most
    /// three round trips for the whole batch.
    pub async fn prepare(
        &self,
        client: &impl GenericClient,
        claimed: Vec<Claimed>,
    ) -> Result<Vec<Prepared>, DbError> {
        let mut targets = db::delivery_targets(client, &claimed).await?;
        let ids: Vec<_> = claimed.iter().map(|c| c.execution_id).collect();
        let found = executions::get_executions(client, &ids).await?;
        Ok(claimed
            .into_iter()
            .map(|c| Prepared {
                target: targets.remove(&c.id),
                // A delivery names its tenant's execution; the check keeps
                // it so even if a row were ever mislabelled.
                execution: found
                    .get(&c.execution_id)
                    .filter(|e| e.tenant_id == c.tenant_id)
                    .cloned(),
                claimed: c,
            })
            .collect())
    }

    /// Sends one attempt of a prepared delivery and returns its record,
    /// for [`Deliverer::record`]. A delivery that cannot be sent (no
    /// target, endpoint disabled, secret unreadable, execution gone) is
    /// settled here and returns None. The caller holds the destination's
    /// slot for this call only: the receiver's concurrency bound is about
    /// requests, not about our commit of their results.
    #[tracing::instrument(skip_all, fields(delivery.id = %prepared.claimed.id, execution.id = %prepared.claimed.execution_id))]
    pub async fn send(&self, prepared: &Prepared) -> Result<Option<AttemptRecord>, DbError> {
        let claimed = &prepared.claimed;
        let Some(target) = &prepared.target else {
            let reason = match claimed.endpoint_id {
                Some(_) => "the endpoint was deleted",
                None => "the tenant has no webhook secret: create one with POST /v1/webhook-secret, then retry the delivery",
            };
            let client = self.pool.get().await?;
            return db::fail_unsendable(&client, claimed.id, reason)
                .await
                .map(|()| None);
        };
        if !target.enabled {
            let client = self.pool.get().await?;
            return db::fail_unsendable(&client, claimed.id, "the endpoint is disabled")
                .await
                .map(|()| None);
        }
        let secrets: Result<Vec<Secret>, _> =
            target.secrets.iter().map(|s| self.sealer.open(s)).collect();
        let Ok(secrets) = secrets else {
            tracing::error!("a webhook secret does not open with webhooks.encryption_key");
            let reason = "the signing secret cannot be opened with the configured encryption key";
            let client = self.pool.get().await?;
            return db::defer_delivery(&client, claimed.id, UNREADABLE_SECRET_DELAY, reason)
                .await
                .map(|()| None);
        };
        let Some(execution) = &prepared.execution else {
            let client = self.pool.get().await?;
            return db::fail_unsendable(&client, claimed.id, "the execution no longer exists")
                .await
                .map(|()| None);
        };

        let resource = ExecutionResource::from(execution);
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
        Ok(Some(AttemptRecord {
            delivery: claimed.id,
            attempt: claimed.attempts + 1,
            at: now,
            status_code: answer.status.map(i32::from),
            latency_ms: answer.latency.as_secs_f64() * 1000.0,
            error,
            response_body: answer.body,
            outcome,
            retry_in,
            delivered: verdict == Verdict::Delivered,
            gone: verdict == Verdict::Gone && claimed.endpoint_id.is_some(),
        }))
    }

    /// Records a sent attempt (group-committed with the others). A
    /// database error leaves the delivery as claimed: it is due again once
    /// the claim's hold is over, and that attempt carries the same
    /// `webhook-id`, so a receiver deduplicates it.
    pub async fn record(&self, record: AttemptRecord) -> Result<(), DbError> {
        self.records
            .submit(record)
            .await
            .map_err(|e| DbError::Unavailable(e.to_string()))?
    }
}

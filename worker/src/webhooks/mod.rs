//! The `webhooks` role: delivers the webhook deliveries that terminal
//! outcomes created (see `llmq_shared::db::webhooks`).
//!
//! The due set lives in Postgres; this role takes due deliveries, a batch
//! at a time, and runs one task per attempt. A delivery waiting for its
//! next attempt is a row with a due time, so a waiting retry holds no
//! slot. Concurrency is bounded per process (`webhooks.concurrency`) and
//! per destination (`webhooks.per_endpoint_concurrency`, requests in
//! flight to it: an attempt gives its destination's slot back when the
//! answer is in, before its record commits): the due scan takes at most
//! that many of one destination and none of a destination already at its
//! bound, so a slow receiver holds its own slots only.
//!
//! Promptness: the terminal-events message each committed outcome batch
//! already publishes (and `webhooks.due` hints from the API's retry and
//! recover) wakes the role at once; `webhooks.poll_interval_ms` is the
//! fallback when a hint is lost and the clock for scheduled retries.

mod deliver;
mod send;
mod wake;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmq_shared::db::webhooks::{claim_due_deliveries, Claimed};
use llmq_shared::db::DbError;
use llmq_shared::webhook::destination::DestinationPolicy;
use llmq_shared::webhook::schedule::Schedule;
use llmq_shared::webhook::seal::Sealer;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::WorkerContext;
use deliver::Deliverer;
use send::Sender;

struct Dispatcher {
    deliverer: Arc<Deliverer>,
    slots: Arc<Semaphore>,
    per_destination: usize,
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// How far a claim moves a delivery's due time: past the attempt's
    /// timeout and a wait for its destination's slot, with margin.
    hold: Duration,
    /// Fired when an attempt ends: a destination may have a slot again.
    freed: Arc<Notify>,
}

/// Runs the role until `stop` fires, then lets in-flight attempts end
/// (each is bounded by `webhooks.timeout_secs`).
pub async fn run_webhooks(ctx: Arc<WorkerContext>, stop: CancellationToken) -> anyhow::Result<()> {
    let settings = &ctx.settings.webhooks;
    let sealer = Sealer::from_config(&settings.encryption_key)?;
    if settings.encryption_key.is_empty() {
        tracing::warn!(
            "webhooks.encryption_key is empty: secrets are sealed with the development key"
        );
    }
    let timeout = Duration::from_secs(settings.timeout_secs.max(1));
    let dispatcher = Dispatcher {
        deliverer: Arc::new(Deliverer::new(
            ctx.pool.clone(),
            Sender::new(DestinationPolicy::from(settings), timeout)?,
            sealer,
            Schedule::from_ms(&settings.retry_schedule_ms),
            settings.max_payload_bytes,
            Duration::from_secs(settings.disable_after_failing_secs),
        )),
        slots: Arc::new(Semaphore::new(settings.concurrency.max(1))),
        per_destination: settings.per_endpoint_concurrency.max(1),
        destinations: Mutex::new(HashMap::new()),
        hold: timeout * 2 + Duration::from_secs(30),
        freed: Arc::new(Notify::new()),
    };
    let poll = Duration::from_millis(settings.poll_interval_ms.max(10));
    let wake = Arc::new(Notify::new());
    let waker = tokio::spawn(wake::run_waker(
        ctx.settings.amqp_url.clone(),
        format!("llmq-worker {} webhooks", ctx.owner),
        llmq_shared::queue::Topology::new(&ctx.settings.queue_prefix),
        wake.clone(),
        stop.clone(),
    ));
    let attempts = TaskTracker::new();
    tracing::info!("webhook delivery started");
    loop {
        // Take due deliveries until a scan comes back short.
        loop {
            match dispatcher.dispatch(&attempts).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook due scan failed");
                    break;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
            _ = dispatcher.freed.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
    attempts.close();
    attempts.wait().await;
    let _ = waker.await;
    tracing::info!("webhook delivery stopped");
    Ok(())
}

impl Dispatcher {
    /// One due scan; true when it filled every free slot (scan again).
    async fn dispatch(&self, attempts: &TaskTracker) -> Result<bool, DbError> {
        let free = self.slots.available_permits();
        if free == 0 {
            return Ok(false);
        }
        let busy = self.busy_destinations();
        let prepared = {
            let client = self.deliverer.pool().get().await?;
            let claimed = claim_due_deliveries(
                &client,
                free as i64,
                self.per_destination as i64,
                &busy,
                self.hold,
            )
            .await?;
            if claimed.is_empty() {
                return Ok(false);
            }
            // A failure here leaves the batch claimed: due again after its hold.
            self.deliverer.prepare(&client, claimed).await?
        };
        let full = prepared.len() == free;
        for delivery in prepared {
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                // Cannot happen (only this loop takes slots); the claim's
                // hold makes the delivery due again if it does.
                break;
            };
            let destination = self.destination(&delivery.claimed);
            let (deliverer, freed) = (self.deliverer.clone(), self.freed.clone());
            attempts.spawn(async move {
                let Ok(turn) = destination.acquire_owned().await else {
                    return; // never closed
                };
                let sent = deliverer.send(&delivery).await;
                // The destination's next request need not wait for this
                // one's record to commit; the process slot bounds both.
                drop(turn);
                freed.notify_one();
                let recorded = match sent {
                    Ok(Some(record)) => deliverer.record(record).await,
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(e) = recorded {
                    tracing::warn!(delivery.id = %delivery.claimed.id, error = %e, "webhook attempt not recorded; it is retried after its hold");
                }
                drop(slot);
                freed.notify_one();
            });
        }
        Ok(full)
    }

    /// Destinations with no free slot here: the next scan skips them.
    fn busy_destinations(&self) -> Vec<String> {
        let Ok(mut map) = self.destinations.lock() else {
            return Vec::new();
        };
        // Forget idle destinations, so the map holds only those in use.
        map.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < self.per_destination);
        map.iter()
            .filter(|(_, s)| s.available_permits() == 0)
            .map(|(d, _)| d.clone())
            .collect()
    }

    fn destination(&self, delivery: &Claimed) -> Arc<Semaphore> {
        match self.destinations.lock() {
            Ok(mut map) => map
                .entry(delivery.destination.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_destination)))
                .clone(),
            Err(_) => Arc::new(Semaphore::new(self.per_destination)),
        }
    }
}

//! Long-poll support: requests waiting for an execution to finish register
//! here, and a consumer of the events exchange wakes them. Events are only
//! hints; a waiter always re-reads Postgres, and re-checks on a timer in
//! case an event is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use llmq_shared::backoff::Backoff;
use llmq_shared::execution::ExecutionId;
use llmq_shared::queue::{self, s, TerminalEvents, Topology, TERMINAL_EVENTS_KEY};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Waiters {
    by_id: Mutex<HashMap<ExecutionId, Arc<Notify>>>,
}

/// A registration; dropping it unregisters when no one else waits.
pub struct Waiter {
    waiters: Arc<Waiters>,
    id: ExecutionId,
    pub notify: Arc<Notify>,
}

impl Waiters {
    pub fn register(self: &Arc<Self>, id: ExecutionId) -> Waiter {
        let notify = match self.by_id.lock() {
            Ok(mut map) => map.entry(id).or_default().clone(),
            Err(_) => Arc::new(Notify::new()),
        };
        Waiter {
            waiters: self.clone(),
            id,
            notify,
        }
    }

    pub fn wake(&self, id: ExecutionId) {
        if let Ok(map) = self.by_id.lock() {
            if let Some(n) = map.get(&id) {
                n.notify_waiters();
            }
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Ok(mut map) = self.waiters.by_id.lock() {
            // The map holds one reference and this waiter another.
            if map.get(&self.id).is_some_and(|n| Arc::strong_count(n) <= 2) {
                map.remove(&self.id);
            }
        }
    }
}

/// Consumes terminal events into `waiters` until cancelled, reconnecting
/// after broker failures.
pub async fn run_event_listener(
    url: String,
    topology: Topology,
    waiters: Arc<Waiters>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !cancel.is_cancelled() {
        match listen(&url, &topology, &waiters, &cancel).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "event listener lost the broker; reconnecting");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

async fn listen(
    url: &str,
    topology: &Topology,
    waiters: &Waiters,
    cancel: &CancellationToken,
) -> Result<(), queue::QueueError> {
    let conn = queue::connect(url, "llmq-api events").await?;
    let channel = conn.create_channel().await?;
    topology.declare(&channel).await?;
    let opts = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let q = channel
        .queue_declare(s(""), opts, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            q.name().clone(),
            s(&topology.events_exchange),
            s(TERMINAL_EVENTS_KEY),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consume = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = channel
        .basic_consume(
            q.name().clone(),
            s("llmq-api-events"),
            consume,
            FieldTable::default(),
        )
        .await?;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = conn.close(200, s("shutdown")).await;
                return Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    if let Ok(batch) = serde_json::from_slice::<TerminalEvents>(&delivery.data) {
                        for event in &batch.events {
                            waiters.wake(event.id);
                        }
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(queue::QueueError::Unavailable("event stream ended".into())),
            }
        }
    }
}

//! The API's publish pipeline: accepted executions are inserted many per
//! statement, published with a broker confirm in the background, and
//! their outbox marks cleared in batches once confirmed.
//!
//! Invariant: a row keeps its outbox mark (`publish_due_at`) until its
//! publish is confirmed, so whatever this pipeline drops (a full backlog,
//! a crash, a shutdown deadline) the worker's relay publishes later.
//!
//! Fast path after a broker outage: a publish that fails is kept in a
//! bounded retry set and published again as soon as the publisher regains
//! a channel, rather than waiting `republish_after_secs` for the relay.
//!
//! Shutdown: [`Pipeline::drain`] stops taking new work, lets the publishes
//! in flight confirm, and clears the marks still held, under a deadline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmq_shared::db::{self, Pool};
use llmq_shared::execution::ExecutionId;
use llmq_shared::queue::Publisher;
use llmq_shared::trace::TraceParent;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Accepted executions waiting for their publish; past this the relay
/// publishes them (a broker outage fills it in seconds).
const PUBLISH_BACKLOG: usize = 16_384;
/// Publishes awaiting their confirms at once.
const PUBLISHES_IN_FLIGHT: usize = 4096;
/// Failed publishes kept for the reconnect; the rest wait for the relay.
const RETRY_SET: usize = 16_384;
/// Fast retries of one execution before it is left to the relay (a broker
/// that keeps refusing it must not be asked forever).
const FAST_RETRIES: u8 = 5;

/// One accepted execution to publish, with the trace of its request.
#[derive(Clone, Debug)]
struct Accepted {
    id: ExecutionId,
    tenant: String,
    priority: i16,
    trace: Option<TraceParent>,
    tries: u8,
}

/// The submit path's entry into the pipeline.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Accepted>,
}

/// The backlog is full (or the pipeline stopped): the relay publishes it.
#[derive(Debug, thiserror::Error)]
#[error("publish backlog full")]
pub struct BacklogFull;

impl Outbox {
    /// Queues a durable execution for its publish, carrying the current
    /// request's trace context ([`TraceParent::current`]). Never waits.
    pub fn try_send(
        &self,
        (id, tenant, priority): (ExecutionId, String, i16),
    ) -> Result<(), BacklogFull> {
        self.tx
            .try_send(Accepted {
                id,
                tenant,
                priority,
                trace: TraceParent::current(),
                tries: 0,
            })
            .map_err(|_| BacklogFull)
    }
}

/// The running pipeline's tasks.
pub struct Pipeline {
    tracker: TaskTracker,
    drain: CancellationToken,
}

impl Pipeline {
    /// Starts publishing and clearing marks; `hold` is how long confirmed
    /// ids wait before their marks are cleared (see [`mark_confirmed`]).
    pub fn start(publisher: Arc<Publisher>, pool: Pool, hold: Duration) -> (Outbox, Self) {
        let (tx, rx) = mpsc::channel(PUBLISH_BACKLOG);
        let (confirmed, confirmed_rx) = mpsc::channel(PUBLISH_BACKLOG);
        let tracker = TaskTracker::new();
        let drain = CancellationToken::new();
        tracker.spawn(publish_accepted(publisher, rx, confirmed, drain.clone()));
        tracker.spawn(mark_confirmed(pool, confirmed_rx, hold));
        tracker.close();
        (Outbox { tx }, Self { tracker, drain })
    }

    /// Publishes what was accepted, waits for the confirms in flight and
    /// clears the marks held, for at most `deadline`. Call once no request
    /// can submit any more. What is left undone keeps its mark.
    pub async fn drain(self, deadline: Duration) {
        self.drain.cancel();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                deadline_ms = deadline.as_millis() as u64,
                "publish pipeline not drained in time; the outbox relay publishes the rest"
            );
        }
    }
}

/// Publishes accepted executions, many confirms outstanding at once, and
/// hands the confirmed ones on so their outbox marks are cleared. Failed
/// publishes go to a retry set, published again when the publisher
/// reconnects (or at once if it is connected). On `drain` it stops taking
/// new executions once the backlog is empty and waits for its publishes.
async fn publish_accepted(
    publisher: Arc<Publisher>,
    mut rx: mpsc::Receiver<Accepted>,
    confirmed: mpsc::Sender<Uuid>,
    drain: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(PUBLISHES_IN_FLIGHT));
    let in_flight = TaskTracker::new();
    let (failed_tx, mut failed_rx) = mpsc::channel::<Accepted>(RETRY_SET);
    let mut retry: VecDeque<Accepted> = VecDeque::new();
    let mut reconnected = publisher.reconnected();
    let mut draining = false;
    loop {
        let next = tokio::select! {
            biased;
            _ = drain.cancelled(), if !draining => {
                draining = true;
                rx.close();
                continue;
            }
            Ok(()) = reconnected.changed() => {
                if !retry.is_empty() {
                    tracing::info!(count = retry.len(), "publisher reconnected; publishing what failed without it");
                }
                for accepted in retry.drain(..) {
                    dispatch(&publisher, &slots, &in_flight, &confirmed, &failed_tx, accepted).await;
                }
                continue;
            }
            Some(failed) = failed_rx.recv() => {
                if failed.tries >= FAST_RETRIES || draining {
                    continue; // Its mark stands: the relay publishes it.
                }
                if publisher.is_connected().await {
                    failed
                } else {
                    if retry.len() < RETRY_SET {
                        retry.push_back(failed);
                    }
                    continue;
                }
            }
            next = rx.recv() => match next {
                Some(accepted) => accepted,
                None => break,
            },
        };
        dispatch(&publisher, &slots, &in_flight, &confirmed, &failed_tx, next).await;
    }
    in_flight.close();
    in_flight.wait().await;
}

/// Publishes one execution in its own task, within the in-flight limit.
async fn dispatch(
    publisher: &Arc<Publisher>,
    slots: &Arc<Semaphore>,
    in_flight: &TaskTracker,
    confirmed: &mpsc::Sender<Uuid>,
    failed: &mpsc::Sender<Accepted>,
    accepted: Accepted,
) {
    let Ok(slot) = slots.clone().acquire_owned().await else {
        return;
    };
    let (publisher, confirmed, failed) = (publisher.clone(), confirmed.clone(), failed.clone());
    in_flight.spawn(async move {
        let result = publisher
            .publish_execution_traced(
                accepted.id,
                &accepted.tenant,
                accepted.priority,
                accepted.trace.as_ref(),
            )
            .await;
        drop(slot);
        match result {
            // Full channel: the mark stays and the relay publishes a harmless duplicate.
            Ok(()) => drop(confirmed.try_send(accepted.id.0)),
            Err(e) => {
                tracing::debug!(execution.id = %accepted.id, error = %e, "publish not confirmed; retrying on reconnect");
                let retry = Accepted {
                    tries: accepted.tries + 1,
                    ..accepted
                };
                // A full retry set leaves it to the relay.
                let _ = failed.try_send(retry);
            }
        }
    });
}

/// Clears the outbox marks of confirmed publishes in batches: one UPDATE
/// for many executions keeps the submit path at one commit each. Ids are
/// held for `hold` first: a worker that claims an execution clears its mark
/// itself, so by then most rows need no write at all (the UPDATE's WHERE
/// skips them), and only executions still waiting in the queue are touched.
/// Once the publishers are gone (shutdown) every held id is cleared at once.
async fn mark_confirmed(pool: Pool, mut rx: mpsc::Receiver<Uuid>, hold: Duration) {
    let mut pending: VecDeque<(Instant, Uuid)> = VecDeque::new();
    let mut received = Vec::with_capacity(1024);
    let mut open = true;
    while open || !pending.is_empty() {
        if open {
            tokio::select! {
                n = rx.recv_many(&mut received, 4096) => {
                    open = n > 0;
                    let now = Instant::now();
                    pending.extend(received.drain(..).map(|id| (now, id)));
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        let now = Instant::now();
        let mut due = Vec::new();
        while pending
            .front()
            .is_some_and(|(at, _)| !open || now.duration_since(*at) >= hold)
        {
            if let Some((_, id)) = pending.pop_front() {
                due.push(id);
            }
        }
        if due.is_empty() {
            continue;
        }
        let result = async {
            let client = pool.get().await?;
            db::outbox::mark_published(&client, &due).await
        }
        .await;
        if let Err(e) = result {
            // The marks stay; the relay publishes duplicates, which claiming absorbs.
            tracing::warn!(error = %e, count = due.len(), "could not clear outbox marks");
        }
    }
}

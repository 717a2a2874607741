//! Lifecycle events: their types and routing keys on the events exchange,
//! how they are published, and the one subscriber a process runs to hear
//! them.
//!
//! Events are hints, not the record: Postgres is. A waiter that hears
//! nothing re-reads Postgres on a timer, so an event lost in a broker
//! outage delays an answer but never changes it. Terminal transitions are
//! published as one message per committed outcome batch (a worker's finish
//! statement commits dozens at once), never one message per execution.
//!
//! A process runs one [`Subscriber`]: one consumer on an exclusive queue,
//! reconnecting by itself, fanning events out to whoever watches one
//! execution ([`Subscriber::watch`], long-poll) or all of them
//! ([`Subscriber::subscribe`]).
//!
//! The same messages carry the numbered event log (`crate::event_log`):
//! each committed batch's events in one message, beside its terminal
//! transitions. The subscriber hands them to the streams of one execution
//! ([`Subscriber::stream`], the SSE endpoint: one registration per
//! execution watched, however many clients watch it) and of all
//! executions ([`Subscriber::log_events`], the tenant-wide stream), each
//! through a bounded buffer: a reader that falls behind is told so
//! ([`Next::Lagged`]) instead of being buffered for without bound. The log
//! itself is in Postgres; a stream that lagged, or whose subscriber
//! reconnected ([`Subscriber::sessions`]), reads what it missed there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::{retry_until_cancelled, unless_cancelled, Backoff, Ended};
use crate::event_log::LogEvent;
use crate::execution::{ExecutionId, ExecutionStatus};
use crate::queue::{self, s, Publisher, QueueError, Topology};

/// A lifecycle event on the events exchange.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExecutionEvent {
    pub id: ExecutionId,
    pub status: ExecutionStatus,
}

/// Routing key of `TerminalEvents` messages on the events exchange.
pub const TERMINAL_EVENTS_KEY: &str = "executions.terminal";

/// Terminal transitions committed together, in one events message, with
/// the log events the same statement (or any other) numbered.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TerminalEvents {
    pub events: Vec<ExecutionEvent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<LogEvent>,
}

// Publishing lives here, beside the types, though it is a method of the
// transport: callers say `publisher.publish_terminal_events(..)`.
impl Publisher {
    /// Announces executions that reached a terminal status, as one
    /// message for all of them. Best effort: waiters re-read Postgres.
    pub async fn publish_terminal_events(&self, events: &[ExecutionEvent]) {
        self.publish_events(events, Vec::new()).await
    }

    /// Announces a committed batch: its terminal transitions and the log
    /// events it numbered, as one message. Best effort: streams read
    /// Postgres for what they miss.
    pub async fn publish_events(&self, terminal: &[ExecutionEvent], log: Vec<LogEvent>) {
        if terminal.is_empty() && log.is_empty() {
            return;
        }
        let batch = TerminalEvents {
            events: terminal.to_vec(),
            log,
        };
        if let Ok(body) = serde_json::to_vec(&batch) {
            if let Err(e) = self.publish_event(TERMINAL_EVENTS_KEY, &body).await {
                tracing::debug!(count = terminal.len() + batch.log.len(), error = %e, "events not published");
            }
        }
    }
}

/// Routing key of `LabelMoved` messages on the events exchange.
pub const LABEL_EVENTS_KEY: &str = "prompts.labels";

/// A prompt label moved: every API process forgets where it pointed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LabelMoved {
    pub prompt: String,
    pub label: String,
}

/// What the label-cache invalidator hears.
#[derive(Clone, Debug, PartialEq)]
pub enum LabelEvent {
    /// A label moved (announced by some API process).
    Moved(LabelMoved),
    /// The subscriber (re)bound its queue: moves announced while it was
    /// not bound were not heard, so every cached rule must go.
    Resubscribed,
}

impl Publisher {
    /// Announces a label move to every API process. Tried a few times over
    /// half a second while the publisher reconnects; then given up: a
    /// replica that misses it trusts its cached rule for at most the label
    /// TTL.
    pub async fn publish_label_moved(&self, moved: &LabelMoved) {
        let Ok(body) = serde_json::to_vec(moved) else {
            return;
        };
        let mut tries = 0;
        while let Err(e) = self.publish_event(LABEL_EVENTS_KEY, &body).await {
            tries += 1;
            if tries == LABEL_PUBLISH_TRIES {
                tracing::warn!(prompt = %moved.prompt, label = %moved.label, error = %e,
                    "label move not announced; replicas see it within the label TTL");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Routing key of `KeyRevoked` messages on the events exchange.
pub const KEY_EVENTS_KEY: &str = "keys.revoked";

/// An API key was revoked: every API process drops it from its key cache.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyRevoked {
    /// The key's sha256 (what the caches are keyed by), never the key.
    pub key_hash: String,
}

/// What the key-cache invalidator hears.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyEvent {
    Revoked(KeyRevoked),
    /// The subscriber (re)bound its queue: revocations announced while it
    /// was not bound were not heard, so every cached key must go.
    Resubscribed,
}

/// Routing key of `OrgLimitsChanged` messages on the events exchange.
pub const LIMITS_EVENTS_KEY: &str = "limits.orgs";

/// An organisation's limit settings changed: every API process forgets
/// its copy.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrgLimitsChanged {
    pub tenant: String,
}

/// What the limit-settings invalidator hears.
#[derive(Clone, Debug, PartialEq)]
pub enum LimitsEvent {
    Changed(OrgLimitsChanged),
    /// The subscriber (re)bound its queue: changes may have been missed.
    Resubscribed,
}

impl Publisher {
    /// Announces a revocation to every API process, tried like a label
    /// move; a replica that misses it refuses the key once its cache entry
    /// reaches `api.key_cache_secs`.
    pub async fn publish_key_revoked(&self, revoked: &KeyRevoked) {
        let Ok(body) = serde_json::to_vec(revoked) else {
            return;
        };
        let mut tries = 0;
        while let Err(e) = self.publish_event(KEY_EVENTS_KEY, &body).await {
            tries += 1;
            if tries == LABEL_PUBLISH_TRIES {
                tracing::warn!(error = %e,
                    "key revocation not announced; replicas refuse the key within the key cache age");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Announces a change of an organisation's limits, like a label move
    /// (a replica that misses it trusts its copy for at most
    /// `limits.settings_cache_ms`).
    pub async fn publish_org_limits_changed(&self, changed: &OrgLimitsChanged) {
        let Ok(body) = serde_json::to_vec(changed) else {
            return;
        };
        let mut tries = 0;
        while let Err(e) = self.publish_event(LIMITS_EVENTS_KEY, &body).await {
            tries += 1;
            if tries == LABEL_PUBLISH_TRIES {
                tracing::warn!(tenant = %changed.tenant, error = %e,
                    "limit change not announced; replicas see it within limits.settings_cache_ms");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Attempts at announcing one label move.
const LABEL_PUBLISH_TRIES: u32 = 5;

/// Label moves buffered for the cache invalidator before it lags (and
/// then forgets every label).
const LABEL_BUFFER: usize = 1024;

/// Events buffered per watcher before the oldest are dropped (a watcher
/// that lags re-reads Postgres anyway).
const WATCH_BUFFER: usize = 16;
/// Events buffered for each all-executions subscriber.
const SUBSCRIBE_BUFFER: usize = 4096;

/// Buffers of the log event streams, in events.
#[derive(Clone, Copy, Debug)]
pub struct StreamBuffers {
    /// Per execution watched (shared by its readers).
    pub per_execution: usize,
    /// For the stream of every execution's events.
    pub all: usize,
}

impl Default for StreamBuffers {
    fn default() -> Self {
        Self {
            per_execution: 64,
            all: 16_384,
        }
    }
}

/// The process's one consumer of lifecycle events.
pub struct Subscriber {
    by_id: Mutex<HashMap<ExecutionId, broadcast::Sender<ExecutionEvent>>>,
    all: broadcast::Sender<ExecutionEvent>,
    labels: broadcast::Sender<LabelEvent>,
    keys: broadcast::Sender<KeyEvent>,
    limits: broadcast::Sender<LimitsEvent>,
    streams: Mutex<HashMap<ExecutionId, broadcast::Sender<Arc<LogEvent>>>>,
    log_all: broadcast::Sender<Arc<LogEvent>>,
    buffers: StreamBuffers,
    /// Bumped each time a consumer session starts: events published
    /// while there was none were missed.
    sessions: watch::Sender<u64>,
}

impl Subscriber {
    /// The subscriber, and its consumer: a future that consumes until
    /// `cancel` fires, reconnecting after broker failures, then closes its
    /// channel and connection. The caller spawns it and waits for it.
    pub fn start(
        url: &str,
        name: &str,
        topology: Topology,
        cancel: CancellationToken,
    ) -> (
        Arc<Self>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        Self::start_with(url, name, topology, cancel, StreamBuffers::default())
    }

    /// Like `start`, with the log streams' buffers.
    pub fn start_with(
        url: &str,
        name: &str,
        topology: Topology,
        cancel: CancellationToken,
        buffers: StreamBuffers,
    ) -> (
        Arc<Self>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let subscriber = Arc::new(Self::new(buffers));
        let (url, name) = (url.to_string(), name.to_string());
        let this = subscriber.clone();
        let run = async move {
            retry_until_cancelled(&name, &cancel, Backoff::reconnect(), || {
                consume(&url, &name, &topology, &this, &cancel)
            })
            .await;
        };
        (subscriber, run)
    }

    /// Events of one execution, from now on. Register before reading the
    /// execution, so that a change between the read and the wait is heard.
    pub fn watch(self: &Arc<Self>, id: ExecutionId) -> Watch {
        let events = match self.by_id.lock() {
            Ok(mut map) => map
                .entry(id)
                .or_insert_with(|| broadcast::channel(WATCH_BUFFER).0)
                .subscribe(),
            Err(_) => broadcast::channel(1).1,
        };
        Watch {
            subscriber: self.clone(),
            id,
            events,
        }
    }

    fn new(buffers: StreamBuffers) -> Self {
        Self {
            by_id: Mutex::new(HashMap::new()),
            all: broadcast::channel(SUBSCRIBE_BUFFER).0,
            labels: broadcast::channel(LABEL_BUFFER).0,
            keys: broadcast::channel(LABEL_BUFFER).0,
            limits: broadcast::channel(LABEL_BUFFER).0,
            streams: Mutex::new(HashMap::new()),
            log_all: broadcast::channel(buffers.all.max(1)).0,
            buffers,
            sessions: watch::channel(0).0,
        }
    }

    /// Every event this process hears, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ExecutionEvent> {
        self.all.subscribe()
    }

    /// Every label move this process hears, from now on, and each
    /// (re)subscription after which earlier moves may have been missed.
    pub fn label_moves(&self) -> broadcast::Receiver<LabelEvent> {
        self.labels.subscribe()
    }

    /// Every key revocation this process hears, from now on, and each
    /// (re)subscription after which earlier ones may have been missed.
    pub fn key_revocations(&self) -> broadcast::Receiver<KeyEvent> {
        self.keys.subscribe()
    }

    /// Every change of an organisation's limits this process hears, and
    /// each (re)subscription after which changes may have been missed.
    pub fn limit_changes(&self) -> broadcast::Receiver<LimitsEvent> {
        self.limits.subscribe()
    }

    /// The log events of one execution, from now on. Register before
    /// reading Postgres, so that nothing committed after the read is
    /// missed.
    pub fn stream(self: &Arc<Self>, id: ExecutionId) -> LogWatch {
        let events = match self.streams.lock() {
            Ok(mut map) => map
                .entry(id)
                .or_insert_with(|| broadcast::channel(self.buffers.per_execution.max(1)).0)
                .subscribe(),
            Err(_) => broadcast::channel(1).1,
        };
        LogWatch {
            subscriber: self.clone(),
            id,
            events,
        }
    }

    /// Every log event this process hears, from now on.
    pub fn log_events(&self) -> broadcast::Receiver<Arc<LogEvent>> {
        self.log_all.subscribe()
    }

    /// Changes each time a consumer session starts; events published
    /// before it, while none ran, were not heard.
    pub fn sessions(&self) -> watch::Receiver<u64> {
        self.sessions.subscribe()
    }

    /// Hands one log event to the streams of its execution and of all.
    pub fn deliver_log(&self, event: LogEvent) {
        let event = Arc::new(event);
        if let Ok(map) = self.streams.lock() {
            if let Some(tx) = map.get(&event.execution_id) {
                let _ = tx.send(event.clone());
            }
        }
        if self.log_all.receiver_count() > 0 {
            let _ = self.log_all.send(event);
        }
    }

    /// Hands one event to its watchers and the subscribers.
    pub fn deliver(&self, event: ExecutionEvent) {
        if let Ok(map) = self.by_id.lock() {
            if let Some(tx) = map.get(&event.id) {
                let _ = tx.send(event.clone());
            }
        }
        // No subscriber is the common case; the error only says so.
        let _ = self.all.send(event);
    }
}

/// A registration for one execution's events; dropping it unregisters.
pub struct Watch {
    subscriber: Arc<Subscriber>,
    id: ExecutionId,
    events: broadcast::Receiver<ExecutionEvent>,
}

impl Watch {
    /// The next event of this execution. `None` means events were missed
    /// (the watcher lagged): re-read Postgres. Pends for good if no event
    /// can come any more, so a waiter falls back on its own timer.
    pub async fn next(&mut self) -> Option<ExecutionEvent> {
        match self.events.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// What a log stream reader gets next.
#[derive(Debug)]
pub enum Next {
    Event(Arc<LogEvent>),
    /// The reader fell behind and events were dropped from its buffer.
    Lagged,
}

/// A registration for one execution's log events; dropping it unregisters.
pub struct LogWatch {
    subscriber: Arc<Subscriber>,
    id: ExecutionId,
    events: broadcast::Receiver<Arc<LogEvent>>,
}

impl LogWatch {
    /// The next log event of this execution. Pends for good once no event
    /// can come any more (the process is stopping).
    pub async fn next(&mut self) -> Next {
        match self.events.recv().await {
            Ok(event) => Next::Event(event),
            Err(broadcast::error::RecvError::Lagged(_)) => Next::Lagged,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl Drop for LogWatch {
    fn drop(&mut self) {
        if let Ok(mut map) = self.subscriber.streams.lock() {
            if map.get(&self.id).is_some_and(|tx| tx.receiver_count() <= 1) {
                map.remove(&self.id);
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(mut map) = self.subscriber.by_id.lock() {
            // This watch's receiver is still alive here: the last one left.
            if map.get(&self.id).is_some_and(|tx| tx.receiver_count() <= 1) {
                map.remove(&self.id);
            }
        }
    }
}

/// One session: an exclusive auto-delete queue bound to the terminal
/// events, consumed until cancelled or the broker goes.
async fn consume(
    url: &str,
    name: &str,
    topology: &Topology,
    subscriber: &Subscriber,
    cancel: &CancellationToken,
) -> Result<(), Ended<QueueError>> {
    let Some(opened) = unless_cancelled(cancel, open(url, name, topology)).await else {
        return Ok(());
    };
    let (conn, channel, mut consumer) = opened.map_err(Ended::Failed)?;
    subscriber.sessions.send_modify(|n| *n += 1);
    tracing::debug!(session = name, "consuming lifecycle events");
    // Bound from here on; whatever moved before is re-read from Postgres.
    let _ = subscriber.labels.send(LabelEvent::Resubscribed);
    let _ = subscriber.keys.send(KeyEvent::Resubscribed);
    let _ = subscriber.limits.send(LimitsEvent::Resubscribed);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                // Channel first, then the connection: closing a connection
                // under an open channel is what lapin reports as an error.
                let _ = channel.close(200, s("shutdown")).await;
                let _ = conn.close(200, s("shutdown")).await;
                return Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) if delivery.routing_key.as_str() == LABEL_EVENTS_KEY => {
                    if let Ok(moved) = serde_json::from_slice::<LabelMoved>(&delivery.data) {
                        let _ = subscriber.labels.send(LabelEvent::Moved(moved));
                    }
                }
                Some(Ok(delivery)) if delivery.routing_key.as_str() == KEY_EVENTS_KEY => {
                    if let Ok(revoked) = serde_json::from_slice::<KeyRevoked>(&delivery.data) {
                        let _ = subscriber.keys.send(KeyEvent::Revoked(revoked));
                    }
                }
                Some(Ok(delivery)) if delivery.routing_key.as_str() == LIMITS_EVENTS_KEY => {
                    if let Ok(changed) = serde_json::from_slice::<OrgLimitsChanged>(&delivery.data) {
                        let _ = subscriber.limits.send(LimitsEvent::Changed(changed));
                    }
                }
                Some(Ok(delivery)) => {
                    if let Ok(batch) = serde_json::from_slice::<TerminalEvents>(&delivery.data) {
                        for event in batch.events {
                            subscriber.deliver(event);
                        }
                        for event in batch.log {
                            subscriber.deliver_log(event);
                        }
                    }
                }
                Some(Err(e)) => return Err(Ended::Lost(e.into())),
                None => return Err(Ended::Lost(QueueError::Unavailable("event stream ended".into()))),
            }
        }
    }
}

async fn open(
    url: &str,
    name: &str,
    topology: &Topology,
) -> queue::Result<(lapin::Connection, lapin::Channel, lapin::Consumer)> {
    queue::consume_events(
        url,
        name,
        topology,
        &[
            TERMINAL_EVENTS_KEY,
            LABEL_EVENTS_KEY,
            KEY_EVENTS_KEY,
            LIMITS_EVENTS_KEY,
        ],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber() -> Arc<Subscriber> {
        Arc::new(Subscriber::new(StreamBuffers {
            per_execution: 2,
            all: 4,
        }))
    }

    fn log_event(id: ExecutionId, seq: i32) -> LogEvent {
        LogEvent {
            execution_id: id,
            tenant_id: "t".into(),
            prompt_name: "p".into(),
            seq,
            event_type: crate::event_log::EventType::Status,
            data: serde_json::json!({}),
        }
    }

    #[tokio::test]
    async fn one_registration_serves_every_reader_of_an_execution_and_a_slow_one_is_told() {
        let subscriber = subscriber();
        let id = ExecutionId::new();
        let mut a = subscriber.stream(id);
        let mut b = subscriber.stream(id);
        assert_eq!(subscriber.streams.lock().map(|m| m.len()).unwrap_or(0), 1);
        subscriber.deliver_log(log_event(id, 2));
        assert!(matches!(a.next().await, Next::Event(e) if e.seq == 2));
        // b reads nothing while three more arrive: its buffer holds two.
        for seq in 3..6 {
            subscriber.deliver_log(log_event(id, seq));
        }
        assert!(matches!(b.next().await, Next::Lagged));
        drop(a);
        drop(b);
        assert!(subscriber
            .streams
            .lock()
            .map(|m| m.is_empty())
            .unwrap_or(false));
    }

    #[tokio::test]
    async fn a_watch_hears_its_execution_only_and_unregisters_when_dropped() {
        let subscriber = subscriber();
        let (a, b) = (ExecutionId::new(), ExecutionId::new());
        let mut watch = subscriber.watch(a);
        let mut all = subscriber.subscribe();
        subscriber.deliver(ExecutionEvent {
            id: b,
            status: ExecutionStatus::Failed,
        });
        subscriber.deliver(ExecutionEvent {
            id: a,
            status: ExecutionStatus::Succeeded,
        });
        assert_eq!(watch.next().await.map(|e| e.id), Some(a));
        assert_eq!(all.recv().await.ok().map(|e| e.id), Some(b));
        assert_eq!(all.recv().await.ok().map(|e| e.id), Some(a));
        let second = subscriber.watch(a);
        drop(watch);
        assert!(subscriber
            .by_id
            .lock()
            .map(|m| m.contains_key(&a))
            .unwrap_or(false));
        drop(second);
        assert!(subscriber
            .by_id
            .lock()
            .map(|m| m.is_empty())
            .unwrap_or(false));
    }
}

//! One execution's event stream: `snapshot` (the resource), every stored
//! event after the cursor, then live events, in sequence order with no
//! gap and no repeat, until `done`.
//!
//! How order holds: the stream registers for live events before its first
//! read, then sends only the event that follows the last one sent. A live
//! event numbered further on (the ones between were missed, e.g. while
//! the broker reconnected) or a `done` (its data is the final resource) is
//! the cue to read the rest from Postgres. Deltas are passed on as they
//! come, with the id `N.k`: the last lifecycle event sent and a count, so
//! a client that resumes with it gets the lifecycle events after `N`.
//!
//! A reader too slow to keep up (its buffer in the subscriber overflowed)
//! gets a last `error` event and the stream ends: it reconnects with its
//! `Last-Event-ID` and loses nothing durable.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use llmq_shared::db::events::{self as db, Replay};
use llmq_shared::db::{DbError, Pool};
use llmq_shared::event_log::{EventType, LogEvent};
use llmq_shared::events::{LogWatch, Next, Subscriber};
use llmq_shared::execution::{Execution, ExecutionId};
use llmq_shared::ids::TenantId;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::sse::Frame;
use crate::services::error::{Result, ServiceError};
use crate::services::within;

/// What a stream needs from the process.
#[derive(Clone)]
pub struct StreamDeps {
    pub pool: Pool,
    pub subscriber: Arc<Subscriber>,
    /// Between keep-alive comments.
    pub keepalive: Duration,
    /// Bound of one read of Postgres.
    pub read_deadline: Duration,
    /// The JSON of the execution resource (`snapshot`, `done`).
    pub render: fn(&Execution) -> Value,
}

/// The stream of execution `id` of `tenant` after event `cursor`. Fails
/// (before anything is sent) when there is no such execution or the
/// cursor is past its last event.
pub async fn execution_stream(
    deps: StreamDeps,
    tenant: TenantId,
    id: ExecutionId,
    cursor: i32,
) -> Result<impl Stream<Item = Frame>> {
    let watch = deps.subscriber.stream(id);
    let mut sessions = deps.subscriber.sessions();
    sessions.mark_unchanged();
    let replay = within(deps.read_deadline, read(&deps.pool, &tenant, id, cursor))
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("no execution {id}")))?;
    if cursor > replay.last_seq {
        return Err(ServiceError::InvalidRequest(format!(
            "the cursor {cursor} is past the last event of this execution ({})",
            replay.last_seq
        )));
    }
    let mut state = State {
        deps,
        tenant,
        id,
        watch,
        sessions,
        cursor,
        deltas: 0,
        queue: VecDeque::new(),
        finished: false,
        behind: false,
    };
    state.queue.push_back(Frame::event(
        None,
        EventType::Snapshot.as_str(),
        &(state.deps.render)(&replay.execution),
    ));
    state.take(replay);
    Ok(futures::stream::unfold(state, |mut state| async move {
        let frame = state.next().await?;
        Some((frame, state))
    }))
}

async fn read(
    pool: &Pool,
    tenant: &TenantId,
    id: ExecutionId,
    after: i32,
) -> Result<Option<Replay>> {
    let client = pool.get().await.map_err(DbError::from)?;
    Ok(db::replay(&client, tenant.as_str(), id, after).await?)
}

struct State {
    deps: StreamDeps,
    tenant: TenantId,
    id: ExecutionId,
    watch: LogWatch,
    sessions: watch::Receiver<u64>,
    /// The last lifecycle event sent.
    cursor: i32,
    /// Deltas sent since it.
    deltas: u32,
    queue: VecDeque<Frame>,
    /// `done` (or the last `error`) is queued: nothing more comes.
    finished: bool,
    /// A read of Postgres failed: try again at the next tick.
    behind: bool,
}

impl State {
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.queue.pop_front() {
                return Some(frame);
            }
            if self.finished {
                return None;
            }
            tokio::select! {
                next = self.watch.next() => match next {
                    Next::Event(event) => self.live(&event).await,
                    Next::Lagged => self.drop_slow_reader(),
                },
                // The subscriber reconnected: what was published meanwhile
                // was not heard.
                Ok(()) = self.sessions.changed() => self.catch_up().await,
                _ = tokio::time::sleep(self.deps.keepalive) => {
                    if self.behind {
                        self.catch_up().await;
                    }
                    if self.queue.is_empty() {
                        self.queue.push_back(Frame::Comment);
                    }
                }
            }
        }
    }

    async fn live(&mut self, event: &LogEvent) {
        match event.event_type {
            EventType::Delta => {
                self.deltas += 1;
                let id = format!("{}.{}", self.cursor, self.deltas);
                self.queue.push_back(Frame::event(
                    Some(id),
                    EventType::Delta.as_str(),
                    &event.data,
                ));
            }
            _ if event.seq <= self.cursor => {}
            EventType::Status | EventType::Step if event.seq == self.cursor + 1 => {
                self.send(event.seq, event.event_type, &event.data);
            }
            _ => self.catch_up().await,
        }
    }

    /// Reads every event after the cursor from Postgres.
    async fn catch_up(&mut self) {
        let read = read(&self.deps.pool, &self.tenant, self.id, self.cursor);
        match within(self.deps.read_deadline, read).await {
            Ok(Some(replay)) => {
                self.behind = false;
                self.take(replay);
            }
            Ok(None) => {
                // Deleted meanwhile: nothing more will come.
                self.error("gone", "the execution no longer exists");
            }
            Err(e) => {
                tracing::debug!(execution.id = %self.id, error = %e, "event stream read failed; trying again");
                self.behind = true;
            }
        }
    }

    /// Queues a replay's events after the cursor.
    fn take(&mut self, replay: Replay) {
        for event in replay.events {
            if event.seq <= self.cursor {
                continue;
            }
            let data = match event.event_type {
                EventType::Done => (self.deps.render)(&replay.execution),
                _ => event.data,
            };
            self.send(event.seq, event.event_type, &data);
        }
        // A client that already had `done` gets the snapshot and the end.
        if replay.execution.status.is_terminal() && self.cursor >= replay.last_seq {
            self.finished = true;
        }
    }

    fn send(&mut self, seq: i32, event_type: EventType, data: &Value) {
        self.cursor = seq;
        self.deltas = 0;
        self.queue.push_back(Frame::event(
            Some(seq.to_string()),
            event_type.as_str(),
            data,
        ));
        if event_type == EventType::Done {
            self.finished = true;
        }
    }

    fn drop_slow_reader(&mut self) {
        tracing::info!(execution.id = %self.id, cursor = self.cursor, "dropping a slow event stream reader");
        self.error(
            "slow_consumer",
            &format!(
                "this stream fell too far behind and is closed; reconnect with Last-Event-ID: {} to resume",
                self.cursor
            ),
        );
    }

    fn error(&mut self, code: &str, message: &str) {
        self.queue.push_back(Frame::event(
            None,
            "error",
            &json!({"error": {"code": code, "message": message}}),
        ));
        self.finished = true;
    }
}

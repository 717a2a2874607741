//! The event log in Postgres (see `crate::event_log`): the SQL fragments
//! with which the writing statements of `executions`, `leases` and `steps`
//! number their events, the rows those statements answer, and the replay
//! of one execution's log.
//!
//! Numbering: a statement that changes an execution adds the number of
//! events it makes to `executions.event_seq` in the update it runs anyway
//! (the row is locked by it, so concurrent writers of one execution are
//! serialized and each sees the other's count), and gives out the numbers
//! after the old value: step events first, in step order, then the status
//! event, then `done`. A statement fenced out by a lost lease updates no
//! row and so numbers nothing. Status events are rows of
//! `execution_events`; step events are the step rows (`started_event`,
//! `finished_event`); `done` is the terminal execution at `event_seq`;
//! the first event, `queued`, is number 1 at `created_at`.
//!
//! Every logging statement answers rows of one shape, [`ROW_SHAPE`], read
//! by [`Logged::from_rows`], from which the writer publishes the events it
//! numbered, with the same JSON a replay makes.

use std::collections::HashMap;

use serde_json::{json, Value};
use tokio_postgres::Row;
use uuid::Uuid;

use super::executions::{execution_columns, execution_from_row};
use super::{steps, GenericClient, Result};
use crate::event_log::{step_event_data, EventType, LogEvent, Phase};
use crate::execution::{Execution, ExecutionId};
use crate::step::Step;

/// The rows a logging statement answers: `(execution_id, tenant_id,
/// prompt_name, seq, type, step_seq, data)`. `type` is `fence` (the
/// execution was written; `seq` is its last event number), `status` (with
/// its `data`), `step_started` / `step_finished` (`step_seq` names the
/// step) or `done`.
pub const ROW_SHAPE: &str = "execution_id, tenant_id, prompt_name, seq, type, step_seq, data";

/// A timestamp as event JSON carries it (UTC, microseconds, `Z`).
pub(crate) fn ts(expr: &str) -> String {
    format!(r#"to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#)
}

/// `name AS (INSERT INTO execution_events …)`: one status event per row of
/// `from` passing `filter`, numbered `seq`, with JSON `data` (expressions
/// over `from`'s columns).
pub(crate) fn status_event_cte(
    name: &str,
    from: &str,
    seq: &str,
    data: &str,
    filter: &str,
) -> String {
    format!(
        "{name} AS (INSERT INTO execution_events (execution_id, seq, type, data) \
         SELECT id, {seq}, 'status', {data} FROM {from} WHERE {filter} \
         RETURNING execution_id, seq, data)"
    )
}

/// Rows of [`ROW_SHAPE`]: a fence row per row of `from` (columns `id`,
/// `tenant_id`, `prompt_name`, `last`).
pub(crate) fn fence_rows(from: &str) -> String {
    format!(
        "SELECT id, tenant_id, prompt_name, last, 'fence'::text, NULL::int, NULL::jsonb FROM {from}"
    )
}

/// Rows of [`ROW_SHAPE`] for the status events inserted by CTE `ev`.
pub(crate) fn status_rows(ev: &str) -> String {
    format!("SELECT execution_id, NULL::text, NULL::text, seq, 'status'::text, NULL::int, data FROM {ev}")
}

/// Rows of [`ROW_SHAPE`]: a `done` at `last` for each row of `from`
/// passing `filter`.
pub(crate) fn done_rows(from: &str, filter: &str) -> String {
    format!(
        "SELECT id, NULL::text, NULL::text, last, 'done'::text, NULL::int, NULL::jsonb FROM {from} WHERE {filter}"
    )
}

/// The JSON of a status event, as SQL: `status` and `attempt` are
/// expressions, `extra` more `'key', value` pairs (may be empty).
pub(crate) fn status_json(status: &str, attempt: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "jsonb_build_object('status', {status}, 'attempt', {attempt}, 'at', {}{extra})",
        ts("now()")
    )
}

/// An error as status event JSON: `{"code", "message"}` or null.
pub(crate) fn error_json(code: &str, message: &str) -> String {
    format!(
        "CASE WHEN {code} IS NULL THEN NULL ELSE jsonb_build_object('code', {code}, 'message', {message}) END"
    )
}

/// Where a written execution's events go: its tenant and prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    pub tenant_id: String,
    pub prompt_name: String,
    /// Its last event number after the statement.
    pub last: i32,
}

/// What a logging statement wrote and the events it numbered.
#[derive(Clone, Debug, Default)]
pub struct Logged {
    /// The executions written (the others had lost their lease).
    pub written: HashMap<Uuid, Scope>,
    status: Vec<(Uuid, i32, Value)>,
    steps: Vec<(Uuid, i32, i32, Phase)>,
    done: Vec<(Uuid, i32)>,
}

impl Logged {
    pub fn from_rows(rows: &[Row]) -> Result<Self> {
        let mut logged = Self::default();
        for row in rows {
            let id: Uuid = row.try_get(0)?;
            let seq: i32 = row.try_get(3)?;
            let kind: String = row.try_get(4)?;
            match kind.as_str() {
                "fence" => {
                    logged.written.insert(
                        id,
                        Scope {
                            tenant_id: row.try_get(1)?,
                            prompt_name: row.try_get(2)?,
                            last: seq,
                        },
                    );
                }
                "status" => logged.status.push((id, seq, row.try_get(6)?)),
                "step_started" => logged
                    .steps
                    .push((id, row.try_get(5)?, seq, Phase::Started)),
                "step_finished" => logged
                    .steps
                    .push((id, row.try_get(5)?, seq, Phase::Finished)),
                "done" => logged.done.push((id, seq)),
                other => return Err(super::DbError::Data(format!("event row type {other:?}"))),
            }
        }
        Ok(logged)
    }

    pub fn contains(&self, id: &Uuid) -> bool {
        self.written.contains_key(id)
    }

    /// The events numbered, in order per execution. Step events are
    /// rendered from `steps`, the rows the statement wrote.
    pub fn events(&self, steps: &[&Step]) -> Vec<LogEvent> {
        let by_key: HashMap<(Uuid, i32), &Step> = steps
            .iter()
            .map(|s| ((s.execution_id.0, s.seq), *s))
            .collect();
        let mut out = Vec::with_capacity(self.status.len() + self.steps.len() + self.done.len());
        let mut push = |id: Uuid, seq: i32, event_type: EventType, data: Value| {
            if let Some(scope) = self.written.get(&id) {
                out.push(LogEvent {
                    execution_id: ExecutionId(id),
                    tenant_id: scope.tenant_id.clone(),
                    prompt_name: scope.prompt_name.clone(),
                    seq,
                    event_type,
                    data,
                });
            }
        };
        for (id, step_seq, seq, phase) in &self.steps {
            if let Some(step) = by_key.get(&(*id, *step_seq)) {
                push(*id, *seq, EventType::Step, step_event_data(step, *phase));
            }
        }
        for (id, seq, data) in &self.status {
            push(*id, *seq, EventType::Status, data.clone());
        }
        for (id, seq) in &self.done {
            let status = self
                .status
                .iter()
                .find(|(i, s, _)| i == id && *s == seq - 1)
                .map(|(_, _, d)| d["status"].clone())
                .unwrap_or(Value::Null);
            push(*id, *seq, EventType::Done, json!({ "status": status }));
        }
        out.sort_by_key(|e| (e.execution_id, e.seq));
        out
    }
}

/// One stored event of a replay. A `done`'s data is null: the caller
/// renders the final resource from [`Replay::execution`].
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub seq: i32,
    pub event_type: EventType,
    pub data: Value,
}

/// An execution and its events after a cursor, as of one read.
#[derive(Clone, Debug)]
pub struct Replay {
    pub execution: Execution,
    /// The last event number given out when the execution was read.
    pub last_seq: i32,
    /// Every event after the cursor up to `last_seq`, in order, no gaps.
    pub events: Vec<StoredEvent>,
}

const REPLAY_HEAD: &str = concat!(
    "SELECT ",
    execution_columns!(),
    ", event_seq FROM executions WHERE id = $1 AND tenant_id = $2"
);
const REPLAY_STATUS: &str = "SELECT seq, data FROM execution_events \
     WHERE execution_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq";

/// The events of an execution of `tenant` after `after`; None when there
/// is no such execution. The execution is read first: every event up to
/// its counter has committed by then, so the later reads find them all
/// (events numbered after it are left for the next read).
pub async fn replay(
    client: &impl GenericClient,
    tenant: &str,
    id: ExecutionId,
    after: i32,
) -> Result<Option<Replay>> {
    let Some(head) = client
        .query_opt(
            &client.prepare_cached(REPLAY_HEAD).await?,
            &[&id.0, &tenant],
        )
        .await?
    else {
        return Ok(None);
    };
    let execution = execution_from_row(&head)?;
    let last_seq: i32 = head.try_get("event_seq")?;
    let mut events = Vec::new();
    if after < 1 {
        events.push(StoredEvent {
            seq: 1,
            event_type: EventType::Status,
            data: json!({
                "status": "queued",
                "attempt": 0,
                "at": execution.created_at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            }),
        });
    }
    if after < last_seq {
        let rows = client
            .query(
                &client.prepare_cached(REPLAY_STATUS).await?,
                &[&id.0, &after, &last_seq],
            )
            .await?;
        for row in &rows {
            events.push(StoredEvent {
                seq: row.try_get(0)?,
                event_type: EventType::Status,
                data: row.try_get(1)?,
            });
        }
        for (step, started, finished) in steps::list_numbered_steps(client, id, after).await? {
            for (seq, phase) in [(started, Phase::Started), (finished, Phase::Finished)] {
                if let Some(seq) = seq.filter(|s| *s > after && *s <= last_seq) {
                    events.push(StoredEvent {
                        seq,
                        event_type: EventType::Step,
                        data: step_event_data(&step, phase),
                    });
                }
            }
        }
        if execution.status.is_terminal() {
            events.push(StoredEvent {
                seq: last_seq,
                event_type: EventType::Done,
                data: Value::Null,
            });
        }
    }
    events.sort_by_key(|e| e.seq);
    events.dedup_by_key(|e| e.seq);
    Ok(Some(Replay {
        execution,
        last_seq,
        events,
    }))
}

/// Every statement of this module, for the test that prepares them all.
pub const ALL_SQL: &[&str] = &[REPLAY_HEAD, REPLAY_STATUS];

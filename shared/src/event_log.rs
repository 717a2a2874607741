//! The execution event log: what an event is and how each kind's JSON is
//! made, the same way for the live stream and for a replay from Postgres.
//!
//! Every lifecycle change of an execution is an event with a
//! per-execution sequence number from 1, gap-free: `status` (queued,
//! running, queued again for a retry / a lost worker / a shutdown, and the
//! terminal status), `step` (a step started, a step finished) and `done`
//! (the final resource). The numbers are handed out in the statements that
//! make the changes (see `db::events`), so the log costs no commit of its
//! own. `delta` events (token fragments of a streamed model call) are not
//! numbered and not stored: best effort, live only.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::execution::ExecutionId;
use crate::sanitize::clean_str;
use crate::step::{Step, StepStatus};

/// The `event:` of a server-sent event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Snapshot,
    Status,
    Step,
    Delta,
    Done,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Status => "status",
            Self::Step => "step",
            Self::Delta => "delta",
            Self::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "snapshot" => Self::Snapshot,
            "status" => Self::Status,
            "step" => Self::Step,
            "delta" => Self::Delta,
            "done" => Self::Done,
            _ => return None,
        })
    }

    /// Numbered and stored (everything but deltas and snapshots).
    pub fn is_lifecycle(self) -> bool {
        matches!(self, Self::Status | Self::Step | Self::Done)
    }
}

/// One event as it travels on the events exchange.
///
/// `data` is the event's JSON, except for `done`, whose data on the wire
/// is only `{"status": ...}`: the API renders the final resource from the
/// row when it sends one. `seq` is 0 for deltas.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogEvent {
    pub execution_id: ExecutionId,
    pub tenant_id: String,
    pub prompt_name: String,
    pub seq: i32,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub data: Value,
}

/// A step event's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Started,
    Finished,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Finished => "finished",
        }
    }
}

/// Postgres keeps microseconds: an event rendered from a value in memory
/// must say what the same value read back says.
fn stored_time(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// The JSON of a step event, from the step's row. Only what a row written
/// in that phase already holds: a `started` event replayed after the step
/// finished says what it said live.
pub fn step_event_data(step: &Step, phase: Phase) -> Value {
    let mut data = json!({
        "phase": phase.as_str(),
        "step_seq": step.seq,
        "kind": step.kind.name(),
        "attempt": step.attempt,
        "at": stored_time(match phase {
            Phase::Started => step.started_at,
            Phase::Finished => step.finished_at.unwrap_or(step.started_at),
        }),
    });
    if phase == Phase::Finished && step.status != StepStatus::Running {
        let error = step
            .error
            .as_ref()
            .map(|e| json!({"code": clean(&e.code), "message": clean(&e.message)}));
        let usage = step.usage.as_ref().map(|u| {
            json!({
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.total_tokens,
            })
        });
        if let Value::Object(map) = &mut data {
            map.insert("status".into(), json!(step.status.as_str()));
            map.insert("latency_ms".into(), json!(step.latency_ms));
            map.insert("usage".into(), usage.unwrap_or(Value::Null));
            map.insert("error".into(), error.unwrap_or(Value::Null));
        }
    }
    data
}

fn clean(s: &str) -> String {
    clean_str(s).into_owned()
}

/// A `delta` event's JSON: a fragment of a streamed model answer.
pub fn delta_data(step_seq: i32, attempt: i32, text: &str) -> Value {
    json!({"step_seq": step_seq, "attempt": attempt, "text": text})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::StepKind;

    #[test]
    fn a_step_event_says_the_same_from_memory_and_from_the_row() {
        let mut step = Step::start(ExecutionId::new(), 3, StepKind::Generate, 1);
        step.finish(StepStatus::Succeeded);
        let mut read_back = step.clone();
        read_back.started_at = step.started_at.trunc_subsecs(6);
        read_back.finished_at = step.finished_at.map(|t| t.trunc_subsecs(6));
        for phase in [Phase::Started, Phase::Finished] {
            assert_eq!(
                step_event_data(&step, phase),
                step_event_data(&read_back, phase)
            );
        }
        let finished = step_event_data(&step, Phase::Finished);
        assert_eq!(finished["status"], "succeeded");
        assert_eq!(finished["kind"], "generate");
        assert!(step_event_data(&step, Phase::Started)
            .get("status")
            .is_none());
    }
}

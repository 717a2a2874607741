//! `finalize`: the terminal state. Its row, the rows still waiting and the
//! outcome are written in one statement (with the generate result on the
//! common path), so no outcome is committed without its trace.

use llmq_shared::db::executions::{Finish, Outcome};
use llmq_shared::execution::{ErrorInfo, Execution, ExecutionId, ExecutionStatus, Usage};
use llmq_shared::step::{Step, StepKind, StepStatus};
use serde_json::json;

use super::{Cx, Generated};

/// The successful end: the generate result becomes the execution's.
pub fn succeeded(cx: &mut Cx<'_>, generated: &Generated) -> Finish {
    let mut step = cx.begin(StepKind::Finalize);
    step.output = Some(json!({ "status": "succeeded" }));
    cx.done(step, StepStatus::Succeeded);
    Finish {
        id: cx.execution.id,
        outcome: Outcome {
            status: ExecutionStatus::Succeeded,
            output: Some(generated.output.clone()),
            error: None,
            usage: Some(generated.usage),
            cached: generated.cached,
        },
        steps: cx.take_pending(),
    }
}

/// A failed or cancelled end, with the usage already spent if any.
pub fn ended(
    cx: &mut Cx<'_>,
    status: ExecutionStatus,
    error: ErrorInfo,
    usage: Option<Usage>,
) -> Finish {
    let mut step = cx.begin(StepKind::Finalize);
    step.output = Some(json!({ "status": status, "error": error }));
    cx.done(step, StepStatus::Succeeded);
    Finish {
        id: cx.execution.id,
        outcome: Outcome {
            status,
            output: None,
            error: Some(error),
            usage: usage.filter(|u| u.total_tokens > 0),
            cached: false,
        },
        steps: cx.take_pending(),
    }
}

/// The end of an execution that failed before any step ran (its prompt
/// version is unusable, its attempts are spent): a finalize row only.
pub fn ended_claimed(execution: &Execution, status: ExecutionStatus, error: ErrorInfo) -> Finish {
    let mut finish = ended_id(execution.id, status, error);
    for step in &mut finish.steps {
        step.attempt = execution.attempts;
    }
    finish
}

/// The end of an execution known only by id, after an error that leaves
/// its run's state unknown. The finalize row takes a seq no run uses.
pub fn ended_id(id: ExecutionId, status: ExecutionStatus, error: ErrorInfo) -> Finish {
    let mut step = Step::start(id, FINAL_SEQ, StepKind::Finalize, 0);
    step.output = Some(json!({ "status": status, "error": error }));
    step.finish(StepStatus::Succeeded);
    Finish {
        id,
        outcome: Outcome {
            status,
            output: None,
            error: Some(error),
            usage: None,
            cached: false,
        },
        steps: vec![step],
    }
}

/// The seq of a finalize row written without the run's trace at hand:
/// after any seq a run can reach.
const FINAL_SEQ: i32 = i32::MAX;

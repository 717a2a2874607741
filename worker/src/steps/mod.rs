//! The step contract. A step gets the execution's context ([`Cx`]) and the
//! earlier steps' outputs ([`Outputs`]) and answers an [`Outcome`]: go on,
//! retry later, fail, or stop the run. The runner (`crate::runner`) runs
//! the steps in order and looks checkpoints up generically: a step that
//! succeeded in an earlier attempt is not run again; it `restore`s its
//! recorded output instead.
//!
//! A step records its own row through `Cx`: finished rows wait in `Cx` and
//! go with the run's next write (the hot path's three writes per
//! execution), unless the step answers `Durable`, which commits them before
//! the next step starts. Every write goes through the one `Writer`, and
//! each answers whether the lease still holds; a lost lease ends the run.
//!
//! Adding a step: a module here with a `Step` impl, and one line in the
//! runner's `PIPELINE`.

pub mod deltas;
pub mod finalize;
pub mod generate;
pub mod render;
pub mod retrieve;
pub mod validate;

use std::time::Duration;

use futures::future::BoxFuture;
use llmq_shared::execution::{ErrorInfo, Execution, Usage};
use llmq_shared::metrics as m;
use llmq_shared::prompt::{ChatMessage, CompiledPrompt};
use llmq_shared::step::{self as step_row, StepKind, StepStatus};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::context::WorkerContext;
use crate::runner::PipelineError;

/// How a step ended, as the runner acts on it.
#[derive(Debug)]
pub enum Outcome {
    /// Done; its row is written with the run's next write.
    Continue,
    /// Done, and its row must be committed before the next step starts
    /// (a step that can fail follows an expensive one).
    Durable,
    /// A retryable failure: the execution is given back for `delay`.
    Retry { error: ErrorInfo, delay: Duration },
    /// No capacity for the model call (a provider limit): the execution is
    /// given back for `delay` without counting the attempt.
    Defer { error: ErrorInfo, delay: Duration },
    /// The execution fails; no retry.
    Fail(ErrorInfo),
    /// The client cancelled.
    Cancelled,
    /// This worker is shutting down.
    Interrupted,
    /// Another worker holds the lease now: this run writes nothing more.
    LeaseLost,
}

/// One kind of step.
pub trait Step: Sync {
    fn kind(&self) -> StepKind;

    /// Whether this step's success is worth a commit of its own when a
    /// step that can fail follows (a paid model call is).
    fn worth_a_checkpoint(&self) -> bool {
        false
    }

    /// Whether this step can fail the execution after earlier steps
    /// succeeded.
    fn can_fail(&self) -> bool {
        true
    }

    /// Whether a succeeded row of this step's kind is its checkpoint (a
    /// step may record rows that are only part of its work).
    fn is_checkpoint(&self, _row: &step_row::Step) -> bool {
        true
    }

    /// Whether this step runs for the execution (e.g. `validate` only for
    /// JSON output).
    fn applies(&self, _cx: &Cx<'_>) -> bool {
        true
    }

    /// Runs the step.
    fn run<'a>(
        &'a self,
        cx: &'a mut Cx<'_>,
        out: &'a mut Outputs,
    ) -> BoxFuture<'a, Result<Outcome, PipelineError>>;

    /// The step succeeded in an earlier attempt (`checkpoint` is its row):
    /// rebuild its output without repeating its effect.
    fn restore(
        &self,
        cx: &mut Cx<'_>,
        checkpoint: &step_row::Step,
        out: &mut Outputs,
    ) -> Result<(), ErrorInfo>;
}

/// The rendered messages and the seq of the render step that records them.
pub struct Rendered {
    pub messages: Vec<ChatMessage>,
    pub seq: i32,
}

/// The model's answer, as the execution will keep it.
pub struct Generated {
    pub output: Value,
    pub usage: Usage,
    /// For JSON output: why the answer did not parse (it is then kept as
    /// text for `validate` to judge).
    pub not_json: Option<String>,
    /// From the response cache: no model was called.
    pub cached: bool,
}

impl Generated {
    /// The answer as the model wrote it (for a repair's conversation): a
    /// text kept as text, a parsed answer as its JSON.
    pub fn answer_text(&self) -> String {
        match &self.output {
            Value::String(text) if self.not_json.is_some() => text.clone(),
            other => other.to_string(),
        }
    }
}

/// What earlier steps produced.
#[derive(Default)]
pub struct Outputs {
    /// The template's `retrieval` (status, chunks), when the version
    /// retrieves.
    pub retrieval: Option<Value>,
    pub rendered: Option<Rendered>,
    pub generated: Option<Generated>,
}

impl Outputs {
    /// The rendered messages; the runner runs `render` first.
    pub fn rendered(&self) -> Result<&Rendered, PipelineError> {
        self.rendered
            .as_ref()
            .ok_or(PipelineError::Order("rendered messages"))
    }

    pub fn generated(&self) -> Result<&Generated, PipelineError> {
        self.generated
            .as_ref()
            .ok_or(PipelineError::Order("a generate result"))
    }
}

/// One run of one execution: what its steps see and the trace they build.
pub struct Cx<'a> {
    pub ctx: &'a WorkerContext,
    pub execution: &'a Execution,
    pub prompt: &'a CompiledPrompt,
    /// Fired on worker shutdown.
    pub stop: &'a CancellationToken,
    /// Fired when the client cancels this execution.
    pub cancel: &'a CancellationToken,
    /// The step rows earlier attempts left (empty on a first attempt).
    pub earlier: &'a [step_row::Step],
    next_seq: i32,
    /// Finished step rows not yet written.
    pending: Vec<step_row::Step>,
    /// Where this execution's answer goes in the response cache once it
    /// succeeds (set by a `generate` that missed it).
    pub cache: Option<crate::cache::CachePlan>,
}

impl<'a> Cx<'a> {
    pub fn new(
        ctx: &'a WorkerContext,
        execution: &'a Execution,
        prompt: &'a CompiledPrompt,
        stop: &'a CancellationToken,
        cancel: &'a CancellationToken,
        earlier: &'a [step_row::Step],
    ) -> Self {
        let next_seq = earlier.iter().map(|s| s.seq).max().unwrap_or(0) + 1;
        Self {
            ctx,
            execution,
            prompt,
            stop,
            cancel,
            earlier,
            next_seq,
            pending: Vec::new(),
            cache: None,
        }
    }

    /// A new step row of this attempt, running from now.
    pub fn begin(&mut self, kind: StepKind) -> step_row::Step {
        let step = step_row::Step::start(
            self.execution.id,
            self.next_seq,
            kind,
            self.execution.attempts,
        );
        self.next_seq += 1;
        step
    }

    /// Finishes `step` with `status` and keeps it for the next write.
    pub fn done(&mut self, mut step: step_row::Step, status: StepStatus) {
        finish_step(&mut step, status);
        self.pending.push(step);
    }

    /// Fails `step` terminally with `error` (kept for the next write) and
    /// answers the outcome that fails the execution with it.
    pub fn fail(&mut self, mut step: step_row::Step, error: ErrorInfo) -> Outcome {
        step.error = Some(error.clone());
        step.retryable = Some(false);
        self.done(step, StepStatus::Failed);
        Outcome::Fail(error)
    }

    /// Keeps a row that was finished (with its own latency) while others
    /// ran beside it, for the next write, counted in the step metrics.
    pub fn finished(&mut self, step: step_row::Step) {
        let seconds = step.latency_ms.unwrap_or(0.0) / 1000.0;
        metrics::histogram!(m::STEP_DURATION, "kind" => step.kind.metric_label(), "status" => step.status.as_str()).record(seconds);
        self.pending.push(step);
    }

    /// Writes the waiting rows and `extra` now: with a synchronous commit
    /// when `durable` (what a crash must not lose, e.g. "started" before a
    /// call that must not be repeated), else with the asynchronous one of
    /// "started" rows. False when the lease was lost.
    pub async fn write_now(
        &mut self,
        extra: Vec<step_row::Step>,
        durable: bool,
    ) -> Result<bool, PipelineError> {
        let mut rows = self.take_pending();
        rows.extend(extra);
        if rows.is_empty() {
            return Ok(true);
        }
        Ok(if durable {
            self.ctx.writer.record(rows).await?
        } else {
            self.ctx.writer.record_started(rows).await?
        })
    }

    /// Keeps a row finished elsewhere (e.g. closed for a lost worker) for
    /// the next write, without counting it in the step metrics.
    pub fn keep(&mut self, step: step_row::Step) {
        self.pending.push(step);
    }

    /// A finished row still waiting for the next write, by seq.
    pub fn pending_mut(&mut self, seq: i32) -> Option<&mut step_row::Step> {
        self.pending.iter_mut().find(|s| s.seq == seq)
    }

    /// The rows waiting for the next write, taken.
    pub fn take_pending(&mut self) -> Vec<step_row::Step> {
        std::mem::take(&mut self.pending)
    }

    /// Writes the waiting rows and `started` (a step that has only begun)
    /// with an asynchronous commit. False when the lease was lost.
    pub async fn record_started(&mut self, started: step_row::Step) -> Result<bool, PipelineError> {
        let mut rows = self.take_pending();
        rows.push(started);
        Ok(self.ctx.writer.record_started(rows).await?)
    }

    /// Commits the waiting rows now with the result `out` holds, if any,
    /// kept on the execution row for a resumed run. False when the lease
    /// was lost.
    pub async fn checkpoint(&mut self, out: &Outputs) -> Result<bool, PipelineError> {
        let Some(generated) = &out.generated else {
            return self.flush().await;
        };
        let rows = self.take_pending();
        Ok(self
            .ctx
            .writer
            .checkpoint(self.execution.id, &generated.output, &generated.usage, rows)
            .await?)
    }

    /// Commits the waiting rows now. False when the lease was lost.
    pub async fn flush(&mut self) -> Result<bool, PipelineError> {
        let rows = self.take_pending();
        if rows.is_empty() {
            return Ok(true);
        }
        Ok(self.ctx.writer.record(rows).await?)
    }
}

fn finish_step(step: &mut step_row::Step, status: StepStatus) {
    step.finish(status);
    let seconds = step.latency_ms.unwrap_or(0.0) / 1000.0;
    metrics::histogram!(m::STEP_DURATION, "kind" => step.kind.metric_label(), "status" => status.as_str()).record(seconds);
}

//! One execution's run: claim it, then the steps of `PIPELINE` in order,
//! then `finalize`. The runner knows no step by name: it skips a step an
//! earlier attempt finished (the step restores its output from that
//! checkpoint), commits the waiting rows when a step answers `Durable` (or
//! when a paid step is followed by one that can fail), and turns each
//! step's outcome into one write through the `Writer`. Every write is
//! fenced by the lease; a lost lease ends the run without another write.
//!
//! Bounds that hold whatever a step does: a prompt version that does not
//! compile fails the execution at once (`prompt_invalid`), and an
//! execution claimed more often than its retry policy allows (plus
//! `ATTEMPT_SLACK` for killed workers, whose runs end without a retry
//! decision) fails without calling the model (`attempts_exhausted`).

use std::sync::Arc;

use llmq_shared::db::leases::Claim;
use llmq_shared::db::{prompts as db_prompts, DbError};
use llmq_shared::execution::{codes, ErrorInfo, Execution, ExecutionId, ExecutionStatus};
use llmq_shared::metrics as m;
use llmq_shared::prompt::CompiledPrompt;
use llmq_shared::step::{Step as StepRow, StepStatus};
use tokio_util::sync::CancellationToken;

use crate::context::WorkerContext;
use crate::retry::RetryPolicy;
use crate::steps::{
    finalize, generate::Generate, render::Render, retrieve::Retrieve, validate::Validate,
};
use crate::steps::{Cx, Outcome, Outputs, Step};

/// The steps of every execution, in order; each decides if it applies.
const PIPELINE: &[&dyn Step] = &[&Retrieve, &Render, &Generate, &Validate];

/// Claims beyond the retry policy's `max_attempts` tolerated before the
/// model is no longer called: each covers a run that a killed worker (or a
/// lost lease) ended without counting as a decided attempt.
pub const ATTEMPT_SLACK: u32 = 2;

/// How a delivery ended, which decides what happens to the message.
#[derive(Debug, PartialEq)]
pub enum RunOutcome {
    /// Terminal state committed.
    Finished(ExecutionStatus),
    /// Given back with a delay; the relay publishes it again when due.
    RetryScheduled(std::time::Duration),
    /// Nothing to do: a duplicate, or someone else holds the lease.
    Skipped(&'static str),
    /// The message names no execution.
    Unknown,
    /// Stopped by shutdown before finishing; the lease was given back.
    Interrupted,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("prompt {0} v{1} is missing from the registry")]
    MissingPrompt(String, i32),
    /// A step ran before the step whose output it needs: a bug.
    #[error("step order: {0} is missing")]
    Order(&'static str),
}

impl PipelineError {
    /// Postgres is (temporarily) out of reach: the run can be tried again.
    /// Anything else would fail the same way again: the execution fails.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Db(e) if e.is_unavailable())
    }
}

#[tracing::instrument(skip_all, fields(execution.id = %id), err(Display))]
pub async fn run_execution(
    ctx: &WorkerContext,
    id: ExecutionId,
    stop: &CancellationToken,
    cancel: &CancellationToken,
) -> Result<RunOutcome, PipelineError> {
    let execution = match ctx.writer.claim(id).await? {
        Claim::Claimed(e) => e,
        Claim::NotFound => return Ok(RunOutcome::Unknown),
        Claim::Terminal(_) => return Ok(RunOutcome::Skipped("already terminal")),
        Claim::Leased => return Ok(RunOutcome::Skipped("leased by another worker")),
        Claim::NotYet => return Ok(RunOutcome::Skipped("retry delay not over")),
        Claim::CancelRequested => {
            // The writer announces the cancel it commits.
            if ctx.writer.cancel_unclaimed(id).await? {
                ctx.settle(id, None);
                metrics::counter!(m::EXECUTIONS_FINISHED, "status" => "cancelled").increment(1);
                return Ok(RunOutcome::Finished(ExecutionStatus::Cancelled));
            }
            return Ok(RunOutcome::Skipped("cancel requested"));
        }
    };
    let prompt = match load_prompt(ctx, &execution).await? {
        Ok(prompt) => prompt,
        Err(error) => return fail_claimed(ctx, &execution, error).await,
    };
    let policy = RetryPolicy::new(&ctx.settings.worker, &prompt.definition.limits);
    if execution.attempts.max(0) as u32 > policy.max_attempts + ATTEMPT_SLACK {
        let error = ErrorInfo {
            code: codes::ATTEMPTS_EXHAUSTED.into(),
            message: format!(
                "claimed {} times, more than max_attempts {} allows (+{ATTEMPT_SLACK} for killed workers); the model is not called again",
                execution.attempts, policy.max_attempts
            ),
        };
        return fail_claimed(ctx, &execution, error).await;
    }
    // A first attempt has no earlier steps; only a resumed run reads them.
    // A deferred run (its attempt not counted) may have left some too; its
    // last error says it was deferred.
    let deferred = execution
        .error
        .as_ref()
        .is_some_and(|e| e.code == codes::PROVIDER_CAPACITY);
    let earlier = if execution.attempts > 1 || deferred {
        ctx.writer.earlier_steps(&execution.tenant_id, id).await?
    } else {
        Vec::new()
    };
    let mut cx = Cx::new(ctx, &execution, &prompt, stop, cancel, &earlier);
    close_lost_steps(&mut cx, &earlier);
    run_steps(&mut cx, &earlier).await
}

/// Steps an earlier run left `running` died with their worker: closed
/// with `worker_lost` (written with the run's first write) so the trace
/// says what happened to them.
fn close_lost_steps(cx: &mut Cx<'_>, earlier: &[StepRow]) {
    let attempt = cx.execution.attempts;
    for s in earlier
        .iter()
        .filter(|s| s.status == StepStatus::Running && s.attempt < attempt)
    {
        let mut s = s.clone();
        s.error = Some(ErrorInfo {
            code: codes::WORKER_LOST.into(),
            message: "the worker running this step stopped".into(),
        });
        s.retryable = Some(true);
        s.finish(StepStatus::Failed);
        cx.keep(s);
    }
}

async fn run_steps(cx: &mut Cx<'_>, earlier: &[StepRow]) -> Result<RunOutcome, PipelineError> {
    let mut out = Outputs::default();
    let steps: Vec<&dyn Step> = PIPELINE.iter().copied().filter(|s| s.applies(cx)).collect();
    for (i, step) in steps.iter().enumerate() {
        let checkpoint = earlier
            .iter()
            .filter(|s| {
                s.kind == step.kind() && s.status == StepStatus::Succeeded && step.is_checkpoint(s)
            })
            .max_by_key(|s| s.seq);
        if let Some(checkpoint) = checkpoint {
            if let Err(error) = step.restore(cx, checkpoint, &mut out) {
                return end(cx, ExecutionStatus::Failed, error, &out).await;
            }
            continue;
        }
        let durable = match step.run(cx, &mut out).await? {
            Outcome::Continue => {
                step.worth_a_checkpoint() && steps[i + 1..].iter().any(|s| s.can_fail())
            }
            Outcome::Durable => true,
            Outcome::Retry { error, delay } => return retry_later(cx, error, delay).await,
            Outcome::Defer { error, delay } => return defer_later(cx, error, delay).await,
            Outcome::Fail(error) => return end(cx, ExecutionStatus::Failed, error, &out).await,
            Outcome::Cancelled => return cancelled(cx, &out).await,
            Outcome::Interrupted => return interrupt(cx).await,
            Outcome::LeaseLost => return Ok(RunOutcome::Skipped("lease lost")),
        };
        if durable && !cx.checkpoint(&out).await? {
            return Ok(RunOutcome::Skipped("lease lost"));
        }
    }
    if cx.cancel.is_cancelled() {
        return cancelled(cx, &out).await;
    }
    let generated = out.generated()?;
    let finish = finalize::succeeded(cx, generated);
    let to_cache = cx
        .cache
        .take()
        .filter(|_| !generated.cached)
        .map(|plan| (plan, generated.output.clone()));
    let outcome = finish_with(cx, finish).await?;
    if let (Some((plan, output)), RunOutcome::Finished(ExecutionStatus::Succeeded)) =
        (to_cache, &outcome)
    {
        crate::cache::store(&cx.ctx.redis, &plan, &output).await;
    }
    Ok(outcome)
}

/// The prompt version of `e`: compiled from the cache or the registry.
/// The inner error is terminal: the version is stored but unusable.
async fn load_prompt(
    ctx: &WorkerContext,
    e: &Execution,
) -> Result<Result<Arc<CompiledPrompt>, ErrorInfo>, PipelineError> {
    if let Some(p) = ctx.prompts.get(&e.prompt_name, e.prompt_version) {
        return Ok(Ok(p));
    }
    let client = ctx.pool.get().await.map_err(DbError::from)?;
    let invalid = |message: String| ErrorInfo {
        code: codes::PROMPT_INVALID.into(),
        message: format!(
            "prompt {} v{} cannot be used: {message}",
            e.prompt_name, e.prompt_version
        ),
    };
    let stored =
        match db_prompts::get_prompt_version(&client, &e.prompt_name, e.prompt_version).await {
            Ok(Some(stored)) => stored,
            Ok(None) => {
                return Err(PipelineError::MissingPrompt(
                    e.prompt_name.clone(),
                    e.prompt_version,
                ))
            }
            // The stored definition does not even deserialize.
            Err(DbError::Data(message)) => return Ok(Err(invalid(message))),
            Err(other) => return Err(other.into()),
        };
    Ok(ctx
        .prompts
        .get_or_compile(&e.prompt_name, e.prompt_version, || stored.definition)
        .map_err(|err| invalid(err.to_string())))
}

/// Fails a claimed execution before any step ran.
async fn fail_claimed(
    ctx: &WorkerContext,
    execution: &Execution,
    error: ErrorInfo,
) -> Result<RunOutcome, PipelineError> {
    tracing::warn!(code = %error.code, message = %error.message, "execution fails before its steps");
    let finish = finalize::ended_claimed(execution, ExecutionStatus::Failed, error);
    if !ctx.finish(finish, execution.reserved).await? {
        return Ok(RunOutcome::Skipped("lease lost"));
    }
    metrics::counter!(m::EXECUTIONS_FINISHED, "status" => ExecutionStatus::Failed.as_str())
        .increment(1);
    Ok(RunOutcome::Finished(ExecutionStatus::Failed))
}

/// Fails an execution this worker holds the lease on after an error that
/// retrying would only repeat (not an outage). False when the lease is
/// not this worker's: nothing was written.
pub async fn fail_after_error(
    ctx: &WorkerContext,
    id: ExecutionId,
    error: &PipelineError,
) -> Result<bool, DbError> {
    let info = ErrorInfo {
        code: codes::INTERNAL.into(),
        message: format!("the execution could not be run: {error}"),
    };
    let finish = finalize::ended_id(id, ExecutionStatus::Failed, info);
    // Whether it holds a reservation is not known here: settling one it
    // does not hold changes nothing.
    let done = ctx.finish(finish, true).await?;
    if done {
        metrics::counter!(m::EXECUTIONS_FINISHED, "status" => ExecutionStatus::Failed.as_str())
            .increment(1);
    }
    Ok(done)
}

async fn retry_later(
    cx: &mut Cx<'_>,
    error: ErrorInfo,
    delay: std::time::Duration,
) -> Result<RunOutcome, PipelineError> {
    if !cx.flush().await?
        || !cx
            .ctx
            .writer
            .schedule_retry(cx.execution.id, delay, &error)
            .await?
    {
        return Ok(RunOutcome::Skipped("lease lost"));
    }
    metrics::counter!(m::EXECUTION_RETRIES, "code" => error.code.clone()).increment(1);
    tracing::info!(code = %error.code, delay_ms = delay.as_millis() as u64, "retry scheduled");
    Ok(RunOutcome::RetryScheduled(delay))
}

/// A provider limit had no room: the execution goes back for `delay`,
/// this run not counted as an attempt, with the reason on its event.
async fn defer_later(
    cx: &mut Cx<'_>,
    error: ErrorInfo,
    delay: std::time::Duration,
) -> Result<RunOutcome, PipelineError> {
    if !cx.flush().await?
        || !cx
            .ctx
            .writer
            .defer_claimed(cx.execution.id, delay, &error)
            .await?
    {
        return Ok(RunOutcome::Skipped("lease lost"));
    }
    metrics::counter!(m::EXECUTIONS_DEFERRED, "reason" => "provider_capacity").increment(1);
    tracing::debug!(message = %error.message, delay_ms = delay.as_millis() as u64, "deferred by a provider limit");
    Ok(RunOutcome::RetryScheduled(delay))
}

async fn cancelled(cx: &mut Cx<'_>, out: &Outputs) -> Result<RunOutcome, PipelineError> {
    let error = ErrorInfo {
        code: codes::CANCELLED.into(),
        message: "cancelled by the client".into(),
    };
    end(cx, ExecutionStatus::Cancelled, error, out).await
}

async fn end(
    cx: &mut Cx<'_>,
    status: ExecutionStatus,
    error: ErrorInfo,
    out: &Outputs,
) -> Result<RunOutcome, PipelineError> {
    let usage = out.generated.as_ref().map(|g| g.usage);
    let finish = finalize::ended(cx, status, error, usage);
    finish_with(cx, finish).await
}

async fn finish_with(
    cx: &mut Cx<'_>,
    finish: llmq_shared::db::executions::Finish,
) -> Result<RunOutcome, PipelineError> {
    let status = finish.outcome.status;
    if !cx.ctx.finish(finish, cx.execution.reserved).await? {
        return Ok(RunOutcome::Skipped("lease lost"));
    }
    // The writer published the terminal event with its batch.
    metrics::counter!(m::EXECUTIONS_FINISHED, "status" => status.as_str()).increment(1);
    Ok(RunOutcome::Finished(status))
}

/// Shutdown: write what waits, then give the lease back so the
/// redelivered message runs at once.
async fn interrupt(cx: &mut Cx<'_>) -> Result<RunOutcome, PipelineError> {
    if !cx.flush().await? {
        return Ok(RunOutcome::Skipped("lease lost"));
    }
    cx.ctx.writer.release(&[cx.execution.id.0]).await?;
    Ok(RunOutcome::Interrupted)
}

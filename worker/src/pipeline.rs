//! One execution's run: claim it, then `render → generate → finalize`,
//! writing each step as it happens. Succeeded steps are checkpoints: a run
//! that resumes a previous attempt re-renders in memory (cheap and
//! deterministic) but never calls the model again once a `generate` step
//! succeeded; its result is kept on the execution row. Every write is
//! fenced by the lease, so a worker that lost its lease changes nothing.

use std::sync::Arc;
use std::time::Duration;

use llmq_shared::db::executions::{self as db, Claim, Finish, Outcome};
use llmq_shared::db::{prompts as db_prompts, steps as db_steps, DbError};
use llmq_shared::events::ExecutionEvent;
use llmq_shared::execution::{codes, ErrorInfo, Execution, ExecutionId, ExecutionStatus, Usage};
use llmq_shared::mask::mask_json;
use llmq_shared::metrics as m;
use llmq_shared::prompt::CompiledPrompt;
use llmq_shared::step::{Step, StepKind, StepStatus};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::context::WorkerContext;
use crate::provider::{Endpoint, Generation, ProviderClient, ProviderError};
use crate::retry::{Decision, RetryPolicy};

/// How a delivery ended, which decides what happens to the message.
#[derive(Debug, PartialEq)]
pub enum RunOutcome {
    /// Terminal state committed.
    Finished(ExecutionStatus),
    /// Given back with a delay; the relay publishes it again when due.
    RetryScheduled(Duration),
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
}

impl PipelineError {
    /// Postgres is (temporarily) out of reach: the run can be tried again.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Db(e) if e.is_unavailable())
    }
}

/// A step's failure as the retry decision sees it.
struct StepFailure {
    error: ErrorInfo,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl From<&ProviderError> for StepFailure {
    fn from(e: &ProviderError) -> Self {
        Self {
            error: ErrorInfo {
                code: e.code().into(),
                message: e.to_string(),
            },
            retryable: e.is_retryable(),
            retry_after: e.retry_after(),
        }
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
            let client = ctx.pool.get().await.map_err(DbError::from)?;
            if db::cancel_unclaimed(&client, id).await? {
                metrics::counter!(m::EXECUTIONS_FINISHED, "status" => "cancelled").increment(1);
                ctx.publisher
                    .publish_terminal_events(&[ExecutionEvent {
                        id,
                        status: ExecutionStatus::Cancelled,
                    }])
                    .await;
                return Ok(RunOutcome::Finished(ExecutionStatus::Cancelled));
            }
            return Ok(RunOutcome::Skipped("cancel requested"));
        }
    };
    let prompt = load_prompt(ctx, &execution).await?;
    // A first attempt has no earlier steps; only a resumed run reads them.
    let earlier = if execution.attempts > 1 {
        let client = ctx.pool.get().await.map_err(DbError::from)?;
        db_steps::list_steps(&client, &execution.tenant_id, id).await?
    } else {
        Vec::new()
    };
    // Steps an earlier run left `running` died with their worker: close them
    // so the trace says what happened to them.
    let lost: Vec<Step> = earlier
        .iter()
        .filter(|s| s.status == StepStatus::Running && s.attempt < execution.attempts)
        .map(|s| {
            let mut s = s.clone();
            s.finish(StepStatus::Failed);
            s.error = Some(ErrorInfo {
                code: codes::WORKER_LOST.into(),
                message: "the worker running this step stopped".into(),
            });
            s.retryable = Some(true);
            s
        })
        .collect();
    if !lost.is_empty() && !ctx.writer.record(lost).await? {
        return Ok(RunOutcome::Skipped("lease lost"));
    }
    let mut run = Run {
        ctx,
        execution: &execution,
        prompt,
        next_seq: earlier.iter().map(|s| s.seq).max().unwrap_or(0) + 1,
    };
    run.go(&earlier, stop, cancel).await
}

async fn load_prompt(
    ctx: &WorkerContext,
    e: &Execution,
) -> Result<Arc<CompiledPrompt>, PipelineError> {
    if let Some(p) = ctx.prompts.get(&e.prompt_name, e.prompt_version) {
        return Ok(p);
    }
    let client = ctx.pool.get().await.map_err(DbError::from)?;
    let stored = db_prompts::get_prompt_version(&client, &e.prompt_name, e.prompt_version)
        .await?
        .ok_or_else(|| PipelineError::MissingPrompt(e.prompt_name.clone(), e.prompt_version))?;
    ctx.prompts
        .get_or_compile(&e.prompt_name, e.prompt_version, || stored.definition)
        .map_err(|_| PipelineError::MissingPrompt(e.prompt_name.clone(), e.prompt_version))
}

/// The rendered messages and the seq of the render step that records them.
#[derive(Clone, Copy)]
struct Rendered<'a> {
    messages: &'a [llmq_shared::prompt::ChatMessage],
    seq: i32,
}

struct Run<'a> {
    ctx: &'a WorkerContext,
    execution: &'a Execution,
    prompt: Arc<CompiledPrompt>,
    next_seq: i32,
}

/// How a generate attempt ended.
enum Generated {
    /// The result and its succeeded step, written with the outcome.
    Done(Value, Usage, Box<Step>),
    Failed(StepFailure),
    /// Cancelled, interrupted or lease lost: the run is over.
    Over(RunOutcome),
}

impl Run<'_> {
    fn step(&mut self, kind: StepKind) -> Step {
        let step = Step::start(
            self.execution.id,
            self.next_seq,
            kind,
            self.execution.attempts,
        );
        self.next_seq += 1;
        step
    }

    async fn go(
        &mut self,
        earlier: &[Step],
        stop: &CancellationToken,
        cancel: &CancellationToken,
    ) -> Result<RunOutcome, PipelineError> {
        let succeeded = |kind: &StepKind| {
            earlier
                .iter()
                .any(|s| &s.kind == kind && s.status == StepStatus::Succeeded)
        };

        // render: deterministic, so a resumed run re-renders in memory and
        // records the step only if no earlier run did. A checkpointed render
        // is not recorded again, so it takes no seq.
        let render_done = succeeded(&StepKind::Render);
        let mut render = if render_done {
            Step::start(
                self.execution.id,
                0,
                StepKind::Render,
                self.execution.attempts,
            )
        } else {
            self.step(StepKind::Render)
        };
        render.input = Some(mask_json(&self.execution.input));
        let messages = match self.prompt.render(&self.execution.input) {
            Ok(messages) => messages,
            Err(e) => {
                let error = ErrorInfo {
                    code: codes::TEMPLATE_ERROR.into(),
                    message: e.to_string(),
                };
                render.error = Some(error.clone());
                render.retryable = Some(false);
                finish_step(&mut render, StepStatus::Failed);
                self.record(vec![render]).await?;
                return self.fail(error, Usage::default()).await;
            }
        };
        render.output = Some(mask_json(&json!({ "messages": messages })));
        finish_step(&mut render, StepStatus::Succeeded);
        let render_seq = if render_done {
            earlier
                .iter()
                .filter(|s| s.kind == StepKind::Render && s.status == StepStatus::Succeeded)
                .map(|s| s.seq)
                .max()
                .unwrap_or(0)
        } else {
            render.seq
        };
        let mut pending_render = (!render_done).then_some(render);

        // generate: a checkpointed result is never paid for twice.
        let (output, usage, generated) = if succeeded(&StepKind::Generate) {
            (
                self.execution.output.clone().unwrap_or(Value::Null),
                self.execution.usage.unwrap_or_default(),
                None,
            )
        } else {
            let primary = self.execution.model.clone();
            match self
                .generate(
                    &primary,
                    None,
                    Rendered {
                        messages: &messages,
                        seq: render_seq,
                    },
                    pending_render.take(),
                    stop,
                    cancel,
                )
                .await?
            {
                Generated::Done(output, usage, step) => (output, usage, Some(step)),
                Generated::Over(outcome) => return Ok(outcome),
                Generated::Failed(failure) => {
                    let policy =
                        RetryPolicy::new(&self.ctx.settings.worker, &self.prompt.definition.limits);
                    let attempt = self.execution.attempts.max(1) as u32;
                    match policy.decide(attempt, failure.retryable, failure.retry_after) {
                        Decision::RetryAfter(delay) => {
                            return self.retry_later(failure, delay).await
                        }
                        Decision::GiveUp => {
                            match self.fallback_model().filter(|_| failure.retryable) {
                                None => return self.fail(failure.error, Usage::default()).await,
                                Some(fallback) => {
                                    tracing::info!(model = %primary, fallback = %fallback, "primary exhausted; trying the fallback model");
                                    match self
                                        .generate(
                                            &fallback,
                                            Some(&primary),
                                            Rendered {
                                                messages: &messages,
                                                seq: render_seq,
                                            },
                                            None,
                                            stop,
                                            cancel,
                                        )
                                        .await?
                                    {
                                        Generated::Done(output, usage, step) => {
                                            (output, usage, Some(step))
                                        }
                                        Generated::Over(outcome) => return Ok(outcome),
                                        Generated::Failed(f) => {
                                            return self.fail(f.error, Usage::default()).await
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        if cancel.is_cancelled() {
            let error = ErrorInfo {
                code: codes::CANCELLED.into(),
                message: "cancelled by the client".into(),
            };
            return self
                .end(
                    ExecutionStatus::Cancelled,
                    error,
                    usage,
                    generated.map(|step| *step),
                )
                .await;
        }

        // finalize: the terminal state, the generate result and the
        // finalize step in one statement.
        let mut finalize = self.step(StepKind::Finalize);
        finalize.output = Some(json!({ "status": "succeeded" }));
        finish_step(&mut finalize, StepStatus::Succeeded);
        let outcome = Outcome {
            status: ExecutionStatus::Succeeded,
            output: Some(output),
            error: None,
            usage: Some(usage),
        };
        let steps = generated
            .map(|step| *step)
            .into_iter()
            .chain(std::iter::once(finalize))
            .collect();
        self.finish(outcome, steps).await
    }

    /// The fallback named by the prompt version, else by the model's config.
    fn fallback_model(&self) -> Option<String> {
        let from_prompt = self.prompt.definition.limits.fallback_model.clone();
        from_prompt
            .or_else(|| self.ctx.settings.model(&self.execution.model).fallback)
            .filter(|m| *m != self.execution.model)
    }

    /// One generate attempt against `model`, recorded before and after the
    /// call; `fallback_for` names the primary when this is its fallback.
    async fn generate(
        &mut self,
        model: &str,
        fallback_for: Option<&str>,
        rendered: Rendered<'_>,
        render: Option<Step>,
        stop: &CancellationToken,
        cancel: &CancellationToken,
    ) -> Result<Generated, PipelineError> {
        if cancel.is_cancelled() {
            if let Some(render) = render {
                self.record(vec![render]).await?;
            }
            return Ok(Generated::Over(self.cancelled(Usage::default()).await?));
        }
        let endpoint = Endpoint::resolve(&self.ctx.settings, model);
        let params = self
            .execution
            .params
            .as_object()
            .cloned()
            .unwrap_or_default();
        let body = ProviderClient::request_body(&endpoint, rendered.messages, &params);
        let mut generate = self.step(StepKind::Generate);
        generate.model = Some(model.to_string());
        let mut recorded_params = params.clone();
        if let Some(primary) = fallback_for {
            recorded_params.insert("fallback_for".into(), Value::String(primary.to_string()));
        }
        generate.params = Some(Value::Object(recorded_params));
        // The messages are in the render step's output; not stored twice.
        generate.input = Some(
            json!({ "messages_from_step": rendered.seq, "message_count": rendered.messages.len() }),
        );
        // The render step is written here for the first time, with the
        // generate step it feeds; the generate step is written again when done.
        let first = render
            .into_iter()
            .chain(std::iter::once(generate.clone()))
            .collect();
        if !self.ctx.writer.record_started(first).await? {
            return Ok(Generated::Over(RunOutcome::Skipped("lease lost")));
        }
        let timeout = self
            .prompt
            .definition
            .limits
            .generate_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(self.ctx.settings.provider.timeout_secs));
        let result = tokio::select! {
            r = self.ctx.provider.chat(&endpoint, &body, timeout) => r,
            _ = stop.cancelled() => {
                generate.error = Some(ErrorInfo { code: "interrupted".into(), message: "worker shutting down".into() });
                generate.retryable = Some(true);
                finish_step(&mut generate, StepStatus::Cancelled);
                self.record(vec![generate]).await?;
                return Ok(Generated::Over(self.interrupt().await?));
            }
            _ = cancel.cancelled() => {
                generate.error = Some(ErrorInfo { code: codes::CANCELLED.into(), message: "cancelled by the client; the model call was aborted".into() });
                generate.retryable = Some(false);
                finish_step(&mut generate, StepStatus::Cancelled);
                self.record(vec![generate]).await?;
                return Ok(Generated::Over(self.cancelled(Usage::default()).await?));
            }
        };
        match result {
            Ok(generation) => {
                let (output, usage) = self.output_of(&generation, &endpoint);
                generate.usage = Some(usage);
                generate.output = Some(mask_json(&output));
                finish_step(&mut generate, StepStatus::Succeeded);
                metrics::counter!(m::TOKENS, "model" => model.to_string(), "kind" => "prompt")
                    .increment(usage.prompt_tokens.max(0) as u64);
                metrics::counter!(m::TOKENS, "model" => model.to_string(), "kind" => "completion")
                    .increment(usage.completion_tokens.max(0) as u64);
                Ok(Generated::Done(output, usage, Box::new(generate)))
            }
            Err(e) => {
                let failure = StepFailure::from(&e);
                generate.error = Some(failure.error.clone());
                generate.retryable = Some(failure.retryable);
                finish_step(&mut generate, StepStatus::Failed);
                if !self.record(vec![generate]).await? {
                    return Ok(Generated::Over(RunOutcome::Skipped("lease lost")));
                }
                Ok(Generated::Failed(failure))
            }
        }
    }

    fn output_of(&self, generation: &Generation, endpoint: &Endpoint) -> (Value, Usage) {
        let mut usage = generation.usage;
        usage.cost_usd = endpoint.cost(&usage);
        let output = match self
            .prompt
            .definition
            .output
            .get("type")
            .and_then(Value::as_str)
        {
            Some("json") => serde_json::from_str(&generation.content)
                .unwrap_or(Value::String(generation.content.clone())),
            _ => Value::String(generation.content.clone()),
        };
        (output, usage)
    }

    async fn record(&self, steps: Vec<Step>) -> Result<bool, PipelineError> {
        Ok(self.ctx.writer.record(steps).await?)
    }

    /// Gives the execution back with a delay; the relay republishes it then.
    async fn retry_later(
        &self,
        failure: StepFailure,
        delay: Duration,
    ) -> Result<RunOutcome, PipelineError> {
        let client = self.ctx.pool.get().await.map_err(DbError::from)?;
        if !db::schedule_retry(
            &client,
            self.execution.id,
            &self.ctx.owner,
            delay,
            &failure.error,
        )
        .await?
        {
            return Ok(RunOutcome::Skipped("lease lost"));
        }
        metrics::counter!(m::EXECUTION_RETRIES, "code" => failure.error.code.clone()).increment(1);
        tracing::info!(code = %failure.error.code, delay_ms = delay.as_millis() as u64, "retry scheduled");
        Ok(RunOutcome::RetryScheduled(delay))
    }

    async fn fail(&mut self, error: ErrorInfo, usage: Usage) -> Result<RunOutcome, PipelineError> {
        self.end(ExecutionStatus::Failed, error, usage, None).await
    }

    async fn cancelled(&mut self, usage: Usage) -> Result<RunOutcome, PipelineError> {
        let error = ErrorInfo {
            code: codes::CANCELLED.into(),
            message: "cancelled by the client".into(),
        };
        self.end(ExecutionStatus::Cancelled, error, usage, None)
            .await
    }

    async fn end(
        &mut self,
        status: ExecutionStatus,
        error: ErrorInfo,
        usage: Usage,
        before: Option<Step>,
    ) -> Result<RunOutcome, PipelineError> {
        let mut finalize = self.step(StepKind::Finalize);
        finalize.output = Some(json!({ "status": status, "error": error }));
        finish_step(&mut finalize, StepStatus::Succeeded);
        let has_usage = usage.total_tokens > 0;
        let outcome = Outcome {
            status,
            output: None,
            error: Some(error),
            usage: has_usage.then_some(usage),
        };
        let steps = before
            .into_iter()
            .chain(std::iter::once(finalize))
            .collect();
        self.finish(outcome, steps).await
    }

    async fn finish(
        &self,
        outcome: Outcome,
        steps: Vec<Step>,
    ) -> Result<RunOutcome, PipelineError> {
        let status = outcome.status;
        let finish = Finish {
            id: self.execution.id,
            outcome,
            steps,
        };
        if !self.ctx.writer.finish(finish).await? {
            return Ok(RunOutcome::Skipped("lease lost"));
        }
        // The writer published the terminal event with its batch.
        metrics::counter!(m::EXECUTIONS_FINISHED, "status" => status.as_str()).increment(1);
        Ok(RunOutcome::Finished(status))
    }

    /// Shutdown: give the lease back so the redelivered message runs at once.
    async fn interrupt(&self) -> Result<RunOutcome, PipelineError> {
        let client = self.ctx.pool.get().await.map_err(DbError::from)?;
        let republish = Duration::from_secs(self.ctx.settings.api.republish_after_secs);
        db::release_leases(&client, &[self.execution.id.0], &self.ctx.owner, republish).await?;
        Ok(RunOutcome::Interrupted)
    }
}

fn finish_step(step: &mut Step, status: StepStatus) {
    step.finish(status);
    let seconds = step.latency_ms.unwrap_or(0.0) / 1000.0;
    metrics::histogram!(m::STEP_DURATION, "kind" => step.kind.metric_label(), "status" => status.as_str()).record(seconds);
}

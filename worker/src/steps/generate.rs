//! `generate`: the model call, the only paid step. A checkpointed result
//! is never paid for twice. A retryable failure of the primary model asks
//! `crate::retry` whether to try again later; once the primary's attempts
//! are spent, the fallback model (the prompt's, else the model config's)
//! gets one call.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use llmq_shared::execution::{codes, ErrorInfo, Usage};
use llmq_shared::mask::mask_json;
use llmq_shared::metrics as m;
use llmq_shared::sanitize;
use llmq_shared::step::{self as step_row, StepKind, StepStatus};
use serde_json::{json, Value};

use super::{deltas, Cx, Generated, Outcome, Outputs, Step};
use crate::provider::{Endpoint, Generation, ProviderClient, ProviderError};
use crate::retry::{Decision, RetryPolicy};
use crate::runner::PipelineError;

pub struct Generate;

/// How one call ended.
enum Call {
    Done(Generated),
    Failed(Failure),
    /// Cancelled, interrupted or lease lost.
    Over(Outcome),
}

/// A call's failure as the retry decision sees it.
struct Failure {
    error: ErrorInfo,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl From<&ProviderError> for Failure {
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

impl Step for Generate {
    fn kind(&self) -> StepKind {
        StepKind::Generate
    }

    fn worth_a_checkpoint(&self) -> bool {
        true
    }

    fn run<'a>(
        &'a self,
        cx: &'a mut Cx<'_>,
        out: &'a mut Outputs,
    ) -> BoxFuture<'a, Result<Outcome, PipelineError>> {
        async move {
            if cx.cancel.is_cancelled() {
                return Ok(Outcome::Cancelled);
            }
            let primary = cx.execution.model.clone();
            let failure = match call(cx, out, &primary, None).await? {
                Call::Done(generated) => return Ok(keep(out, generated)),
                Call::Over(outcome) => return Ok(outcome),
                Call::Failed(failure) => failure,
            };
            let policy = RetryPolicy::new(&cx.ctx.settings.worker, &cx.prompt.definition.limits);
            let attempt = cx.execution.attempts.max(1) as u32;
            match policy.decide(attempt, failure.retryable, failure.retry_after) {
                Decision::RetryAfter(delay) => {
                    return Ok(Outcome::Retry {
                        error: failure.error,
                        delay,
                    })
                }
                Decision::GiveUp => {}
            }
            let Some(fallback) = fallback_model(cx).filter(|_| failure.retryable) else {
                return Ok(Outcome::Fail(failure.error));
            };
            tracing::info!(model = %primary, fallback = %fallback, "primary exhausted; trying the fallback model");
            Ok(match call(cx, out, &fallback, Some(&primary)).await? {
                Call::Done(generated) => keep(out, generated),
                Call::Over(outcome) => outcome,
                Call::Failed(failure) => Outcome::Fail(failure.error),
            })
        }
        .boxed()
    }

    fn restore(
        &self,
        cx: &mut Cx<'_>,
        checkpoint: &step_row::Step,
        out: &mut Outputs,
    ) -> Result<(), ErrorInfo> {
        // The execution row keeps the unmasked result once it is known;
        // the step row's copy is the fallback.
        let output = cx
            .execution
            .output
            .clone()
            .or_else(|| checkpoint.output.clone())
            .unwrap_or(Value::Null);
        let usage = cx.execution.usage.or(checkpoint.usage).unwrap_or_default();
        // A JSON answer that did not parse was kept as its text.
        let not_json = match (&output, wants_json(cx)) {
            (Value::String(text), true) => serde_json::from_str::<Value>(text)
                .err()
                .map(|e| e.to_string()),
            _ => None,
        };
        out.generated = Some(Generated {
            output,
            usage,
            not_json,
        });
        Ok(())
    }
}

fn keep(out: &mut Outputs, generated: Generated) -> Outcome {
    out.generated = Some(generated);
    Outcome::Continue
}

/// The fallback named by the prompt version, else by the model's config.
fn fallback_model(cx: &Cx<'_>) -> Option<String> {
    let from_prompt = cx.prompt.definition.limits.fallback_model.clone();
    from_prompt
        .or_else(|| cx.ctx.settings.model(&cx.execution.model).fallback)
        .filter(|m| *m != cx.execution.model)
}

/// One call of `model`, recorded before (with the rows waiting) and after;
/// `fallback_for` names the primary when this is its fallback.
async fn call(
    cx: &mut Cx<'_>,
    out: &Outputs,
    model: &str,
    fallback_for: Option<&str>,
) -> Result<Call, PipelineError> {
    let rendered = out.rendered()?;
    let endpoint = Endpoint::resolve(&cx.ctx.settings, model);
    let params = cx.execution.params.as_object().cloned().unwrap_or_default();
    let streamed = cx.execution.stream;
    let body = ProviderClient::request_body(&endpoint, &rendered.messages, &params, streamed);
    let mut step = cx.begin(StepKind::Generate);
    step.model = Some(model.to_string());
    let mut recorded_params = params;
    if let Some(primary) = fallback_for {
        recorded_params.insert("fallback_for".into(), Value::String(primary.to_string()));
    }
    step.params = Some(Value::Object(recorded_params));
    // The messages are in the render step's output; not stored twice.
    step.input = Some(
        json!({ "messages_from_step": rendered.seq, "message_count": rendered.messages.len() }),
    );
    if !cx.record_started(step.clone()).await? {
        return Ok(Call::Over(Outcome::LeaseLost));
    }
    let limits = &cx.prompt.definition.limits;
    let timeout = Duration::from_secs(
        limits
            .generate_timeout_secs
            .unwrap_or(cx.ctx.settings.provider.timeout_secs),
    );
    let (step_seq, attempt) = (step.seq, step.attempt);
    let model_call = async {
        if !streamed {
            return cx.ctx.provider.chat(&endpoint, &body, timeout).await;
        }
        let (fragments, received) = tokio::sync::mpsc::unbounded_channel();
        let call = cx
            .ctx
            .provider
            .chat_stream(&endpoint, &body, timeout, fragments);
        let deltas = deltas::publish(cx.ctx, cx.execution, step_seq, attempt, received);
        // The publisher ends once the call has dropped its sender, with
        // the last fragments sent: every delta precedes the step's end.
        tokio::join!(call, deltas).0
    };
    let result = tokio::select! {
        r = model_call => r,
        _ = cx.stop.cancelled() => {
            step.error = Some(ErrorInfo { code: "interrupted".into(), message: "worker shutting down".into() });
            step.retryable = Some(true);
            cx.done(step, StepStatus::Cancelled);
            return Ok(Call::Over(Outcome::Interrupted));
        }
        _ = cx.cancel.cancelled() => {
            step.error = Some(ErrorInfo { code: codes::CANCELLED.into(), message: "cancelled by the client; the model call was aborted".into() });
            step.retryable = Some(false);
            cx.done(step, StepStatus::Cancelled);
            return Ok(Call::Over(Outcome::Cancelled));
        }
    };
    match result {
        Ok(generation) => {
            let (generated, removed) = output_of(cx, &generation, &endpoint);
            step.usage = Some(generated.usage);
            step.output = Some(if removed > 0 {
                // What Postgres cannot store was taken out; the trace says so.
                json!({
                    "output": mask_json(&generated.output),
                    "sanitized": format!("{removed} NUL character(s) removed from the model's answer"),
                })
            } else {
                mask_json(&generated.output)
            });
            cx.done(step, StepStatus::Succeeded);
            let usage = generated.usage;
            metrics::counter!(m::TOKENS, "model" => model.to_string(), "kind" => "prompt")
                .increment(usage.prompt_tokens.max(0) as u64);
            metrics::counter!(m::TOKENS, "model" => model.to_string(), "kind" => "completion")
                .increment(usage.completion_tokens.max(0) as u64);
            Ok(Call::Done(generated))
        }
        Err(e) => {
            let failure = Failure::from(&e);
            step.error = Some(failure.error.clone());
            step.retryable = Some(failure.retryable);
            cx.done(step, StepStatus::Failed);
            Ok(Call::Failed(failure))
        }
    }
}

/// The answer as the execution keeps it: parsed for JSON output (when it
/// parses; `validate` judges it), else the text; with what Postgres cannot
/// store removed (and how many characters were).
fn output_of(cx: &Cx<'_>, generation: &Generation, endpoint: &Endpoint) -> (Generated, usize) {
    let mut usage: Usage = generation.usage;
    usage.cost_usd = endpoint.cost(&usage);
    let (mut output, not_json) = if wants_json(cx) {
        match serde_json::from_str(&generation.content) {
            Ok(v) => (v, None),
            Err(e) => (
                Value::String(generation.content.clone()),
                Some(e.to_string()),
            ),
        }
    } else {
        (Value::String(generation.content.clone()), None)
    };
    let removed = sanitize::strip_nul(&mut output);
    (
        Generated {
            output,
            usage,
            not_json,
        },
        removed,
    )
}

/// The prompt asks for JSON output.
pub fn wants_json(cx: &Cx<'_>) -> bool {
    cx.prompt
        .definition
        .output
        .get("type")
        .and_then(Value::as_str)
        == Some("json")
}

//! `generate`: the model call, the only paid step. A checkpointed result
//! is never paid for twice. For a `json` prompt the call asks for JSON the
//! way the model's `structured_output` setting says (the schema in
//! `response_format`, or JSON mode / nothing plus the schema in the system
//! message); `validate` calls [`generate`] again with a [`Repair`] when
//! the answer breaks the contract. A retryable failure of the primary model asks
//! `crate::retry` whether to try again later; once the primary's attempts
//! are spent, the fallback model (the prompt's, else the model config's)
//! gets one call.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use llmq_shared::execution::{codes, ErrorInfo, Usage};
use llmq_shared::mask::mask_json;
use llmq_shared::metrics as m;
use llmq_shared::prompt::{ChatMessage, InputViolation};
use llmq_shared::sanitize;
use llmq_shared::step::{self as step_row, StepKind, StepStatus};
use serde_json::{json, Value};

use super::{deltas, Cx, Generated, Outcome, Outputs, Step};
use crate::provider::{Endpoint, Generation, ProviderClient, ProviderError};
use crate::provider_limits::{Admission, ModelLimits, Settle};
use crate::retry::{Decision, RetryPolicy};
use crate::runner::PipelineError;
use llmq_shared::prompt::tokens;
use serde_json::Map;

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
        generate(cx, out, None).boxed()
    }

    /// A model turn that asked for tools is a checkpoint of the tool
    /// rounds, not the step's answer.
    fn is_checkpoint(&self, row: &step_row::Step) -> bool {
        !crate::tools::rounds::is_tool_round(row)
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
            (Value::String(text), true) => parse_json(text).err(),
            _ => None,
        };
        out.generated = Some(Generated {
            output,
            usage,
            not_json,
            cached: cx.execution.cached
                || checkpoint.params.as_ref().and_then(|p| p.get("cached"))
                    == Some(&Value::Bool(true)),
        });
        Ok(())
    }
}

/// What a repair adds to the rendered messages: the rejected answer and
/// why it was rejected.
pub struct Repair {
    /// The answer as the model gave it.
    pub answer: String,
    pub errors: Vec<InputViolation>,
    /// The `validate` step that rejected it.
    pub validate_seq: i32,
}

impl Repair {
    /// The user message that asks for a corrected answer.
    fn message(&self) -> String {
        let mut text =
            String::from("Your previous answer does not satisfy the required JSON output:\n");
        for e in &self.errors {
            text.push_str(&format!("- {}: {}\n", e.path, e.message));
        }
        text.push_str("Answer again with only the corrected JSON value, and no other text.");
        text
    }
}

/// One model call for the execution (the first answer, or a repair of a
/// rejected one), with the retry decision and the fallback model when it
/// fails: `Continue` with the answer in `out`, or how the run ends.
pub async fn generate(
    cx: &mut Cx<'_>,
    out: &mut Outputs,
    repair: Option<&Repair>,
) -> Result<Outcome, PipelineError> {
    if cx.cancel.is_cancelled() {
        return Ok(Outcome::Cancelled);
    }
    // A version with tools talks to the model in rounds; a repair of its
    // answer is one plain call.
    if repair.is_none() && !cx.prompt.definition.tools.is_empty() {
        return crate::tools::rounds::converse(cx, out).await;
    }
    let primary = cx.execution.model.clone();
    let failure = match call(cx, out, &primary, None, repair).await? {
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
    Ok(
        match call(cx, out, &fallback, Some(&primary), repair).await? {
            Call::Done(generated) => keep(out, generated),
            Call::Over(outcome) => outcome,
            Call::Failed(failure) => Outcome::Fail(failure.error),
        },
    )
}

/// The messages sent for a `json` prompt: the rendered ones with the JSON
/// instruction at the end of the system message (one is added if the
/// prompt has none), then, for a repair, the rejected answer and the
/// errors. Answers the messages and what was added, for the trace.
pub(crate) fn messages_for(
    cx: &Cx<'_>,
    endpoint: &Endpoint,
    rendered: &[ChatMessage],
    repair: Option<&Repair>,
) -> (Vec<ChatMessage>, Value) {
    let mut messages = rendered.to_vec();
    if !wants_json(cx) {
        return (messages, Value::Null);
    }
    let schema = cx.prompt.definition.output.schema();
    let instruction = match schema {
        Some(schema) if endpoint.needs_schema_in_prompt(Some(schema)) => format!(
            "Answer with one JSON value only, and no other text. It must conform to this JSON Schema:\n{schema}"
        ),
        _ => "Answer with one JSON value only, and no other text.".to_string(),
    };
    match messages.first_mut() {
        Some(first) if first.role == "system" => {
            first.content = format!("{}\n\n{instruction}", first.content);
        }
        _ => messages.insert(
            0,
            ChatMessage {
                role: "system".into(),
                content: instruction.clone(),
            },
        ),
    }
    let mut added = json!({ "json_instruction": instruction });
    if let Some(repair) = repair {
        let turn = [
            ChatMessage {
                role: "assistant".into(),
                content: repair.answer.clone(),
            },
            ChatMessage {
                role: "user".into(),
                content: repair.message(),
            },
        ];
        added["repair_of_step"] = json!(repair.validate_seq);
        added["repair_messages"] = json!(turn);
        messages.extend(turn);
    }
    (messages, added)
}

/// A JSON answer, leniently: as is, or inside one Markdown code fence
/// (small models often add one). The error says why it is not JSON.
pub fn parse_json(text: &str) -> Result<Value, String> {
    let first = match serde_json::from_str(text.trim()) {
        Ok(v) => return Ok(v),
        Err(e) => e.to_string(),
    };
    let fenced = text
        .trim()
        .strip_prefix("```")
        .and_then(|rest| rest.strip_suffix("```"))
        .map(|inner| inner.trim_start_matches("json").trim());
    match fenced.map(serde_json::from_str::<Value>) {
        Some(Ok(v)) => Ok(v),
        _ => Err(first),
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
    repair: Option<&Repair>,
) -> Result<Call, PipelineError> {
    let rendered = out.rendered()?;
    let endpoint = Endpoint::resolve(&cx.ctx.settings, model);
    let params = cx.execution.params.as_object().cloned().unwrap_or_default();
    let (messages, added) = messages_for(cx, &endpoint, &rendered.messages, repair);
    let output = &cx.prompt.definition.output;
    let format = wants_json(cx)
        .then(|| endpoint.response_format(&cx.prompt.name, output.schema(), output.strict()))
        .flatten();
    let streamed = cx.execution.stream;
    let body =
        ProviderClient::request_body(&endpoint, &messages, &params, format.as_ref(), streamed);
    let mut step = cx.begin(StepKind::Generate);
    step.model = Some(model.to_string());
    let mut recorded_params = params;
    if let Some(primary) = fallback_for {
        recorded_params.insert("fallback_for".into(), Value::String(primary.to_string()));
    }
    step.params = Some(Value::Object(recorded_params));
    // The rendered messages are in the render step's output, not stored
    // twice; what this call added to them (the JSON instruction, a
    // repair's answer and errors) and the format asked for are here.
    let mut input = json!({ "messages_from_step": rendered.seq, "message_count": messages.len() });
    if !added.is_null() {
        input["added"] = mask_json(&added);
    }
    if let Some(format) = &format {
        input["response_format"] = format.clone();
    }
    step.input = Some(input);
    // The response cache, for the execution's first call only: a hit is
    // the answer, with no model call.
    if repair.is_none() && fallback_for.is_none() {
        if let Some(plan) = crate::cache::plan(cx, &body) {
            if let Some(output) = crate::cache::lookup(&cx.ctx.redis, &plan).await {
                return Ok(Call::Done(cached_answer(cx, step, output)));
            }
            cx.cache = Some(plan);
        }
    }
    let timeout = Duration::from_secs(
        cx.prompt
            .definition
            .limits
            .generate_timeout_secs
            .unwrap_or(cx.ctx.settings.provider.timeout_secs),
    );
    // Provider limits first: a call without capacity is not made, and its
    // step is not even started.
    let limits = cx
        .ctx
        .settings
        .models
        .get(model)
        .and_then(|m| ModelLimits::of(model, m));
    let permit = match &limits {
        None => None,
        Some(l) => {
            let estimate = if l.tpm > 0 {
                estimate_tokens(cx, model, &messages, &params_of(&body))
            } else {
                0
            };
            let lease = timeout + LEASE_MARGIN;
            match cx.ctx.limits.acquire(l, estimate, lease).await {
                Admission::Go(permit) => permit,
                Admission::Wait { limit, delay } => {
                    let error = ErrorInfo {
                        code: codes::PROVIDER_CAPACITY.into(),
                        message: format!(
                            "model {model}: no room under its provider limit ({limit}); deferred {} ms",
                            delay.as_millis()
                        ),
                    };
                    return Ok(Call::Over(Outcome::Defer { error, delay }));
                }
            }
        }
    };
    // "Started" is written beside the call, not before it: the row is a
    // trace (committed asynchronously; nothing decides on it), so the
    // call need not wait for its commit. It is queued before the call and
    // awaited on every way out of here, so it is in before the step's end
    // is written and the log's order holds; a lease found lost then
    // discards the answer.
    let mut started_rows = cx.take_pending();
    started_rows.push(step.clone());
    let started = cx.ctx.writer.record_started(started_rows);
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
            let _ = started.await;
            if let Some(permit) = permit {
                cx.ctx.limits.release(permit, Settle::Unknown).await;
            }
            step.error = Some(ErrorInfo { code: "interrupted".into(), message: "worker shutting down".into() });
            step.retryable = Some(true);
            cx.done(step, StepStatus::Cancelled);
            return Ok(Call::Over(Outcome::Interrupted));
        }
        _ = cx.cancel.cancelled() => {
            let _ = started.await;
            if let Some(permit) = permit {
                cx.ctx.limits.release(permit, Settle::Unknown).await;
            }
            step.error = Some(ErrorInfo { code: codes::CANCELLED.into(), message: "cancelled by the client; the model call was aborted".into() });
            step.retryable = Some(false);
            cx.done(step, StepStatus::Cancelled);
            return Ok(Call::Over(Outcome::Cancelled));
        }
    };
    if let Some(permit) = permit {
        let settle = match &result {
            Ok(g) => Settle::Used(i64::from(g.usage.total_tokens)),
            Err(ProviderError::RateLimited { retry_after, .. }) => Settle::NotCounted {
                pause: *retry_after,
            },
            Err(ProviderError::Connection(_)) => Settle::NotCounted { pause: None },
            Err(_) => Settle::Unknown,
        };
        cx.ctx.limits.release(permit, settle).await;
    } else if let (
        Some(l),
        Err(ProviderError::RateLimited {
            retry_after: Some(pause),
            ..
        }),
    ) = (&limits, &result)
    {
        // Admitted while Redis was out of reach: the pause still applies.
        cx.ctx.limits.pause(l, *pause).await;
    }
    if !started.await? {
        return Ok(Call::Over(Outcome::LeaseLost));
    }
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
pub(crate) fn output_of(
    cx: &Cx<'_>,
    generation: &Generation,
    endpoint: &Endpoint,
) -> (Generated, usize) {
    let mut usage: Usage = generation.usage;
    usage.cost_usd = endpoint.cost(&usage);
    let (mut output, not_json) = if wants_json(cx) {
        match parse_json(&generation.content) {
            Ok(v) => (v, None),
            Err(e) => (Value::String(generation.content.clone()), Some(e)),
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
            cached: false,
        },
        removed,
    )
}

/// A cache hit recorded as the `generate` step it stands for: marked
/// `cached` in its parameters, no tokens, no cost.
fn cached_answer(cx: &mut Cx<'_>, mut step: step_row::Step, output: Value) -> Generated {
    let usage = Usage {
        cost_usd: Some(0.0),
        ..Usage::default()
    };
    if let Some(Value::Object(params)) = step.params.as_mut() {
        params.insert("cached".into(), Value::Bool(true));
    }
    step.usage = Some(usage);
    step.output = Some(mask_json(&output));
    cx.done(step, StepStatus::Succeeded);
    let not_json = match (&output, wants_json(cx)) {
        (Value::String(text), true) => parse_json(text).err(),
        _ => None,
    };
    Generated {
        output,
        usage,
        not_json,
        cached: true,
    }
}

/// How long a provider-limit slot is held at most beyond the call's timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The completion tokens reserved when a request names no `max_tokens`.
const DEFAULT_COMPLETION_ESTIMATE: u32 = 1024;

fn params_of(body: &Value) -> Map<String, Value> {
    body.as_object().cloned().unwrap_or_default()
}

/// What a call may cost in tokens, reserved under a `tpm` limit before
/// it is made: the messages counted by the model's tokenizer (plus a few
/// tokens of framing each), and the completion's `max_tokens`.
fn estimate_tokens(
    cx: &Cx<'_>,
    model: &str,
    messages: &[ChatMessage],
    params: &Map<String, Value>,
) -> u32 {
    let tokenizer = tokens::tokenizer_for(model, cx.prompt.definition.tokenizer.as_deref());
    let prompt: usize = messages
        .iter()
        .map(|m| tokens::count_tokens(tokenizer, &m.content) + 4)
        .sum();
    let completion = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| params.get(*k).and_then(Value::as_u64))
        .map_or(DEFAULT_COMPLETION_ESTIMATE, |n| {
            n.min(u32::MAX as u64) as u32
        });
    (prompt.min(u32::MAX as usize) as u32).saturating_add(completion)
}

/// The prompt asks for JSON output.
pub fn wants_json(cx: &Cx<'_>) -> bool {
    cx.prompt.definition.output.is_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_parsed_as_is_or_inside_one_code_fence() {
        assert_eq!(parse_json(" {\"a\": 1} "), Ok(json!({"a": 1})));
        assert_eq!(parse_json("```json\n{\"a\": 1}\n```"), Ok(json!({"a": 1})));
        assert_eq!(parse_json("```\n[1]\n```"), Ok(json!([1])));
        assert!(parse_json("Sure! {\"a\": 1}").is_err());
    }

    #[test]
    fn a_repair_lists_every_error() {
        let repair = Repair {
            answer: "{}".into(),
            errors: vec![
                InputViolation {
                    path: "output.sentiment".into(),
                    message: "required property missing".into(),
                },
                InputViolation {
                    path: "output.mood".into(),
                    message: "property not allowed by the schema".into(),
                },
            ],
            validate_seq: 3,
        };
        let m = repair.message();
        assert!(
            m.contains("- output.sentiment: required property missing"),
            "{m}"
        );
        assert!(m.contains("- output.mood: property not allowed"), "{m}");
    }
}

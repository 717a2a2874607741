//! The tool rounds of a `generate` step. The model is offered the prompt
//! version's tools (OpenAI `tools` format; the first turn with the
//! version's `tool_choice`, if it names one) and answers with text or tool
//! calls; llmq decides each call: a tool the version does not allow is
//! refused (`tool_not_allowed`), arguments that break the tool's schema are
//! refused with the errors (`tool_invalid_arguments`), and both refusals
//! are told to the model in its tool message; the others are called,
//! concurrently within `tools.max_parallel`. Rounds go on until the model
//! answers, or `limits.max_tool_rounds` / `limits.max_tool_calls` end the
//! execution (`tool_rounds_exceeded`, `tool_calls_exceeded`).
//!
//! Every model turn is a `generate` row (a turn that asked for tools has
//! `input.answered_with = "tool_calls"`, and is not the step's final
//! answer), every call a `tool:<name>` row: the trace. The rows are also
//! the checkpoints a resumed run rebuilds the conversation from:
//!
//! - a turn that asked for tools is written (with its calls' "started"
//!   rows) before any of its calls is made, so the calls a resumed run
//!   finds are the same calls, with the same `Idempotency-Key`s;
//! - a call that ended (succeeded, failed or refused) is never made again:
//!   the model is told what it was told the first time;
//! - a call still `running` (its worker died) is made again only if the
//!   tool is idempotent; otherwise the execution fails
//!   `tool_outcome_unknown`. That is knowable because a round with a
//!   non-idempotent call commits its "started" rows synchronously before
//!   the call, and its results synchronously after (idempotent rounds use
//!   the cheaper asynchronous commit of "started" rows).
//!
//! A resumed conversation is rebuilt from the trace, whose texts are masked
//! (`llmq_shared::mask`): the model then sees the masked form of earlier
//! arguments and results.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use llmq_shared::db::{tools as db_tools, DbError};
use llmq_shared::execution::{codes, ErrorInfo, Usage};
use llmq_shared::mask::{mask_json, mask_text};
use llmq_shared::metrics as m;
use llmq_shared::step::{self as step_row, StepKind, StepStatus};
use llmq_shared::tool::{CompiledTool, ToolDefinition};
use serde_json::{json, Value};

use super::call::error_content;
use crate::provider::{Endpoint, Generation, ProposedCall, ProviderClient};
use crate::retry::{Decision, RetryPolicy};
use crate::runner::PipelineError;
use crate::steps::generate::{messages_for, output_of};
use crate::steps::{Cx, Outcome, Outputs};

/// `input.answered_with` of a model turn that asked for tools.
pub const ANSWERED_WITH_TOOLS: &str = "tool_calls";

/// Whether a `generate` row is a turn that asked for tools, not the
/// step's answer.
pub fn is_tool_round(row: &step_row::Step) -> bool {
    row.input
        .as_ref()
        .and_then(|i| i.get("answered_with"))
        .and_then(Value::as_str)
        == Some(ANSWERED_WITH_TOOLS)
}

/// One model turn that asked for tools.
struct Round {
    number: u32,
    content: String,
    calls: Vec<ProposedCall>,
}

/// The conversation an earlier run left, rebuilt from its rows.
#[derive(Default)]
struct Earlier {
    rounds: BTreeMap<u32, Round>,
    /// (round, call index) → what the model was told.
    told: HashMap<(u32, usize), String>,
    /// Calls whose worker died during them.
    in_flight: HashSet<(u32, usize)>,
    usage: Usage,
}

fn number(v: Option<&Value>, key: &str) -> Option<u64> {
    v.and_then(|v| v.get(key)).and_then(Value::as_u64)
}

fn rebuild(earlier: &[step_row::Step]) -> Earlier {
    let mut e = Earlier::default();
    for s in earlier {
        match &s.kind {
            StepKind::Generate if s.status == StepStatus::Succeeded && is_tool_round(s) => {
                let Some(n) = number(s.input.as_ref(), "round") else {
                    continue;
                };
                let output = s.output.clone().unwrap_or_default();
                let calls =
                    serde_json::from_value(output["tool_calls"].clone()).unwrap_or_default();
                let content = output["content"].as_str().unwrap_or_default().to_string();
                if let Some(u) = s.usage {
                    add_usage(&mut e.usage, &u);
                }
                e.rounds.insert(
                    n as u32,
                    Round {
                        number: n as u32,
                        content,
                        calls,
                    },
                );
            }
            StepKind::Tool(_) => {
                let input = s.input.as_ref();
                let (Some(r), Some(i)) = (number(input, "round"), number(input, "call_index"))
                else {
                    continue;
                };
                let key = (r as u32, i as usize);
                let lost = matches!(s.status, StepStatus::Running | StepStatus::Cancelled)
                    || s.error
                        .as_ref()
                        .is_some_and(|e| e.code == codes::WORKER_LOST);
                if lost {
                    e.told.remove(&key);
                    e.in_flight.insert(key);
                } else {
                    let told = s
                        .output
                        .as_ref()
                        .and_then(|o| o.get("content"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or_else(|| s.error.as_ref().map(error_content))
                        .unwrap_or_default();
                    e.in_flight.remove(&key);
                    e.told.insert(key, told);
                }
            }
            _ => {}
        }
    }
    e
}

fn add_usage(total: &mut Usage, u: &Usage) {
    total.prompt_tokens += u.prompt_tokens;
    total.completion_tokens += u.completion_tokens;
    total.total_tokens += u.total_tokens;
}

/// The model's turn as the next request repeats it. A turn without text
/// has no `content` at all: OpenAI takes that (content is optional beside
/// `tool_calls`), and llama-cpp-python's server refuses `"content": null`.
fn assistant_message(round: &Round) -> Value {
    let mut message = json!({
        "role": "assistant",
        "tool_calls": round.calls.iter().map(|c| json!({
            "id": c.id,
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments},
        })).collect::<Vec<_>>(),
    });
    if !round.content.is_empty() {
        message["content"] = Value::String(round.content.clone());
    }
    message
}

fn tool_message(call: &ProposedCall, content: &str) -> Value {
    json!({"role": "tool", "tool_call_id": call.id, "content": content})
}

/// The `generate` step of a version with tools: `Continue` with the
/// answer in `out`, or how the run ends.
pub async fn converse(cx: &mut Cx<'_>, out: &mut Outputs) -> Result<Outcome, PipelineError> {
    let tools = match available(cx).await? {
        Ok(tools) => tools,
        Err(error) => return Ok(Outcome::Fail(error)),
    };
    let offered: Vec<Value> = tools
        .iter()
        .map(|(name, tool)| tool.definition.function(name))
        .collect();
    let earlier = rebuild(cx.earlier);
    let model = cx.execution.model.clone();
    let endpoint = Endpoint::resolve(&cx.ctx.settings, &model);
    let (rendered_seq, base, added) = {
        let rendered = out.rendered()?;
        let (base, added) = messages_for(cx, &endpoint, &rendered.messages, None);
        (rendered.seq, base, added)
    };
    let mut messages: Vec<Value> = base.iter().map(|m| json!(m)).collect();
    let mut usage = earlier.usage;
    let mut calls_made = 0u32;
    let mut rounds_done = 0u32;
    // Replay what an earlier run did; answer the calls it left unanswered.
    for round in earlier.rounds.values() {
        messages.push(assistant_message(round));
        calls_made += round.calls.len() as u32;
        rounds_done = round.number;
        let told = match answer_round(cx, &tools, round, &earlier.told, &earlier.in_flight).await? {
            Ok(told) => told,
            Err(outcome) => return Ok(outcome),
        };
        for (i, call) in round.calls.iter().enumerate() {
            messages.push(tool_message(call, told.get(&i).map_or("", String::as_str)));
        }
    }
    let limits = &cx.prompt.definition.limits;
    let (max_rounds, max_calls) = (limits.max_tool_rounds(), limits.max_tool_calls());
    loop {
        if cx.cancel.is_cancelled() {
            return Ok(Outcome::Cancelled);
        }
        let number = rounds_done + 1;
        let mut step = cx.begin(StepKind::Generate);
        let generation = match model_call(
            cx,
            &endpoint,
            &model,
            &messages,
            &offered,
            &mut step,
            (rendered_seq, number, &added),
        )
        .await?
        {
            Ok(g) => g,
            Err(outcome) => return Ok(outcome),
        };
        add_usage(&mut usage, &generation.usage);
        step.usage = Some(generation.usage);
        metrics::counter!(m::TOKENS, "model" => model.clone(), "kind" => "prompt")
            .increment(generation.usage.prompt_tokens.max(0) as u64);
        metrics::counter!(m::TOKENS, "model" => model.clone(), "kind" => "completion")
            .increment(generation.usage.completion_tokens.max(0) as u64);
        if generation.tool_calls.is_empty() {
            let (mut generated, _removed) = output_of(cx, &generation, &endpoint);
            usage.cost_usd = endpoint.cost(&usage);
            generated.usage = usage;
            step.output = Some(mask_json(&generated.output));
            cx.done(step, StepStatus::Succeeded);
            out.generated = Some(generated);
            return Ok(Outcome::Continue);
        }
        let round = Round {
            number,
            content: generation.content.clone(),
            calls: generation.tool_calls.clone(),
        };
        if let Some(input) = step.input.as_mut() {
            input["answered_with"] = json!(ANSWERED_WITH_TOOLS);
        }
        step.output = Some(json!({
            "tool_calls": round.calls.iter().map(|c| json!({
                "id": c.id, "name": c.name, "arguments": mask_text(&c.arguments),
            })).collect::<Vec<_>>(),
            "content": mask_text(&round.content),
        }));
        cx.done(step, StepStatus::Succeeded);
        if number > max_rounds {
            return Ok(Outcome::Fail(ErrorInfo {
                code: codes::TOOL_ROUNDS_EXCEEDED.into(),
                message: format!(
                    "the model still asked for tools after {max_rounds} round(s) (limits.max_tool_rounds)"
                ),
            }));
        }
        calls_made += round.calls.len() as u32;
        if calls_made > max_calls {
            return Ok(Outcome::Fail(ErrorInfo {
                code: codes::TOOL_CALLS_EXCEEDED.into(),
                message: format!(
                    "the model asked for {calls_made} tool calls, more than {max_calls} (limits.max_tool_calls)"
                ),
            }));
        }
        messages.push(assistant_message(&round));
        let told = match answer_round(cx, &tools, &round, &HashMap::new(), &HashSet::new()).await? {
            Ok(told) => told,
            Err(outcome) => return Ok(outcome),
        };
        for (i, call) in round.calls.iter().enumerate() {
            messages.push(tool_message(call, told.get(&i).map_or("", String::as_str)));
        }
        rounds_done = number;
    }
}

/// The tools one execution may call, by name: the tool files', and the
/// tenant's own definitions (registered through the API), which win for
/// its executions.
type Available = BTreeMap<String, Arc<CompiledTool>>;

/// The version's tools for this execution's tenant; the inner error when
/// one of them is defined nowhere (or its stored definition no longer
/// compiles).
async fn available(cx: &Cx<'_>) -> Result<Result<Available, ErrorInfo>, PipelineError> {
    let names = &cx.prompt.definition.tools;
    let mut tools: Available = names
        .iter()
        .filter_map(|n| cx.ctx.tools.tools.get(n).map(|t| (n.clone(), t.clone())))
        .collect();
    let tenant = &cx.execution.tenant_id;
    let client = cx.ctx.pool.get().await.map_err(DbError::from)?;
    for stored in db_tools::named_tools(&client, tenant, names).await? {
        let compiled = ToolDefinition::from_json(&stored.definition)
            .map_err(|e| vec![e])
            .and_then(|d| CompiledTool::compile_for_tenant(tenant, &stored.name, d));
        match compiled {
            Ok(tool) => {
                tools.insert(stored.name.clone(), Arc::new(tool));
            }
            Err(errors) => {
                return Ok(Err(ErrorInfo {
                    code: codes::TOOL_UNDEFINED.into(),
                    message: format!(
                        "the stored definition of tool {} does not compile: {}",
                        stored.name,
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                }))
            }
        }
    }
    if let Some(missing) = names.iter().find(|n| !tools.contains_key(*n)) {
        return Ok(Err(ErrorInfo {
            code: codes::TOOL_UNDEFINED.into(),
            message: format!(
                "prompt {} v{} allows tool {missing:?}, which is neither a tool file of this worker (tools_dir) nor registered by the tenant (PUT /v1/tools/{missing})",
                cx.prompt.name, cx.prompt.version
            ),
        }));
    }
    Ok(Ok(tools))
}

/// One model turn, recorded before (with the rows waiting) and after a
/// failure; on success the caller finishes `step`.
async fn model_call(
    cx: &mut Cx<'_>,
    endpoint: &Endpoint,
    model: &str,
    messages: &[Value],
    offered: &[Value],
    step: &mut step_row::Step,
    (rendered_seq, round, added): (i32, u32, &Value),
) -> Result<Result<Generation, Outcome>, PipelineError> {
    let params = cx.execution.params.as_object().cloned().unwrap_or_default();
    let output = &cx.prompt.definition.output;
    let format = output
        .is_json()
        .then(|| endpoint.response_format(&cx.prompt.name, output.schema(), output.strict()))
        .flatten();
    let mut body = ProviderClient::request_body(endpoint, &[], &params, format.as_ref(), false);
    body["messages"] = Value::Array(messages.to_vec());
    body["tools"] = Value::Array(offered.to_vec());
    // The version's `tool_choice` binds the first turn only (a forced call
    // on every turn would never let the model answer).
    let tool_choice = (round == 1)
        .then(|| cx.prompt.definition.first_tool_choice())
        .flatten();
    step.model = Some(model.to_string());
    step.params = Some(Value::Object(params));
    let mut input = json!({
        "messages_from_step": rendered_seq,
        "message_count": messages.len(),
        "round": round,
        "tools": cx.prompt.definition.tools,
    });
    if let Some(choice) = tool_choice {
        input["tool_choice"] = choice.clone();
        body["tool_choice"] = choice;
    }
    if !added.is_null() {
        input["added"] = mask_json(added);
    }
    if let Some(format) = &format {
        input["response_format"] = format.clone();
    }
    step.input = Some(input);
    if !cx.record_started(step.clone()).await? {
        return Ok(Err(Outcome::LeaseLost));
    }
    let timeout = Duration::from_secs(
        cx.prompt
            .definition
            .limits
            .generate_timeout_secs
            .unwrap_or(cx.ctx.settings.provider.timeout_secs),
    );
    let result = tokio::select! {
        r = cx.ctx.provider.chat(endpoint, &body, timeout) => r,
        _ = cx.stop.cancelled() => {
            let mut step = step.clone();
            step.error = Some(ErrorInfo { code: "interrupted".into(), message: "worker shutting down".into() });
            step.retryable = Some(true);
            cx.done(step, StepStatus::Cancelled);
            return Ok(Err(Outcome::Interrupted));
        }
        _ = cx.cancel.cancelled() => {
            let mut step = step.clone();
            step.error = Some(ErrorInfo { code: codes::CANCELLED.into(), message: "cancelled by the client; the model call was aborted".into() });
            step.retryable = Some(false);
            cx.done(step, StepStatus::Cancelled);
            return Ok(Err(Outcome::Cancelled));
        }
    };
    match result {
        Ok(generation) => Ok(Ok(generation)),
        Err(e) => {
            let error = ErrorInfo {
                code: e.code().into(),
                message: e.to_string(),
            };
            let mut failed = step.clone();
            failed.error = Some(error.clone());
            failed.retryable = Some(e.is_retryable());
            cx.done(failed, StepStatus::Failed);
            let policy = RetryPolicy::new(&cx.ctx.settings.worker, &cx.prompt.definition.limits);
            let attempt = cx.execution.attempts.max(1) as u32;
            Ok(Err(
                match policy.decide(attempt, e.is_retryable(), e.retry_after()) {
                    Decision::RetryAfter(delay) => Outcome::Retry { error, delay },
                    Decision::GiveUp => Outcome::Fail(error),
                },
            ))
        }
    }
}

/// What llmq does with one proposed call.
enum Proposal {
    Refuse(ErrorInfo),
    Call(Arc<CompiledTool>, Value),
}

fn decide(cx: &Cx<'_>, tools: &Available, call: &ProposedCall) -> Proposal {
    let allowed = &cx.prompt.definition.tools;
    if !allowed.contains(&call.name) {
        return Proposal::Refuse(ErrorInfo {
            code: codes::TOOL_NOT_ALLOWED.into(),
            message: format!(
                "tool {:?} is not allowed here; the tools you may call are: {}",
                call.name,
                allowed.join(", ")
            ),
        });
    }
    let Some(tool) = tools.get(&call.name) else {
        return Proposal::Refuse(ErrorInfo {
            code: codes::TOOL_UNDEFINED.into(),
            message: format!("tool {:?} is not defined", call.name),
        });
    };
    let text = if call.arguments.trim().is_empty() {
        "{}"
    } else {
        call.arguments.as_str()
    };
    let invalid = |message: String| {
        Proposal::Refuse(ErrorInfo {
            code: codes::TOOL_INVALID_ARGUMENTS.into(),
            message,
        })
    };
    let arguments: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return invalid(format!("the arguments of {} are not JSON: {e}", call.name)),
    };
    let violations = tool.validate_arguments(&arguments);
    if !violations.is_empty() {
        let list: Vec<String> = violations
            .iter()
            .map(|v| format!("{}: {}", v.path, v.message))
            .collect();
        return invalid(format!(
            "the arguments of {} break its schema: {}",
            call.name,
            list.join("; ")
        ));
    }
    Proposal::Call(tool.clone(), arguments)
}

/// The step kind of a proposed call: its name, made safe for a trace.
fn kind_of(name: &str) -> StepKind {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    StepKind::Tool(if clean.is_empty() {
        "unnamed".into()
    } else {
        clean
    })
}

/// The key a tool can deduplicate a call by: the same for every try and
/// every resumed run of the same call.
fn idempotency_key(cx: &Cx<'_>, round: u32, index: usize) -> String {
    format!("llmq-{}-{round}-{index}", cx.execution.id.0)
}

/// Answers every call of `round`: from `told` when an earlier run ended
/// it, else by refusing or making it. `Err` is how the run ends instead.
async fn answer_round(
    cx: &mut Cx<'_>,
    tools: &Available,
    round: &Round,
    told: &HashMap<(u32, usize), String>,
    in_flight: &HashSet<(u32, usize)>,
) -> Result<Result<HashMap<usize, String>, Outcome>, PipelineError> {
    let mut answers = HashMap::new();
    let mut to_call = Vec::new();
    for (index, call) in round.calls.iter().enumerate() {
        if let Some(text) = told.get(&(round.number, index)) {
            answers.insert(index, text.clone());
            continue;
        }
        let mut step = cx.begin(kind_of(&call.name));
        let key = idempotency_key(cx, round.number, index);
        let arguments_for_trace = serde_json::from_str::<Value>(&call.arguments)
            .unwrap_or_else(|_| Value::String(call.arguments.clone()));
        step.input = Some(json!({
            "round": round.number,
            "call_index": index,
            "call_id": call.id,
            "arguments": mask_json(&arguments_for_trace),
            "idempotency_key": key,
        }));
        match decide(cx, tools, call) {
            Proposal::Refuse(error) => {
                let content = error_content(&error);
                step.output = Some(json!({"content": mask_text(&content)}));
                step.error = Some(error);
                step.retryable = Some(false);
                cx.done(step, StepStatus::Failed);
                answers.insert(index, content);
            }
            Proposal::Call(tool, arguments) => {
                let d = &tool.definition;
                step.params = Some(json!({
                    "method": d.endpoint.method,
                    "url": d.endpoint.url,
                    "timeout_ms": d.timeout_ms,
                    "max_attempts": d.retry.max_attempts,
                    "idempotent": d.idempotent,
                }));
                if in_flight.contains(&(round.number, index)) && !d.idempotent {
                    let error = ErrorInfo {
                        code: codes::TOOL_OUTCOME_UNKNOWN.into(),
                        message: format!(
                            "tool {} (not idempotent) was being called when its worker stopped; whether the call happened is unknown, so it is not made again",
                            tool.name
                        ),
                    };
                    return Ok(Err(cx.fail(step, error)));
                }
                to_call.push((index, tool, arguments, step, key));
            }
        }
    }
    if to_call.is_empty() {
        return Ok(Ok(answers));
    }
    let durable = to_call.iter().any(|c| !c.1.definition.idempotent);
    let started: Vec<step_row::Step> = to_call.iter().map(|c| c.3.clone()).collect();
    if !cx.write_now(started, durable).await? {
        return Ok(Err(Outcome::LeaseLost));
    }
    let ctx = cx.ctx;
    let bound = ctx.settings.tools.max_parallel.max(1);
    let results: Vec<(usize, step_row::Step, String)> = futures::stream::iter(to_call)
        .map(|(index, tool, arguments, mut step, key)| async move {
            let outcome = ctx
                .tools
                .call(&ctx.settings, &tool, &arguments, &key)
                .await;
            step.output = Some(json!({
                "content": mask_text(&outcome.content),
                "http_status": outcome.http_status,
                "tries": outcome.tries,
                "truncated": outcome.truncated,
            }));
            let status = if outcome.error.is_none() {
                StepStatus::Succeeded
            } else {
                StepStatus::Failed
            };
            step.error = outcome.error;
            step.retryable = outcome.retryable;
            step.finish(status);
            metrics::counter!(m::TOOL_CALLS, "tool" => tool.name.clone(), "status" => status.as_str())
                .increment(1);
            (index, step, outcome.content)
        })
        .buffer_unordered(bound)
        .collect()
        .await;
    for (index, step, content) in results {
        cx.finished(step);
        answers.insert(index, content);
    }
    // What a non-idempotent call did must survive this worker.
    if durable && !cx.flush().await? {
        return Ok(Err(Outcome::LeaseLost));
    }
    Ok(Ok(answers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_names_are_made_safe_for_the_trace() {
        assert_eq!(kind_of("weather").name(), "tool:weather");
        assert_eq!(kind_of("rm -rf /").name(), "tool:rm-rf");
        assert_eq!(kind_of("").name(), "tool:unnamed");
    }
}

//! `validate`: the model's answer against the prompt's output contract
//! (`output.type = "json"`): it must be JSON and, when the version has an
//! `output.schema`, satisfy it. An answer that does not is repaired: the
//! errors go back to the model (the rejected answer as the assistant's
//! turn, then a user message listing every error) through
//! [`generate`], whose answer is committed as the new checkpoint before it
//! is validated in turn. Every check is a `validate` step row.
//!
//! Bounds: an execution gets at most `output.max_repairs` repairs in all,
//! counted from the failed checks its earlier attempts left, so neither a
//! retry nor a killed worker buys more model calls; past them it fails
//! with `invalid_output` and the errors. It follows the paid `generate`
//! step, so the runner commits the generate checkpoint before it runs: a
//! worker killed while validating leaves the answer on the row, and the
//! resumed run validates that answer without calling the model again.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use llmq_shared::execution::{codes, ErrorInfo, Usage};
use llmq_shared::mask::mask_json;
use llmq_shared::prompt::InputViolation;
use llmq_shared::step::{self as step_row, StepKind, StepStatus};
use serde_json::json;

use super::generate::{generate, wants_json, Repair};
use super::{Cx, Generated, Outcome, Outputs, Step};
use crate::runner::PipelineError;

pub struct Validate;

impl Step for Validate {
    fn kind(&self) -> StepKind {
        StepKind::Validate
    }

    fn applies(&self, cx: &Cx<'_>) -> bool {
        wants_json(cx)
    }

    fn run<'a>(
        &'a self,
        cx: &'a mut Cx<'_>,
        out: &'a mut Outputs,
    ) -> BoxFuture<'a, Result<Outcome, PipelineError>> {
        async move {
            if let Some(outcome) = test_delay(cx).await {
                return Ok(outcome);
            }
            let max_repairs = cx.prompt.definition.output.max_repairs();
            let mut failed = failed_checks(cx);
            loop {
                let mut step = cx.begin(StepKind::Validate);
                step.input = Some(json!({
                    "type": "json",
                    "schema": cx.prompt.definition.output.schema().is_some(),
                    "repairs_so_far": failed,
                }));
                let generated = out.generated()?;
                let errors = check(cx, generated);
                if errors.is_empty() {
                    step.output = Some(json!({ "valid": true }));
                    cx.done(step, StepStatus::Succeeded);
                    return Ok(Outcome::Continue);
                }
                step.output = Some(mask_json(&json!({ "valid": false, "errors": errors })));
                let listed = list(&errors);
                if failed >= max_repairs {
                    let error = ErrorInfo {
                        code: codes::INVALID_OUTPUT.into(),
                        message: format!(
                            "the model's answer breaks the output contract after {failed} repair(s): {listed}"
                        ),
                    };
                    return Ok(cx.fail(step, error));
                }
                failed += 1;
                step.error = Some(ErrorInfo {
                    code: codes::INVALID_OUTPUT.into(),
                    message: format!("{listed} (repair {failed} of {max_repairs} follows)"),
                });
                step.retryable = Some(true);
                let repair = Repair {
                    answer: generated.answer_text(),
                    errors,
                    validate_seq: step.seq,
                };
                let spent = generated.usage;
                cx.done(step, StepStatus::Failed);
                match generate(cx, out, Some(&repair)).await? {
                    Outcome::Continue => {}
                    Outcome::Defer { error, delay } => {
                        // The repair was not made: this check is not one
                        // of the repairs spent (the resumed run checks again).
                        if let Some(row) = cx.pending_mut(repair.validate_seq) {
                            row.error = Some(ErrorInfo {
                                code: codes::PROVIDER_CAPACITY.into(),
                                message: format!("the repair was deferred: {}", error.message),
                            });
                        }
                        return Ok(Outcome::Defer { error, delay });
                    }
                    other => return Ok(other),
                }
                // The execution's usage is every call's, repairs included.
                if let Some(repaired) = out.generated.as_mut() {
                    repaired.usage = add_usage(spent, repaired.usage);
                }
                // The repaired answer is durable before it is judged.
                if !cx.checkpoint(out).await? {
                    return Ok(Outcome::LeaseLost);
                }
            }
        }
        .boxed()
    }

    fn restore(
        &self,
        _cx: &mut Cx<'_>,
        _checkpoint: &step_row::Step,
        _out: &mut Outputs,
    ) -> Result<(), ErrorInfo> {
        // A passed check stays passed: the checkpointed answer is the one
        // it passed (each repair is checkpointed before it is checked).
        Ok(())
    }
}

/// Why the answer breaks the contract; empty when it keeps it.
fn check(cx: &Cx<'_>, generated: &Generated) -> Vec<InputViolation> {
    if let Some(reason) = &generated.not_json {
        return vec![InputViolation {
            path: "output".into(),
            message: format!("not JSON ({reason})"),
        }];
    }
    cx.prompt.validate_output(&generated.output)
}

fn add_usage(a: Usage, b: Usage) -> Usage {
    Usage {
        prompt_tokens: a.prompt_tokens.saturating_add(b.prompt_tokens),
        completion_tokens: a.completion_tokens.saturating_add(b.completion_tokens),
        total_tokens: a.total_tokens.saturating_add(b.total_tokens),
        cost_usd: match (a.cost_usd, b.cost_usd) {
            (None, None) => None,
            (x, y) => Some(x.unwrap_or(0.0) + y.unwrap_or(0.0)),
        },
    }
}

fn list(errors: &[InputViolation]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Failed checks earlier attempts of this execution left: each was
/// followed by a repair (or by the end of its run).
fn failed_checks(cx: &Cx<'_>) -> u32 {
    cx.earlier
        .iter()
        .filter(|s| {
            s.kind == StepKind::Validate
                && s.status == StepStatus::Failed
                && s.error
                    .as_ref()
                    .is_some_and(|e| e.code == codes::INVALID_OUTPUT)
        })
        .count() as u32
}

/// The test-only pause before validating (`worker.validate_delay_ms`),
/// which a test uses to kill a worker mid-validation; ends early on
/// shutdown or cancel.
async fn test_delay(cx: &Cx<'_>) -> Option<Outcome> {
    let ms = cx.ctx.settings.worker.validate_delay_ms;
    if ms == 0 {
        return None;
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => None,
        _ = cx.stop.cancelled() => Some(Outcome::Interrupted),
        _ = cx.cancel.cancelled() => Some(Outcome::Cancelled),
    }
}

//! `render`: the prompt's templates over the execution's input. It is
//! deterministic, so a resumed run re-renders in memory and records the
//! step only if no earlier run did.

use futures::future::BoxFuture;
use futures::FutureExt;
use llmq_shared::canonical::json_sha256;
use llmq_shared::execution::{codes, ErrorInfo};
use llmq_shared::mask::mask_json;
use llmq_shared::step::{self as step_row, StepKind, StepStatus};
use serde_json::json;

use super::{Cx, Outcome, Outputs, Rendered, Step};
use crate::runner::PipelineError;

pub struct Render;

/// The render step's output: the messages (masked, as every stored text
/// is), the sha256 of the exact unmasked messages, and the version that
/// rendered them. Re-rendering the execution's stored input with that
/// version gives the exact prompt, which the hash confirms.
fn render_output(cx: &Cx<'_>, messages: &[llmq_shared::prompt::ChatMessage]) -> serde_json::Value {
    let exact = json!(messages);
    json!({
        "messages": mask_json(&exact),
        "messages_sha256": json_sha256(&exact),
        "prompt": { "name": cx.prompt.name, "version": cx.prompt.version },
    })
}

/// The messages over the input and, for a version that retrieves, the
/// `retrieve` step's result as `retrieval`.
fn render_messages(
    cx: &Cx<'_>,
    out: &Outputs,
) -> llmq_shared::prompt::Result<Vec<llmq_shared::prompt::ChatMessage>> {
    match &out.retrieval {
        Some(r) => cx.prompt.render_with(&cx.execution.input, Some(r)),
        None => cx.prompt.render(&cx.execution.input),
    }
}

impl Step for Render {
    fn kind(&self) -> StepKind {
        StepKind::Render
    }

    fn run<'a>(
        &'a self,
        cx: &'a mut Cx<'_>,
        out: &'a mut Outputs,
    ) -> BoxFuture<'a, Result<Outcome, PipelineError>> {
        async move {
            let mut step = cx.begin(StepKind::Render);
            step.input = Some(mask_json(&cx.execution.input));
            match render_messages(cx, out) {
                Ok(messages) => {
                    step.output = Some(render_output(cx, &messages));
                    out.rendered = Some(Rendered {
                        messages,
                        seq: step.seq,
                    });
                    cx.done(step, StepStatus::Succeeded);
                    Ok(Outcome::Continue)
                }
                Err(e) => {
                    let error = ErrorInfo {
                        code: codes::TEMPLATE_ERROR.into(),
                        message: e.to_string(),
                    };
                    Ok(cx.fail(step, error))
                }
            }
        }
        .boxed()
    }

    fn restore(
        &self,
        cx: &mut Cx<'_>,
        checkpoint: &step_row::Step,
        out: &mut Outputs,
    ) -> Result<(), ErrorInfo> {
        let messages = render_messages(cx, out).map_err(|e| ErrorInfo {
            code: codes::TEMPLATE_ERROR.into(),
            message: e.to_string(),
        })?;
        out.rendered = Some(Rendered {
            messages,
            seq: checkpoint.seq,
        });
        Ok(())
    }
}

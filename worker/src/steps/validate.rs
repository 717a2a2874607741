//! `validate`: the model's answer against the prompt's output contract.
//! For now that contract is `output.type = "json"`: an answer that is not
//! JSON fails the execution with `invalid_output` instead of succeeding as
//! text. (Schema validation and repair come with prompts as contracts.)
//! It follows the paid `generate` step, so the runner commits the generate
//! checkpoint before it runs.

use futures::future::BoxFuture;
use futures::FutureExt;
use llmq_shared::execution::{codes, ErrorInfo};
use llmq_shared::step::{self as step_row, StepKind, StepStatus};
use serde_json::json;

use super::generate::wants_json;
use super::{Cx, Outcome, Outputs, Step};
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
            let mut step = cx.begin(StepKind::Validate);
            step.input = Some(json!({ "type": "json" }));
            match &out.generated()?.not_json {
                None => {
                    step.output = Some(json!({ "valid": true }));
                    cx.done(step, StepStatus::Succeeded);
                    Ok(Outcome::Continue)
                }
                Some(reason) => {
                    let error = ErrorInfo {
                        code: codes::INVALID_OUTPUT.into(),
                        message: format!("the model's answer is not JSON: {reason}"),
                    };
                    Ok(cx.fail(step, error))
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
        // Validation has no output; a passed check stays passed.
        Ok(())
    }
}

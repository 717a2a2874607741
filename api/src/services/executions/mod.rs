//! Executions: planning a submission (pure, `plan`), carrying it out
//! (`submit`), and reading or cancelling what was accepted (`read`). Each
//! function takes only the pools, caches and queues it uses, never the
//! HTTP request or the whole application state.

pub mod list;
pub mod plan;
pub mod read;
pub mod submit;

use llmq_shared::execution::ExecutionId;

pub use plan::{plan_execution, PromptTarget, SubmitRequest};
pub use read::{cancel_execution, get_execution, list_steps, wait_for_execution};
pub use submit::{submit_execution, Inserts, PendingInsert, PublishQueue, SubmitDeps, Submitted};

use crate::services::error::ServiceError;

fn not_found(id: ExecutionId) -> ServiceError {
    ServiceError::NotFound(format!("no execution {id}"))
}

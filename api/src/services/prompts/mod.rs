//! The prompt registry through the API: versions created at run time
//! (`versions`), their field-level diff (`diff`), labels moved, rolled
//! back and audited (`labels`), and per-version figures (`stats`).

pub mod diff;
pub mod labels;
pub mod stats;
pub mod versions;

use crate::services::error::ServiceError;

fn unknown_prompt(name: &str) -> ServiceError {
    ServiceError::NotFound(format!(
        "no prompt named {:?}",
        llmq_shared::ids::public_prompt_name(name)
    ))
}

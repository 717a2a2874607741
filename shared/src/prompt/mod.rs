//! Prompts: the versioned definitions in `prompts/<name>/v<N>.toml`
//! (`definition`), reading them from disk (`files`), their compiled form,
//! a strict template environment and an input validator (`compiled`), the
//! process-wide cache of compiled versions (`cache`), the short-lived
//! cache of where labels point (`labels`) and the tokenizers of the
//! `truncate_tokens` filter (`tokens`). Versions are immutable, so a
//! compiled version never has to be invalidated; a label can move, so a
//! replica trusts where it pointed only for a configured time.

mod cache;
mod compiled;
mod definition;
mod files;
mod labels;
pub mod tokens;

use std::path::PathBuf;

pub use cache::PromptCache;
pub use compiled::{schema_violations, ChatMessage, CompiledPrompt, InputViolation};
pub use definition::{
    validate_name, CacheSpec, FieldError, MessageTemplate, OnRetrievalFailure, OutputSpec,
    PromptDefinition, PromptLimits, PromptParams, RetrieveFallback, RetrieveSpec, Stop,
    DEFAULT_MAX_REPAIRS, DEFAULT_MAX_TOOL_CALLS, DEFAULT_MAX_TOOL_ROUNDS,
};
pub use files::{load_prompt_dir, PromptFile};
pub use labels::{Assignment, LabelCache, LabelRule, Target};

pub const DEFAULT_LABEL: &str = "production";

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read prompt file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("prompt file {path} is not valid: {message}")]
    InvalidFile { path: PathBuf, message: String },
    #[error("prompt {name} v{version}: {message}")]
    InvalidDefinition {
        name: String,
        version: i32,
        message: String,
    },
    #[error("template cannot render: {0}")]
    Render(String),
}

pub type Result<T, E = PromptError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;

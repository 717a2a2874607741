//! Tools: internal HTTP APIs a model may ask llmq to call. A definition
//! (`definition`) names the endpoint, the JSON Schema of the arguments,
//! where the credential comes from (configuration or the environment,
//! never the prompt or the model), the timeout, the retry policy, whether
//! a repeat is harmless (`idempotent`) and the result size cap. Files are
//! `tools/<name>.toml` (`files`); a [`ToolSet`] holds them compiled (the
//! argument validator built once), as the worker looks them up by name.
//!
//! The calling itself (HTTP, retries, the conversation with the model) is
//! the worker's (`worker/src/tools/`).

mod definition;
mod files;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use definition::{
    Credential, Endpoint, ToolDefinition, ToolRetry, DEFAULT_MAX_RESULT_BYTES, DEFAULT_TIMEOUT_MS,
};
pub use files::load_tool_dir;

use crate::prompt::InputViolation;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot read tool file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tool file {path} is not valid: {message}")]
    InvalidFile { path: PathBuf, message: String },
}

pub type Result<T, E = ToolError> = std::result::Result<T, E>;

/// A definition with its argument validator.
pub struct CompiledTool {
    pub name: String,
    pub definition: ToolDefinition,
    /// The tenant that registered it through the API; `None` for a file's
    /// tool (the operator's).
    pub tenant: Option<String>,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for CompiledTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledTool")
            .field("name", &self.name)
            .field("definition", &self.definition)
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl CompiledTool {
    /// Checks `definition` (see [`ToolDefinition::check`]) and builds the
    /// validator of its arguments; the errors name the field.
    pub fn compile(
        name: &str,
        definition: ToolDefinition,
    ) -> std::result::Result<Self, Vec<crate::prompt::FieldError>> {
        Self::compile_checked(name, definition, None)
    }

    /// A tenant's definition (registered through the API), checked with
    /// the tenant rules ([`ToolDefinition::check_for_tenant`]).
    pub fn compile_for_tenant(
        tenant: &str,
        name: &str,
        definition: ToolDefinition,
    ) -> std::result::Result<Self, Vec<crate::prompt::FieldError>> {
        Self::compile_checked(name, definition, Some(tenant.to_string()))
    }

    fn compile_checked(
        name: &str,
        definition: ToolDefinition,
        tenant: Option<String>,
    ) -> std::result::Result<Self, Vec<crate::prompt::FieldError>> {
        let mut errors = if tenant.is_some() {
            definition.check_for_tenant()
        } else {
            definition.check()
        };
        if let Err(message) = crate::prompt::validate_name(name) {
            errors.push(crate::prompt::FieldError::new("name", message));
        }
        let validator = match jsonschema::validator_for(&definition.parameters) {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(crate::prompt::FieldError::new(
                    "parameters",
                    format!("not a valid JSON Schema: {e}"),
                ));
                None
            }
        };
        match validator {
            Some(validator) if errors.is_empty() => Ok(Self {
                name: name.to_string(),
                definition,
                tenant,
                validator,
            }),
            _ => Err(errors),
        }
    }

    /// What is wrong with `arguments`, each with its path under
    /// `arguments` (empty when they are valid).
    pub fn validate_arguments(&self, arguments: &serde_json::Value) -> Vec<InputViolation> {
        crate::prompt::schema_violations(&self.validator, "arguments", arguments)
    }
}

/// The tools a worker knows, by name.
#[derive(Clone, Debug, Default)]
pub struct ToolSet {
    tools: BTreeMap<String, Arc<CompiledTool>>,
}

impl ToolSet {
    pub fn new(tools: impl IntoIterator<Item = CompiledTool>) -> Self {
        Self {
            tools: tools
                .into_iter()
                .map(|t| (t.name.clone(), Arc::new(t)))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<CompiledTool>> {
        self.tools.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

#[cfg(test)]
mod tests;

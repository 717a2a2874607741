//! A prompt version compiled once: its strict template environment (a
//! missing variable is an error, never an empty string) and its input
//! validator, which names the path of every violation.

use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{PromptDefinition, PromptError, Result};

/// One chat message of a rendered prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// One input violation, with the JSON path of the offending value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InputViolation {
    /// Dotted path from the execution body, e.g. `input.text`.
    pub path: String,
    pub message: String,
}

/// A prompt version ready to validate and render.
pub struct CompiledPrompt {
    pub name: String,
    pub version: i32,
    pub definition: PromptDefinition,
    env: Environment<'static>,
    validator: jsonschema::Validator,
}

const SYSTEM: &str = "system";
const USER: &str = "user";

impl CompiledPrompt {
    pub fn compile(name: &str, version: i32, definition: PromptDefinition) -> Result<Self> {
        let invalid = |message: String| PromptError::InvalidDefinition {
            name: name.to_string(),
            version,
            message,
        };
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_template_owned(USER, definition.template.clone())
            .map_err(|e| invalid(format!("template: {e}")))?;
        if let Some(system) = &definition.system {
            env.add_template_owned(SYSTEM, system.clone())
                .map_err(|e| invalid(format!("system template: {e}")))?;
        }
        let validator = jsonschema::validator_for(&definition.input_schema)
            .map_err(|e| invalid(format!("input_schema: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            version,
            definition,
            env,
            validator,
        })
    }

    /// Every way `input` breaks the input schema; empty when it conforms.
    pub fn validate_input(&self, input: &Value) -> Vec<InputViolation> {
        self.validator
            .iter_errors(input)
            .map(|e| InputViolation {
                path: dotted_path("input", &e.instance_path().to_string()),
                message: e.to_string(),
            })
            .collect()
    }

    /// Renders the system and user messages with `input` as the context.
    /// Strict: a variable the input lacks is an error, never an empty string.
    pub fn render(&self, input: &Value) -> Result<Vec<ChatMessage>> {
        let mut messages = Vec::with_capacity(2);
        for (role, name) in [(SYSTEM, SYSTEM), (USER, USER)] {
            if name == SYSTEM && self.definition.system.is_none() {
                continue;
            }
            let template = self
                .env
                .get_template(name)
                .map_err(|e| PromptError::Render(e.to_string()))?;
            let content = template
                .render(input)
                .map_err(|e| PromptError::Render(render_message(&e)))?;
            messages.push(ChatMessage {
                role: role.to_string(),
                content,
            });
        }
        Ok(messages)
    }
}

fn render_message(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{} ({detail})", e.kind()),
        None => e.kind().to_string(),
    }
}

/// `/a/0/b` under `input` → `input.a[0].b`.
fn dotted_path(root: &str, pointer: &str) -> String {
    let mut out = root.to_string();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            out.push('.');
            out.push_str(&segment);
        }
    }
    out
}

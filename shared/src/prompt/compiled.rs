//! A prompt version compiled once: its strict template environment (a
//! missing variable is an error, never an empty string) with the filters
//! prompts need, its input validator, which names the path of every
//! violation, and the validator of a `json` output's schema.
//!
//! Compiling checks the whole contract: the definition's fields
//! (`PromptDefinition::check`), that every template parses, that both
//! schemas are valid JSON Schemas, and that every example input passes the
//! input schema and renders. Each error names its field.
//!
//! Filters, besides minijinja's built-ins (`join`, `default`, `upper`,
//! `length`, ...):
//! - `truncate(n, end="...")`: at most `n` characters, `end` included
//!   when the text is cut;
//! - `truncate_tokens(n)`: at most `n` tokens of the model's tokenizer
//!   (see `super::tokens`);
//! - `tojson` / `tojson(indent=2)`: the value as JSON, unescaped.

use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definition::FieldError;
use super::{tokens, PromptDefinition, PromptError, Result};

/// The names of the `retrieve` step's query templates in the environment
/// (message templates are named `<i>:<role>`, so these cannot clash).
const QUERY_TEMPLATE: &str = "retrieve:query";
const FALLBACK_QUERY_TEMPLATE: &str = "retrieve:fallback.query";

/// One chat message of a rendered prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// One input (or output) violation, with the JSON path of the offending
/// value.
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
    /// (role, template name) in order.
    messages: Vec<(String, String)>,
    validator: jsonschema::Validator,
    output_validator: Option<jsonschema::Validator>,
    /// `definition.params` as the provider's body names them, computed
    /// once: every submit starts from it.
    params: serde_json::Map<String, Value>,
}

impl CompiledPrompt {
    pub fn compile(name: &str, version: i32, definition: PromptDefinition) -> Result<Self> {
        let invalid = |errors: Vec<FieldError>| PromptError::InvalidDefinition {
            name: name.to_string(),
            version,
            message: errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        };
        let errors = definition.check();
        if !errors.is_empty() {
            return Err(invalid(errors));
        }
        let tokenizer = tokens::tokenizer_for(&definition.model, definition.tokenizer.as_deref());
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_filter("truncate", truncate);
        env.add_filter("tojson", tojson);
        env.add_filter("truncate_tokens", move |s: String, n: usize| {
            tokens::truncate_tokens(tokenizer, &s, n)
        });
        let mut messages = Vec::new();
        let mut errors = Vec::new();
        let uses_list = !definition.messages.is_empty();
        for (i, (role, source)) in definition.message_templates().into_iter().enumerate() {
            let template_name = format!("{i}:{role}");
            let field = match (uses_list, role) {
                (true, _) => format!("messages[{i}].content"),
                (false, "system") => "system".to_string(),
                (false, _) => "template".to_string(),
            };
            match env.add_template_owned(template_name.clone(), source.to_string()) {
                Ok(()) => messages.push((role.to_string(), template_name)),
                Err(e) => errors.push(FieldError::new(field, render_message(&e))),
            }
        }
        if let Some(r) = &definition.retrieve {
            let queries = [
                (QUERY_TEMPLATE, "retrieve.query", Some(&r.query)),
                (
                    FALLBACK_QUERY_TEMPLATE,
                    "retrieve.fallback.query",
                    r.fallback.as_ref().and_then(|f| f.query.as_ref()),
                ),
            ];
            for (name, field, source) in queries {
                if let Some(source) = source {
                    if let Err(e) = env.add_template_owned(name, source.clone()) {
                        errors.push(FieldError::new(field, render_message(&e)));
                    }
                }
            }
        }
        let validator = jsonschema::validator_for(&definition.input_schema)
            .map_err(|e| errors.push(FieldError::new("input_schema", e.to_string())))
            .ok();
        let output_validator = definition.output.schema().and_then(|schema| {
            jsonschema::validator_for(schema)
                .map_err(|e| errors.push(FieldError::new("output.schema", e.to_string())))
                .ok()
        });
        let (Some(validator), true) = (validator, errors.is_empty()) else {
            return Err(invalid(errors));
        };
        let params = definition.params.to_map();
        let compiled = Self {
            name: name.to_string(),
            version,
            params,
            definition,
            env,
            messages,
            validator,
            output_validator,
        };
        let mut errors = Vec::new();
        for (i, example) in compiled.definition.examples.iter().enumerate() {
            for v in compiled.validate_input(example) {
                errors.push(FieldError::new(
                    format!("examples[{i}]"),
                    format!("{}: {}", v.path, v.message),
                ));
            }
            if let Err(e) = compiled.render(example) {
                errors.push(FieldError::new(format!("examples[{i}]"), e.to_string()));
            }
        }
        if !errors.is_empty() {
            return Err(invalid(errors));
        }
        Ok(compiled)
    }

    /// The version's parameters as sent to the provider (`extra` flattened).
    pub fn params(&self) -> &serde_json::Map<String, Value> {
        &self.params
    }

    /// Every way `input` breaks the input schema; empty when it conforms.
    pub fn validate_input(&self, input: &Value) -> Vec<InputViolation> {
        violations(&self.validator, "input", input)
    }

    /// Every way a `json` answer breaks the output schema; empty when it
    /// conforms or the version has no schema. Paths start at `output`.
    pub fn validate_output(&self, output: &Value) -> Vec<InputViolation> {
        match &self.output_validator {
            Some(v) => violations(v, "output", output),
            None => Vec::new(),
        }
    }

    /// Renders the messages with `input` as the context. Strict: a
    /// variable the input lacks is an error, never an empty string. A
    /// version with a `retrieve` step renders with an empty retrieval
    /// (what the API's submit check and the examples see).
    pub fn render(&self, input: &Value) -> Result<Vec<ChatMessage>> {
        let placeholder = self
            .definition
            .retrieve
            .as_ref()
            .map(|_| serde_json::json!({"status": "empty", "chunks": [], "fallback": false}));
        self.render_with(input, placeholder.as_ref())
    }

    /// Renders the `retrieve` step's query (`fallback`: the fallback's
    /// query) over `input`. None when the version has no such query.
    pub fn render_query(&self, input: &Value, fallback: bool) -> Option<Result<String>> {
        let name = if fallback {
            FALLBACK_QUERY_TEMPLATE
        } else {
            QUERY_TEMPLATE
        };
        let template = self.env.get_template(name).ok()?;
        Some(
            template.render(input).map_err(|e| {
                PromptError::Render(format!("retrieve query: {}", render_message(&e)))
            }),
        )
    }

    /// Renders the messages with `input` as the context and, when given,
    /// `retrieval` as the variable of that name (over an input property
    /// of the same name).
    pub fn render_with(
        &self,
        input: &Value,
        retrieval: Option<&Value>,
    ) -> Result<Vec<ChatMessage>> {
        let merged;
        let input = match (retrieval, input) {
            (Some(r), Value::Object(map)) => {
                let mut map = map.clone();
                map.insert("retrieval".into(), r.clone());
                merged = Value::Object(map);
                &merged
            }
            _ => input,
        };
        let mut out = Vec::with_capacity(self.messages.len());
        for (role, name) in &self.messages {
            let template = self
                .env
                .get_template(name)
                .map_err(|e| PromptError::Render(e.to_string()))?;
            let content = template.render(input).map_err(|e| {
                PromptError::Render(match missing_variables(&template, input, &e) {
                    Some(names) => format!("{} ({names} not in the input)", render_message(&e)),
                    None => render_message(&e),
                })
            })?;
            out.push(ChatMessage {
                role: role.clone(),
                content,
            });
        }
        Ok(out)
    }
}

/// Every violation of `validator` by `value`, one per failing path: a
/// missing required property is reported at the property's own path, and
/// each unexpected property at its own.
/// Every way `value` breaks the schema of `validator`, each named by its
/// dotted path from `root` (`input.text`, `arguments.city`).
pub fn schema_violations(
    validator: &jsonschema::Validator,
    root: &str,
    value: &Value,
) -> Vec<InputViolation> {
    violations(validator, root, value)
}

fn violations(validator: &jsonschema::Validator, root: &str, value: &Value) -> Vec<InputViolation> {
    use jsonschema::error::ValidationErrorKind as Kind;
    let mut out = Vec::new();
    for e in validator.iter_errors(value) {
        let at = dotted_path(root, e.instance_path().as_str());
        match e.kind() {
            Kind::Required { property } => {
                let property = property
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| property.to_string());
                out.push(InputViolation {
                    path: format!("{at}.{property}"),
                    message: "required property missing".into(),
                });
            }
            Kind::AdditionalProperties { unexpected } => {
                for property in unexpected {
                    out.push(InputViolation {
                        path: format!("{at}.{property}"),
                        message: "property not allowed by the schema".into(),
                    });
                }
            }
            _ => out.push(InputViolation {
                path: at,
                message: e.to_string(),
            }),
        }
    }
    out
}

/// `truncate(n, end="...")`: at most `n` characters; when cut, the text
/// ends with `end`, which counts towards `n`.
fn truncate(
    value: String,
    length: usize,
    kwargs: Kwargs,
) -> std::result::Result<String, minijinja::Error> {
    let end: Option<String> = kwargs.get("end")?;
    kwargs.assert_all_used()?;
    let end = end.unwrap_or_else(|| "...".to_string());
    if value.chars().count() <= length {
        return Ok(value);
    }
    let end_len = end.chars().count().min(length);
    let mut cut: String = value.chars().take(length - end_len).collect();
    cut.extend(end.chars().take(end_len));
    Ok(cut)
}

/// `tojson(indent=N)`: the value as JSON text, not HTML-escaped (prompts
/// are not HTML).
fn tojson(value: JinjaValue, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    let text = match indent {
        None => serde_json::to_string(&json),
        Some(n) => {
            let indent = " ".repeat(n);
            let mut buf = Vec::new();
            let formatter = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
            serde::Serialize::serialize(&json, &mut ser)
                .map(|()| String::from_utf8_lossy(&buf).into_owned())
        }
    };
    text.map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
}

/// For an undefined-value error: the template's variables the input
/// lacks (`place`, `a, b`), so the message names them. Only on the error
/// path (it re-parses the template).
fn missing_variables(
    template: &minijinja::Template<'_, '_>,
    input: &Value,
    e: &minijinja::Error,
) -> Option<String> {
    if e.kind() != minijinja::ErrorKind::UndefinedError {
        return None;
    }
    let mut missing: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| input.get(name).is_none())
        .collect();
    if missing.is_empty() {
        return None;
    }
    missing.sort();
    Some(
        missing
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn render_message(e: &minijinja::Error) -> String {
    let line = e
        .line()
        .map(|l| format!(" at line {l}"))
        .unwrap_or_default();
    match e.detail() {
        Some(detail) => format!("{} ({detail}){line}", e.kind()),
        None => format!("{}{line}", e.kind()),
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

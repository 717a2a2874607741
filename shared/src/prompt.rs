//! Prompts: the versioned definitions in `prompts/<name>/v<N>.toml`, their
//! compiled form (a strict template environment and an input validator) and
//! a process-wide cache of compiled versions. Versions are immutable, so a
//! compiled version never has to be invalidated; labels are resolved in
//! Postgres on every request and are not cached here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// Per-version overrides of timeouts and retries; unset values fall back
/// to the worker's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptLimits {
    pub generate_timeout_secs: Option<u64>,
    pub max_attempts: Option<u32>,
    pub retry_base_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    pub fallback_model: Option<String>,
}

/// One prompt version as written in its file and stored in Postgres.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptDefinition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub model: String,
    #[serde(default)]
    pub params: serde_json::Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub template: String,
    pub input_schema: Value,
    #[serde(default = "text_output")]
    pub output: Value,
    #[serde(default)]
    pub limits: PromptLimits,
}

fn text_output() -> Value {
    serde_json::json!({"type": "text"})
}

impl PromptDefinition {
    /// sha256 of the definition with object keys sorted, so the same file
    /// always hashes the same whatever map order serde used.
    pub fn content_hash(&self) -> String {
        crate::canonical::json_sha256(&serde_json::to_value(self).unwrap_or(Value::Null))
    }
}

/// A prompt version file found on disk.
#[derive(Clone, Debug)]
pub struct PromptFile {
    pub name: String,
    pub version: i32,
    pub definition: PromptDefinition,
    pub path: PathBuf,
}

/// Reads every `<dir>/<name>/v<N>.toml`, checking that each compiles.
pub fn load_prompt_dir(dir: &Path) -> Result<Vec<PromptFile>> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PromptError + '_ {
        move |source| PromptError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let prompt_dir = entry.map_err(io(dir))?.path();
        if !prompt_dir.is_dir() {
            continue;
        }
        let Some(name) = prompt_dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        for file in std::fs::read_dir(&prompt_dir).map_err(io(&prompt_dir))? {
            let path = file.map_err(io(&prompt_dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let invalid = |message: String| PromptError::InvalidFile {
                path: path.clone(),
                message,
            };
            let version = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix('v'))
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| invalid("file name must be v<N>.toml with N > 0".into()))?;
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let definition: PromptDefinition = figment::Figment::from(
                <figment::providers::Toml as figment::providers::Format>::string(&text),
            )
            .extract()
            .map_err(|e| invalid(e.to_string()))?;
            validate_name(&name).map_err(invalid)?;
            CompiledPrompt::compile(&name, version, definition.clone())?;
            files.push(PromptFile {
                name: name.clone(),
                version,
                definition,
                path,
            });
        }
    }
    files.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
    Ok(files)
}

/// Prompt names and labels: lowercase letters, digits, `-`, `_`, `.`.
pub fn validate_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name (a-z, 0-9, -, _, . up to 64)"
        ))
    }
}

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

/// Compiled versions by (name, version), shared by all requests of a process.
#[derive(Default)]
pub struct PromptCache {
    compiled: RwLock<HashMap<(String, i32), Arc<CompiledPrompt>>>,
}

impl PromptCache {
    pub fn get(&self, name: &str, version: i32) -> Option<Arc<CompiledPrompt>> {
        self.compiled
            .read()
            .ok()?
            .get(&(name.to_string(), version))
            .cloned()
    }

    pub fn get_or_compile(
        &self,
        name: &str,
        version: i32,
        definition: impl FnOnce() -> PromptDefinition,
    ) -> Result<Arc<CompiledPrompt>> {
        let key = (name.to_string(), version);
        if let Ok(map) = self.compiled.read() {
            if let Some(found) = map.get(&key) {
                return Ok(found.clone());
            }
        }
        let compiled = Arc::new(CompiledPrompt::compile(name, version, definition())?);
        if let Ok(mut map) = self.compiled.write() {
            map.entry(key).or_insert_with(|| compiled.clone());
        }
        Ok(compiled)
    }
}

/// Where labels pointed when last read, trusted for `ttl`: label moves
/// reach the replica within that, and a submit needs no registry read.
pub struct LabelCache {
    ttl: std::time::Duration,
    versions: RwLock<HashMap<(String, String), (std::time::Instant, i32)>>,
}

impl LabelCache {
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            ttl,
            versions: RwLock::default(),
        }
    }

    /// The version `label` of `name` pointed at, if read within the TTL.
    pub fn get(&self, name: &str, label: &str) -> Option<i32> {
        let map = self.versions.read().ok()?;
        let (at, version) = map.get(&(name.to_string(), label.to_string()))?;
        (at.elapsed() < self.ttl).then_some(*version)
    }

    pub fn put(&self, name: &str, label: &str, version: i32) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut map) = self.versions.write() {
            map.insert(
                (name.to_string(), label.to_string()),
                (std::time::Instant::now(), version),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn definition() -> PromptDefinition {
        PromptDefinition {
            description: None,
            model: "m".into(),
            params: Default::default(),
            system: Some("Be brief.".into()),
            template: "Summarize: {{ text }}".into(),
            input_schema: json!({
                "type": "object",
                "required": ["text"],
                "properties": {"text": {"type": "string"}, "items": {"type": "array", "items": {"type": "integer"}}}
            }),
            output: text_output(),
            limits: PromptLimits::default(),
        }
    }

    #[test]
    fn rendering_a_missing_variable_is_an_error_not_an_empty_string() {
        let mut d = definition();
        d.template = "{{ text }} {{ missing }}".into();
        let p = CompiledPrompt::compile("s", 1, d).unwrap();
        assert!(matches!(
            p.render(&json!({"text": "a"})),
            Err(PromptError::Render(_))
        ));
    }

    #[test]
    fn renders_system_then_user() {
        let p = CompiledPrompt::compile("s", 1, definition()).unwrap();
        let m = p.render(&json!({"text": "hello"})).unwrap();
        assert_eq!(
            m[0],
            ChatMessage {
                role: "system".into(),
                content: "Be brief.".into()
            }
        );
        assert_eq!(m[1].content, "Summarize: hello");
    }

    #[test]
    fn input_violations_name_the_failing_path() {
        let p = CompiledPrompt::compile("s", 1, definition()).unwrap();
        let v = p.validate_input(&json!({"text": 3, "items": [1, "x"]}));
        let paths: Vec<_> = v.iter().map(|v| v.path.as_str()).collect();
        assert!(paths.contains(&"input.text"), "{v:?}");
        assert!(paths.contains(&"input.items[1]"), "{v:?}");
        assert!(!p.validate_input(&json!({})).is_empty());
        assert!(p.validate_input(&json!({"text": "ok"})).is_empty());
    }

    #[test]
    fn content_hash_ignores_key_order_but_not_content() {
        let a = definition();
        let mut b = definition();
        b.input_schema = json!({
            "properties": {"items": {"items": {"type": "integer"}, "type": "array"}, "text": {"type": "string"}},
            "required": ["text"], "type": "object"
        });
        assert_eq!(a.content_hash(), b.content_hash());
        b.template.push('!');
        assert_ne!(a.content_hash(), b.content_hash());
    }

    #[test]
    fn the_shipped_prompts_load_and_compile() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../prompts");
        let files = load_prompt_dir(&dir).unwrap();
        assert!(files.iter().any(|f| f.name == "summarize"));
        assert!(files.iter().any(|f| f.name == "classify"));
    }
}

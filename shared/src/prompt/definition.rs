//! One prompt version as written in its file and stored in Postgres, and
//! the rule for prompt and label names.
//!
//! The definition is a contract: every field is typed, unknown fields are
//! refused (`deny_unknown_fields`), and [`PromptDefinition::check`] tests
//! what types cannot say (ranges, either `template` or `messages`, a JSON
//! output's schema). Errors name the field by its path (`params.top_p`,
//! `output.schema`), whether the definition came from a file or the API.
//!
//! Compatibility: the content hash of a version is the hash of its
//! serialized definition, so a field added here must serialize to nothing
//! when it is absent (`skip_serializing_if`); otherwise every stored
//! version would "change" and the file sync would refuse it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    /// Model turns that end in tool calls, at most (default
    /// [`DEFAULT_MAX_TOOL_ROUNDS`]); one more asking for tools fails the
    /// execution `tool_rounds_exceeded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tool_rounds: Option<u32>,
    /// Tool calls of the execution, at most (default
    /// [`DEFAULT_MAX_TOOL_CALLS`]); beyond it `tool_calls_exceeded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tool_calls: Option<u32>,
}

/// Tool rounds of a version that names no `limits.max_tool_rounds`.
pub const DEFAULT_MAX_TOOL_ROUNDS: u32 = 4;
/// Tool calls of a version that names no `limits.max_tool_calls`.
pub const DEFAULT_MAX_TOOL_CALLS: u32 = 16;

impl PromptLimits {
    pub fn max_tool_rounds(&self) -> u32 {
        self.max_tool_rounds.unwrap_or(DEFAULT_MAX_TOOL_ROUNDS)
    }

    pub fn max_tool_calls(&self) -> u32 {
        self.max_tool_calls.unwrap_or(DEFAULT_MAX_TOOL_CALLS)
    }
}

/// The response cache of a version (`[cache]` in its file): an answer that
/// succeeded is reused for this long by any execution of this version
/// with exactly the same rendered messages, model and parameters, of the
/// same organisation (of any, with `shared = true`: only for prompts
/// whose answers say nothing about who asked).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    pub ttl_secs: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// `stop`: one sequence or a list of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The sampling parameters of a version, sent to the provider as they are
/// named here. `extra` carries provider-specific ones (e.g. `top_k` for a
/// llama.cpp server) through unchecked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// For `text` output; for a `json` output the worker sets the format
    /// (the model setting `structured_output`) and this is ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl PromptParams {
    /// The parameters as the provider's request body names them, `extra`
    /// flattened in.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        if let Some(Value::Object(extra)) = map.remove("extra") {
            for (k, v) in extra {
                map.entry(k).or_insert(v);
            }
        }
        map
    }

    /// A request's parameter overrides checked like a file's: the named
    /// parameters must have their types and ranges, anything else passes
    /// through as `extra` (except what llmq itself sets). Errors name
    /// `params.<field>`.
    pub fn check_overrides(
        overrides: &Map<String, Value>,
    ) -> std::result::Result<(), Vec<FieldError>> {
        let mut known = Map::new();
        let mut extra = Map::new();
        for (k, v) in overrides {
            if KNOWN_PARAMS.contains(&k.as_str()) {
                known.insert(k.clone(), v.clone());
            } else {
                extra.insert(k.clone(), v.clone());
            }
        }
        known.insert("extra".into(), Value::Object(extra));
        let params: PromptParams = serde_path_to_error::deserialize(&Value::Object(known))
            .map_err(|e| {
                vec![FieldError::new(
                    format!("params.{}", e.path()),
                    e.into_inner().to_string(),
                )]
            })?;
        let mut errors = Vec::new();
        params.check(&mut errors);
        // `extra` is how files spell it; a request names them directly.
        for e in &mut errors {
            e.field = e.field.replace("params.extra.", "params.");
        }
        errors.retain(|e| !e.message.starts_with("is a named parameter"));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Ranges the provider would refuse, named by field.
    pub fn check(&self, errors: &mut Vec<FieldError>) {
        let range =
            |errors: &mut Vec<FieldError>, field: &str, v: Option<f64>, lo: f64, hi: f64| {
                if let Some(v) = v {
                    if !(lo..=hi).contains(&v) {
                        errors.push(FieldError::new(
                            format!("params.{field}"),
                            format!("{v} is outside {lo}..={hi}"),
                        ));
                    }
                }
            };
        range(errors, "temperature", self.temperature, 0.0, 2.0);
        range(errors, "top_p", self.top_p, 0.0, 1.0);
        range(errors, "presence_penalty", self.presence_penalty, -2.0, 2.0);
        range(
            errors,
            "frequency_penalty",
            self.frequency_penalty,
            -2.0,
            2.0,
        );
        for (field, v) in [
            ("max_tokens", self.max_tokens),
            ("max_completion_tokens", self.max_completion_tokens),
        ] {
            if v == Some(0) {
                errors.push(FieldError::new(
                    format!("params.{field}"),
                    "must be at least 1",
                ));
            }
        }
        if let Some(Stop::Many(list)) = &self.stop {
            if list.is_empty() || list.len() > 4 {
                errors.push(FieldError::new(
                    "params.stop",
                    "a list of 1 to 4 stop sequences",
                ));
            }
        }
        for key in self.extra.keys() {
            if KNOWN_PARAMS.contains(&key.as_str()) || key == "extra" {
                errors.push(FieldError::new(
                    format!("params.extra.{key}"),
                    "is a named parameter: set it in [params] itself",
                ));
            }
            if matches!(
                key.as_str(),
                "model" | "messages" | "stream" | "tools" | "tool_choice"
            ) {
                errors.push(FieldError::new(
                    format!("params.extra.{key}"),
                    "is set by llmq, not by a prompt",
                ));
            }
        }
    }
}

/// The named fields of [`PromptParams`] (everything but `extra`).
pub const KNOWN_PARAMS: &[&str] = &[
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "reasoning_effort",
    "response_format",
];

/// One message template of a version written as a list of messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageTemplate {
    /// `system`, `user` or `assistant` (a few-shot answer).
    pub role: String,
    /// A template over the input, like `template`.
    pub content: String,
}

/// What the model must answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum OutputSpec {
    /// Free text, kept as a JSON string.
    #[default]
    Text,
    /// A JSON value; with a schema, the answer is validated against it and
    /// repaired up to `max_repairs` times.
    Json {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        schema: Option<Value>,
        /// Repairs after the first answer (default [`DEFAULT_MAX_REPAIRS`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_repairs: Option<u32>,
        /// Ask the provider for strict schema adherence (`json_schema`
        /// mode only; OpenAI then requires `additionalProperties: false`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

/// Repairs of a `json` answer when the version names no `max_repairs`.
pub const DEFAULT_MAX_REPAIRS: u32 = 2;
/// The most repairs a version may ask for: every repair is a paid call.
pub const MAX_REPAIRS_LIMIT: u32 = 5;

impl OutputSpec {
    pub fn is_json(&self) -> bool {
        matches!(self, Self::Json { .. })
    }

    /// The JSON Schema a `json` answer must satisfy, if any.
    pub fn schema(&self) -> Option<&Value> {
        match self {
            Self::Json { schema, .. } => schema.as_ref(),
            Self::Text => None,
        }
    }

    /// Repairs allowed after the first answer (0 for text).
    pub fn max_repairs(&self) -> u32 {
        match self {
            Self::Json { max_repairs, .. } => max_repairs.unwrap_or(DEFAULT_MAX_REPAIRS),
            Self::Text => 0,
        }
    }

    pub fn strict(&self) -> bool {
        matches!(
            self,
            Self::Json {
                strict: Some(true),
                ..
            }
        )
    }
}

/// What a `retrieve` step does when its retrieval fails, times out, or
/// (for `on_empty`) finds nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRetrievalFailure {
    /// Render anyway, with `retrieval.status` telling the template.
    #[default]
    Continue,
    /// Try `[retrieve.fallback]` once; its result is the step's.
    Fallback,
    /// Fail the execution (`retrieval_failed`, `retrieval_timed_out` or
    /// `retrieval_empty`).
    Fail,
}

/// The other collection and/or query of a `fallback`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrieveFallback {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// A template over the input, like `query`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// The `retrieve` step of a version: which collection, the query
/// template, and how much of what it finds goes into the prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrieveSpec {
    pub collection: String,
    /// A template over the input, e.g. `"{{ question }}"`.
    pub query: String,
    #[serde(default = "default_top_k")]
    pub top_k: u32,
    /// Chunks scoring below this (cosine, -1..=1) are dropped.
    #[serde(default)]
    pub min_score: f64,
    /// Tokens of context the chunks may take in the prompt, counted with
    /// the version's tokenizer.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// The whole step's deadline (query embedding and search, and the
    /// fallback's).
    #[serde(default = "default_retrieve_timeout")]
    pub timeout_ms: u64,
    /// Chunks whose embeddings are at least this similar to a better one
    /// are dropped as near-duplicates.
    #[serde(default = "default_duplicate_threshold")]
    pub duplicate_threshold: f64,
    #[serde(default)]
    pub on_failure: OnRetrievalFailure,
    #[serde(default)]
    pub on_empty: OnRetrievalFailure,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<RetrieveFallback>,
}

fn default_top_k() -> u32 {
    5
}
fn default_max_tokens() -> u32 {
    1000
}
fn default_retrieve_timeout() -> u64 {
    2000
}
fn default_duplicate_threshold() -> f64 {
    0.95
}

impl RetrieveSpec {
    fn check(&self, errors: &mut Vec<FieldError>) {
        if let Err(message) = validate_name(&self.collection) {
            errors.push(FieldError::new("retrieve.collection", message));
        }
        if !(1..=100).contains(&self.top_k) {
            errors.push(FieldError::new("retrieve.top_k", "must be 1..=100"));
        }
        if !(-1.0..=1.0).contains(&self.min_score) {
            errors.push(FieldError::new("retrieve.min_score", "must be -1..=1"));
        }
        if !(0.0..=1.0).contains(&self.duplicate_threshold) || self.duplicate_threshold == 0.0 {
            errors.push(FieldError::new(
                "retrieve.duplicate_threshold",
                "must be in (0, 1]",
            ));
        }
        if self.max_tokens == 0 {
            errors.push(FieldError::new("retrieve.max_tokens", "must be at least 1"));
        }
        if !(1..=120_000).contains(&self.timeout_ms) {
            errors.push(FieldError::new("retrieve.timeout_ms", "must be 1..=120000"));
        }
        let wants_fallback = self.on_failure == OnRetrievalFailure::Fallback
            || self.on_empty == OnRetrievalFailure::Fallback;
        match &self.fallback {
            None if wants_fallback => errors.push(FieldError::new(
                "retrieve.fallback",
                "on_failure or on_empty is \"fallback\": name a fallback collection or query",
            )),
            Some(f) if f.collection.is_none() && f.query.is_none() => errors.push(FieldError::new(
                "retrieve.fallback",
                "needs a collection, a query or both",
            )),
            Some(f) => {
                if let Some(c) = &f.collection {
                    if let Err(message) = validate_name(c) {
                        errors.push(FieldError::new("retrieve.fallback.collection", message));
                    }
                }
            }
            None => {}
        }
    }
}

/// One prompt version as written in its file and stored in Postgres.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptDefinition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub model: String,
    #[serde(default)]
    pub params: PromptParams,
    /// The system message's template (with `template`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The user message's template (`user` is accepted as its name too).
    #[serde(default, alias = "user", skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Instead of `system` + `template`: the messages in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<MessageTemplate>,
    pub input_schema: Value,
    #[serde(default)]
    pub output: OutputSpec,
    /// Tools the model may call: names of `tools/<name>.toml` definitions,
    /// offered to the model by `generate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Whether the first model turn must call a tool: `"auto"` (the model
    /// decides), `"required"` (some tool) or one of `tools` by name (that
    /// tool). Absent: no `tool_choice` is sent. See [`Self::first_tool_choice`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<String>,
    /// Tokenizer of `truncate_tokens` (`o200k_base`, `cl100k_base`); by
    /// default the one of the model's family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// Inputs that must pass the input schema and render: checked at load.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<Value>,
    #[serde(default)]
    pub limits: PromptLimits,
    /// Context retrieved before rendering (the `retrieve` step); the
    /// templates see it as `retrieval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieve: Option<RetrieveSpec>,
    /// Opt-in response cache; absent: no cache unless a request asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
}

/// One thing wrong with a definition, named by the field's path.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `params.top_p` or `examples[1]`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// The `tool_choice` words; any other value names one of the tools.
pub const TOOL_CHOICES: &[&str] = &["auto", "required"];

/// The roles a message template may have.
pub const MESSAGE_ROLES: &[&str] = &["system", "user", "assistant"];

impl PromptDefinition {
    /// Parses a prompt file's TOML, naming the field of the first error.
    pub fn from_toml(text: &str) -> std::result::Result<Self, FieldError> {
        let deserializer = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            // toml's message carries the line and column; keep its first line.
            let message = inner.message().trim().to_string();
            let at = inner
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            FieldError::new(
                if field == "." { String::new() } else { field },
                format!("{message}{at}"),
            )
        })
    }

    /// Parses a definition sent as JSON (the registry API), naming the
    /// field of the first error.
    pub fn from_json(value: &Value) -> std::result::Result<Self, FieldError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            FieldError::new(
                if field == "." { String::new() } else { field },
                e.into_inner().to_string(),
            )
        })
    }

    /// What types cannot say. Compiling (`CompiledPrompt::compile`) runs it
    /// and then checks the templates, schemas and examples.
    pub fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(cache) = &self.cache {
            if !(1..=30 * 24 * 3600).contains(&cache.ttl_secs) {
                errors.push(FieldError::new(
                    "cache.ttl_secs",
                    "must be between 1 and 2592000 (30 days)",
                ));
            }
        }
        if self.model.trim().is_empty() {
            errors.push(FieldError::new("model", "must not be empty"));
        }
        self.params.check(&mut errors);
        match (&self.template, self.messages.is_empty()) {
            (None, true) => errors.push(FieldError::new(
                "template",
                "a version needs `template` (the user message) or `messages`",
            )),
            (Some(_), false) => errors.push(FieldError::new(
                "messages",
                "give either `system` + `template` or `messages`, not both",
            )),
            (None, false) => {
                if self.system.is_some() {
                    errors.push(FieldError::new(
                        "system",
                        "with `messages`, the system message is one of them",
                    ));
                }
                for (i, m) in self.messages.iter().enumerate() {
                    if !MESSAGE_ROLES.contains(&m.role.as_str()) {
                        errors.push(FieldError::new(
                            format!("messages[{i}].role"),
                            format!("{:?} is not one of {}", m.role, MESSAGE_ROLES.join(", ")),
                        ));
                    }
                }
                if !self.messages.iter().any(|m| m.role == "user") {
                    errors.push(FieldError::new(
                        "messages",
                        "needs at least one user message",
                    ));
                }
            }
            (Some(_), true) => {}
        }
        if !self.input_schema.is_object() {
            errors.push(FieldError::new(
                "input_schema",
                "must be a JSON Schema object",
            ));
        }
        if let OutputSpec::Json {
            schema,
            max_repairs,
            ..
        } = &self.output
        {
            if schema.as_ref().is_some_and(|s| !s.is_object()) {
                errors.push(FieldError::new(
                    "output.schema",
                    "must be a JSON Schema object",
                ));
            }
            if max_repairs.is_some_and(|n| n > MAX_REPAIRS_LIMIT) {
                errors.push(FieldError::new(
                    "output.max_repairs",
                    format!("at most {MAX_REPAIRS_LIMIT}: every repair is a paid model call"),
                ));
            }
        }
        for (i, tool) in self.tools.iter().enumerate() {
            if let Err(message) = validate_name(tool) {
                errors.push(FieldError::new(format!("tools[{i}]"), message));
            }
        }
        if let Some(choice) = &self.tool_choice {
            if self.tools.is_empty() {
                errors.push(FieldError::new(
                    "tool_choice",
                    "needs `tools`: there is nothing to choose from",
                ));
            } else if !TOOL_CHOICES.contains(&choice.as_str()) && !self.tools.contains(choice) {
                errors.push(FieldError::new(
                    "tool_choice",
                    format!(
                        "{choice:?} is neither {} nor one of `tools` ({})",
                        TOOL_CHOICES.join(" nor "),
                        self.tools.join(", ")
                    ),
                ));
            }
        }
        if let Some(t) = &self.tokenizer {
            if !super::tokens::TOKENIZERS.contains(&t.as_str()) {
                errors.push(FieldError::new(
                    "tokenizer",
                    format!(
                        "{t:?} is not one of {}",
                        super::tokens::TOKENIZERS.join(", ")
                    ),
                ));
            }
        }
        if self.limits.max_tool_rounds == Some(0) || self.limits.max_tool_calls == Some(0) {
            errors.push(FieldError::new(
                "limits",
                "max_tool_rounds and max_tool_calls must be at least 1",
            ));
        }
        if let Some(r) = &self.retrieve {
            r.check(&mut errors);
        }
        if self.limits.max_attempts == Some(0) {
            errors.push(FieldError::new("limits.max_attempts", "must be at least 1"));
        }
        if self.limits.generate_timeout_secs == Some(0) {
            errors.push(FieldError::new(
                "limits.generate_timeout_secs",
                "must be at least 1",
            ));
        }
        errors
    }

    /// The messages as (role, template) pairs, in order.
    pub fn message_templates(&self) -> Vec<(&str, &str)> {
        if !self.messages.is_empty() {
            return self
                .messages
                .iter()
                .map(|m| (m.role.as_str(), m.content.as_str()))
                .collect();
        }
        let mut out = Vec::with_capacity(2);
        if let Some(system) = &self.system {
            out.push(("system", system.as_str()));
        }
        if let Some(user) = &self.template {
            out.push(("user", user.as_str()));
        }
        out
    }

    /// The OpenAI `tool_choice` of the first model turn, from
    /// `tool_choice`: `"auto"` and `"required"` as they are, a tool's name
    /// as `{"type": "function", "function": {"name": ...}}`.
    ///
    /// Only the first turn carries it: a forced call on every turn would
    /// never let the model answer (the loop would end
    /// `tool_rounds_exceeded`), so later turns send none and the provider
    /// applies its default (`auto` at OpenAI).
    pub fn first_tool_choice(&self) -> Option<Value> {
        let choice = self.tool_choice.as_deref()?;
        Some(if TOOL_CHOICES.contains(&choice) {
            Value::String(choice.to_string())
        } else {
            serde_json::json!({"type": "function", "function": {"name": choice}})
        })
    }

    /// sha256 of the definition with object keys sorted, so the same file
    /// always hashes the same whatever map order serde used.
    pub fn content_hash(&self) -> String {
        crate::canonical::json_sha256(&serde_json::to_value(self).unwrap_or(Value::Null))
    }
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

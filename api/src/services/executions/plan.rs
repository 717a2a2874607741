//! Planning a submission: a domain request, the compiled prompt version it
//! names and the configured models in, a validated `NewExecution` out. Pure:
//! no database, no broker, no HTTP, so every front end (the HTTP API
//! today; an OpenAI-compatible facade or batches, not built yet) and every
//! unit test runs the same checks. The request's fingerprint (what an
//! `Idempotency-Key` binds to) is defined here too, over the request's
//! meaning.

use std::collections::BTreeMap;

use llmq_shared::canonical::json_sha256;
use llmq_shared::config::ModelSettings;
use llmq_shared::execution::{codes, ExecutionId, NewExecution};
use llmq_shared::ids::{Label, PromptName, TenantId};
use llmq_shared::prompt::{ChatMessage, CompiledPrompt, PromptParams};
use serde_json::{Map, Value};

use crate::services::error::{Result, ServiceError};

/// Priority of a request that names none.
pub const DEFAULT_PRIORITY: i16 = 5;

/// Which version of the prompt a request runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromptTarget {
    Version(i32),
    Label(Label),
}

impl Default for PromptTarget {
    fn default() -> Self {
        Self::Label(Label::production())
    }
}

/// A submission in domain terms, defaults applied: whatever shape a front
/// end accepts, it builds one of these.
#[derive(Clone, Debug, PartialEq)]
pub struct SubmitRequest {
    pub prompt: PromptName,
    pub target: PromptTarget,
    pub input: Value,
    /// Override of the version's model; must be configured.
    pub model: Option<String>,
    /// Overrides of the version's parameters.
    pub params: Map<String, Value>,
    pub priority: i16,
    pub metadata: Map<String, Value>,
    pub user: Option<String>,
    /// The segment whose target a label's rule gives first.
    pub segment: Option<String>,
    /// Publish the model's tokens as `delta` events while it generates.
    pub stream: bool,
    /// Where the outcome is POSTed (`webhook.url`).
    pub webhook_url: Option<String>,
    /// The response cache: `Some(ttl)` reuses an answer for `ttl`
    /// seconds, `Some(0)` refuses the cache even where the prompt version
    /// opts in, `None` leaves it to the version.
    pub cache_ttl_secs: Option<i32>,
}

impl SubmitRequest {
    /// A request for `prompt`'s production label with every default.
    pub fn new(prompt: PromptName, input: Value) -> Self {
        Self {
            prompt,
            target: PromptTarget::default(),
            input,
            model: None,
            params: Map::new(),
            priority: DEFAULT_PRIORITY,
            metadata: Map::new(),
            user: None,
            segment: None,
            stream: false,
            webhook_url: None,
            cache_ttl_secs: None,
        }
    }

    /// The hash an `Idempotency-Key` is bound to. It covers what the
    /// request means: a field left at its default is left out, so an
    /// absent field and its explicit default hash the same, and a field
    /// added later (with a default) changes no existing request's hash. Key
    /// order does not matter (canonical JSON).
    pub fn fingerprint(&self) -> String {
        let mut meaning = Map::new();
        meaning.insert("prompt".into(), self.prompt.as_str().into());
        match &self.target {
            PromptTarget::Version(v) => {
                meaning.insert("version".into(), (*v).into());
            }
            PromptTarget::Label(l) if *l == Label::production() => {}
            PromptTarget::Label(l) => {
                meaning.insert("label".into(), l.as_str().into());
            }
        }
        meaning.insert("input".into(), self.input.clone());
        if let Some(model) = &self.model {
            meaning.insert("model".into(), model.as_str().into());
        }
        if !self.params.is_empty() {
            meaning.insert("params".into(), Value::Object(self.params.clone()));
        }
        if self.priority != DEFAULT_PRIORITY {
            meaning.insert("priority".into(), self.priority.into());
        }
        if !self.metadata.is_empty() {
            meaning.insert("metadata".into(), Value::Object(self.metadata.clone()));
        }
        if let Some(user) = &self.user {
            meaning.insert("user".into(), user.as_str().into());
        }
        if let Some(segment) = &self.segment {
            meaning.insert("segment".into(), segment.as_str().into());
        }
        if self.stream {
            meaning.insert("stream".into(), true.into());
        }
        if let Some(url) = &self.webhook_url {
            meaning.insert("webhook".into(), url.as_str().into());
        }
        if let Some(ttl) = self.cache_ttl_secs {
            meaning.insert("cache_ttl_secs".into(), ttl.into());
        }
        json_sha256(&Value::Object(meaning))
    }
}

/// Checks `request` against the compiled version and the configured models
/// and builds the row to insert. Rendering here makes a template error a
/// 422 now rather than a failed execution later.
pub fn plan_execution(
    tenant: &TenantId,
    request: SubmitRequest,
    compiled: &CompiledPrompt,
    label: Option<Label>,
    models: &BTreeMap<String, ModelSettings>,
) -> Result<NewExecution> {
    plan_and_render(tenant, request, compiled, label, models).map(|(new, _)| new)
}

/// [`plan_execution`], with the messages it rendered (the same render the
/// worker's `render` step runs): the token budgets count them.
pub fn plan_and_render(
    tenant: &TenantId,
    request: SubmitRequest,
    compiled: &CompiledPrompt,
    label: Option<Label>,
    models: &BTreeMap<String, ModelSettings>,
) -> Result<(NewExecution, Vec<ChatMessage>)> {
    let violations = compiled.validate_input(&request.input);
    if let Some(first) = violations.first() {
        return Err(ServiceError::Rejected {
            code: codes::INVALID_INPUT,
            message: format!("{}: {}", first.path, first.message),
            details: Some(serde_json::json!({ "violations": violations })),
        });
    }
    let messages = compiled
        .render(&request.input)
        .map_err(|e| ServiceError::Rejected {
            code: codes::TEMPLATE_ERROR,
            message: e.to_string(),
            details: None,
        })?;
    let model = match request.model {
        Some(m) if m != compiled.definition.model && !models.contains_key(&m) => {
            return Err(ServiceError::Rejected {
                code: codes::MODEL_NOT_ALLOWED,
                message: format!("model {m:?} is not configured"),
                details: None,
            })
        }
        Some(m) => m,
        None => compiled.definition.model.clone(),
    };
    if !request.params.is_empty() {
        PromptParams::check_overrides(&request.params).map_err(|errors| {
            ServiceError::InvalidRequest(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
    }
    let mut params = compiled.params().clone();
    params.extend(request.params);
    let new = NewExecution {
        id: ExecutionId::new(),
        tenant_id: tenant.as_str().to_string(),
        prompt_name: compiled.name.clone(),
        prompt_version: compiled.version,
        prompt_label: label.map(Label::into_string),
        // Set by the submit, which knows the label's rule.
        prompt_arm: None,
        model,
        params: Value::Object(params),
        input: request.input,
        metadata: Value::Object(request.metadata),
        end_user: request.user,
        priority: request.priority,
        stream: request.stream,
        webhook_url: request.webhook_url,
        // Set by the submit, which knows the caller's key.
        key_id: None,
        cache_ttl_secs: request.cache_ttl_secs,
        // Set by the submit, which admits it against the limits.
        reserved: false,
    };
    Ok((new, messages))
}

/// The path of the first string (or object key) in `value` that holds a
/// NUL character, which Postgres `text` and `jsonb` cannot store.
pub fn nul_path(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) => s.contains('\0').then(|| path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_path(v, &format!("{path}[{i}]"))),
        Value::Object(map) => nul_path_in_map(map, path),
        _ => None,
    }
}

/// `nul_path` over an object's keys and values.
pub fn nul_path_in_map(map: &Map<String, Value>, path: &str) -> Option<String> {
    map.iter().find_map(|(k, v)| {
        if k.contains('\0') {
            Some(format!("{path} (a key)"))
        } else {
            nul_path(v, &format!("{path}.{k}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use llmq_shared::prompt::PromptDefinition;
    use serde_json::json;

    use super::*;

    fn summarize() -> CompiledPrompt {
        let definition: PromptDefinition = serde_json::from_value(json!({
            "model": "gpt-4o-mini",
            "template": "Summarize: {{ text }}",
            "input_schema": {
                "type": "object",
                "required": ["text"],
                "properties": {"text": {"type": "string"}}
            },
            "params": {"temperature": 0.2}
        }))
        .unwrap();
        CompiledPrompt::compile("summarize", 1, definition).unwrap()
    }

    fn request(input: Value) -> SubmitRequest {
        SubmitRequest::new(PromptName::parse("summarize").unwrap(), input)
    }

    #[test]
    fn a_valid_request_plans_an_execution_with_the_versions_defaults() {
        let mut req = request(json!({"text": "hello"}));
        req.params.insert("max_tokens".into(), json!(10));
        let new = plan_execution(
            &TenantId::new("t1"),
            req,
            &summarize(),
            Some(Label::production()),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(new.tenant_id, "t1");
        assert_eq!(new.model, "gpt-4o-mini");
        assert_eq!(new.params, json!({"temperature": 0.2, "max_tokens": 10}));
        assert_eq!(new.prompt_label.as_deref(), Some("production"));
        assert_eq!(new.priority, DEFAULT_PRIORITY);
        assert_eq!(new.metadata, json!({}));
    }

    #[test]
    fn input_that_fails_the_schema_is_rejected_with_its_path() {
        let err = plan_execution(
            &TenantId::new("t1"),
            request(json!({"text": 3})),
            &summarize(),
            None,
            &BTreeMap::new(),
        )
        .unwrap_err();
        match err {
            ServiceError::Rejected { code, message, .. } => {
                assert_eq!(code, codes::INVALID_INPUT);
                assert!(message.starts_with("input.text"), "{message}");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn parameter_overrides_are_checked_and_named() {
        let mut req = request(json!({"text": "hi"}));
        req.params.insert("temperature".into(), json!(9));
        req.params.insert("top_k".into(), json!(40));
        let err = plan_execution(
            &TenantId::new("t1"),
            req,
            &summarize(),
            None,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ServiceError::InvalidRequest(m) if m.starts_with("params.temperature")),
            "{err:?}"
        );
        let mut req = request(json!({"text": "hi"}));
        req.params.insert("max_tokens".into(), json!("many"));
        let err = plan_execution(
            &TenantId::new("t1"),
            req,
            &summarize(),
            None,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ServiceError::InvalidRequest(m) if m.starts_with("params.max_tokens")),
            "{err:?}"
        );
        // A provider-specific parameter passes through.
        let mut req = request(json!({"text": "hi"}));
        req.params.insert("top_k".into(), json!(40));
        let new = plan_execution(
            &TenantId::new("t1"),
            req,
            &summarize(),
            None,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(new.params["top_k"], json!(40));
    }

    #[test]
    fn an_unconfigured_model_is_rejected() {
        let mut req = request(json!({"text": "hi"}));
        req.model = Some("gpt-unknown".into());
        let err = plan_execution(
            &TenantId::new("t1"),
            req,
            &summarize(),
            None,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(
            matches!(err, ServiceError::Rejected { code, .. } if code == codes::MODEL_NOT_ALLOWED),
            "{err:?}"
        );
    }

    #[test]
    fn the_fingerprint_ignores_fields_left_at_their_default() {
        let plain = request(json!({"text": "hi", "lang": "en"}));
        let mut explicit = plain.clone();
        explicit.priority = DEFAULT_PRIORITY;
        explicit.target = PromptTarget::Label(Label::production());
        explicit.input = json!({"lang": "en", "text": "hi"});
        assert_eq!(plain.fingerprint(), explicit.fingerprint());
        // Pinned: a change here would turn every retry across the deploy
        // that ships it into a 409.
        assert_eq!(
            plain.fingerprint(),
            json_sha256(&json!({"prompt": "summarize", "input": {"text": "hi", "lang": "en"}}))
        );
    }

    #[test]
    fn the_fingerprint_tells_different_meanings_apart() {
        let plain = request(json!({"text": "hi"}));
        let mut urgent = plain.clone();
        urgent.priority = 9;
        let mut pinned = plain.clone();
        pinned.target = PromptTarget::Version(1);
        let mut tagged = plain.clone();
        tagged.metadata.insert("ticket".into(), json!("T-1"));
        let all = [&plain, &urgent, &pinned, &tagged].map(SubmitRequest::fingerprint);
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn nul_characters_are_found_in_values_and_keys() {
        assert_eq!(
            nul_path(&json!({"a": ["x", "y\u{0}"]}), "input"),
            Some("input.a[1]".into())
        );
        assert_eq!(
            nul_path(&json!({"k\u{0}": 1}), "metadata"),
            Some("metadata (a key)".into())
        );
        assert_eq!(nul_path(&json!({"a": "ok"}), "input"), None);
    }
}

#![allow(clippy::unwrap_used)]
//! Definitions, compilation and the shipped prompt files.

use std::path::Path;

use super::definition::text_output;
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

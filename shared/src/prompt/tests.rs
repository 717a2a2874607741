#![allow(clippy::unwrap_used)]
//! Definitions, compilation and the shipped prompt files.

use std::path::Path;

use super::*;
use serde_json::json;

fn definition() -> PromptDefinition {
    PromptDefinition {
        description: None,
        model: "m".into(),
        params: Default::default(),
        system: Some("Be brief.".into()),
        template: Some("Summarize: {{ text }}".into()),
        messages: Vec::new(),
        input_schema: json!({
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string"}, "items": {"type": "array", "items": {"type": "integer"}}}
        }),
        output: OutputSpec::Text,
        tools: Vec::new(),
        tool_choice: None,
        tokenizer: None,
        examples: Vec::new(),
        limits: PromptLimits::default(),
        retrieve: None,
        cache: None,
    }
}

#[test]
fn rendering_a_missing_variable_is_an_error_not_an_empty_string() {
    let mut d = definition();
    d.template = Some("{{ text }} {{ missing }}".into());
    let p = CompiledPrompt::compile("s", 1, d).unwrap();
    match p.render(&json!({"text": "a"})) {
        Err(PromptError::Render(m)) => assert!(m.contains("`missing` not in the input"), "{m}"),
        other => panic!("{other:?}"),
    }
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
    b.template.as_mut().unwrap().push('!');
    assert_ne!(a.content_hash(), b.content_hash());
}

#[test]
fn the_shipped_prompts_load_and_compile() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../prompts");
    let files = load_prompt_dir(&dir).unwrap();
    assert!(files.iter().any(|f| f.name == "summarize"));
    assert!(files.iter().any(|f| f.name == "classify"));
}

/// The content hashes of the shipped files as the code before typed
/// definitions computed them: a hash that moved would make every deployed
/// registry refuse its own files at the next sync.
#[test]
fn the_shipped_prompts_keep_their_content_hashes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../prompts");
    let files = load_prompt_dir(&dir).unwrap();
    for (name, version, hash) in [
        (
            "classify",
            1,
            "a695a005d60c4c031c1ffda146d8ad1828c70847ccc065da52d08c175d178290",
        ),
        (
            "summarize",
            1,
            "d398b595b1e74693709761ec7dcb3228b9262b98e6a29d3d7f3da9e23f0ea7f0",
        ),
        (
            "summarize",
            2,
            "4062eda0bb57f91f80d1d74871cefdd4945a74a388ef2c74fbf8dfc1226a12b8",
        ),
    ] {
        let file = files
            .iter()
            .find(|f| f.name == name && f.version == version)
            .unwrap();
        assert_eq!(file.definition.content_hash(), hash, "{name} v{version}");
    }
}

/// A prompts dir with one file, removed on drop.
struct OneFile(std::path::PathBuf);

impl OneFile {
    fn new(name: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "llmq-prompt-unit-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("v1.toml"), text).unwrap();
        Self(dir)
    }

    fn load_error(&self) -> String {
        load_prompt_dir(&self.0).unwrap_err().to_string()
    }
}

impl Drop for OneFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SCHEMA: &str = "[input_schema]\ntype = \"object\"\nrequired = [\"text\"]\n[input_schema.properties.text]\ntype = \"string\"\n";

#[test]
fn load_errors_name_the_file_and_the_field() {
    let cases = [
        // An unknown field, at the top and nested.
        (format!("model = \"m\"\ntemplate = \"{{{{ text }}}}\"\ncolour = 1\n{SCHEMA}"), "colour"),
        (format!("model = \"m\"\ntemplate = \"{{{{ text }}}}\"\n[params]\ntemprature = 0.1\n{SCHEMA}"), "params"),
        // A wrong type.
        (format!("model = \"m\"\ntemplate = \"{{{{ text }}}}\"\n[params]\nmax_tokens = \"ten\"\n{SCHEMA}"), "params.max_tokens"),
        // Out of range.
        (format!("model = \"m\"\ntemplate = \"{{{{ text }}}}\"\n[params]\ntop_p = 3.0\n{SCHEMA}"), "params.top_p"),
        // A template that does not parse.
        (format!("model = \"m\"\ntemplate = \"{{{{ text \"\n{SCHEMA}"), "template"),
        (format!("model = \"m\"\n[[messages]]\nrole = \"user\"\ncontent = \"ok\"\n[[messages]]\nrole = \"robot\"\ncontent = \"x\"\n{SCHEMA}"), "messages[1].role"),
        // Neither a template nor messages.
        (format!("model = \"m\"\n{SCHEMA}"), "template"),
        // A JSON output whose schema is not a schema.
        (format!("model = \"m\"\ntemplate = \"{{{{ text }}}}\"\n{SCHEMA}[output]\ntype = \"json\"\nschema = {{ type = 12 }}\n"), "output.schema"),
        (format!("model = \"m\"\ntemplate = \"{{{{ text }}}}\"\n{SCHEMA}[output]\ntype = \"yaml\"\n"), "output"),
        // An example that breaks the input schema, or does not render.
        (format!("model = \"m\"\ntemplate = \"{{{{ text }}}}\"\nexamples = [{{ text = \"ok\" }}, {{ text = 5 }}]\n{SCHEMA}"), "examples[1]"),
        (format!("model = \"m\"\ntemplate = \"{{{{ text }}}} {{{{ other }}}}\"\nexamples = [{{ text = \"ok\" }}]\n{SCHEMA}"), "examples[0]"),
        (format!("model = \"m\"\ntemplate = \"{{{{ text }}}}\"\ntools = [\"Bad Name\"]\n{SCHEMA}"), "tools[0]"),
        // A tool choice with no tools, or naming a tool the version does not list.
        (format!("model = \"m\"\ntemplate = \"{{{{ text }}}}\"\ntool_choice = \"required\"\n{SCHEMA}"), "tool_choice"),
        (format!("model = \"m\"\ntemplate = \"{{{{ text }}}}\"\ntools = [\"search\"]\ntool_choice = \"weather\"\n{SCHEMA}"), "tool_choice"),
        // llmq sets tool_choice itself.
        (format!("model = \"m\"\ntemplate = \"{{{{ text }}}}\"\n[params.extra]\ntool_choice = \"required\"\n{SCHEMA}"), "params.extra.tool_choice"),
    ];
    for (text, field) in cases {
        let file = OneFile::new("p", &text);
        let error = file.load_error();
        assert!(error.contains("p/v1.toml"), "names the file: {error}");
        assert!(error.contains(field), "names {field}: {error}");
    }
}

#[test]
fn a_full_definition_loads_with_every_field() {
    let file = OneFile::new(
        "full",
        r#"description = "Everything a version can say."
model = "gpt-4o-mini"
tools = ["search"]
tool_choice = "search"
tokenizer = "cl100k_base"
examples = [{ text = "hello", tags = ["a", "b"] }]

[[messages]]
role = "system"
content = "Tags: {{ tags | default([]) | join(', ') }}"
[[messages]]
role = "user"
content = "{{ text | truncate(100) }}"
[[messages]]
role = "assistant"
content = "ok"
[[messages]]
role = "user"
content = "{{ text | truncate_tokens(50) }}"

[params]
temperature = 0.3
top_p = 0.9
max_tokens = 64
stop = ["\n\n"]
seed = 7
presence_penalty = 0.1
frequency_penalty = 0.2
[params.extra]
top_k = 40

[input_schema]
type = "object"
required = ["text"]
[input_schema.properties.text]
type = "string"
[input_schema.properties.tags]
type = "array"

[output]
type = "json"
max_repairs = 1
schema = { type = "object", required = ["sentiment"], properties = { sentiment = { enum = ["positive", "negative"] } } }

[limits]
generate_timeout_secs = 5
max_attempts = 2
"#,
    );
    let files = load_prompt_dir(&file.0).unwrap();
    let d = &files[0].definition;
    assert_eq!(d.output.max_repairs(), 1);
    assert_eq!(d.params.to_map()["top_k"], json!(40));
    assert_eq!(d.params.to_map()["seed"], json!(7));
    assert!(d.params.to_map().get("extra").is_none());
    let p = CompiledPrompt::compile("full", 1, d.clone()).unwrap();
    let m = p
        .render(&json!({"text": "hi", "tags": ["x", "y"]}))
        .unwrap();
    let roles: Vec<_> = m.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(m[0].content, "Tags: x, y");
    // The definition round-trips through the JSON stored in Postgres.
    let stored = serde_json::to_value(d).unwrap();
    assert_eq!(&PromptDefinition::from_json(&stored).unwrap(), d);
}

#[test]
fn the_first_turns_tool_choice_is_a_word_or_a_named_function() {
    let mut d = definition();
    assert_eq!(d.first_tool_choice(), None);
    d.tools = vec!["search".into(), "required".into()];
    d.tool_choice = Some("required".into());
    // The word wins over a tool of that name.
    assert_eq!(d.first_tool_choice(), Some(json!("required")));
    d.tool_choice = Some("auto".into());
    assert_eq!(d.first_tool_choice(), Some(json!("auto")));
    d.tool_choice = Some("search".into());
    assert_eq!(
        d.first_tool_choice(),
        Some(json!({"type": "function", "function": {"name": "search"}}))
    );
    assert!(d.check().is_empty(), "{:?}", d.check());
    // Absent, it is not serialized: stored versions keep their hashes.
    d.tool_choice = None;
    assert!(serde_json::to_value(&d)
        .unwrap()
        .get("tool_choice")
        .is_none());
}

#[test]
fn a_definition_sent_as_json_names_the_bad_field() {
    let e = PromptDefinition::from_json(&json!({
        "model": "m", "template": "x", "input_schema": {}, "params": {"seed": "x"}
    }))
    .unwrap_err();
    assert_eq!(e.field, "params.seed", "{e}");
}

fn with_template(template: &str) -> CompiledPrompt {
    let mut d = definition();
    d.system = None;
    d.template = Some(template.into());
    d.input_schema = json!({"type": "object"});
    CompiledPrompt::compile("f", 1, d).unwrap()
}

fn render_user(template: &str, input: serde_json::Value) -> String {
    with_template(template).render(&input).unwrap()[0]
        .content
        .clone()
}

#[test]
fn filters_join_truncate_tojson_and_default() {
    assert_eq!(
        render_user("{{ xs | join(', ') }}", json!({"xs": ["a", "b", "c"]})),
        "a, b, c"
    );
    assert_eq!(
        render_user("{{ t | truncate(8) }}", json!({"t": "abcdefghijkl"})),
        "abcde..."
    );
    assert_eq!(
        render_user(
            "{{ t | truncate(4, end='') }}",
            json!({"t": "日本語のテキスト"})
        ),
        "日本語の"
    );
    assert_eq!(
        render_user("{{ t | truncate(50) }}", json!({"t": "short"})),
        "short"
    );
    assert_eq!(
        render_user("{{ v | tojson }}", json!({"v": {"a": [1, "<b>"]}})),
        r#"{"a":[1,"<b>"]}"#
    );
    assert_eq!(
        render_user("{{ v | tojson(indent=2) }}", json!({"v": {"a": 1}})),
        "{\n  \"a\": 1\n}"
    );
    assert_eq!(
        render_user("{{ missing | default('none') }}", json!({})),
        "none"
    );
    assert_eq!(
        render_user("{{ given | default('none') }}", json!({"given": "x"})),
        "x"
    );
}

#[test]
fn truncate_tokens_counts_with_the_models_tokenizer() {
    let text = "Postgres is the source of truth and RabbitMQ is transport. ".repeat(30);
    let out = render_user("{{ t | truncate_tokens(12) }}", json!({"t": text}));
    // The definition's model "m" is unknown to tiktoken: the default.
    assert_eq!(
        tokens::count_tokens(tokens::DEFAULT_TOKENIZER, &out),
        12,
        "{out}"
    );
    assert!(text.starts_with(&out));
    assert_eq!(
        render_user("{{ t | truncate_tokens(1000) }}", json!({"t": "tiny"})),
        "tiny"
    );
}

#[test]
fn every_failing_input_path_is_listed() {
    let mut d = definition();
    d.input_schema = json!({
        "type": "object",
        "required": ["text", "lang"],
        "additionalProperties": false,
        "properties": {
            "text": {"type": "string"},
            "lang": {"type": "string"},
            "items": {"type": "array", "items": {"type": "integer"}}
        }
    });
    let p = CompiledPrompt::compile("s", 1, d).unwrap();
    let v = p.validate_input(&json!({"text": 3, "items": [1, "x", "y"], "colour": "red"}));
    let mut paths: Vec<_> = v.iter().map(|v| v.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "input.colour",
            "input.items[1]",
            "input.items[2]",
            "input.lang",
            "input.text"
        ],
        "{v:?}"
    );
}

#[test]
fn output_violations_name_their_paths() {
    let mut d = definition();
    d.output = OutputSpec::Json {
        schema: Some(json!({
            "type": "object",
            "required": ["sentiment"],
            "additionalProperties": false,
            "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]}}
        })),
        max_repairs: None,
        strict: None,
    };
    let p = CompiledPrompt::compile("s", 1, d).unwrap();
    assert!(p
        .validate_output(&json!({"sentiment": "neutral"}))
        .is_empty());
    let v = p.validate_output(&json!({"mood": "meh"}));
    let paths: Vec<_> = v.iter().map(|v| v.path.as_str()).collect();
    assert!(paths.contains(&"output.sentiment"), "{v:?}");
    assert!(paths.contains(&"output.mood"), "{v:?}");
    assert_eq!(p.definition.output.max_repairs(), DEFAULT_MAX_REPAIRS);
}

#[test]
fn user_is_another_name_for_template_and_hashes_the_same() {
    let a = PromptDefinition::from_toml(&format!(
        "model = \"m\"\nuser = \"{{{{ text }}}}\"\n{SCHEMA}"
    ))
    .unwrap();
    let b = PromptDefinition::from_toml(&format!(
        "model = \"m\"\ntemplate = \"{{{{ text }}}}\"\n{SCHEMA}"
    ))
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.content_hash(), b.content_hash());
    // Both at once, or a system message beside `messages`, is refused.
    let both = format!(
        "model = \"m\"\ntemplate = \"x\"\n[[messages]]\nrole = \"user\"\ncontent = \"y\"\n{SCHEMA}"
    );
    let errors = PromptDefinition::from_toml(&both).unwrap().check();
    assert!(errors.iter().any(|e| e.field == "messages"), "{errors:?}");
}

//! Tool calling: the model proposes, llmq decides. Each test runs the real
//! pipeline against the fake provider (which proposes tool calls on
//! `[[tool:NAME {args}]]` markers) and the fake tool server (which counts
//! calls per `Idempotency-Key`).

use std::time::Duration;

use llmq_tests::{TempPrompts, TestApp, ToolServer};
use serde_json::{json, Value};
use uuid::Uuid;

/// A version allowed to call `weather`, `strict` and `slow` (not `launch`).
const ASSISTANT: &str = r#"description = "Answers with the help of tools."
model = "gpt-4o-mini"
template = "{{ text }}"
tools = ["weather", "strict", "slow"]

[limits]
max_tool_rounds = 2

[input_schema]
type = "object"
required = ["text"]

[input_schema.properties.text]
type = "string"
"#;

struct Setup {
    app: TestApp,
    tools: ToolServer,
    _prompts: TempPrompts,
}

async fn setup(configure: impl FnOnce(&ToolServer)) -> Setup {
    let tools = ToolServer::start().await.unwrap();
    tools
        .define(
            "weather",
            "idempotent = true\n[credential]\nheader = \"X-Tool-Key\"\nsecret = \"weather\"\n",
        )
        .define("launch", "")
        .define("strict", "")
        .define(
            "slow",
            "idempotent = true\ntimeout_ms = 300\n[retry]\nmax_attempts = 3\nbase_ms = 10\nmax_ms = 50\n",
        );
    configure(&tools);
    let prompts = TempPrompts::with_shipped();
    prompts
        .add("assistant", 1, ASSISTANT)
        .add(
            "registrar",
            1,
            &ASSISTANT.replace(
                r#"tools = ["weather", "strict", "slow"]"#,
                r#"tools = ["registered"]"#,
            ),
        )
        .add(
            "chooser",
            1,
            &ASSISTANT.replace(
                r#"tools = ["weather", "strict", "slow"]"#,
                "tools = [\"weather\", \"strict\"]\ntool_choice = \"weather\"",
            ),
        );
    let (prompts_dir, tools_dir) = (prompts.dir.clone(), tools.tools_dir.clone());
    let app = TestApp::builder()
        .configure(move |s| {
            s.prompts_dir = prompts_dir;
            s.tools_dir = tools_dir;
            s.tools
                .secrets
                .insert("weather".into(), "weather-secret".into());
            // Tools registered through the API may point at the test's
            // tool server, with a secret of the tenant.
            s.tools.allow_http = true;
            s.tools.allowed_hosts = vec!["127.0.0.1".into()];
            s.tools.tenant_secrets.insert(
                "default".into(),
                [("reg".to_string(), "tenant-secret".to_string())].into(),
            );
        })
        .spawn()
        .await;
    Setup {
        app,
        tools,
        _prompts: prompts,
    }
}

async fn run(app: &TestApp, text: &str) -> (String, Value) {
    run_prompt(app, "assistant", text).await
}

async fn run_prompt(app: &TestApp, prompt: &str, text: &str) -> (String, Value) {
    let text = format!("{text} ({})", Uuid::now_v7().simple());
    let body = json!({"prompt": prompt, "input": {"text": text}});
    let id = app.submit_accepted(&body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = app.wait_until_terminal(&id, Duration::from_secs(20)).await;
    (id, done)
}

async fn steps(app: &TestApp, id: &str) -> Vec<Value> {
    let body: Value = app.steps(id).await.json().await.unwrap();
    body["steps"].as_array().unwrap().clone()
}

fn of_kind<'a>(steps: &'a [Value], kind: &str) -> Vec<&'a Value> {
    steps.iter().filter(|s| s["kind"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_tool_runs_with_its_credential_and_its_result_reaches_the_model() {
    let s = setup(|_| {}).await;
    let (id, done) = run(&s.app, r#"Weather? [[tool:weather {"city":"Oslo"}]]"#).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The fake model echoes the tool results it was given.
    let output = done["output"].as_str().unwrap();
    assert!(
        output.contains("(tool result: ") && output.contains(r#""city":"Oslo""#),
        "{output}"
    );
    let calls = s.tools.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].tool, "weather");
    assert_eq!(calls[0].arguments, json!({"city": "Oslo"}));
    assert_eq!(calls[0].credential.as_deref(), Some("weather-secret"));
    assert_eq!(calls[0].idempotency_key, format!("llmq-{id}-1-0"));

    let steps = steps(&s.app, &id).await;
    let kinds: Vec<&str> = steps.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["render", "generate", "tool:weather", "generate", "finalize"],
        "{steps:#?}"
    );
    let round = &steps[1];
    assert_eq!(round["input"]["answered_with"], "tool_calls");
    assert_eq!(round["output"]["tool_calls"][0]["name"], "weather");
    let tool = &steps[2];
    assert_eq!(tool["status"], "succeeded");
    assert_eq!(tool["input"]["arguments"], json!({"city": "Oslo"}));
    assert_eq!(tool["output"]["http_status"], 200);
    assert!(tool["latency_ms"].as_f64().is_some());
    // The usage of both model turns is the execution's.
    let turns: i64 = of_kind(&steps, "generate")
        .iter()
        .map(|g| g["usage"]["total_tokens"].as_i64().unwrap())
        .sum();
    assert_eq!(done["usage"]["total_tokens"].as_i64(), Some(turns));
    s.app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versions_tool_choice_is_sent_on_the_first_turn_only() {
    let s = setup(|_| {}).await;
    let marker = Uuid::now_v7().simple().to_string();
    let (id, done) = run_prompt(
        &s.app,
        "chooser",
        &format!(r#"Weather {marker}? [[tool:weather {{"city":"Bergen"}}]]"#),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The tool's result reached the model (the fake echoes it).
    let output = done["output"].as_str().unwrap();
    assert!(output.contains(r#""city":"Bergen""#), "{output}");
    let turns = s.app.fake.calls_containing(&marker);
    assert_eq!(turns.len(), 2, "{turns:?}");
    // The first turn names the function; the turn after the tool result
    // carries no tool_choice, so the model may answer.
    assert_eq!(
        turns[0].tool_choice,
        Some(json!({"type": "function", "function": {"name": "weather"}}))
    );
    assert_eq!(turns[1].tool_choice, None);
    let steps = steps(&s.app, &id).await;
    let generates = of_kind(&steps, "generate");
    assert_eq!(generates.len(), 2, "{steps:#?}");
    assert_eq!(
        generates[0]["input"]["tool_choice"]["function"]["name"],
        "weather"
    );
    assert!(
        generates[1]["input"].get("tool_choice").is_none(),
        "{steps:#?}"
    );
    assert_eq!(s.tools.calls().len(), 1);
    s.app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disallowed_tool_and_invalid_arguments_are_refused_recorded_and_fed_back() {
    let s = setup(|_| {}).await;
    let (id, done) = run(
        &s.app,
        r#"Do it [[tool:launch {"city":"Oslo"}]] [[tool:weather {"town":"Oslo"}]] [[tool:weather "not an object"]]"#,
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        s.tools.calls().is_empty(),
        "nothing refused reaches a tool: {:?}",
        s.tools.calls()
    );
    let output = done["output"].as_str().unwrap();
    assert!(output.contains("tool_not_allowed"), "{output}");
    assert!(output.contains("tool_invalid_arguments"), "{output}");
    assert!(output.contains("arguments.city"), "{output}");

    let steps = steps(&s.app, &id).await;
    let launch = of_kind(&steps, "tool:launch");
    assert_eq!(launch.len(), 1, "{steps:#?}");
    assert_eq!(launch[0]["status"], "failed");
    assert_eq!(launch[0]["error"]["code"], "tool_not_allowed");
    let weather = of_kind(&steps, "tool:weather");
    assert_eq!(weather.len(), 2, "{steps:#?}");
    for w in &weather {
        assert_eq!(w["error"]["code"], "tool_invalid_arguments", "{w}");
    }
    assert!(weather[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("arguments.city: required property missing"));
    s.app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_timeout_is_retried_within_its_policy_and_a_4xx_is_not() {
    let s = setup(|t| {
        // `slow` times out after 300 ms: its first answer comes too late.
        t.latency_first("slow", &[3_000]);
        t.fail_first("strict", &[422]);
    })
    .await;
    let (id, done) = run(
        &s.app,
        r#"Go [[tool:slow {"city":"Oslo"}]] [[tool:strict {"city":"Oslo"}]]"#,
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let per_key = s.tools.calls_per_key();
    assert_eq!(
        per_key.get(&format!("llmq-{id}-1-0")),
        Some(&2),
        "{per_key:?}"
    );
    assert_eq!(
        per_key.get(&format!("llmq-{id}-1-1")),
        Some(&1),
        "{per_key:?}"
    );

    let steps = steps(&s.app, &id).await;
    let slow = of_kind(&steps, "tool:slow");
    assert_eq!(slow.len(), 1);
    assert_eq!(slow[0]["status"], "succeeded", "{:#}", slow[0]);
    assert_eq!(slow[0]["output"]["tries"], 2);
    let strict = of_kind(&steps, "tool:strict");
    assert_eq!(strict[0]["status"], "failed");
    assert_eq!(strict[0]["error"]["code"], "tool_rejected");
    assert_eq!(strict[0]["output"]["tries"], 1);
    // The model was told about the rejection.
    assert!(done["output"].as_str().unwrap().contains("tool_rejected"));
    s.app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rounds_limit_ends_the_execution_with_its_code() {
    let s = setup(|_| {}).await;
    let (id, done) = run(
        &s.app,
        r#"Again and again [[tool:weather {"city":"Oslo"}]] [[tools:endless]]"#,
    )
    .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "tool_rounds_exceeded", "{done}");
    // Two rounds were allowed and answered; the third turn asked again.
    assert_eq!(s.tools.calls().len(), 2);
    let steps = steps(&s.app, &id).await;
    assert_eq!(of_kind(&steps, "generate").len(), 3, "{steps:#?}");
    s.app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_calls_of_one_turn_run_concurrently() {
    let s = setup(|t| {
        t.latency_first("weather", &[1_000, 1_000, 1_000]);
    })
    .await;
    let (id, done) = run(
        &s.app,
        r#"Three cities [[tool:weather {"city":"Oslo"}]] [[tool:weather {"city":"Bergen"}]] [[tool:weather {"city":"Paris"}]]"#,
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(s.tools.calls().len(), 3);
    assert_eq!(
        s.tools.max_in_flight(),
        3,
        "the three calls were answered at the same time"
    );
    let steps = steps(&s.app, &id).await;
    assert_eq!(of_kind(&steps, "tool:weather").len(), 3);
    s.app.cleanup().await;
}

#[test]
fn the_shipped_tools_compile_and_the_shipped_prompts_name_only_them() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tools = llmq_shared::tool::load_tool_dir(&root.join("tools")).unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"word_count"), "{names:?}");
    let prompts = llmq_shared::prompt::load_prompt_dir(&root.join("prompts")).unwrap();
    let mut with_tools = 0;
    for p in &prompts {
        for tool in &p.definition.tools {
            assert!(
                names.contains(&tool.as_str()),
                "{} v{} names tool {tool}, which tools/ does not define",
                p.name,
                p.version
            );
            with_tools += 1;
        }
    }
    assert!(with_tools > 0, "a shipped prompt shows tool calling");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_naming_a_tool_the_worker_does_not_define_fails_tool_undefined() {
    let s = setup(|_| {}).await;
    std::fs::remove_file(s.tools.tools_dir.join("slow.toml")).unwrap();
    // The running worker loaded `slow` at start; a fresh one has none.
    let mut app = s.app;
    app.stop_worker().await.unwrap();
    app.start_worker().await;
    let (_, done) = run(&app, "No tools needed").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "tool_undefined", "{done}");
    app.cleanup().await;
}

fn registered(url: &str) -> Value {
    json!({
        "description": "A tool the tenant registered.",
        "idempotent": true,
        "endpoint": {"method": "POST", "url": url},
        "credential": {"header": "X-Tool-Key", "secret": "reg"},
        "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_registered_through_the_api_is_called_with_the_tenants_secret() {
    use reqwest::{Method, StatusCode};
    let s = setup(|_| {}).await;
    let url = format!("{}/tools/registered", s.tools.base_url);
    let put = s
        .app
        .send_json(Method::PUT, "/v1/tools/registered", &registered(&url))
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);
    let body: Value = put.json().await.unwrap();
    assert_eq!(body["name"], "registered");
    // The defaults are filled in.
    assert_eq!(body["definition"]["timeout_ms"], 5000);
    let again = s
        .app
        .send_json(Method::PUT, "/v1/tools/registered", &registered(&url))
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    let list: Value = s
        .app
        .get_authorized("/v1/tools")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");

    let (id, done) = run_prompt(
        &s.app,
        "registrar",
        r#"Go [[tool:registered {"city":"Oslo"}]]"#,
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let calls = s.tools.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].credential.as_deref(), Some("tenant-secret"));
    assert_eq!(calls[0].idempotency_key, format!("llmq-{id}-1-0"));

    let deleted = s
        .app
        .send_empty(Method::DELETE, "/v1/tools/registered")
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = s.app.get_authorized("/v1/tools/registered").await;
    llmq_tests::assert_error(gone, StatusCode::NOT_FOUND, "not_found").await;
    let (_, done) = run_prompt(&s.app, "registrar", "No tool any more").await;
    assert_eq!(done["error"]["code"], "tool_undefined", "{done}");
    s.app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_tool_is_refused_naming_the_field_or_the_address() {
    use reqwest::{Method, StatusCode};
    let s = setup(|_| {}).await;
    let url = format!("{}/tools/registered", s.tools.base_url);
    let mut env = registered(&url);
    env["credential"] = json!({"header": "X-Tool-Key", "env": "HOME"});
    let refused = s.app.send_json(Method::PUT, "/v1/tools/t", &env).await;
    let body = llmq_tests::assert_error(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_definition",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("credential.env"),
        "{body}"
    );

    let mut unknown = registered(&url);
    unknown["timeout"] = json!(5);
    let refused = s.app.send_json(Method::PUT, "/v1/tools/t", &unknown).await;
    let body = llmq_tests::assert_error(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_definition",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("timeout"),
        "{body}"
    );

    let private = registered("http://10.1.2.3/tools/x");
    let refused = s.app.send_json(Method::PUT, "/v1/tools/t", &private).await;
    llmq_tests::assert_error(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "tool_url_refused",
    )
    .await;

    let bad_name = s
        .app
        .send_json(Method::PUT, "/v1/tools/Bad%20Name", &registered(&url))
        .await;
    assert_eq!(bad_name.status(), StatusCode::BAD_REQUEST);
    let list: Value = s
        .app
        .get_authorized("/v1/tools")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]), "nothing refused is stored");
    s.app.cleanup().await;
}

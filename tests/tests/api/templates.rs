//! Prompt files as a contract, end to end: a file is checked at load with
//! errors naming the file and the field, input is checked against the
//! version's schema with every failing path listed, templates render
//! strictly at submit with the filters prompts need, and the render step
//! records the exact prompt the model was sent.

use std::time::Duration;

use llmq_api::startup::sync_prompts;
use llmq_shared::prompt::tokens;
use llmq_tests::app::test_settings;
use llmq_tests::{assert_error, TempPrompts, TestApp, TestDatabase};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const DIGEST: &str = r#"description = "Filters at work."
model = "gpt-4o-mini"

[[messages]]
role = "system"
content = "Audience: {{ audience | default('engineers') }}. Tags: {{ tags | join(' + ') }}."

[[messages]]
role = "user"
content = """Title: {{ title | truncate(12) }}
Data: {{ data | tojson }}
Body: {{ body | truncate_tokens(9) }}"""

[input_schema]
type = "object"
required = ["title", "tags", "data", "body"]
additionalProperties = false
[input_schema.properties.title]
type = "string"
[input_schema.properties.tags]
type = "array"
items = { type = "string" }
[input_schema.properties.data]
type = "object"
[input_schema.properties.body]
type = "string"
[input_schema.properties.audience]
type = "string"
"#;

async fn app_with(prompts: &TempPrompts, worker: bool) -> TestApp {
    let dir = prompts.dir.clone();
    let builder = TestApp::builder().configure(move |s| s.prompts_dir = dir);
    if worker {
        builder.spawn().await
    } else {
        builder.without_worker().spawn().await
    }
}

async fn execution_count(app: &TestApp) -> i64 {
    app.db()
        .await
        .query_one("SELECT count(*) FROM executions", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_shape_the_prompt_the_model_is_sent_and_the_render_step_records_it() {
    let prompts = TempPrompts::with_shipped();
    prompts.add("digest", 1, DIGEST);
    let app = app_with(&prompts, true).await;

    let marker = Uuid::now_v7().simple().to_string();
    let body_text =
        "Postgres is the source of truth; RabbitMQ is transport, never the source of truth."
            .to_string();
    let input = json!({
        "title": "A title that is far too long",
        "tags": ["durable", marker],
        "data": {"n": 1, "html": "<b>&</b>"},
        "body": body_text,
    });
    let id = app
        .submit_accepted(&json!({"prompt": "digest", "input": input}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");

    // gpt-4o-mini counts with o200k_base.
    assert_eq!(tokens::tokenizer_for("gpt-4o-mini", None), "o200k_base");
    let body_cut = tokens::truncate_tokens("o200k_base", &body_text, 9);
    // At most 9 tokens (re-encoding a cut can merge its last pieces).
    let counted = tokens::count_tokens("o200k_base", &body_cut);
    assert!((1..=9).contains(&counted), "{counted}: {body_cut:?}");
    assert!(body_text.starts_with(&body_cut) && body_cut.len() < body_text.len());
    let system = format!("Audience: engineers. Tags: durable + {marker}.");
    let user = format!(
        "Title: A title t...\nData: {}\nBody: {body_cut}",
        r#"{"html":"<b>&</b>","n":1}"#
    );

    let calls = app.fake.calls_containing(&marker);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].key, format!("{system}\n{user}"));

    // The render step keeps the messages, their exact hash and the version.
    let steps: Value = app.steps(&id).await.json().await.unwrap();
    let render = &steps["steps"][0];
    assert_eq!(render["kind"], "render");
    let messages = json!([
        {"role": "system", "content": system},
        {"role": "user", "content": user},
    ]);
    assert_eq!(render["output"]["messages"], messages);
    assert_eq!(
        render["output"]["prompt"],
        json!({"name": "digest", "version": 1})
    );
    let exact: String =
        Sha256::digest(llmq_shared::canonical::canonical_json(&messages).as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    assert_eq!(render["output"]["messages_sha256"], exact);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undefined_variable_is_refused_at_submit_not_in_the_worker() {
    let prompts = TempPrompts::with_shipped();
    prompts.add(
        "greet",
        1,
        r#"model = "gpt-4o-mini"
template = "Hello {{ name | upper }} from {{ place | truncate(20) }}"
[input_schema]
type = "object"
required = ["name"]
"#,
    );
    let app = app_with(&prompts, false).await;

    let error = assert_error(
        app.submit(&json!({"prompt": "greet", "input": {"name": "Ada"}}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "template_error",
    )
    .await;
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("undefined"), "{error:#}");
    assert!(message.contains("`place` not in the input"), "{error:#}");
    assert_eq!(
        execution_count(&app).await,
        0,
        "the refused submit left a row"
    );
    let accepted = app
        .submit(&json!({"prompt": "greet", "input": {"name": "Ada", "place": "London"}}))
        .await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_lists_every_failing_path() {
    let prompts = TempPrompts::with_shipped();
    prompts.add("digest", 1, DIGEST);
    let app = app_with(&prompts, false).await;

    let error = assert_error(
        app.submit(&json!({"prompt": "digest", "input": {
            "title": 7,
            "tags": ["ok", 3, false],
            "colour": "red"
        }}))
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_input",
    )
    .await;
    let mut paths: Vec<&str> = error["details"]["violations"]
        .as_array()
        .expect("details.violations")
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "input.body",
            "input.colour",
            "input.data",
            "input.tags[1]",
            "input.tags[2]",
            "input.title"
        ],
        "{error:#}"
    );
    assert!(
        error["details"]["violations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["message"].as_str().is_some_and(|m| !m.is_empty())),
        "{error:#}"
    );
    assert_eq!(execution_count(&app).await, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_parameter_override_is_a_bad_request_naming_it() {
    let app = TestApp::builder().without_worker().spawn().await;
    let error = assert_error(
        app.submit(
            &json!({"prompt": "summarize", "input": {"text": "hi"}, "params": {"top_p": 7}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("params.top_p"),
        "{error:#}"
    );
    assert_eq!(execution_count(&app).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn a_prompt_file_that_breaks_the_contract_stops_the_sync_naming_file_and_field() {
    llmq_tests::init_tracing();
    let database = TestDatabase::create().await.unwrap();
    let pool = llmq_shared::db::create_pool(&database.url, 2).unwrap();
    let prompts = TempPrompts::with_shipped();
    prompts.add(
        "broken",
        3,
        r#"model = "gpt-4o-mini"
template = "{{ text }}"
[params]
temperature = 0.2
max_tokens = "lots"
[input_schema]
type = "object"
"#,
    );
    let mut settings = test_settings(&database.url, "http://127.0.0.1:9/v1");
    settings.prompts_dir = prompts.dir.clone();

    let error = sync_prompts(&settings, &pool)
        .await
        .expect_err("a broken file stops the sync");
    let message = format!("{error:#}");
    assert!(message.contains("broken/v3.toml"), "{message}");
    assert!(message.contains("params.max_tokens"), "{message}");
    // Nothing of that sync was stored.
    let stored: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM prompt_versions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);

    pool.close();
    database.drop_database().await.unwrap();
}

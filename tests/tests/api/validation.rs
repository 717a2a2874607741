//! Requests the API refuses, and how: the status and the error shape
//! `{"error": {"code", "message", "details"?}}` clients program against.
//! Nothing refused may leave a row behind.

use llmq_tests::{assert_error, TestApp};
use reqwest::StatusCode;
use serde_json::json;

async fn api_only() -> TestApp {
    TestApp::builder().without_worker().spawn().await
}

async fn execution_count(app: &TestApp) -> i64 {
    app.db()
        .await
        .query_one("SELECT count(*) FROM executions", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn an_unknown_prompt_version_or_label_is_not_found() {
    let app = api_only().await;

    let error = assert_error(
        app.submit(&json!({"prompt": "no-such-prompt", "input": {"text": "hi"}}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no-such-prompt"),
        "{error}"
    );

    let error = assert_error(
        app.submit(&json!({"prompt": "summarize", "version": 99, "input": {"text": "hi"}}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(error["message"].as_str().unwrap().contains("99"), "{error}");

    let error = assert_error(
        app.submit(
            &json!({"prompt": "summarize", "label": "no-such-label", "input": {"text": "hi"}}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("no-such-label"),
        "{error}"
    );

    assert_eq!(execution_count(&app).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn input_of_the_wrong_type_is_unprocessable_and_names_its_path() {
    let app = api_only().await;

    let error = assert_error(
        app.submit(&json!({"prompt": "summarize", "input": {"text": 5}}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_input",
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("input.text"),
        "{error}"
    );
    let paths: Vec<&str> = error["details"]["violations"]
        .as_array()
        .expect("details.violations is a list")
        .iter()
        .filter_map(|v| v["path"].as_str())
        .collect();
    assert!(paths.contains(&"input.text"), "{error}");

    assert_eq!(execution_count(&app).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn input_missing_a_required_property_is_unprocessable() {
    let app = api_only().await;

    let error = assert_error(
        app.submit(&json!({"prompt": "summarize", "input": {"max_sentences": 2}}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_input",
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("text"),
        "{error}"
    );

    // A property the schema does not allow is refused the same way.
    assert_error(
        app.submit(&json!({"prompt": "summarize", "input": {"text": "hi", "colour": "red"}}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_input",
    )
    .await;

    assert_eq!(execution_count(&app).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn malformed_json_is_a_bad_request() {
    let app = api_only().await;

    assert_error(
        app.submit_with_raw_body(r#"{"prompt": "summarize", "input": "#, "application/json")
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert_error(
        app.submit_with_raw_body("", "application/json").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    // Valid JSON of the wrong shape is refused before the prompt is looked at.
    assert_error(
        app.submit(&json!({"prompt": "summarize", "input": {"text": "hi"}, "priority": "high"}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;

    assert_eq!(execution_count(&app).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn an_unknown_top_level_field_is_a_bad_request_naming_it() {
    let app = api_only().await;

    let error = assert_error(
        app.submit(&json!({"prompt": "summarize", "input": {"text": "hi"}, "temprature": 0.3}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("temprature"),
        "{error}"
    );

    assert_eq!(execution_count(&app).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn a_body_over_the_configured_limit_is_payload_too_large() {
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| s.api.max_body_bytes = 4096)
        .spawn()
        .await;

    let text = "word ".repeat(2000);
    assert_error(
        app.submit(&json!({"prompt": "summarize", "input": {"text": text}}))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    // Just under the limit is fine.
    let text = "word ".repeat(600);
    app.submit_accepted(&json!({"prompt": "summarize", "input": {"text": text}}))
        .await;

    assert_eq!(execution_count(&app).await, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn a_missing_or_wrong_api_key_is_unauthorized() {
    let app = api_only().await;
    let body = json!({"prompt": "summarize", "input": {"text": "hi"}});

    let response = app
        .client
        .post(app.url("/v1/executions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap()),
        Some("Bearer")
    );
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let response = app
        .client
        .post(app.url("/v1/executions"))
        .bearer_auth("wrong-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Not a bearer token at all.
    let response = app
        .client
        .post(app.url("/v1/executions"))
        .header("authorization", format!("Basic {}", app.api_key))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Reads need the key too, even for an id that does not exist.
    let id = uuid::Uuid::now_v7();
    for path in [
        format!("/v1/executions/{id}"),
        format!("/v1/executions/{id}/steps"),
    ] {
        assert_error(
            app.get_unauthenticated(&path).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        assert_error(
            app.get_with_key(&path, Some("wrong-key")).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }

    assert_eq!(execution_count(&app).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn an_unknown_or_malformed_execution_id_is_not_found() {
    let app = api_only().await;
    let unknown = uuid::Uuid::now_v7().to_string();

    assert_error(
        app.get_execution(&unknown).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get_execution_wait(&unknown, 1).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.steps(&unknown).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get_execution("not-a-uuid").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.steps("not-a-uuid").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // An unknown route answers in the same shape.
    assert_error(
        app.get_authorized("/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_cannot_render_the_input_is_unprocessable_at_submit() {
    // A version whose template uses a variable its schema does not require:
    // strict rendering refuses the input at submit, not later in a worker.
    let dir = std::env::temp_dir().join(format!("llmq-prompts-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(dir.join("greet")).unwrap();
    std::fs::write(
        dir.join("greet/v1.toml"),
        r#"model = "gpt-4o-mini"
template = "Hello {{ name }} from {{ place }}"
[input_schema]
type = "object"
required = ["name"]
[input_schema.properties.name]
type = "string"
[input_schema.properties.place]
type = "string"
"#,
    )
    .unwrap();
    let prompts = dir.clone();
    let app = TestApp::builder()
        .without_worker()
        .configure(move |s| s.prompts_dir = prompts)
        .spawn()
        .await;

    let refused = app
        .submit(&json!({"prompt": "greet", "input": {"name": "Ada"}}))
        .await;
    let body = assert_error(refused, StatusCode::UNPROCESSABLE_ENTITY, "template_error").await;
    assert!(
        body["message"].as_str().unwrap().contains("undefined"),
        "{body:#}"
    );
    let accepted = app
        .submit(&json!({"prompt": "greet", "input": {"name": "Ada", "place": "London"}}))
        .await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let rows: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM executions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the refused submission left no row");

    app.cleanup().await;
    std::fs::remove_dir_all(dir).ok();
}

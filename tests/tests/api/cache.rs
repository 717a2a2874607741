//! The response cache: a request with `cache: true` whose exact call was
//! answered before (same version, rendered messages, model, parameters
//! and organisation) finishes without a model call, with a `generate`
//! step marked cached at zero cost, counted as cached in usage; another
//! organisation asking the same gets its own model call.

use llmq_tests::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn submit(app: &TestApp, key: &str, body: &Value) -> String {
    let response = app
        .client
        .post(app.url("/v1/executions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let v: Value = response.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

async fn wait(app: &TestApp, key: &str, id: &str) -> Value {
    for _ in 0..10 {
        let v: Value = app
            .get_with_key(&format!("/v1/executions/{id}?wait=5"), Some(key))
            .await
            .json()
            .await
            .unwrap();
        if llmq_tests::is_terminal(&v) {
            return v;
        }
    }
    panic!("{id} not terminal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_hit_makes_no_provider_call() {
    let app = TestApp::spawn().await;
    app.create_org("other-org").await;
    let other_key = app.create_key("other-org", &["*"]).await;
    let text = format!("cached {} text to summarize", uuid::Uuid::now_v7().simple());
    let body = json!({"prompt": "summarize", "input": {"text": text}, "cache": true, "cache_ttl_secs": 60});
    let key = app.api_key.clone();

    let first = wait(&app, &key, &submit(&app, &key, &body).await).await;
    assert_eq!(first["status"], "succeeded", "{first:#}");
    assert_eq!(app.fake.calls_containing(&text).len(), 1);

    let id = submit(&app, &key, &body).await;
    let second = wait(&app, &key, &id).await;
    assert_eq!(second["status"], "succeeded", "{second:#}");
    assert_eq!(second["output"], first["output"]);
    assert_eq!(
        app.fake.calls_containing(&text).len(),
        1,
        "the hit called the model"
    );
    assert_eq!(second["usage"]["total_tokens"], 0, "{second:#}");
    assert_eq!(second["usage"]["cost_usd"], 0.0, "{second:#}");
    let trace: Value = app.steps(&id).await.json().await.unwrap();
    let generate = trace["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "generate")
        .expect("a generate step")
        .clone();
    assert_eq!(generate["status"], "succeeded");
    assert_eq!(generate["params"]["cached"], true, "{generate:#}");

    // Without `cache`, the same request calls the model.
    let uncached = json!({"prompt": "summarize", "input": {"text": text}});
    let third = wait(&app, &key, &submit(&app, &key, &uncached).await).await;
    assert_eq!(third["status"], "succeeded");
    assert_eq!(app.fake.calls_containing(&text).len(), 2);
    // Another organisation is never served this one's answer.
    let theirs = wait(&app, &other_key, &submit(&app, &other_key, &body).await).await;
    assert_eq!(theirs["status"], "succeeded");
    assert_eq!(app.fake.calls_containing(&text).len(), 3);

    let usage: Value = app
        .get_authorized("/v1/usage?group_by=model")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(usage["total"]["executions"], 3, "{usage:#}");
    assert_eq!(usage["total"]["cached"], 1, "{usage:#}");

    // cache_ttl_secs without cache is a 400.
    let bad = json!({"prompt": "summarize", "input": {"text": "x"}, "cache_ttl_secs": 5});
    let response = app.submit(&bad).await;
    llmq_tests::assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_opts_in_reuses_its_answers_unless_a_request_refuses() {
    let app = TestApp::spawn().await;
    let definition = json!({
        "model": "gpt-4o-mini",
        "template": "Summarize briefly: {{ text }}",
        "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
        "cache": {"ttl_secs": 60}
    });
    let response = app
        .send_json(
            reqwest::Method::POST,
            "/v1/prompts/summarize/versions",
            &definition,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let version = response.json::<Value>().await.unwrap()["version"].clone();
    let text = format!("version cache {}", uuid::Uuid::now_v7().simple());
    let body = json!({"prompt": "summarize", "version": version, "input": {"text": text}});
    let key = app.api_key.clone();
    for _ in 0..2 {
        let done = wait(&app, &key, &submit(&app, &key, &body).await).await;
        assert_eq!(done["status"], "succeeded", "{done:#}");
    }
    assert_eq!(
        app.fake.calls_containing(&text).len(),
        1,
        "the version's cache was not used"
    );
    let refused =
        json!({"prompt": "summarize", "version": version, "input": {"text": text}, "cache": false});
    let done = wait(&app, &key, &submit(&app, &key, &refused).await).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(
        app.fake.calls_containing(&text).len(),
        2,
        "cache: false was not honoured"
    );
    // A bad TTL in a definition is refused with the field named.
    let bad = json!({
        "model": "gpt-4o-mini", "template": "x {{ text }}",
        "input_schema": {"type": "object"}, "cache": {"ttl_secs": 0}
    });
    let response = app
        .send_json(
            reqwest::Method::POST,
            "/v1/prompts/summarize/versions",
            &bad,
        )
        .await;
    let error = llmq_tests::assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_definition",
    )
    .await;
    assert!(error.to_string().contains("cache.ttl_secs"), "{error}");
    app.cleanup().await;
}

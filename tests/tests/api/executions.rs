//! Submitting and reading executions through the API alone (no worker):
//! what a 202 promises — a durable row naming the exact prompt version —
//! and how a version or label is chosen.

use llmq_tests::{assert_error, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn api_only() -> TestApp {
    TestApp::builder().without_worker().spawn().await
}

#[tokio::test]
async fn a_submitted_execution_is_accepted_queued_and_durable() {
    let app = api_only().await;

    let response = app
        .submit(&json!({
            "prompt": "summarize",
            "input": {"text": "The quick brown fox."},
            "metadata": {"ticket": "T-1"},
            "user": "u_123",
            "priority": 7
        }))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response
        .headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();

    let id = body["id"].as_str().expect("an id");
    let uuid = uuid::Uuid::parse_str(id).expect("the id is a UUID");
    assert_eq!(uuid.get_version_num(), 7, "the id is a UUIDv7");
    assert_eq!(location, format!("/v1/executions/{id}"));
    assert_eq!(body["status"], "queued");
    assert_eq!(
        body["prompt"],
        json!({"name": "summarize", "version": 2, "label": "production"})
    );
    assert_eq!(body["input"], json!({"text": "The quick brown fox."}));
    assert_eq!(body["metadata"], json!({"ticket": "T-1"}));
    assert_eq!(body["links"]["self"], location);

    // Durable before the answer, with the exact version the label named.
    let row = app
        .execution_row(id)
        .await
        .expect("the execution row exists");
    assert_eq!(row.get::<_, String>("prompt_name"), "summarize");
    assert_eq!(row.get::<_, i32>("prompt_version"), 2);
    assert_eq!(
        row.get::<_, Option<String>>("prompt_label").as_deref(),
        Some("production")
    );
    assert_eq!(row.get::<_, String>("status"), "queued");
    assert_eq!(
        row.get::<_, Value>("input"),
        json!({"text": "The quick brown fox."})
    );
    assert_eq!(
        row.get::<_, Option<String>>("end_user").as_deref(),
        Some("u_123")
    );
    assert_eq!(row.get::<_, i16>("priority"), 7);

    // The resource reads back the same.
    let response = app.get_execution(id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let read: Value = response.json().await.unwrap();
    assert_eq!(read["id"], id);
    assert_eq!(read["status"], "queued");
    assert_eq!(read["prompt"], body["prompt"]);

    // No steps yet, but the execution exists.
    let response = app.steps(id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let steps: Value = response.json().await.unwrap();
    assert_eq!(steps["execution_id"], id);
    assert_eq!(steps["steps"], json!([]));

    app.cleanup().await;
}

#[tokio::test]
async fn a_version_pins_the_execution_to_it() {
    let app = api_only().await;

    let body = app
        .submit_accepted(&json!({"prompt": "summarize", "version": 1, "input": {"text": "hi"}}))
        .await;
    assert_eq!(body["prompt"]["version"], 1);
    assert_eq!(body["prompt"]["label"], Value::Null);

    let row = app
        .execution_row(body["id"].as_str().unwrap())
        .await
        .expect("the execution row exists");
    assert_eq!(row.get::<_, i32>("prompt_version"), 1);
    assert_eq!(row.get::<_, Option<String>>("prompt_label"), None);
    // v1's parameters, not v2's.
    assert_eq!(row.get::<_, Value>("params")["max_tokens"], 200);

    // Naming the production label explicitly is the same as the default.
    let body = app
        .submit_accepted(
            &json!({"prompt": "summarize", "label": "production", "input": {"text": "hi"}}),
        )
        .await;
    assert_eq!(
        body["prompt"],
        json!({"name": "summarize", "version": 2, "label": "production"})
    );

    app.cleanup().await;
}

#[tokio::test]
async fn a_version_and_a_label_together_are_a_bad_request() {
    let app = api_only().await;

    assert_error(
        app.submit(&json!({"prompt": "summarize", "version": 1, "label": "production", "input": {"text": "hi"}})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;

    let count: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM executions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn each_submission_is_a_new_execution_with_a_time_ordered_id() {
    let app = api_only().await;

    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.submit_summary(&format!("text number {i}")).await);
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "ids are distinct and sort in submission order");
    assert_eq!(app.count_with_status("queued").await, 5);

    app.cleanup().await;
}

#[tokio::test]
async fn a_long_poll_on_an_unfinished_execution_returns_it_when_the_wait_ends() {
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| s.api.max_wait_secs = 1)
        .spawn()
        .await;
    let id = app.submit_summary("nobody will run this").await;

    let response = app.get_execution_wait(&id, 1).await;
    assert_eq!(response.status(), StatusCode::OK);
    let execution: Value = response.json().await.unwrap();
    assert_eq!(execution["status"], "queued");

    // A wait beyond the configured maximum is capped to it, not refused
    // (uncapped, this would outlast the client's timeout).
    let response = app.get_execution_wait(&id, 3600).await;
    assert_eq!(response.status(), StatusCode::OK);
    let execution: Value = response.json().await.unwrap();
    assert_eq!(execution["status"], "queued");

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_idempotency_key_can_be_used_again() {
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| s.api.idempotency_ttl_secs = 1)
        .spawn()
        .await;
    let key = format!("expiring-{}", uuid::Uuid::now_v7().simple());
    let submit = |text: &'static str| {
        let app = &app;
        let key = key.clone();
        async move {
            app.client
                .post(app.url("/v1/executions"))
                .bearer_auth(&app.api_key)
                .header("Idempotency-Key", key)
                .json(&serde_json::json!({"prompt": "summarize", "input": {"text": text}}))
                .send()
                .await
                .unwrap()
        }
    };

    let first = submit("first body").await;
    assert_eq!(first.status(), 202);
    let conflict = submit("second body").await;
    assert_eq!(conflict.status(), 409, "a live key with another body");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let again = submit("second body").await;
    assert_eq!(
        again.status(),
        202,
        "the key expired, so this is a new execution"
    );
    app.cleanup().await;
}

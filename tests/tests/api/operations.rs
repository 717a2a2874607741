//! What operators rely on: liveness, readiness of both dependencies, and
//! Prometheus metrics.

use llmq_tests::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn healthz_answers_ok() {
    let app = TestApp::builder().without_worker().spawn().await;

    let response = app.healthz().await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );

    app.cleanup().await;
}

#[tokio::test]
async fn readyz_reports_postgres_and_rabbitmq_reachable() {
    let app = TestApp::builder().without_worker().spawn().await;

    let response = app.readyz().await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"postgres": true, "rabbitmq": true})
    );

    app.cleanup().await;
}

#[tokio::test]
async fn metrics_count_http_requests_in_the_prometheus_format() {
    let app = TestApp::builder().without_worker().spawn().await;
    app.submit_summary("count me").await;

    let response = app.metrics().await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("llmq_http_requests_total{")
                && l.contains("route=\"/v1/executions\"")
                && l.contains("status=\"202\"")
        })
        .unwrap_or_else(|| panic!("no llmq_http_requests_total for the submit in:\n{text}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= 1.0, "{line}");
    assert!(text.contains("llmq_executions_submitted_total"), "{text}");

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_execution_step_and_token_metrics() {
    let app = TestApp::builder().without_worker().spawn().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = app.settings.clone();
    settings.worker.metrics_addr = format!("127.0.0.1:{port}");
    let mut worker = llmq_tests::WorkerProcess::spawn(&settings, "metrics");

    let id = app.submit_summary("measure me").await;
    let execution = app
        .wait_until_terminal(&id, std::time::Duration::from_secs(20))
        .await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");

    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let has = |prefix: &str, labels: &[&str]| {
        text.lines()
            .any(|l| l.starts_with(prefix) && labels.iter().all(|want| l.contains(want)))
    };
    assert!(
        has("llmq_executions_finished_total{", &["status=\"succeeded\""]),
        "{text}"
    );
    for kind in ["render", "generate", "finalize"] {
        assert!(
            has(
                "llmq_step_duration_seconds_bucket{",
                &[&format!("kind=\"{kind}\""), "status=\"succeeded\""]
            ),
            "no {kind} latency histogram in:\n{text}"
        );
    }
    for kind in ["prompt", "completion"] {
        assert!(
            has(
                "llmq_tokens_total{",
                &["model=\"gpt-4o-mini\"", &format!("kind=\"{kind}\"")]
            ),
            "no {kind} tokens in:\n{text}"
        );
    }

    worker.sigterm();
    assert!(worker
        .wait(std::time::Duration::from_secs(20))
        .await
        .is_some_and(|s| s.success()));
    app.cleanup().await;
}

#[tokio::test]
async fn ops_addr_moves_health_metrics_and_the_document_off_the_api_address() {
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| s.api.ops_addr = "127.0.0.1:0".into())
        .spawn()
        .await;
    assert_ne!(app.ops_address, app.address, "a second listener");

    // The operations listener serves the operations routes, unauthenticated.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let response = app.get_ops(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path} on ops_addr");
    }
    // The document still describes the whole API, whichever listener
    // serves a route.
    let doc: Value = app.openapi().await.json().await.unwrap();
    assert!(doc["paths"]["/v1/executions"].is_object(), "{doc}");
    assert!(doc["paths"]["/metrics"].is_object(), "{doc}");

    // The API's address no longer serves them, and the operations listener
    // serves nothing of the API: both answer 404 in the error shape.
    for (base, path) in [
        (&app.address, "/metrics"),
        (&app.address, "/openapi.json"),
        (&app.address, "/readyz"),
        (&app.ops_address, "/v1/executions"),
    ] {
        let response = app
            .client
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{base}{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    // A method a route does not serve is 405 on the listener that has it.
    let post = app
        .client
        .post(app.ops_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers()["allow"], "GET");

    // And the API itself works on its address.
    let id = app.submit_summary("served on api.addr").await;
    assert_eq!(app.get_execution(&id).await.status(), StatusCode::OK);

    app.cleanup().await;
}

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

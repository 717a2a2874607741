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

//! Fairness on a shared worker pool: organisation A's burst of 5,000 does
//! not starve organisation B's 50 submitted right after it. The worker
//! keeps each organisation to `worker.tenant_concurrency` slots and puts
//! the rest back unclaimed, so B's messages behind A's backlog are reached
//! and run while A's backlog is still far from drained.

use std::time::{Duration, Instant};

use futures::StreamExt;
use llmq_tests::TestApp;
use reqwest::StatusCode;
use serde_json::json;

const A_COUNT: usize = 5_000;
const B_COUNT: usize = 50;

async fn submit_many(app: &TestApp, key: &str, org: &str, n: usize) -> Vec<String> {
    let run = uuid::Uuid::now_v7().simple().to_string();
    futures::stream::iter(0..n)
        .map(|i| {
            let body =
                json!({"prompt": "summarize", "input": {"text": format!("{org} {run} {i}")}});
            let request = app
                .client
                .post(app.url("/v1/executions"))
                .bearer_auth(key)
                .json(&body);
            async move {
                let response = request.send().await.expect("submit");
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                let v: serde_json::Value = response.json().await.expect("JSON");
                v["id"].as_str().expect("an id").to_string()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

async fn finished(app: &TestApp, tenant: &str) -> i64 {
    app.db()
        .await
        .query_one(
            "SELECT count(*) FROM executions WHERE tenant_id = $1 AND status = 'succeeded'",
            &[&tenant],
        )
        .await
        .expect("counting")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_organisations_burst_does_not_starve_another() {
    let app = TestApp::builder()
        // Slow enough that A's backlog takes minutes to drain at its share.
        .fake_latency_ms(200)
        .configure(|s| {
            s.worker.concurrency = 16;
            s.worker.tenant_concurrency = 4;
        })
        .spawn()
        .await;
    app.create_org("org-b").await;
    let other_key = app.create_key("org-b", &["*"]).await;
    let a_key = app.api_key.clone();
    let started = Instant::now();
    let a = submit_many(&app, &a_key, "a", A_COUNT).await;
    assert_eq!(a.len(), A_COUNT);
    let b = submit_many(&app, &other_key, "b", B_COUNT).await;
    let submitted = started.elapsed();

    let b_done = app
        .eventually(Duration::from_secs(20), || async {
            finished(&app, "org-b").await == B_COUNT as i64
        })
        .await;
    let a_done = finished(&app, "default").await;
    let b_now = finished(&app, "org-b").await;
    assert!(
        b_done,
        "B finished {b_now} of {B_COUNT} (A {a_done}); submits took {submitted:?}"
    );
    // A runs at 4 at a time × 200 ms: 5,000 take over four minutes. B's
    // 50 are done while A has not finished a tenth of its backlog.
    assert!(
        a_done < (A_COUNT / 10) as i64,
        "A finished {a_done} of {A_COUNT} by the time B's {B_COUNT} were done"
    );
    assert!(a_done > 0, "A made no progress at all");
    tracing::info!(a_done, ?submitted, elapsed = ?started.elapsed(), "fairness");
    drop(b);
    app.cleanup().await;
}

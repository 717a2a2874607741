//! Nothing lost between an outcome and its callback: a worker SIGKILLed
//! right after it committed outcomes (its messages still unacknowledged,
//! so they are redelivered) leaves exactly one delivery per execution,
//! each received once; and the worker that delivers them (a real
//! process) never writes the signing secret to its log.

use std::time::Duration;

use llmq_tests::receiver::Receiver;
use llmq_tests::worker_process::WorkerProcess;
use llmq_tests::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::json;

use super::support;

const EXECUTIONS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_committing_outcomes_still_yields_one_delivery_per_execution() {
    let _shared = support::shared().await;
    let receiver = Receiver::start().await.unwrap();
    let app = TestApp::builder()
        .without_worker()
        .fake_latency_ms(300)
        .configure(|s| {
            s.worker.concurrency = EXECUTIONS;
            s.worker.roles = vec!["executions".into(), "relay".into(), "webhooks".into()];
            s.webhooks.allow_http = true;
            s.webhooks.allowed_hosts = vec!["127.0.0.1".into()];
            s.webhooks.retry_schedule_ms = vec![0, 200, 200];
            s.webhooks.poll_interval_ms = 50;
        })
        .spawn()
        .await;
    let response = app
        .send_json(
            Method::POST,
            "/v1/webhook-endpoints",
            &json!({"url": receiver.url, "event_types": ["execution.succeeded"]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: serde_json::Value = response.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap().to_string();

    // The victim only runs executions: nothing it commits is delivered by it.
    let mut victim_settings = app.settings.clone();
    victim_settings.worker.roles = vec!["executions".into()];
    let mut victim = WorkerProcess::spawn(&victim_settings, "webhook-victim");
    let mut ids = Vec::new();
    for i in 0..EXECUTIONS {
        ids.push(
            app.submit_summary(&format!("kill after commit {i} {}", support::unique()))
                .await,
        );
    }
    // Kill the moment every outcome is committed (the deliveries were
    // written by the same statements), before its acks can all go out.
    let all_done = app
        .eventually(Duration::from_secs(60), || async {
            app.count_with_status("succeeded").await == EXECUTIONS as i64
        })
        .await;
    victim.sigkill().await;
    assert!(
        all_done,
        "the victim did not finish: {}",
        victim.log_tail(30)
    );

    // The survivor runs everything, as a process whose log we can read.
    let survivor = WorkerProcess::spawn(&app.settings, "webhook-survivor");
    let got = receiver.wait_for(EXECUTIONS, Duration::from_secs(60)).await;
    let settled = app
        .eventually(Duration::from_secs(60), || async {
            let row = app
                .db()
                .await
                .query_one(
                    "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FROM webhook_deliveries",
                    &[],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0) == row.get::<_, i64>(1)
        })
        .await;
    assert!(settled, "deliveries still pending");
    let rows = app
        .db()
        .await
        .query(
            "SELECT execution_id, count(*) FROM webhook_deliveries GROUP BY execution_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), EXECUTIONS, "a delivery for every execution");
    assert!(rows.iter().all(|r| r.get::<_, i64>(1) == 1), "one each");
    let got_now = receiver.received();
    assert_eq!(
        got_now.len(),
        EXECUTIONS,
        "each received once: {} then {}",
        got.len(),
        got_now.len()
    );
    let mut received: Vec<String> = got_now
        .iter()
        .map(|r| r.json()["data"]["id"].as_str().unwrap().to_string())
        .collect();
    received.sort();
    ids.sort();
    assert_eq!(received, ids);
    let log = std::fs::read_to_string(survivor.log_path()).unwrap();
    assert!(
        log.contains("webhook delivery started"),
        "{}",
        survivor.log_tail(20)
    );
    assert!(
        !log.contains(&secret[6..]),
        "the secret is in the worker's log"
    );
    drop(survivor);
    app.cleanup().await;
    receiver.stop().await;
}

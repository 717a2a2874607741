//! An execution's life with a worker: it runs `render → generate →
//! finalize`, every step is recorded, a long poll returns when it ends, and
//! a duplicate message cannot run it (or pay for it) again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use llmq_tests::{is_terminal, TestApp};
use reqwest::StatusCode;
use serde_json::Value;

fn unique_text(what: &str) -> String {
    format!(
        "{what} {} about a fox that jumps over a lazy dog.",
        uuid::Uuid::now_v7().simple()
    )
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_execution_succeeds_with_its_steps_recorded() {
    let app = TestApp::spawn().await;
    let text = unique_text("succeeds");

    let id = app.submit_summary(&text).await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;

    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert_eq!(execution["error"], Value::Null);
    assert_eq!(execution["attempts"], 1);
    let output = execution["output"].as_str().expect("a text output");
    assert!(!output.is_empty());
    let usage = &execution["usage"];
    assert!(usage["total_tokens"].as_i64().unwrap() > 0, "{usage}");
    assert_eq!(
        usage["total_tokens"].as_i64().unwrap(),
        usage["prompt_tokens"].as_i64().unwrap() + usage["completion_tokens"].as_i64().unwrap(),
        "{usage}"
    );
    assert!(time(&execution["created_at"]) <= time(&execution["started_at"]));
    assert!(time(&execution["started_at"]) <= time(&execution["finished_at"]));

    let response = app.steps(&id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let trace: Value = response.json().await.unwrap();
    let steps = trace["steps"].as_array().expect("steps");
    let kinds: Vec<&str> = steps.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["render", "generate", "finalize"], "{trace:#}");
    let seqs: Vec<i64> = steps.iter().map(|s| s["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq order: {seqs:?}");
    for step in steps {
        assert_eq!(step["status"], "succeeded", "{step:#}");
        assert!(
            time(&step["started_at"]) <= time(&step["finished_at"]),
            "{step:#}"
        );
        assert!(
            step["latency_ms"].as_f64().is_some_and(|l| l >= 0.0),
            "{step:#}"
        );
        assert_eq!(step["error"], Value::Null, "{step:#}");
    }
    let generate = &steps[1];
    assert_eq!(generate["model"], "gpt-4o-mini");
    assert!(
        generate["usage"]["total_tokens"].as_i64().unwrap() > 0,
        "{generate:#}"
    );
    // The steps happened one after the other.
    assert!(time(&steps[0]["finished_at"]) <= time(&steps[1]["started_at"]));
    assert!(time(&steps[1]["finished_at"]) <= time(&steps[2]["started_at"]));

    // The same trace is in Postgres, and the provider was called once.
    let rows = app.step_rows(&id).await;
    assert_eq!(
        rows.iter()
            .map(|(_, kind, status)| (kind.as_str(), status.as_str()))
            .collect::<Vec<_>>(),
        [
            ("render", "succeeded"),
            ("generate", "succeeded"),
            ("finalize", "succeeded")
        ]
    );
    let row = app.execution_row(&id).await.unwrap();
    assert_eq!(row.get::<_, String>("status"), "succeeded");
    assert_eq!(
        row.get::<_, Option<String>>("lease_owner"),
        None,
        "a finished execution holds no lease"
    );
    let calls = app.fake.calls_containing(&text);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].model, "gpt-4o-mini");
    assert_eq!(calls[0].outcome, "ok");

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_when_the_execution_finishes() {
    let app = TestApp::builder().fake_latency_ms(1500).spawn().await;

    let id = app.submit_summary(&unique_text("long poll")).await;
    let response = app.get_execution_wait(&id, 10).await;

    assert_eq!(response.status(), StatusCode::OK);
    let execution: Value = response.json().await.unwrap();
    // Terminal means it came back because the execution ended, not because
    // the 10 s wait ran out (it would then still be queued or running).
    assert!(is_terminal(&execution), "{execution:#}");
    assert_eq!(execution["status"], "succeeded");

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_for_a_finished_execution_does_not_run_it_again() {
    let mut app = TestApp::builder()
        // Prefetch 1: the broker hands the worker its next message only
        // once the one before is settled (acked, requeued or rejected), so
        // a later execution finishing proves the duplicate was settled.
        // "No ready messages" could not prove it: that is also true while
        // the duplicate sits delivered but unacknowledged in the worker.
        .configure(|s| {
            s.worker.concurrency = 1;
            // No relay republish of a slow-to-confirm publish, which would
            // put a second copy of an execution behind the one we wait for.
            s.republish_after_secs = 600;
        })
        .spawn()
        .await;
    let text = unique_text("duplicate");
    let id = app.submit_summary(&text).await;
    let before = app.wait_until_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(before["status"], "succeeded", "{before:#}");

    app.publish_execution_message(&id).await;
    let after_it = app
        .submit_summary(&unique_text("after the duplicate"))
        .await;
    let after_it = app
        .wait_until_terminal(&after_it, Duration::from_secs(20))
        .await;
    assert_eq!(after_it["status"], "succeeded", "{after_it:#}");
    // A graceful stop finishes what the worker started and closes its
    // channel, which gives back whatever it had not acknowledged.
    app.stop_worker().await.expect("the worker stops cleanly");

    // Acknowledged (not returned to the queue) and not dead-lettered:
    // a duplicate is not a failure.
    let queue = app.topology.executions_queue.clone();
    assert_eq!(
        app.ready_messages(&queue).await,
        0,
        "the duplicate was given back instead of acknowledged"
    );
    assert_eq!(
        app.ready_messages(&app.topology.dead_letter_queue).await,
        0,
        "the duplicate was dead-lettered"
    );

    // Nothing ran again.
    let calls = app.fake.calls_containing(&text);
    assert_eq!(calls.len(), 1, "the model was called again: {calls:?}");
    assert_eq!(app.step_rows(&id).await.len(), 3);
    let after: Value = app.get_execution(&id).await.json().await.unwrap();
    assert_eq!(after["status"], "succeeded");
    assert_eq!(after["attempts"], before["attempts"]);
    assert_eq!(after["finished_at"], before["finished_at"]);
    assert_eq!(after["output"], before["output"]);

    app.cleanup().await;
}

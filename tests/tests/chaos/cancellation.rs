//! Cancellation at every stage: a queued execution is cancelled at once and
//! never runs; a running one has its model call aborted within seconds; a
//! finished one cannot be cancelled.

use std::time::{Duration, Instant};

use llmq_tests::{assert_error, TestApp};
use reqwest::StatusCode;
use serde_json::Value;

use super::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_execution_cancelled_never_runs() {
    let _shared = support::shared().await;
    let mut app = TestApp::builder()
        .without_worker()
        // Prefetch 1: the control execution's message, queued behind the
        // cancelled one, reaches the worker only once the cancelled one's
        // delivery is settled; so the control finishing means the worker
        // has dealt with the cancelled message. No relay republish, which
        // could queue a second copy of the control behind it.
        .configure(|s| {
            s.worker.concurrency = 1;
            s.republish_after_secs = 600;
        })
        .spawn()
        .await;
    let text = format!("cancel while queued {}.", support::unique());
    let id = app.submit_summary(&text).await;

    let response = support::cancel(&app, &id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "cancelled", "{body:#}");
    assert_eq!(body["error"]["code"], "cancelled", "{body:#}");

    // A worker now receives its message and must drop it. A control
    // execution proves the worker works, and ran after it.
    let control = app.submit_summary(&format!("{text} control")).await;
    app.start_worker().await;
    let control = app
        .wait_until_terminal(&control, Duration::from_secs(20))
        .await;
    assert_eq!(control["status"], "succeeded", "{control:#}");
    // Stopping closes the worker's channel, which would give back a
    // message it had not acknowledged.
    app.stop_worker().await.expect("the worker stops cleanly");
    assert_eq!(
        app.ready_messages(&app.topology.executions_queue).await,
        0,
        "the cancelled execution's message was given back instead of acknowledged"
    );

    let row = app.execution_row(&id).await.unwrap();
    assert_eq!(row.get::<_, String>("status"), "cancelled");
    assert_eq!(
        row.get::<_, i32>("attempts"),
        0,
        "the cancelled execution was claimed"
    );
    assert!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("started_at")
            .is_none(),
        "the cancelled execution started"
    );
    assert!(support::steps_of(&app, &id).await.is_empty());
    assert_eq!(
        app.fake.calls_containing(&text).len(),
        1,
        "only the control execution may call the model"
    );
    assert_eq!(support::dead_letters(&app).await, 0);

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_execution_cancelled_stops_its_model_call_within_seconds() {
    let _shared = support::shared().await;
    let app = TestApp::spawn().await;
    let text = format!("cancel while running {}.", support::unique());
    let id = app
        .submit_summary(&format!("{text} [[fault:latency=20000]]"))
        .await;
    let calling = app
        .eventually(Duration::from_secs(15), || async {
            app.fake
                .calls_containing(&text)
                .iter()
                .any(|c| c.responded_at_ms.is_none())
        })
        .await;
    assert!(calling, "the model was never called");

    let asked = Instant::now();
    let response = support::cancel(&app, &id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let execution = app.wait_until_terminal(&id, Duration::from_secs(10)).await;
    let took = asked.elapsed();

    assert_eq!(execution["status"], "cancelled", "{execution:#}");
    assert_eq!(execution["error"]["code"], "cancelled", "{execution:#}");
    assert!(
        took < Duration::from_secs(5),
        "cancelled {took:?} after the request"
    );
    let steps = support::steps_of(&app, &id).await;
    let kinds: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| (s.kind.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("render", "succeeded"),
            ("generate", "cancelled"),
            ("finalize", "succeeded")
        ]
    );
    assert_eq!(steps[1].error_code.as_deref(), Some("cancelled"));
    // The call was aborted long before its 20 s, and not made again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = app.fake.calls_containing(&text);
    assert_eq!(calls.len(), 1, "{calls:?}");
    // A cancelled execution is finished: cancelling again is a conflict.
    assert_error(
        support::cancel(&app, &id).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_execution_cannot_be_cancelled() {
    let _shared = support::shared().await;
    let app = TestApp::spawn().await;
    let id = app
        .submit_summary(&format!("cancel when done {}.", support::unique()))
        .await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");

    let error = assert_error(
        support::cancel(&app, &id).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("succeeded"),
        "{error:#}"
    );
    let after: Value = app.get_execution(&id).await.json().await.unwrap();
    assert_eq!(after["status"], "succeeded", "{after:#}");
    assert_eq!(after["output"], execution["output"]);

    // An unknown execution is not found, not a conflict.
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_error(
        support::cancel(&app, &unknown).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    app.cleanup().await;
}

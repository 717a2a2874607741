//! Poison messages: whatever lands on the executions queue, the worker
//! dead-letters what it cannot use and keeps working.

use std::time::Duration;

use llmq_shared::queue::EXECUTION_ROUTING_KEY;
use llmq_tests::{amqp, TestApp};

use super::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_the_worker_keeps_working() {
    let _shared = support::shared().await;
    let mut app = TestApp::builder()
        // No relay republish of the control execution, whose second copy
        // could still be on its way at the end and be given back.
        .configure(|s| s.republish_after_secs = 600)
        .spawn()
        .await;
    let unknown = serde_json::json!({ "id": uuid::Uuid::now_v7() }).to_string();
    for body in [&b"not json"[..], b"{\"id\": 42}", unknown.as_bytes()] {
        amqp::publish_confirmed(
            &app.settings.amqp_url,
            &app.topology.executions_exchange,
            EXECUTION_ROUTING_KEY,
            body,
        )
        .await
        .expect("publishing a poison message");
    }

    let dead = support::wait_for_dead_letters(&app, 3, Duration::from_secs(15)).await;
    assert_eq!(
        dead, 3,
        "unparseable and unknown messages are dead-lettered"
    );

    // The worker survived them.
    let text = format!("after the poison {}.", support::unique());
    let id = app.submit_summary(&text).await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert_eq!(app.fake.calls_containing(&text).len(), 1);
    assert_eq!(
        support::dead_letters(&app).await,
        3,
        "nothing else dead-lettered"
    );
    // Stopping the worker closes its channel, which gives back whatever
    // it had not acknowledged: only then does "no ready message" mean
    // "nothing left behind".
    app.stop_worker().await.expect("the worker stops cleanly");
    assert_eq!(
        app.ready_messages(&app.topology.executions_queue).await,
        0,
        "nothing left behind on the executions queue"
    );

    app.cleanup().await;
}

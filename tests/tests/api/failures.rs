//! The model as an unreliable collaborator: retryable provider errors are
//! retried (honouring `Retry-After`) and recorded as failed attempts;
//! a request the provider rejects fails at once, with the reason, and its
//! message is dead-lettered. Faults come from markers in the input text.

use std::time::Duration;

use llmq_tests::TestApp;
use serde_json::Value;

fn unique_text(what: &str) -> String {
    format!("{what} {} about a fox.", uuid::Uuid::now_v7().simple())
}

async fn trace(app: &TestApp, id: &str) -> Vec<Value> {
    let trace: Value = app.steps(id).await.json().await.unwrap();
    trace["steps"].as_array().expect("steps").clone()
}

fn kinds_and_statuses(steps: &[Value]) -> Vec<(String, String)> {
    steps
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_server_error_is_retried_and_the_execution_succeeds() {
    let app = TestApp::spawn().await;
    let text = unique_text("server error");

    let id = app
        .submit_summary(&format!("{text} [[fault:500:times=1]]"))
        .await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;

    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert_eq!(execution["attempts"], 2);
    let outcomes: Vec<String> = app
        .fake
        .calls_containing(&text)
        .into_iter()
        .map(|c| c.outcome)
        .collect();
    assert_eq!(outcomes, ["500", "ok"]);

    let steps = trace(&app, &id).await;
    assert_eq!(
        kinds_and_statuses(&steps),
        pairs(&[
            ("render", "succeeded"),
            ("generate", "failed"),
            ("generate", "succeeded"),
            ("finalize", "succeeded")
        ]),
        "{steps:#?}"
    );
    let failed = &steps[1];
    assert_eq!(failed["error"]["code"], "provider_error", "{failed:#}");
    assert_eq!(failed["retryable"], true);
    assert_eq!(failed["attempt"], 1);
    assert_eq!(steps[2]["attempt"], 2);

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_call_is_retried_no_sooner_than_retry_after() {
    let app = TestApp::spawn().await;
    let text = unique_text("rate limited");

    let id = app
        .submit_summary(&format!("{text} [[fault:429:retry_after=1:times=1]]"))
        .await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;

    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    let calls = app.fake.calls_containing(&text);
    assert_eq!(
        calls.iter().map(|c| c.outcome.as_str()).collect::<Vec<_>>(),
        ["429", "ok"]
    );
    // A lower bound only: the retry may come later, never sooner.
    let answered = calls[0].responded_at_ms.expect("the 429 was answered");
    assert!(
        calls[1].received_at_ms >= answered + 1000,
        "retried {} ms after a 429 asking for 1 s",
        calls[1].received_at_ms.saturating_sub(answered)
    );
    let steps = trace(&app, &id).await;
    assert_eq!(
        steps[1]["error"]["code"], "provider_rate_limited",
        "{steps:#?}"
    );

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_provider_rejects_fails_at_once_and_is_dead_lettered() {
    let app = TestApp::spawn().await;
    let text = unique_text("rejected");

    let id = app.submit_summary(&format!("{text} [[fault:400]]")).await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;

    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert_eq!(
        execution["error"]["code"], "provider_rejected",
        "{execution:#}"
    );
    assert!(execution["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(execution["output"], Value::Null);
    assert_eq!(execution["attempts"], 1);
    assert_eq!(
        app.fake.calls_containing(&text).len(),
        1,
        "a rejected request is not retried"
    );

    let steps = trace(&app, &id).await;
    assert_eq!(
        kinds_and_statuses(&steps),
        pairs(&[
            ("render", "succeeded"),
            ("generate", "failed"),
            ("finalize", "succeeded")
        ]),
        "{steps:#?}"
    );
    assert_eq!(steps[1]["retryable"], false);

    let dead = app.topology.dead_letter_queue.clone();
    let dead_lettered = app
        .eventually(Duration::from_secs(10), || async {
            app.ready_messages(&dead).await == 1
        })
        .await;
    assert!(
        dead_lettered,
        "the failed execution's message was not dead-lettered"
    );

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_retries_are_exhausted_falls_back_to_its_fallback_model() {
    let app = TestApp::builder()
        .configure(|s| {
            s.worker.max_attempts = 2;
            s.worker.retry_base_ms = 50;
            s.worker.retry_max_ms = 200;
            s.worker.relay_interval_ms = 50;
            // The primary is served nowhere (connection refused); its
            // fallback by the default provider, the fake.
            s.models.insert(
                "gpt-4o-mini".into(),
                llmq_shared::config::ModelSettings {
                    base_url: Some("http://127.0.0.1:9/v1".into()),
                    fallback: Some("backup-model".into()),
                    ..Default::default()
                },
            );
        })
        .spawn()
        .await;
    let text = unique_text("fallback");

    let id = app.submit_summary(&text).await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;

    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    let steps = trace(&app, &id).await;
    let generates: Vec<&Value> = steps.iter().filter(|s| s["kind"] == "generate").collect();
    assert_eq!(generates.len(), 3, "{steps:#?}");
    for primary in &generates[..2] {
        assert_eq!(primary["model"], "gpt-4o-mini");
        assert_eq!(primary["status"], "failed");
        assert_eq!(primary["error"]["code"], "provider_unavailable");
    }
    let fallback = generates[2];
    assert_eq!(fallback["model"], "backup-model");
    assert_eq!(fallback["status"], "succeeded");
    assert_eq!(fallback["params"]["fallback_for"], "gpt-4o-mini");
    let calls = app.fake.calls_containing(&text);
    assert_eq!(
        calls.len(),
        1,
        "only the fallback reached the fake provider"
    );
    assert_eq!(calls[0].model, "backup-model");
    app.cleanup().await;
}

//! Duplicated requests: a client that resends (after a timeout, a crash,
//! a flaky network) with its `Idempotency-Key` gets the one execution it
//! created, however many copies arrive and however they race.

use std::time::Duration;

use llmq_tests::{assert_error, TestApp};
use reqwest::StatusCode;
use serde_json::Value;

use super::support;

async fn rows_with_text(app: &TestApp, text: &str) -> i64 {
    app.db()
        .await
        .query_one(
            "SELECT count(*) FROM executions WHERE input->>'text' = $1",
            &[&text],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmission_with_the_same_key_and_body_returns_the_same_execution() {
    let _shared = support::shared().await;
    let app = TestApp::spawn().await;
    let text = format!("idempotent {}.", support::unique());
    let body = support::summarize(&text);
    let key = format!("key-{}", support::unique());

    let first = support::submit_with_key(&app, &body, &key).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let id = support::id_of(&first);
    app.wait_until_terminal(&id, Duration::from_secs(20)).await;

    // After it finished too: the same execution, 200, nothing new runs.
    let again = support::submit_with_key(&app, &body, &key).await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(support::id_of(&again), id);
    assert_eq!(again["status"], "succeeded", "{again:#}");
    assert_eq!(rows_with_text(&app, &text).await, 1);

    // The same key with another body is a conflict, and creates nothing.
    let other = support::summarize(&format!("{text} (edited)"));
    assert_error(
        support::submit_with_key(&app, &other, &key).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert_eq!(rows_with_text(&app, &format!("{text} (edited)")).await, 0);

    // Without a key, every submission is a new execution.
    let a = support::id_of(&app.submit_accepted(&body).await);
    let b = support::id_of(&app.submit_accepted(&body).await);
    assert_ne!(a, b);
    assert_ne!(a, id);
    assert_eq!(rows_with_text(&app, &text).await, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.wait_all_terminal(&[a, b], Duration::from_secs(20))
        .await;
    assert_eq!(
        app.fake.calls_containing(&text).len(),
        3,
        "one model call per execution"
    );

    app.cleanup().await;
}

/// Sends `copies` identical keyed requests at once and checks that one
/// execution came of them: one 202, 200s with its id, one row, one call.
async fn racing_copies(copies: usize) {
    let app = TestApp::spawn().await;
    let text = format!("retry storm {}.", support::unique());
    let body = support::summarize(&text);
    let key = format!("burst-{}", support::unique());

    let answers = futures::future::join_all((0..copies).map(|_| async {
        let response = support::submit_with_key(&app, &body, &key).await;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (status, text)
    }))
    .await;

    let statuses: Vec<u16> = answers.iter().map(|(s, _)| s.as_u16()).collect();
    let created = statuses.iter().filter(|&&s| s == 202).count();
    let replayed = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(
        (created, replayed),
        (1, copies - 1),
        "one 202 and only 200s after it; got {statuses:?}; first other answer: {:?}",
        answers.iter().find(|(s, _)| s.as_u16() >= 300)
    );
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(_, t)| support::id_of(&serde_json::from_str(t).unwrap()))
        .collect();
    assert_eq!(ids.len(), 1, "different executions: {ids:?}");
    assert_eq!(rows_with_text(&app, &text).await, 1);
    let id = ids.into_iter().next().unwrap();
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert_eq!(app.fake.calls_containing(&text).len(), 1);

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_keyed_requests_racing_create_one_execution() {
    let _shared = support::shared().await;
    // Fewer than the API's pool can serve at once (see the next test).
    racing_copies(4).await;
}

/// A client retry storm larger than the API's Postgres pool: a replayed
/// request holds one connection while `replay` asks the pool for a second
/// (`get_execution`), so enough copies at once deadlock the pool until its
/// 5 s wait times out, and they (and every other request meanwhile) get
/// 503 instead of the execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_storm_larger_than_the_pool_still_gets_the_one_execution() {
    let _shared = support::shared().await;
    racing_copies(20).await;
}

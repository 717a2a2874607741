//! A RabbitMQ outage while executions are submitted and worked: the API
//! keeps accepting (the row is durable before the 202), publishes it could
//! not confirm are left to the outbox relay, and every accepted execution
//! still succeeds once the broker is back. And the tail after it: what was
//! submitted during the outage starts as soon as the broker is back (the
//! API republishes its failed publishes on reconnect), not when the relay
//! finds the rows overdue.
//!
//! The outage hits only this test's traffic: the test runs in a vhost of
//! its own, and cutting it off (permissions cleared, connections closed)
//! is to its clients what a stopped broker is.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use llmq_tests::TestApp;
use reqwest::StatusCode;
use uuid::Uuid;

use super::support::{self, Vhost};

const EXECUTIONS: usize = 100;
/// Submissions are spread over this long, the outage in the middle.
const SUBMIT_SPREAD: Duration = Duration::from_secs(8);
const OUTAGE_AFTER: Duration = Duration::from_millis(1500);
const OUTAGE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_delays_work_but_loses_none() {
    let _serial = support::exclusive().await;
    let Some(vhost) = Vhost::create().await else {
        return;
    };
    let url = vhost.url.clone();
    let app = TestApp::builder()
        .fake_latency_ms(100)
        .configure(move |s| {
            s.amqp_url = url;
            s.republish_after_secs = 1;
            s.worker.relay_interval_ms = 100;
            s.worker.lease_secs = 3;
            s.worker.concurrency = 8;
        })
        .spawn()
        .await;
    let metrics_before = support::metrics_text(&app).await;
    let run = support::unique();
    let started = Instant::now();

    let submitting = futures::future::join_all((0..EXECUTIONS).map(|i| {
        let (app, run) = (&app, &run);
        async move {
            tokio::time::sleep(SUBMIT_SPREAD.mul_f64(i as f64 / EXECUTIONS as f64)).await;
            let at = started.elapsed();
            let response = app
                .submit(&support::summarize(&format!("outage {run} item {i:04}.")))
                .await;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            (i, at, status, text)
        }
    }));
    // Rows whose publish was not confirmed and that are overdue: only the
    // relay can deliver those.
    let mut overdue: HashSet<Uuid> = HashSet::new();
    let outage = async {
        tokio::time::sleep(OUTAGE_AFTER).await;
        let from = started.elapsed();
        vhost.cut_off().await;
        let end = Instant::now() + OUTAGE;
        while Instant::now() < end {
            for row in app
                .db()
                .await
                .query(
                    "SELECT id FROM executions WHERE status = 'queued' AND attempts = 0 \
                     AND publish_due_at < now()",
                    &[],
                )
                .await
                .expect("reading the outbox")
            {
                overdue.insert(row.get(0));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        vhost.restore().await;
        (from, started.elapsed())
    };
    let (submitted, (outage_from, outage_to)) = tokio::join!(submitting, outage);

    let during: Vec<_> = submitted
        .iter()
        .filter(|(_, at, _, _)| *at >= outage_from && *at <= outage_to)
        .collect();
    let refused: Vec<_> = submitted
        .iter()
        .filter(|(_, _, status, _)| *status != StatusCode::ACCEPTED)
        .collect();
    assert!(
        refused.is_empty(),
        "submissions not accepted while the broker was away (outage {outage_from:?}..{outage_to:?}): {refused:#?}"
    );
    let ids: Vec<String> = submitted
        .iter()
        .map(|(_, _, _, text)| {
            let body: serde_json::Value = serde_json::from_str(text).expect("a JSON answer");
            support::id_of(&body)
        })
        .collect();

    let counts = support::wait_until_settled(&app, EXECUTIONS, Duration::from_secs(90)).await;
    let ready = app
        .eventually(Duration::from_secs(20), || async {
            app.readyz().await.status() == StatusCode::OK
        })
        .await;
    let metrics_after = support::metrics_text(&app).await;
    let delta = |name: &str| {
        support::metric_sum(&metrics_after, name) - support::metric_sum(&metrics_before, name)
    };
    let publish_failures = delta("llmq_queue_publish_failures_total");
    let republished = delta("llmq_outbox_republished_total");
    let mut not_succeeded = Vec::new();
    for id in &ids {
        let row = app.execution_row(id).await.expect("an accepted row exists");
        let status: String = row.get("status");
        if status != "succeeded" {
            not_succeeded.push((id.clone(), status));
        }
    }
    let overdue_not_succeeded: Vec<_> = overdue
        .iter()
        .filter(|id| not_succeeded.iter().any(|(n, _)| *n == id.to_string()))
        .collect();
    let dead = support::dead_letters(&app).await;

    eprintln!(
        "chaos | broker outage {:.1}–{:.1} s: {} submitted ({} during it), {} succeeded, \
         {} overdue rows seen, {publish_failures} unconfirmed publishes, {republished} republished by the relay, \
         {dead} dead-lettered, settled after {:.1} s",
        outage_from.as_secs_f64(),
        outage_to.as_secs_f64(),
        submitted.len(),
        during.len(),
        ids.len() - not_succeeded.len(),
        overdue.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        !during.is_empty(),
        "no submission fell inside the outage window"
    );
    assert!(
        not_succeeded.is_empty(),
        "accepted executions that did not succeed (counts {counts:?}): {not_succeeded:?}"
    );
    assert!(ready, "/readyz did not recover after the outage");
    assert!(
        !overdue.is_empty(),
        "no accepted row was left for the relay: the outage did not hit the API's publishes"
    );
    assert!(
        overdue_not_succeeded.is_empty(),
        "rows left to the relay that did not succeed: {overdue_not_succeeded:?}"
    );
    assert!(
        publish_failures > 0.0,
        "no publish failed during the outage"
    );
    assert!(
        republished > 0.0,
        "the outbox relay published nothing after the outage"
    );
    assert_eq!(dead, 0, "messages were dead-lettered during the outage");

    app.cleanup().await;
    drop(vhost);
}

/// Far beyond the test's run: a row the relay would have to republish
/// stays undelivered, so only the API's own republish on reconnect can
/// start what was submitted during the outage.
const REPUBLISH_NEVER_SECS: u64 = 3600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_submitted_during_an_outage_start_once_the_broker_is_back() {
    let _serial = support::exclusive().await;
    let Some(vhost) = Vhost::create().await else {
        return;
    };
    let url = vhost.url.clone();
    let app = TestApp::builder()
        .fake_latency_ms(50)
        .configure(move |s| {
            s.amqp_url = url;
            s.republish_after_secs = REPUBLISH_NEVER_SECS;
            s.worker.relay_interval_ms = 100;
            s.worker.concurrency = 8;
        })
        .spawn()
        .await;
    let metrics_before = support::metrics_text(&app).await;
    let run = support::unique();
    // Everything before the cut has started: what follows is the outage's.
    let before = app.submit_summary(&format!("tail {run} before.")).await;
    app.wait_until_terminal(&before, Duration::from_secs(30))
        .await;

    vhost.cut_off().await;
    // The API knows the broker is gone before the outage's submissions.
    let noticed = app
        .eventually(Duration::from_secs(20), || async {
            app.readyz().await.status() != StatusCode::OK
        })
        .await;
    assert!(noticed, "/readyz never saw the outage");
    let cut_at = Instant::now();
    let mut during = Vec::new();
    for i in 0..EXECUTIONS {
        during.push(
            app.submit_summary(&format!("tail {run} item {i:04}."))
                .await,
        );
    }
    // Long enough for the reconnect delays to reach their cap.
    tokio::time::sleep(OUTAGE.saturating_sub(cut_at.elapsed())).await;
    vhost.restore().await;
    let back: chrono::DateTime<chrono::Utc> = app
        .db()
        .await
        .query_one("SELECT now()", &[])
        .await
        .expect("reading the database clock")
        .get(0);

    let finished = app
        .wait_all_terminal(&during, Duration::from_secs(120))
        .await;
    let not_succeeded: Vec<_> = finished
        .iter()
        .filter(|e| e["status"] != "succeeded")
        .collect();
    assert!(
        not_succeeded.is_empty(),
        "executions submitted during the outage that did not succeed: {not_succeeded:#?}"
    );
    let metrics_after = support::metrics_text(&app).await;
    let delta = |name: &str| {
        support::metric_sum(&metrics_after, name) - support::metric_sum(&metrics_before, name)
    };
    assert!(
        delta("llmq_queue_publish_failures_total") > 0.0,
        "no publish failed: the outage did not hit the API's publishes"
    );
    assert_eq!(
        delta("llmq_outbox_republished_total"),
        0.0,
        "the relay republished: the fast path did not deliver them"
    );

    // The measurement asked for: broker back → execution started.
    let ids: Vec<Uuid> = during
        .iter()
        .map(|id| id.parse().expect("a UUID"))
        .collect();
    let mut delays: Vec<f64> = app
        .db()
        .await
        .query(
            "SELECT started_at FROM executions WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .expect("reading start times")
        .iter()
        .map(|row| {
            let started: chrono::DateTime<chrono::Utc> = row.get(0);
            (started - back).num_milliseconds().max(0) as f64 / 1000.0
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    let p = |q: f64| delays[((delays.len() as f64 - 1.0) * q).round() as usize];
    eprintln!(
        "chaos | broker outage tail: {} submitted during the outage; broker back → started \
         p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        delays.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
    app.cleanup().await;
    drop(vhost);
}

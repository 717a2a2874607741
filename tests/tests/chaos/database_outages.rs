//! PostgreSQL going away. A real restart with work in flight: while it is
//! down the API answers 503 with Retry-After (never 202, never 500),
//! readiness says so, and once it is back every execution accepted before
//! succeeds. That test stops the machine's real PostgreSQL
//! (`pg_ctlcluster`), so it waits for other test processes to leave it
//! first, and a guard starts it again whatever happens to the test.
//!
//! Longer and nastier outages go through a TCP proxy in front of
//! PostgreSQL, so that only this test's clients suffer them.

use std::time::{Duration, Instant};

use llmq_tests::{assert_error, TestApp};
use reqwest::StatusCode;

use super::support::{self, PostgresCluster};

const EXECUTIONS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_answers_503_and_recovers() {
    let _serial = support::exclusive().await;
    let Some(cluster) = PostgresCluster::local() else {
        return;
    };
    let app = TestApp::builder()
        .configure(|s| {
            s.worker.lease_secs = 3;
            s.worker.concurrency = 4;
            s.worker.relay_interval_ms = 100;
            s.republish_after_secs = 1;
        })
        .spawn()
        .await;
    let run = support::unique();
    let mut ids = Vec::new();
    for i in 0..EXECUTIONS {
        let text = format!("restart {run} item {i:03}. [[fault:latency=300]]");
        ids.push(app.submit_summary(&text).await);
    }
    let busy = app
        .eventually(Duration::from_secs(15), || async {
            app.count_with_status("succeeded").await >= 4
        })
        .await;
    assert!(busy, "the worker did not start on the executions");

    let others = cluster
        .wait_until_alone(&app.database.name, Duration::from_secs(120))
        .await;
    if others > 0 {
        eprintln!(
            "chaos: restarting PostgreSQL although {others} other test database(s) are in use"
        );
    }
    let in_flight_before = app.count_with_status("running").await;
    let stopped_at = Instant::now();
    cluster.stop().await;
    let stop_took = stopped_at.elapsed();

    // While it is down: 503 + Retry-After + the error shape, quickly.
    let mut answers = Vec::new();
    for i in 0..5 {
        let asked = Instant::now();
        let response = app
            .submit(&support::summarize(&format!(
                "restart {run} while down {i}."
            )))
            .await;
        let took = asked.elapsed();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert_eq!(
            retry_after
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .map(|s| s > 0),
            Some(true),
            "a 503 without a usable Retry-After: {retry_after:?}"
        );
        assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
        assert!(took < Duration::from_secs(7), "the 503 took {took:?}");
        answers.push(took);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let readyz_down = app.readyz().await.status();
    let body: serde_json::Value = app.readyz().await.json().await.unwrap_or_default();

    cluster.start().await;
    let down_for = stopped_at.elapsed();
    let recovered_at = Instant::now();
    let ready = app
        .eventually(Duration::from_secs(30), || async {
            app.readyz().await.status() == StatusCode::OK
        })
        .await;
    let ready_after = recovered_at.elapsed();

    let counts = support::wait_until_settled(&app, EXECUTIONS, Duration::from_secs(90)).await;
    let mut not_succeeded = Vec::new();
    for id in &ids {
        let status: String = app
            .execution_row(id)
            .await
            .expect("an accepted row survives the restart")
            .get("status");
        if status != "succeeded" {
            not_succeeded.push((id.clone(), status));
        }
    }
    let after = app
        .submit_summary(&format!("restart {run} after the restart."))
        .await;
    let after = app
        .wait_until_terminal(&after, Duration::from_secs(30))
        .await;

    eprintln!(
        "chaos | postgres restart: down {:.1} s (stop took {:.1} s) with {in_flight_before} running; \
         503s in {:?}; ready {:.1} s after start; {} of {EXECUTIONS} accepted before succeeded",
        down_for.as_secs_f64(),
        stop_took.as_secs_f64(),
        answers,
        ready_after.as_secs_f64(),
        EXECUTIONS - not_succeeded.len()
    );
    assert_eq!(
        readyz_down,
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz while PostgreSQL is down: {body}"
    );
    assert_eq!(body["postgres"], false, "{body}");
    assert!(ready, "/readyz did not recover within 30 s");
    assert!(
        not_succeeded.is_empty(),
        "executions accepted before the restart that did not succeed (counts {counts:?}): {not_succeeded:?}"
    );
    assert_eq!(after["status"], "succeeded", "after the restart: {after:#}");

    app.cleanup().await;
    drop(cluster);
}

/// Workers cut off from PostgreSQL for longer than a minute (a failover, a
/// long restart), with executions queued. Requeueing each failed delivery
/// would count deliveries until the queue's delivery limit (50)
/// dead-lettered messages whose rows are still `queued`; instead a worker
/// keeps the delivery and retries in place with backoff, so every
/// execution runs once the database is back. Runs about 75 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_database_outage_loses_no_queued_execution() {
    use super::support::TcpProxy;
    let _shared = support::shared().await;
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| {
            s.worker.lease_secs = 3;
            s.worker.concurrency = 4;
            s.worker.relay_interval_ms = 100;
            s.republish_after_secs = 1;
        })
        .spawn()
        .await;
    // The worker reaches PostgreSQL through a proxy that can cut it off;
    // the API keeps its direct connection and goes on accepting.
    let proxy = TcpProxy::start(TcpProxy::target_of(&app.settings.database_url)).await;
    let mut settings = app.settings.clone();
    settings.database_url = proxy.url_for(&app.settings.database_url);
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = llmq_worker::Worker::build(settings, stop.clone())
        .await
        .expect("building the worker");
    let worker = tokio::spawn(worker.run_until_stopped());

    proxy.cut_off();
    let run = support::unique();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.submit_summary(&format!("long outage {run} item {i}."))
                .await,
        );
    }
    let outage = Duration::from_secs(75);
    tokio::time::sleep(outage).await;
    let dead_during = support::dead_letters(&app).await;
    proxy.restore();

    let counts = support::wait_until_settled(&app, ids.len(), Duration::from_secs(30)).await;
    eprintln!(
        "chaos | workers cut off from PostgreSQL for {outage:?}: {dead_during} messages dead-lettered, counts after {counts:?}"
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    for id in &ids {
        let row = app.execution_row(id).await.unwrap();
        assert_eq!(
            row.get::<_, String>("status"),
            "succeeded",
            "execution {id} after the outage ({dead_during} dead-lettered; publish_due_at {:?})",
            row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("publish_due_at")
        );
    }

    app.cleanup().await;
}

/// PostgreSQL stops answering without closing anything (a network
/// partition, a frozen host, a failover behind a virtual IP). The API must
/// still answer quickly — 503 with Retry-After, as when the database is
/// down — rather than hold the request until the client gives up: a
/// request's database work has a deadline (`api.request_timeout_secs`):
/// past it the answer is 503, not a request that hangs as long as the
/// database does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_database_gets_503_not_a_hung_request() {
    use super::support::{proxied_url, TcpProxy};
    let _shared = support::shared().await;
    let proxy = TcpProxy::start(TcpProxy::target_of(&llmq_tests::database::admin_url())).await;
    let port = proxy.port;
    let app = TestApp::builder()
        .without_worker()
        .configure(move |s| {
            s.database_url = proxied_url(&s.database_url, port);
            s.api.request_timeout_secs = 3;
        })
        .spawn()
        .await;
    let run = support::unique();
    app.submit_summary(&format!("frozen {run} before.")).await;

    proxy.freeze();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let asked = Instant::now();
    let answer = client
        .post(app.url("/v1/executions"))
        .bearer_auth(&app.api_key)
        .json(&support::summarize(&format!("frozen {run} during.")))
        .send()
        .await;
    let took = asked.elapsed();
    proxy.thaw();
    let status = answer.as_ref().map(|r| r.status()).ok();
    eprintln!("chaos | unresponsive database: POST answered {status:?} after {took:?}");

    assert!(
        took < Duration::from_secs(10),
        "the API held the request {took:?} while the database did not answer ({answer:?})"
    );
    let response = answer.expect("an answer");
    assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;

    app.cleanup().await;
}

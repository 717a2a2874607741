//! Provider limits shared by every worker process (Redis): two workers
//! under one TPM limit never exceed it in any window as the provider
//! counts it, and a 429 with `Retry-After` pauses the model for both.

use std::time::Duration;

use llmq_shared::config::ModelSettings;
use llmq_tests::TestApp;

use super::support;

const WINDOW_MS: u64 = 2_000;

/// An app without an in-process worker, `gpt-4o-mini` limited by `limits`.
async fn app_with(limits: ModelSettings) -> TestApp {
    TestApp::builder()
        .without_worker()
        .configure(move |s| {
            s.models.insert("gpt-4o-mini".into(), limits);
            s.worker.retry_base_ms = 50;
            s.worker.retry_max_ms = 5_000;
            s.worker.max_attempts = 6;
        })
        .spawn()
        .await
}

async fn deferred_events(app: &TestApp) -> i64 {
    app.db()
        .await
        .query_one(
            "SELECT count(*) FROM execution_events WHERE data->>'reason' = 'deferred'",
            &[],
        )
        .await
        .expect("counting deferrals")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_under_a_tpm_limit_never_exceed_it_in_any_window() {
    let _shared = support::shared().await;
    const TPM: u64 = 1_200;
    let app = app_with(ModelSettings {
        tpm: Some(TPM),
        limit_window_ms: Some(WINDOW_MS),
        ..Default::default()
    })
    .await;
    let mut a = app.spawn_worker_process("tpm-a");
    let mut b = app.spawn_worker_process("tpm-b");
    let run = support::unique();
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            app.submit_summary(&format!("tpm {run} call {i} of thirty"))
                .await,
        );
    }
    let done = app.wait_all_terminal(&ids, Duration::from_secs(25)).await;
    for e in &done {
        assert_eq!(e["status"], "succeeded", "{e:#}");
        // Deferrals are not attempts.
        assert_eq!(e["attempts"], 1, "{e:#}");
    }
    let windows = app.fake.usage_by_window(WINDOW_MS);
    let busiest = windows.values().map(|w| w.tokens).max().unwrap_or(0);
    assert!(
        windows.values().all(|w| w.tokens <= TPM),
        "a window over {TPM} tokens: {windows:?}"
    );
    // The limit was what paced the calls: they needed several windows, and
    // executions waited for room.
    assert!(windows.len() >= 3, "{windows:?}");
    assert!(busiest > TPM / 3, "{windows:?}");
    assert!(deferred_events(&app).await > 0, "no execution was deferred");
    a.sigkill().await;
    b.sigkill().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_429_with_retry_after_pauses_every_worker() {
    let _shared = support::shared().await;
    let app = app_with(ModelSettings {
        max_concurrency: Some(100),
        ..Default::default()
    })
    .await;
    let mut a = app.spawn_worker_process("pause-a");
    let mut b = app.spawn_worker_process("pause-b");
    let run = support::unique();
    let limited = app
        .submit_summary(&format!("pause {run} [[fault:429:retry_after=3:times=1]]"))
        .await;
    let calls = || app.fake.calls_containing(&run);
    // The worker sets the pause before it records the failed step.
    assert!(
        app.eventually(Duration::from_secs(10), || async {
            support::generate_steps(&app, &limited)
                .await
                .iter()
                .any(|s| s.status == "failed")
        })
        .await,
        "the 429 never came"
    );
    let answered = calls()[0].responded_at_ms.expect("answered");
    // Both workers get some of these; none may call before the pause ends.
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(app.submit_summary(&format!("pause {run} after {i}")).await);
    }
    let done = app.wait_all_terminal(&ids, Duration::from_secs(20)).await;
    assert!(done.iter().all(|e| e["status"] == "succeeded"), "{done:#?}");
    let limited = app
        .wait_until_terminal(&limited, Duration::from_secs(20))
        .await;
    assert_eq!(limited["status"], "succeeded", "{limited:#}");
    let calls = calls();
    assert_eq!(calls.len(), 10, "one 429, its retry and eight others");
    for c in &calls[1..] {
        assert!(
            c.received_at_ms >= answered + 2_900,
            "a call {} ms after the 429 that asked for 3 s: {}",
            c.received_at_ms - answered,
            c.key
        );
    }
    assert!(
        deferred_events(&app).await >= 8,
        "the others were not deferred"
    );
    a.sigkill().await;
    b.sigkill().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_hold_more_calls_than_max_concurrency() {
    let _shared = support::shared().await;
    const MAX: usize = 3;
    let app = TestApp::builder()
        .without_worker()
        .fake_latency_ms(300)
        .configure(|s| {
            s.models.insert(
                "gpt-4o-mini".into(),
                ModelSettings {
                    max_concurrency: Some(MAX as u32),
                    ..Default::default()
                },
            );
        })
        .spawn()
        .await;
    let mut a = app.spawn_worker_process("conc-a");
    let mut b = app.spawn_worker_process("conc-b");
    let run = support::unique();
    let mut ids = Vec::new();
    for i in 0..15 {
        ids.push(app.submit_summary(&format!("conc {run} call {i}")).await);
    }
    let done = app.wait_all_terminal(&ids, Duration::from_secs(25)).await;
    assert!(done.iter().all(|e| e["status"] == "succeeded"), "{done:#?}");
    // The most calls the provider was answering at any one moment.
    let calls = app.fake.calls_containing(&run);
    let mut edges: Vec<(u128, i32)> = Vec::new();
    for c in &calls {
        edges.push((c.received_at_ms, 1));
        edges.push((c.responded_at_ms.expect("answered"), -1));
    }
    // An end before a start at the same millisecond.
    edges.sort();
    let (mut now, mut peak) = (0, 0);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    assert!(peak as usize <= MAX, "{peak} calls in flight at once");
    assert_eq!(peak as usize, MAX, "the limit was never reached");
    assert!(deferred_events(&app).await > 0, "no execution was deferred");
    a.sigkill().await;
    b.sigkill().await;
    app.cleanup().await;
}

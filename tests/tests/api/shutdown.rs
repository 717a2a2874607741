//! Stopping workers: what an orchestrator does on every deploy (SIGTERM)
//! must lose no execution and pay for no model call twice.

use std::collections::HashSet;
use std::time::Duration;

use llmq_tests::TestApp;
use tokio::io::AsyncBufReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_executions_in_flight_loses_none() {
    let app = TestApp::builder()
        .without_worker()
        .fake_latency_ms(1500)
        .configure(|s| {
            s.worker.concurrency = 8;
            s.worker.shutdown_grace_secs = 10;
        })
        .spawn()
        .await;
    let mut first = app.spawn_worker_process("first");

    let run = uuid::Uuid::now_v7().simple().to_string();
    let texts: Vec<String> = (0..30)
        .map(|i| format!("shutdown {run} execution {i:02} of thirty."))
        .collect();
    let mut ids = Vec::new();
    for text in &texts {
        ids.push(app.submit_summary(text).await);
    }

    // SIGTERM while model calls are in flight.
    let busy = app
        .eventually(Duration::from_secs(15), || async {
            app.fake.calls().iter().any(|c| c.responded_at_ms.is_none())
        })
        .await;
    assert!(
        busy,
        "the worker never called the provider; log: {}\n{}",
        first.log_path().display(),
        first.log_tail(30)
    );
    let in_flight: HashSet<usize> = app
        .fake
        .calls()
        .iter()
        .filter(|c| c.responded_at_ms.is_none())
        .filter_map(|c| texts.iter().position(|t| c.key.contains(t.as_str())))
        .collect();
    first.sigterm();

    let status = first.wait(Duration::from_secs(25)).await;
    let log = format!(
        "log {}:\n{}",
        first.log_path().display(),
        first.log_tail(30)
    );
    let status = status.unwrap_or_else(|| panic!("the worker did not exit after SIGTERM; {log}"));
    assert!(status.success(), "the worker exited with {status}; {log}");

    // The calls in flight at SIGTERM were allowed to finish, and nothing is
    // left leased to the stopped process.
    for &i in &in_flight {
        let row = app.execution_row(&ids[i]).await.unwrap();
        assert_eq!(
            row.get::<_, String>("status"),
            "succeeded",
            "execution {i} was in flight at SIGTERM; {log}"
        );
    }
    assert_eq!(
        app.count_with_status("running").await,
        0,
        "executions left running; {log}"
    );

    // A new worker finishes the rest.
    let mut second = app.spawn_worker_process("second");
    let executions = app.wait_all_terminal(&ids, Duration::from_secs(60)).await;
    for (i, execution) in executions.iter().enumerate() {
        assert_eq!(
            execution["status"], "succeeded",
            "execution {i}: {execution:#}"
        );
    }
    // Each was paid for exactly once.
    for (i, text) in texts.iter().enumerate() {
        let calls = app.fake.calls_containing(text);
        assert_eq!(
            calls.len(),
            1,
            "execution {i} called the model {} times",
            calls.len()
        );
    }

    second.sigterm();
    let status = second.wait(Duration::from_secs(25)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the second worker did not stop cleanly: {status:?}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_execution_loses_nothing() {
    let app = TestApp::builder()
        .without_worker()
        .fake_latency_ms(1500)
        // A short lease, so the dead worker's executions are reaped quickly.
        .configure(|s| s.worker.lease_secs = 2)
        .spawn()
        .await;
    let mut killed = app.spawn_worker_process("killed");

    let run = uuid::Uuid::now_v7().simple().to_string();
    let texts: Vec<String> = (0..4)
        .map(|i| format!("sigkill {run} execution {i}."))
        .collect();
    let mut ids = Vec::new();
    for text in &texts {
        ids.push(app.submit_summary(text).await);
    }
    let busy = app
        .eventually(Duration::from_secs(15), || async {
            app.fake.calls().iter().any(|c| c.responded_at_ms.is_none())
        })
        .await;
    assert!(
        busy,
        "the worker never called the provider; {}",
        killed.log_tail(30)
    );
    killed.sigkill().await;

    let mut second = app.spawn_worker_process("second");
    let executions = app.wait_all_terminal(&ids, Duration::from_secs(40)).await;
    for (i, execution) in executions.iter().enumerate() {
        assert_eq!(
            execution["status"], "succeeded",
            "execution {i}: {execution:#}"
        );
        let steps = app.step_rows(&ids[i]).await;
        let succeeded = |kind: &str| {
            steps
                .iter()
                .filter(|(_, k, s)| k == kind && s == "succeeded")
                .count()
        };
        assert_eq!(
            (
                succeeded("render"),
                succeeded("generate"),
                succeeded("finalize")
            ),
            (1, 1, 1),
            "execution {i}: {steps:?}"
        );
        assert_eq!(
            steps.last().map(|(_, k, _)| k.as_str()),
            Some("finalize"),
            "execution {i}: {steps:?}"
        );
        // The step the killed worker left running is closed, not left dangling.
        assert!(
            steps.iter().all(|(_, _, s)| s != "running"),
            "execution {i}: {steps:?}"
        );
    }

    second.sigterm();
    assert!(second
        .wait(Duration::from_secs(25))
        .await
        .is_some_and(|s| s.success()));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_shutdown_logs_no_error() {
    let app = TestApp::builder().without_worker().spawn().await;
    let mut worker = app.spawn_worker_process("quiet");
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(app.submit_summary(&format!("quiet stop {run} {i}.")).await);
    }
    for execution in app.wait_all_terminal(&ids, Duration::from_secs(30)).await {
        assert_eq!(execution["status"], "succeeded", "{execution:#}");
    }
    worker.sigterm();
    let status = worker.wait(Duration::from_secs(25)).await;
    let log = std::fs::read_to_string(worker.log_path()).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "the worker did not exit cleanly ({status:?}); log:\n{log}"
    );
    assert!(
        log.contains("llmq-worker stopped"),
        "the log has no stop line: {log}"
    );
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(
        errors.is_empty(),
        "errors logged on a normal stop: {errors:#?}"
    );
    app.cleanup().await;
}

/// Runs the real `llmq-api` binary, sends it SIGTERM as soon as it logs a
/// line containing `stop_after`, and checks that it stopped cleanly: exit
/// 0, its stop line, and no ERROR line.
async fn api_stops_cleanly_on_sigterm_after(stop_after: &str) {
    let app = TestApp::spawn().await;
    let binary = llmq_tests::worker_process::worker_binary().with_file_name("llmq-api");
    assert!(
        binary.is_file(),
        "{} not built (`cargo build --bins`)",
        binary.display()
    );
    let mut cmd = tokio::process::Command::new(&binary);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().to_string();
        if key.starts_with("LLMQ_") || key == "DATABASE_URL" || key == "AMQP_URL" {
            cmd.env_remove(&key);
        }
    }
    let mut api = cmd
        .envs(llmq_tests::worker_process::worker_env(&app.settings))
        .env("LLMQ_API__ADDR", "127.0.0.1:0")
        .env("LLMQ_API__API_KEY", &app.api_key)
        // Its lifecycle lines are what this test reads, whatever level the
        // suite runs at (`make test` passes warn).
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting llmq-api");
    let mut stderr = tokio::io::BufReader::new(api.stderr.take().expect("stderr")).lines();
    let mut log = Vec::new();
    let connected = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            let connected = line.contains(stop_after);
            log.push(line);
            if connected {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(connected, Ok(true)),
        "llmq-api never logged {stop_after:?}:\n{}",
        log.join("\n")
    );
    let pid = api.id().expect("a pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("running kill");
    assert!(killed.success());
    while let Ok(Some(line)) = stderr.next_line().await {
        log.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), api.wait())
        .await
        .expect("llmq-api did not exit after SIGTERM")
        .expect("waiting for llmq-api");
    let log = log.join("\n");
    assert!(status.success(), "llmq-api exited with {status}:\n{log}");
    assert!(log.contains("llmq-api stopped"), "no stop line:\n{log}");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(
        errors.is_empty(),
        "errors logged on a normal stop: {errors:#?}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_api_shutdown_logs_no_error() {
    // Up and connected to the broker before it is stopped.
    api_stops_cleanly_on_sigterm_after("publisher connected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_while_the_api_starts_stops_it_gracefully() {
    // Before its listener, pools and broker sessions exist: the handler is
    // installed first, so the signal waits for them instead of killing the
    // process by the default action.
    api_stops_cleanly_on_sigterm_after("starting llmq-api").await;
}

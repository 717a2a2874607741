//! Provider fault storms: the model as an unreliable collaborator. Every
//! fault is classified — retryable ones are retried (honouring
//! Retry-After, with backoff) up to the configured maximum, terminal ones
//! fail at once — a failed execution's message is dead-lettered, and no
//! execution ever makes more attempts than allowed.

use std::time::Duration;

use llmq_tests::TestApp;

use super::support::{self, StepRow};

/// A worker with a small retry budget and short timers.
async fn app_with(max_attempts: u32, timeout_secs: u64) -> TestApp {
    TestApp::builder()
        .configure(move |s| {
            s.worker.max_attempts = max_attempts;
            s.worker.retry_base_ms = 50;
            s.worker.retry_max_ms = 1000;
            s.provider.timeout_secs = timeout_secs;
        })
        .spawn()
        .await
}

fn outcomes(app: &TestApp, needle: &str) -> Vec<String> {
    app.fake
        .calls_containing(needle)
        .into_iter()
        .map(|c| c.outcome)
        .collect()
}

fn describe(steps: &[StepRow]) -> Vec<String> {
    steps
        .iter()
        .map(|s| {
            format!(
                "{} a{} {} {}",
                s.kind,
                s.attempt,
                s.status,
                s.error_code.as_deref().unwrap_or("-")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_call_is_retried_only_after_retry_after() {
    let _shared = support::shared().await;
    let app = app_with(4, 10).await;
    let text = format!("rate limited {}.", support::unique());

    let id = app
        .submit_summary(&format!("{text} [[fault:429:retry_after=1:times=2]]"))
        .await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;

    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert_eq!(execution["attempts"], 3, "{execution:#}");
    assert_eq!(outcomes(&app, &text), ["429", "429", "ok"]);
    let generate = support::generate_steps(&app, &id).await;
    assert_eq!(
        describe(&generate),
        [
            "generate a1 failed provider_rate_limited",
            "generate a2 failed provider_rate_limited",
            "generate a3 succeeded -"
        ]
    );
    for pair in generate.windows(2) {
        let gap = pair[1].started_at - pair[0].started_at;
        assert!(
            gap.num_milliseconds() >= 900,
            "attempt {} started {} ms after attempt {}: Retry-After: 1 not honoured",
            pair[1].attempt,
            gap.num_milliseconds(),
            pair[0].attempt
        );
    }
    let calls = app.fake.calls_containing(&text);
    for pair in calls.windows(2) {
        let answered = pair[0].responded_at_ms.expect("the 429 was answered");
        assert!(
            pair[1].received_at_ms + 50 >= answered + 1000,
            "called again {} ms after a 429 asking for 1 s",
            pair[1].received_at_ms.saturating_sub(answered)
        );
    }

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_keeps_failing_fails_after_max_attempts_and_is_dead_lettered() {
    let _shared = support::shared().await;
    let app = app_with(3, 10).await;
    let text = format!("always failing {}.", support::unique());

    let id = app.submit_summary(&format!("{text} [[fault:500]]")).await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;

    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert_eq!(
        execution["error"]["code"], "provider_error",
        "{execution:#}"
    );
    assert_eq!(execution["attempts"], 3, "{execution:#}");
    let generate = support::generate_steps(&app, &id).await;
    assert_eq!(
        describe(&generate),
        [
            "generate a1 failed provider_error",
            "generate a2 failed provider_error",
            "generate a3 failed provider_error"
        ]
    );
    assert_eq!(
        support::wait_for_dead_letters(&app, 1, Duration::from_secs(10)).await,
        1,
        "the failed execution's message is dead-lettered once"
    );
    // Nothing tries again later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(outcomes(&app, &text), ["500", "500", "500"]);

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_provider_times_out_and_fails_within_max_attempts() {
    let _shared = support::shared().await;
    let app = app_with(2, 1).await;
    let text = format!("hanging {}.", support::unique());

    let id = app.submit_summary(&format!("{text} [[fault:hang]]")).await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;

    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert_eq!(
        execution["error"]["code"], "provider_timeout",
        "{execution:#}"
    );
    let generate = support::generate_steps(&app, &id).await;
    assert_eq!(
        describe(&generate),
        [
            "generate a1 failed provider_timeout",
            "generate a2 failed provider_timeout"
        ]
    );
    for step in &generate {
        let took = step.finished_at.expect("finished") - step.started_at;
        assert!(
            (900..5000).contains(&took.num_milliseconds()),
            "a 1 s timeout took {} ms",
            took.num_milliseconds()
        );
    }
    assert_eq!(outcomes(&app, &text), ["hang", "hang"]);
    assert_eq!(
        support::wait_for_dead_letters(&app, 1, Duration::from_secs(10)).await,
        1
    );

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_answer_is_retried_and_succeeds_on_the_second_attempt() {
    let _shared = support::shared().await;
    let app = app_with(3, 10).await;
    let text = format!("malformed {}.", support::unique());

    let id = app
        .submit_summary(&format!("{text} [[fault:malformed:times=1]]"))
        .await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;

    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert_eq!(execution["attempts"], 2, "{execution:#}");
    assert!(execution["output"].is_string(), "{execution:#}");
    assert_eq!(
        describe(&support::generate_steps(&app, &id).await),
        [
            "generate a1 failed provider_bad_response",
            "generate a2 succeeded -"
        ]
    );
    assert_eq!(outcomes(&app, &text), ["malformed", "ok"]);

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_request_fails_at_once_and_is_dead_lettered() {
    let _shared = support::shared().await;
    let app = app_with(4, 10).await;
    let text = format!("rejected {}.", support::unique());

    let id = app.submit_summary(&format!("{text} [[fault:400]]")).await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;

    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert_eq!(
        execution["error"]["code"], "provider_rejected",
        "{execution:#}"
    );
    assert_eq!(execution["attempts"], 1, "{execution:#}");
    assert_eq!(
        describe(&support::generate_steps(&app, &id).await),
        ["generate a1 failed provider_rejected"]
    );
    assert_eq!(
        support::wait_for_dead_letters(&app, 1, Duration::from_secs(10)).await,
        1
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(outcomes(&app, &text), ["400"]);

    app.cleanup().await;
}

/// One kind of fault in the storm and what it must come to.
struct Case {
    marker: &'static str,
    status: &'static str,
    /// Error code of a failed execution.
    code: Option<&'static str>,
    /// Generate attempts (= model calls) the execution makes.
    attempts: usize,
}

const fn case(
    marker: &'static str,
    status: &'static str,
    code: Option<&'static str>,
    attempts: usize,
) -> Case {
    Case {
        marker,
        status,
        code,
        attempts,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_mixed_faults_never_exceeds_max_attempts() {
    let _shared = support::shared().await;
    const MAX: usize = 3;
    let app = app_with(MAX as u32, 1).await;
    let cases = [
        case("", "succeeded", None, 1),
        case("[[fault:latency=300]]", "succeeded", None, 1),
        case("[[fault:500:times=1]]", "succeeded", None, 2),
        case("[[fault:500:times=2]]", "succeeded", None, 3),
        case(
            "[[fault:500:times=3]]",
            "failed",
            Some("provider_error"),
            MAX,
        ),
        case("[[fault:500]]", "failed", Some("provider_error"), MAX),
        case("[[fault:429:retry_after=1:times=1]]", "succeeded", None, 2),
        case("[[fault:malformed:times=2]]", "succeeded", None, 3),
        case(
            "[[fault:malformed]]",
            "failed",
            Some("provider_bad_response"),
            MAX,
        ),
        case("[[fault:hang:times=1]]", "succeeded", None, 2),
        case("[[fault:400]]", "failed", Some("provider_rejected"), 1),
        case(
            "[[fault:400:times=1]]",
            "failed",
            Some("provider_rejected"),
            1,
        ),
    ];
    const ROUNDS: usize = 4;
    let run = support::unique();
    let text = |round: usize, c: usize| format!("storm {run} round {round} case {c:02}.");

    let mut submitted = Vec::new();
    for round in 0..ROUNDS {
        for (c, case) in cases.iter().enumerate() {
            let id = app
                .submit_summary(&format!("{} {}", text(round, c), case.marker))
                .await;
            submitted.push((round, c, id));
        }
    }
    let ids: Vec<String> = submitted.iter().map(|(_, _, id)| id.clone()).collect();
    let executions = app.wait_all_terminal(&ids, Duration::from_secs(60)).await;

    let mut failures = Vec::new();
    for ((round, c, id), execution) in submitted.iter().zip(&executions) {
        let case = &cases[*c];
        let generate = support::generate_steps(&app, id).await;
        let calls = app.fake.calls_containing(&text(*round, *c)).len();
        let attempts = execution["attempts"].as_u64().unwrap_or(0) as usize;
        let ok = execution["status"] == case.status
            && execution["error"]["code"].as_str() == case.code
            && generate.len() == case.attempts
            && calls == case.attempts
            && attempts == case.attempts
            && attempts <= MAX
            && generate.iter().all(|s| s.attempt as usize <= MAX);
        if !ok {
            failures.push(format!(
                "{:?} (round {round}): status {} {}, attempts {attempts}, {calls} calls, steps {:?}",
                case.marker,
                execution["status"],
                execution["error"]["code"],
                describe(&generate)
            ));
        }
    }
    let failed = executions
        .iter()
        .filter(|e| e["status"] == "failed")
        .count() as u32;
    let dead = support::wait_for_dead_letters(&app, failed, Duration::from_secs(10)).await;
    eprintln!(
        "chaos | fault storm: {} executions, {failed} failed, {dead} dead-lettered, {} model calls",
        executions.len(),
        app.fake.calls().len()
    );
    assert!(
        failures.is_empty(),
        "executions that broke their case:\n{}",
        failures.join("\n")
    );
    assert_eq!(dead, failed, "every failed execution is dead-lettered once");

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_character_in_the_answer_is_removed_and_the_execution_succeeds_once() {
    let _shared = support::shared().await;
    let app = app_with(4, 10).await;
    let text = format!("poisoned answer {}.", support::unique());

    let id = app.submit_summary(&format!("{text} [[fault:nul]]")).await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;

    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert_eq!(execution["attempts"], 1, "{execution:#}");
    let output = execution["output"].as_str().expect("a text output");
    assert!(
        !output.contains('\0') && output.starts_with("fake completion"),
        "{output:?}"
    );
    assert_eq!(outcomes(&app, &text), ["nul"], "the model was called once");
    let note: Option<String> = app
        .db()
        .await
        .query_one(
            "SELECT output->>'sanitized' FROM execution_steps WHERE execution_id = $1 AND kind = 'generate'",
            &[&uuid::Uuid::parse_str(&id).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        note.as_deref().is_some_and(|n| n.contains("NUL")),
        "the generate step says what was removed: {note:?}"
    );
    assert_eq!(app.count_with_status("running").await, 0);
    assert_eq!(
        support::dead_letters(&app).await,
        0,
        "nothing dead-lettered"
    );
    app.cleanup().await;
}

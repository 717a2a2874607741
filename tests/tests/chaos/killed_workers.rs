//! SIGKILL chaos: worker processes die without warning, again and again,
//! while hundreds of executions run. Nothing accepted may be lost, nothing
//! may complete twice, and no execution may pay for a model call after
//! its `generate` step succeeded (the checkpoint).
//!
//! Sized by environment variables so `make chaos` can run it long:
//! `CHAOS_EXECUTIONS` (300), `CHAOS_KILLS` (6), `CHAOS_KILL_EVERY_MS`
//! (1500), `CHAOS_WORKERS` (2), `CHAOS_CONCURRENCY` (4, per worker).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use llmq_fake_provider::CallRecord;
use llmq_tests::{TestApp, WorkerProcess};
use reqwest::StatusCode;
use uuid::Uuid;

use super::support::{self, epoch_ms, StepRow};

/// Clock skew allowed between a step's `finished_at` (worker clock) and a
/// call's arrival (fake provider clock): the same machine clock.
const SKEW_MS: i128 = 20;

#[derive(Clone, Copy, Debug)]
struct Plan {
    executions: usize,
    kills: usize,
    kill_every: Duration,
    workers: usize,
    concurrency: usize,
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

impl Plan {
    fn from_env() -> Self {
        Self {
            executions: env_or("CHAOS_EXECUTIONS", 300usize).max(1),
            kills: env_or("CHAOS_KILLS", 6usize),
            kill_every: Duration::from_millis(env_or("CHAOS_KILL_EVERY_MS", 1500u64).max(100)),
            workers: env_or("CHAOS_WORKERS", 2usize).max(1),
            concurrency: env_or("CHAOS_CONCURRENCY", 4usize).max(1),
        }
    }
}

/// Model latency of execution `i`: 200–500 ms, spread deterministically.
fn latency_ms(i: usize) -> usize {
    200 + (i * 7919) % 301
}

fn text(run: &str, i: usize) -> String {
    format!(
        "chaos {run} item {i:06}. [[fault:latency={}]] The quick brown fox jumps over the lazy dog.",
        latency_ms(i)
    )
}

/// The execution index a fake-provider call was made for.
fn index_of(call: &CallRecord, run: &str) -> Option<usize> {
    let marker = format!("chaos {run} item ");
    let at = call.key.find(&marker)? + marker.len();
    call.key.get(at..at + 6)?.parse().ok()
}

/// What happened to one execution, from its rows and the calls it made.
#[derive(Default)]
struct Record {
    status: String,
    finalize: usize,
    generate_succeeded: usize,
    /// `finished_at` of the succeeded generate step: the checkpoint.
    checkpoint_ms: Option<i128>,
    calls: Vec<i128>,
    steps: Vec<StepRow>,
}

impl Record {
    /// Calls that arrived after the checkpoint was written.
    fn repeated_calls(&self) -> usize {
        self.checkpoint_ms.map_or(0, |done| {
            self.calls.iter().filter(|&&t| t > done + SKEW_MS).count()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_nothing_and_never_repeat_a_finished_generate() {
    let _serial = support::exclusive().await;
    let plan = Plan::from_env();
    let app = TestApp::builder()
        .without_worker()
        .configure(move |s| {
            // Short leases: a killed worker's executions are reaped quickly.
            s.worker.lease_secs = 3;
            s.worker.relay_interval_ms = 100;
            s.republish_after_secs = 1;
            s.worker.concurrency = plan.concurrency;
            s.db_pool_size = plan.concurrency + 4;
        })
        .spawn()
        .await;
    let run = support::unique();
    let started = Instant::now();

    let mut workers: Vec<WorkerProcess> = (0..plan.workers)
        .map(|n| app.spawn_worker_process(&format!("w{n}")))
        .collect();
    let mut spawned = plan.workers;

    // Submit everything while the killing goes on.
    let submitting = futures::stream::iter(0..plan.executions)
        .map(|i| {
            let (app, run) = (&app, &run);
            async move {
                let response = app.submit(&support::summarize(&text(run, i))).await;
                let status = response.status();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                (i, status, body["id"].as_str().map(str::to_string))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    let killing = async {
        let mut kills = 0;
        let mut calls_cut = 0;
        let mut duplicates = 0;
        while kills < plan.kills {
            // 0.7–1.3 × the period, so kills land at every stage of a run.
            let jitter = 0.7 + 0.6 * ((kills as f64 * 0.618_034) % 1.0);
            tokio::time::sleep(plan.kill_every.mul_f64(jitter)).await;
            let counts = support::status_counts(&app).await;
            if support::settled(&counts) && counts.values().sum::<i64>() >= plan.executions as i64 {
                break;
            }
            let now_ms = i128::from(chrono::Utc::now().timestamp_millis());
            calls_cut += app
                .fake
                .calls()
                .iter()
                .filter(|c| c.responded_at_ms.is_none() && c.received_at_ms as i128 > now_ms - 600)
                .count();
            // Duplicate messages of running and finished executions race
            // the kill and the redeliveries it causes.
            for row in app
                .db()
                .await
                .query(
                    "(SELECT id FROM executions WHERE status = 'running' LIMIT 6) \
                     UNION ALL (SELECT id FROM executions WHERE status = 'succeeded' LIMIT 2)",
                    &[],
                )
                .await
                .expect("picking executions to duplicate")
            {
                app.publish_execution_message(&row.get::<_, Uuid>(0).to_string())
                    .await;
                duplicates += 1;
            }
            let victim = kills % workers.len();
            workers[victim].sigkill().await;
            workers[victim] = app.spawn_worker_process(&format!("w{spawned}"));
            spawned += 1;
            kills += 1;
        }
        (kills, calls_cut, duplicates)
    };
    let (submitted, (kills, calls_cut, duplicates)) = tokio::join!(submitting, killing);

    // Survivors finish the rest.
    let budget = Duration::from_secs(60)
        + Duration::from_millis(40 * plan.executions as u64 / plan.workers as u64);
    let counts = support::wait_until_settled(&app, plan.executions, budget).await;
    // Late duplicates would show up now; then stop the workers cleanly.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for worker in &workers {
        worker.sigterm();
    }
    for worker in &mut workers {
        let exit = worker.wait(Duration::from_secs(20)).await;
        assert!(
            exit.is_some_and(|s| s.success()),
            "a worker did not stop cleanly after the chaos ({exit:?}); log {}:\n{}",
            worker.log_path().display(),
            worker.log_tail(30)
        );
    }

    // ---- what happened -------------------------------------------------
    let ids: HashMap<usize, Uuid> = submitted
        .iter()
        .filter(|(_, status, _)| *status == StatusCode::ACCEPTED)
        .filter_map(|(i, _, id)| Some((*i, Uuid::parse_str(id.as_deref()?).ok()?)))
        .collect();
    let rejected: Vec<_> = submitted
        .iter()
        .filter(|(_, status, _)| *status != StatusCode::ACCEPTED)
        .map(|(i, status, _)| (*i, *status))
        .collect();
    let mut records: HashMap<Uuid, Record> =
        ids.values().map(|id| (*id, Record::default())).collect();
    for row in app
        .db()
        .await
        .query("SELECT id, status FROM executions", &[])
        .await
        .expect("reading executions")
    {
        if let Some(r) = records.get_mut(&row.get::<_, Uuid>(0)) {
            r.status = row.get(1);
        }
    }
    for step in support::all_steps(&app).await {
        let Some(r) = records.get_mut(&step.execution_id) else {
            continue;
        };
        match (step.kind.as_str(), step.status.as_str()) {
            ("finalize", _) => r.finalize += 1,
            ("generate", "succeeded") => {
                r.generate_succeeded += 1;
                r.checkpoint_ms = step.finished_at.map(epoch_ms);
            }
            _ => {}
        }
        r.steps.push(step);
    }
    let calls = app.fake.calls();
    let mut unattributed = 0;
    for call in &calls {
        match index_of(call, &run).and_then(|i| ids.get(&i)) {
            Some(id) => records
                .get_mut(id)
                .expect("a record per accepted id")
                .calls
                .push(call.received_at_ms as i128),
            None => unattributed += 1,
        }
    }

    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for r in records.values() {
        let status = if r.status.is_empty() {
            "missing"
        } else {
            r.status.as_str()
        };
        *by_status.entry(status.to_string()).or_default() += 1;
    }
    let lost: Vec<Uuid> = records
        .iter()
        .filter(|(_, r)| !matches!(r.status.as_str(), "succeeded" | "failed" | "cancelled"))
        .map(|(id, _)| *id)
        .collect();
    let double_completed: Vec<Uuid> = records
        .iter()
        .filter(|(_, r)| r.finalize > 1 || r.generate_succeeded > 1)
        .map(|(id, _)| *id)
        .collect();
    let repeated: Vec<(Uuid, usize)> = records
        .iter()
        .map(|(id, r)| (*id, r.repeated_calls()))
        .filter(|(_, n)| *n > 0)
        .collect();
    let repeated_calls: usize = repeated.iter().map(|(_, n)| n).sum();
    let paid_twice = records.values().filter(|r| r.calls.len() > 1).count();
    let all_steps = || records.values().flat_map(|r| &r.steps);
    let stuck_steps = all_steps().filter(|s| s.status == "running").count();
    let lost_steps = all_steps()
        .filter(|s| s.error_code.as_deref() == Some("worker_lost"))
        .count();

    let statuses = by_status
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let table = [
        ("submitted", plan.executions.to_string()),
        ("accepted (202)", ids.len().to_string()),
        ("terminal by status", statuses),
        ("lost (accepted, not terminal)", lost.len().to_string()),
        ("double completions", double_completed.len().to_string()),
        (
            "repeated model calls after a checkpoint",
            repeated_calls.to_string(),
        ),
        (
            "executions that called the model twice before a checkpoint",
            paid_twice.to_string(),
        ),
        ("model calls (all)", calls.len().to_string()),
        (
            "steps a killed worker left, closed as worker_lost",
            lost_steps.to_string(),
        ),
        ("steps still running", stuck_steps.to_string()),
        (
            "workers x concurrency",
            format!("{} x {}", plan.workers, plan.concurrency),
        ),
        ("SIGKILLs", kills.to_string()),
        ("model calls in flight at the kills", calls_cut.to_string()),
        ("duplicate messages injected", duplicates.to_string()),
        (
            "duration",
            format!("{:.1} s", started.elapsed().as_secs_f64()),
        ),
    ];
    eprintln!();
    eprintln!("chaos | {:<60} | value", "SIGKILL chaos");
    for (what, value) in &table {
        eprintln!("chaos | {what:<60} | {value}");
    }

    let show = |id: &Uuid| {
        let r = &records[id];
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|s| {
                format!(
                    "{}#{} {} a{} {} {}..{:?}",
                    s.kind,
                    s.seq,
                    s.status,
                    s.attempt,
                    s.error_code.as_deref().unwrap_or("-"),
                    s.started_at.timestamp_millis(),
                    s.finished_at.map(|t| t.timestamp_millis())
                )
            })
            .collect();
        format!(
            "{id}: status {:?}, checkpoint {:?}, calls {:?}, steps {steps:?}",
            r.status, r.checkpoint_ms, r.calls
        )
    };
    let examples = |ids: &[Uuid]| ids.iter().take(5).map(show).collect::<Vec<_>>().join("\n");
    if std::env::var_os("CHAOS_DEBUG").is_some() {
        let twice: Vec<Uuid> = records
            .iter()
            .filter(|(_, r)| r.calls.len() > 1)
            .map(|(id, _)| *id)
            .collect();
        eprintln!("called twice:\n{}", examples(&twice));
    }
    assert!(
        rejected.is_empty(),
        "submissions not accepted: {rejected:?}"
    );
    assert_eq!(
        unattributed, 0,
        "model calls that name no accepted execution"
    );
    assert!(
        lost.is_empty(),
        "{} accepted executions not terminal after {budget:?} (counts {counts:?}):\n{}",
        lost.len(),
        examples(&lost)
    );
    assert!(
        double_completed.is_empty(),
        "executions completed twice:\n{}",
        examples(&double_completed)
    );
    let repeated_ids: Vec<Uuid> = repeated.iter().map(|(id, _)| *id).collect();
    assert!(
        repeated.is_empty(),
        "model called again after the generate checkpoint:\n{}",
        examples(&repeated_ids)
    );
    let not_succeeded: Vec<Uuid> = records
        .iter()
        .filter(|(_, r)| r.status != "succeeded" || r.finalize != 1 || r.generate_succeeded != 1)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        not_succeeded.is_empty(),
        "executions that did not succeed exactly once:\n{}",
        examples(&not_succeeded)
    );
    assert_eq!(
        stuck_steps, 0,
        "finished executions with steps still running"
    );
    assert!(kills > 0, "no worker was killed: the work ended too soon");

    app.cleanup().await;
}

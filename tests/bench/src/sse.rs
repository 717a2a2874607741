//! `llmq-bench sse`: event streams under load. Submits executions open
//! loop and opens each one's event stream right after its submit, so that
//! (with a slow model) many thousands of subscribers are held on one API
//! process while executions run. Reports the peak number of streams held,
//! the API's peak RSS, and the delay from an event's commit to its arrival
//! at a subscriber: now minus the event's `at` (the committing statement's
//! time for status events, the step's own time, just before the batch
//! that commits it, for step events: an upper bound that includes the
//! group commit's wait).

use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use llmq_bench::{percentile, read_vm_hwm_kb};

#[derive(Args, Clone)]
pub struct SseArgs {
    #[arg(long, env = "LLMQ_BENCH_API", default_value = "http://127.0.0.1:18080")]
    api: String,
    #[arg(long, env = "LLMQ_BENCH_API_KEY", default_value = "bench-key")]
    api_key: String,
    /// Executions, each with one subscriber.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    subscribers: usize,
    /// Submits (and stream openings) per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Upper bound of the whole run.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// The API process, for its peak RSS.
    #[arg(long)]
    api_pid: Option<u32>,
    /// Name of this run in the report.
    #[arg(long, default_value = "sse")]
    label: String,
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Tally {
    /// Commit-to-arrival delays of step events, microseconds.
    step_us: Vec<u64>,
    /// The same for status events.
    status_us: Vec<u64>,
    completed: usize,
    failed: usize,
    events: usize,
}

pub async fn run(args: SseArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(args.timeout_secs))
        .build()?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (open, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1.0));
    let mut ticker = tokio::time::interval(interval);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.subscribers {
        ticker.tick().await;
        let (client, args, tally) = (client.clone(), args.clone(), tally.clone());
        let (open, peak) = (open.clone(), peak.clone());
        tasks.spawn(async move {
            let ok = subscribe(&client, &args, i, &tally, &open, &peak).await;
            if let Ok(mut t) = tally.lock() {
                if ok.is_ok() {
                    t.completed += 1;
                } else {
                    t.failed += 1;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let mut t = std::mem::take(&mut *tally.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    t.step_us.sort_unstable();
    t.status_us.sort_unstable();
    let ms = |v: &[u64], p| percentile(v, p).map(|us| us as f64 / 1000.0);
    let api_hwm_kb = args.api_pid.and_then(read_vm_hwm_kb);
    let report = json!({
        "label": args.label,
        "subscribers": args.subscribers,
        "peak_streams_held": peak.load(Ordering::Relaxed),
        "completed": t.completed,
        "failed": t.failed,
        "events": t.events,
        "seconds": elapsed.as_secs_f64(),
        "step_event_delay_ms": {"p50": ms(&t.step_us, 0.50), "p99": ms(&t.step_us, 0.99), "count": t.step_us.len()},
        "status_event_delay_ms": {"p50": ms(&t.status_us, 0.50), "p99": ms(&t.status_us, 0.99), "count": t.status_us.len()},
        "api_peak_rss_mb": api_hwm_kb.map(|kb| kb as f64 / 1024.0),
    });
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "sse {}: {} subscribers ({} held at peak), {} streams completed, {} failed, {} events in {:.1} s\n  \
         step event commit -> subscriber p50 {} ms, p99 {} ms; status events p99 {} ms; API peak RSS {} MB",
        args.label,
        args.subscribers,
        report["peak_streams_held"],
        t.completed,
        t.failed,
        t.events,
        elapsed.as_secs_f64(),
        report["step_event_delay_ms"]["p50"],
        report["step_event_delay_ms"]["p99"],
        report["status_event_delay_ms"]["p99"],
        report["api_peak_rss_mb"],
    )?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if t.failed > 0 {
        anyhow::bail!("{} streams failed", t.failed);
    }
    Ok(())
}

/// Submits one execution and reads its stream to `done`.
async fn subscribe(
    client: &reqwest::Client,
    args: &SseArgs,
    i: usize,
    tally: &Mutex<Tally>,
    open: &AtomicUsize,
    peak: &AtomicUsize,
) -> anyhow::Result<()> {
    let body =
        json!({"prompt": "summarize", "input": {"text": format!("sse bench {i} about a fox")}});
    let created: Value = client
        .post(format!("{}/v1/executions", args.api))
        .bearer_auth(&args.api_key)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let mut response = client
        .get(format!("{}/v1/executions/{id}/events", args.api))
        .bearer_auth(&args.api_key)
        .send()
        .await?
        .error_for_status()?;
    let held = open.fetch_add(1, Ordering::Relaxed) + 1;
    peak.fetch_max(held, Ordering::Relaxed);
    let result = read_stream(&mut response, tally).await;
    open.fetch_sub(1, Ordering::Relaxed);
    result
}

async fn read_stream(response: &mut reqwest::Response, tally: &Mutex<Tally>) -> anyhow::Result<()> {
    let mut buffer = String::new();
    let (mut event, mut live, mut snapshot_seen) = (String::new(), false, false);
    while let Some(chunk) = response.chunk().await? {
        let now = chrono::Utc::now();
        // Events that came with the snapshot were replayed, old by
        // construction: only later chunks measure the fan-out.
        live |= snapshot_seen;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(at) = buffer.find('\n') {
            let line: String = buffer.drain(..=at).collect();
            let line = line.trim_end();
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                if event == "snapshot" {
                    snapshot_seen = true;
                    continue;
                }
                let data: Value = serde_json::from_str(data)?;
                if event == "done" {
                    return Ok(());
                }
                let at = data["at"]
                    .as_str()
                    .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok());
                if let (true, Some(at)) = (live, at) {
                    let us = (now - at).num_microseconds().unwrap_or(0).max(0) as u64;
                    if let Ok(mut t) = tally.lock() {
                        t.events += 1;
                        match event.as_str() {
                            "step" => t.step_us.push(us),
                            _ => t.status_us.push(us),
                        }
                    }
                }
            }
        }
    }
    anyhow::bail!("the stream ended before done")
}

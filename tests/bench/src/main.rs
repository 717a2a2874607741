//! `llmq-bench`: submits N executions over HTTP with bounded concurrency,
//! waits for them to finish by polling Postgres, and reports submit
//! throughput and latency, end-to-end throughput and latency (from the
//! rows' timestamps), the peak number of generate calls in flight and the
//! peak RSS / CPU of watched processes.
//!
//! `llmq-bench summary a.json b.json` prints saved results (`--json-out`)
//! next to the targets.
//!
//! Assumes a database of its own (scripts/bench.sh creates one): the
//! "running" poller counts every running row of the table.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt as _;
use llmq_bench::{
    cpu_by_command, percentile, read_all_proc_cpu, read_machine_cpu, read_proc_cpu_ticks,
    read_vm_hwm_kb, render_report, render_summary, E2eStats, ProcessStats, Report, SubmitStats,
    USER_HZ,
};
use serde::Deserialize;
use tokio_postgres::NoTls;
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "llmq-bench",
    version,
    about = "Load generator for llmq",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

mod retrieval;
mod sse;

#[derive(Subcommand)]
enum Command {
    /// Event streams under load: one subscriber per execution, many held
    /// at once on one API process (see `sse.rs`).
    Sse(sse::SseArgs),
    /// Retrieval: a collection of many chunks, then executions of a
    /// prompt that retrieves from it (see `retrieval.rs`).
    Retrieval(retrieval::RetrievalArgs),
    /// Print results saved with --json-out next to the targets.
    Summary {
        /// Result files (JSON), one per setting.
        files: Vec<PathBuf>,
    },
    /// Gather results saved with --json-out into the latency-versus-load
    /// curve: a JSON file, an SVG and a Markdown table (printed).
    Curve {
        /// Result files (JSON), one per setting.
        files: Vec<PathBuf>,
        /// Where the curve's points go (JSON).
        #[arg(long)]
        json_out: PathBuf,
        /// Where the picture goes (SVG).
        #[arg(long)]
        svg_out: PathBuf,
        /// Title of the picture (say which run it is).
        #[arg(long, default_value = "llmq: latency versus load, 0 ms model")]
        title: String,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Base URL of the API.
    #[arg(long, env = "LLMQ_BENCH_API", default_value = "http://127.0.0.1:18080")]
    api: String,
    /// API key (sent as a bearer token).
    #[arg(long, env = "LLMQ_BENCH_API_KEY", default_value = "bench-key")]
    api_key: String,
    /// Database of the system under test (timings are read from it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/llmq_bench"
    )]
    database_url: String,
    /// Executions to submit in the measured run.
    #[arg(short = 'n', long, default_value_t = 20_000)]
    executions: usize,
    /// Submits in flight at once.
    #[arg(short = 'c', long, default_value_t = 64)]
    concurrency: usize,
    /// Prompt to execute.
    #[arg(long, default_value = "summarize")]
    prompt: String,
    /// Executions submitted and waited for before the measured run.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Upper bound of the wait for the measured executions to finish.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Upper bound of the wait for the warm-up executions to finish.
    #[arg(long, default_value_t = 60)]
    warmup_timeout_secs: u64,
    /// Name of this run in the report.
    #[arg(long, default_value = "bench")]
    label: String,
    /// Also print one JSON line of results.
    #[arg(long)]
    json: bool,
    /// Write the JSON results to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Provider latency of this setting (only recorded in the report).
    #[arg(long)]
    provider_latency_ms: Option<u64>,
    /// Worker concurrency of this setting (only recorded in the report).
    #[arg(long)]
    worker_concurrency: Option<u64>,
    /// Webhook setting: every execution carries `webhook: {url}`, and the
    /// deliveries' throughput and finished_at -> delivered latency are
    /// reported (the worker must run the `webhooks` role).
    #[arg(long)]
    webhook_url: Option<String>,
    /// End user named in every submit (`user`), so the per-user request
    /// limit applies (the limits setting).
    #[arg(long)]
    user: Option<String>,
    /// Process to report peak RSS and CPU of, as NAME=PID (repeatable);
    /// name one "worker" for the RSS target.
    #[arg(long = "watch", value_parser = parse_watch)]
    watch: Vec<(String, u32)>,
    /// Polling interval of Postgres while waiting.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Submits per second, open loop (each sent at its time, at most
    /// --concurrency in flight); 0 sends as fast as --concurrency allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Point the prompt's `production` label at weighted versions before
    /// the warm-up, e.g. `2:90,1:10` (a 90/10 split); submits then go
    /// through the split.
    #[arg(long, env = "LLMQ_BENCH_SPLIT")]
    split: Option<String>,
    /// Key that may move the protected `production` label (for --split).
    #[arg(long, env = "LLMQ_BENCH_ADMIN_KEY", default_value = "bench-admin-key")]
    admin_key: String,
}

/// `2:90,1:10` → the label body `{"targets": [...]}`.
fn split_body(raw: &str) -> anyhow::Result<serde_json::Value> {
    let mut targets = Vec::new();
    for part in raw.split(',') {
        let (v, w) = part
            .split_once(':')
            .with_context(|| format!("--split {raw:?}: expected VERSION:WEIGHT,..."))?;
        let version: i32 = v
            .trim()
            .parse()
            .with_context(|| format!("--split version {v:?}"))?;
        let weight: u32 = w
            .trim()
            .parse()
            .with_context(|| format!("--split weight {w:?}"))?;
        targets.push(serde_json::json!({"version": version, "weight": weight}));
    }
    Ok(serde_json::json!({"targets": targets, "reason": "llmq-bench --split"}))
}

/// Moves the prompt's production label to the split asked for.
async fn apply_split(http: &reqwest::Client, args: &RunArgs, raw: &str) -> anyhow::Result<()> {
    let url = format!(
        "{}/v1/prompts/{}/labels/production",
        args.api.trim_end_matches('/'),
        args.prompt
    );
    let response = http
        .put(&url)
        .bearer_auth(&args.admin_key)
        .json(&split_body(raw)?)
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "moving {} production to {raw}: {status} {body}",
            args.prompt
        );
    }
    eprintln!("[bench] {} production label: split {raw}", args.prompt);
    Ok(())
}

/// How many measured executions ran each version (a split's arms).
async fn report_versions(db: &tokio_postgres::Client, ids: &[Uuid]) -> anyhow::Result<()> {
    let rows = db
        .query(
            "SELECT prompt_version, prompt_arm, count(*) FROM executions WHERE id = ANY($1) \
             GROUP BY 1, 2 ORDER BY 1",
            &[&ids],
        )
        .await?;
    for r in rows {
        let (version, arm, n): (i32, Option<String>, i64) = (r.get(0), r.get(1), r.get(2));
        eprintln!(
            "[bench] v{version} ({}): {n} executions",
            arm.as_deref().unwrap_or("no arm")
        );
    }
    Ok(())
}

fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    let pid = pid.parse().map_err(|e| format!("bad pid {pid:?}: {e}"))?;
    Ok((name.to_string(), pid))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Summary { files }) => summary(&files),
        Some(Command::Curve {
            files,
            json_out,
            svg_out,
            title,
        }) => curve(&files, &json_out, &svg_out, &title),
        Some(Command::Sse(args)) => sse::run(args).await,
        Some(Command::Retrieval(args)) => retrieval::run(args).await,
        None => run(cli.run).await,
    }
}

fn read_reports(files: &[PathBuf]) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        reports.push(
            serde_json::from_str::<Report>(&text)
                .with_context(|| format!("parsing {}", f.display()))?,
        );
    }
    Ok(reports)
}

fn curve(files: &[PathBuf], json_out: &Path, svg_out: &Path, title: &str) -> anyhow::Result<()> {
    let points = llmq_bench::curve::points(&read_reports(files)?);
    std::fs::write(json_out, serde_json::to_string_pretty(&points)?)
        .with_context(|| format!("writing {}", json_out.display()))?;
    std::fs::write(svg_out, llmq_bench::curve::render_svg(&points, title))
        .with_context(|| format!("writing {}", svg_out.display()))?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", llmq_bench::curve::render_table(&points))?;
    Ok(())
}

fn summary(files: &[PathBuf]) -> anyhow::Result<()> {
    let reports = read_reports(files)?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", render_summary(&reports))?;
    Ok(())
}

/// One submit: when it ended, how long it took, and what came back.
struct Submitted {
    latency_us: u64,
    status: String,
    id: Option<Uuid>,
    error_body: Option<String>,
}

#[derive(Deserialize)]
struct Created {
    id: Uuid,
}

struct SubmitPhase {
    ids: Vec<Uuid>,
    stats: SubmitStats,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let (db, conn) = tokio_postgres::connect(&args.database_url, NoTls)
        .await
        .with_context(|| format!("connecting to {}", args.database_url))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("[bench] postgres connection error: {e}");
        }
    });
    let db = Arc::new(db);

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency.max(1) * 2)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    wait_ready(&http, &args.api).await?;
    if let Some(split) = &args.split {
        apply_split(&http, &args, split).await?;
    }
    if args.webhook_url.is_some() {
        // Per-execution URLs are signed with the tenant's secret.
        let url = format!("{}/v1/webhook-secret", args.api.trim_end_matches('/'));
        let status = http
            .post(&url)
            .bearer_auth(&args.api_key)
            .send()
            .await?
            .status();
        if !status.is_success() {
            bail!("POST /v1/webhook-secret answered {status}");
        }
    }

    if args.warmup > 0 {
        eprintln!(
            "[bench] {}: warm-up, {} executions",
            args.label, args.warmup
        );
        let warm = submit_all(&http, &args, 0..args.warmup, "warm-up").await;
        if warm.stats.accepted == 0 {
            bail!(
                "no warm-up execution was accepted: is the API key right? ({:?})",
                warm.stats.by_status
            );
        }
        let (done, _) =
            wait_terminal(&db, &warm.ids, &args, args.warmup_timeout_secs, "warm-up").await?;
        if !done {
            eprintln!(
                "[bench] warm-up did not finish within {} s (is the worker running?); measuring anyway",
                args.warmup_timeout_secs
            );
        }
    }

    // Measured phase.
    let before = CpuSnapshot::take(&args.watch);
    let peak_running = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = tokio::spawn(poll_running(
        db.clone(),
        peak_running.clone(),
        stop.clone(),
        args.poll_ms,
    ));

    eprintln!(
        "[bench] {}: submitting {} executions, {} at a time",
        args.label, args.executions, args.concurrency
    );
    let started = Instant::now();
    let phase = submit_all(
        &http,
        &args,
        args.warmup..args.warmup + args.executions,
        "run",
    )
    .await;
    let after_submit = CpuSnapshot::take(&args.watch);
    eprintln!(
        "[bench] submitted in {:.2} s: {} accepted, {} errors; waiting for them to finish",
        phase.stats.wall_secs, phase.stats.accepted, phase.stats.errors
    );
    let (done, _) = wait_terminal(&db, &phase.ids, &args, args.timeout_secs, "run").await?;
    let client_wall = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = poller.await;
    let after = CpuSnapshot::take(&args.watch);
    if args.split.is_some() {
        report_versions(&db, &phase.ids).await?;
    }

    let processes = args
        .watch
        .iter()
        .enumerate()
        .map(|(i, (name, pid))| ProcessStats {
            name: name.clone(),
            pid: *pid,
            peak_rss_kb: read_vm_hwm_kb(*pid),
            cpu_secs: CpuSnapshot::process_secs(&before, &after, i),
            cpu_secs_submit: CpuSnapshot::process_secs(&before, &after_submit, i),
        })
        .collect();
    let machine_cpu_busy_pct = CpuSnapshot::machine_busy_pct(&before, &after);
    let submit_machine_cpu_busy_pct = CpuSnapshot::machine_busy_pct(&before, &after_submit);

    let mut e2e = e2e_stats(&db, &phase.ids).await?;
    e2e.client_wall_secs = client_wall;
    let peak_generate_in_flight = generate_overlap(&db, &phase.ids).await?;
    let webhooks = match &args.webhook_url {
        Some(_) => Some(webhook_stats(&db, &phase.ids, args.timeout_secs).await?),
        None => None,
    };

    let report = Report {
        label: args.label.clone(),
        provider_latency_ms: args.provider_latency_ms,
        worker_concurrency: args.worker_concurrency,
        executions: args.executions,
        concurrency: args.concurrency,
        rate: args.rate,
        warmup: args.warmup,
        submit: phase.stats,
        e2e,
        peak_running: peak_running.load(Ordering::Relaxed),
        peak_generate_in_flight,
        timed_out: !done,
        processes,
        machine_cpu_busy_pct,
        submit_machine_cpu_busy_pct,
        cpu_by_command: cpu_by_command(&before.all, &after.all),
        webhooks,
    };

    let json = serde_json::to_string(&report)?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    write!(out, "{}", render_report(&report))?;
    if args.json {
        writeln!(out, "{json}")?;
    }
    out.flush()?;
    Ok(())
}

/// CPU ticks of the watched processes and of the machine at one moment.
struct CpuSnapshot {
    processes: Vec<Option<u64>>,
    machine: Option<(u64, u64)>,
    all: HashMap<u32, (String, u64)>,
}

impl CpuSnapshot {
    fn take(watch: &[(String, u32)]) -> Self {
        Self {
            processes: watch
                .iter()
                .map(|(_, pid)| read_proc_cpu_ticks(*pid))
                .collect(),
            machine: read_machine_cpu(),
            all: read_all_proc_cpu(),
        }
    }

    /// CPU seconds process `i` spent between the two snapshots.
    fn process_secs(from: &Self, to: &Self, i: usize) -> Option<f64> {
        let (a, b) = (
            from.processes.get(i).copied()??,
            to.processes.get(i).copied()??,
        );
        Some(b.saturating_sub(a) as f64 / USER_HZ)
    }

    /// Busy share of all cores between the two snapshots, in percent.
    fn machine_busy_pct(from: &Self, to: &Self) -> Option<f64> {
        let ((b0, t0), (b1, t1)) = (from.machine?, to.machine?);
        let total = t1.saturating_sub(t0);
        (total > 0).then(|| 100.0 * b1.saturating_sub(b0) as f64 / total as f64)
    }
}

/// Waits (bounded) until `GET /readyz` answers 200.
async fn wait_ready(http: &reqwest::Client, api: &str) -> anyhow::Result<()> {
    let url = format!("{}/readyz", api.trim_end_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("status {}", r.status()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("{url} not ready within 30 s: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Submits executions `range` with `--concurrency` requests in flight; each
/// request runs on its own task so both runtime threads share the work.
async fn submit_all(
    http: &reqwest::Client,
    args: &RunArgs,
    range: std::ops::Range<usize>,
    tag: &str,
) -> SubmitPhase {
    let url: Arc<str> = format!("{}/v1/executions", args.api.trim_end_matches('/')).into();
    let auth: Arc<str> = format!("Bearer {}", args.api_key).into();
    let prompt: Arc<str> = args.prompt.clone().into();
    let tag: Arc<str> = tag.into();
    let webhook: Option<Arc<str>> = args.webhook_url.as_deref().map(Into::into);
    let user: Option<Arc<str>> = args.user.as_deref().map(Into::into);
    let first = range.start;
    let rate = args.rate;
    let started = Instant::now();
    let start_at = tokio::time::Instant::now();
    let results: Vec<Submitted> = futures::stream::iter(range)
        .map(|i| {
            let (http, url, auth, prompt, tag) = (http.clone(), url.clone(), auth.clone(), prompt.clone(), tag.clone());
            let webhook = webhook.clone();
            let user = user.clone();
            tokio::spawn(async move {
                if rate > 0.0 {
                    let due = Duration::from_secs_f64((i - first) as f64 / rate);
                    tokio::time::sleep_until(start_at + due).await;
                }
                let mut body = serde_json::json!({
                    "prompt": &*prompt,
                    "input": {"text": format!(
                        "benchmark execution {i} ({tag}): llmq runs prompts durably; this text only has to be summarized."
                    )},
                });
                if let Some(hook) = &webhook {
                    body["webhook"] = serde_json::json!({"url": &**hook});
                }
                if let Some(user) = &user {
                    body["user"] = serde_json::json!(&**user);
                }
                let t0 = Instant::now();
                let sent = http.post(&*url).header("Authorization", &*auth).json(&body).send().await;
                match sent {
                    Ok(resp) => {
                        let status = resp.status();
                        let bytes = resp.bytes().await;
                        let latency_us = t0.elapsed().as_micros() as u64;
                        match (status.as_u16(), bytes) {
                            (202, Ok(b)) => match serde_json::from_slice::<Created>(&b) {
                                Ok(c) => Submitted { latency_us, status: "202".into(), id: Some(c.id), error_body: None },
                                Err(e) => Submitted {
                                    latency_us,
                                    status: "202 (unreadable)".into(),
                                    id: None,
                                    error_body: Some(format!("{e}: {}", String::from_utf8_lossy(&b))),
                                },
                            },
                            (code, b) => Submitted {
                                latency_us,
                                status: code.to_string(),
                                id: None,
                                error_body: Some(b.map_or_else(|e| e.to_string(), |b| String::from_utf8_lossy(&b).into())),
                            },
                        }
                    }
                    Err(e) => Submitted {
                        latency_us: t0.elapsed().as_micros() as u64,
                        status: "transport".into(),
                        id: None,
                        error_body: Some(e.to_string()),
                    },
                }
            })
        })
        .buffer_unordered(args.concurrency.max(1))
        .filter_map(|joined| async move { joined.ok() })
        .collect()
        .await;
    let wall = started.elapsed().as_secs_f64();

    let mut latencies: Vec<u64> = results.iter().map(|r| r.latency_us).collect();
    latencies.sort_unstable();
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids = Vec::with_capacity(results.len());
    let mut shown = 0;
    for r in &results {
        *by_status.entry(r.status.clone()).or_default() += 1;
        match (r.id, &r.error_body) {
            (Some(id), _) => ids.push(id),
            (None, Some(body)) if shown < 5 => {
                shown += 1;
                eprintln!(
                    "[bench] submit error ({}): {}",
                    r.status,
                    body.chars().take(300).collect::<String>()
                );
            }
            _ => {}
        }
    }
    let ms = |us: Option<u64>| us.unwrap_or(0) as f64 / 1000.0;
    let n = results.len();
    let stats = SubmitStats {
        wall_secs: wall,
        req_per_sec: if wall > 0.0 { n as f64 / wall } else { 0.0 },
        accepted: ids.len(),
        errors: n - ids.len(),
        by_status: by_status.into_iter().collect(),
        p50_ms: ms(percentile(&latencies, 0.50)),
        p99_ms: ms(percentile(&latencies, 0.99)),
        max_ms: ms(latencies.last().copied()),
        mean_ms: if n > 0 {
            latencies.iter().sum::<u64>() as f64 / n as f64 / 1000.0
        } else {
            0.0
        },
    };
    SubmitPhase { ids, stats }
}

/// Polls until every execution of `ids` is terminal or `timeout_secs`
/// passes. Answers (all terminal, terminal count).
///
/// Cheap on Postgres, which runs on the same cores as the system under
/// test: each poll only looks at the oldest pending ids (UUIDv7, so about
/// the order they run in), a batch at a time, moving on while whole
/// batches are done.
async fn wait_terminal(
    db: &tokio_postgres::Client,
    ids: &[Uuid],
    args: &RunArgs,
    timeout_secs: u64,
    phase: &str,
) -> anyhow::Result<(bool, usize)> {
    const BATCH: usize = 1000;
    let stmt = db
        .prepare(
            "SELECT id FROM executions \
             WHERE id = ANY($1) AND status IN ('succeeded', 'failed', 'cancelled')",
        )
        .await?;
    let running = db
        .prepare("SELECT count(*) FROM executions WHERE status = 'running'")
        .await?;
    let mut pending: Vec<Uuid> = ids.to_vec();
    pending.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let want = ids.len();
    let mut last_log = Instant::now();
    loop {
        let mut offset = 0;
        let mut done = std::collections::HashSet::new();
        while offset < pending.len() {
            let batch = &pending[offset..(offset + BATCH).min(pending.len())];
            let rows = db.query(&stmt, &[&batch]).await?;
            let all_done = rows.len() == batch.len();
            done.extend(rows.iter().map(|r| r.get::<_, Uuid>(0)));
            if !all_done {
                break;
            }
            offset += BATCH;
        }
        pending.retain(|id| !done.contains(id));
        let terminal = want - pending.len();
        if pending.is_empty() {
            return Ok((true, terminal));
        }
        if Instant::now() >= deadline {
            eprintln!("[bench] {phase}: timed out with {terminal}/{want} terminal");
            return Ok((false, terminal));
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            let r: i64 = db.query_one(&running, &[]).await?.get(0);
            eprintln!("[bench] {phase}: {terminal}/{want} terminal (at least), {r} running");
            last_log = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
    }
}

/// Tracks the peak number of running executions (whole table; the partial
/// index on running rows keeps this cheap) until `stop`.
async fn poll_running(
    db: Arc<tokio_postgres::Client>,
    peak: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    poll_ms: u64,
) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(row) = db
            .query_one(
                "SELECT count(*) FROM executions WHERE status = 'running'",
                &[],
            )
            .await
        {
            peak.fetch_max(row.get::<_, i64>(0), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(poll_ms)).await;
    }
}

async fn e2e_stats(db: &tokio_postgres::Client, ids: &[Uuid]) -> anyhow::Result<E2eStats> {
    let row = db
        .query_one(
            "WITH e AS ( \
                SELECT status, created_at, started_at, finished_at, \
                       extract(epoch FROM finished_at - created_at)::float8 * 1000 AS e2e_ms, \
                       extract(epoch FROM started_at - created_at)::float8 * 1000 AS queue_ms, \
                       extract(epoch FROM finished_at)::float8 AS fin \
                FROM executions WHERE id = ANY($1)) \
             SELECT count(*) FILTER (WHERE status = 'succeeded'), \
                    count(*) FILTER (WHERE status = 'failed'), \
                    count(*) FILTER (WHERE status = 'cancelled'), \
                    count(*) FILTER (WHERE status = 'queued'), \
                    count(*) FILTER (WHERE status = 'running'), \
                    coalesce(extract(epoch FROM max(finished_at) - min(created_at))::float8, 0), \
                    coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY e2e_ms), 0), \
                    coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY e2e_ms), 0), \
                    coalesce(max(e2e_ms), 0), \
                    coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY queue_ms), 0), \
                    coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY queue_ms), 0), \
                    coalesce(percentile_cont(0.1) WITHIN GROUP (ORDER BY fin), 0), \
                    coalesce(percentile_cont(0.9) WITHIN GROUP (ORDER BY fin), 0), \
                    count(finished_at) \
             FROM e",
            &[&ids],
        )
        .await?;
    let mut s = E2eStats {
        succeeded: row.get(0),
        failed: row.get(1),
        cancelled: row.get(2),
        queued: row.get(3),
        running: row.get(4),
        span_secs: row.get(5),
        p50_ms: row.get(6),
        p99_ms: row.get(7),
        max_ms: row.get(8),
        queue_p50_ms: row.get(9),
        queue_p99_ms: row.get(10),
        ..Default::default()
    };
    let (p10, p90, finished): (f64, f64, i64) = (row.get(11), row.get(12), row.get(13));
    if s.span_secs > 0.0 {
        s.exec_per_sec = s.terminal() as f64 / s.span_secs;
    }
    if p90 > p10 {
        s.steady_exec_per_sec = 0.8 * finished as f64 / (p90 - p10);
    }
    let steps = db
        .query_one(
            "WITH g AS ( \
                SELECT extract(epoch FROM finished_at - started_at)::float8 * 1000 AS ms \
                FROM execution_steps WHERE kind = 'generate' AND execution_id = ANY($1)) \
             SELECT count(*), \
                    coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), 0), \
                    coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), 0) \
             FROM g",
            &[&ids],
        )
        .await?;
    s.generate_steps = steps.get(0);
    s.generate_p50_ms = steps.get(1);
    s.generate_p99_ms = steps.get(2);
    Ok(s)
}

/// Most `generate` steps open at once: a sweep over their start (+1) and
/// finish (−1) events, finishes first on ties.
/// Waits (up to `timeout_secs`) for the executions' deliveries to settle,
/// then measures them from the delivery log.
async fn webhook_stats(
    db: &tokio_postgres::Client,
    ids: &[Uuid],
    timeout_secs: u64,
) -> anyhow::Result<llmq_bench::WebhookStats> {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let count = "SELECT count(*), count(*) FILTER (WHERE status = 'pending') \
                 FROM webhook_deliveries WHERE execution_id = ANY($1)";
    loop {
        let row = db.query_one(count, &[&ids]).await?;
        let (all, pending): (i64, i64) = (row.get(0), row.get(1));
        if (all >= ids.len() as i64 && pending == 0) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = db
        .query(
            "SELECT extract(epoch FROM a.attempted_at - e.finished_at) * 1000 + a.latency_ms AS ms, \
               extract(epoch FROM a.attempted_at) + a.latency_ms / 1000 AS at \
             FROM webhook_deliveries d JOIN executions e ON e.id = d.execution_id \
             JOIN webhook_attempts a ON a.delivery_id = d.id AND a.status_code BETWEEN 200 AND 299 \
             WHERE d.execution_id = ANY($1)",
            &[&ids],
        )
        .await?;
    let mut ms: Vec<f64> = rows.iter().map(|r| r.get::<_, f64>(0)).collect();
    ms.sort_by(f64::total_cmp);
    let at: Vec<f64> = rows.iter().map(|r| r.get::<_, f64>(1)).collect();
    let span =
        at.iter().copied().fold(f64::MIN, f64::max) - at.iter().copied().fold(f64::MAX, f64::min);
    let row = db.query_one(count, &[&ids]).await?;
    let pick = |p: f64| {
        if ms.is_empty() {
            0.0
        } else {
            ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1]
        }
    };
    Ok(llmq_bench::WebhookStats {
        deliveries: row.get(0),
        pending: row.get(1),
        succeeded: ms.len() as i64,
        per_sec: if span > 0.0 {
            ms.len() as f64 / span
        } else {
            0.0
        },
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
    })
}

async fn generate_overlap(db: &tokio_postgres::Client, ids: &[Uuid]) -> anyhow::Result<i64> {
    let row = db
        .query_one(
            "WITH s AS ( \
                SELECT started_at, finished_at FROM execution_steps \
                WHERE kind = 'generate' AND execution_id = ANY($1)), \
             ev AS ( \
                SELECT started_at AS t, 1 AS d FROM s \
                UNION ALL SELECT finished_at, -1 FROM s WHERE finished_at IS NOT NULL) \
             SELECT coalesce(max(open), 0)::int8 FROM ( \
                SELECT sum(d) OVER (ORDER BY t, d ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS open \
                FROM ev) x",
            &[&ids],
        )
        .await?;
    Ok(row.get(0))
}

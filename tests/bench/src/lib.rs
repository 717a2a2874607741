//! Pieces of the `llmq-bench` load generator that do not talk to the
//! system under test: latency statistics, `/proc` readings, the result
//! record (also written as JSON) and the text tables.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub mod curve;

/// Targets of the issue, on a 2-core machine running everything.
pub mod targets {
    /// End-to-end executions/s with the provider answering at once, closed
    /// loop (saturated).
    pub const EXEC_PER_SEC_AT_0MS: f64 = 5_000.0;
    /// Open-loop rate at or below which the low-load latency targets hold.
    pub const LOW_LOAD_RATE: f64 = 100.0;
    /// Created → finished p50 / p99 at that rate, provider answering at once.
    pub const LOW_LOAD_E2E_P50_MS: f64 = 3.0;
    pub const LOW_LOAD_E2E_P99_MS: f64 = 10.0;
    /// Concurrent generate calls one worker holds with a 2 s provider.
    pub const IN_FLIGHT_AT_2S: i64 = 3_500;
    /// Executions/s that many calls in flight amount to (3,500 / 2 s).
    pub const EXEC_PER_SEC_AT_2S: f64 = 1_750.0;
    /// Worker peak RSS with a slow provider.
    pub const WORKER_RSS_MB: f64 = 512.0;
    /// Provider latency past which a setting is the "slow models at scale"
    /// one (`make bench-slow`: 30 s, ~30,000 calls in flight).
    pub const SLOW_MODEL_MS: u64 = 2_000;
    /// Its worker peak RSS.
    pub const WORKER_RSS_MB_AT_30S: f64 = 1_024.0;
    /// How much later than its model latency each execution may finish.
    pub const SLOW_MODEL_SLACK_MS: f64 = 2_000.0;
    /// Submit p99 while the system is saturated.
    pub const SUBMIT_P99_MS: f64 = 20.0;
}

/// Nearest-rank percentile (`p` in 0..=1) of an ascending slice.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

/// One run of the load generator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    /// Provider latency of this setting, as told by the caller (informative).
    pub provider_latency_ms: Option<u64>,
    /// Worker concurrency of this setting, as told by the caller (informative).
    pub worker_concurrency: Option<u64>,
    pub executions: usize,
    pub concurrency: usize,
    /// Open-loop submit rate asked for (per second); 0 for closed loop.
    #[serde(default)]
    pub rate: f64,
    pub warmup: usize,
    pub submit: SubmitStats,
    pub e2e: E2eStats,
    /// Most executions seen in status `running` at once while polling.
    pub peak_running: i64,
    /// Most `generate` steps whose [started_at, finished_at] overlap.
    pub peak_generate_in_flight: i64,
    /// Whether `--timeout-secs` passed before every execution was terminal.
    pub timed_out: bool,
    /// Processes watched during the measured phase (submit start → all terminal).
    pub processes: Vec<ProcessStats>,
    /// Share of the machine's CPU time that was busy during the measured phase.
    pub machine_cpu_busy_pct: Option<f64>,
    /// The same during the submit phase only.
    #[serde(default)]
    pub submit_machine_cpu_busy_pct: Option<f64>,
    /// CPU seconds by command name during the measured phase (every
    /// process of the machine, largest first): shows what else ran.
    #[serde(default)]
    pub cpu_by_command: Vec<(String, f64)>,
    /// The webhook setting's deliveries (`--webhook-url`).
    #[serde(default)]
    pub webhooks: Option<WebhookStats>,
}

/// Webhook deliveries of the measured executions, from the delivery log:
/// "delivered" is the successful attempt's start plus its latency (when
/// the receiver's answer was back), measured from the execution's
/// `finished_at`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WebhookStats {
    pub deliveries: i64,
    pub succeeded: i64,
    pub pending: i64,
    /// Succeeded deliveries over the span from the first to the last.
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubmitStats {
    pub wall_secs: f64,
    pub req_per_sec: f64,
    pub accepted: usize,
    pub errors: usize,
    /// Count per HTTP status (or "transport" for connection errors).
    pub by_status: Vec<(String, usize)>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct E2eStats {
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub queued: i64,
    pub running: i64,
    /// max(finished_at) − min(created_at) over the accepted executions.
    pub span_secs: f64,
    /// Terminal executions / span.
    pub exec_per_sec: f64,
    /// Throughput between the 10th and 90th percentile of finished_at
    /// (leaves out the ramp-up and the tail of the last slow calls).
    pub steady_exec_per_sec: f64,
    /// finished_at − created_at.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// started_at − created_at (queueing before a worker picked it up).
    pub queue_p50_ms: f64,
    pub queue_p99_ms: f64,
    /// Duration of the `generate` steps.
    pub generate_steps: i64,
    pub generate_p50_ms: f64,
    pub generate_p99_ms: f64,
    /// Wall time from the first submit until the poller saw every execution terminal.
    pub client_wall_secs: f64,
}

impl E2eStats {
    pub fn terminal(&self) -> i64 {
        self.succeeded + self.failed + self.cancelled
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessStats {
    pub name: String,
    pub pid: u32,
    /// VmHWM at the end of the measured phase.
    pub peak_rss_kb: Option<u64>,
    /// user+system CPU seconds spent during the measured phase.
    pub cpu_secs: Option<f64>,
    /// The same during the submit phase only.
    #[serde(default)]
    pub cpu_secs_submit: Option<f64>,
}

/// Clock ticks per second of `/proc` CPU times (USER_HZ; 100 on Linux).
pub const USER_HZ: f64 = 100.0;

/// `VmHWM` (peak resident set) in kB from the text of `/proc/<pid>/status`.
pub fn parse_vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// utime + stime (ticks) from the text of `/proc/<pid>/stat`.
pub fn parse_proc_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) ticks from the first line of `/proc/stat`.
pub fn parse_machine_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Command name (field 2, without the parentheses) from `/proc/<pid>/stat`.
pub fn parse_proc_comm(stat: &str) -> Option<&str> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    stat.get(open + 1..close)
}

/// CPU ticks of every process on the machine at one moment, by pid.
pub fn read_all_proc_cpu() -> std::collections::HashMap<u32, (String, u64)> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let (Some(comm), Some(ticks)) = (parse_proc_comm(&stat), parse_proc_cpu_ticks(&stat)) {
            out.insert(pid, (comm.to_string(), ticks));
        }
    }
    out
}

/// CPU seconds spent between two [`read_all_proc_cpu`] readings, summed by
/// command name, largest first. A process born in between counts from
/// zero; one that died in between is missed.
pub fn cpu_by_command(
    before: &std::collections::HashMap<u32, (String, u64)>,
    after: &std::collections::HashMap<u32, (String, u64)>,
) -> Vec<(String, f64)> {
    let mut sums: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for (pid, (comm, ticks)) in after {
        let start = match before.get(pid) {
            Some((c, t)) if c == comm => *t,
            _ => 0,
        };
        *sums.entry(comm.as_str()).or_default() += ticks.saturating_sub(start);
    }
    let mut v: Vec<(String, f64)> = sums
        .into_iter()
        .filter(|(_, t)| *t > 0)
        .map(|(c, t)| (c.to_string(), t as f64 / USER_HZ))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

pub fn read_vm_hwm_kb(pid: u32) -> Option<u64> {
    parse_vm_hwm_kb(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

pub fn read_proc_cpu_ticks(pid: u32) -> Option<u64> {
    parse_proc_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn read_machine_cpu() -> Option<(u64, u64)> {
    parse_machine_cpu(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn secs(s: Option<f64>) -> String {
    s.map_or_else(|| "n/a".into(), |c| format!("{c:.1} s"))
}

fn mb(kb: Option<u64>) -> String {
    kb.map_or_else(
        || "n/a".into(),
        |kb| format!("{:.1} MB", kb as f64 / 1024.0),
    )
}

/// The readable table of one run.
pub fn render_report(r: &Report) -> String {
    let mut s = String::new();
    let setting = match (r.provider_latency_ms, r.worker_concurrency) {
        (Some(l), Some(c)) => format!(" (provider {l} ms, worker concurrency {c})"),
        (Some(l), None) => format!(" (provider {l} ms)"),
        _ => String::new(),
    };
    let _ = writeln!(s, "== llmq bench: {}{setting}", r.label);
    let pacing = if r.rate > 0.0 {
        format!(" at most, open loop at {:.0}/s", r.rate)
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "   {} executions, {} in-flight submits{pacing}, warm-up {}{}",
        r.executions,
        r.concurrency,
        r.warmup,
        if r.timed_out {
            "  ** TIMED OUT before all were terminal **"
        } else {
            ""
        }
    );
    let row = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "   {k:<34} {v}");
    };
    let sub = &r.submit;
    row(
        &mut s,
        "submit throughput",
        format!("{:.0} req/s ({:.2} s)", sub.req_per_sec, sub.wall_secs),
    );
    row(
        &mut s,
        "submit latency p50 / p99 / max",
        format!(
            "{:.2} / {:.2} / {:.2} ms (mean {:.2})",
            sub.p50_ms, sub.p99_ms, sub.max_ms, sub.mean_ms
        ),
    );
    let statuses = sub
        .by_status
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    row(
        &mut s,
        "submit accepted / errors",
        format!("{} / {}  [{statuses}]", sub.accepted, sub.errors),
    );
    let e = &r.e2e;
    row(
        &mut s,
        "end-to-end throughput",
        format!(
            "{:.0} exec/s ({:.2} s first created → last finished; steady p10–p90 {:.0} exec/s)",
            e.exec_per_sec, e.span_secs, e.steady_exec_per_sec
        ),
    );
    row(
        &mut s,
        "end-to-end latency p50 / p99 / max",
        format!("{:.1} / {:.1} / {:.1} ms", e.p50_ms, e.p99_ms, e.max_ms),
    );
    row(
        &mut s,
        "queue wait p50 / p99",
        format!("{:.1} / {:.1} ms", e.queue_p50_ms, e.queue_p99_ms),
    );
    row(
        &mut s,
        "generate step p50 / p99",
        format!(
            "{:.1} / {:.1} ms ({} steps)",
            e.generate_p50_ms, e.generate_p99_ms, e.generate_steps
        ),
    );
    row(
        &mut s,
        "statuses",
        format!(
            "succeeded {}, failed {}, cancelled {}, queued {}, running {}",
            e.succeeded, e.failed, e.cancelled, e.queued, e.running
        ),
    );
    row(
        &mut s,
        "peak generate calls in flight",
        r.peak_generate_in_flight.to_string(),
    );
    row(
        &mut s,
        "peak executions running (polled)",
        r.peak_running.to_string(),
    );
    row(
        &mut s,
        "client wall (first submit → all done)",
        format!("{:.2} s", e.client_wall_secs),
    );
    for p in &r.processes {
        row(
            &mut s,
            &format!("{} (pid {}) peak RSS / CPU", p.name, p.pid),
            format!(
                "{} / {} (submit phase {})",
                mb(p.peak_rss_kb),
                secs(p.cpu_secs),
                secs(p.cpu_secs_submit),
            ),
        );
    }
    // Compare settings by this: e.g. the tools setting's minus the plain
    // 0 ms one's is the CPU a tool round adds to an execution.
    let cpu: f64 = r.processes.iter().filter_map(|p| p.cpu_secs).sum();
    if cpu > 0.0 && r.executions > 0 {
        row(
            &mut s,
            "CPU per execution (watched processes)",
            format!("{:.0} µs", cpu * 1e6 / r.executions as f64),
        );
    }
    if let Some(busy) = r.machine_cpu_busy_pct {
        let submit = r
            .submit_machine_cpu_busy_pct
            .map_or_else(|| "n/a".into(), |b| format!("{b:.0} %"));
        row(
            &mut s,
            "machine CPU busy (all cores)",
            format!("{busy:.0} % (submit phase {submit})"),
        );
    }
    if !r.cpu_by_command.is_empty() {
        let top = r
            .cpu_by_command
            .iter()
            .take(8)
            .map(|(c, secs)| format!("{c} {secs:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        row(&mut s, "CPU s by command (measured phase)", top);
    }
    if let Some(w) = &r.webhooks {
        row(
            &mut s,
            "webhook deliveries",
            format!(
                "{} of {} succeeded ({} pending), {:.0} /s",
                w.succeeded, w.deliveries, w.pending, w.per_sec
            ),
        );
        row(
            &mut s,
            "finished_at -> delivered p50 / p99 / max",
            format!("{:.1} / {:.1} / {:.1} ms", w.p50_ms, w.p99_ms, w.max_ms),
        );
    }
    s
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// Figures of several runs next to the targets. A run with a
/// provider latency of 0 is the orchestration-overhead setting; any other
/// is the slow-provider setting.
pub fn render_summary(reports: &[Report]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<22} {:<38} {:<16} {:<8}",
        "setting", "figure", "target", "verdict"
    );
    let _ = writeln!(s, "{}", "-".repeat(86));
    for r in reports {
        let slow_latency = r.provider_latency_ms.unwrap_or(0);
        let slow = slow_latency > 0;
        let name = match r.provider_latency_ms {
            Some(l) => format!("{} ({l} ms)", r.label),
            None => r.label.clone(),
        };
        let mut line = |figure: String, target: String, ok: Option<bool>| {
            let v = ok.map_or("", verdict);
            let _ = writeln!(s, "{name:<22} {figure:<38} {target:<16} {v:<8}");
        };
        let e = &r.e2e;
        let all_done = !r.timed_out && e.terminal() as usize == r.submit.accepted;
        line(
            format!(
                "terminal {}/{} (failed {})",
                e.terminal(),
                r.submit.accepted,
                e.failed
            ),
            "all".into(),
            Some(all_done && r.submit.errors == 0),
        );
        let worker_rss = r
            .processes
            .iter()
            .find(|p| p.name == "worker")
            .and_then(|p| p.peak_rss_kb);
        if slow_latency > targets::SLOW_MODEL_MS {
            // The 30 s setting: everything held at once, each call finished
            // about its model latency after it was created.
            let latency = slow_latency as f64;
            line(
                format!("peak generate in flight {}", r.peak_generate_in_flight),
                String::new(),
                None,
            );
            line(
                format!("e2e p99 {:.0} ms", e.p99_ms),
                format!("< {:.0} ms", latency + targets::SLOW_MODEL_SLACK_MS),
                Some(e.p99_ms < latency + targets::SLOW_MODEL_SLACK_MS),
            );
            line(
                format!("worker peak RSS {}", mb(worker_rss)),
                format!("< {:.0} MB", targets::WORKER_RSS_MB_AT_30S),
                worker_rss.map(|kb| (kb as f64 / 1024.0) < targets::WORKER_RSS_MB_AT_30S),
            );
        } else if slow {
            line(
                format!("peak generate in flight {}", r.peak_generate_in_flight),
                format!(">= {}", targets::IN_FLIGHT_AT_2S),
                Some(r.peak_generate_in_flight >= targets::IN_FLIGHT_AT_2S),
            );
            line(
                format!("e2e {:.0} exec/s", e.exec_per_sec),
                format!(">= {:.0}", targets::EXEC_PER_SEC_AT_2S),
                Some(e.exec_per_sec >= targets::EXEC_PER_SEC_AT_2S),
            );
            line(
                format!("steady (p10–p90) {:.0} exec/s", e.steady_exec_per_sec),
                format!(">= {:.0}", targets::EXEC_PER_SEC_AT_2S),
                Some(e.steady_exec_per_sec >= targets::EXEC_PER_SEC_AT_2S),
            );
            line(
                format!("worker peak RSS {}", mb(worker_rss)),
                format!("< {:.0} MB", targets::WORKER_RSS_MB),
                worker_rss.map(|kb| (kb as f64 / 1024.0) < targets::WORKER_RSS_MB),
            );
        } else if r.rate > 0.0 {
            // Open loop: judged on latency at the load asked for; the
            // throughput is that load.
            let low = r.rate <= targets::LOW_LOAD_RATE;
            line(
                format!("e2e {:.0} exec/s (paced {:.0}/s)", e.exec_per_sec, r.rate),
                String::new(),
                None,
            );
            line(
                format!("e2e p50 {:.1} ms", e.p50_ms),
                if low {
                    format!("< {:.0} ms", targets::LOW_LOAD_E2E_P50_MS)
                } else {
                    String::new()
                },
                low.then_some(e.p50_ms < targets::LOW_LOAD_E2E_P50_MS),
            );
            line(
                format!("e2e p99 {:.1} ms", e.p99_ms),
                if low {
                    format!("< {:.0} ms", targets::LOW_LOAD_E2E_P99_MS)
                } else {
                    String::new()
                },
                low.then_some(e.p99_ms < targets::LOW_LOAD_E2E_P99_MS),
            );
        } else {
            line(
                format!("e2e {:.0} exec/s", e.exec_per_sec),
                format!(">= {:.0}", targets::EXEC_PER_SEC_AT_0MS),
                Some(e.exec_per_sec >= targets::EXEC_PER_SEC_AT_0MS),
            );
            line(
                format!("steady (p10–p90) {:.0} exec/s", e.steady_exec_per_sec),
                String::new(),
                None,
            );
            line(
                format!("worker peak RSS {}", mb(worker_rss)),
                String::new(),
                None,
            );
        }
        line(
            format!("e2e p50 / p99 {:.0} / {:.0} ms", e.p50_ms, e.p99_ms),
            String::new(),
            None,
        );
        line(
            format!(
                "submit {:.0} req/s, p50 {:.1} ms",
                r.submit.req_per_sec, r.submit.p50_ms
            ),
            String::new(),
            None,
        );
        if r.rate > 0.0 {
            // Open loop: the load is the rate asked for, whatever the
            // latency; this is the figure the target is about.
            line(
                format!("submit p99 {:.1} ms (at {:.0}/s)", r.submit.p99_ms, r.rate),
                format!("< {:.0} ms", targets::SUBMIT_P99_MS),
                Some(r.submit.p99_ms < targets::SUBMIT_P99_MS),
            );
        } else {
            // Closed loop: `concurrency` requests are always in flight, so
            // the mean latency is concurrency / throughput (Little's law)
            // whatever the server does; reported, not judged.
            line(
                format!(
                    "submit p99 {:.1} ms (closed loop, {})",
                    r.submit.p99_ms, r.concurrency
                ),
                format!(
                    "mean >= {:.1} ms",
                    1000.0 * r.concurrency as f64 / r.submit.req_per_sec.max(1.0)
                ),
                None,
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn parses_proc_files() {
        let status =
            "Name:\tllmq-worker\nVmPeak:\t  900 kB\nVmHWM:\t  123456 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm_kb(status), Some(123_456));
        let stat = "42 (llmq worker) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1 1 1";
        assert_eq!(parse_proc_cpu_ticks(stat), Some(300));
        assert_eq!(parse_proc_comm(stat), Some("llmq worker"));
        let machine = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_machine_cpu(machine), Some((150, 1000)));
    }

    #[test]
    fn summary_judges_targets() {
        let mut r = Report {
            label: "slow".into(),
            provider_latency_ms: Some(2000),
            executions: 10,
            peak_generate_in_flight: 4000,
            rate: 2500.0,
            ..Default::default()
        };
        r.submit.accepted = 10;
        r.submit.p99_ms = 25.0;
        r.e2e.succeeded = 10;
        r.e2e.exec_per_sec = 1800.0;
        r.processes.push(ProcessStats {
            name: "worker".into(),
            pid: 1,
            peak_rss_kb: Some(300 * 1024),
            cpu_secs: None,
            cpu_secs_submit: None,
        });
        let s = render_summary(&[r]);
        assert!(s.contains("peak generate in flight 4000"), "{s}");
        assert!(
            s.lines()
                .any(|l| l.contains("submit p99") && l.contains("NOT met")),
            "{s}"
        );
        assert!(
            s.lines()
                .any(|l| l.contains("worker peak RSS") && l.trim_end().ends_with("met")),
            "{s}"
        );
        assert!(!render_report(&Report::default()).is_empty());

        // Closed loop: the submit p99 is reported with Little's floor, not judged.
        let closed = Report {
            label: "fast".into(),
            provider_latency_ms: Some(0),
            concurrency: 64,
            ..Default::default()
        };
        let s = render_summary(&[closed]);
        let line = s.lines().find(|l| l.contains("submit p99")).unwrap();
        assert!(
            line.contains("closed loop, 64") && !line.contains("met"),
            "{line}"
        );

        // Paced at low load: judged on created → finished latency, not on
        // throughput.
        let mut paced = Report {
            label: "paced".into(),
            provider_latency_ms: Some(0),
            rate: 100.0,
            ..Default::default()
        };
        paced.e2e.p50_ms = 2.0;
        paced.e2e.p99_ms = 12.0;
        let s = render_summary(&[paced]);
        let verdict_of = |what: &str| {
            s.lines()
                .find(|l| l.contains(what))
                .map(|l| l.trim_end().to_string())
                .unwrap_or_else(|| panic!("no {what} line in {s}"))
        };
        assert!(verdict_of("e2e p50 2.0 ms").ends_with(" met"), "{s}");
        assert!(verdict_of("e2e p99 12.0 ms").ends_with("NOT met"), "{s}");
        assert!(!verdict_of("exec/s (paced 100/s)").contains("met"), "{s}");

        // A 30 s model: each finished about 30 s after it was created, in
        // under a gigabyte; not judged on the 2 s setting's throughput.
        let mut thirty = Report {
            label: "thirty".into(),
            provider_latency_ms: Some(30_000),
            rate: 1000.0,
            ..Default::default()
        };
        thirty.e2e.p99_ms = 33_000.0;
        thirty.e2e.exec_per_sec = 300.0;
        thirty.processes.push(ProcessStats {
            name: "worker".into(),
            pid: 1,
            peak_rss_kb: Some(900 * 1024),
            cpu_secs: None,
            cpu_secs_submit: None,
        });
        let s = render_summary(&[thirty]);
        let line_of = |what: &str| s.lines().find(|l| l.contains(what)).map(str::trim_end);
        assert!(
            line_of("e2e p99 33000 ms").unwrap().ends_with("NOT met"),
            "{s}"
        );
        assert!(line_of("worker peak RSS").unwrap().ends_with(" met"), "{s}");
        assert!(line_of(">= 1750").is_none(), "{s}");
    }
}

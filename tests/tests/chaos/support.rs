//! What the chaos tests share: serialisation of the disruptive tests,
//! requests the harness has no method for, row look-ups, and control of
//! the real services (a RabbitMQ vhost that can be cut off, the local
//! PostgreSQL cluster) with guards that restore them even when a test fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use llmq_tests::TestApp;
use reqwest::Response;
use serde_json::{json, Value};
use tokio::sync::{watch, RwLock, RwLockReadGuard, RwLockWriteGuard};
use uuid::Uuid;

// ---- serialisation ---------------------------------------------------------

/// Tests of this binary run on parallel threads: the disruptive ones hold
/// it exclusively, the others shared.
static LOCK: RwLock<()> = RwLock::const_new(());

/// Held by a disruptive test: no other test of this binary runs meanwhile,
/// nor a disruptive test of another chaos process on this machine.
pub struct Exclusive {
    _guard: RwLockWriteGuard<'static, ()>,
    _machine: Option<std::os::unix::net::UnixListener>,
}

pub async fn exclusive() -> Exclusive {
    let guard = LOCK.write().await;
    let machine = machine_lock().await;
    Exclusive {
        _guard: guard,
        _machine: machine,
    }
}

/// Held by a test that only needs no disruptive test to run beside it.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    LOCK.read().await
}

/// A lock across processes (two `cargo test` runs on one machine): an
/// abstract Unix socket name, released by the kernel when the holder dies.
async fn machine_lock() -> Option<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let addr = SocketAddr::from_abstract_name(b"llmq-chaos-tests.lock").ok()?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut told = false;
    loop {
        match UnixListener::bind_addr(&addr) {
            Ok(listener) => return Some(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                if !told {
                    eprintln!("chaos: another process runs a disruptive chaos test; waiting");
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                eprintln!("chaos: running without the machine-wide lock: {e}");
                return None;
            }
        }
    }
}

// ---- requests --------------------------------------------------------------

/// A unique token for a test's texts, so fake-provider calls can be
/// attributed to executions.
pub fn unique() -> String {
    Uuid::now_v7().simple().to_string()
}

/// The body of a `summarize` execution over `text`.
pub fn summarize(text: &str) -> Value {
    json!({"prompt": "summarize", "input": {"text": text}})
}

/// `POST /v1/executions/{id}/cancel`.
pub async fn cancel(app: &TestApp, id: &str) -> Response {
    app.client
        .post(app.url(&format!("/v1/executions/{id}/cancel")))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .expect("POST cancel")
}

/// `POST /v1/executions` with an `Idempotency-Key`.
pub async fn submit_with_key(app: &TestApp, body: &Value, key: &str) -> Response {
    app.client
        .post(app.url("/v1/executions"))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("POST /v1/executions")
}

/// The id of an execution resource.
pub fn id_of(execution: &Value) -> String {
    execution["id"]
        .as_str()
        .expect("an execution id")
        .to_string()
}

/// Messages waiting in the test's dead-letter queue.
pub async fn dead_letters(app: &TestApp) -> u32 {
    app.ready_messages(&app.topology.dead_letter_queue).await
}

/// Waits up to `timeout` for the dead-letter queue to hold `n` messages;
/// returns how many it holds then.
pub async fn wait_for_dead_letters(app: &TestApp, n: u32, timeout: Duration) -> u32 {
    app.eventually(timeout, || async { dead_letters(app).await >= n })
        .await;
    dead_letters(app).await
}

/// The sum of every series of a Prometheus metric in `/metrics` text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The API process's `/metrics` (the in-process worker shares its recorder).
pub async fn metrics_text(app: &TestApp) -> String {
    app.metrics().await.text().await.unwrap_or_default()
}

// ---- rows ------------------------------------------------------------------

/// One row of `execution_steps`.
#[derive(Clone, Debug)]
pub struct StepRow {
    pub execution_id: Uuid,
    pub seq: i32,
    pub kind: String,
    pub status: String,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error_code: Option<String>,
}

const STEP_COLUMNS: &str =
    "SELECT execution_id, seq, kind, status, attempt, started_at, finished_at, error_code FROM execution_steps";

fn step_row(r: &tokio_postgres::Row) -> StepRow {
    StepRow {
        execution_id: r.get(0),
        seq: r.get(1),
        kind: r.get(2),
        status: r.get(3),
        attempt: r.get(4),
        started_at: r.get(5),
        finished_at: r.get(6),
        error_code: r.get(7),
    }
}

/// Every step of the test's database, by execution then seq.
pub async fn all_steps(app: &TestApp) -> Vec<StepRow> {
    app.db()
        .await
        .query(&format!("{STEP_COLUMNS} ORDER BY execution_id, seq"), &[])
        .await
        .expect("reading steps")
        .iter()
        .map(step_row)
        .collect()
}

/// The steps of one execution, in order.
pub async fn steps_of(app: &TestApp, id: &str) -> Vec<StepRow> {
    let id = Uuid::parse_str(id).expect("a UUID");
    app.db()
        .await
        .query(
            &format!("{STEP_COLUMNS} WHERE execution_id = $1 ORDER BY seq"),
            &[&id],
        )
        .await
        .expect("reading steps")
        .iter()
        .map(step_row)
        .collect()
}

/// The `generate` steps of one execution, in order.
pub async fn generate_steps(app: &TestApp, id: &str) -> Vec<StepRow> {
    steps_of(app, id)
        .await
        .into_iter()
        .filter(|s| s.kind == "generate")
        .collect()
}

/// `(status, count)` of every execution of the test's database.
pub async fn status_counts(app: &TestApp) -> BTreeMap<String, i64> {
    app.db()
        .await
        .query(
            "SELECT status, count(*) FROM executions GROUP BY status",
            &[],
        )
        .await
        .expect("counting executions")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Executions neither queued nor running.
pub fn settled(counts: &BTreeMap<String, i64>) -> bool {
    counts
        .iter()
        .all(|(status, n)| *n == 0 || !matches!(status.as_str(), "queued" | "running"))
}

/// Polls the database until no execution is queued or running (and at
/// least `expected` exist); returns the last counts either way.
pub async fn wait_until_settled(
    app: &TestApp,
    expected: usize,
    timeout: Duration,
) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = status_counts(app).await;
        let total: i64 = counts.values().sum();
        if (settled(&counts) && total >= expected as i64) || Instant::now() >= deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Milliseconds since the Unix epoch, as the fake provider records them.
pub fn epoch_ms(t: DateTime<Utc>) -> i128 {
    i128::from(t.timestamp_millis())
}

// ---- commands --------------------------------------------------------------

/// `name` on the PATH or in the usual sbin directories.
pub fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs a command to completion and returns its output. Output goes
/// through a file, not a pipe: a daemon the command starts (pg_ctlcluster
/// start) must not keep our pipe open.
pub fn run_sync(program: &Path, args: &[&str]) -> Result<String, String> {
    let out_path = std::env::temp_dir().join(format!("llmq-chaos-cmd-{}.log", unique()));
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status();
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let described = format!("{} {}", program.display(), args.join(" "));
    match status {
        Ok(s) if s.success() => Ok(text),
        Ok(s) => Err(format!("{described} exited with {s}: {text}")),
        Err(e) => Err(format!("{described} did not start: {e}")),
    }
}

/// `run_sync` off the async threads.
pub async fn run(program: &Path, args: &[&str]) -> Result<String, String> {
    let program = program.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_sync(&program, &args)
    })
    .await
    .map_err(|e| e.to_string())?
}

fn is_local(host: &str) -> bool {
    matches!(host, "" | "localhost" | "127.0.0.1" | "::1" | "[::1]")
}

/// `(scheme://userinfo@host:port, user, host)` of a URL.
fn split_url(url: &str) -> Option<(String, String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (u, h),
        None => ("", authority),
    };
    let user = userinfo.split(':').next().unwrap_or_default().to_string();
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) if !hostport.ends_with(']') => h,
        _ => hostport,
    };
    Some((format!("{scheme}://{authority}"), user, host.to_string()))
}

// ---- RabbitMQ --------------------------------------------------------------

/// A RabbitMQ vhost of one test: its traffic alone can be cut off (the
/// permissions of the test's user are cleared and its connections closed)
/// and restored. Deleted, with its queues, when dropped.
pub struct Vhost {
    pub name: String,
    /// The test's AMQP URL, pointing at the vhost.
    pub url: String,
    user: String,
    ctl: PathBuf,
}

impl Vhost {
    /// None when the broker is not local or `rabbitmqctl` is missing:
    /// the skip is recorded (`llmq_tests::skip`) and the test returns.
    pub async fn create() -> Option<Self> {
        let base_url = llmq_tests::amqp::amqp_url();
        let local = split_url(&base_url).filter(|(_, _, host)| is_local(host));
        let (Some((base, user, _)), Some(ctl)) = (local, program("rabbitmqctl")) else {
            llmq_tests::skip(&format!(
                "needs a local RabbitMQ and rabbitmqctl ({base_url})"
            ));
            return None;
        };
        let name = format!("llmq-chaos-{}", unique());
        let vhost = Self {
            url: format!("{base}/{name}"),
            name,
            user,
            ctl,
        };
        vhost
            .ctl(&["add_vhost", &vhost.name])
            .await
            .expect("rabbitmqctl add_vhost");
        vhost.restore().await;
        Some(vhost)
    }

    async fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-q", "-t", "30"];
        all.extend_from_slice(args);
        run(&self.ctl, &all).await
    }

    /// The outage: the user may no longer open the vhost, and every open
    /// connection to it is closed.
    pub async fn cut_off(&self) {
        self.ctl(&["clear_permissions", "-p", &self.name, &self.user])
            .await
            .expect("rabbitmqctl clear_permissions");
        self.ctl(&[
            "close_all_connections",
            "-p",
            &self.name,
            "chaos test: broker outage",
        ])
        .await
        .expect("rabbitmqctl close_all_connections");
    }

    /// The end of the outage.
    pub async fn restore(&self) {
        self.ctl(&[
            "set_permissions",
            "-p",
            &self.name,
            &self.user,
            ".*",
            ".*",
            ".*",
        ])
        .await
        .expect("rabbitmqctl set_permissions");
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if let Err(e) = run_sync(&self.ctl, &["-q", "-t", "30", "delete_vhost", &self.name]) {
            eprintln!("chaos: vhost {} not deleted: {e}", self.name);
        }
    }
}

// ---- PostgreSQL ------------------------------------------------------------

/// The machine's PostgreSQL cluster (Debian's pg_ctlcluster), for stopping
/// and starting it. Dropping it starts the cluster again if it is down, so
/// a failing test never leaves the machine without its database.
pub struct PostgresCluster {
    ctl: PathBuf,
    version: String,
    cluster: String,
}

impl PostgresCluster {
    /// None when the database is not local or the cluster cannot be
    /// managed from here: the skip is recorded and the test returns.
    pub fn local() -> Option<Self> {
        let admin = llmq_tests::database::admin_url();
        // An unparseable URL is not taken for a local one.
        let host = split_url(&admin).map_or_else(|| "?".into(), |(_, _, host)| host);
        let ctl = program("pg_ctlcluster");
        let version = std::fs::read_dir("/etc/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|v| Some((v.parse::<f64>().ok()?, v)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, v)| v);
        match (ctl, version) {
            (Some(ctl), Some(version)) if is_local(&host) => Some(Self {
                ctl,
                version,
                cluster: std::env::var("LLMQ_PG_CLUSTER").unwrap_or_else(|_| "main".into()),
            }),
            _ => {
                llmq_tests::skip(&format!(
                    "needs a local PostgreSQL managed by pg_ctlcluster ({})",
                    llmq_tests::database::admin_url()
                ));
                None
            }
        }
    }

    fn args<'a>(&'a self, action: &'a str) -> [&'a str; 4] {
        [
            "--skip-systemctl-redirect",
            &self.version,
            &self.cluster,
            action,
        ]
    }

    pub async fn stop(&self) {
        run(&self.ctl, &self.args("stop"))
            .await
            .expect("stopping PostgreSQL");
    }

    pub async fn start(&self) {
        run(&self.ctl, &self.args("start"))
            .await
            .expect("starting PostgreSQL");
    }

    /// pg_ctlcluster status: 0 when running.
    pub fn is_running(&self) -> bool {
        run_sync(&self.ctl, &self.args("status")).is_ok()
    }

    /// Waits (up to `timeout`) until no other process's test database is
    /// in use, so that a restart does not break tests running elsewhere on
    /// this machine; returns how many were still in use.
    pub async fn wait_until_alone(&self, mine: &str, timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        let mut told = false;
        loop {
            let busy = async {
                let admin = llmq_tests::database::connect(&llmq_tests::database::admin_url())
                    .await
                    .ok()?;
                let row = admin
                    .query_one(
                        "SELECT count(DISTINCT datname) FROM pg_stat_activity \
                         WHERE datname LIKE 'llmq\\_test\\_%' \
                           AND datname NOT LIKE 'llmq\\_test\\_template\\_%' AND datname <> $1",
                        &[&mine],
                    )
                    .await
                    .ok()?;
                Some(row.get::<_, i64>(0))
            }
            .await
            .unwrap_or(0);
            if busy == 0 || Instant::now() >= deadline {
                return busy;
            }
            if !told {
                eprintln!("chaos: {busy} other test database(s) in use; waiting before restarting PostgreSQL");
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        if !self.is_running() {
            eprintln!("chaos: PostgreSQL is down; starting it again");
            if let Err(e) = run_sync(&self.ctl, &self.args("start")) {
                eprintln!("chaos: could not start PostgreSQL: {e}");
            }
        }
    }
}

// ---- a TCP proxy -------------------------------------------------------------

/// A TCP proxy in front of a server (PostgreSQL) that can fail the ways a
/// network does, for the clients sent through it alone: cut (every
/// connection closed, new ones refused) or frozen (connections stay open
/// but nothing goes through, as when packets are dropped, until thawed).
pub struct TcpProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let (frozen, _) = watch::channel(false);
        let task = {
            let (up, cuts, frozen) = (up.clone(), cuts.clone(), frozen.clone());
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection close
                    }
                    let mut cut = cuts.subscribe();
                    let (to_server, to_client) = (frozen.subscribe(), frozen.subscribe());
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        let (client_read, client_write) = inbound.into_split();
                        let (server_read, server_write) = outbound.into_split();
                        tokio::select! {
                            _ = pump(client_read, server_write, to_server) => {}
                            _ = pump(server_read, client_write, to_client) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            })
        };
        Self {
            port,
            up,
            cuts,
            frozen,
            task,
        }
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut_off(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Accepts connections again (after `cut_off`).
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Stops moving bytes, in both directions, without closing anything.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Delivers what was held back and moves bytes again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// `host:port` of a URL (scheme://userinfo@host:port/path).
    pub fn target_of(url: &str) -> String {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        authority
            .rsplit_once('@')
            .map_or(authority, |(_, h)| h)
            .to_string()
    }

    /// `url` sent through the proxy.
    pub fn url_for(&self, url: &str) -> String {
        proxied_url(url, self.port)
    }
}

/// `url` (scheme://userinfo@host:port/path) with its host and port
/// replaced by the proxy's.
pub fn proxied_url(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let userinfo = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{userinfo}127.0.0.1:{port}{path}")
}

/// Copies bytes one way, holding them while the proxy is frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while *frozen.borrow_and_update() {
            if frozen.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut_off();
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::{metric_sum, split_url};

    #[test]
    fn urls_split_into_base_user_and_host() {
        assert_eq!(
            split_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            Some((
                "amqp://guest:guest@127.0.0.1:5672".into(),
                "guest".into(),
                "127.0.0.1".into()
            ))
        );
        assert_eq!(
            split_url("postgres://postgres@localhost/postgres"),
            Some((
                "postgres://postgres@localhost".into(),
                "postgres".into(),
                "localhost".into()
            ))
        );
    }

    #[test]
    fn metric_sums_add_up_every_series() {
        let text = "# HELP x\nllmq_a_total{k=\"1\"} 2\nllmq_a_total{k=\"2\"} 3\nllmq_ab_total 7\nllmq_a_total 1\n";
        assert_eq!(metric_sum(text, "llmq_a_total"), 6.0);
    }
}

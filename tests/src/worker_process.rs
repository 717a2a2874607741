//! The real `llmq-worker` binary as a child process, for tests about
//! signals and process death. It gets the test's settings through the same
//! environment variables an operator would set, and writes its logs to a
//! file whose path failing assertions can print.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use llmq_shared::Settings;
use tokio::process::{Child, Command};

/// A running `llmq-worker`. Dropping it kills the process, and removes its
/// log unless the test is failing.
pub struct WorkerProcess {
    child: Child,
    pid: u32,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
}

/// `target/<profile>/llmq-worker`, beside the test executable's `deps/`.
pub fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(format!("llmq-worker{}", std::env::consts::EXE_SUFFIX))
}

/// The environment that makes the binary load exactly `settings`.
pub fn worker_env(settings: &Settings) -> Vec<(String, String)> {
    let w = &settings.worker;
    let mut env = vec![
        ("DATABASE_URL", settings.database_url.clone()),
        ("AMQP_URL", settings.amqp_url.clone()),
        ("LLMQ_QUEUE_PREFIX", settings.queue_prefix.clone()),
        ("REDIS_URL", settings.redis_url.clone()),
        ("LLMQ_REDIS_PREFIX", settings.redis_prefix.clone()),
        ("LLMQ_REDIS_POOL_SIZE", settings.redis_pool_size.to_string()),
        (
            "LLMQ_REDIS_TIMEOUT_MS",
            settings.redis_timeout_ms.to_string(),
        ),
        (
            "LLMQ_PROMPTS_DIR",
            settings.prompts_dir.display().to_string(),
        ),
        ("LLMQ_TOOLS_DIR", settings.tools_dir.display().to_string()),
        (
            "LLMQ_TOOLS__MAX_PARALLEL",
            settings.tools.max_parallel.to_string(),
        ),
        ("LLMQ_DB_POOL_SIZE", settings.db_pool_size.to_string()),
        (
            "LLMQ_REPUBLISH_AFTER_SECS",
            settings.republish_after().as_secs().to_string(),
        ),
        ("LLMQ_WORKER__CONCURRENCY", w.concurrency.to_string()),
        ("LLMQ_WORKER__LEASE_SECS", w.lease_secs.to_string()),
        (
            "LLMQ_WORKER__SHUTDOWN_GRACE_SECS",
            w.shutdown_grace_secs.to_string(),
        ),
        (
            "LLMQ_WORKER__RELAY_INTERVAL_MS",
            w.relay_interval_ms.to_string(),
        ),
        ("LLMQ_WORKER__ROLES", format!("[{}]", w.roles.join(","))),
        ("LLMQ_WORKER__METRICS_ADDR", w.metrics_addr.clone()),
        ("LLMQ_WORKER__MAX_ATTEMPTS", w.max_attempts.to_string()),
        ("LLMQ_WORKER__RETRY_BASE_MS", w.retry_base_ms.to_string()),
        ("LLMQ_WORKER__RETRY_MAX_MS", w.retry_max_ms.to_string()),
        (
            "LLMQ_WORKER__VALIDATE_DELAY_MS",
            w.validate_delay_ms.to_string(),
        ),
        (
            "LLMQ_WORKER__TENANT_CONCURRENCY",
            w.tenant_concurrency.to_string(),
        ),
        (
            "LLMQ_WORKER__TENANT_DEFER_MS",
            w.tenant_defer_ms.to_string(),
        ),
        (
            "LLMQ_PROVIDER__BASE_URL",
            settings.provider.base_url.clone(),
        ),
        ("LLMQ_PROVIDER__API_KEY", settings.provider.api_key.clone()),
        (
            "LLMQ_PROVIDER__TIMEOUT_SECS",
            settings.provider.timeout_secs.to_string(),
        ),
        (
            "LLMQ_WEBHOOKS__ENCRYPTION_KEY",
            settings.webhooks.encryption_key.clone(),
        ),
        (
            "LLMQ_WEBHOOKS__ALLOW_HTTP",
            settings.webhooks.allow_http.to_string(),
        ),
        (
            "LLMQ_WEBHOOKS__ALLOWED_HOSTS",
            format!(
                "[{}]",
                settings
                    .webhooks
                    .allowed_hosts
                    .iter()
                    .map(|h| format!("{h:?}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        (
            "LLMQ_WEBHOOKS__RETRY_SCHEDULE_MS",
            format!(
                "[{}]",
                settings
                    .webhooks
                    .retry_schedule_ms
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        (
            "LLMQ_WEBHOOKS__POLL_INTERVAL_MS",
            settings.webhooks.poll_interval_ms.to_string(),
        ),
        // No config file: only what the test set applies.
        ("LLMQ_CONFIG", "/nonexistent/llmq-tests.toml".to_string()),
    ];
    // Each model's settings that are set, one variable per field.
    let mut models = Vec::new();
    for (name, model) in &settings.models {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(model) else {
            continue;
        };
        for (field, value) in fields {
            let value = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            models.push((format!("LLMQ_MODELS__{name}__{field}"), value));
        }
    }
    // The worker's own lifecycle lines (started, draining, stopped) are
    // logged whatever level the suite runs at (`make test` passes warn):
    // tests read them from the log file.
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    env.push(("RUST_LOG", format!("{level},llmq_worker=info")));
    env.into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(models)
        .collect()
}

impl WorkerProcess {
    /// Starts the binary. Panics with instructions when it was not built:
    /// `cargo test` does not build other packages' binaries.
    pub fn spawn(settings: &Settings, name: &str) -> Self {
        let binary = worker_binary();
        assert!(
            binary.is_file(),
            "{} not found: build the binaries first (`cargo build --bins`, or `make test`)",
            binary.display()
        );
        let log_dir = std::env::temp_dir().join("llmq-tests");
        std::fs::create_dir_all(&log_dir).expect("creating the log directory");
        let log_path = log_dir.join(format!("{}-{name}.log", settings.queue_prefix));
        let log = std::fs::File::create(&log_path).expect("creating the worker log");
        let mut cmd = Command::new(&binary);
        // Nothing from the developer's environment may redirect the worker.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().to_string();
            if key.starts_with("LLMQ_")
                || key == "DATABASE_URL"
                || key == "AMQP_URL"
                || key == "REDIS_URL"
            {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(worker_env(settings))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let pid = child.id().expect("a just-started child has a pid");
        Self {
            child,
            pid,
            log_path,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Asks for a graceful shutdown, as an orchestrator would.
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid);
    }

    /// Kills the process without warning (SIGKILL) and reaps it.
    pub async fn sigkill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.start_kill();
            self.exited = self.child.wait().await.ok();
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if it did not.
    pub async fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = tokio::time::timeout(timeout, self.child.wait())
                .await
                .ok()
                .and_then(Result::ok);
        }
        self.exited
    }

    /// Where the process writes its logs.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // `kill_on_drop` ends the process; the log is kept for a failing test.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

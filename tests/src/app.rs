//! `TestApp`: one isolated llmq per test — its own database, queue prefix,
//! Redis key prefix, fake model provider, the API in-process on a free port and (by default)
//! one in-process worker — plus a typed method per endpoint and the
//! Postgres/RabbitMQ look-ups assertions need.
//!
//! End a test with `app.cleanup().await`: it stops everything and drops the
//! database, queues and Redis keys. A test that panics before it leaves them behind;
//! the database sweep removes such databases an hour later and leftover
//! queues are harmless (their names are unique).

use std::path::PathBuf;
use std::time::Duration;

use deadpool_postgres::Pool;
use llmq_api::Application;
use llmq_fake_provider::{FakeConfig, FakeProvider};
use llmq_shared::queue::Topology;
use llmq_shared::Settings;
use reqwest::{Response, StatusCode};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::amqp;
use crate::database::TestDatabase;
use crate::worker_process::WorkerProcess;

type Configure = Box<dyn FnOnce(&mut Settings) + Send>;

/// How a `TestApp` is started. `TestApp::builder()` makes one.
pub struct TestAppBuilder {
    fake_latency_ms: u64,
    worker: bool,
    configure: Vec<Configure>,
}

impl TestAppBuilder {
    /// Latency of every fake provider answer (default 0).
    pub fn fake_latency_ms(mut self, ms: u64) -> Self {
        self.fake_latency_ms = ms;
        self
    }

    /// No in-process worker: executions stay queued unless the test starts
    /// one (`start_worker`, `spawn_worker_process`).
    pub fn without_worker(mut self) -> Self {
        self.worker = false;
        self
    }

    /// Adjusts the settings before anything starts.
    pub fn configure(mut self, f: impl FnOnce(&mut Settings) + Send + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    pub async fn spawn(self) -> TestApp {
        crate::init_tracing();
        let database = TestDatabase::create()
            .await
            .expect("creating the test database");
        let fake = FakeProvider::start(FakeConfig {
            latency_ms: self.fake_latency_ms,
            ..FakeConfig::default()
        })
        .await
        .expect("starting the fake provider");
        let mut settings = test_settings(&database.url, &fake.base_url());
        for f in self.configure {
            f(&mut settings);
        }

        let cancel = CancellationToken::new();
        let api = Application::build(settings.clone(), cancel.child_token())
            .await
            .expect("building the API");
        let address = format!("http://127.0.0.1:{}", api.port());
        let ops_address = match api.ops_port() {
            Some(port) => format!("http://127.0.0.1:{port}"),
            None => address.clone(),
        };
        let api_task = tokio::spawn(async move {
            if let Err(e) = api.run_until_stopped().await {
                tracing::error!(error = %e, "the API stopped with an error");
            }
        });
        let pool = llmq_shared::db::create_pool(&database.url, 2).expect("creating the test pool");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("building the HTTP client");
        let mut app = TestApp {
            address,
            ops_address,
            api_key: settings.api.api_key.clone(),
            client,
            pool,
            topology: Topology::new(&settings.queue_prefix),
            settings,
            fake,
            database,
            cancel,
            api_task: Some(api_task),
            worker: None,
        };
        app.wait_until_ready().await;
        if self.worker {
            app.start_worker().await;
        }
        app
    }
}

/// Settings of an isolated test deployment: small pools, short timers.
pub fn test_settings(database_url: &str, provider_url: &str) -> Settings {
    let mut s = Settings {
        database_url: database_url.to_string(),
        amqp_url: amqp::amqp_url(),
        queue_prefix: format!("test.{}", Uuid::now_v7().simple()),
        redis_url: crate::redis::redis_url(),
        redis_prefix: format!("test.{}:", Uuid::now_v7().simple()),
        prompts_dir: prompts_dir(),
        db_pool_size: 8,
        ..Settings::default()
    };
    s.api.addr = "127.0.0.1:0".into();
    s.api.api_key = format!("test-key-{}", Uuid::now_v7().simple());
    s.api.max_wait_secs = 20;
    s.api.http_workers = 1;
    s.republish_after_secs = 2;
    s.worker.concurrency = 8;
    s.worker.lease_secs = 10;
    s.worker.shutdown_grace_secs = 10;
    s.worker.relay_interval_ms = 100;
    // Empty: no metrics listener, whose fixed port tests would fight over.
    s.worker.metrics_addr = String::new();
    s.worker.retry_base_ms = 50;
    s.worker.retry_max_ms = 1000;
    s.provider.base_url = provider_url.to_string();
    s.provider.api_key = "fake-provider-key".into();
    s.provider.timeout_secs = 10;
    s
}

/// The repository's `prompts/`.
pub fn prompts_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../prompts"))
}

/// An in-process worker and the token that stops it.
struct InProcessWorker {
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

pub struct TestApp {
    /// `http://127.0.0.1:<port>` of the API.
    pub address: String,
    /// Where health, readiness, metrics and the document are served: the
    /// API's own address unless `api.ops_addr` is set.
    pub ops_address: String,
    pub api_key: String,
    pub client: reqwest::Client,
    /// A pool on this test's database, for assertions on rows.
    pub pool: Pool,
    pub settings: Settings,
    pub topology: Topology,
    pub fake: FakeProvider,
    pub database: TestDatabase,
    cancel: CancellationToken,
    api_task: Option<JoinHandle<()>>,
    worker: Option<InProcessWorker>,
}

impl TestApp {
    /// API, fake provider and one in-process worker.
    pub async fn spawn() -> TestApp {
        Self::builder().spawn().await
    }

    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            fake_latency_ms: 0,
            worker: true,
            configure: Vec::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// The URL of an operations route (health, readiness, metrics, document).
    pub fn ops_url(&self, path: &str) -> String {
        format!("{}{path}", self.ops_address)
    }

    // ---- endpoints -------------------------------------------------------

    /// `POST /v1/executions` with a JSON body.
    pub async fn submit(&self, body: &Value) -> Response {
        self.client
            .post(self.url("/v1/executions"))
            .bearer_auth(&self.api_key)
            .json(body)
            .send()
            .await
            .expect("POST /v1/executions")
    }

    /// An authorized request with a JSON body to any route (the webhook
    /// routes use these: `POST/PATCH /v1/webhook-endpoints…`).
    pub async fn send_json(&self, method: reqwest::Method, path: &str, body: &Value) -> Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.api_key)
            .json(body)
            .send()
            .await
            .expect("request to the API")
    }

    /// An authorized request without a body (`POST …/rotate-secret`, `DELETE`).
    pub async fn send_empty(&self, method: reqwest::Method, path: &str) -> Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .expect("request to the API")
    }

    /// `POST /v1/executions` with an arbitrary body.
    pub async fn submit_with_raw_body(
        &self,
        body: impl Into<Vec<u8>>,
        content_type: &str,
    ) -> Response {
        self.client
            .post(self.url("/v1/executions"))
            .bearer_auth(&self.api_key)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.into())
            .send()
            .await
            .expect("POST /v1/executions")
    }

    /// Submits and returns the accepted execution, asserting the 202.
    pub async fn submit_accepted(&self, body: &Value) -> Value {
        let response = self.submit(body).await;
        let status = response.status();
        let text = response.text().await.expect("reading the submit answer");
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "submit was not accepted: {text}"
        );
        serde_json::from_str(&text).expect("submit answered JSON")
    }

    /// Submits `summarize` over `text` and returns the new id.
    pub async fn submit_summary(&self, text: &str) -> String {
        let body = serde_json::json!({"prompt": "summarize", "input": {"text": text}});
        self.submit_accepted(&body).await["id"]
            .as_str()
            .expect("an id")
            .to_string()
    }

    /// `GET /v1/executions/{id}/events` with an optional `Last-Event-ID`.
    pub async fn execution_events(&self, id: &str, last_event_id: Option<&str>) -> Response {
        let mut request = self
            .client
            .get(self.url(&format!("/v1/executions/{id}/events")))
            .bearer_auth(&self.api_key);
        if let Some(last) = last_event_id {
            request = request.header("Last-Event-ID", last);
        }
        request
            .send()
            .await
            .expect("GET /v1/executions/{id}/events")
    }

    /// The event stream of execution `id` after `last_event_id`.
    pub async fn event_stream(&self, id: &str, last_event_id: Option<&str>) -> crate::SseClient {
        crate::SseClient::new(self.execution_events(id, last_event_id).await)
    }

    /// `GET /v1/executions/{id}`.
    pub async fn get_execution(&self, id: &str) -> Response {
        self.get_authorized(&format!("/v1/executions/{id}")).await
    }

    /// `GET /v1/executions/{id}?wait={secs}` (long poll).
    pub async fn get_execution_wait(&self, id: &str, secs: u64) -> Response {
        self.get_authorized(&format!("/v1/executions/{id}?wait={secs}"))
            .await
    }

    /// `GET /v1/executions/{id}/steps`.
    pub async fn steps(&self, id: &str) -> Response {
        self.get_authorized(&format!("/v1/executions/{id}/steps"))
            .await
    }

    /// `GET /openapi.json`.
    pub async fn openapi(&self) -> Response {
        self.get_ops("/openapi.json").await
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Response {
        self.get_ops("/healthz").await
    }

    /// `GET /readyz`.
    pub async fn readyz(&self) -> Response {
        self.get_ops("/readyz").await
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> Response {
        self.get_ops("/metrics").await
    }

    /// A GET with the test's API key.
    pub async fn get_authorized(&self, path: &str) -> Response {
        self.get_with_key(path, Some(&self.api_key)).await
    }

    /// A GET of an operations route, without a key.
    pub async fn get_ops(&self, path: &str) -> Response {
        self.client
            .get(self.ops_url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub async fn get_unauthenticated(&self, path: &str) -> Response {
        self.get_with_key(path, None).await
    }

    /// A GET with the given bearer token, or none.
    pub async fn get_with_key(&self, path: &str, key: Option<&str>) -> Response {
        let mut request = self.client.get(self.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    // ---- waiting ---------------------------------------------------------

    /// Long-polls until the execution is terminal; panics after `timeout`.
    pub async fn wait_until_terminal(&self, id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let wait = left
                .as_secs()
                .clamp(1, self.settings.api.max_wait_secs.max(1));
            let response = self.get_execution_wait(id, wait).await;
            assert_eq!(response.status(), StatusCode::OK, "GET execution {id}");
            let execution: Value = response.json().await.expect("execution JSON");
            if is_terminal(&execution) {
                return execution;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "execution {id} not terminal after {timeout:?}: {execution:#}"
            );
        }
    }

    /// Waits until every id is terminal and returns them in order.
    pub async fn wait_all_terminal(&self, ids: &[String], timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut done = Vec::with_capacity(ids.len());
        for id in ids {
            let left = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_secs(1));
            done.push(self.wait_until_terminal(id, left).await);
        }
        done
    }

    /// Polls `condition` every 50 ms until it holds; false after `timeout`.
    pub async fn eventually<F, Fut>(&self, timeout: Duration, mut condition: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if condition().await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_until_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let response = self.client.get(self.ops_url("/readyz")).send().await;
            if response
                .as_ref()
                .is_ok_and(|r| r.status() == StatusCode::OK)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the API did not become ready: {response:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ---- Postgres --------------------------------------------------------

    pub async fn db(&self) -> deadpool_postgres::Object {
        self.pool
            .get()
            .await
            .expect("a connection to the test database")
    }

    /// The execution's row, or `None`.
    pub async fn execution_row(&self, id: &str) -> Option<tokio_postgres::Row> {
        let id = Uuid::parse_str(id).expect("a UUID");
        self.db()
            .await
            .query_opt("SELECT * FROM executions WHERE id = $1", &[&id])
            .await
            .expect("reading the execution row")
    }

    /// `(seq, kind, status)` of the execution's step rows, in order.
    pub async fn step_rows(&self, id: &str) -> Vec<(i32, String, String)> {
        let id = Uuid::parse_str(id).expect("a UUID");
        self.db()
            .await
            .query("SELECT seq, kind, status FROM execution_steps WHERE execution_id = $1 ORDER BY seq", &[&id])
            .await
            .expect("reading step rows")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// How many executions have `status`.
    pub async fn count_with_status(&self, status: &str) -> i64 {
        self.db()
            .await
            .query_one(
                "SELECT count(*) FROM executions WHERE status = $1",
                &[&status],
            )
            .await
            .expect("counting executions")
            .get(0)
    }

    // ---- RabbitMQ --------------------------------------------------------

    /// Publishes an execution message for `id` as a duplicate delivery would.
    pub async fn publish_execution_message(&self, id: &str) {
        let body = serde_json::to_vec(&serde_json::json!({ "id": id })).expect("serialising");
        amqp::publish_confirmed(
            &self.settings.amqp_url,
            &self.topology.executions_exchange,
            llmq_shared::queue::EXECUTION_ROUTING_KEY,
            &body,
        )
        .await
        .expect("publishing an execution message");
    }

    /// Messages ready (not delivered) in one of this test's queues.
    pub async fn ready_messages(&self, queue: &str) -> u32 {
        amqp::ready_messages(&self.settings.amqp_url, queue)
            .await
            .expect("reading the queue depth")
    }

    // ---- workers ---------------------------------------------------------

    /// Starts an in-process worker (if none runs) with the app's settings.
    pub async fn start_worker(&mut self) {
        if self.worker.is_some() {
            return;
        }
        let cancel = self.cancel.child_token();
        let worker = llmq_worker::Worker::build(self.settings.clone(), cancel.clone())
            .await
            .expect("building the worker");
        let task = tokio::spawn(worker.run_until_stopped());
        self.worker = Some(InProcessWorker { cancel, task });
    }

    /// Stops the in-process worker gracefully and returns how it ended.
    pub async fn stop_worker(&mut self) -> anyhow::Result<()> {
        let Some(worker) = self.worker.take() else {
            return Ok(());
        };
        worker.cancel.cancel();
        let grace = Duration::from_secs(self.settings.worker.shutdown_grace_secs + 10);
        match tokio::time::timeout(grace, worker.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(anyhow::anyhow!("worker task panicked: {join}")),
            Err(_) => Err(anyhow::anyhow!("worker did not stop within {grace:?}")),
        }
    }

    /// Starts the real `llmq-worker` binary with this app's settings.
    pub fn spawn_worker_process(&self, name: &str) -> WorkerProcess {
        WorkerProcess::spawn(&self.settings, name)
    }

    /// Stops the API (and an in-process worker, whose token is a child of
    /// the API's) as SIGTERM would, and waits until the API has shut down:
    /// its publish pipeline drained, its broker sessions closed.
    pub async fn stop_api(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.api_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }

    // ---- teardown --------------------------------------------------------

    /// Stops the worker and the API, then drops the database, queues and
    /// Redis keys.
    pub async fn cleanup(mut self) {
        if let Err(e) = self.stop_worker().await {
            tracing::warn!(error = %e, "worker stopped badly");
        }
        self.cancel.cancel();
        if let Some(task) = self.api_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        self.pool.close();
        if let Err(e) = self.database.drop_database().await {
            tracing::warn!(error = %e, "test database not dropped");
        }
        amqp::delete_topology(&self.settings.amqp_url, &self.settings.queue_prefix).await;
        crate::redis::delete_keys(&self.settings.redis_url, &self.settings.redis_prefix).await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Without cleanup (a failed test): stop what still listens.
        self.cancel.cancel();
    }
}

/// The execution resource's status is final.
pub fn is_terminal(execution: &Value) -> bool {
    matches!(
        execution["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// Asserts the response is `status` with the error shape of docs/api.md and
/// `code`; returns the `error` object.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    let actual = response.status();
    let text = response.text().await.expect("reading the error body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let error = &body["error"];
    assert_eq!(error["code"], code, "error code; body: {body:#}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error message missing; body: {body:#}"
    );
    error.clone()
}

//! A fake tool server for tests: a real HTTP server serving any tool at
//! `/tools/<name>` (any method), counting calls per `Idempotency-Key`,
//! recording each call, how many ran at once, and answering as a test
//! scripts it per tool: a latency, or failing statuses for the first calls.
//! Answers `{"tool": name, "arguments": ..., "call": n}` otherwise.
//!
//! Also writes tool definitions pointing at itself into a temporary
//! `tools/` directory (`ToolServer::tools_dir`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context;
use serde_json::{json, Value};

/// One call as it arrived.
#[derive(Clone, Debug)]
pub struct ToolCall {
    pub tool: String,
    pub method: String,
    pub idempotency_key: String,
    /// The header a tool's credential names, if sent (`X-Tool-Key`).
    pub credential: Option<String>,
    /// The JSON body, or the query as an object.
    pub arguments: Value,
}

#[derive(Clone, Debug, Default)]
struct Behaviour {
    latency_ms: u64,
    /// Latencies of the first calls, in order (then `latency_ms`).
    first_latencies: Vec<u64>,
    /// Answer these statuses to the first calls, in order.
    failures: Vec<u16>,
}

#[derive(Default)]
struct State {
    behaviour: Mutex<HashMap<String, Behaviour>>,
    calls: Mutex<Vec<ToolCall>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

pub struct ToolServer {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// A temporary `tools/` directory with the definitions written so far.
    pub tools_dir: PathBuf,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl ToolServer {
    pub async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(State::default());
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/tools/{name}", web::to(serve))
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(("127.0.0.1", 0))
        .context("binding the tool server")?;
        let port = server.addrs().first().context("no address")?.port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        let tools_dir = std::env::temp_dir().join(format!(
            "llmq-tests-tools-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&tools_dir).context("creating the tools directory")?;
        Ok(Self {
            base_url: format!("http://127.0.0.1:{port}"),
            tools_dir,
            state,
            handle,
        })
    }

    /// Writes `tools/<name>.toml` for a tool served here; `extra` is more
    /// TOML of the definition's top level (e.g. `idempotent = true`).
    pub fn define(&self, name: &str, extra: &str) -> &Self {
        let toml = format!(
            r#"description = "The test tool {name}."
{extra}

[endpoint]
method = "POST"
url = "{base}/tools/{name}"

[parameters]
type = "object"
required = ["city"]
additionalProperties = false

[parameters.properties.city]
type = "string"
minLength = 1
"#,
            base = self.base_url
        );
        std::fs::write(self.tools_dir.join(format!("{name}.toml")), toml)
            .expect("writing the tool file");
        self
    }

    /// Answers calls of `name` after `ms`.
    pub fn latency(&self, name: &str, ms: u64) -> &Self {
        self.behave(name, |b| b.latency_ms = ms)
    }

    /// Answers the first calls of `name` after these latencies, in order.
    pub fn latency_first(&self, name: &str, ms: &[u64]) -> &Self {
        self.behave(name, |b| b.first_latencies = ms.to_vec())
    }

    /// Answers the first calls of `name` with `statuses`, in order.
    pub fn fail_first(&self, name: &str, statuses: &[u16]) -> &Self {
        self.behave(name, |b| b.failures = statuses.to_vec())
    }

    fn behave(&self, name: &str, f: impl FnOnce(&mut Behaviour)) -> &Self {
        let mut all = self
            .state
            .behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(all.entry(name.to_string()).or_default());
        self
    }

    pub fn calls(&self) -> Vec<ToolCall> {
        self.state
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Calls received per idempotency key.
    pub fn calls_per_key(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for c in self.calls() {
            *counts.entry(c.idempotency_key).or_insert(0) += 1;
        }
        counts
    }

    /// The most calls that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for ToolServer {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(false).await });
        let _ = std::fs::remove_dir_all(&self.tools_dir);
    }
}

async fn serve(
    state: web::Data<State>,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let name = name.into_inner();
    let header = |h: &str| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let arguments = if body.is_empty() {
        let pairs: HashMap<String, String> =
            web::Query::<HashMap<String, String>>::from_query(req.query_string())
                .map(|q| q.into_inner())
                .unwrap_or_default();
        json!(pairs)
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let n = {
        let mut calls = state.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.push(ToolCall {
            tool: name.clone(),
            method: req.method().to_string(),
            idempotency_key: header("Idempotency-Key").unwrap_or_default(),
            credential: header("X-Tool-Key"),
            arguments: arguments.clone(),
        });
        calls.iter().filter(|c| c.tool == name).count()
    };
    let behaviour = state
        .behaviour
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&name)
        .cloned()
        .unwrap_or_default();
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let latency = behaviour
        .first_latencies
        .get(n - 1)
        .copied()
        .unwrap_or(behaviour.latency_ms);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    if let Some(status) = behaviour.failures.get(n - 1) {
        let status = actix_web::http::StatusCode::from_u16(*status)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
        return HttpResponse::build(status).json(json!({"error": format!("injected {status}")}));
    }
    HttpResponse::Ok().json(json!({"tool": name, "arguments": arguments, "call": n}))
}

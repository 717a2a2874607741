//! `llmq-fake-provider`: an OpenAI-compatible Chat Completions server for tests and benchmarks.
//!
//! It speaks the real wire format (`POST /v1/chat/completions`, streaming included, plus
//! `GET /v1/models`) and injects faults requested by markers in the prompt text:
//!
//! | marker | effect |
//! |---|---|
//! | `[[fault:latency=MS]]` | sleep `MS` ms before answering (overrides the global latency) |
//! | `[[fault:429]]`, `[[fault:429:retry_after=S]]` | 429 `rate_limit_exceeded`, `Retry-After: S` (default 1) |
//! | `[[fault:500]]` | 500 `server_error` |
//! | `[[fault:400]]` | 400 `invalid_request_error` |
//! | `[[fault:hang]]` | never answers (sleeps an hour) |
//! | `[[fault:malformed]]` | 200 `application/json` with a truncated body |
//! | `[[fault:nul]]` | 200, the usual answer with a NUL character (`\u0000`) in its text |
//! | `[[fault:not_json]]` | 200, an answer that is not JSON at all |
//! | `[[fault:wrong_json]]` | 200, the JSON object `{"llmq_fake_unexpected": true}`, which breaks a schema with required or no additional properties |
//!
//! Any marker may end with `:times=N`: only the first `N` requests with the same key (the text
//! of all messages) are affected. For `not_json` and `wrong_json`, `N` counts rounds of a
//! repair conversation instead (1 + the assistant messages in the request): `:times=1` answers
//! the first request badly and its repair well, however often either is retried. Every
//! request's `response_format` and `tool_choice` are kept in the call log ([`CallRecord`]). With `tools` in the request, `[[tool:NAME {json args}]]` in
//! the last user message yields a `tool_calls` answer until a `tool` message follows it (several
//! markers: several calls in one turn); with `[[tools:endless]]` in that message too, every
//! round asks for the tools again. Any fault marker may also end with `:from_round=N`: it
//! applies only from round `N` of a conversation on (1 + the assistant messages in the
//! request), e.g. a slow answer only after the tool results.
//!
//! The answer is deterministic: `"fake completion: "` + the first 12 words of the last user
//! message (markers stripped), or `{"summary": ...}` / a schema-shaped object in JSON modes.
//!
//! It also serves a tool at 0 ms, `/tools/NAME` (any method), answering `{"tool": NAME,
//! "arguments": <the JSON body>}` at once (the benchmark's tools setting).
//! `POST /v1/embeddings` answers deterministic hashed bag-of-words vectors (see [`embeddings`]),
//! with the same latency and error markers, and logs every embedded text.
//! What a provider's RPM/TPM limit would count is served too: `GET /_stats/windows?window_ms=N`
//! (and [`FakeProvider::usage_by_window`]) gives the requests and the tokens of successful answers
//! received in each window of `N` ms aligned to the Unix epoch.
//!
//! This crate owns the server's lifecycle ([`FakeProvider`]) and its call log ([`CallRecord`]).

pub mod embeddings;
mod markers;
mod request;
mod response;
mod routes;
mod state;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::KeepAlive;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::state::State;

/// Largest accepted request body.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How to run a [`FakeProvider`].
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Delay applied before every answer (and before faults other than `hang`).
    pub latency_ms: u64,
    /// Address to bind (default `127.0.0.1`).
    pub host: String,
    /// Port to bind; `0` picks an ephemeral port.
    pub port: u16,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            host: "127.0.0.1".to_owned(),
            port: 0,
        }
    }
}

/// One chat completion request received by the fake.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallRecord {
    /// Text of all messages, joined by newlines (fault markers included).
    pub key: String,
    /// Requested model.
    pub model: String,
    /// Whether `"stream": true` was requested.
    pub stream: bool,
    /// The request's `response_format`, as sent (`None` when absent).
    #[serde(default)]
    pub response_format: Option<serde_json::Value>,
    /// The request's `tool_choice`, as sent (`None` when absent).
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    /// `"ok"`, `"429"`, `"500"`, `"400"`, `"hang"`, `"malformed"`, `"nul"`, `"not_json"` or
    /// `"wrong_json"`.
    pub outcome: String,
    /// Arrival time, Unix epoch milliseconds.
    pub received_at_ms: u128,
    /// Answer time, Unix epoch milliseconds (`None` while pending or for `hang`).
    pub responded_at_ms: Option<u128>,
    /// Tokens (prompt + completion) of a successful answer, as its `usage`
    /// reports them; `None` for a fault or while pending.
    #[serde(default)]
    pub total_tokens: Option<u64>,
}

/// One window's counts (see [`FakeProvider::usage_by_window`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowUsage {
    pub requests: u64,
    pub tokens: u64,
}

/// A running fake provider. Dropping it stops the server too (without waiting).
pub struct FakeProvider {
    addr: SocketAddr,
    state: Arc<State>,
    handle: ServerHandle,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl FakeProvider {
    /// Binds `cfg.host:cfg.port` and serves on the current tokio runtime (two actix worker
    /// threads). Returns once the socket is listening.
    pub async fn start(cfg: FakeConfig) -> anyhow::Result<FakeProvider> {
        let state = Arc::new(State::new(cfg.latency_ms));
        let data = web::Data::from(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
                .configure(routes::configure)
        })
        .workers(2)
        .backlog(8192)
        .max_connections(100_000)
        // Clients pool connections: never close an idle one under them.
        .keep_alive(KeepAlive::Os)
        .client_request_timeout(Duration::from_secs(60))
        .client_disconnect_timeout(Duration::from_secs(5))
        .shutdown_timeout(1)
        .disable_signals()
        .bind((cfg.host.as_str(), cfg.port))
        .with_context(|| format!("binding fake provider to {}:{}", cfg.host, cfg.port))?;
        let mut addr = *server
            .addrs()
            .first()
            .context("fake provider bound no address")?;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let server = server.run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        // Let the server task start its acceptor and workers before handing out the URL.
        tokio::task::yield_now().await;
        Ok(FakeProvider {
            addr,
            state,
            handle,
            task: Some(task),
        })
    }

    /// Base URL for OpenAI clients, e.g. `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every chat completion request received so far, in arrival order.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.state.calls()
    }

    /// The calls whose key (text of all messages) contains `needle`.
    pub fn calls_containing(&self, needle: &str) -> Vec<CallRecord> {
        self.state.calls_containing(needle)
    }

    /// The requests and tokens received in each window of `window_ms`
    /// (aligned to the Unix epoch, keyed by the window's start), counted
    /// by arrival time: what a provider's RPM/TPM limit would count.
    pub fn usage_by_window(&self, window_ms: u64) -> std::collections::BTreeMap<u128, WindowUsage> {
        self.state.usage_by_window(window_ms)
    }

    /// Changes the global latency for requests arriving from now on.
    /// Every text the embeddings endpoint was asked to embed, in order.
    pub fn embedded_texts(&self) -> Vec<String> {
        self.state.embedded()
    }

    /// Latency of every embeddings answer without a latency marker.
    pub fn set_embedding_latency_ms(&self, ms: u64) {
        self.state.set_embedding_latency_ms(ms);
    }

    pub fn set_latency_ms(&self, ms: u64) {
        self.state.set_latency_ms(ms);
    }

    /// Stops the server (dropping open connections) and waits for it to finish.
    pub async fn stop(mut self) {
        self.handle.stop(false).await;
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "fake provider server task failed");
            }
        }
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        if self.task.is_some() {
            // Sends the stop command immediately; nobody waits for the completion.
            drop(self.handle.stop(false));
        }
    }
}

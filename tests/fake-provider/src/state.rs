//! Shared server state: the call log, the per-key request counters used by `times=N`
//! faults, the global latency and the id sequence.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::request::ChatRequest;
use crate::CallRecord;

/// State shared by every actix worker (wrapped in `web::Data`).
pub(crate) struct State {
    inner: Mutex<Inner>,
    latency_ms: AtomicU64,
    embedding_latency_ms: AtomicU64,
    seq: AtomicU64,
}

#[derive(Default)]
struct Inner {
    calls: Vec<CallRecord>,
    attempts: HashMap<String, u64>,
    /// Every text `/v1/embeddings` was asked to embed, in order.
    embedded: Vec<String>,
    embedding_attempts: HashMap<String, u64>,
}

impl State {
    pub(crate) fn new(latency_ms: u64) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            latency_ms: AtomicU64::new(latency_ms),
            embedding_latency_ms: AtomicU64::new(0),
            seq: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn latency_ms(&self) -> u64 {
        self.latency_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn embedding_latency_ms(&self) -> u64 {
        self.embedding_latency_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_embedding_latency_ms(&self, ms: u64) {
        self.embedding_latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Logs an embeddings request's inputs; answers its 1-based attempt
    /// number among requests with the same `key`.
    pub(crate) fn count_embedding_request(&self, key: &str, inputs: &[String]) -> u64 {
        let mut inner = self.lock();
        inner.embedded.extend(inputs.iter().cloned());
        let n = inner.embedding_attempts.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    pub(crate) fn embedded(&self) -> Vec<String> {
        self.lock().embedded.clone()
    }

    pub(crate) fn set_latency_ms(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Next value of a process-wide sequence (used to make response ids unique).
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers an arriving request: bumps the counter of `key` and lets `decide` pick the
    /// plan from the 1-based attempt number; records the call with the outcome it returns.
    /// Returns the record index (for [`State::responded`]) and the plan.
    pub(crate) fn begin<T>(
        &self,
        req: &ChatRequest,
        key: String,
        received_at_ms: u128,
        decide: impl FnOnce(u64) -> (T, &'static str),
    ) -> (usize, T) {
        let mut inner = self.lock();
        let attempt = {
            let n = inner.attempts.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let (plan, outcome) = decide(attempt);
        inner.calls.push(CallRecord {
            key,
            model: req.model.clone(),
            stream: req.stream,
            response_format: req.response_format.clone(),
            tool_choice: req.tool_choice.clone(),
            outcome: outcome.to_owned(),
            received_at_ms,
            responded_at_ms: None,
            total_tokens: None,
        });
        (inner.calls.len() - 1, plan)
    }

    /// Records a request that was rejected before it could be keyed (e.g. invalid JSON).
    pub(crate) fn reject(&self, key: String, model: String, stream: bool, received_at_ms: u128) {
        self.lock().calls.push(CallRecord {
            key,
            model,
            stream,
            response_format: None,
            tool_choice: None,
            outcome: "400".to_owned(),
            received_at_ms,
            responded_at_ms: Some(now_ms()),
            total_tokens: None,
        });
    }

    /// Marks call `idx` as answered now, with the tokens of its usage if
    /// it succeeded.
    pub(crate) fn responded(&self, idx: usize, total_tokens: Option<u64>) {
        let now = now_ms();
        if let Some(call) = self.lock().calls.get_mut(idx) {
            call.responded_at_ms = Some(now);
            call.total_tokens = total_tokens;
        }
    }

    /// Requests and tokens per window of `window_ms` (by arrival).
    pub(crate) fn usage_by_window(
        &self,
        window_ms: u64,
    ) -> std::collections::BTreeMap<u128, crate::WindowUsage> {
        let window = u128::from(window_ms.max(1));
        let mut out = std::collections::BTreeMap::<u128, crate::WindowUsage>::new();
        for call in &self.lock().calls {
            let w = out
                .entry(call.received_at_ms / window * window)
                .or_default();
            w.requests += 1;
            w.tokens += call.total_tokens.unwrap_or(0);
        }
        out
    }

    pub(crate) fn calls(&self) -> Vec<CallRecord> {
        self.lock().calls.clone()
    }

    pub(crate) fn calls_containing(&self, needle: &str) -> Vec<CallRecord> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.key.contains(needle))
            .cloned()
            .collect()
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

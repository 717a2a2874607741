//! Metric names, their descriptions and the Prometheus recorder. Every
//! metric is described once here; code elsewhere uses the constants.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "llmq_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "llmq_http_request_duration_seconds";
pub const EXECUTIONS_SUBMITTED: &str = "llmq_executions_submitted_total";
pub const EXECUTIONS_FINISHED: &str = "llmq_executions_finished_total";
pub const EXECUTIONS_IN_FLIGHT: &str = "llmq_executions_in_flight";
pub const EXECUTION_RETRIES: &str = "llmq_execution_retries_total";
pub const STEP_DURATION: &str = "llmq_step_duration_seconds";
/// Tool calls made, by tool and status (refusals are not calls).
pub const TOOL_CALLS: &str = "llmq_tool_calls_total";
pub const TOKENS: &str = "llmq_tokens_total";
pub const QUEUE_PUBLISH_FAILURES: &str = "llmq_queue_publish_failures_total";
pub const OUTBOX_REPUBLISHED: &str = "llmq_outbox_republished_total";
pub const LEASES_REAPED: &str = "llmq_leases_reaped_total";
pub const MESSAGES_DEAD_LETTERED: &str = "llmq_messages_dead_lettered_total";
pub const DB_BATCH_SIZE: &str = "llmq_db_batch_size";
pub const DB_BATCH_WAIT: &str = "llmq_db_batch_wait_seconds";
pub const WEBHOOK_ATTEMPTS: &str = "llmq_webhook_attempts_total";
pub const RETRIEVALS: &str = "llmq_retrievals_total";
pub const EMBEDDED_TEXTS: &str = "llmq_embedded_texts_total";
pub const EMBEDDING_CACHE_HITS: &str = "llmq_embedding_cache_hits_total";
pub const DOCUMENTS_INDEXED: &str = "llmq_documents_indexed_total";

pub const LIMITS_UNCHECKED: &str = "llmq_limits_unchecked_total";
pub const LIMITS_REFUSED: &str = "llmq_limits_refused_total";

/// A limit of `kind` that Redis could not check (its down-policy applied).
pub fn limits_unchecked(kind: &'static str) {
    metrics::counter!(LIMITS_UNCHECKED, "kind" => kind).increment(1);
}

pub const EXECUTIONS_DEFERRED: &str = "llmq_executions_deferred_total";
pub const PROVIDER_LIMIT_WAITS: &str = "llmq_provider_limit_deferrals_total";
pub const CACHE_LOOKUPS: &str = "llmq_response_cache_lookups_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns the
/// handle that renders `/metrics`.
pub fn install() -> Option<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Some(h.clone());
    }
    let recorder = builder().ok()?.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        // Another recorder won the race (tests): keep whichever is stored.
        return HANDLE.get().cloned();
    }
    describe();
    let _ = HANDLE.set(handle.clone());
    Some(handle)
}

/// Latency histograms (`*_seconds`) share buckets from 1 ms to a minute.
fn builder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    let buckets = [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
    // A batch wait is a fraction of a statement: from 50 µs up. A `Full`
    // matcher takes precedence over the `_seconds` suffix.
    let waits = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)?
        .set_buckets_for_metric(Matcher::Full(DB_BATCH_SIZE.into()), &sizes)?
        .set_buckets_for_metric(Matcher::Full(DB_BATCH_WAIT.into()), &waits)
}

fn describe() {
    describe_counter!(
        RETRIEVALS,
        "retrieve steps by final status (ok, empty, failed, timed_out) and whether the fallback ran"
    );
    describe_counter!(
        EMBEDDED_TEXTS,
        "Texts sent to an embeddings endpoint, by use (document, query)"
    );
    describe_counter!(
        EMBEDDING_CACHE_HITS,
        "Document chunks whose embedding came from the cache instead of the endpoint"
    );
    describe_counter!(
        DOCUMENTS_INDEXED,
        "Indexing passes over a document, by outcome (indexed, retry, failed, superseded)"
    );
    describe_counter!(
        LIMITS_UNCHECKED,
        "Limits that could not be checked because Redis was unavailable, by kind (requests, tokens, spend)"
    );
    describe_counter!(
        LIMITS_REFUSED,
        "Submits refused by a limit, by kind and limit"
    );
    describe_counter!(HTTP_REQUESTS, "HTTP requests by method, route and status");
    describe_counter!(
        WEBHOOK_ATTEMPTS,
        "Webhook delivery attempts, by what they left the delivery as (succeeded, pending, failed)"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request latency by route"
    );
    describe_counter!(
        EXECUTIONS_SUBMITTED,
        "Executions accepted by the API, by prompt"
    );
    describe_counter!(
        EXECUTIONS_FINISHED,
        "Executions that reached a terminal status, by status"
    );
    describe_gauge!(
        EXECUTIONS_IN_FLIGHT,
        "Executions this worker is running now"
    );
    describe_counter!(
        EXECUTION_RETRIES,
        "Executions scheduled again after a retryable error, by code"
    );
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "Step latency by kind and status"
    );
    describe_counter!(
        TOOL_CALLS,
        "Tool calls made, by tool and status (succeeded, failed)"
    );
    describe_counter!(
        TOKENS,
        "Tokens used, by model and kind (prompt, completion)"
    );
    describe_counter!(
        QUEUE_PUBLISH_FAILURES,
        "Publishes to RabbitMQ that were not confirmed"
    );
    describe_counter!(
        OUTBOX_REPUBLISHED,
        "Executions published by the outbox relay"
    );
    describe_counter!(
        LEASES_REAPED,
        "Executions requeued because their worker's lease expired"
    );
    describe_counter!(
        MESSAGES_DEAD_LETTERED,
        "Messages sent to the dead-letter queue, by reason"
    );
    describe_counter!(
        EXECUTIONS_DEFERRED,
        "Executions put back for later without running, by reason (tenant_concurrency, provider_capacity)"
    );
    describe_counter!(
        PROVIDER_LIMIT_WAITS,
        "Model calls deferred by a provider limit, by model and limit"
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Response cache lookups, by result (hit, miss, error)"
    );
    describe_histogram!(
        DB_BATCH_SIZE,
        Unit::Count,
        "Items written per group-committed statement, by batch kind"
    );
    describe_histogram!(
        DB_BATCH_WAIT,
        Unit::Seconds,
        "Time an item queued before its group-committed statement started, by batch kind"
    );
}

/// Installs the recorder with its own HTTP listener serving `/metrics`
/// (for processes without an HTTP server of their own, like the worker).
pub fn install_with_listener(addr: std::net::SocketAddr) -> Result<(), String> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    builder()
        .map_err(|e| e.to_string())?
        .with_http_listener(addr)
        .install()
        .map_err(|e| e.to_string())?;
    describe();
    Ok(())
}

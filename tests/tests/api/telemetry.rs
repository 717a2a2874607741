//! Request ids, trace propagation from the submit request through the
//! execution message into the worker's spans, and the API's graceful stop
//! of its publish pipeline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use llmq_shared::queue::{s, TRACEPARENT_HEADER};
use llmq_tests::{amqp, TestApp};
use reqwest::StatusCode;
use tracing::span;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn summary(text: &str) -> serde_json::Value {
    serde_json::json!({"prompt": "summarize", "input": {"text": text}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id_and_a_sane_incoming_one_is_kept() {
    let app = TestApp::builder().without_worker().spawn().await;
    let header = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let fresh = app.client.get(app.url("/healthz")).send().await.unwrap();
    let generated = header(&fresh).expect("a generated X-Request-Id");
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    let kept = app
        .client
        .get(app.url("/v1/executions/not-an-id"))
        .bearer_auth(&app.api_key)
        .header("X-Request-Id", "client-req.42")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&kept).as_deref(), Some("client-req.42"));

    let replaced = app
        .client
        .get(app.url("/healthz"))
        .header("X-Request-Id", "two words")
        .send()
        .await
        .unwrap();
    let replacement = header(&replaced).expect("a replacement X-Request-Id");
    assert_ne!(replacement, "two words");
    assert!(uuid::Uuid::parse_str(&replacement).is_ok(), "{replacement}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_execution_message_carries_the_request_trace() {
    let app = TestApp::builder().without_worker().spawn().await;
    let response = app
        .client
        .post(app.url("/v1/executions"))
        .bearer_auth(&app.api_key)
        .header("traceparent", TRACEPARENT)
        .json(&summary("a traced submit."))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let untraced = app.submit_summary("a submit without a trace.").await;

    let conn = amqp::connect(&app.settings.amqp_url).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut traces = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while traces.len() < 2 && tokio::time::Instant::now() < deadline {
        match channel
            .basic_get(
                s(&app.topology.executions_queue),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            Some(message) => {
                let body: serde_json::Value =
                    serde_json::from_slice(&message.delivery.data).unwrap();
                let header = message
                    .delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(TRACEPARENT_HEADER).cloned());
                let header = match header {
                    Some(AMQPValue::LongString(v)) => {
                        Some(String::from_utf8_lossy(v.as_bytes()).into_owned())
                    }
                    _ => None,
                };
                traces.insert(body["id"].as_str().unwrap().to_string(), header);
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let got_both = traces.len() >= 2;
    let _ = conn.close(200, s("done")).await;
    assert!(got_both, "the execution messages never arrived: {traces:?}");

    let traced = traces[&id].clone().expect("a traceparent header");
    let parts: Vec<&str> = traced.split('-').collect();
    assert_eq!(parts.len(), 4, "{traced}");
    assert_eq!(parts[1], TRACE_ID, "the request's trace id: {traced}");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the API's own span is the parent"
    );
    let fresh = traces[&untraced]
        .clone()
        .expect("a new trace for an untraced request");
    assert_ne!(fresh.split('-').nth(1), Some(TRACE_ID));
    app.cleanup().await;
}

/// Spans seen in-process: their parent and fields.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<HashMap<u64, SeenSpan>>>);

#[derive(Clone, Debug, Default)]
struct SeenSpan {
    parent: Option<u64>,
    fields: HashMap<&'static str, String>,
}

struct Fields<'a>(&'a mut HashMap<&'static str, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name(), value.to_string());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut seen = SeenSpan {
            parent: ctx
                .span(id)
                .and_then(|s| s.parent())
                .map(|p| p.id().into_u64()),
            ..Default::default()
        };
        attrs.record(&mut Fields(&mut seen.fields));
        if let Ok(mut spans) = self.0.lock() {
            spans.insert(id.into_u64(), seen);
        }
    }
}

impl Spans {
    /// The trace id recorded on `id`'s span or its nearest ancestor.
    fn trace_of(&self, mut id: u64) -> Option<String> {
        let spans = self.0.lock().ok()?;
        loop {
            let span = spans.get(&id)?;
            if let Some(trace) = span.fields.get("trace_id") {
                return Some(trace.clone());
            }
            id = span.parent?;
        }
    }

    fn with_field(&self, name: &str, value: &str) -> Vec<u64> {
        self.0
            .lock()
            .map(|spans| {
                spans
                    .iter()
                    .filter(|(_, s)| s.fields.get(name).map(String::as_str) == Some(value))
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }
}

// A current-thread runtime: the in-process worker runs on this thread, so
// the thread's default subscriber sees its spans.
#[tokio::test]
async fn the_worker_span_of_an_execution_continues_the_request_trace() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/v1/executions"))
        .bearer_auth(&app.api_key)
        .header("traceparent", TRACEPARENT)
        .json(&summary("a traced execution."))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");

    let runs = spans.with_field("execution.id", &id);
    assert!(!runs.is_empty(), "the worker recorded no span for {id}");
    for run in runs {
        assert_eq!(
            spans.trace_of(run).as_deref(),
            Some(TRACE_ID),
            "a worker span of {id} outside the request's trace"
        );
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_api_publishes_and_clears_the_marks_of_what_it_accepted() {
    const SUBMITS: usize = 20;
    let mut app = TestApp::builder()
        .without_worker()
        // Confirmed marks are held a second before they are cleared.
        .configure(|s| s.republish_after_secs = 600)
        .spawn()
        .await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    for i in 0..SUBMITS {
        app.submit_summary(&format!("drain {run} item {i}.")).await;
    }
    app.stop_api().await;

    let marked: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM executions WHERE publish_due_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(marked, 0, "accepted rows still waiting for the relay");
    assert_eq!(
        app.ready_messages(&app.topology.executions_queue).await,
        SUBMITS as u32,
        "every accepted execution was published once"
    );
    app.cleanup().await;
}

//! The execution event log over Server-Sent Events: a subscriber sees the
//! whole life of an execution in order with no gap, a late or resuming
//! one gets exactly the stored events it missed, idle streams carry
//! keep-alive comments, and the tenant-wide stream filters.

use std::time::Duration;

use llmq_tests::{assert_error, SseEvent, SseItem, TestApp};
use reqwest::StatusCode;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn summary_body(what: &str) -> Value {
    serde_json::json!({
        "prompt": "summarize",
        "input": {"text": format!("{what} {} about a fox.", uuid::Uuid::now_v7().simple())},
    })
}

/// (id, type, and for status events the status, for steps kind/phase).
fn shape(events: &[SseEvent]) -> Vec<(Option<i64>, String, String)> {
    events
        .iter()
        .map(|e| {
            let what = match e.event.as_str() {
                "status" => e.data["status"].as_str().unwrap_or("?").to_string(),
                "step" => format!(
                    "{} {}",
                    e.data["kind"].as_str().unwrap_or("?"),
                    e.data["phase"].as_str().unwrap_or("?")
                ),
                "done" => e.data["status"].as_str().unwrap_or("?").to_string(),
                _ => String::new(),
            };
            (e.seq(), e.event.clone(), what)
        })
        .collect()
}

fn assert_numbered_from(events: &[SseEvent], first: i64) {
    let seqs: Vec<i64> = events.iter().map(|e| e.seq().expect("an id")).collect();
    let expected: Vec<i64> = (first..first + seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "ids are not gap-free: {:#?}", shape(events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_the_whole_life_of_an_execution_in_order_and_the_stream_closes() {
    let mut app = TestApp::builder().without_worker().spawn().await;
    let id = app.submit_accepted(&summary_body("live")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut stream = app.event_stream(&id, None).await;
    let snapshot = stream.next_event(WAIT).await.expect("a snapshot");
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.id, None, "a snapshot carries no id");
    assert_eq!(snapshot.data["id"], id.as_str());
    assert_eq!(snapshot.data["status"], "queued");
    let queued = stream.next_event(WAIT).await.expect("the queued event");
    assert_eq!(
        shape(std::slice::from_ref(&queued))[0],
        (Some(1), "status".into(), "queued".into())
    );

    // The worker starts only now: everything after this is live.
    app.start_worker().await;
    let mut events = vec![queued];
    events.extend(stream.until_closed(WAIT).await);
    let got: Vec<(String, String)> = shape(&events).into_iter().map(|(_, t, w)| (t, w)).collect();
    let expected: Vec<(String, String)> = [
        ("status", "queued"),
        ("status", "running"),
        ("step", "render started"),
        ("step", "render finished"),
        ("step", "generate started"),
        ("step", "generate finished"),
        ("step", "finalize started"),
        ("step", "finalize finished"),
        ("status", "succeeded"),
        ("done", "succeeded"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, expected);
    assert_numbered_from(&events, 1);
    let generate = &events[5].data;
    assert_eq!(generate["status"], "succeeded");
    assert!(
        generate["usage"]["total_tokens"].as_i64().unwrap() > 0,
        "{generate}"
    );
    assert!(generate["latency_ms"].as_f64().is_some(), "{generate}");
    let done = events.last().unwrap();
    let resource: Value = app.get_execution(&id).await.json().await.unwrap();
    assert_eq!(done.data, resource, "done carries the final resource");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_gets_the_same_events_from_postgres_and_a_cursor_resumes_exactly() {
    let app = TestApp::spawn().await;
    let id = app.submit_accepted(&summary_body("replay")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut live = app.event_stream(&id, None).await;
    let live_events: Vec<SseEvent> = live
        .until_closed(WAIT)
        .await
        .into_iter()
        .filter(|e| e.event != "snapshot")
        .collect();
    app.wait_until_terminal(&id, WAIT).await;

    let mut replay = app.event_stream(&id, None).await;
    let snapshot = replay.next_event(WAIT).await.unwrap();
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.data["status"], "succeeded");
    let replayed = replay.until_closed(WAIT).await;
    assert_eq!(replayed.len(), 10, "{:#?}", shape(&replayed));
    assert_numbered_from(&replayed, 1);
    assert_eq!(replayed, live_events, "live and replayed events differ");

    for n in [0usize, 4, 9] {
        let cursor = n.to_string();
        let mut resumed = app.event_stream(&id, Some(&cursor)).await;
        assert_eq!(resumed.next_event(WAIT).await.unwrap().event, "snapshot");
        assert_eq!(resumed.until_closed(WAIT).await, replayed[n..], "after {n}");
    }
    // The query cursor works the same; after done, only the snapshot.
    let response = app
        .client
        .get(app.url(&format!("/v1/executions/{id}/events?starting_after=10")))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    let mut after_done = llmq_tests::SseClient::new(response);
    assert_eq!(after_done.next_event(WAIT).await.unwrap().event, "snapshot");
    assert_eq!(after_done.until_closed(WAIT).await, vec![]);
    // A delta's id resumes after the lifecycle event it follows.
    let mut from_delta = app.event_stream(&id, Some("6.3")).await;
    from_delta.next_event(WAIT).await.unwrap();
    assert_eq!(from_delta.until_closed(WAIT).await, replayed[6..]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_executions_and_bad_cursors_are_refused() {
    let app = TestApp::builder().without_worker().spawn().await;
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_error(
        app.execution_events(&unknown, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let id = app.submit_summary("cursor").await;
    for bad in ["x", "-1", "1.x"] {
        assert_error(
            app.execution_events(&id, Some(bad)).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    }
    // Past the last event (a queued execution has one).
    assert_error(
        app.execution_events(&id, Some("2")).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_carries_keep_alive_comments() {
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| s.events.keepalive_ms = 100)
        .spawn()
        .await;
    let id = app.submit_summary("idle").await;
    let mut stream = app.event_stream(&id, None).await;
    let mut comments = 0;
    let mut events = Vec::new();
    while comments < 2 {
        match stream.next(WAIT).await.expect("the stream stays open") {
            SseItem::Comment(_) => comments += 1,
            SseItem::Event(e) => events.push(e.event),
        }
    }
    assert_eq!(events, ["snapshot", "status"]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_stream_passes_live_events_its_filters_ask_for() {
    let mut app = TestApp::builder().without_worker().spawn().await;
    let open = |query: &'static str| {
        let request = app
            .client
            .get(app.url(&format!("/v1/events{query}")))
            .bearer_auth(&app.api_key);
        async move { llmq_tests::SseClient::new(request.send().await.unwrap()) }
    };
    let mut all = open("?prompt=summarize").await;
    let mut succeeded = open("?status=succeeded").await;
    let mut other_prompt = open("?prompt=classify").await;
    assert_error(
        app.get_authorized("/v1/events?status=sleeping").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    // A first execution, until its end is heard: the worker's publisher
    // is connected from then on.
    app.start_worker().await;
    let warm_up = app.submit_summary("warm-up").await;
    while !matches!(all.next_event(WAIT).await, Some(e) if e.event == "done" && e.data["execution_id"] == warm_up.as_str())
    {
    }
    while !matches!(succeeded.next_event(WAIT).await, Some(e) if e.event == "done") {}
    let id = app.submit_summary("tenant").await;

    let mut seen = Vec::new();
    loop {
        let e = all.next_event(WAIT).await.expect("open");
        assert_eq!(e.data["execution_id"], id.as_str(), "{e:?}");
        seen.push((e.event.clone(), e.data["seq"].as_i64().unwrap()));
        if e.event == "done" {
            break;
        }
    }
    // Live only: the queued event (1) is not published.
    let seqs: Vec<i64> = seen.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs, (2..=10).collect::<Vec<_>>(), "{seen:?}");

    let first = succeeded.next_event(WAIT).await.unwrap();
    let second = succeeded.next_event(WAIT).await.unwrap();
    assert_eq!(
        (first.event.as_str(), first.data["status"].as_str()),
        ("status", Some("succeeded"))
    );
    assert_eq!(
        (second.event.as_str(), second.data["status"].as_str()),
        ("done", Some("succeeded"))
    );
    // The classify stream heard nothing but keep-alives: a classify
    // execution's events are the first it passes.
    let classify = app
        .submit_accepted(&serde_json::json!({"prompt": "classify", "input": {"text": "a fox", "labels": ["a", "b"]}}))
        .await;
    let e = other_prompt.next_event(WAIT).await.unwrap();
    assert_eq!(e.data["execution_id"], classify["id"], "{e:?}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_call_sends_deltas_before_done_that_add_up_to_the_stored_output() {
    let mut app = TestApp::builder()
        .without_worker()
        .configure(|s| s.events.delta_interval_ms = 50)
        .spawn()
        .await;
    let text = format!(
        "[[fault:chunk_delay=40]] one two three four five six seven eight nine ten {}",
        uuid::Uuid::now_v7().simple()
    );
    let body = serde_json::json!({"prompt": "summarize", "input": {"text": text}, "stream": true});
    let id = app.submit_accepted(&body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut stream = app.event_stream(&id, None).await;
    app.start_worker().await;
    let events = stream.until_closed(WAIT).await;
    let deltas: Vec<&SseEvent> = events.iter().filter(|e| e.event == "delta").collect();
    assert!(!deltas.is_empty(), "no delta: {:#?}", shape(&events));
    assert_eq!(events.last().unwrap().event, "done");
    // Each delta's id resumes after the lifecycle event it follows.
    let generate_started = events
        .iter()
        .position(|e| e.event == "step" && e.data["kind"] == "generate")
        .unwrap();
    let first_delta = events.iter().position(|e| e.event == "delta").unwrap();
    assert!(first_delta > generate_started);
    let started_id = events[generate_started].id.clone().unwrap();
    assert!(
        deltas[0]
            .id
            .as_deref()
            .unwrap()
            .starts_with(&format!("{started_id}.")),
        "{:?}",
        deltas[0].id
    );
    let streamed: String = deltas
        .iter()
        .map(|d| d.data["text"].as_str().unwrap())
        .collect();
    let resource: Value = app.get_execution(&id).await.json().await.unwrap();
    assert_eq!(resource["status"], "succeeded", "{resource:#}");
    assert_eq!(resource["output"].as_str(), Some(streamed.as_str()));
    assert!(resource["usage"]["total_tokens"].as_i64().unwrap() > 0);
    // The provider was asked to stream, with the usage in its last chunk.
    let calls = app.fake.calls();
    assert!(calls.iter().all(|c| c.stream), "{calls:?}");
    let lifecycle: Vec<SseEvent> = events
        .into_iter()
        .filter(|e| e.event != "delta" && e.event != "snapshot")
        .collect();
    assert_numbered_from(&lifecycle, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_dropped_with_a_last_error_event() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = TestApp::builder()
        .configure(|s| s.events.tenant_stream_buffer = 4)
        .spawn()
        .await;
    // A client with a small receive buffer that reads nothing: the
    // server's socket buffers fill, then the stream's own buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
    let mut conn = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
        app.api_key
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..150 {
        ids.push(app.submit_summary(&format!("slow reader {i}")).await);
    }
    app.wait_all_terminal(&ids, Duration::from_secs(120)).await;

    let mut received = Vec::new();
    tokio::time::timeout(WAIT, conn.read_to_end(&mut received))
        .await
        .expect("the server closes the dropped stream")
        .unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(300)]
    );
    let at = text.find("slow_consumer").expect("a last error event");
    let last_event = text.rfind("event: ").unwrap();
    assert_eq!(
        &text[last_event..last_event + 12],
        "event: error",
        "the error event is the last"
    );
    assert!(last_event < at);
    // Far fewer events than were published reached this reader.
    let delivered = text.matches("event: ").count();
    assert!(delivered < 150 * 9, "{delivered} events delivered");
    app.cleanup().await;
}

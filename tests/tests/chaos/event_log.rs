//! The event log across a SIGKILL: a worker killed in the middle of a
//! streamed model call leaves the stream open; the retried attempt's
//! events follow on it, numbered on from the last one, with no gap and no
//! repeat, and a replay from Postgres says exactly what the stream said.

use std::time::Duration;

use llmq_tests::{SseEvent, TestApp};

use super::support;

const WAIT: Duration = Duration::from_secs(60);

fn lifecycle(events: &[SseEvent]) -> Vec<SseEvent> {
    events
        .iter()
        .filter(|e| e.event != "delta" && e.event != "snapshot")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_leaves_a_gap_free_log_that_the_retry_continues() {
    let _shared = support::shared().await;
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| {
            // Short leases: the killed worker's execution is reaped quickly.
            s.worker.lease_secs = 2;
            s.worker.relay_interval_ms = 100;
            s.republish_after_secs = 1;
        })
        .spawn()
        .await;
    let text = format!(
        "[[fault:chunk_delay=200]] killed {} while it streams one two three four five six",
        support::unique()
    );
    let body = serde_json::json!({"prompt": "summarize", "input": {"text": text}, "stream": true});
    let id = app.submit_accepted(&body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut stream = app.event_stream(&id, None).await;
    let mut first = app.spawn_worker_process("first");
    let mut events = Vec::new();
    // Mid-stream: the first token has been published.
    loop {
        let e = stream.next_event(WAIT).await.expect("the stream is open");
        let delta = e.event == "delta";
        events.push(e);
        if delta {
            break;
        }
    }
    first.sigkill().await;
    let _second = app.spawn_worker_process("second");
    events.extend(stream.until_closed(WAIT).await);

    let live = lifecycle(&events);
    let seqs: Vec<i64> = live.iter().map(|e| e.seq().expect("an id")).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "{live:#?}"
    );
    let statuses: Vec<String> = live
        .iter()
        .filter(|e| e.event == "status")
        .map(|e| {
            format!(
                "{} {}",
                e.data["status"].as_str().unwrap(),
                e.data["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            "queued ",
            "running ",
            "queued lease_expired",
            "running ",
            "succeeded "
        ],
        "{live:#?}"
    );
    // The killed attempt's generate is closed as lost by the retry, then
    // the retry's own generate runs to the end.
    let generates: Vec<(i64, String, String)> = live
        .iter()
        .filter(|e| e.event == "step" && e.data["kind"] == "generate")
        .map(|e| {
            (
                e.data["attempt"].as_i64().unwrap(),
                e.data["phase"].as_str().unwrap().to_string(),
                e.data["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        generates,
        [
            (1, "started".into(), "".into()),
            (1, "finished".into(), "failed".into()),
            (2, "started".into(), "".into()),
            (2, "finished".into(), "succeeded".into()),
        ],
        "{live:#?}"
    );
    assert_eq!(live.last().unwrap().event, "done");

    let mut replay = app.event_stream(&id, None).await;
    let replayed = lifecycle(&replay.until_closed(WAIT).await);
    assert_eq!(replayed, live, "the replay differs from the live stream");
    app.cleanup().await;
}

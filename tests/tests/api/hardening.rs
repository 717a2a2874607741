//! What the API does with requests that are hostile or merely careless:
//! fields it does not implement yet, NUL characters, out-of-range query
//! values, wrong methods and content types, slow bodies, and a database
//! slower than the request's deadline. Each answer is a 4xx in the error
//! shape (or a 503 that means "not accepted"), never a 500.

use std::time::Duration;

use llmq_tests::{assert_error, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn api_only() -> TestApp {
    TestApp::builder().without_worker().spawn().await
}

async fn execution_count(app: &TestApp) -> i64 {
    app.db()
        .await
        .query_one("SELECT count(*) FROM executions", &[])
        .await
        .unwrap()
        .get(0)
}

fn summary(extra: Value) -> Value {
    let mut body = json!({"prompt": "summarize", "input": {"text": "hello"}});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn stream_is_accepted_and_links_the_event_stream() {
    let app = api_only().await;
    // `stream` is accepted either way (events.rs tests what it does).
    for stream in [false, true] {
        let accepted = app
            .submit_accepted(&summary(json!({"stream": stream})))
            .await;
        assert!(accepted["links"]["events"].is_string(), "{accepted}");
        assert!(accepted["links"]["steps"].is_string(), "{accepted}");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn nul_characters_are_a_bad_request_naming_the_field() {
    let app = api_only().await;
    let cases = [
        (json!({"input": {"text": "a\u{0}b"}}), "input.text"),
        (json!({"metadata": {"k\u{0}": "v"}}), "metadata"),
        (
            json!({"metadata": {"ticket": "T\u{0}1"}}),
            "metadata.ticket",
        ),
        (json!({"params": {"stop": ["\u{0}"]}}), "params.stop[0]"),
        (json!({"user": "u\u{0}"}), "user"),
        (json!({"model": "gpt\u{0}"}), "model"),
        (json!({"label": "prod\u{0}"}), "label"),
        (json!({"prompt": "summ\u{0}arize"}), "prompt"),
    ];
    for (extra, field) in cases {
        let error = assert_error(
            app.submit(&summary(extra.clone())).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        assert!(
            error["message"].as_str().unwrap().starts_with(field),
            "{extra}: {error}"
        );
    }
    assert_eq!(execution_count(&app).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn a_wait_that_is_not_a_whole_number_of_seconds_is_a_bad_request() {
    let app = api_only().await;
    let id = app.submit_accepted(&summary(json!({}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for wait in ["18446744073709551616", "-1", "1.5", "soon", ""] {
        assert_error(
            app.get_authorized(&format!("/v1/executions/{id}?wait={wait}"))
                .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    }
    let ok = app
        .get_authorized(&format!("/v1/executions/{id}?wait=0"))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    app.cleanup().await;
}

#[tokio::test]
async fn a_method_a_route_does_not_serve_is_method_not_allowed_with_allow() {
    let app = api_only().await;
    let trace = reqwest::Method::from_bytes(b"TRACE").unwrap();
    let cases = [
        (trace.clone(), "/healthz", "GET"),
        (trace.clone(), "/metrics", "GET"),
        (trace.clone(), "/readyz", "GET"),
        (trace, "/v1/executions", "GET, POST"),
        (reqwest::Method::DELETE, "/v1/executions", "GET, POST"),
        (
            reqwest::Method::GET,
            "/v1/prompts/summarize/versions",
            "POST",
        ),
        (
            reqwest::Method::DELETE,
            "/v1/executions/0193a3c4-0000-7000-8000-000000000000",
            "GET",
        ),
    ];
    for (method, path, allow) in cases {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(&app.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
        assert_error(
            response,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
    }
    // A path no route has is still 404.
    assert_error(
        app.get_authorized("/v1/nowhere").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_an_unsupported_media_type() {
    let app = api_only().await;
    let body = summary(json!({})).to_string();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "multipart/form-data; boundary=x",
    ] {
        assert_error(
            app.submit_with_raw_body(body.clone(), content_type).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }
    // No Content-Type at all is refused too: the body's type is unknown.
    let untyped = app
        .client
        .post(app.url("/v1/executions"))
        .bearer_auth(&app.api_key)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_error(
        untyped,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert_eq!(execution_count(&app).await, 0);

    for content_type in [
        "application/json; charset=utf-8",
        "application/vnd.llmq+json",
    ] {
        let response = app.submit_with_raw_body(body.clone(), content_type).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{content_type}");
    }
    assert_eq!(execution_count(&app).await, 2);
    app.cleanup().await;
}

#[tokio::test]
async fn a_body_trickled_past_the_body_timeout_is_answered_and_the_connection_freed() {
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| s.api.body_timeout_secs = 1)
        .spawn()
        .await;
    let addr = app.address.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /v1/executions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
        app.api_key
    );
    write.write_all(head.as_bytes()).await.unwrap();
    // One byte every 200 ms: at that pace the body would take hours.
    let trickle = tokio::spawn(async move {
        loop {
            if write.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    // The bound only keeps a regression from hanging the suite.
    let read_all = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    trickle.abort();
    assert!(
        read_all.is_ok(),
        "the server never answered a trickled body"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(execution_count(&app).await, 0);
    app.cleanup().await;
}

/// A submit whose deadline passes while its insert waits on the database
/// must not answer 503 for a row that is then written and run: a client
/// retrying without an idempotency key would get two executions.
#[tokio::test]
async fn a_submit_slower_than_its_deadline_is_accepted_or_not_written_never_both() {
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| s.api.request_timeout_secs = 1)
        .spawn()
        .await;
    // Warm the prompt caches, so the submit below reaches its insert.
    app.submit_accepted(&summary(json!({}))).await;
    let mut locker = app.db().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE executions IN EXCLUSIVE MODE")
        .await
        .unwrap();

    let submit = {
        let (client, url, key) = (
            app.client.clone(),
            app.url("/v1/executions"),
            app.api_key.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(key)
                .json(&summary(json!({"metadata": {"probe": "slow"}})))
                .send()
                .await
                .unwrap()
        })
    };
    // The insert has been blocked on the lock for longer than the
    // request's deadline: the moment the old code answered 503.
    let blocked_past_deadline = app
        .eventually(Duration::from_secs(30), || async {
            app.db()
                .await
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND wait_event_type = 'Lock' AND query ILIKE '%INSERT INTO executions%' \
                     AND now() - query_start > interval '2 seconds'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        })
        .await;
    assert!(
        blocked_past_deadline,
        "the insert never blocked on the lock"
    );
    lock.rollback().await.unwrap();

    let response = submit.await.unwrap();
    // Whatever was answered, the insert must have ended (committed or not)
    // before the rows are counted.
    let insert_ended = app
        .eventually(Duration::from_secs(30), || async {
            app.db()
                .await
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND state = 'active' AND query ILIKE '%INSERT INTO executions%' \
                     AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 0
        })
        .await;
    assert!(insert_ended, "the insert never ended");
    let status = response.status();
    let probes: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM executions WHERE metadata->>'probe' = 'slow'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    match status {
        StatusCode::ACCEPTED => assert_eq!(probes, 1, "accepted but not written"),
        StatusCode::SERVICE_UNAVAILABLE => assert_eq!(probes, 0, "503 but the row was written"),
        other => panic!(
            "unexpected answer {other}: {}",
            response.text().await.unwrap()
        ),
    }
    app.cleanup().await;
}

//! Webhooks end to end: a real HTTP receiver checks each delivery's
//! Standard Webhooks signature with its own implementation of the scheme
//! (HMAC-SHA256 here, not the project's signing code) and that the body
//! is the execution resource; retries keep their `webhook-id`; 410
//! disables; a receiver that stays down is recovered; SSRF destinations
//! are refused at registration and at delivery; rotation signs twice.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use llmq_tests::app::{assert_error, TestApp};
use llmq_tests::receiver::{Received, Receiver};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(20);

/// An app whose worker also delivers webhooks, to 127.0.0.1 over http,
/// on `schedule` (ms).
async fn app_with(schedule: &[u64]) -> TestApp {
    let schedule = schedule.to_vec();
    TestApp::builder()
        .configure(move |s| {
            s.worker.roles = vec!["executions".into(), "relay".into(), "webhooks".into()];
            s.webhooks.allow_http = true;
            s.webhooks.allowed_hosts = vec!["127.0.0.1".into()];
            s.webhooks.retry_schedule_ms = schedule;
            s.webhooks.poll_interval_ms = 50;
            s.webhooks.timeout_secs = 5;
        })
        .spawn()
        .await
}

/// Standard Webhooks verification, written from the specification: the
/// signed content is `{id}.{timestamp}.{body}`, the key the base64 after
/// `whsec_`. Answers how many of the header's signatures this secret makes.
fn verifying_signatures(secret: &str, r: &Received) -> usize {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", r.webhook_id, r.timestamp).as_bytes());
    mac.update(&r.body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    r.signature
        .split(' ')
        .filter(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
        .count()
}

async fn create_endpoint(app: &TestApp, url: &str, types: &[&str]) -> Value {
    let response = app
        .send_json(
            Method::POST,
            "/v1/webhook-endpoints",
            &json!({"url": url, "event_types": types, "description": "test receiver"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

async fn submit(app: &TestApp, text: &str) -> String {
    app.submit_summary(text).await
}

async fn deliveries_of(app: &TestApp, execution: &str) -> Vec<Value> {
    let body: Value = app
        .get_authorized(&format!("/v1/executions/{execution}/deliveries"))
        .await
        .json()
        .await
        .unwrap();
    body["data"].as_array().unwrap().clone()
}

/// Waits until the execution's deliveries are all in `status`.
async fn wait_deliveries(app: &TestApp, execution: &str, status: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let d = deliveries_of(app, execution).await;
        if (!d.is_empty() && d.iter().all(|d| d["status"] == status))
            || tokio::time::Instant::now() >= deadline
        {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_registered_endpoint_gets_a_signed_execution_resource_that_verifies() {
    let receiver = Receiver::start().await.unwrap();
    let app = app_with(&[0]).await;
    let endpoint = create_endpoint(&app, &receiver.url, &["execution.succeeded"]).await;
    let secret = endpoint["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_") && STANDARD.decode(&secret[6..]).unwrap().len() >= 24);

    let id = submit(&app, "signed delivery").await;
    app.wait_until_terminal(&id, WAIT).await;
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "one delivery");
    let r = &got[0];
    assert_eq!(verifying_signatures(&secret, r), 1, "{}", r.signature);
    let now = chrono::Utc::now().timestamp();
    let ts: i64 = r.timestamp.parse().unwrap();
    assert!(
        (now - ts).abs() < 300,
        "timestamp {ts} is the attempt's time"
    );
    let body = r.json();
    assert_eq!(body["type"], "execution.succeeded");
    let resource: Value = app.get_execution(&id).await.json().await.unwrap();
    assert_eq!(body["data"], resource, "the body is the execution resource");

    let deliveries = wait_deliveries(&app, &id, "succeeded").await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0]["id"], r.webhook_id.as_str());
    assert_eq!(deliveries[0]["attempt_log"][0]["status_code"], 200);
    assert_eq!(
        deliveries[0]["attempt_log"][0]["response_body"],
        "receiver says hello"
    );

    // The secret is never answered again.
    let eid = endpoint["id"].as_str().unwrap();
    for path in [
        format!("/v1/webhook-endpoints/{eid}"),
        "/v1/webhook-endpoints".to_string(),
    ] {
        let text = app.get_authorized(&path).await.text().await.unwrap();
        assert!(text.contains(eid), "{text}");
        assert!(
            !text.contains(&secret[6..]) && !text.contains("secret"),
            "{text}"
        );
    }
    app.cleanup().await;
    receiver.stop().await;
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_webhook_id_on_the_schedule_until_it_succeeds() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script(&[(500, None), (503, Some("1")), (302, None)]);
    let app = app_with(&[0, 300, 300, 300, 300]).await;
    let endpoint = create_endpoint(&app, &receiver.url, &["execution.succeeded"]).await;
    let secret = endpoint["secret"].as_str().unwrap();
    let id = submit(&app, "flaky receiver").await;
    let got = receiver.wait_for(4, WAIT).await;
    assert_eq!(got.len(), 4, "three failures, then the success");
    assert!(got.iter().all(|r| r.webhook_id == got[0].webhook_id));
    assert!(got.iter().all(|r| verifying_signatures(secret, r) == 1));
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "every attempt sends the same body"
    );
    let gaps: Vec<i64> = got
        .windows(2)
        .map(|w| (w[1].at - w[0].at).num_milliseconds())
        .collect();
    // 300 ms with at most a fifth of jitter; the 503's Retry-After: 1 s.
    assert!(
        gaps[0] >= 240 && gaps[1] >= 1000 && gaps[2] >= 240,
        "{gaps:?}"
    );

    let deliveries = wait_deliveries(&app, &id, "succeeded").await;
    let log: Vec<i64> = deliveries[0]["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(
        log,
        [500, 503, 302, 200],
        "a redirect is a failure, not followed"
    );
    assert_eq!(deliveries[0]["attempts"], 4);
    app.cleanup().await;
    receiver.stop().await;
}

#[tokio::test]
async fn a_receiver_answering_410_disables_its_endpoint() {
    let receiver = Receiver::start().await.unwrap();
    receiver.set_default(410);
    let app = app_with(&[0, 100, 100]).await;
    let endpoint = create_endpoint(&app, &receiver.url, &["execution.succeeded"]).await;
    let id = submit(&app, "gone").await;
    let deliveries = wait_deliveries(&app, &id, "failed").await;
    assert_eq!(deliveries[0]["status"], "failed");
    assert_eq!(deliveries[0]["attempts"], 1, "410 is not retried");
    let eid = endpoint["id"].as_str().unwrap();
    let now: Value = app
        .get_authorized(&format!("/v1/webhook-endpoints/{eid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(now["enabled"], false);
    assert!(
        now["disabled_reason"].as_str().unwrap().contains("410"),
        "{now}"
    );
    // A disabled endpoint gets no new deliveries.
    let later = submit(&app, "after gone").await;
    app.wait_until_terminal(&later, WAIT).await;
    assert!(deliveries_of(&app, &later).await.is_empty());
    assert_eq!(receiver.received().len(), 1);
    app.cleanup().await;
    receiver.stop().await;
}

#[tokio::test]
async fn a_receiver_that_stays_down_ends_failed_and_recover_delivers_once_it_is_back() {
    let receiver = Receiver::start().await.unwrap();
    receiver.set_default(503);
    let app = app_with(&[0, 100, 100]).await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    let endpoint = create_endpoint(&app, &receiver.url, &["execution.succeeded"]).await;
    let eid = endpoint["id"].as_str().unwrap();
    let id = submit(&app, "down").await;
    let deliveries = wait_deliveries(&app, &id, "failed").await;
    assert_eq!(deliveries[0]["attempts"], 3, "the whole schedule was used");
    let failed: Value = app
        .get_authorized(&format!(
            "/v1/webhook-endpoints/{eid}/deliveries?status=failed"
        ))
        .await
        .json()
        .await
        .unwrap();
    let failed = failed["data"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    let log = failed[0]["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 3);
    assert!(log
        .iter()
        .all(|a| a["status_code"] == 503 && a["latency_ms"].is_number()));

    receiver.set_default(200);
    let response = app
        .send_json(
            Method::POST,
            &format!("/v1/webhook-endpoints/{eid}/recover"),
            &json!({"since": since}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.json::<Value>().await.unwrap()["requeued"], 1);
    let deliveries = wait_deliveries(&app, &id, "succeeded").await;
    assert_eq!(deliveries[0]["status"], "succeeded");
    let got = receiver.received();
    assert_eq!(got.len(), 4);
    assert_eq!(got[3].answered, 200);
    assert!(got.iter().all(|r| r.webhook_id == got[0].webhook_id));

    // A single delivery can be sent again too; a pending one cannot.
    let did = deliveries[0]["id"].as_str().unwrap();
    let retried = app
        .send_empty(Method::POST, &format!("/v1/deliveries/{did}/retry"))
        .await;
    assert_eq!(retried.status(), StatusCode::ACCEPTED);
    assert_eq!(receiver.wait_for(5, WAIT).await.len(), 5);
    app.cleanup().await;
    receiver.stop().await;
}

#[tokio::test]
async fn rotation_sends_two_signatures_and_both_verify() {
    let receiver = Receiver::start().await.unwrap();
    let app = app_with(&[0]).await;
    let endpoint = create_endpoint(&app, &receiver.url, &["execution.succeeded"]).await;
    let old = endpoint["secret"].as_str().unwrap().to_string();
    let eid = endpoint["id"].as_str().unwrap();
    let rotated: Value = app
        .send_empty(
            Method::POST,
            &format!("/v1/webhook-endpoints/{eid}/rotate-secret"),
        )
        .await
        .json()
        .await
        .unwrap();
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(old, new);
    submit(&app, "rotated").await;
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(
        got[0].signature.split(' ').count(),
        2,
        "{}",
        got[0].signature
    );
    assert_eq!(verifying_signatures(&new, &got[0]), 1);
    assert_eq!(verifying_signatures(&old, &got[0]), 1);
    app.cleanup().await;
    receiver.stop().await;
}

#[tokio::test]
async fn a_per_execution_webhook_url_is_signed_with_the_tenant_secret() {
    let receiver = Receiver::start().await.unwrap();
    let app = app_with(&[0]).await;
    let created = app.send_empty(Method::POST, "/v1/webhook-secret").await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let secret = created.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let accepted = app
        .submit_accepted(&json!({
            "prompt": "summarize",
            "input": {"text": "call me back"},
            "webhook": {"url": receiver.url},
        }))
        .await;
    let id = accepted["id"].as_str().unwrap();
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(verifying_signatures(&secret, &got[0]), 1);
    assert_eq!(got[0].json()["data"]["id"], id);
    let deliveries = wait_deliveries(&app, id, "succeeded").await;
    assert!(deliveries[0]["endpoint_id"].is_null());
    assert_eq!(deliveries[0]["url"], receiver.url.as_str());
    app.cleanup().await;
    receiver.stop().await;
}

#[tokio::test]
async fn ssrf_destinations_are_refused_at_registration() {
    let app = TestApp::builder().without_worker().spawn().await;
    for url in [
        "https://127.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.1/hook",
        "https://100.64.0.1/hook",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[fe80::1]/hook",
        "https://localhost/hook",
        "http://example.com/hook",
    ] {
        let response = app
            .send_json(
                Method::POST,
                "/v1/webhook-endpoints",
                &json!({"url": url, "event_types": ["execution.succeeded"]}),
            )
            .await;
        let error = assert_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_webhook_url",
        )
        .await;
        assert!(
            error["message"].as_str().unwrap().starts_with("url:"),
            "{url}: {error}"
        );
        let submitted = app
            .submit(
                &json!({"prompt": "summarize", "input": {"text": "x"}, "webhook": {"url": url}}),
            )
            .await;
        let error = assert_error(
            submitted,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_webhook_url",
        )
        .await;
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("webhook.url:"),
            "{error}"
        );
    }
    let bad_type = app
        .send_json(
            Method::POST,
            "/v1/webhook-endpoints",
            &json!({"url": "https://example.com/h", "event_types": ["execution.exploded"]}),
        )
        .await;
    assert_error(bad_type, StatusCode::BAD_REQUEST, "bad_request").await;
    app.cleanup().await;
}

#[tokio::test]
async fn ssrf_destinations_are_refused_at_delivery_after_resolution() {
    // Registered while `localhost` was an allowed host; the delivery role
    // of this app allows only `127.0.0.1` as written, so the name that
    // resolves to loopback is refused when the attempt resolves it.
    let receiver = Receiver::start().await.unwrap();
    let app = app_with(&[0]).await;
    let sealer = llmq_shared::webhook::seal::Sealer::from_config("").unwrap();
    let sealed = sealer.seal(&llmq_shared::webhook::signing::Secret::generate());
    let url = format!("http://localhost:{}/hook", receiver.port);
    app.db()
        .await
        .execute(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, event_types, secret) \
             VALUES (gen_random_uuid(), 'default', $1, ARRAY['execution.succeeded'], $2)",
            &[&url, &sealed],
        )
        .await
        .unwrap();
    let id = submit(&app, "to loopback by name").await;
    let deliveries = wait_deliveries(&app, &id, "failed").await;
    let error = deliveries[0]["attempt_log"][0]["error"].as_str().unwrap();
    assert!(error.contains("refused"), "{error}");
    assert!(deliveries[0]["attempt_log"][0]["status_code"].is_null());
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
    app.cleanup().await;
    receiver.stop().await;
}

#[tokio::test]
async fn webhook_answers_match_the_openapi_document() {
    use super::openapi::{check, document};
    let receiver = Receiver::start().await.unwrap();
    let app = app_with(&[0]).await;
    let doc = document(&app).await;
    let list = "/v1/webhook-endpoints";
    let one = "/v1/webhook-endpoints/{id}";
    let body = json!({"url": receiver.url, "event_types": ["execution.succeeded"]});
    let created = check(
        &doc,
        list,
        "post",
        app.send_json(Method::POST, list, &body).await,
    )
    .await;
    let eid = created["id"].as_str().unwrap().to_string();
    let at = |p: &str| p.replace("{id}", &eid);
    check(&doc, list, "get", app.get_authorized(list).await).await;
    check(&doc, one, "get", app.get_authorized(&at(one)).await).await;
    let patched = app
        .send_json(Method::PATCH, &at(one), &json!({"description": "renamed"}))
        .await;
    check(&doc, one, "patch", patched).await;
    let rotate = "/v1/webhook-endpoints/{id}/rotate-secret";
    check(
        &doc,
        rotate,
        "post",
        app.send_empty(Method::POST, &at(rotate)).await,
    )
    .await;
    let secret = "/v1/webhook-secret";
    check(
        &doc,
        secret,
        "post",
        app.send_empty(Method::POST, secret).await,
    )
    .await;
    check(
        &doc,
        secret,
        "post",
        app.send_empty(Method::POST, secret).await,
    )
    .await;
    let refused = json!({"url": "https://10.0.0.1/", "event_types": ["execution.failed"]});
    check(
        &doc,
        list,
        "post",
        app.send_json(Method::POST, list, &refused).await,
    )
    .await;

    let id = submit(&app, "documented").await;
    wait_deliveries(&app, &id, "succeeded").await;
    let of_execution = "/v1/executions/{id}/deliveries";
    let answer = app.get_authorized(&of_execution.replace("{id}", &id)).await;
    let deliveries = check(&doc, of_execution, "get", answer).await;
    let of_endpoint = "/v1/webhook-endpoints/{id}/deliveries";
    let answer = app
        .get_authorized(&format!("{}?status=succeeded", at(of_endpoint)))
        .await;
    check(&doc, of_endpoint, "get", answer).await;
    let answer = app
        .get_authorized(&format!("{}?status=odd", at(of_endpoint)))
        .await;
    check(&doc, of_endpoint, "get", answer).await;
    let retry = "/v1/deliveries/{id}/retry";
    let did = deliveries["data"][0]["id"].as_str().unwrap();
    let answer = app
        .send_empty(Method::POST, &retry.replace("{id}", did))
        .await;
    check(&doc, retry, "post", answer).await;
    let recover = "/v1/webhook-endpoints/{id}/recover";
    let since = json!({"since": chrono::Utc::now()});
    check(
        &doc,
        recover,
        "post",
        app.send_json(Method::POST, &at(recover), &since).await,
    )
    .await;
    let gone = app.send_empty(Method::DELETE, &at(one)).await;
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    check(&doc, one, "get", app.get_authorized(&at(one)).await).await;
    app.cleanup().await;
    receiver.stop().await;
}

#[tokio::test]
async fn a_large_resource_is_sent_thin_and_started_is_sent_when_subscribed() {
    let receiver = Receiver::start().await.unwrap();
    let app = TestApp::builder()
        .configure(|s| {
            s.worker.roles = vec!["executions".into(), "relay".into(), "webhooks".into()];
            s.webhooks.allow_http = true;
            s.webhooks.allowed_hosts = vec!["127.0.0.1".into()];
            s.webhooks.retry_schedule_ms = vec![0];
            s.webhooks.poll_interval_ms = 50;
            s.webhooks.max_payload_bytes = 200;
        })
        .spawn()
        .await;
    create_endpoint(
        &app,
        &receiver.url,
        &["execution.started", "execution.succeeded"],
    )
    .await;
    let id = submit(&app, "a resource larger than two hundred bytes").await;
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2);
    let mut types: Vec<String> = got
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect();
    types.sort();
    assert_eq!(types, ["execution.started", "execution.succeeded"]);
    for r in &got {
        let data = r.json()["data"].clone();
        let mut keys: Vec<&String> = data.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["id", "links", "status"], "thin: {data}");
        assert_eq!(data["id"], id.as_str());
        assert_eq!(data["links"]["self"], format!("/v1/executions/{id}"));
    }
    let deliveries = wait_deliveries(&app, &id, "succeeded").await;
    assert_eq!(deliveries.len(), 2, "one per event");
    app.cleanup().await;
    receiver.stop().await;
}

#[tokio::test]
async fn an_endpoint_failing_for_the_configured_period_is_disabled_with_a_reason() {
    let receiver = Receiver::start().await.unwrap();
    receiver.set_default(500);
    let app = TestApp::builder()
        .configure(|s| {
            s.worker.roles = vec!["executions".into(), "relay".into(), "webhooks".into()];
            s.webhooks.allow_http = true;
            s.webhooks.allowed_hosts = vec!["127.0.0.1".into()];
            s.webhooks.retry_schedule_ms = vec![0, 100, 100];
            s.webhooks.poll_interval_ms = 50;
            // Every failure is already "failing for the whole period".
            s.webhooks.disable_after_failing_secs = 0;
        })
        .spawn()
        .await;
    let endpoint = create_endpoint(&app, &receiver.url, &["execution.succeeded"]).await;
    let eid = endpoint["id"].as_str().unwrap();
    let id = submit(&app, "always failing").await;
    let deliveries = wait_deliveries(&app, &id, "failed").await;
    assert_eq!(deliveries[0]["status"], "failed");
    let now: Value = app
        .get_authorized(&format!("/v1/webhook-endpoints/{eid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(now["enabled"], false, "{now}");
    assert!(
        now["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("every delivery failed since"),
        "{now}"
    );
    // Enabling it again clears the reason.
    let enabled: Value = app
        .send_json(
            Method::PATCH,
            &format!("/v1/webhook-endpoints/{eid}"),
            &json!({"enabled": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(enabled["enabled"], true);
    assert!(enabled["disabled_reason"].is_null());
    app.cleanup().await;
    receiver.stop().await;
}

#[tokio::test]
async fn cancelling_a_queued_execution_creates_its_cancelled_delivery() {
    let receiver = Receiver::start().await.unwrap();
    let mut app = TestApp::builder()
        .without_worker()
        .configure(|s| {
            s.worker.roles = vec!["executions".into(), "relay".into(), "webhooks".into()];
            s.webhooks.allow_http = true;
            s.webhooks.allowed_hosts = vec!["127.0.0.1".into()];
            s.webhooks.retry_schedule_ms = vec![0];
            s.webhooks.poll_interval_ms = 50;
        })
        .spawn()
        .await;
    create_endpoint(&app, &receiver.url, &["execution.cancelled"]).await;
    let id = submit(&app, "cancel me while queued").await;
    let cancelled = app
        .send_empty(Method::POST, &format!("/v1/executions/{id}/cancel"))
        .await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    // Written by the cancel's own statement, before any worker runs.
    let pending = deliveries_of(&app, &id).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["event_type"], "execution.cancelled");
    app.start_worker().await;
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["type"], "execution.cancelled");
    assert_eq!(got[0].json()["data"]["status"], "cancelled");
    app.cleanup().await;
    receiver.stop().await;
}

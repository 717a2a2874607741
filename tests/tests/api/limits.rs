//! Request rate limits, token budgets and spend caps over the real Redis:
//! the 429 shapes and headers, limits shared by two API processes (and two
//! workers), reservations settled with the actual usage, the per-org
//! settings through the API, and the down-policies while a private Redis
//! is stopped.

use std::time::Duration;

use futures::future::join_all;
use llmq_api::Application;
use llmq_shared::config::ModelSettings;
use llmq_tests::{assert_error, PrivateRedis, TestApp};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "limits-admin-key";

fn body(text: &str) -> Value {
    json!({"prompt": "summarize", "input": {"text": text}, "params": {"max_tokens": 20}})
}

/// A second API process over the same database, broker and Redis prefix.
struct SecondApi {
    url: String,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl SecondApi {
    async fn start(app: &TestApp) -> SecondApi {
        let cancel = CancellationToken::new();
        let second = Application::build(app.settings.clone(), cancel.child_token())
            .await
            .unwrap();
        let url = format!("http://127.0.0.1:{}", second.port());
        let task = tokio::spawn(second.run_until_stopped());
        SecondApi { url, cancel, task }
    }

    async fn submit(&self, app: &TestApp, body: &Value) -> Response {
        app.client
            .post(format!("{}/v1/executions", self.url))
            .bearer_auth(&app.api_key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn put_limits(app: &TestApp, org: &str, key: &str, limits: &Value) -> Response {
    app.client
        .put(app.url(&format!("/v1/orgs/{org}/limits")))
        .bearer_auth(key)
        .json(limits)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_limit_answers_429_rate_limited_with_retry_after_and_ratelimit_headers() {
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| {
            s.limits.defaults.org_requests_per_minute = 3;
        })
        .spawn()
        .await;
    for i in 0..3 {
        let response = app.submit(&body(&format!("admitted {i}"))).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(
            header(&response, "RateLimit-Policy"),
            Some("\"org\";q=3;w=60")
        );
        let state = header(&response, "RateLimit").unwrap().to_string();
        assert!(
            state.starts_with(&format!("\"org\";r={};t=", 2 - i)),
            "{state}"
        );
    }
    let refused = app.submit(&body("one too many")).await;
    assert_eq!(
        header(&refused, "RateLimit-Policy"),
        Some("\"org\";q=3;w=60")
    );
    assert!(header(&refused, "RateLimit")
        .unwrap()
        .starts_with("\"org\";r=0;t="));
    let retry_after: u64 = header(&refused, "Retry-After").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    let error = assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(error["details"]["limit"], "org");
    assert_eq!(
        app.count_with_status("queued").await,
        3,
        "nothing refused was stored"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_limit_shared_by_two_api_processes_admits_the_limit_not_twice() {
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| {
            // 10 a minute: a refill takes 6 s, longer than the test's burst.
            s.limits.defaults.key_requests_per_minute = 10;
        })
        .spawn()
        .await;
    let second = SecondApi::start(&app).await;
    let sends = (0..30).map(|i| {
        let app = &app;
        let second = &second;
        async move {
            let b = body(&format!("shared {i}"));
            let response = if i % 2 == 0 {
                app.submit(&b).await
            } else {
                second.submit(app, &b).await
            };
            response.status()
        }
    });
    let statuses = join_all(sends).await;
    let admitted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(admitted + refused, 30, "{statuses:?}");
    // The burst (10), plus at most one refill while the requests ran.
    assert!((10..=11).contains(&admitted), "admitted {admitted}");
    second.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_limits_are_changed_through_the_api_and_apply_on_every_replica_without_restart() {
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| {
            s.api.admin_key = ADMIN.into();
            // Far longer than the test: only the broadcast makes it visible.
            s.limits.settings_cache_ms = 600_000;
        })
        .spawn()
        .await;
    let second = SecondApi::start(&app).await;
    // Warm the second replica's copy: no limit.
    for i in 0..3 {
        let r = second.submit(&app, &body(&format!("warm {i}"))).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert!(header(&r, "RateLimit").is_none());
    }

    let unscoped = put_limits(&app, "default", &app.api_key, &json!({})).await;
    assert_error(unscoped, StatusCode::FORBIDDEN, "missing_scope").await;
    // An organisation's own admin reads its limits but cannot raise them,
    // and another organisation's are not there for it.
    app.create_org("limits-org").await;
    let org_admin = app.create_key("limits-org", &["admin"]).await;
    let own = app
        .get_with_key("/v1/orgs/limits-org/limits", Some(&org_admin))
        .await;
    assert_eq!(own.status(), StatusCode::OK);
    let raise = put_limits(&app, "limits-org", &org_admin, &json!({})).await;
    assert_error(raise, StatusCode::FORBIDDEN, "forbidden").await;
    let theirs = app
        .get_with_key("/v1/orgs/default/limits", Some(&org_admin))
        .await;
    assert_error(theirs, StatusCode::NOT_FOUND, "not_found").await;
    let typo = put_limits(
        &app,
        "default",
        ADMIN,
        &json!({"org_requests_per_minut": 1}),
    )
    .await;
    assert_error(typo, StatusCode::BAD_REQUEST, "bad_request").await;
    let negative = put_limits(&app, "default", ADMIN, &json!({"org_burst": -1})).await;
    assert_error(negative, StatusCode::BAD_REQUEST, "bad_request").await;

    let put = put_limits(
        &app,
        "default",
        ADMIN,
        &json!({"org_requests_per_minute": 1, "tokens_per_day": 100000}),
    )
    .await;
    assert_eq!(put.status(), StatusCode::OK);
    let shown: Value = app
        .client
        .get(app.url("/v1/orgs/default/limits"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["org"], "default");
    assert_eq!(
        shown["overrides"],
        json!({"org_requests_per_minute": 1, "tokens_per_day": 100000})
    );
    assert_eq!(shown["effective"]["org_requests_per_minute"], 1);
    assert_eq!(shown["effective"]["key_requests_per_minute"], 0);
    assert_eq!(shown["updated_by"], "admin-key");

    // The second replica refuses within moments: one admitted, then 429.
    let mut refused = false;
    for i in 0..200 {
        let r = second.submit(&app, &body(&format!("after {i}"))).await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(header(&r, "RateLimit-Policy"), Some("\"org\";q=1;w=60"));
            refused = true;
            break;
        }
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the second replica never applied the new limit");
    second.stop().await;
    app.cleanup().await;
}

/// Sum of the usage the finished executions recorded.
async fn settled_tokens(app: &TestApp) -> i64 {
    let client = app.db().await;
    client
        .query_one(
            "SELECT COALESCE(SUM(total_tokens), 0)::bigint FROM executions",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The token counter of today's organisation window, as Redis holds it.
async fn day_counter(app: &TestApp) -> i64 {
    let redis = llmq_shared::redis::create_pool(&app.settings).unwrap();
    let day = chrono::Utc::now().timestamp_millis() / 86_400_000;
    let key = redis
        .keys()
        .key(&["w", "tokens_per_day", "default", &day.to_string()]);
    redis
        .run(|mut c| async move {
            let v: Option<i64> = ::redis::cmd("GET").arg(&key).query_async(&mut c).await?;
            Ok(v.unwrap_or(0))
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_reserves_the_estimate_and_settles_to_the_actual_usage() {
    let app = TestApp::builder()
        .configure(|s| {
            s.limits.defaults.tokens_per_day = 1_000_000;
            s.api.admin_key = ADMIN.into();
        })
        .spawn()
        .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let accepted = app.submit_accepted(&body(&format!("settle {i}"))).await;
        ids.push(accepted["id"].as_str().unwrap().to_string());
    }
    app.wait_all_terminal(&ids, Duration::from_secs(20)).await;
    let actual = settled_tokens(&app).await;
    assert!(actual > 0);
    // Settlement is in the background: wait for the counter to equal
    // exactly the recorded usage (the estimates were larger).
    let settled = app
        .eventually(Duration::from_secs(10), || async {
            day_counter(&app).await == actual
        })
        .await;
    assert!(
        settled,
        "counter {} != usage {actual}",
        day_counter(&app).await
    );

    // An estimate larger than what is left: 429 with when it frees up.
    let put = put_limits(
        &app,
        "default",
        ADMIN,
        &json!({"tokens_per_day": actual + 10}),
    )
    .await;
    assert_eq!(put.status(), StatusCode::OK);
    let refused = app.submit(&body("over the budget")).await;
    let retry_after: u64 = header(&refused, "Retry-After").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    let error = assert_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "token_budget_exceeded",
    )
    .await;
    assert_eq!(error["details"]["limit"], "tokens_per_day");
    assert!(error["details"]["frees_at"].is_string(), "{error}");
    assert!(error["details"]["estimate_tokens"].as_u64().unwrap() > 20);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_shared_by_two_api_processes_and_two_workers_is_never_overspent() {
    const BUDGET: i64 = 1500;
    let mut app = TestApp::builder()
        .configure(|s| {
            s.limits.defaults.tokens_per_minute = BUDGET as u64;
            s.limits.defaults.tokens_per_day = BUDGET as u64;
        })
        .spawn()
        .await;
    let _worker = app.spawn_worker_process("second-worker");
    let second = SecondApi::start(&app).await;
    let mut ids = Vec::new();
    let mut estimate = 0;
    // Rounds of concurrent submits on both replicas until both refuse.
    for round in 0..10 {
        let sends = (0..8).map(|i| {
            let (app, second) = (&app, &second);
            async move {
                // The version's max_tokens (200): real providers stop there, the
                // fake does not, so the estimate must cover its answers.
                let b = json!({"prompt": "summarize", "input": {"text": format!("budget round {round} request {i}")}});
                let r = if i % 2 == 0 {
                    app.submit(&b).await
                } else {
                    second.submit(app, &b).await
                };
                let status = r.status();
                (status, r.json::<Value>().await.unwrap())
            }
        });
        let answers = join_all(sends).await;
        let mut refused = 0;
        for (status, answer) in answers {
            match status {
                StatusCode::ACCEPTED => ids.push(answer["id"].as_str().unwrap().to_string()),
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(answer["error"]["code"], "token_budget_exceeded");
                    estimate = answer["error"]["details"]["estimate_tokens"]
                        .as_i64()
                        .unwrap();
                    refused += 1;
                }
                other => panic!("unexpected {other}: {answer}"),
            }
        }
        if refused == 8 {
            break;
        }
    }
    assert!(
        !ids.is_empty() && estimate > 0,
        "no request was admitted or refused"
    );
    let finished = app.wait_all_terminal(&ids, Duration::from_secs(30)).await;
    assert!(finished.iter().all(|e| e["status"] == "succeeded"));
    let spent = settled_tokens(&app).await;
    assert!(
        spent <= BUDGET + estimate,
        "spent {spent} tokens of a budget of {BUDGET} (one estimate: {estimate})"
    );
    second.stop().await;
    app.stop_worker().await.unwrap();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_cap_refuses_with_budget_exhausted() {
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| {
            s.models.insert(
                "gpt-4o-mini".into(),
                ModelSettings {
                    prompt_price_per_mtok: 1000.0,
                    completion_price_per_mtok: 1000.0,
                    ..Default::default()
                },
            );
            // About two requests' estimates (each ~70 tokens at $0.001).
            s.limits.defaults.spend_usd_per_day = 0.15;
        })
        .spawn()
        .await;
    let mut admitted = 0;
    let mut refused = None;
    for i in 0..10 {
        let r = app.submit(&body(&format!("spend {i}"))).await;
        if r.status() == StatusCode::ACCEPTED {
            admitted += 1;
        } else {
            refused = Some(r);
            break;
        }
    }
    assert!(admitted >= 1, "the cap admitted nothing");
    let refused = refused.expect("the cap never refused");
    assert!(header(&refused, "Retry-After").is_some());
    let error = assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "budget_exhausted").await;
    assert_eq!(error["details"]["limit"], "spend_usd_per_day");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_applies_allow_and_deny_loses_nothing_and_limits_resume() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let app = TestApp::builder()
        .configure(move |s| {
            s.api.admin_key = ADMIN.into();
            s.redis_url = url;
            s.redis_timeout_ms = 200;
            s.limits.defaults.org_requests_per_minute = 5;
        })
        .spawn()
        .await;
    let mut accepted = Vec::new();
    for i in 0..5 {
        accepted.push(app.submit_accepted(&body(&format!("before {i}"))).await);
    }
    let limited = app.submit(&body("limited")).await;
    assert_error(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    redis.stop().await;
    // Request limits allow while Redis is down (the default policy).
    for i in 0..3 {
        accepted.push(app.submit_accepted(&body(&format!("down {i}"))).await);
    }
    // A token budget denies (the default policy): 503, nothing stored.
    let put = put_limits(
        &app,
        "default",
        ADMIN,
        &json!({"tokens_per_day": 1_000_000}),
    )
    .await;
    assert_eq!(put.status(), StatusCode::OK);
    let denied = app.submit(&body("denied")).await;
    assert_eq!(header(&denied, "Retry-After"), Some("1"));
    assert_error(
        denied,
        StatusCode::SERVICE_UNAVAILABLE,
        "limits_unavailable",
    )
    .await;

    // Nothing accepted is lost: every 202 succeeds, Redis or not.
    let ids: Vec<String> = accepted
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    let finished = app.wait_all_terminal(&ids, Duration::from_secs(20)).await;
    assert!(
        finished.iter().all(|e| e["status"] == "succeeded"),
        "{finished:#?}"
    );
    assert_eq!(app.count_with_status("succeeded").await, ids.len() as i64);

    // Redis returns (empty): the limits apply again.
    redis.resume().await;
    let mut admitted = 0;
    let mut refused = false;
    for i in 0..20 {
        let r = app.submit(&body(&format!("after {i}"))).await;
        match r.status() {
            StatusCode::ACCEPTED => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused = true;
                break;
            }
            // The handle reconnects on the next command.
            StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused, "limits did not resume after Redis returned");
    assert!((1..=5).contains(&admitted), "admitted {admitted}");
    app.cleanup().await;
}

/// A Limiter over the shared Redis under a namespace of this test only,
/// and its Redis handle.
pub(super) fn limiter_under_test(
    settings: llmq_shared::config::LimitSettings,
) -> (
    llmq_shared::Settings,
    std::sync::Arc<llmq_shared::redis::Redis>,
    llmq_shared::limits::Limiter,
) {
    let s = llmq_shared::Settings {
        redis_url: llmq_tests::redis::redis_url(),
        redis_prefix: format!("test.{}:", uuid::Uuid::now_v7().simple()),
        ..Default::default()
    };
    let redis = std::sync::Arc::new(llmq_shared::redis::create_pool(&s).unwrap());
    let limiter = llmq_shared::limits::Limiter::new(settings, redis.clone());
    (s, redis, limiter)
}

pub(super) async fn get_int(redis: &llmq_shared::redis::Redis, cmd: &str, key: &str) -> i64 {
    let key = key.to_string();
    let cmd = cmd.to_string();
    redis
        .run(|mut c| async move {
            let v: Option<i64> = ::redis::cmd(&cmd).arg(&key).query_async(&mut c).await?;
            Ok(v.unwrap_or(0))
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn admission_takes_all_limits_or_none_and_settling_twice_changes_nothing() {
    use llmq_shared::config::{LimitSettings, OrgLimits};
    use llmq_shared::execution::ExecutionId;
    use llmq_shared::limits::{Admission, Estimate, LimitKind, Subject};

    let (settings, redis, limiter) = limiter_under_test(LimitSettings {
        reservation_ttl_secs: 120,
        ..Default::default()
    });
    let limits = OrgLimits {
        org_requests_per_minute: 100,
        tokens_per_day: 1000,
        ..Default::default()
    };
    let subject = Subject {
        tenant: "org:a",
        key_id: "k",
        user: Some("u"),
        model: "m",
    };
    let day = chrono::Utc::now().timestamp_millis() / 86_400_000;
    let window = redis
        .keys()
        .key(&["w", "tokens_per_day", "org%3Aa", &day.to_string()]);
    let gcra = redis.keys().key(&["rl", "o", "org%3Aa"]);

    let first = ExecutionId::new();
    let estimate = Estimate {
        tokens: 600,
        spend_micros: 0,
    };
    let admitted = limiter.admit(first, &subject, &limits, estimate).await;
    assert!(
        matches!(admitted, Admission::Admitted { .. }),
        "{admitted:?}"
    );
    assert_eq!(get_int(&redis, "GET", &window).await, 600);
    let tat = get_int(&redis, "GET", &gcra).await;

    // Refused by the budget: the request limit is not taken either.
    let refused = limiter
        .admit(ExecutionId::new(), &subject, &limits, estimate)
        .await;
    assert!(
        matches!(&refused, Admission::Refused { kind: LimitKind::Tokens, limit, .. } if limit == "tokens_per_day"),
        "{refused:?}"
    );
    assert_eq!(get_int(&redis, "GET", &gcra).await, tat, "nothing taken");
    assert_eq!(get_int(&redis, "GET", &window).await, 600);

    // The reservation expires by itself if never settled.
    let reservation = redis.keys().key(&["res", &first.to_string()]);
    let ttl = get_int(&redis, "PTTL", &reservation).await;
    assert!(ttl > 0 && ttl <= 120_000, "{ttl}");

    // Settled with the actual 250: refunded; a second settle is a no-op.
    assert!(limiter.settle(first, 250, 0).await.unwrap());
    assert_eq!(get_int(&redis, "GET", &window).await, 250);
    assert!(!limiter.settle(first, 250, 0).await.unwrap());
    assert_eq!(get_int(&redis, "GET", &window).await, 250);
    // An excess is charged: reserved 600, used 700.
    let second = ExecutionId::new();
    let admitted = limiter.admit(second, &subject, &limits, estimate).await;
    assert!(
        matches!(admitted, Admission::Admitted { .. }),
        "{admitted:?}"
    );
    assert!(limiter.settle(second, 700, 0).await.unwrap());
    assert_eq!(get_int(&redis, "GET", &window).await, 950);
    llmq_tests::redis::delete_keys(&settings.redis_url, &settings.redis_prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_and_per_model_limits_count_each_user_and_model_apart() {
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| {
            s.limits.defaults.user_requests_per_minute = 2;
            s.limits.defaults.model_requests_per_minute = 3;
            s.models
                .insert("other-model".into(), ModelSettings::default());
        })
        .spawn()
        .await;
    let as_user = |user: &str, model: Option<&str>| {
        let mut b = body(&format!("from {user}"));
        b["user"] = json!(user);
        if let Some(m) = model {
            b["model"] = json!(m);
        }
        b
    };
    for _ in 0..2 {
        let r = app.submit(&as_user("alice", None)).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert!(header(&r, "RateLimit-Policy")
            .unwrap()
            .contains("\"user\";q=2;w=60"));
    }
    let refused = app.submit(&as_user("alice", None)).await;
    let error = assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(error["details"]["limit"], "user");
    // Another user still has room; the model's limit (3) is reached now.
    let r = app.submit(&as_user("bob", None)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let refused = app.submit(&as_user("carol", None)).await;
    let error = assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(error["details"]["limit"], "model");
    // Another model of the same organisation is counted apart.
    let r = app.submit(&as_user("carol", Some("other-model"))).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    app.cleanup().await;
}

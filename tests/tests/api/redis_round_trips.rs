//! What the worker's hot path costs in Redis, counted by a private
//! `redis-server`: a model without provider limits (and an execution
//! without the response cache) makes no Redis command at all; a model with
//! limits makes two per call (acquire and release). With Redis gone,
//! both go ahead without it.

use std::time::Duration;

use llmq_shared::config::ModelSettings;
use llmq_tests::{PrivateRedis, TestApp};
use serde_json::json;

const N: i64 = 10;

async fn info(url: &str, section: &str) -> String {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Every command the server ran (those inside scripts too).
async fn commands_processed(url: &str) -> i64 {
    info(url, "stats")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_commands_processed in INFO stats")
}

/// Script invocations clients sent (`EVALSHA`, `EVAL`, `SCRIPT`), from
/// `INFO commandstats`: the provider limits' round trips (the commands the
/// scripts run inside count as commands, not round trips).
async fn round_trips(url: &str) -> i64 {
    let stats = info(url, "commandstats").await;
    let calls = |name: &str| -> i64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    calls("evalsha") + calls("eval") + calls("script")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_provider_limit_means_no_redis_round_trip_and_a_limit_means_two() {
    let private = PrivateRedis::start().await;
    let url = private.url();
    let app = TestApp::builder()
        .configure({
            let url = url.clone();
            move |s| {
                s.redis_url = url;
                s.models.insert(
                    "gpt-4o".into(),
                    ModelSettings {
                        max_concurrency: Some(1_000),
                        ..Default::default()
                    },
                );
            }
        })
        .spawn()
        .await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let batch = |model: &'static str| {
        let run = run.clone();
        let app = &app;
        async move {
            let mut ids = Vec::new();
            for i in 0..N {
                let body = json!({"prompt": "summarize", "model": model,
                    "input": {"text": format!("round trips {run} {model} {i}")}});
                ids.push(
                    app.submit_accepted(&body).await["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            for e in app.wait_all_terminal(&ids, Duration::from_secs(20)).await {
                assert_eq!(e["status"], "succeeded", "{e:#}");
            }
        }
    };

    let before = commands_processed(&url).await;
    batch("gpt-4o-mini").await;
    let unlimited = commands_processed(&url).await - before - 1;
    assert_eq!(unlimited, 0, "Redis commands without provider limits");

    let before = round_trips(&url).await;
    batch("gpt-4o").await;
    let limited = round_trips(&url).await - before;
    // Two per call, plus loading each script once (a NOSCRIPT answer and
    // its SCRIPT LOAD).
    assert!(
        (2 * N..=2 * N + 4).contains(&limited),
        "{limited} Redis commands for {N} limited calls"
    );
    // Redis gone: limited calls go ahead without the limits, and a cached
    // request runs uncached; nothing fails.
    let mut private = private;
    private.stop().await;
    batch("gpt-4o").await;
    let body = json!({"prompt": "summarize", "cache": true,
        "input": {"text": format!("round trips {run} cached while down")}});
    let id = app.submit_accepted(&body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = app.wait_until_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    app.cleanup().await;
}

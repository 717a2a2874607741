//! Redis as a component: the handle reconnects after Redis comes back, a
//! Redis that is down at start stops neither the API nor the worker, and
//! a test's keys live under its own prefix and go with its cleanup.

use std::time::Duration;

use llmq_shared::redis::create_pool;
use llmq_tests::redis::count_keys;
use llmq_tests::{PrivateRedis, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_handle_reconnects_when_a_stopped_redis_returns() {
    let mut server = PrivateRedis::start().await;
    let settings = llmq_shared::Settings {
        redis_url: server.url(),
        redis_timeout_ms: 300,
        ..Default::default()
    };
    let redis = create_pool(&settings).unwrap();
    redis.ping().await.expect("redis answers");

    server.stop().await;
    let e = redis
        .ping()
        .await
        .expect_err("a stopped redis cannot answer");
    assert!(e.is_retryable(), "{e}");

    server.resume().await;
    redis.ping().await.expect("the handle reconnects by itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_worker_start_and_run_executions_while_redis_is_down() {
    let mut server = PrivateRedis::start().await;
    let url = server.url();
    server.stop().await;
    let app = TestApp::builder()
        .configure(move |s| {
            s.redis_url = url;
            s.redis_timeout_ms = 200;
        })
        .spawn()
        .await;
    let id = app.submit_summary("Redis is down while this runs.").await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tests_redis_keys_are_its_own_and_go_with_its_cleanup() {
    let first = TestApp::builder().without_worker().spawn().await;
    let second = TestApp::builder().without_worker().spawn().await;
    assert_ne!(first.settings.redis_prefix, second.settings.redis_prefix);
    let redis = create_pool(&first.settings).unwrap();
    let key = redis.keys().key(&["probe"]);
    assert!(key.starts_with(&first.settings.redis_prefix), "{key}");
    redis
        .run(|mut c| async move {
            ::redis::cmd("SET")
                .arg(&key)
                .arg("1")
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .unwrap();
    assert_eq!(count_keys(&redis).await, 1);
    let other = create_pool(&second.settings).unwrap();
    assert_eq!(count_keys(&other).await, 0, "the other test sees none");

    first.cleanup().await;
    assert_eq!(count_keys(&redis).await, 0, "cleanup deleted the key");
    second.cleanup().await;
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The integration-test harness: `TestApp` (an isolated llmq per test over
//! the real Postgres and RabbitMQ, with the fake model provider), the
//! per-test database, RabbitMQ and Redis helpers (a private redis-server
//! for outage tests), the worker as a child process and
//! runtime skips that the totals count as skipped.
//! The tests themselves are in `tests/api.rs`.

pub mod amqp;
pub mod app;
pub mod database;
pub mod prompts;
pub mod receiver;
pub mod redis;
pub mod skip;
pub mod sse;
pub mod worker_process;

pub use self::redis::PrivateRedis;
pub use app::{assert_error, is_terminal, TestApp, TestAppBuilder};
pub use database::TestDatabase;
pub use prompts::TempPrompts;
pub use skip::skip;
pub use sse::{SseClient, SseEvent, SseItem};
pub use worker_process::WorkerProcess;

/// Logs go to the test's captured output, and only when `RUST_LOG` is set.
pub fn init_tracing() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

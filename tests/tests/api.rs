#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Integration tests of llmq over the real Postgres and RabbitMQ: one test
//! binary, one module per concern, one isolated `TestApp` per test.

mod api {
    mod executions;
    mod failures;
    mod group_commit;
    mod hardening;
    mod lifecycle;
    mod openapi;
    mod operations;
    mod pipeline;
    mod prompts;
    mod shutdown;
    mod sql;
    mod telemetry;
    mod validation;
    mod webhooks;
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Integration tests of llmq over the real Postgres and RabbitMQ: one test
//! binary, one module per concern, one isolated `TestApp` per test.

mod api {
    mod batches;
    mod executions;
    mod failures;
    mod hardening;
    mod lifecycle;
    mod openapi;
    mod operations;
    mod prompts;
    mod shutdown;
    mod sql;
    mod validation;
}

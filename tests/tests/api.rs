#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Integration tests of llmq over the real Postgres and RabbitMQ: one test
//! binary, one module per concern, one isolated `TestApp` per test.

mod api {
    mod cache;
    mod cli;
    mod events;
    mod executions;
    mod failures;
    mod fairness;
    mod group_commit;
    mod hardening;
    mod isolation;
    mod lifecycle;
    mod limits;
    mod limits_batch;
    mod openapi;
    mod operations;
    mod pipeline;
    mod prompt_registry;
    mod prompts;
    mod redis;
    mod redis_round_trips;
    mod retrieval;
    mod shutdown;
    mod sql;
    mod structured_output;
    mod telemetry;
    mod templates;
    mod tenancy;
    mod tools;
    mod usage;
    mod validation;
    mod webhooks;
}

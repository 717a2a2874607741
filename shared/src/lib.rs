//! llmq's shared library: the domain model, Postgres repositories, the
//! RabbitMQ topology, configuration and telemetry used by both binaries.
//!
//! This file only declares and re-exports; each concept lives in its module.

pub mod backoff;
pub mod batch;
pub mod canonical;
pub mod config;
pub mod db;
pub mod event_log;
pub mod events;
pub mod execution;
pub mod ids;
pub mod mask;
pub mod metrics;
pub mod prompt;
pub mod queue;
pub mod redis;
pub mod resource;
pub mod sanitize;
pub mod shutdown;
pub mod step;
pub mod telemetry;
pub mod trace;
pub mod webhook;

pub use config::Settings;
pub use execution::{ExecutionId, ExecutionStatus};

//! llmq-worker: consumes executions and runs their pipelines; the same
//! binary runs the outbox relay, webhook delivery and the collection
//! indexer. Roles are chosen by configuration so that
//! pools scale separately.

pub mod cache;
pub mod consumer;
pub mod context;
pub mod embeddings;
pub mod fairness;
pub mod indexer;
pub mod open_files;
pub mod provider;
pub mod provider_limits;
pub mod relay;
pub mod retry;
pub mod runner;
pub mod startup;
pub mod steps;
pub mod tools;
pub mod webhooks;
pub mod writer;

pub use startup::Worker;

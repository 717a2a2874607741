//! llmq-api: the HTTP front end. Handlers authenticate, validate and hand
//! off to services; the execution itself runs in llmq-worker.

pub mod access_log;
pub mod auth;
pub mod body_timeout;
pub mod cli;
pub mod collection_resources;
pub mod error;
pub mod http_telemetry;
pub mod openapi;
pub mod outbox;
pub mod resources;
pub mod routes;
pub mod services;
pub mod startup;
pub mod state;
pub mod tool_resources;
pub mod webhook_resources;

pub use startup::Application;

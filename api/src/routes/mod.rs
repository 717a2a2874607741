//! HTTP handlers: extract, call one service function, map the result.

pub mod executions;
pub mod health;

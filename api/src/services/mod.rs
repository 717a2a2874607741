//! The API's services: plain functions over plain types, no actix, so
//! tests, CLIs and other front ends run the same logic as the handlers.

pub mod executions;

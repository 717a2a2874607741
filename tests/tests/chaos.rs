#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fault and chaos tests: the guarantees of docs/architecture.md ("Guarantees")
//! under killed workers, broker and database outages, provider fault
//! storms, cancellation, duplicated requests and poison messages.
//!
//! A binary of its own: some tests stop the machine's real PostgreSQL or
//! cut RabbitMQ off, which would break tests running beside them, and cargo
//! runs test binaries one after another. Inside this binary the disruptive
//! tests take `support::exclusive()` and the others `support::shared()`.
//!
//! `make chaos` (scripts/chaos.sh) runs a longer SIGKILL test through the
//! `CHAOS_*` variables read by `chaos::killed_workers`.

mod chaos {
    pub mod support;

    mod broker_outage;
    mod cancellation;
    mod database_outages;
    mod event_log;
    mod idempotency;
    mod killed_workers;
    mod poison_messages;
    mod provider_faults;
    mod provider_limits;
    mod tools;
    mod webhooks;
}

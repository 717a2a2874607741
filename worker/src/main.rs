//! `llmq-worker`: runs the roles named in `worker.roles` (default:
//! `executions` and `relay`) until SIGTERM/SIGINT, then drains.

use llmq_shared::{shutdown, telemetry, Settings};
use llmq_worker::Worker;
use tokio_util::sync::CancellationToken;

/// glibc's malloc was a quarter of the worker's CPU under load (many
/// small, short-lived allocations across threads); jemalloc takes a
/// fraction of that and returns freed memory steadily.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("llmq-worker");
    let settings = Settings::load()?;
    // Before anything starts: a SIGTERM during start-up is kept.
    let stop_signal = shutdown::install();
    tracing::info!(settings = ?settings, "starting llmq-worker");
    let stop = CancellationToken::new();
    let worker = Worker::build(settings, stop.clone()).await?;
    tokio::spawn(async move {
        stop_signal.await;
        tracing::info!("shutdown requested");
        stop.cancel();
    });
    worker.run_until_stopped().await
}

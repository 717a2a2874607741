//! Building and running a worker process: its roles, the lease renewer and
//! the order of shutdown (stop consuming → drain → stop the rest).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use llmq_shared::db::{self, leases};
use llmq_shared::queue::{Publisher, Topology};
use llmq_shared::Settings;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::{lease_owner, WorkerContext};
use crate::provider::ProviderClient;
use crate::writer::Writer;
use crate::{consumer, indexer, relay, webhooks};

pub struct Worker {
    ctx: Arc<WorkerContext>,
    stop: CancellationToken,
    /// Stops the publisher, relay and renewer after the drain.
    background: CancellationToken,
    /// The publisher's session, closed (channel, then connection) last.
    sessions: TaskTracker,
}

impl Worker {
    pub async fn build(mut settings: Settings, stop: CancellationToken) -> anyhow::Result<Self> {
        settings.worker.check_roles().map_err(anyhow::Error::msg)?;
        settings.worker.concurrency =
            crate::open_files::fit_concurrency(settings.worker.concurrency);
        // A bad key stops the worker at start, not at its first delivery.
        llmq_shared::webhook::seal::Sealer::from_config(&settings.webhooks.encryption_key)?;
        // A tool file that breaks its contract stops the worker at start.
        let tools = crate::tools::ToolRunner::load(&settings)?;
        let settings = Arc::new(settings);
        if !settings.worker.metrics_addr.is_empty() {
            let addr = settings
                .worker
                .metrics_addr
                .parse()
                .context("worker.metrics_addr")?;
            if let Err(e) = llmq_shared::metrics::install_with_listener(addr) {
                tracing::warn!(error = %e, "metrics listener not started");
            }
        }
        let pool = db::create_batch_pool(&settings.database_url, settings.db_pool_size)?;
        // Only the "started" step batches use it: a few connections.
        let trace_pool = db::create_trace_pool(&settings.database_url, 4)?;
        // Connects on first use: a Redis that is down does not stop the worker.
        let redis = Arc::new(llmq_shared::redis::create_pool(&settings)?);
        let background = CancellationToken::new();
        let owner = lease_owner();
        let topology = Topology::new(&settings.queue_prefix);
        let sessions = TaskTracker::new();
        let publisher = Publisher::start(
            &settings.amqp_url,
            &format!("llmq-worker {owner} publisher"),
            topology,
            background.clone(),
            &sessions,
        );
        sessions.close();
        let writer = Writer::start(
            pool.clone(),
            trace_pool,
            publisher.clone(),
            &owner,
            settings.lease(),
            settings.republish_after(),
        );
        let limiter = Arc::new(llmq_shared::limits::Limiter::new(
            settings.limits.clone(),
            redis.clone(),
        ));
        let ctx = Arc::new(WorkerContext {
            fairness: crate::fairness::Fairness::new(&settings.worker),
            limits: crate::provider_limits::ProviderLimits::new(redis.clone()),
            settings,
            pool,
            redis,
            limiter,
            writer,
            publisher,
            provider: ProviderClient::new()?,
            tools,
            prompts: Default::default(),
            owner,
            running: Mutex::new(Default::default()),
        });
        Ok(Self {
            ctx,
            stop,
            background,
            sessions,
        })
    }

    /// Runs the configured roles until the stop token fires, then drains.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let roles = &self.ctx.settings.worker.roles;
        tracing::info!(owner = %self.ctx.owner, roles = ?roles, "llmq-worker starting");
        let renewer = tokio::spawn(renew_leases(self.ctx.clone(), self.background.clone()));
        let canceller = tokio::spawn(watch_cancellations(
            self.ctx.clone(),
            self.background.clone(),
        ));
        let relay = roles
            .iter()
            .any(|r| r == "relay")
            .then(|| tokio::spawn(relay::run_relay(self.ctx.clone(), self.background.clone())));
        let webhooks = roles.iter().any(|r| r == "webhooks").then(|| {
            tokio::spawn(webhooks::run_webhooks(
                self.ctx.clone(),
                self.background.clone(),
            ))
        });
        let indexer = roles.iter().any(|r| r == "indexer").then(|| {
            tokio::spawn(indexer::run_indexer(
                self.ctx.clone(),
                self.background.clone(),
            ))
        });
        if roles.iter().any(|r| r == "executions") {
            let interrupt = CancellationToken::new();
            consumer::run_consumer(self.ctx.clone(), self.stop.clone(), interrupt).await;
        } else {
            self.stop.cancelled().await;
        }
        // Whatever is still marked running here was interrupted: give it back.
        let leftovers = self.ctx.running_ids();
        if !leftovers.is_empty() {
            if let Err(e) = self.ctx.writer.release(&leftovers).await {
                tracing::warn!(error = %e, "cannot give leases back; they expire instead");
            }
        }
        self.background.cancel();
        let _ = renewer.await;
        let _ = canceller.await;
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        if let Some(indexer) = indexer {
            let _ = indexer.await;
        }
        if let Some(webhooks) = webhooks {
            match webhooks.await {
                Ok(Err(e)) => tracing::error!(error = %e, "webhook delivery could not run"),
                Err(e) => tracing::error!(error = %e, "webhook delivery panicked"),
                Ok(Ok(())) => {}
            }
        }
        self.sessions.wait().await;
        tracing::info!("llmq-worker stopped");
        Ok(())
    }
}

/// Polls for cancel requests of executions running here and fires their
/// tokens, which aborts the in-flight model call.
async fn watch_cancellations(ctx: Arc<WorkerContext>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if ctx.running.lock().map(|r| r.is_empty()).unwrap_or(true) {
            continue;
        }
        let requested = async {
            let client = ctx.pool.get().await?;
            leases::cancel_requests(&client, &ctx.owner).await
        }
        .await;
        match requested {
            Ok(ids) => {
                for id in ids {
                    if ctx.cancel_running(id) {
                        tracing::info!(execution.id = %id, "cancel requested; stopping");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read cancel requests"),
        }
    }
}

/// Renews every lease this process holds, in one statement per period.
/// An idle worker holds none and sends nothing: an execution is marked
/// running here before its claim takes the lease, so a period that sees
/// nothing running has no lease to renew (and one claimed just after is
/// renewed by the next period, well within its lease).
async fn renew_leases(ctx: Arc<WorkerContext>, stop: CancellationToken) {
    let lease = ctx.settings.lease();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(lease / 3) => {}
        }
        if ctx.running.lock().map(|r| r.is_empty()).unwrap_or(true) {
            continue;
        }
        let result = async {
            let client = ctx.pool.get().await?;
            leases::renew_leases(&client, &ctx.owner, lease).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "lease renewal failed");
        }
    }
}

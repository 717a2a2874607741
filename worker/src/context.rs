//! What every execution task of a worker process shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use llmq_shared::db::Pool;
use llmq_shared::execution::ExecutionId;
use llmq_shared::prompt::PromptCache;
use llmq_shared::queue::Publisher;
use llmq_shared::Settings;

use tokio_util::sync::CancellationToken;

use crate::provider::ProviderClient;
use crate::tools::ToolRunner;
use crate::writer::Writer;

pub struct WorkerContext {
    pub settings: Arc<Settings>,
    pub pool: Pool,
    /// Shared short-lived state: limits, reservations (see `llmq_shared::redis`).
    pub redis: Arc<llmq_shared::redis::Redis>,
    /// Settles the token and spend reservations of finished executions.
    pub limiter: Arc<llmq_shared::limits::Limiter>,
    /// Claims, step rows and outcomes, group-committed across executions.
    pub writer: Writer,
    pub publisher: Arc<Publisher>,
    pub provider: ProviderClient,
    /// The tools of `tools_dir` and the client that calls them.
    pub tools: ToolRunner,
    pub prompts: PromptCache,
    /// This process's lease owner id: host, pid and a random suffix.
    pub owner: String,
    /// Executions running in this process, with the token that cancels
    /// each; also keeps a duplicate delivery from running twice here.
    pub running: Mutex<HashMap<ExecutionId, CancellationToken>>,
    /// Per organisation: its executions running here and its queue of
    /// deferred ones (see `crate::fairness`).
    pub fairness: crate::fairness::Fairness,
    /// Provider limits shared by every worker (see `crate::provider_limits`).
    pub limits: crate::provider_limits::ProviderLimits,
}

/// Marks an execution as running here for as long as it lives.
pub struct RunningGuard<'a> {
    ctx: &'a WorkerContext,
    id: ExecutionId,
    /// Fired when the client cancels this execution.
    pub cancel: CancellationToken,
}

impl WorkerContext {
    /// Writes an execution's outcome (`Writer::finish`) and, once it is
    /// committed, settles its reservation with the usage it records, when
    /// it has one (`reserved`: `Execution::reserved`; an execution under
    /// no token budget or spend cap costs no Redis round trip). False when
    /// the lease was lost: then whoever holds it settles.
    pub async fn finish(
        &self,
        finish: llmq_shared::db::executions::Finish,
        reserved: bool,
    ) -> crate::writer::Answer<bool> {
        let id = finish.id;
        let usage = finish.outcome.usage;
        let done = self.writer.finish(finish).await?;
        if done && reserved {
            self.settle(id, usage);
        }
        Ok(done)
    }

    /// Replaces `id`'s reservation by `usage` (none: nothing was spent), in
    /// the background: the outcome is committed already, and settling is
    /// idempotent (a second settle of the same id changes nothing). Dropped
    /// at shutdown at worst, and then the reservation expires by itself.
    pub fn settle(&self, id: ExecutionId, usage: Option<llmq_shared::execution::Usage>) {
        let tokens = usage.map(|u| u.total_tokens.max(0) as u64).unwrap_or(0);
        let spend = usage
            .and_then(|u| u.cost_usd)
            .map(|c| (c * 1e6).ceil().max(0.0) as u64)
            .unwrap_or(0);
        let limiter = self.limiter.clone();
        tokio::spawn(async move {
            if let Err(e) = limiter.settle(id, tokens, spend).await {
                tracing::debug!(error = %e, execution.id = %id, "reservation not settled; it expires by itself");
            }
        });
    }

    /// None when this process already runs `id`.
    pub fn start_running(&self, id: ExecutionId) -> Option<RunningGuard<'_>> {
        let mut running = self.running.lock().ok()?;
        if running.contains_key(&id) {
            return None;
        }
        let cancel = CancellationToken::new();
        running.insert(id, cancel.clone());
        Some(RunningGuard {
            ctx: self,
            id,
            cancel,
        })
    }

    pub fn running_ids(&self) -> Vec<uuid::Uuid> {
        self.running
            .lock()
            .map(|r| r.keys().map(|id| id.0).collect())
            .unwrap_or_default()
    }

    /// Fires the cancel token of `id` if it runs here.
    pub fn cancel_running(&self, id: ExecutionId) -> bool {
        match self.running.lock().ok().and_then(|r| r.get(&id).cloned()) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.ctx.running.lock() {
            running.remove(&self.id);
        }
    }
}

pub fn lease_owner() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{}-{}-{}",
        host.trim(),
        std::process::id(),
        &suffix[suffix.len() - 8..]
    )
}

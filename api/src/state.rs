//! What every request handler shares: pools, the publisher, caches. Holds
//! nothing another replica would need: all state of record is in Postgres.

use std::sync::Arc;

use llmq_shared::batch::Batcher;
use llmq_shared::db::{DbError, Pool};
use llmq_shared::events::Subscriber;
use llmq_shared::execution::{Execution, NewExecution};
use llmq_shared::prompt::{LabelCache, PromptCache};
use llmq_shared::queue::Publisher;
use llmq_shared::Settings;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::outbox::Outbox;

pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: Pool,
    pub publisher: Arc<Publisher>,
    pub prompts: PromptCache,
    pub labels: LabelCache,
    /// New executions, inserted many per statement (group commit).
    pub inserts: Batcher<NewExecution, Result<Execution, DbError>>,
    /// Lifecycle events heard by this process (long-poll wake-ups).
    pub events: Arc<Subscriber>,
    /// Accepted executions to publish (with a confirm) in the background.
    pub to_publish: Outbox,
    pub metrics: Option<PrometheusHandle>,
}

impl AppState {
    /// A pooled connection; an unreachable database is a 503.
    pub async fn db(&self) -> Result<deadpool_postgres::Object, crate::error::ApiError> {
        Ok(self
            .pool
            .get()
            .await
            .map_err(llmq_shared::db::DbError::from)?)
    }

    /// The deadline of one request's database and broker work.
    pub fn deadline(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.settings.api.request_timeout_secs.max(1))
    }
}

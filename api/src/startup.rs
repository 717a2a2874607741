//! Building and running the API: pools, publisher, prompt sync, background
//! tasks and the HTTP server, all stopped by one cancellation token.
//!
//! Shutdown order: the server stops taking connections and finishes the
//! requests it has; then the publish pipeline drains (what was accepted is
//! published and confirmed, held outbox marks cleared) under a deadline;
//! then the events subscriber and the publisher close their channels and
//! connections, in that order. Nothing is aborted.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use llmq_shared::db::{self, Pool};
use llmq_shared::events::{StreamBuffers, Subscriber};
use llmq_shared::prompt::{load_prompt_dir, LabelCache, PromptCache};
use llmq_shared::queue::{Publisher, Topology};
use llmq_shared::Settings;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{json_error, ApiError};
use crate::http_telemetry::{record_http_metrics, trace_requests};
use crate::outbox::Pipeline;
use crate::routes::{self, Served};
use crate::services::executions::submit::{insert_pending, Inserts, PendingInsert};
use crate::state::AppState;

/// How long the publish pipeline may take to drain at shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

pub struct Application {
    port: u16,
    /// The operations listener's port, when `api.ops_addr` is set.
    ops_port: Option<u16>,
    /// The API's server, and the operations server when it has its own.
    servers: Vec<Server>,
    pipeline: Pipeline,
    /// Stops the publisher and the events subscriber, after the drain.
    broker: CancellationToken,
    /// The publisher's and subscriber's sessions.
    sessions: TaskTracker,
    /// Counts the events subscriber's sessions (bound queues).
    event_sessions: tokio::sync::watch::Receiver<u64>,
}

impl Application {
    /// Binds the listener (port 0 picks a free one), syncs prompt files and
    /// starts the background tasks. The database must be migrated.
    pub async fn build(settings: Settings, cancel: CancellationToken) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let pool = db::create_pool(&settings.database_url, settings.db_pool_size)?;
        sync_prompts(&settings, &pool).await?;
        // Connects on first use: a Redis that is down now does not stop the
        // API; each limit applies its down-policy until Redis answers.
        let redis = Arc::new(llmq_shared::redis::create_pool(&settings)?);

        let topology = Topology::new(&settings.queue_prefix);
        let broker = CancellationToken::new();
        let sessions = TaskTracker::new();
        let publisher = Publisher::start(
            &settings.amqp_url,
            "llmq-api",
            topology.clone(),
            broker.clone(),
            &sessions,
        );
        let buffers = StreamBuffers {
            per_execution: settings.events.stream_buffer,
            all: settings.events.tenant_stream_buffer,
        };
        let (events, consume_events) = Subscriber::start_with(
            &settings.amqp_url,
            "llmq-api events",
            topology,
            broker.clone(),
            buffers,
        );
        sessions.spawn(consume_events);
        let event_sessions = events.sessions();
        let label_moves = events.label_moves();
        let key_revocations = events.key_revocations();
        let limit_changes = events.limit_changes();
        let (to_publish, pipeline) = Pipeline::start(
            publisher.clone(),
            pool.clone(),
            // Well before the relay would republish the row.
            settings.republish_after().min(Duration::from_secs(2)) / 2,
        );
        let inserts = insert_batcher(pool.clone(), settings.republish_after());
        let state = web::Data::new(AppState {
            settings: settings.clone(),
            pool,
            limiter: Arc::new(llmq_shared::limits::Limiter::new(
                settings.limits.clone(),
                redis.clone(),
            )),
            redis,
            org_limits: crate::services::limits::OrgLimitsCache::new(Duration::from_millis(
                settings.limits.settings_cache_ms,
            )),
            publisher,
            prompts: PromptCache::default(),
            labels: LabelCache::new(Duration::from_millis(settings.api.label_cache_ms)),
            inserts,
            events,
            to_publish,
            metrics: llmq_shared::metrics::install(),
            sealer: llmq_shared::webhook::seal::Sealer::from_config(
                &settings.webhooks.encryption_key,
            )?,
            destinations: (&settings.webhooks).into(),
            keys: crate::auth::KeyCache::new(
                Duration::from_secs(settings.api.key_cache_secs),
                Duration::from_secs(settings.api.key_negative_cache_secs),
            ),
        });
        sessions.spawn(forget_revoked_keys(
            key_revocations,
            state.clone(),
            broker.clone(),
        ));
        sessions.spawn(invalidate_moved_labels(
            label_moves,
            state.clone(),
            broker.clone(),
        ));
        sessions.spawn(invalidate_changed_limits(
            limit_changes,
            state.clone(),
            broker.clone(),
        ));
        sessions.close();

        let listener = TcpListener::bind(&settings.api.addr)
            .with_context(|| format!("binding {}", settings.api.addr))?;
        let port = listener.local_addr()?.port();
        let ops_listener = match settings.api.ops_addr.as_str() {
            "" => None,
            addr => Some(
                TcpListener::bind(addr).with_context(|| format!("binding api.ops_addr {addr}"))?,
            ),
        };
        let ops_port = match &ops_listener {
            Some(l) => Some(l.local_addr()?.port()),
            None => None,
        };
        let served = if ops_listener.is_some() {
            Served::Api
        } else {
            Served::All
        };
        let limit = settings.api.max_body_bytes;
        let body_timeout = Duration::from_secs(settings.api.body_timeout_secs.max(1));
        let app = move |served: Served| {
            App::new()
                .app_data(state.clone())
                .app_data(
                    // JSON only: `application/json` or `application/*+json`;
                    // another type, or none, is a 415.
                    web::JsonConfig::default()
                        .limit(limit)
                        .content_type(is_json)
                        .content_type_required(true)
                        .error_handler(move |e, _| json_error(e, limit).into()),
                )
                .app_data(
                    web::PathConfig::default()
                        .error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()),
                )
                .app_data(
                    web::QueryConfig::default()
                        .error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()),
                )
                .wrap(from_fn(move |req, next| {
                    crate::body_timeout::limit_body_time(body_timeout, req, next)
                }))
                .wrap(from_fn(record_http_metrics))
                .wrap(actix_web::middleware::Compat::new(
                    crate::access_log::logger(),
                ))
                .wrap(from_fn(trace_requests))
                .configure(|cfg| served.configure(cfg))
                .default_service(web::to(move |req| routes::no_route(served, req)))
        };
        let api_app = app.clone();
        let mut server = HttpServer::new(move || api_app(served))
            .listen(listener)?
            .disable_signals()
            .backlog(4096)
            .client_request_timeout(body_timeout)
            .max_connections(settings.api.max_connections.max(1))
            .shutdown_timeout(settings.api.max_wait_secs.min(30));
        if settings.api.http_workers > 0 {
            server = server.workers(settings.api.http_workers);
        }
        let mut servers = vec![server.run()];
        if let Some(listener) = ops_listener {
            // Scrapes and probes are few: one thread serves them.
            let ops = HttpServer::new(move || app(Served::Ops))
                .listen(listener)?
                .disable_signals()
                .workers(1)
                .client_request_timeout(body_timeout)
                .shutdown_timeout(5)
                .run();
            servers.push(ops);
            tracing::info!(port = ?ops_port, "llmq-api operations listening");
        }
        for server in &servers {
            let handle = server.handle();
            let cancel = cancel.clone();
            // Ends when the server stops, which `run_until_stopped` awaits.
            tokio::spawn(async move {
                cancel.cancelled().await;
                handle.stop(true).await;
            });
        }
        tracing::info!(port, "llmq-api listening");
        Ok(Self {
            port,
            ops_port,
            servers,
            pipeline,
            broker,
            sessions,
            event_sessions,
        })
    }

    /// Resolves once this process listens to the events exchange (label
    /// moves and key revocations announced from then on reach it).
    pub fn events_bound(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut sessions = self.event_sessions();
        async move {
            let _ = sessions.wait_for(|n| *n > 0).await;
        }
    }

    /// Counts the events subscriber's sessions: each time it (re)binds.
    pub fn event_sessions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.event_sessions.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where health, readiness, metrics and the document are served, when
    /// not on [`Self::port`].
    pub fn ops_port(&self) -> Option<u16> {
        self.ops_port
    }

    /// Serves until the cancellation token given to `build` fires, then
    /// stops in order (see the module's doc).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let served = futures::future::join_all(self.servers).await;
        self.pipeline.drain(DRAIN_DEADLINE).await;
        self.broker.cancel();
        self.sessions.wait().await;
        tracing::info!("llmq-api stopped");
        served.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }
}

/// Forgets a label's cached rule as soon as any API process announces that
/// it moved; after announcements may have been missed (the events queue was
/// (re)bound, or this task lagged), every label. Runs until the broker
/// sessions stop.
async fn invalidate_moved_labels(
    mut moves: tokio::sync::broadcast::Receiver<llmq_shared::events::LabelEvent>,
    state: web::Data<AppState>,
    stop: CancellationToken,
) {
    use llmq_shared::events::LabelEvent;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            moved = moves.recv() => match moved {
                Ok(LabelEvent::Moved(m)) => {
                    tracing::debug!(prompt = %m.prompt, label = %m.label, "label moved; cache entry cleared");
                    state.labels.invalidate(&m.prompt, &m.label);
                }
                Ok(LabelEvent::Resubscribed) | Err(RecvError::Lagged(_)) => state.labels.invalidate_all(),
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// Drops a key from this process's cache as soon as any API process
/// announces its revocation; after announcements may have been missed,
/// every key (the next request of each loads it again). Runs until the
/// broker sessions stop.
async fn forget_revoked_keys(
    mut revocations: tokio::sync::broadcast::Receiver<llmq_shared::events::KeyEvent>,
    state: web::Data<AppState>,
    stop: CancellationToken,
) {
    use llmq_shared::events::KeyEvent;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            heard = revocations.recv() => match heard {
                Ok(KeyEvent::Revoked(r)) => {
                    tracing::debug!("key revoked; cache entry cleared");
                    state.keys.forget(&r.key_hash);
                }
                Ok(KeyEvent::Resubscribed) | Err(RecvError::Lagged(_)) => state.keys.forget_all(),
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// Forgets an organisation's limits when some replica changed them (and
/// all of them after a resubscription, when changes may have been missed).
async fn invalidate_changed_limits(
    mut changes: tokio::sync::broadcast::Receiver<llmq_shared::events::LimitsEvent>,
    state: web::Data<AppState>,
    stop: CancellationToken,
) {
    use llmq_shared::events::LimitsEvent;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.recv() => match changed {
                Ok(LimitsEvent::Changed(c)) => state.org_limits.invalidate(&c.tenant),
                Ok(LimitsEvent::Resubscribed) | Err(RecvError::Lagged(_)) => state.org_limits.invalidate_all(),
                Err(RecvError::Closed) => return,
            }
        }
    }
}

fn is_json(mime: actix_web::mime::Mime) -> bool {
    use actix_web::mime;
    mime.type_() == mime::APPLICATION
        && (mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON))
}

/// Loads `prompts/` into the registry; a changed existing version aborts.
pub async fn sync_prompts(settings: &Settings, pool: &Pool) -> anyhow::Result<()> {
    let files = load_prompt_dir(&settings.prompts_dir)
        .with_context(|| format!("loading prompts from {}", settings.prompts_dir.display()))?;
    let mut client = pool.get().await.map_err(db::DbError::from)?;
    let inserted = db::prompts::sync_prompt_files(&mut client, &files).await?;
    tracing::info!(files = files.len(), inserted, "prompt files synced");
    Ok(())
}

/// Inserts concurrent submissions' executions many per statement: under
/// load one commit carries dozens of them, and a lone one runs at once.
fn insert_batcher(pool: Pool, republish_after: Duration) -> Inserts {
    db::spawn_batcher("insert", pool, move |client, pending: &[PendingInsert]| {
        insert_pending(client, pending, republish_after)
    })
}

//! Building and running the API: pools, publisher, prompt sync, background
//! tasks and the HTTP server, all stopped by one cancellation token.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context;
use futures::FutureExt;
use llmq_shared::batch::Batcher;
use llmq_shared::db::{self, Pool};
use llmq_shared::execution::{Execution, ExecutionId, NewExecution};
use llmq_shared::prompt::{load_prompt_dir, LabelCache, PromptCache};
use llmq_shared::queue::{Publisher, Topology};
use llmq_shared::Settings;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{json_error, ApiError};
use crate::routes;
use crate::state::AppState;
use crate::waiters::{run_event_listener, Waiters};

pub struct Application {
    port: u16,
    server: Server,
    background: Vec<JoinHandle<()>>,
}

impl Application {
    /// Binds the listener (port 0 picks a free one), syncs prompt files and
    /// starts the background tasks. The database must be migrated.
    pub async fn build(settings: Settings, cancel: CancellationToken) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let pool = db::create_pool(&settings.database_url, settings.db_pool_size)?;
        sync_prompts(&settings, &pool).await?;

        let topology = Topology::new(&settings.queue_prefix);
        let publisher = Publisher::start(
            &settings.amqp_url,
            "llmq-api",
            topology.clone(),
            cancel.clone(),
        );
        let waiters = Arc::new(Waiters::default());
        let (confirmed, confirmed_rx) = mpsc::channel(16_384);
        let (to_publish, to_publish_rx) = mpsc::channel(PUBLISH_BACKLOG);
        let background = vec![
            tokio::spawn(run_event_listener(
                settings.amqp_url.clone(),
                topology,
                waiters.clone(),
                cancel.clone(),
            )),
            tokio::spawn(publish_accepted(
                publisher.clone(),
                to_publish_rx,
                confirmed,
            )),
            tokio::spawn(mark_confirmed_publishes(
                pool.clone(),
                confirmed_rx,
                // Well before the relay would republish the row.
                Duration::from_secs(settings.api.republish_after_secs).min(Duration::from_secs(2))
                    / 2,
            )),
        ];
        let inserts = insert_batcher(
            pool.clone(),
            Duration::from_secs(settings.api.republish_after_secs),
        );
        let state = web::Data::new(AppState {
            settings: settings.clone(),
            pool,
            publisher,
            prompts: PromptCache::default(),
            labels: LabelCache::new(Duration::from_millis(settings.api.label_cache_ms)),
            inserts,
            waiters,
            to_publish,
            metrics: llmq_shared::metrics::install(),
        });

        let listener = TcpListener::bind(&settings.api.addr)
            .with_context(|| format!("binding {}", settings.api.addr))?;
        let port = listener.local_addr()?.port();
        let limit = settings.api.max_body_bytes;
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(limit)
                        .content_type_required(false)
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
                .wrap(from_fn(record_http_metrics))
                .wrap(actix_web::middleware::Compat::new(access_log()))
                .service(routes::executions::submit)
                .service(routes::executions::get)
                .service(routes::executions::steps)
                .service(routes::executions::cancel)
                .service(routes::health::healthz)
                .service(routes::health::readyz)
                .service(routes::health::metrics)
                .service(routes::health::openapi)
                .default_service(web::to(not_found))
        })
        .listen(listener)?
        .disable_signals()
        .backlog(4096)
        .shutdown_timeout(settings.api.max_wait_secs.min(30));
        if settings.api.http_workers > 0 {
            server = server.workers(settings.api.http_workers);
        }
        let server = server.run();
        let handle = server.handle();
        let stopper = tokio::spawn(async move {
            cancel.cancelled().await;
            handle.stop(true).await;
        });
        let mut background = background;
        background.push(stopper);
        tracing::info!(port, "llmq-api listening");
        Ok(Self {
            port,
            server,
            background,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the cancellation token given to `build` fires.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        for task in self.background {
            task.abort();
        }
        Ok(())
    }
}

/// One line per request (method, path, status, duration) at info level.
fn access_log() -> actix_web::middleware::Logger {
    actix_web::middleware::Logger::new("%r %s %Dms").log_target("llmq_api::http")
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
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
fn insert_batcher(
    pool: Pool,
    republish_after: Duration,
) -> Batcher<NewExecution, Result<Execution, db::DbError>> {
    db::spawn_batcher("insert", pool, move |client, new: &[NewExecution]| {
        async move {
            let refs: Vec<&NewExecution> = new.iter().collect();
            db::executions::insert_executions(client, &refs, republish_after).await
        }
        .boxed()
    })
}

/// Accepted executions waiting for their publish; past this the relay
/// publishes them (a broker outage fills it in seconds).
const PUBLISH_BACKLOG: usize = 16_384;
/// Publishes awaiting their confirms at once.
const PUBLISHES_IN_FLIGHT: usize = 4096;

/// Publishes accepted executions, many confirms outstanding at once, and
/// hands the confirmed ones on so their outbox marks are cleared. A publish
/// that fails leaves its mark: the relay publishes it when it falls due.
async fn publish_accepted(
    publisher: Arc<Publisher>,
    mut rx: mpsc::Receiver<(ExecutionId, i16)>,
    confirmed: mpsc::Sender<Uuid>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PUBLISHES_IN_FLIGHT));
    while let Some((id, priority)) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (publisher, confirmed) = (publisher.clone(), confirmed.clone());
        tokio::spawn(async move {
            match publisher.publish_execution(id, priority).await {
                // Full channel: the mark stays and the relay publishes a harmless duplicate.
                Ok(()) => drop(confirmed.try_send(id.0)),
                Err(e) => {
                    tracing::warn!(execution.id = %id, error = %e, "publish not confirmed; the outbox relay will publish it")
                }
            }
            drop(slot);
        });
    }
}

/// Clears the outbox marks of confirmed publishes in batches: one UPDATE
/// for many executions keeps the submit path at one commit each. Ids are
/// held for `hold` first: a worker that claims an execution clears its mark
/// itself, so by then most rows need no write at all (the UPDATE's WHERE
/// skips them), and only executions still waiting in the queue are touched.
async fn mark_confirmed_publishes(pool: Pool, mut rx: mpsc::Receiver<Uuid>, hold: Duration) {
    let mut pending: VecDeque<(Instant, Uuid)> = VecDeque::new();
    let mut received = Vec::with_capacity(1024);
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            n = rx.recv_many(&mut received, 4096), if open => {
                open = n > 0;
                let now = Instant::now();
                pending.extend(received.drain(..).map(|id| (now, id)));
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let now = Instant::now();
        let mut due = Vec::new();
        while pending
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= hold)
        {
            if let Some((_, id)) = pending.pop_front() {
                due.push(id);
            }
        }
        if due.is_empty() {
            continue;
        }
        let result = async {
            let client = pool.get().await?;
            db::executions::mark_published(&client, &due).await
        }
        .await;
        if let Err(e) = result {
            // The marks stay; the relay publishes duplicates, which claiming absorbs.
            tracing::warn!(error = %e, count = due.len(), "could not clear outbox marks");
        }
    }
}

async fn record_http_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().to_string();
    let response = next.call(req).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let status = response.status().as_u16().to_string();
    metrics::counter!(llmq_shared::metrics::HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(llmq_shared::metrics::HTTP_REQUEST_DURATION, "route" => route)
        .record(start.elapsed().as_secs_f64());
    Ok(response)
}

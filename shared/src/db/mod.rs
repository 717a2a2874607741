//! Postgres: the pool, migrations, the error type and one repository module
//! per concept. Repository functions take any `GenericClient` so they run
//! in or out of a transaction, keep their SQL in a `const` beside them and
//! use `prepare_cached`.

pub mod collections;
pub mod events;
pub mod executions;
pub mod idempotency;
pub mod labels;
pub mod leases;
pub mod org_limits;
pub mod outbox;
pub mod prompts;
pub mod stats;
pub mod steps;
pub mod tenancy;
pub mod tools;
pub mod usage;
pub mod webhooks;

use std::time::Duration;

pub use deadpool_postgres::{GenericClient, Pool};
use deadpool_postgres::{ManagerConfig, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached or is shutting down: retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {}", query_error_text(.0))]
    Query(#[source] tokio_postgres::Error),
    /// A row broke an invariant the code relies on.
    #[error("unexpected data: {0}")]
    Data(String),
    /// Something is already there and differs (e.g. a changed prompt version).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
    #[error("bad database configuration: {0}")]
    Config(String),
    /// The failure of a group-committed batch, handed to each of its items.
    #[error(transparent)]
    Shared(std::sync::Arc<DbError>),
}

/// The server's message and code when there is one: tokio-postgres's own
/// `Display` says only "db error".
fn query_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

impl DbError {
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Shared(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            // Connection exceptions, shutdowns and "starting up" mean the
            // server is (temporarily) not there, not that the query is wrong.
            Some(code)
                if code.code().starts_with("08")
                    || *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CRASH_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW
                    || *code == SqlState::TOO_MANY_CONNECTIONS =>
            {
                Self::Unavailable(e.to_string())
            }
            Some(_) => Self::Query(e),
            None => Self::Unavailable(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// A pool whose waits are bounded, so an unreachable database turns into
/// `Unavailable` quickly instead of hanging requests: bounded waits for a
/// connection, connect timeouts, TCP keepalives and a user timeout so a
/// vanished host is noticed, and a server-side statement timeout.
pub fn create_pool(database_url: &str, max_size: usize) -> Result<Pool> {
    build_pool(database_url, max_size, "-c statement_timeout=30000")
}

/// Connections for group-committed statements (see `crate::batch`) that
/// join an array of rows against `executions`. They plan every execution
/// afresh: a plan cached while the table was small (a fresh database) is a
/// sequential scan that stays cached as the table grows, and a batch of a
/// hundred rows well repays its planning.
const BATCH_OPTIONS: &str = "-c statement_timeout=30000 -c plan_cache_mode=force_custom_plan";

/// The worker's pool: like `create_pool`, planned for batches.
pub fn create_batch_pool(database_url: &str, max_size: usize) -> Result<Pool> {
    build_pool(database_url, max_size, BATCH_OPTIONS)
}

/// A pool for trace writes that no guarantee depends on (a step that
/// *started*): they commit without waiting for the WAL flush, so a database
/// crash can lose the last few of them, and nothing else. Claims, retries
/// and outcomes never go through it.
pub fn create_trace_pool(database_url: &str, max_size: usize) -> Result<Pool> {
    build_pool(
        database_url,
        max_size,
        &format!("{BATCH_OPTIONS} -c synchronous_commit=off"),
    )
}

fn build_pool(database_url: &str, max_size: usize, options: &str) -> Result<Pool> {
    let mut pg: tokio_postgres::Config = database_url
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::Config(e.to_string()))?;
    pg.connect_timeout(Duration::from_secs(5))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(15));
    if pg.get_options().is_none() {
        pg.options(options);
    }
    let manager = deadpool_postgres::Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let timeout = Some(Duration::from_secs(5));
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .build()
        .map_err(|e| DbError::Config(e.to_string()))
}

/// Items per group-committed statement at most: a full batch is a few
/// hundred rows, a statement of a few milliseconds.
const MAX_BATCH: usize = 128;
/// Group-committed statements of one kind in flight at once: one, the
/// classic group commit (a lone write goes out at once; what arrives while
/// it runs is the next batch). Measured on a quiet machine, 0 ms model
/// (`make bench`): one slot gave 3,944–4,001 executions/s saturated and
/// created → finished p50 / p99 3.3 / 8.0 ms at 100/s; two slots (even
/// with the quarter-batch rule of `crate::batch`) 3,006–3,734/s and
/// 3.6–4.0 / 7.8–9.8 ms, with worker batches half as large and Postgres
/// planning twice the statements.
const MAX_BATCHES_IN_FLIGHT: usize = 1;
/// How long a busy batcher's next batch waits for company (see
/// `Batcher::spawn_with_linger`); an idle one never waits.
const BUSY_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// A batcher (see `crate::batch`) whose batches are written by `write` on a
/// connection of `pool`, through `run_batch`.
pub fn spawn_batcher<I, O, W>(
    name: &'static str,
    pool: Pool,
    write: W,
) -> crate::batch::Batcher<I, Result<O>>
where
    I: Send + Sync + 'static,
    O: Send + 'static,
    W: for<'a> Fn(
            &'a deadpool_postgres::Object,
            &'a [I],
        ) -> futures::future::BoxFuture<'a, Result<Vec<O>>>
        + Send
        + Sync
        + 'static,
{
    let write = std::sync::Arc::new(write);
    crate::batch::Batcher::spawn_with_linger(
        name,
        MAX_BATCH,
        MAX_BATCHES_IN_FLIGHT,
        BUSY_LINGER,
        move |items: Vec<I>| {
            let (pool, write) = (pool.clone(), write.clone());
            async move { run_batch(&pool, &items, &*write).await }
        },
    )
}

/// Runs one group-committed batch (see `crate::batch`) on a connection of
/// `pool`: `write` gets every item and answers with one output per item.
/// When the batch fails for a reason other than an outage (one bad row, a
/// deadlock), each item is tried alone, so one item's fault is its own.
pub async fn run_batch<I, O>(
    pool: &Pool,
    items: &[I],
    write: impl for<'a> Fn(
        &'a deadpool_postgres::Object,
        &'a [I],
    ) -> futures::future::BoxFuture<'a, Result<Vec<O>>>,
) -> Vec<Result<O>> {
    let client = match pool.get().await {
        Ok(client) => client,
        Err(e) => return shared_error(e.into(), items.len()),
    };
    match write(&client, items).await {
        Ok(outputs) => outputs.into_iter().map(Ok).collect(),
        Err(e) if e.is_unavailable() || items.len() == 1 => shared_error(e, items.len()),
        Err(e) => {
            tracing::warn!(error = %e, items = items.len(), "batch failed; writing its items one by one");
            let mut outputs = Vec::with_capacity(items.len());
            for item in items {
                outputs.push(write(&client, std::slice::from_ref(item)).await.and_then(
                    |mut one| one.pop().ok_or_else(|| DbError::Data("no output".into())),
                ));
            }
            outputs
        }
    }
}

fn shared_error<O>(e: DbError, n: usize) -> Vec<Result<O>> {
    let e = std::sync::Arc::new(e);
    (0..n).map(|_| Err(DbError::Shared(e.clone()))).collect()
}

/// Applies the embedded migrations in `migrations/`; a no-op when current.
pub async fn migrate(database_url: &str) -> Result<()> {
    let (mut client, connection) = tokio_postgres::connect(database_url, NoTls).await?;
    // The connection future drives the socket; it ends when `client` drops.
    let driver = tokio::spawn(connection);
    let report = embedded::migrations::runner().run_async(&mut client).await;
    drop(client);
    let _ = driver.await;
    let report = report?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(())
}

/// Checks that Postgres answers.
pub async fn ping(pool: &Pool) -> Result<()> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

//! `llmq-api serve` runs the HTTP API; `llmq-api migrate` applies the
//! schema migrations and loads the prompt files; `llmq-api bootstrap-admin`
//! creates the first admin key and prints it.

use clap::{Parser, Subcommand};
use llmq_api::startup::{sync_prompts, Application};
use llmq_shared::{db, shutdown, telemetry, Settings};
use tokio_util::sync::CancellationToken;

/// glibc's malloc was a quarter of the worker's CPU under load (many
/// small, short-lived allocations across threads); jemalloc takes a
/// fraction of that and returns freed memory steadily.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "llmq-api", version, about = "llmq HTTP API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Apply migrations and sync prompt files, then exit.
    Migrate,
    /// Create an admin key of the default organisation (every scope) and
    /// print it once on stdout: the first key of a deployment, from which
    /// `llmq orgs create` and `llmq keys create` make the rest.
    BootstrapAdmin {
        /// Shown in key listings.
        #[arg(long, default_value = "bootstrap")]
        name: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("llmq-api");
    let settings = Settings::load()?;
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            db::migrate(&settings.database_url).await?;
            let pool = db::create_pool(&settings.database_url, 2)?;
            sync_prompts(&settings, &pool).await?;
            tracing::info!("database is migrated and prompts are synced");
        }
        Command::BootstrapAdmin { name } => {
            use std::io::Write;
            db::migrate(&settings.database_url).await?;
            let pool = db::create_pool(&settings.database_url, 2)?;
            let created = llmq_api::services::tenancy::bootstrap_admin(&pool, name).await?;
            tracing::info!(key.id = %created.key.id, key.prefix = %created.key.prefix, "admin key created");
            writeln!(std::io::stdout(), "{}", created.secret)?;
        }
        Command::Serve => {
            // Before anything starts: a SIGTERM during start-up is kept.
            let stop_signal = shutdown::install();
            tracing::info!(settings = ?settings, "starting llmq-api");
            let cancel = CancellationToken::new();
            let app = Application::build(settings, cancel.clone()).await?;
            tokio::spawn(async move {
                stop_signal.await;
                tracing::info!("shutting down");
                cancel.cancel();
            });
            app.run_until_stopped().await?;
        }
    }
    Ok(())
}

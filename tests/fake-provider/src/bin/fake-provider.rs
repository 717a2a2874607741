//! `fake-provider` binary: runs the OpenAI-compatible fake on a fixed address until
//! SIGINT/SIGTERM (used by benchmarks and manual testing).

use clap::Parser;
use llmq_fake_provider::{FakeConfig, FakeProvider};

/// OpenAI-compatible fake chat-completions provider with prompt-driven fault injection.
#[derive(Debug, Parser)]
#[command(name = "fake-provider", version, about)]
struct Args {
    /// Address to bind.
    #[arg(long, env = "FAKE_PROVIDER_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to bind (0 = ephemeral).
    #[arg(long, env = "FAKE_PROVIDER_PORT", default_value_t = 8081)]
    port: u16,
    /// Delay before every answer, in milliseconds.
    #[arg(long, env = "FAKE_PROVIDER_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,actix_server=warn")),
        )
        .init();
    let args = Args::parse();
    let provider = FakeProvider::start(FakeConfig {
        latency_ms: args.latency_ms,
        host: args.host,
        port: args.port,
    })
    .await?;
    tracing::info!(
        base_url = %provider.base_url(),
        latency_ms = args.latency_ms,
        "fake-provider listening"
    );
    shutdown_signal().await?;
    tracing::info!("fake-provider shutting down");
    provider.stop().await;
    Ok(())
}

#[cfg(unix)]
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn shutdown_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await?;
    Ok(())
}

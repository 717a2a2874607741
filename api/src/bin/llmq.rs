//! `llmq`: the command-line client of a running llmq API. See `llmq --help`
//! and the README; exit codes are in `llmq_api::cli::exit`.

use clap::Parser;
use llmq_api::cli::{run, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    std::process::ExitCode::from(run(cli).await)
}

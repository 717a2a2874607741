//! The `llmq` command-line client: argument parsing (`Cli`), the HTTP
//! client over the API (`client`), and one function per command
//! (`commands`). Output is for people unless `--json`, which prints the
//! API's answers as JSON on stdout; errors go to stderr.
//!
//! Exit codes (`exit`), which scripts can rely on: 0 success, 2 usage
//! error (bad arguments, an unreadable file, input that is not JSON),
//! 3 the API answered an error, 4 the API could not be reached, 5 `run`:
//! the execution ended failed or cancelled.

pub mod client;
pub mod commands;

use clap::{Parser, Subcommand};

/// Exit codes.
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 2;
    pub const API_ERROR: u8 = 3;
    pub const UNREACHABLE: u8 = 4;
    pub const EXECUTION_FAILED: u8 = 5;
}

#[derive(Debug, Parser)]
#[command(name = "llmq", version, about = "Command-line client of the llmq API")]
pub struct Cli {
    /// Base URL of the API.
    #[arg(
        long,
        env = "LLMQ_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API key (`llmq_sk_…`; `dev-key` is `make run`'s development key).
    #[arg(
        long,
        env = "LLMQ_API_KEY",
        default_value = "dev-key",
        hide_env_values = true,
        global = true
    )]
    pub key: String,
    /// Print the API's answers as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The prompt registry.
    #[command(subcommand)]
    Prompts(PromptsCommand),
    /// Organisations (an admin key; creating one needs the default
    /// organisation's).
    #[command(subcommand)]
    Orgs(OrgsCommand),
    /// API keys of an organisation (an admin key).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Submit an execution and follow it until it ends.
    Run {
        /// Prompt name.
        name: String,
        /// The input, as JSON (`@file.json` reads a file).
        #[arg(long)]
        input: String,
        /// Label to resolve (default: production).
        #[arg(long, conflicts_with = "version")]
        label: Option<String>,
        /// An exact version.
        #[arg(long)]
        version: Option<i32>,
        /// End user (split assignment is sticky per user).
        #[arg(long)]
        user: Option<String>,
        /// Segment of the label's rule.
        #[arg(long)]
        segment: Option<String>,
        /// Give up following after this many seconds (the execution goes on).
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum PromptsCommand {
    /// Every prompt with its newest version and labels.
    List,
    /// A prompt's versions and labels, or one version's definition.
    Show {
        name: String,
        /// Show this version's definition.
        #[arg(long)]
        version: Option<i32>,
    },
    /// Field-level differences between two versions.
    Diff { name: String, from: i32, to: i32 },
    /// Create the next version from a prompt file (TOML, as in prompts/).
    Push {
        file: std::path::PathBuf,
        /// Prompt name (default: the file's directory name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Point a label at a version, or at a split such as `3:90,4:10`.
    Promote {
        name: String,
        label: String,
        /// `4`, or weighted `3:90,4:10`.
        target: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Move a label back to where it pointed before its last move.
    Rollback {
        name: String,
        label: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Every move of a label, newest first.
    History { name: String, label: String },
    /// Per-version figures.
    Stats {
        name: String,
        #[arg(long)]
        label: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Create an organisation (it gets its own copy of the prompt files).
    Create {
        /// a-z, 0-9, `-`, `_`, `.`; fixed for good.
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// The organisations this key sees.
    List,
    /// One organisation.
    Show { id: String },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (shown once: store it now).
    Create {
        /// The key's organisation.
        #[arg(long, default_value = "default")]
        org: String,
        /// A scope, repeatable or comma-separated: executions:write,
        /// executions:read, prompts:write, prompts:promote,
        /// webhooks:manage, admin.
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<String>,
        /// What the key is for.
        #[arg(long)]
        name: Option<String>,
        /// Bind the key to one end user.
        #[arg(long)]
        user: Option<String>,
        /// When the key stops working (RFC 3339).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// The organisation's keys: prefix, scopes, user, times.
    List {
        #[arg(long, default_value = "default")]
        org: String,
    },
    /// Revoke a key: every API process refuses it within a second.
    Revoke {
        /// The key's id (from `keys list`).
        id: String,
        #[arg(long, default_value = "default")]
        org: String,
    },
}

/// Runs the command; answers the exit code.
pub async fn run(cli: Cli) -> u8 {
    let client = match client::Client::new(&cli.url, &cli.key) {
        Ok(c) => c,
        Err(e) => return e.report(),
    };
    let out = commands::Output { json: cli.json };
    let result = match cli.command {
        Command::Prompts(p) => commands::prompts(&client, &out, p).await,
        Command::Orgs(o) => commands::orgs(&client, &out, o).await,
        Command::Keys(k) => commands::keys(&client, &out, k).await,
        Command::Run {
            name,
            input,
            label,
            version,
            user,
            segment,
            timeout_secs,
        } => {
            let spec = commands::RunSpec {
                name,
                input,
                label,
                version,
                user,
                segment,
                timeout: std::time::Duration::from_secs(timeout_secs),
            };
            commands::run(&client, &out, spec).await
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => e.report(),
    }
}

//! Calling tools: the definitions this worker loaded (`tools/<name>.toml`),
//! one HTTP client for every call (`call`), and the tool rounds of a
//! `generate` step (`rounds`): the model proposes, llmq decides, calls,
//! records a `tool:<name>` step per call and feeds the results back.

pub mod call;
pub mod rounds;

use std::sync::Arc;
use std::time::Duration;

use llmq_shared::tool::{load_tool_dir, ToolSet};
use llmq_shared::Settings;

/// The tools a worker can call and the client it calls them with.
#[derive(Clone)]
pub struct ToolRunner {
    pub tools: Arc<ToolSet>,
    http: reqwest::Client,
}

impl ToolRunner {
    /// Loads `settings.tools_dir`; a file that breaks the contract stops
    /// the worker at start, naming the file and the field.
    pub fn load(settings: &Settings) -> anyhow::Result<Self> {
        let tools = load_tool_dir(&settings.tools_dir)?;
        if !tools.is_empty() {
            tracing::info!(
                tools = %tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(","),
                "tools loaded"
            );
        }
        Self::new(ToolSet::new(tools))
    }

    pub fn new(tools: ToolSet) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            tools: Arc::new(tools),
            http,
        })
    }
}

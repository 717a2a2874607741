//! The CLI's HTTP client: JSON in and out, the API's error shape turned
//! into a `CliError` that knows its exit code.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::exit;

/// Why a command failed, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{status}: {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach the API: {0}")]
    Unreachable(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Api { .. } => exit::API_ERROR,
            Self::Unreachable(_) => exit::UNREACHABLE,
        }
    }

    /// Prints the error on stderr and answers the exit code.
    pub fn report(&self) -> u8 {
        eprintln!("llmq: {self}");
        self.exit_code()
    }
}

pub struct Client {
    base: reqwest::Url,
    key: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, key: &str) -> Result<Self, CliError> {
        let base = reqwest::Url::parse(base)
            .map_err(|e| CliError::Usage(format!("--url {base:?}: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        Ok(Self {
            base,
            key: key.to_string(),
            http,
        })
    }

    /// `path` with query pairs (values `None` are left out).
    pub fn url(
        &self,
        path: &str,
        query: &[(&str, Option<String>)],
    ) -> Result<reqwest::Url, CliError> {
        let mut url = self
            .base
            .join(path)
            .map_err(|e| CliError::Usage(format!("{path}: {e}")))?;
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                if let Some(v) = v {
                    pairs.append_pair(k, v);
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        Ok(url)
    }

    /// Sends a request and answers the status and JSON body of a 2xx.
    pub async fn send(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), CliError> {
        let mut request = self.http.request(method, url).bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CliError::Unreachable(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| CliError::Unreachable(e.to_string()))?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok((status, json));
        }
        let field = |f: &str| {
            json.pointer(&format!("/error/{f}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Err(CliError::Api {
            status: status.as_u16(),
            code: field("code"),
            message: field("message"),
        })
    }

    /// Reads the event stream at `path` (Server-Sent Events) and hands
    /// each event, as its type and JSON data, to `on_event` until that
    /// answers false (then true) or the stream ends (then false).
    pub async fn events(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, Value) -> bool,
    ) -> Result<bool, CliError> {
        let url = self.url(path, &[])?;
        let unreachable = |e: reqwest::Error| CliError::Unreachable(e.to_string());
        let mut response = self
            .http
            .get(url)
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(CliError::Api {
                status: response.status().as_u16(),
                code: String::new(),
                message: format!("{path} answered {}", response.status()),
            });
        }
        let (mut pending, mut event, mut data) = (Vec::new(), String::new(), String::new());
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&raw);
                let text = text.trim_end_matches(['\n', '\r']);
                if text.is_empty() {
                    if !data.is_empty() {
                        let value = serde_json::from_str(&data).unwrap_or(Value::Null);
                        if !on_event(&event, value) {
                            return Ok(true);
                        }
                    }
                    event.clear();
                    data.clear();
                } else if let Some(v) = text.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = text.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
        }
        Ok(false)
    }

    pub async fn get(
        &self,
        path: &str,
        query: &[(&str, Option<String>)],
    ) -> Result<Value, CliError> {
        let url = self.url(path, query)?;
        Ok(self.send(Method::GET, url, None).await?.1)
    }
}

//! One HTTP attempt: the POST, bounded by `webhooks.timeout_secs`,
//! redirects not followed, at most the first KB of the answer read. The
//! client's resolver admits only addresses the destination policy allows
//! and hands exactly those to the connector, so the connection goes to
//! the checked address with no second lookup. A URL whose host is an
//! address is checked before the request (no resolver runs for it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use llmq_shared::webhook::destination::{DestinationError, DestinationPolicy};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What a receiver answered, or why there was no answer.
#[derive(Debug)]
pub struct Answer {
    pub status: Option<u16>,
    pub retry_after: Option<String>,
    /// The first KB of the body (lossy UTF-8).
    pub body: Option<String>,
    pub error: Option<String>,
    pub latency: Duration,
}

const BODY_KEPT: usize = 1024;

pub struct Sender {
    client: reqwest::Client,
    policy: DestinationPolicy,
    timeout: Duration,
}

/// Resolves through the destination policy: a name with a non-public
/// address fails to resolve.
struct CheckedResolver(DestinationPolicy);

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = policy.resolve(&host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

impl Sender {
    pub fn new(policy: DestinationPolicy, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .user_agent("llmq-webhooks")
            .dns_resolver(Arc::new(CheckedResolver(policy.clone())))
            .build()?;
        Ok(Self {
            client,
            policy,
            timeout,
        })
    }

    /// POSTs `body` with `headers`; never fails, the answer says what happened.
    pub async fn post(&self, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Answer {
        let started = Instant::now();
        let refused = |e: DestinationError| Answer {
            status: None,
            retry_after: None,
            body: None,
            error: Some(e.to_string()),
            latency: started.elapsed(),
        };
        let url = match self.policy.check_url(url) {
            Ok(url) => url,
            Err(e) => return refused(e),
        };
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let attempt = async {
            let mut response = request.body(body).send().await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let mut kept = Vec::new();
            while kept.len() < BODY_KEPT {
                match response.chunk().await {
                    Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                    // A body cut short still leaves the status, which decides.
                    Ok(None) | Err(_) => break,
                }
            }
            kept.truncate(BODY_KEPT);
            Ok::<_, reqwest::Error>((status, retry_after, kept))
        };
        // The client's timeout covers the request; this one the body read too.
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok((status, retry_after, kept))) => Answer {
                status: Some(status),
                retry_after,
                body: Some(
                    llmq_shared::sanitize::clean_str(&String::from_utf8_lossy(&kept)).into_owned(),
                ),
                error: None,
                latency: started.elapsed(),
            },
            Ok(Err(e)) => Answer {
                status: None,
                retry_after: None,
                body: None,
                error: Some(describe(&e, self.timeout)),
                latency: started.elapsed(),
            },
            Err(_) => Answer {
                status: None,
                retry_after: None,
                body: None,
                error: Some(format!("no answer within {} s", self.timeout.as_secs_f64())),
                latency: started.elapsed(),
            },
        }
    }
}

/// The reason a request got no answer, naming a refused destination as such.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<DestinationError>() {
            return refused.to_string();
        }
        source = err.source();
    }
    if e.is_timeout() {
        format!("no answer within {} s", timeout.as_secs_f64())
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        format!("request failed: {e}")
    }
}

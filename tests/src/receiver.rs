//! A webhook receiver for tests: a real HTTP server that records every
//! request it gets (headers, body, arrival time) and answers with the
//! statuses a test scripts, then with its default.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context;
use chrono::{DateTime, Utc};

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    pub webhook_id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub at: DateTime<Utc>,
    /// The status it was answered with.
    pub answered: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    script: Mutex<VecDeque<(u16, Option<String>)>>,
    default: Mutex<u16>,
    received: Mutex<Vec<Received>>,
}

pub struct Receiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    pub port: u16,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    /// Listens on 127.0.0.1, answering 200 until told otherwise.
    pub async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(State::default());
        *state.default.lock().unwrap_or_else(|e| e.into_inner()) = 200;
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(("127.0.0.1", 0))
        .context("binding the webhook receiver")?;
        let port = server.addrs().first().context("no address")?.port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            port,
            state,
            handle,
        })
    }

    /// The next answers, in order (with a `Retry-After` where given);
    /// then the default again.
    pub fn script(&self, answers: &[(u16, Option<&str>)]) {
        let mut script = self.state.script.lock().unwrap_or_else(|e| e.into_inner());
        script.extend(answers.iter().map(|(s, r)| (*s, r.map(str::to_string))));
    }

    pub fn set_default(&self, status: u16) {
        *self.state.default.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` requests arrived; answers them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

async fn receive(state: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (status, retry_after) = state
        .script
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop_front()
        .unwrap_or_else(|| {
            (
                *state.default.lock().unwrap_or_else(|e| e.into_inner()),
                None,
            )
        });
    state
        .received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Received {
            webhook_id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body: body.to_vec(),
            at: Utc::now(),
            answered: status,
        });
    let mut response =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or_default());
    if let Some(after) = retry_after {
        response.insert_header(("retry-after", after));
    }
    response.body("receiver says hello")
}

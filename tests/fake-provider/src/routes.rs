//! HTTP routes: `POST /v1/chat/completions` (with fault injection), `GET /v1/models`,
//! `GET /_stats`, `GET /healthz`, and `POST /webhook` (a webhook receiver
//! that answers 204, for the benchmark's webhook setting).

use std::convert::Infallible;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpResponse, HttpResponseBuilder};
use serde_json::{json, Value};

use crate::markers::{self, Fault};
use crate::request::{self, ChatRequest};
use crate::response::{self, Answer, Envelope};
use crate::state::{self, State};

/// How long a `[[fault:hang]]` request sleeps before giving up.
const HANG: Duration = Duration::from_secs(3600);

/// Registers every route on an actix `App`.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/chat/completions", web::post().to(chat_completions))
        .route("/v1/models", web::get().to(models))
        .route(
            "/v1/embeddings",
            web::post().to(crate::embeddings::embeddings),
        )
        .route("/_stats", web::get().to(stats))
        .route("/_stats/windows", web::get().to(windows))
        .route("/healthz", web::get().to(healthz))
        .route("/webhook", web::post().to(webhook))
        .route("/tools/{name}", web::to(tool))
        .default_service(web::to(not_found));
}

/// A tool at 0 ms for benchmarks: answers at once with what it was sent.
async fn tool(name: web::Path<String>, body: Bytes) -> HttpResponse {
    let arguments: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    HttpResponse::Ok().json(serde_json::json!({"tool": name.into_inner(), "arguments": arguments}))
}

async fn webhook() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

async fn models() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "object": "list",
        "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "llmq-fake"}]
    }))
}

async fn stats(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(state.calls())
}

#[derive(serde::Deserialize)]
struct WindowQuery {
    window_ms: Option<u64>,
}

/// Requests and tokens per window (`?window_ms=`, default a minute).
async fn windows(state: web::Data<State>, q: web::Query<WindowQuery>) -> HttpResponse {
    let by_window: Vec<Value> = state
        .usage_by_window(q.window_ms.unwrap_or(60_000))
        .into_iter()
        .map(|(start, w)| json!({"start_ms": start as u64, "requests": w.requests, "tokens": w.tokens}))
        .collect();
    HttpResponse::Ok().json(by_window)
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(response::error_body(
        "Unknown request URL. Please check the URL for typos.",
        "invalid_request_error",
        None,
        Some("unknown_url"),
    ))
}

fn invalid(message: &str, param: Option<&str>) -> HttpResponse {
    HttpResponse::BadRequest().json(response::error_body(
        message,
        "invalid_request_error",
        param,
        None,
    ))
}

async fn chat_completions(state: web::Data<State>, body: Bytes) -> HttpResponse {
    let received = state::now_ms();
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            state.reject(String::new(), String::new(), false, received);
            return invalid(
                &format!("We could not parse the JSON body of your request. ({e})"),
                None,
            );
        }
    };
    let req = match ChatRequest::parse(&value) {
        Ok(r) => r,
        Err(e) => {
            let (model, stream) = request::loose_model_stream(&value);
            state.reject(String::new(), model, stream, received);
            return invalid(&e.message, e.param);
        }
    };

    let key = req.key();
    let fault_markers = markers::fault_markers(&key);
    let round = 1 + req
        .messages
        .iter()
        .filter(|m| m.role == "assistant")
        .count() as u64;
    let (idx, plan) = state.begin(&req, key, received, |attempt| {
        let plan = markers::plan(&fault_markers, attempt, round);
        let outcome = plan.outcome();
        (plan, outcome)
    });

    if plan.fault == Some(Fault::Hang) {
        tokio::time::sleep(HANG).await;
        state.responded(idx, None);
        return HttpResponse::GatewayTimeout().json(response::error_body(
            "Request timed out (injected hang).",
            "server_error",
            None,
            None,
        ));
    }

    let latency = plan.latency_ms.unwrap_or_else(|| state.latency_ms());
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }

    let (resp, tokens) = match plan.fault {
        Some(fault) => (fault_response(&fault, &state, &req), None),
        None => {
            let answer = Answer::for_request(&req);
            let tokens = response::usage(&req, &answer)["total_tokens"].as_u64();
            (respond(&state, &req, answer, plan.chunk_delay_ms), tokens)
        }
    };
    state.responded(idx, tokens);
    resp
}

fn envelope<'a>(state: &State, req: &'a ChatRequest) -> Envelope<'a> {
    Envelope {
        id: format!(
            "chatcmpl-{:016x}{:08x}",
            response::fnv1a(req.key().as_bytes()),
            state.next_seq()
        ),
        created: state::now_secs(),
        model: &req.model,
    }
}

/// The answer; streamed with `chunk_delay_ms` between chunks when given
/// (a slow model that shows its tokens as they come).
fn respond(
    state: &State,
    req: &ChatRequest,
    answer: Answer,
    chunk_delay_ms: Option<u64>,
) -> HttpResponse {
    let usage = response::usage(req, &answer);
    let env = envelope(state, req);
    if req.stream {
        let events = env.sse_events(&answer, req.include_usage.then_some(usage));
        let delay = Duration::from_millis(chunk_delay_ms.unwrap_or(0));
        HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("cache-control", "no-cache"))
            .streaming(futures::StreamExt::then(
                futures::stream::iter(events.into_iter().enumerate()),
                move |(i, e)| async move {
                    if i > 0 && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, Infallible>(Bytes::from(e))
                },
            ))
    } else {
        HttpResponse::Ok().json(env.completion(&answer, usage))
    }
}

fn fault_response(fault: &Fault, state: &State, req: &ChatRequest) -> HttpResponse {
    match fault {
        Fault::RateLimit { retry_after } => HttpResponse::TooManyRequests()
            .insert_header(("retry-after", retry_after.to_string()))
            .insert_header(("x-ratelimit-remaining-requests", "0"))
            .json(response::error_body(
                &format!(
                    "Rate limit reached for {} in organization org-llmq-fake on requests per min \
                     (RPM): Limit 1, Used 1, Requested 1. Please try again in {retry_after}s. \
                     (injected fault)",
                    req.model
                ),
                "requests",
                None,
                Some("rate_limit_exceeded"),
            )),
        Fault::ServerError => HttpResponse::InternalServerError().json(response::error_body(
            "The server had an error while processing your request. Sorry about that! \
             (injected fault)",
            "server_error",
            None,
            None,
        )),
        Fault::BadRequest => invalid("Invalid request (injected fault).", None),
        Fault::Hang => HttpResponseBuilder::new(StatusCode::GATEWAY_TIMEOUT).finish(),
        Fault::Nul => {
            let answer = match Answer::for_request(req) {
                // Inside the text, as a model's stray control byte would be.
                Answer::Text(text) => Answer::Text(text.replacen(' ', " \u{0}", 1) + "\u{0}"),
                other => other,
            };
            respond(state, req, answer, None)
        }
        Fault::NotJson => respond(
            state,
            req,
            Answer::Text("Sure! Here is the answer you asked for: sentiment positive".into()),
            None,
        ),
        Fault::WrongJson => respond(
            state,
            req,
            Answer::Text(json!({ "llmq_fake_unexpected": true }).to_string()),
            None,
        ),
        Fault::Malformed => {
            let answer = Answer::for_request(req);
            let full = envelope(state, req)
                .completion(&answer, response::usage(req, &answer))
                .to_string();
            let mut cut = full.len() / 2;
            while !full.is_char_boundary(cut) {
                cut -= 1;
            }
            HttpResponse::Ok()
                .content_type("application/json")
                .body(full[..cut].to_owned())
        }
    }
}

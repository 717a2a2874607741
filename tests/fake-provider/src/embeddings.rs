//! `POST /v1/embeddings`: OpenAI's wire format, with deterministic
//! vectors so relevance is testable. A text's vector is a hashed bag of
//! its words (lowercased alphanumeric runs, markers stripped) in
//! [`DIMENSIONS`] dimensions, normalized: texts sharing words are close,
//! texts sharing none are orthogonal (up to hash collisions).
//!
//! Fault markers in any input apply to the whole request, as for chat:
//! `[[fault:latency=MS]]`, `[[fault:500]]`, `[[fault:429]]`,
//! `[[fault:400]]`, `[[fault:hang]]`, with `:times=N` counted per request
//! text. Every embedded input is logged ([`crate::FakeProvider::embedded_texts`]).

use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use serde_json::{json, Value};

use crate::markers::{self, Fault};
use crate::response;
use crate::state::State;

/// Length of every fake embedding.
pub const DIMENSIONS: usize = 256;

/// The fake embedding of `text`.
pub fn embed_text(text: &str) -> Vec<f32> {
    let clean = markers::strip(text).to_lowercase();
    let mut v = vec![0.0f32; DIMENSIONS];
    for word in clean
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
    {
        // FNV-1a: stable across runs and platforms.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in word.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        v[(h % DIMENSIONS as u64) as usize] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    } else {
        // An empty text still gets a (fixed) unit vector.
        v[0] = 1.0;
    }
    v
}

pub(crate) async fn embeddings(state: web::Data<State>, body: Bytes) -> HttpResponse {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("We could not parse the JSON body ({e})")),
    };
    let Some(model) = value.get("model").and_then(Value::as_str) else {
        return bad_request("you must provide a model parameter");
    };
    let inputs: Vec<String> = match value.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => {
            match items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect()
            {
                Some(v) => v,
                None => return bad_request("input must be a string or an array of strings"),
            }
        }
        _ => return bad_request("input must be a string or a non-empty array of strings"),
    };
    let key = inputs.join("\n");
    let attempt = state.count_embedding_request(&key, &inputs);
    let plan = markers::plan(&markers::fault_markers(&key), attempt, 1);
    if plan.fault == Some(Fault::Hang) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let latency = plan
        .latency_ms
        .unwrap_or_else(|| state.embedding_latency_ms());
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    match plan.fault {
        Some(Fault::ServerError) => {
            return HttpResponse::InternalServerError().json(response::error_body(
                "The server had an error (injected fault).",
                "server_error",
                None,
                None,
            ))
        }
        Some(Fault::RateLimit { retry_after }) => {
            return HttpResponse::TooManyRequests()
                .insert_header(("retry-after", retry_after.to_string()))
                .json(response::error_body(
                    "Rate limit reached (injected fault).",
                    "requests",
                    None,
                    Some("rate_limit_exceeded"),
                ))
        }
        Some(Fault::BadRequest) => return bad_request("Invalid request (injected fault)."),
        _ => {}
    }
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embed_text(text)}))
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

fn bad_request(message: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(response::error_body(
        message,
        "invalid_request_error",
        Some("input"),
        None,
    ))
}

//! What every HTTP request gets, as middleware: a span with a request id
//! (the client's sane `X-Request-Id`, else a new one, returned in the
//! response) and the W3C trace id (the client's `traceparent`, else a new
//! trace), the trace context made current for the handler so the submit
//! path can put it on the execution's message, the access log line and
//! the HTTP metrics.
//!
//! Metric labels are bounded: the route is the matched pattern (or
//! `unmatched`), the method one of the methods the API knows (or
//! `other`); nothing else a client sends becomes a label.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use llmq_shared::trace::TraceParent;
use tracing::Instrument;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
const TRACEPARENT_HEADER: &str = "traceparent";
/// Longer incoming request ids are replaced, not truncated.
const MAX_REQUEST_ID: usize = 128;

/// The request's span, request id and trace context.
pub async fn trace_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_sane_request_id(id))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let trace = req
        .headers()
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .map(|incoming| incoming.child())
        .unwrap_or_else(TraceParent::new_trace);
    let span = tracing::info_span!(
        "http.request",
        request.id = %request_id,
        trace_id = %trace.trace_id(),
        http.method = %req.method(),
    );
    let mut response = trace.scope(next.call(req)).instrument(span).await?;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    Ok(response)
}

/// Visible ASCII without separators that could forge log fields.
fn is_sane_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Request counts and durations by method, matched route and status.
pub async fn record_http_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = method_label(req.method());
    let response = next.call(req).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let status = response.status().as_u16().to_string();
    metrics::counter!(llmq_shared::metrics::HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(llmq_shared::metrics::HTTP_REQUEST_DURATION, "route" => route)
        .record(start.elapsed().as_secs_f64());
    Ok(response)
}

/// A bounded label: any method outside the standard set is `other`.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_request_ids_are_taken_from_the_client() {
        assert!(is_sane_request_id("0192f1c2-7c1e-7a4b-9d1e-2a4f5b6c7d8e"));
        assert!(is_sane_request_id("req_42.a:b"));
        for bad in [
            "",
            "a b",
            "id\nlevel=ERROR",
            "é",
            &"x".repeat(MAX_REQUEST_ID + 1),
        ] {
            assert!(!is_sane_request_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let custom = actix_web::http::Method::from_bytes(b"BREW").expect("a method");
        assert_eq!(method_label(&custom), "other");
        assert_eq!(method_label(&actix_web::http::Method::TRACE), "other");
        assert_eq!(method_label(&actix_web::http::Method::POST), "POST");
    }
}

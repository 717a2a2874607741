//! The access log: one line per request (method, path and query, status,
//! duration) at info level under the `llmq_api::http` target. Credentials
//! never reach it: the values of query parameters that may carry a secret
//! (`key`, `api_key`, `token`, `password`, ...) are replaced by
//! `[redacted]`, and headers are not logged at all.

use actix_web::dev::ServiceRequest;
use actix_web::middleware::Logger;

/// Log target of the access log.
pub const TARGET: &str = "llmq_api::http";

/// Query parameters whose values are never logged (compared without case;
/// any name containing one of these counts).
const SENSITIVE: &[&str] = &[
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "authorization",
    "auth",
    "credential",
    "signature",
    "session",
];

pub fn logger() -> Logger {
    Logger::new("%{request}xi %s %Dms")
        .custom_request_replace("request", request_line)
        .log_target(TARGET)
}

fn request_line(req: &ServiceRequest) -> String {
    let uri = req.uri();
    let target = match uri.query() {
        Some(q) => format!("{}?{}", uri.path(), redact_query(q)),
        None => uri.path().to_string(),
    };
    format!("{} {} {:?}", req.method(), target, req.version())
}

/// `query` with the values of sensitive parameters replaced.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let lower = name.to_ascii_lowercase();
            if SENSITIVE.iter().any(|s| lower.contains(s)) {
                format!("{name}=[redacted]")
            } else {
                pair.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn the_access_log_line_carries_no_credentials() {
        let req = TestRequest::get()
            .uri(
                "/v1/executions/x?wait=5&api_key=sk_live_1&Access_Token=abc&password=hunter2&key=k",
            )
            .insert_header(("authorization", "Bearer sk_live_2"))
            .to_srv_request();
        let line = request_line(&req);
        assert_eq!(
            line,
            "GET /v1/executions/x?wait=5&api_key=[redacted]&Access_Token=[redacted]&password=[redacted]&key=[redacted] HTTP/1.1"
        );
        for secret in ["sk_live_1", "abc", "hunter2", "sk_live_2"] {
            assert!(!line.contains(secret), "{line}");
        }
    }

    #[test]
    fn harmless_queries_are_logged_as_sent() {
        assert_eq!(redact_query("wait=5&status=queued"), "wait=5&status=queued");
    }
}

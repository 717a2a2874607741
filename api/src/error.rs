//! The API's one error type. Every failure a client can see maps here to a
//! status and the JSON shape of docs/api.md; a 5xx body says nothing
//! internal while the log gets the whole cause. Services answer
//! `ServiceError`, turned into this by the one `From` below.
//!
//! Logging: a 4xx is the client's mistake, logged at debug with its code
//! only (never the message, which may quote the client's input); a 503 at
//! warn; any other 5xx is a bug, logged at error with its cause.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use llmq_shared::db::DbError;

use crate::services::error::{Refusal, ServiceError};
use serde::Serialize;
use serde_json::Value;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("this key lacks the {0} scope")]
    MissingScope(llmq_shared::keys::Scope),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed; this route serves {allow}")]
    MethodNotAllowed { allow: String },
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        details: Option<Value>,
    },
    /// 429: a limit refuses for `retry_after_secs`.
    #[error("{}", .0.message)]
    TooManyRequests(Box<Refusal>),
    /// 503 `limits_unavailable`: a limit that denies while Redis is down.
    #[error("{0}")]
    LimitsUnavailable(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_input`.
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::MissingScope(_) => "missing_scope",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unprocessable { code, .. } => code,
            Self::TooManyRequests(r) => r.code,
            Self::LimitsUnavailable(_) => "limits_unavailable",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal_error",
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidRequest(m) => Self::BadRequest(m),
            ServiceError::NotFound(m) => Self::NotFound(m),
            ServiceError::Forbidden(m) => Self::Forbidden(m),
            ServiceError::Conflict(m) => Self::Conflict(m),
            ServiceError::Rejected {
                code,
                message,
                details,
            } => Self::Unprocessable {
                code,
                message,
                details,
            },
            ServiceError::Limited(refusal) => Self::TooManyRequests(refusal),
            ServiceError::LimitsUnavailable(m) => Self::LimitsUnavailable(m),
            ServiceError::Unavailable(m) => Self::Unavailable(m),
            ServiceError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ServiceError::from(e).into()
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::MissingScope(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::LimitsUnavailable(_) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            Self::Internal(cause) => {
                tracing::error!(error.cause = %cause, "internal error");
                "internal error".to_string()
            }
            Self::Unavailable(m) | Self::LimitsUnavailable(m) => {
                tracing::warn!(error.code = self.code(), error.message = %m, "request not accepted");
                m.clone()
            }
            other => {
                tracing::debug!(
                    error.code = other.code(),
                    status = other.status_code().as_u16(),
                    "client error"
                );
                other.to_string()
            }
        };
        let details = match self {
            Self::Unprocessable { details, .. } => details.clone(),
            Self::MissingScope(scope) => Some(serde_json::json!({"scope": scope.as_str()})),
            Self::TooManyRequests(r) => Some(r.details.clone()),
            _ => None,
        };
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, Self::Unavailable(_) | Self::LimitsUnavailable(_)) {
            response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()));
        }
        if let Self::TooManyRequests(refusal) = self {
            response.insert_header((header::RETRY_AFTER, refusal.retry_after_secs.to_string()));
            if let Some((policy, state)) = &refusal.headers {
                response.insert_header(("RateLimit-Policy", policy.as_str()));
                response.insert_header(("RateLimit", state.as_str()));
            }
        }
        if matches!(self, Self::Unauthorized) {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let Self::MethodNotAllowed { allow } = self {
            response.insert_header((header::ALLOW, allow.clone()));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message,
                details,
            },
        })
    }
}

/// Maps actix's JSON body errors onto the API's shapes (400 / 408 / 413 /
/// 415). A body that stopped arriving (`crate::body_timeout`) is a 408.
pub fn json_error(err: actix_web::error::JsonPayloadError, limit: usize) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match err {
        E::ContentType => ApiError::UnsupportedMediaType,
        E::Payload(actix_web::error::PayloadError::Io(e))
            if e.kind() == std::io::ErrorKind::TimedOut =>
        {
            ApiError::RequestTimeout
        }
        E::Overflow { .. } | E::OverflowKnownLength { .. } => ApiError::PayloadTooLarge { limit },
        E::Payload(actix_web::error::PayloadError::Overflow) => ApiError::PayloadTooLarge { limit },
        E::Deserialize(e) if e.is_data() => {
            ApiError::BadRequest(format!("invalid request body: {e}"))
        }
        E::Deserialize(e) => ApiError::BadRequest(format!("malformed JSON: {e}")),
        other => ApiError::BadRequest(format!("invalid request body: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Everything logged while `f` runs, one formatted line per event.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = sink.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_client_error_is_logged_below_error_without_the_input() {
        let log = logged(|| {
            for e in [
                ApiError::BadRequest("prompt: \"secret-input\" is not a valid name".into()),
                ApiError::Conflict("secret-input".into()),
                ApiError::Unprocessable {
                    code: "invalid_input",
                    message: "input.text: secret-input".into(),
                    details: None,
                },
            ] {
                let _ = e.error_response();
            }
        });
        assert!(log.contains("client error"), "{log}");
        assert!(!log.contains("ERROR"), "{log}");
        assert!(!log.contains("secret-input"), "{log}");
    }

    #[test]
    fn a_server_error_is_logged_at_error_with_its_cause_but_not_answered_with_it() {
        let mut status = StatusCode::OK;
        let log = logged(|| {
            status = ApiError::Internal("pool poisoned".into())
                .error_response()
                .status();
        });
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            log.contains("ERROR") && log.contains("pool poisoned"),
            "{log}"
        );
    }
}

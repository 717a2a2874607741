//! Authentication. Today a single configured key maps to the `default`
//! tenant; the extractor is where organisations, users and scoped keys will
//! plug in, and handlers already receive the tenant through it.

use std::future::{ready, Ready};

use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};

use crate::error::ApiError;
use crate::state::AppState;

pub const DEFAULT_TENANT: &str = "default";

/// Who is calling: everything they can see belongs to `tenant_id`.
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant_id: String,
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal("no app state".into()))?;
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthorized)?;
    if constant_time_eq(presented.as_bytes(), state.settings.api.api_key.as_bytes()) {
        Ok(Caller {
            tenant_id: DEFAULT_TENANT.to_string(),
        })
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Compares without an early exit, so timing does not leak the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn keys_compare_exactly() {
        assert!(constant_time_eq(b"dev-key", b"dev-key"));
        assert!(!constant_time_eq(b"dev-key", b"dev-kez"));
        assert!(!constant_time_eq(b"dev-key", b"dev-key2"));
    }
}

//! Authentication. Today a single configured key maps to the `default`
//! tenant; the extractor is where organisations, users and scoped keys will
//! plug in, and handlers already receive the tenant through it. It is
//! asynchronous already, so looking keys up in Postgres changes only
//! `authenticate`. The admin key (`api.admin_key`) stands in for the
//! `prompts:promote` and `admin` scopes until scoped keys exist: it is
//! accepted wherever the API key is, and it alone may move a protected
//! label.

use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures::future::LocalBoxFuture;
use llmq_shared::ids::TenantId;

use crate::error::ApiError;
use crate::state::AppState;

pub const DEFAULT_TENANT: &str = "default";

/// Who is calling: everything they can see belongs to `tenant`.
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant: TenantId,
    /// Presented the admin key.
    pub admin: bool,
}

impl Caller {
    /// Who the audit log names for this caller's label moves: the key
    /// kind until keys have ids of their own.
    pub fn actor(&self) -> &'static str {
        if self.admin {
            "admin-key"
        } else {
            "api-key"
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        // Owned copies: the future outlives the borrow of the request.
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let presented = bearer_token(req).map(str::to_string);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("no app state".into()))?;
            authenticate(&state, presented.as_deref()).await
        })
    }
}

fn bearer_token(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The caller a presented key stands for.
async fn authenticate(state: &AppState, presented: Option<&str>) -> Result<Caller, ApiError> {
    let presented = presented.ok_or(ApiError::Unauthorized)?;
    let api = &state.settings.api;
    let admin = !api.admin_key.is_empty()
        && constant_time_eq(presented.as_bytes(), api.admin_key.as_bytes());
    if admin || constant_time_eq(presented.as_bytes(), api.api_key.as_bytes()) {
        Ok(Caller {
            tenant: TenantId::new(DEFAULT_TENANT),
            admin,
        })
    } else if let Some((_, tenant)) = api
        .tenant_keys
        .iter()
        .find(|(key, _)| constant_time_eq(presented.as_bytes(), key.as_bytes()))
    {
        Ok(Caller {
            tenant: TenantId::new(tenant),
            admin: false,
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

//! HTTP handlers: extract, call one service function, map the result.
//!
//! Every route is named once, in `api_routes!` below: the same list
//! registers the handlers on the App (`configure`) and builds the OpenAPI
//! paths (`RouteDoc`), and each handler's path and method are written once,
//! in its actix attribute (utoipa reads them from there). So a route cannot
//! be served without being documented, and `allowed_methods` knows every
//! route for the 405 answers.

pub mod executions;
pub mod health;
pub mod webhooks;

use std::sync::LazyLock;

use actix_web::dev::ResourceDef;
use actix_web::{web, HttpRequest};
use utoipa::OpenApi;

use crate::error::ApiError;

macro_rules! api_routes {
    ($($module:ident :: $handler:ident),* $(,)?) => {
        /// Registers every route of the API on an App.
        pub fn configure(cfg: &mut web::ServiceConfig) {
            $(cfg.service($module::$handler);)*
        }

        /// The OpenAPI paths of exactly the routes `configure` registers.
        #[derive(OpenApi)]
        #[openapi(paths($($module::$handler),*))]
        pub struct RouteDoc;
    };
}

api_routes!(
    executions::submit,
    executions::get,
    executions::steps,
    executions::cancel,
    webhooks::create_endpoint,
    webhooks::list_endpoints,
    webhooks::get_endpoint,
    webhooks::update_endpoint,
    webhooks::delete_endpoint,
    webhooks::rotate_secret,
    webhooks::endpoint_deliveries,
    webhooks::recover,
    webhooks::put_tenant_secret,
    webhooks::execution_deliveries,
    webhooks::retry_delivery,
    health::healthz,
    health::readyz,
    health::metrics,
    health::openapi,
);

/// The served OpenAPI document: the components of `crate::openapi` and the
/// paths of every registered route.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = crate::openapi::ApiDoc::openapi();
    doc.merge(RouteDoc::openapi());
    doc
}

/// Every registered path pattern with the methods it serves, upper case.
pub fn registered_routes() -> Vec<(String, Vec<String>)> {
    RouteDoc::openapi()
        .paths
        .paths
        .iter()
        .map(|(path, item)| {
            let mut methods = Vec::new();
            for (name, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("PATCH", &item.patch),
                ("DELETE", &item.delete),
                ("HEAD", &item.head),
                ("OPTIONS", &item.options),
                ("TRACE", &item.trace),
            ] {
                if op.is_some() {
                    methods.push(name.to_string());
                }
            }
            (path.clone(), methods)
        })
        .collect()
}

static ROUTES: LazyLock<Vec<(ResourceDef, String)>> = LazyLock::new(|| {
    registered_routes()
        .into_iter()
        .map(|(path, methods)| (ResourceDef::new(path), methods.join(", ")))
        .collect()
});

/// The `Allow` value of a path some route serves, if any does.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .find(|(def, _)| def.is_match(path))
        .map(|(_, allow)| allow.as_str())
}

/// What answers a request no route took: 405 with `Allow` when the path
/// exists under another method, 404 otherwise.
pub async fn no_route(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(match allowed_methods(req.path()) {
        Some(allow) => ApiError::MethodNotAllowed {
            allow: allow.to_string(),
        },
        None => ApiError::NotFound("no such route".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_known_with_its_methods() {
        assert_eq!(allowed_methods("/v1/executions"), Some("POST"));
        assert_eq!(allowed_methods("/v1/executions/abc/cancel"), Some("POST"));
        assert_eq!(allowed_methods("/healthz"), Some("GET"));
        assert_eq!(allowed_methods("/nowhere"), None);
    }
}

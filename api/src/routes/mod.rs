//! HTTP handlers: extract, call one service function, map the result.
//!
//! Every route is named once, in one of the two lists below: `api_routes!`
//! for the client API and `ops_routes!` for what operators and scrapers
//! call (health, readiness, metrics, this document). The same list
//! registers the handlers on the App and builds the OpenAPI paths, and each
//! handler's path and method are written once, in its actix attribute
//! (utoipa reads them from there). So a route cannot be served without
//! being documented, and the 405 answers know every route of a listener.
//!
//! Which list a listener serves is its [`Served`] value: one listener
//! serves both unless `api.ops_addr` gives the operations routes their
//! own address, and then each listener serves only its own.

pub mod collections;
pub mod events;
pub mod executions;
pub mod health;
pub mod limits;
pub mod orgs;
pub mod prompts;
pub mod tools;
pub mod usage;
pub mod webhooks;

use std::sync::LazyLock;

use actix_web::dev::ResourceDef;
use actix_web::{web, HttpRequest};
use utoipa::OpenApi;

use crate::error::ApiError;

macro_rules! route_list {
    ($configure:ident, $doc:ident: $($module:ident :: $handler:ident),* $(,)?) => {
        fn $configure(cfg: &mut web::ServiceConfig) {
            $(cfg.service($module::$handler);)*
        }

        /// The OpenAPI paths of exactly the routes of this list.
        #[derive(OpenApi)]
        #[openapi(paths($($module::$handler),*))]
        pub struct $doc;
    };
}

route_list!(
    configure_api,
    ApiRouteDoc:
    executions::submit,
    executions::get,
    executions::steps,
    executions::cancel,
    executions::list,
    prompts::list,
    prompts::show,
    prompts::create_version,
    prompts::version,
    prompts::diff,
    prompts::move_label,
    prompts::rollback,
    prompts::history,
    prompts::stats,
    events::execution_events,
    events::tenant_events,
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
    orgs::create_org,
    orgs::list_orgs,
    orgs::get_org,
    orgs::create_key,
    orgs::list_keys,
    orgs::revoke_key,
    tools::put_tool,
    tools::list_tools,
    tools::get_tool,
    tools::delete_tool,
    collections::upsert_documents,
    collections::list_documents,
    collections::get_document,
    collections::delete_document,
    collections::get_collection,
    collections::put_collection,
    limits::get_org_limits,
    limits::put_org_limits,
    usage::usage,
);

route_list!(
    configure_ops,
    OpsRouteDoc:
    health::healthz,
    health::readyz,
    health::metrics,
    health::openapi,
);

/// The routes one listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// The client API and the operations routes, on one address.
    All,
    /// The client API only (`api.addr` when `api.ops_addr` is set).
    Api,
    /// Health, readiness, metrics and the document (`api.ops_addr`).
    Ops,
}

impl Served {
    /// Registers this listener's routes on an App.
    pub fn configure(self, cfg: &mut web::ServiceConfig) {
        if self != Self::Ops {
            configure_api(cfg);
        }
        if self != Self::Api {
            configure_ops(cfg);
        }
    }

    /// Every path pattern this listener serves, with its methods.
    pub fn routes(self) -> Vec<(String, Vec<String>)> {
        let mut doc = utoipa::openapi::OpenApi::default();
        if self != Self::Ops {
            doc.merge(ApiRouteDoc::openapi());
        }
        if self != Self::Api {
            doc.merge(OpsRouteDoc::openapi());
        }
        methods_by_path(&doc)
    }

    /// The `Allow` value of a path some route of this listener serves.
    pub fn allowed_methods(self, path: &str) -> Option<&'static str> {
        static TABLES: LazyLock<[Vec<(ResourceDef, String)>; 3]> = LazyLock::new(|| {
            [Served::All, Served::Api, Served::Ops].map(|served| {
                served
                    .routes()
                    .into_iter()
                    .map(|(path, methods)| (ResourceDef::new(path), methods.join(", ")))
                    .collect()
            })
        });
        TABLES[self as usize]
            .iter()
            .find(|(def, _)| def.is_match(path))
            .map(|(_, allow)| allow.as_str())
    }
}

/// The scopes a key needs for a route (method, upper case, and the path
/// pattern as registered): what the route's OpenAPI security requirement
/// lists, the one place a route's scope is written. A route without a
/// requirement (the operations routes) or with an empty list needs none.
pub fn required_scopes(method: &str, pattern: &str) -> &'static [llmq_shared::keys::Scope] {
    use llmq_shared::keys::Scope;
    use std::collections::HashMap;
    /// Path pattern → (method, scopes): looked up by `&str`, no allocation.
    type Table = HashMap<String, Vec<(String, Vec<Scope>)>>;
    static TABLE: LazyLock<Table> = LazyLock::new(|| {
        let mut table = Table::new();
        let doc = serde_json::to_value(ApiRouteDoc::openapi()).unwrap_or_default();
        let Some(paths) = doc["paths"].as_object() else {
            return table;
        };
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                let scopes = op["security"][0]["bearer"]
                    .as_array()
                    .map(|names| {
                        names
                            .iter()
                            .filter_map(|n| n.as_str())
                            .filter_map(|n| Scope::parse(n).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                table
                    .entry(path.clone())
                    .or_default()
                    .push((method.to_uppercase(), scopes));
            }
        }
        table
    });
    TABLE
        .get(pattern)
        .and_then(|methods| methods.iter().find(|(m, _)| m == method))
        .map(|(_, scopes)| scopes.as_slice())
        .unwrap_or(&[])
}

/// The served OpenAPI document: the components of `crate::openapi` and the
/// paths of every route, whichever listener serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = crate::openapi::ApiDoc::openapi();
    doc.merge(ApiRouteDoc::openapi());
    doc.merge(OpsRouteDoc::openapi());
    doc
}

/// Every path pattern of the API with the methods it serves, upper case.
pub fn registered_routes() -> Vec<(String, Vec<String>)> {
    Served::All.routes()
}

fn methods_by_path(doc: &utoipa::openapi::OpenApi) -> Vec<(String, Vec<String>)> {
    doc.paths
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

/// What answers a request no route of the listener took: 405 with `Allow`
/// when the path exists there under another method, 404 otherwise.
pub async fn no_route(
    served: Served,
    req: HttpRequest,
) -> Result<actix_web::HttpResponse, ApiError> {
    Err(match served.allowed_methods(req.path()) {
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
        let all = Served::All;
        assert_eq!(all.allowed_methods("/v1/executions"), Some("GET, POST"));
        assert_eq!(
            all.allowed_methods("/v1/executions/abc/cancel"),
            Some("POST")
        );
        assert_eq!(all.allowed_methods("/healthz"), Some("GET"));
        assert_eq!(all.allowed_methods("/nowhere"), None);
    }

    #[test]
    fn each_route_needs_the_scope_its_document_names() {
        use llmq_shared::keys::Scope;
        assert_eq!(
            required_scopes("POST", "/v1/executions"),
            &[Scope::ExecutionsWrite]
        );
        assert_eq!(
            required_scopes("GET", "/v1/executions/{id}"),
            &[Scope::ExecutionsRead]
        );
        assert_eq!(required_scopes("GET", "/healthz"), &[] as &[Scope]);
        // Only the registry's and the tools' reads are open to any key of the
        // organisation: a new route names its scope, or joins this list.
        let mut open: Vec<String> = ApiRouteDoc::openapi()
            .paths
            .paths
            .keys()
            .flat_map(|path| {
                ["GET", "POST", "PUT", "PATCH", "DELETE"]
                    .into_iter()
                    .filter(|m| {
                        Served::Api
                            .routes()
                            .iter()
                            .any(|(p, ms)| p == path && ms.iter().any(|x| x == m))
                    })
                    .filter(|m| required_scopes(m, path).is_empty())
                    .map(|m| format!("{m} {path}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        open.sort();
        assert_eq!(
            open,
            [
                "GET /v1/prompts",
                "GET /v1/prompts/{name}",
                "GET /v1/prompts/{name}/diff",
                "GET /v1/prompts/{name}/labels/{label}/history",
                "GET /v1/prompts/{name}/versions/{version}",
                "GET /v1/tools",
                "GET /v1/tools/{name}",
            ]
        );
        // Every scope a route document names is one the API knows: a
        // misspelt scope would silently need none.
        let doc = serde_json::to_value(ApiRouteDoc::openapi()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let names = op["security"][0]["bearer"].as_array();
                let names = names.unwrap_or_else(|| panic!("{method} {path}: no bearer security"));
                for n in names {
                    Scope::parse(n.as_str().unwrap())
                        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
                }
            }
        }
    }

    #[test]
    fn a_split_listener_knows_only_its_own_routes() {
        assert_eq!(
            Served::Api.allowed_methods("/v1/executions"),
            Some("GET, POST")
        );
        assert_eq!(Served::Api.allowed_methods("/metrics"), None);
        assert_eq!(Served::Ops.allowed_methods("/metrics"), Some("GET"));
        assert_eq!(Served::Ops.allowed_methods("/v1/executions"), None);
        let all = Served::All.routes().len();
        assert_eq!(Served::Api.routes().len() + Served::Ops.routes().len(), all);
    }
}

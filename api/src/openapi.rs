//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::resources::{
    ExecutionResource, Links, PromptRef, StepList, StepResource, SubmitExecution, WebhookSpec,
};
use crate::routes::{health, RouteDoc};

#[derive(OpenApi)]
#[openapi(
    info(title = "llmq", description = "Durable LLM executions over HTTP."),
        components(schemas(
        SubmitExecution, WebhookSpec, ExecutionResource, PromptRef, Links, StepList, StepResource,
        ErrorBody, ErrorDetail, health::Readiness,
        llmq_shared::execution::ExecutionStatus, llmq_shared::execution::Usage, llmq_shared::execution::ErrorInfo,
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The whole document: the components above and the paths of every
/// registered route (`crate::routes::RouteDoc`).
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(RouteDoc::openapi());
    doc
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

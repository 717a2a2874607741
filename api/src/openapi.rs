//! The OpenAPI document, generated from the handlers' annotations, and
//! the route that serves it.

use actix_web::{get, HttpResponse};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::resources::{
    ExecutionResource, Links, PromptRef, StepList, StepResource, SubmitExecution, WebhookSpec,
};
use crate::routes::{executions, health};

#[derive(OpenApi)]
#[openapi(
    info(title = "llmq", description = "Durable LLM executions over HTTP."),
    paths(
        executions::submit, executions::get, executions::steps, executions::cancel,
        health::healthz, health::readyz, health::metrics, serve_document,
    ),
    components(schemas(
        SubmitExecution, WebhookSpec, ExecutionResource, PromptRef, Links, StepList, StepResource,
        ErrorBody, ErrorDetail, health::Readiness,
        llmq_shared::execution::ExecutionStatus, llmq_shared::execution::Usage, llmq_shared::execution::ErrorInfo,
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

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

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3 document")))]
#[get("/openapi.json")]
pub async fn serve_document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

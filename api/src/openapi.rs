//! The OpenAPI document's components (schemas and the bearer scheme). The
//! paths come from the route list (`crate::routes::RouteDoc`), which merges
//! them with these into the served document (`crate::routes::document`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::resources::{
    ExecutionResource, Links, PromptRef, Readiness, StepList, StepResource, SubmitExecution,
    WebhookSpec,
};
use crate::webhook_resources::{
    AttemptResource, CreateEndpoint, DeliveryList, DeliveryResource, EndpointList,
    EndpointResource, EndpointWithSecret, RecoverRequest, RecoverResult, UpdateEndpoint,
    WebhookSecret,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "llmq", description = "Durable LLM executions over HTTP."),
    components(schemas(
        SubmitExecution, WebhookSpec, ExecutionResource, PromptRef, Links, StepList, StepResource,
        ErrorBody, ErrorDetail, Readiness,
        llmq_shared::execution::ExecutionStatus, llmq_shared::execution::Usage, llmq_shared::execution::ErrorInfo,
        CreateEndpoint, UpdateEndpoint, EndpointResource, EndpointWithSecret, EndpointList, WebhookSecret,
        DeliveryResource, AttemptResource, DeliveryList, RecoverRequest, RecoverResult,
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

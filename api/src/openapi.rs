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
        crate::resources::prompts::PromptList, crate::resources::prompts::PromptListItem,
        crate::resources::prompts::VersionSummary, crate::resources::prompts::LabelResource,
        crate::resources::prompts::PromptResource, crate::resources::prompts::VersionResource,
        crate::resources::prompts::CreatedVersion, crate::resources::prompts::VersionDiff,
        crate::resources::prompts::MoveLabel, crate::resources::prompts::SegmentTarget,
        crate::resources::prompts::RollbackLabel, crate::resources::prompts::LabelMoveResource,
        crate::resources::prompts::LabelHistory, llmq_shared::db::stats::VersionStats,
        crate::resources::prompts::PromptStats, crate::resources::prompts::ExecutionList,
        crate::services::prompts::diff::FieldChange,
        llmq_shared::prompt::LabelRule, llmq_shared::prompt::Target,
        llmq_shared::execution::ExecutionStatus, llmq_shared::execution::Usage, llmq_shared::execution::ErrorInfo,
        CreateEndpoint, UpdateEndpoint, EndpointResource, EndpointWithSecret, EndpointList, WebhookSecret,
        DeliveryResource, AttemptResource, DeliveryList, RecoverRequest, RecoverResult,
        crate::resources::tenancy::CreateOrg, crate::resources::tenancy::OrgResource,
        crate::resources::tenancy::OrgList, crate::resources::tenancy::CreateKey,
        crate::resources::tenancy::KeyResource, crate::resources::tenancy::KeyWithSecret,
        crate::resources::tenancy::KeyList,
        crate::tool_resources::ToolResource, crate::tool_resources::ToolList,
        crate::collection_resources::DocumentInput, crate::collection_resources::UpsertDocuments,
        crate::collection_resources::DocumentResource, crate::collection_resources::DocumentList,
        crate::collection_resources::UpdateCollection, crate::collection_resources::CollectionResource,
        llmq_shared::retrieval::DocumentStatus,
        crate::routes::limits::OrgLimitsResource, llmq_shared::config::OrgLimits,
        crate::routes::usage::UsageReport, llmq_shared::db::usage::UsageRow,
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

//! Health, readiness and metrics.

use actix_web::{get, web, HttpResponse};

use crate::resources::Readiness;
use crate::state::AppState;

/// The process is alive.
#[utoipa::path(tag = "operations", responses((status = 200, description = "Alive")))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Postgres and RabbitMQ are reachable.
#[utoipa::path(tag = "operations", responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let postgres = llmq_shared::db::ping(&state.pool).await.is_ok();
    let rabbitmq = state.publisher.is_connected().await;
    let body = Readiness { postgres, rabbitmq };
    if postgres && rabbitmq {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics in the text format.
#[utoipa::path(tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}

/// This document.
#[utoipa::path(tag = "operations", responses((status = 200, description = "OpenAPI 3 document")))]
#[get("/openapi.json")]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(super::document())
}

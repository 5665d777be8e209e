//! Liveness, readiness and metrics endpoints for load balancers and monitoring.

use actix_web::{HttpResponse, get, web};
use serde::Serialize;

use super::AppState;
use super::error::ApiError;
use super::metrics::Metrics;
use crate::store::{self, Readiness};

/// Readiness report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReadinessReport {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// Whether the database answered.
    pub database: bool,
    /// Newest migration applied to the database, if known.
    pub schema_version: Option<i32>,
    /// Newest migration this server carries.
    pub expected_schema_version: i32,
}

/// The process is alive (it answers HTTP); says nothing about its dependencies.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = String)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// The database is reachable and its schema is current; 503 otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = ReadinessReport),
        (status = 503, description = "Not ready", body = ReadinessReport)))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let expected = store::latest_migration();
    let (ready, database, applied) = match store::readiness(&state.pool).await {
        Readiness::Ready => (true, true, Some(expected)),
        Readiness::Unreachable => (false, false, None),
        Readiness::SchemaMismatch { applied, .. } => (false, true, applied),
    };
    let report = ReadinessReport {
        status: if ready { "ready" } else { "not_ready" },
        database,
        schema_version: applied,
        expected_schema_version: expected,
    };
    if ready {
        HttpResponse::Ok().json(report)
    } else {
        HttpResponse::ServiceUnavailable().json(report)
    }
}

/// Prometheus text exposition: request counts and latencies, database pool state, domain metrics
/// (agents, tokens, receipts, pairing, mail, audit sealing, policy decisions; `crate::metrics`).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String)))]
#[get("/metrics")]
pub async fn metrics(
    state: web::Data<AppState>,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, ApiError> {
    let body = metrics
        .render(&state.pool)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body))
}

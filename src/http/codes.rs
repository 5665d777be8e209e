//! HTTP endpoint of dispatchers for offline keypad codes (`crate::codes`).

use actix_web::{HttpResponse, post, web};
use utoipa::OpenApi;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::auth::Actor;
use crate::codes::standing::ShownCode;
use crate::codes::{self, IncidentCodeRequest, IssuedCode, SecretRoot};
use crate::store::StoreError;

/// OpenAPI description of these endpoints.
#[derive(OpenApi)]
#[openapi(
    paths(issue_incident_code, reveal_standing_codes),
    components(schemas(IncidentCodeRequest, IssuedCode, ShownCode)),
    tags((name = "keypad", description = "One-time keypad codes read to a crew by radio"))
)]
pub struct CodesApi;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(issue_incident_code)
        .service(reveal_standing_codes);
}

/// A dispatcher issues a one-time keypad code for a lock of the grant's property, to read to the
/// crew by radio. Needs a live grant and a fresh WebAuthn step-up; the code works once, offline,
/// until the earlier of the grant's end and the requested length (default 30 minutes). The
/// digits are in this answer only: they are stored nowhere.
#[utoipa::path(post, path = "/api/v1/grants/{grant}/keypad-codes", tag = "keypad",
    params(("grant" = Uuid, Path, description = "The grant")),
    request_body = IncidentCodeRequest,
    responses((status = 201, body = IssuedCode), (status = 400), (status = 401), (status = 403),
              (status = 404), (status = 409)))]
#[post("/api/v1/grants/{grant}/keypad-codes")]
pub async fn issue_incident_code(
    state: web::Data<AppState>,
    actor: Actor,
    grant: web::Path<Uuid>,
    body: web::Json<IncidentCodeRequest>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let root = SecretRoot::derive(&state.kek);
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let code = codes::issue_incident(
        &mut client,
        &state.policy,
        &root,
        &actor,
        grant.into_inner(),
        &body,
        now,
    )
    .await?;
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(code))
}

/// A trusted party's current standing keypad codes, with their digits (fresh WebAuthn step-up;
/// the policy decides as for a token). The codes are mailed as they are issued; this is for
/// when the mail is lost. The answer is `no-store`.
#[utoipa::path(post, path = "/api/v1/trusted/keypad-codes", tag = "keypad",
    responses((status = 200, body = [ShownCode]), (status = 401), (status = 403), (status = 404)))]
#[post("/api/v1/trusted/keypad-codes")]
pub async fn reveal_standing_codes(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let root = SecretRoot::derive(&state.kek);
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let codes = codes::standing::reveal(&mut client, &state.policy, &root, &actor, now).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(codes))
}

//! HTTP endpoints of live consent (issue 11 §3): the homeowner sees a grant's request for consent
//! and answers it with the mailed link's secret and a fresh passkey assertion.

use actix_web::{HttpResponse, get, post, web};
use utoipa::OpenApi;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::auth::Actor;
use crate::emergency::consent::{self, Answer, Consent, ConsentAnswer, ConsentState};
use crate::plans::ConsentFallback;
use crate::store::StoreError;

/// OpenAPI description of these endpoints.
#[derive(OpenApi)]
#[openapi(
    paths(get_consent, answer_consent),
    components(schemas(Consent, ConsentAnswer, Answer, ConsentState, ConsentFallback)),
    tags((name = "consent", description = "Live consent: the homeowner approves or refuses a grant"))
)]
pub struct ConsentApi;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get_consent).service(answer_consent);
}

/// A grant's request for the homeowner's consent, for the owner of its property.
#[utoipa::path(get, path = "/api/v1/consents/{grant}", tag = "consent",
    params(("grant" = Uuid, Path, description = "The grant asked for")),
    responses((status = 200, body = Consent), (status = 401), (status = 404)))]
#[get("/api/v1/consents/{grant}")]
pub async fn get_consent(
    state: web::Data<AppState>,
    actor: Actor,
    grant: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let now = state.clock.now();
    let found = consent::view(&mut client, &state.policy, &actor, *grant, now).await?;
    Ok(HttpResponse::Ok().json(found))
}

/// The owner approves or refuses (the mailed link's secret, and a step-up made after the request
/// was asked): approve lets the grant go on (live, or to a second dispatcher where the plan asks);
/// refuse ends it unused. The link answers once and not after the deadline (409).
#[utoipa::path(post, path = "/api/v1/consents/{grant}/answer", tag = "consent",
    params(("grant" = Uuid, Path, description = "The grant asked for")),
    request_body = ConsentAnswer,
    responses((status = 200, body = Consent), (status = 400), (status = 401), (status = 403),
              (status = 404), (status = 409)))]
#[post("/api/v1/consents/{grant}/answer")]
pub async fn answer_consent(
    state: web::Data<AppState>,
    actor: Actor,
    grant: web::Path<Uuid>,
    body: web::Json<ConsentAnswer>,
) -> Result<HttpResponse, ApiError> {
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let now = state.clock.now();
    let answered = consent::decide(&mut client, &state.policy, &actor, *grant, &body, now).await?;
    Ok(HttpResponse::Ok().json(answered))
}

//! HTTP endpoints of responders: the live grants that name them, and override-token requests.

use actix_web::{HttpResponse, get, post, web};
use utoipa::OpenApi;

use super::AppState;
use super::error::ApiError;
use crate::auth::Actor;
use crate::domain::Role;
use crate::emergency::grants::{self, GrantLock, ResponderGrant};
use crate::emergency::tokens::{self, IssuedToken, Minting, TokenRequest};
use crate::store::StoreError;

/// OpenAPI description of these endpoints.
#[derive(OpenApi)]
#[openapi(
    paths(my_grants, request_token),
    components(schemas(ResponderGrant, GrantLock, TokenRequest, IssuedToken)),
    tags((name = "responder", description = "Grants naming the responder and override tokens"))
)]
pub struct TokensApi;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(my_grants).service(request_token);
}

/// The live grants that name the signed-in responder, with the locks of each property.
#[utoipa::path(get, path = "/api/v1/responder/grants", tag = "responder",
    responses((status = 200, body = [ResponderGrant]), (status = 401), (status = 403)))]
#[get("/api/v1/responder/grants")]
pub async fn my_grants(state: web::Data<AppState>, actor: Actor) -> Result<HttpResponse, ApiError> {
    if !actor.has(Role::Responder) {
        return Err(ApiError::Forbidden);
    }
    let client = state.pool.get().await.map_err(StoreError::from)?;
    let now = state.clock.now();
    Ok(HttpResponse::Ok().json(grants::live_for_responder(&client, &actor, now).await?))
}

/// A responder named in a live grant asks for a token for one lock of the property. Needs a
/// WebAuthn step-up from the last few minutes with a P-256 security key: the token is bound to that
/// key (`cnf`). The token is recorded, audited and queued for the lock before it is returned.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "responder", request_body = TokenRequest,
    responses((status = 201, body = IssuedToken), (status = 401), (status = 404), (status = 409),
              (status = 503)))]
#[post("/api/v1/tokens")]
pub async fn request_token(
    state: web::Data<AppState>,
    actor: Actor,
    body: web::Json<TokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let minting = Minting {
        key_dir: &state.settings.key_dir,
        lifetime: state.settings.token_lifetime,
    };
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let token = tokens::issue(&mut client, &state.policy, minting, &actor, &body, now).await?;
    Ok(HttpResponse::Created().json(token))
}

//! HTTP endpoints of trusted parties (issue 11 §1): the homeowner's invitations, edits, pauses
//! and revocations, and the trusted party's own accesses and token requests.

use actix_web::{HttpResponse, delete, get, post, put, web};
use utoipa::OpenApi;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::auth::Actor;
use crate::emergency::tokens::Minting;
use crate::store::StoreError;
use crate::trusted::remote::{self, RemoteOutcome, RemoteUnlock, RemoteUnlockRequest};
use crate::trusted::{
    self, MyAccess, NewTrustedParty, Schedule, TrustedParty, TrustedPartyEdit, TrustedStatusChoice,
    TrustedToken, TrustedTokenRequest,
};

/// OpenAPI description of these endpoints.
#[derive(OpenApi)]
#[openapi(
    paths(list_trusted, invite_trusted, edit_trusted, revoke_trusted, my_access, request_trusted_token,
        remote_open),
    components(schemas(RemoteUnlockRequest, RemoteUnlock, RemoteOutcome, NewTrustedParty, Schedule, TrustedParty, TrustedPartyEdit,
        TrustedStatusChoice, MyAccess, TrustedTokenRequest, TrustedToken)),
    tags((name = "trusted", description = "Trusted parties: standing access a homeowner gives"))
)]
pub struct TrustedApi;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(list_trusted)
        .service(invite_trusted)
        .service(edit_trusted)
        .service(revoke_trusted)
        .service(my_access)
        .service(request_trusted_token)
        .service(remote_open);
}

/// The trusted parties of a property, for its owner.
#[utoipa::path(get, path = "/api/v1/properties/{id}/trusted-parties", tag = "trusted",
    responses((status = 200, body = [TrustedParty]), (status = 401), (status = 404)))]
#[get("/api/v1/properties/{id}/trusted-parties")]
pub async fn list_trusted(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let now = state.clock.now();
    let list = trusted::list(&mut client, &state.policy, &actor, *id, now).await?;
    Ok(HttpResponse::Ok().json(list))
}

/// The owner invites a trusted party by e-mail (fresh step-up): the invitee gets a mail in their
/// own words (who invited them, for which home, when) with a one-time link to create a passkey,
/// after which they may ask for tokens inside the terms.
#[utoipa::path(post, path = "/api/v1/properties/{id}/trusted-parties", tag = "trusted",
    request_body = NewTrustedParty,
    responses((status = 201, body = TrustedParty), (status = 400), (status = 401), (status = 404),
              (status = 409)))]
#[post("/api/v1/properties/{id}/trusted-parties")]
pub async fn invite_trusted(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<NewTrustedParty>,
) -> Result<HttpResponse, ApiError> {
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let now = state.clock.now();
    let (party, _secret) = trusted::invite(
        &mut client,
        &state.policy,
        &state.kek,
        &state.settings.public_origin,
        &actor,
        *id,
        &body,
        now,
    )
    .await?;
    Ok(HttpResponse::Created().json(party))
}

/// The owner edits the terms, pauses or resumes (fresh step-up); tokens already issued are
/// revoked, at the locks too.
#[utoipa::path(put, path = "/api/v1/properties/{id}/trusted-parties/{party}", tag = "trusted",
    request_body = TrustedPartyEdit,
    params(("id" = Uuid, Path, description = "Property"), ("party" = Uuid, Path, description = "Trusted party")),
    responses((status = 200, body = TrustedParty), (status = 400), (status = 401), (status = 404),
              (status = 409)))]
#[put("/api/v1/properties/{id}/trusted-parties/{party}")]
pub async fn edit_trusted(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<TrustedPartyEdit>,
) -> Result<HttpResponse, ApiError> {
    let (property, party) = path.into_inner();
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let now = state.clock.now();
    let root = crate::codes::SecretRoot::derive(&state.kek);
    let party = trusted::edit(
        &mut client,
        &state.policy,
        &root,
        &actor,
        property,
        party,
        &body,
        now,
    )
    .await?;
    Ok(HttpResponse::Ok().json(party))
}

/// The owner revokes a trusted party for good (fresh step-up); tokens already issued are revoked
/// at the locks.
#[utoipa::path(delete, path = "/api/v1/properties/{id}/trusted-parties/{party}", tag = "trusted",
    params(("id" = Uuid, Path, description = "Property"), ("party" = Uuid, Path, description = "Trusted party")),
    responses((status = 200, body = TrustedParty), (status = 401), (status = 404)))]
#[delete("/api/v1/properties/{id}/trusted-parties/{party}")]
pub async fn revoke_trusted(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (property, party) = path.into_inner();
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let now = state.clock.now();
    let party = trusted::revoke(&mut client, &state.policy, &actor, property, party, now).await?;
    Ok(HttpResponse::Ok().json(party))
}

/// The accesses the signed-in trusted party holds, with whether a token request would succeed now.
#[utoipa::path(get, path = "/api/v1/trusted/access", tag = "trusted",
    responses((status = 200, body = [MyAccess]), (status = 401), (status = 403)))]
#[get("/api/v1/trusted/access")]
pub async fn my_access(state: web::Data<AppState>, actor: Actor) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await.map_err(StoreError::from)?;
    let now = state.clock.now();
    Ok(HttpResponse::Ok().json(trusted::mine(&client, &actor, now).await?))
}

/// A trusted party asks for a token for one lock, inside the homeowner's terms, exactly as a
/// responder does: the request's own `assertion` over a challenge from
/// `GET /api/v1/tokens/challenge?trusted_party=…&lock=…` (or a WebAuthn step-up from the last few
/// minutes); the token is bound to that key (`cnf`), opens once and is short-lived. Outside the
/// terms: 409 with the reason (audited).
#[utoipa::path(post, path = "/api/v1/trusted/tokens", tag = "trusted", request_body = TrustedTokenRequest,
    responses((status = 201, body = TrustedToken), (status = 400), (status = 401), (status = 404), (status = 409),
              (status = 503)))]
#[post("/api/v1/trusted/tokens")]
pub async fn request_trusted_token(
    state: web::Data<AppState>,
    actor: Actor,
    body: web::Json<TrustedTokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let minting = Minting {
        key_dir: &state.settings.key_dir,
        lifetime: state.settings.token_lifetime,
    };
    let (rp, keys) = super::tokens::proving_parts(&state)?;
    let proving = crate::auth::proof::Proving {
        rp: &rp,
        keys: &keys,
    };
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let token = trusted::issue_token(
        &mut client,
        &state.policy,
        minting,
        proving,
        &actor,
        &body,
        now,
    )
    .await?;
    Ok(HttpResponse::Created().json(token))
}

/// The homeowner opens a lock of their property remotely for `seconds` (fresh passkey step-up).
/// The lock verifies a short-lived `remote_open` token sent over its channel and opens; the answer
/// waits (at most a few seconds) and says when the lock acknowledged and whether it opened, or that
/// it did not answer (then it will not open later: the token expires within 30 seconds).
#[utoipa::path(post, path = "/api/v1/locks/{id}/remote-open", tag = "trusted",
    request_body = RemoteUnlockRequest,
    params(("id" = Uuid, Path, description = "Lock")),
    responses((status = 200, body = RemoteUnlock), (status = 400), (status = 401), (status = 404),
              (status = 503)))]
#[post("/api/v1/locks/{id}/remote-open")]
pub async fn remote_open(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<RemoteUnlockRequest>,
) -> Result<HttpResponse, ApiError> {
    let minting = Minting {
        key_dir: &state.settings.key_dir,
        lifetime: state.settings.token_lifetime,
    };
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let answer = remote::unlock(
        &mut client,
        &state.policy,
        minting,
        state.clock.as_ref(),
        &actor,
        *id,
        &body,
        remote::ACK_WAIT,
    )
    .await?;
    Ok(HttpResponse::Ok().json(answer))
}

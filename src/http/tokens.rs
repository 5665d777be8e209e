//! HTTP endpoints of responders: the live grants that name them, and override-token requests.

use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::auth::Actor;
use crate::auth::client::AuthKeys;
use crate::auth::proof::{self, Bound};
use crate::domain::Role;
use crate::emergency::grants::{self, GrantLock, ResponderGrant};
use crate::emergency::tokens::{self, IssuedToken, Minting, TokenRequest};
use crate::store::StoreError;

/// OpenAPI description of these endpoints.
#[derive(OpenApi)]
#[openapi(
    paths(my_grants, token_challenge, request_token),
    components(schemas(ResponderGrant, GrantLock, TokenRequest, IssuedToken, TokenChallenge)),
    tags((name = "responder", description = "Grants naming the responder and override tokens"))
)]
pub struct TokensApi;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(my_grants)
        .service(token_challenge)
        .service(request_token);
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

/// What a token challenge is asked for: a lock, and either the grant (responders) or the trusted
/// party record (trusted parties) the token would be issued under.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChallengeQuery {
    /// The lock.
    pub lock: Uuid,
    /// The grant (a responder's token).
    pub grant: Option<Uuid>,
    /// The trusted party record (a trusted party's token).
    pub trusted_party: Option<Uuid>,
}

/// A token challenge: WebAuthn request options whose challenge the server did not store.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenChallenge {
    /// Pass to `navigator.credentials.get()`; send the resulting credential as the token request's
    /// `assertion`.
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
    /// The assertion must reach the server before this instant.
    pub expires_at: DateTime<Utc>,
}

/// The relying party and keys that check a token request's own assertion.
pub(crate) fn proving_parts(
    state: &AppState,
) -> Result<(webauthn_rs::Webauthn, AuthKeys), ApiError> {
    Ok((
        crate::auth::webauthn::relying_party(&state.settings.public_origin)?,
        AuthKeys::derive(&state.kek),
    ))
}

/// A challenge for one token request of the signed-in session: for `lock` under `grant`
/// (responders) or `trusted_party` (trusted parties). Nothing is stored: the challenge carries
/// an HMAC over the session, the user, the grant or record, the lock and the time, and is good for
/// one token request within five minutes. Whether the grant or record allows a token is decided by
/// the token request, not here.
#[utoipa::path(get, path = "/api/v1/tokens/challenge", tag = "responder", params(ChallengeQuery),
    responses((status = 200, body = TokenChallenge), (status = 400), (status = 401), (status = 403)))]
#[get("/api/v1/tokens/challenge")]
pub async fn token_challenge(
    state: web::Data<AppState>,
    actor: Actor,
    query: web::Query<ChallengeQuery>,
) -> Result<HttpResponse, ApiError> {
    let bound = match (query.grant, query.trusted_party) {
        (Some(grant), None) if actor.has(Role::Responder) => Bound::Grant {
            grant,
            lock: query.lock,
        },
        (None, Some(party)) if actor.has(Role::TrustedParty) => Bound::Trusted {
            party,
            lock: query.lock,
        },
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::BadRequest(
                "give either grant or trusted_party, not both".to_owned(),
            ));
        }
        _ => return Err(ApiError::Forbidden),
    };
    let (rp, keys) = proving_parts(&state)?;
    let client = state.pool.get().await.map_err(StoreError::from)?;
    let now = state.clock.now();
    let proving = proof::Proving {
        rp: &rp,
        keys: &keys,
    };
    let (options, expires_at) = proof::request_options(&client, proving, &actor, bound, now)
        .await
        .map_err(|e| match e {
            // No active credential: nothing could answer.
            crate::auth::error::AuthError::AuthenticationFailed => {
                ApiError::Conflict("you have no active security key to confirm with".to_owned())
            }
            other => other.into(),
        })?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(TokenChallenge {
            options,
            expires_at,
        }))
}

/// A responder named in a live grant asks for a token for one lock of the property. The request
/// carries its own WebAuthn `assertion` over a challenge from `GET /api/v1/tokens/challenge` for
/// this grant and lock (one request per token; a challenge answers once), or, without one, needs a
/// step-up from the last few minutes. Either way with a P-256 security key: the token is bound to
/// that key (`cnf`). The assertion's check, the token's record, audit entry and inbox entry and the
/// homeowner's mail commit in one transaction before it is returned. A bad, expired, replayed or
/// foreign challenge is a 400; a refused assertion a 401.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "responder", request_body = TokenRequest,
    responses((status = 201, body = IssuedToken), (status = 400), (status = 401), (status = 404),
              (status = 409), (status = 503)))]
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
    let (rp, keys) = proving_parts(&state)?;
    let proving = proof::Proving {
        rp: &rp,
        keys: &keys,
    };
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let token = tokens::issue(
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

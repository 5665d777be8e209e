//! "My security keys" over the JSON API (`auth::keys` is the core): every signed-in user lists,
//! adds (a registration ceremony bound to the session), names and removes their own keys. Adding
//! and removing need a fresh step-up; the last key is never removed.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use serde::Deserialize;
use utoipa::OpenApi;
use uuid::Uuid;
use webauthn_rs::prelude::RegisterPublicKeyCredential;

use super::AppState;
use super::error::{ApiError, Problem};
use crate::auth::keys::{self, SecurityKey};
use crate::auth::session::Actor;
use crate::auth::webauthn::{Challenge, relying_party};
use crate::store::StoreError;

/// OpenAPI description of these endpoints.
#[derive(OpenApi)]
#[openapi(
    paths(list_keys, add_key_start, add_key_finish, rename_key, remove_key),
    components(schemas(SecurityKey, AddKeyFinish, KeyName)),
    tags((name = "identity", description = "Accounts, WebAuthn ceremonies and sessions"))
)]
pub struct KeysApi;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(list_keys)
        .service(add_key_start)
        .service(add_key_finish)
        .service(rename_key)
        .service(remove_key);
}

/// The end of adding a key.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AddKeyFinish {
    /// From the start call.
    pub ceremony: Uuid,
    /// The `PublicKeyCredential` from `navigator.credentials.create()`, as JSON.
    #[schema(value_type = Object)]
    pub credential: RegisterPublicKeyCredential,
    /// A name for the key, 1 to 100 characters (e.g. "blue key on my keyring").
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
}

/// A key's new name.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct KeyName {
    /// 1 to 100 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
}

async fn connection(state: &AppState) -> Result<deadpool_postgres::Client, ApiError> {
    Ok(state.pool.get().await.map_err(StoreError::from)?)
}

async fn key_of(
    client: &deadpool_postgres::Client,
    actor: &Actor,
    id: Uuid,
) -> Result<SecurityKey, ApiError> {
    keys::list(client, actor)
        .await?
        .into_iter()
        .find(|k| k.id == id)
        .ok_or(ApiError::NotFound)
}

/// The signed-in user's security keys (or passkeys), oldest first; removed ones are not listed.
#[utoipa::path(
    get,
    path = "/api/v1/me/keys",
    tag = "identity",
    responses((status = 200, description = "The keys", body = [SecurityKey]))
)]
#[get("/api/v1/me/keys")]
#[tracing::instrument(skip_all)]
async fn list_keys(state: web::Data<AppState>, actor: Actor) -> Result<HttpResponse, ApiError> {
    let client = connection(&state).await?;
    Ok(HttpResponse::Ok().json(keys::list(&client, &actor).await?))
}

/// Starts adding a key: WebAuthn creation options of the kind the user's roles require (an
/// attested hardware key for staff, a passkey for homeowners). Needs a fresh step-up.
#[utoipa::path(
    post,
    path = "/api/v1/me/keys/start",
    tag = "identity",
    responses(
        (status = 200, description = "WebAuthn creation options", body = Challenge),
        (status = 401, description = "Not signed in, or step-up required", body = Problem)
    )
)]
#[post("/api/v1/me/keys/start")]
#[tracing::instrument(skip_all)]
async fn add_key_start(state: web::Data<AppState>, actor: Actor) -> Result<HttpResponse, ApiError> {
    let client = connection(&state).await?;
    let rp = relying_party(&state.settings.public_origin)?;
    let challenge = keys::start_add(&client, &rp, &actor, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(challenge))
}

/// Finishes adding a key started by this session; the step-up must still be fresh.
#[utoipa::path(
    post,
    path = "/api/v1/me/keys/finish",
    tag = "identity",
    request_body = AddKeyFinish,
    responses(
        (status = 201, description = "Added", body = SecurityKey),
        (status = 400, description = "Refused authenticator, bad name, or unknown/expired/used ceremony", body = Problem),
        (status = 401, description = "Not signed in, or step-up required", body = Problem),
        (status = 409, description = "The authenticator is already enrolled", body = Problem)
    )
)]
#[post("/api/v1/me/keys/finish")]
#[tracing::instrument(skip_all)]
async fn add_key_finish(
    state: web::Data<AppState>,
    actor: Actor,
    body: web::Json<AddKeyFinish>,
) -> Result<HttpResponse, ApiError> {
    let name = match body.name.as_deref() {
        Some(n) => Some(keys::parse_name(n)?),
        None => None,
    };
    let mut client = connection(&state).await?;
    let rp = relying_party(&state.settings.public_origin)?;
    let id = keys::finish_add(
        &mut client,
        &rp,
        &actor,
        body.ceremony,
        &body.credential,
        name.as_ref(),
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Created().json(key_of(&client, &actor, id).await?))
}

/// Names one of the user's keys.
#[utoipa::path(
    patch,
    path = "/api/v1/me/keys/{id}",
    tag = "identity",
    params(("id" = Uuid, Path, description = "The key's id")),
    request_body = KeyName,
    responses(
        (status = 200, description = "Renamed", body = SecurityKey),
        (status = 404, description = "Not one of the user's keys", body = Problem)
    )
)]
#[patch("/api/v1/me/keys/{id:[0-9a-fA-F-]+}")]
#[tracing::instrument(skip_all)]
async fn rename_key(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<KeyName>,
) -> Result<HttpResponse, ApiError> {
    let name = keys::parse_name(&body.name)?;
    let mut client = connection(&state).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    keys::rename(&tx, &actor, *id, &name, state.clock.now()).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(key_of(&client, &actor, *id).await?))
}

/// Removes one of the user's keys and ends the sessions it opened. Needs a fresh step-up; the
/// user's last active key is refused (409).
#[utoipa::path(
    delete,
    path = "/api/v1/me/keys/{id}",
    tag = "identity",
    params(("id" = Uuid, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Not signed in, or step-up required", body = Problem),
        (status = 404, description = "Not one of the user's keys", body = Problem),
        (status = 409, description = "It is the user's last key", body = Problem)
    )
)]
#[delete("/api/v1/me/keys/{id:[0-9a-fA-F-]+}")]
#[tracing::instrument(skip_all)]
async fn remove_key(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut client = connection(&state).await?;
    keys::remove(&mut client, &actor, *id, state.clock.now()).await?;
    Ok(HttpResponse::NoContent().finish())
}

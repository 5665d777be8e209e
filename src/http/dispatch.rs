//! HTTP endpoints of dispatch: incidents, grants, approvals, revocation, CAD API credentials, and
//! the HMAC-signed CAD integration under `/api/v1/cad/` (exempt from the browser Origin check:
//! every CAD request carries its own signature).
//!
//! Handlers extract, call one function of [`crate::emergency`], and map the result; the mapping of
//! [`EmergencyError`] to [`ApiError`] is here.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::auth::Actor;
use crate::domain::Role;
use crate::emergency::EmergencyError;
use crate::emergency::cad::{self, CadAction, CadCall, NewCredential};
use crate::emergency::grants::{self, Grant, NewGrant};
use crate::emergency::incidents::{self, Incident, IncidentLink, NewIncident, NewLink, Origin};
use crate::emergency::keys::KeyError;
use crate::store::StoreError;

/// OpenAPI description of these endpoints.
#[derive(OpenApi)]
#[openapi(
    paths(
        open_incident, list_incidents, get_incident, close_incident, link_property, create_grant, get_grant,
        approve_grant, revoke_grant, create_cad_credential, cad_open_incident, cad_close_incident
    ),
    components(schemas(NewIncident, Incident, IncidentDetail, NewLink, IncidentLink, NewGrant, Grant, NewCadCredential, NewCredential)),
    tags((name = "dispatch", description = "Incidents and grants of entry"),
         (name = "cad", description = "Computer-aided dispatch integration (HMAC-signed, idempotent)"))
)]
pub struct DispatchApi;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(open_incident)
        .service(list_incidents)
        .service(get_incident)
        .service(close_incident)
        .service(link_property)
        .service(create_grant)
        .service(get_grant)
        .service(approve_grant)
        .service(revoke_grant)
        .service(create_cad_credential)
        .service(cad_open_incident)
        .service(cad_close_incident);
}

impl From<EmergencyError> for ApiError {
    fn from(e: EmergencyError) -> Self {
        match e {
            EmergencyError::NotFound => Self::NotFound,
            EmergencyError::Forbidden => Self::Forbidden,
            EmergencyError::Unauthenticated => Self::Unauthenticated,
            EmergencyError::StepUpRequired => Self::StepUpRequired,
            EmergencyError::Invalid(d) => Self::BadRequest(d),
            EmergencyError::Conflict(d) => Self::Conflict(d),
            EmergencyError::Denied(api) => api,
            EmergencyError::Keys(KeyError::NoActiveKey) => Self::Unavailable(anyhow::anyhow!(
                "no issuer key: run `firstkey keys generate`"
            )),
            EmergencyError::Keys(KeyError::Store(s)) | EmergencyError::Store(s) => s.into(),
            e @ (EmergencyError::Keys(_) | EmergencyError::Mint(_)) => Self::Internal(e.into()),
        }
    }
}

async fn client(state: &AppState) -> Result<deadpool_postgres::Object, ApiError> {
    Ok(state.pool.get().await.map_err(StoreError::from)?)
}

fn require_dispatcher(actor: &Actor) -> Result<(), ApiError> {
    if actor.has(Role::Dispatcher) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// A dispatcher opens an incident for their own agency (another agency's: 403).
#[utoipa::path(post, path = "/api/v1/incidents", tag = "dispatch", request_body = NewIncident,
    responses((status = 201, body = Incident), (status = 400), (status = 401), (status = 403), (status = 409)))]
#[post("/api/v1/incidents")]
pub async fn open_incident(
    state: web::Data<AppState>,
    actor: Actor,
    body: web::Json<NewIncident>,
) -> Result<HttpResponse, ApiError> {
    require_dispatcher(&actor)?;
    let input = body.into_inner().parse()?;
    let now = state.clock.now();
    let mut client = client(&state).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let incident =
        incidents::open(&tx, actor.tenant, &Origin::User(actor.user_id), &input, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Created().json(incident))
}

/// The municipality's open incidents (dispatchers).
#[utoipa::path(get, path = "/api/v1/incidents", tag = "dispatch",
    responses((status = 200, body = [Incident]), (status = 401), (status = 403)))]
#[get("/api/v1/incidents")]
pub async fn list_incidents(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    require_dispatcher(&actor)?;
    let client = client(&state).await?;
    Ok(HttpResponse::Ok().json(incidents::open_incidents(&client, actor.tenant).await?))
}

/// An incident with its grants.
#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentDetail {
    /// The incident.
    #[serde(flatten)]
    pub incident: Incident,
    /// Its grants.
    pub grants: Vec<Grant>,
    /// The alarms that opened it or repeated it (kind, source, confirmation, time).
    pub alarms: Vec<crate::alarms::AlarmView>,
}

/// One incident with its grants (dispatchers).
#[utoipa::path(get, path = "/api/v1/incidents/{id}", tag = "dispatch",
    responses((status = 200, body = IncidentDetail), (status = 401), (status = 404)))]
#[get("/api/v1/incidents/{id}")]
pub async fn get_incident(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    if !actor.has(Role::Dispatcher) {
        return Err(ApiError::NotFound);
    }
    let client = client(&state).await?;
    let incident = incidents::by_id(&client, actor.tenant, *id).await?;
    let grants = grants::of_incident(&client, actor.tenant, incident.id).await?;
    let alarms = crate::alarms::of_incident(&client, actor.tenant, incident.id).await?;
    Ok(HttpResponse::Ok().json(IncidentDetail {
        incident,
        grants,
        alarms,
    }))
}

/// A dispatcher closes an incident: its grants end and their tokens are revoked at the locks.
#[utoipa::path(post, path = "/api/v1/incidents/{id}/close", tag = "dispatch",
    responses((status = 200, body = Incident), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/incidents/{id}/close")]
pub async fn close_incident(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    if !actor.has(Role::Dispatcher) {
        return Err(ApiError::NotFound);
    }
    let now = state.clock.now();
    let mut client = client(&state).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let incident =
        incidents::close(&tx, actor.tenant, &Origin::User(actor.user_id), *id, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(incident))
}

/// A dispatcher of the incident's agency (with step-up) ties it to a property it concerns, so that
/// agency's dispatchers may reveal the home's responder notes (audited; linking again changes nothing).
#[utoipa::path(post, path = "/api/v1/incidents/{id}/properties", tag = "dispatch", request_body = NewLink,
    responses((status = 201, body = IncidentLink), (status = 200, body = IncidentLink, description = "already linked"),
        (status = 401), (status = 403), (status = 404), (status = 409)))]
#[post("/api/v1/incidents/{id}/properties")]
pub async fn link_property(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<NewLink>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mut client = client(&state).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let (link, created) = incidents::link_property(&tx, &actor, *id, body.property, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(if created {
        HttpResponse::Created().json(link)
    } else {
        HttpResponse::Ok().json(link)
    })
}

/// A dispatcher (with step-up) grants entry to a property for an incident, as the policy decides.
/// Where the plan asks for a second approval the grant awaits it (`awaiting_approval`).
#[utoipa::path(post, path = "/api/v1/incidents/{id}/grants", tag = "dispatch", request_body = NewGrant,
    responses((status = 201, body = Grant), (status = 400), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/incidents/{id}/grants")]
pub async fn create_grant(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<NewGrant>,
) -> Result<HttpResponse, ApiError> {
    let input = body.into_inner().parse()?;
    let now = state.clock.now();
    let mut client = client(&state).await?;
    let grant = grants::create(
        &mut client,
        &state.policy,
        &state.kek,
        &actor,
        *id,
        &input,
        &state.settings.public_origin,
        now,
    )
    .await?;
    Ok(HttpResponse::Created().json(grant))
}

/// One grant: dispatchers, and the responders it names.
#[utoipa::path(get, path = "/api/v1/grants/{id}", tag = "dispatch",
    responses((status = 200, body = Grant), (status = 401), (status = 404)))]
#[get("/api/v1/grants/{id}")]
pub async fn get_grant(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let client = client(&state).await?;
    Ok(HttpResponse::Ok().json(grants::view(&client, &actor, *id).await?))
}

/// A second dispatcher (with step-up, never the grant's creator) approves a grant.
#[utoipa::path(post, path = "/api/v1/grants/{id}/approve", tag = "dispatch",
    responses((status = 200, body = Grant), (status = 401), (status = 403), (status = 404), (status = 409)))]
#[post("/api/v1/grants/{id}/approve")]
pub async fn approve_grant(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mut client = client(&state).await?;
    let grant = grants::approve(&mut client, &state.policy, &actor, *id, now).await?;
    Ok(HttpResponse::Ok().json(grant))
}

/// A dispatcher revokes a grant; its tokens are revoked at the locks.
#[utoipa::path(post, path = "/api/v1/grants/{id}/revoke", tag = "dispatch",
    responses((status = 200, body = Grant), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/grants/{id}/revoke")]
pub async fn revoke_grant(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mut client = client(&state).await?;
    let grant = grants::revoke(&mut client, &actor, *id, now).await?;
    Ok(HttpResponse::Ok().json(grant))
}

/// Body of `POST /api/v1/admin/cad-credentials`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCadCredential {
    /// What the credential is for, e.g. "Primary CAD", 1 to 200 characters (not only white space).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub name: String,
}

/// A municipal admin (with step-up) creates a CAD API credential; the secret is shown only here.
#[utoipa::path(post, path = "/api/v1/admin/cad-credentials", tag = "cad", request_body = NewCadCredential,
    responses((status = 201, body = NewCredential), (status = 400), (status = 401), (status = 404)))]
#[post("/api/v1/admin/cad-credentials")]
pub async fn create_cad_credential(
    state: web::Data<AppState>,
    actor: Actor,
    body: web::Json<NewCadCredential>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mut client =
        crate::http::admin::allowed(&state, &actor, crate::municipal::Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let credential = cad::create_credential(
        &tx,
        &state.kek,
        actor.tenant,
        Some(actor.user_id),
        &body.name,
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Created().json(credential))
}

pub(super) fn header<'a>(req: &'a HttpRequest, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

pub(super) async fn cad_call(
    state: &AppState,
    req: &HttpRequest,
    body: &[u8],
    action: CadAction,
) -> Result<HttpResponse, ApiError> {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path(), |p| p.as_str());
    let call = CadCall {
        key_id: header(req, cad::KEY_ID_HEADER),
        timestamp: header(req, cad::TIMESTAMP_HEADER),
        signature: header(req, cad::SIGNATURE_HEADER),
        idempotency_key: header(req, cad::IDEMPOTENCY_HEADER),
        method: req.method().as_str(),
        path,
        body,
    };
    let now = state.clock.now();
    let mut client = client(state).await?;
    let response = cad::handle(
        &mut client,
        &state.kek,
        &state.policy,
        &call,
        &action,
        &state.settings.public_origin,
        now,
    )
    .await?;
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
    let mut builder = HttpResponse::build(status);
    if response.replayed {
        builder.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(builder.json(response.body))
}

/// A CAD system opens an incident. Headers: `X-Firstkey-Key-Id`, `X-Firstkey-Timestamp`,
/// `X-Firstkey-Signature`, `Idempotency-Key` (see the `cad` module documentation for what is signed).
/// A retry with the same key returns the first response (header `Idempotent-Replayed: true`).
#[utoipa::path(post, path = "/api/v1/cad/incidents", tag = "cad", request_body = NewIncident,
    responses((status = 201, body = Incident), (status = 400), (status = 401), (status = 409)))]
#[post("/api/v1/cad/incidents")]
pub async fn cad_open_incident(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    cad_call(&state, &req, &body, CadAction::OpenIncident).await
}

/// A CAD system closes an incident by its CAD number (signed and idempotent as above; empty body).
#[utoipa::path(post, path = "/api/v1/cad/incidents/{cad_number}/close", tag = "cad",
    request_body(content = String, description = "empty; the signature covers the hash of the empty body"),
    responses((status = 200, body = Incident), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/cad/incidents/{cad_number}/close")]
pub async fn cad_close_incident(
    state: web::Data<AppState>,
    req: HttpRequest,
    cad_number: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    cad_call(
        &state,
        &req,
        &body,
        CadAction::CloseIncident(cad_number.into_inner()),
    )
    .await
}

//! HTTP endpoints of municipal administration (`/api/v1/admin/…`) and the CAD grant call
//! (`/api/v1/cad/incidents/{cad_number}/grants`, HMAC-signed and idempotent like the other CAD
//! calls). Handlers extract, ask [`municipal::authorize`], call one core function of
//! [`crate::municipal`] and map the result; the mapping of [`AdminError`] is here.

use actix_web::{HttpRequest, HttpResponse, get, post, put, web};
use utoipa::OpenApi;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::auth::Actor;
use crate::emergency::cad::{CadAction, CadGrant};
use crate::emergency::grants::Grant;
use crate::municipal::{
    self, AdminError, AgencyView, BundleVersion, CredentialView, Intent, IssuerKey, KeysOverview,
    LockBundle, Member, NewAgency, NewMember, NewName, NewUnit, PendingInvitation, PolicyFile,
    PolicySetView, TimeZone, UnitName, UnitView, UserFilter, UserView,
};
use crate::store::StoreError;

/// OpenAPI description of these endpoints.
#[derive(OpenApi)]
#[openapi(
    paths(
        list_agencies, create_agency, rename_agency, retire_agency, list_units, create_unit,
        add_member, remove_member, list_users, disable_user, enable_user, list_invitations,
        revoke_invitation, list_cad_credentials, revoke_cad_credential, keys, policy_set,
        cad_create_grant, rename_unit, retire_unit, get_time_zone, set_time_zone
    ),
    components(schemas(AgencyView, NewAgency, NewName, UnitView, Member, NewUnit, NewMember, UserView,
        PendingInvitation, CredentialView, KeysOverview, IssuerKey, BundleVersion, LockBundle,
        PolicySetView, PolicyFile, CadGrant, UnitName, RetiredUnit, TimeZone)),
    tags((name = "admin", description = "Municipal administration: agencies, units, staff, invitations, CAD credentials, keys"))
)]
pub struct AdminApi;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(list_agencies)
        .service(create_agency)
        .service(rename_agency)
        .service(retire_agency)
        .service(list_units)
        .service(create_unit)
        .service(add_member)
        .service(remove_member)
        .service(list_users)
        .service(disable_user)
        .service(enable_user)
        .service(list_invitations)
        .service(revoke_invitation)
        .service(list_cad_credentials)
        .service(revoke_cad_credential)
        .service(keys)
        .service(policy_set)
        .service(cad_create_grant)
        .service(rename_unit)
        .service(retire_unit)
        .service(get_time_zone)
        .service(set_time_zone);
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound => Self::NotFound,
            AdminError::StepUpRequired => Self::StepUpRequired,
            AdminError::Invalid(d) => Self::BadRequest(d),
            AdminError::Conflict(d) => Self::Conflict(d),
            AdminError::Access(api) => api,
            AdminError::Store(s) => s.into(),
        }
    }
}

/// What retiring a unit did.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RetiredUnit {
    /// How many responders it had (they are in no unit now).
    pub members_released: usize,
}

/// A connection, after the policy allowed `intent` (the admin pages ask the same way).
pub(crate) async fn allowed(
    state: &AppState,
    actor: &Actor,
    intent: Intent,
) -> Result<deadpool_postgres::Object, ApiError> {
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    municipal::authorize(&mut client, &state.policy, actor, intent, state.clock.now()).await?;
    Ok(client)
}

/// The municipality's time zone (municipal admins).
#[utoipa::path(get, path = "/api/v1/admin/time-zone", tag = "admin",
    responses((status = 200, body = TimeZone), (status = 401), (status = 404)))]
#[get("/api/v1/admin/time-zone")]
pub async fn get_time_zone(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let client = allowed(&state, &actor, Intent::View).await?;
    Ok(HttpResponse::Ok().json(municipal::time_zone(&client, actor.tenant).await?))
}

/// Sets the municipality's time zone, in which pages show and read times (admins, step-up).
#[utoipa::path(put, path = "/api/v1/admin/time-zone", tag = "admin", request_body = TimeZone,
    responses((status = 200, body = TimeZone), (status = 400), (status = 401), (status = 404)))]
#[put("/api/v1/admin/time-zone")]
pub async fn set_time_zone(
    state: web::Data<AppState>,
    actor: Actor,
    body: web::Json<TimeZone>,
) -> Result<HttpResponse, ApiError> {
    let mut client = allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let zone = municipal::set_time_zone(
        &tx,
        actor.tenant,
        Some(actor.user_id),
        &body.time_zone,
        state.clock.now(),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    crate::web::zone::forget(actor.tenant);
    Ok(HttpResponse::Ok().json(zone))
}

/// The municipality's agencies (municipal admins).
#[utoipa::path(get, path = "/api/v1/admin/agencies", tag = "admin",
    responses((status = 200, body = [AgencyView]), (status = 401), (status = 404)))]
#[get("/api/v1/admin/agencies")]
pub async fn list_agencies(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let client = allowed(&state, &actor, Intent::View).await?;
    Ok(HttpResponse::Ok().json(municipal::agencies(&client, actor.tenant).await?))
}

/// Adds an agency (municipal admins, with step-up).
#[utoipa::path(post, path = "/api/v1/admin/agencies", tag = "admin", request_body = NewAgency,
    responses((status = 201, body = AgencyView), (status = 400), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/admin/agencies")]
pub async fn create_agency(
    state: web::Data<AppState>,
    actor: Actor,
    body: web::Json<NewAgency>,
) -> Result<HttpResponse, ApiError> {
    let mut client = allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let agency = municipal::create_agency(
        &tx,
        actor.tenant,
        Some(actor.user_id),
        &body,
        state.clock.now(),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Created().json(agency))
}

/// Renames an agency (municipal admins, with step-up).
#[utoipa::path(post, path = "/api/v1/admin/agencies/{id}/rename", tag = "admin", request_body = NewName,
    params(("id" = Uuid, Path, description = "The agency")),
    responses((status = 200, body = AgencyView), (status = 400), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/admin/agencies/{id}/rename")]
pub async fn rename_agency(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<NewName>,
) -> Result<HttpResponse, ApiError> {
    let mut client = allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let agency = municipal::rename_agency(
        &tx,
        actor.tenant,
        Some(actor.user_id),
        *id,
        &body.name,
        state.clock.now(),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(agency))
}

/// Retires an agency: no new invitations or units; its people and history stay (admins, step-up).
#[utoipa::path(post, path = "/api/v1/admin/agencies/{id}/retire", tag = "admin",
    params(("id" = Uuid, Path, description = "The agency")),
    responses((status = 200, body = AgencyView), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/admin/agencies/{id}/retire")]
pub async fn retire_agency(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut client = allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let agency = municipal::retire_agency(
        &tx,
        actor.tenant,
        Some(actor.user_id),
        *id,
        state.clock.now(),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(agency))
}

/// The municipality's units with their members (municipal admins).
#[utoipa::path(get, path = "/api/v1/admin/units", tag = "admin",
    responses((status = 200, body = [UnitView]), (status = 401), (status = 404)))]
#[get("/api/v1/admin/units")]
pub async fn list_units(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let client = allowed(&state, &actor, Intent::View).await?;
    Ok(HttpResponse::Ok().json(municipal::units(&client, actor.tenant).await?))
}

/// Adds a unit to an agency that is not retired (municipal admins, with step-up).
#[utoipa::path(post, path = "/api/v1/admin/units", tag = "admin", request_body = NewUnit,
    responses((status = 201, body = UnitView), (status = 400), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/admin/units")]
pub async fn create_unit(
    state: web::Data<AppState>,
    actor: Actor,
    body: web::Json<NewUnit>,
) -> Result<HttpResponse, ApiError> {
    let mut client = allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let unit =
        municipal::create_unit(&tx, actor.tenant, actor.user_id, &body, state.clock.now()).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Created().json(unit))
}

/// Renames a unit; its members move with it (admins, step-up).
#[utoipa::path(post, path = "/api/v1/admin/units/{id}/rename", tag = "admin", request_body = UnitName,
    params(("id" = Uuid, Path, description = "The unit")),
    responses((status = 200, body = UnitView), (status = 400), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/admin/units/{id}/rename")]
pub async fn rename_unit(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<UnitName>,
) -> Result<HttpResponse, ApiError> {
    let mut client = allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let unit = municipal::rename_unit(
        &tx,
        actor.tenant,
        actor.user_id,
        *id,
        &body.name,
        state.clock.now(),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(unit))
}

/// Retires a unit: its members leave it and it is no longer listed (admins, step-up).
#[utoipa::path(post, path = "/api/v1/admin/units/{id}/retire", tag = "admin",
    params(("id" = Uuid, Path, description = "The unit")),
    responses((status = 200, body = RetiredUnit), (status = 401), (status = 404)))]
#[post("/api/v1/admin/units/{id}/retire")]
pub async fn retire_unit(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut client = allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let members_released =
        municipal::retire_unit(&tx, actor.tenant, actor.user_id, *id, state.clock.now()).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(RetiredUnit { members_released }))
}

/// Makes a responder of the unit's agency a member (their unit from now on; admins, step-up).
#[utoipa::path(post, path = "/api/v1/admin/units/{id}/members", tag = "admin", request_body = NewMember,
    params(("id" = Uuid, Path, description = "The unit")),
    responses((status = 200, body = UnitView), (status = 400), (status = 401), (status = 404)))]
#[post("/api/v1/admin/units/{id}/members")]
pub async fn add_member(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<NewMember>,
) -> Result<HttpResponse, ApiError> {
    let mut client = allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let unit = municipal::add_member(
        &tx,
        actor.tenant,
        actor.user_id,
        *id,
        body.user,
        state.clock.now(),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(unit))
}

/// Takes a member out of a unit (admins, step-up).
#[utoipa::path(post, path = "/api/v1/admin/units/{id}/members/{user}/remove", tag = "admin",
    params(("id" = Uuid, Path, description = "The unit"), ("user" = Uuid, Path, description = "The member")),
    responses((status = 200, body = UnitView), (status = 401), (status = 404)))]
#[post("/api/v1/admin/units/{id}/members/{user}/remove")]
pub async fn remove_member(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (unit_id, user) = path.into_inner();
    let mut client = allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let unit = municipal::remove_member(
        &tx,
        actor.tenant,
        actor.user_id,
        unit_id,
        user,
        state.clock.now(),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(unit))
}

/// The municipality's accounts, filtered by role, agency and status (at most 500; admins).
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", params(UserFilter),
    responses((status = 200, body = [UserView]), (status = 400), (status = 401), (status = 404)))]
#[get("/api/v1/admin/users")]
pub async fn list_users(
    state: web::Data<AppState>,
    actor: Actor,
    filter: web::Query<UserFilter>,
) -> Result<HttpResponse, ApiError> {
    let client = allowed(&state, &actor, Intent::View).await?;
    Ok(HttpResponse::Ok().json(municipal::users(&client, actor.tenant, &filter).await?))
}

/// What disabling an account ended.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DisabledView {
    /// Sessions ended.
    pub sessions_ended: u64,
    /// Open invitations it sent, revoked.
    pub invitations_revoked: u64,
    /// Grants ended (it was their only active responder).
    pub grants_ended: usize,
    /// Override tokens revoked.
    pub tokens_revoked: usize,
}

/// Disables an account, as `POST /api/v1/accounts/{id}/disable` does (admins, step-up).
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/disable", tag = "admin",
    params(("id" = Uuid, Path, description = "The account")),
    responses((status = 200, body = DisabledView), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/admin/users/{id}/disable")]
pub async fn disable_user(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut client = allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let d = crate::auth::accounts::disable(&tx, &actor, *id, state.clock.now()).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(DisabledView {
        sessions_ended: d.sessions_ended,
        invitations_revoked: d.invitations_revoked,
        grants_ended: d.grants_ended,
        tokens_revoked: d.tokens_revoked,
    }))
}

/// Enables a disabled account again (admins, step-up).
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/enable", tag = "admin",
    params(("id" = Uuid, Path, description = "The account")),
    responses((status = 204), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/admin/users/{id}/enable")]
pub async fn enable_user(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut client = allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    municipal::enable(&tx, actor.tenant, actor.user_id, *id, state.clock.now()).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::NoContent().finish())
}

/// Invitations not yet used, revoked or expired (admins).
#[utoipa::path(get, path = "/api/v1/admin/invitations", tag = "admin",
    responses((status = 200, body = [PendingInvitation]), (status = 401), (status = 404)))]
#[get("/api/v1/admin/invitations")]
pub async fn list_invitations(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let client = allowed(&state, &actor, Intent::View).await?;
    Ok(HttpResponse::Ok()
        .json(municipal::pending_invitations(&client, actor.tenant, state.clock.now()).await?))
}

/// Revokes a pending invitation: its link stops working (admins, step-up).
#[utoipa::path(post, path = "/api/v1/admin/invitations/{id}/revoke", tag = "admin",
    params(("id" = Uuid, Path, description = "The invitation")),
    responses((status = 204), (status = 401), (status = 404)))]
#[post("/api/v1/admin/invitations/{id}/revoke")]
pub async fn revoke_invitation(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut client = allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    municipal::revoke_invitation(&tx, actor.tenant, actor.user_id, *id, state.clock.now()).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::NoContent().finish())
}

/// The municipality's CAD credentials, never their secrets (admins).
#[utoipa::path(get, path = "/api/v1/admin/cad-credentials", tag = "admin",
    responses((status = 200, body = [CredentialView]), (status = 401), (status = 404)))]
#[get("/api/v1/admin/cad-credentials")]
pub async fn list_cad_credentials(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let client = allowed(&state, &actor, Intent::View).await?;
    Ok(HttpResponse::Ok().json(municipal::credentials(&client, actor.tenant).await?))
}

/// Revokes a CAD credential: its calls are refused from now on (admins, step-up).
#[utoipa::path(post, path = "/api/v1/admin/cad-credentials/{id}/revoke", tag = "admin",
    params(("id" = Uuid, Path, description = "The credential")),
    responses((status = 204), (status = 401), (status = 404)))]
#[post("/api/v1/admin/cad-credentials/{id}/revoke")]
pub async fn revoke_cad_credential(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut client = allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    municipal::revoke_credential(&tx, actor.tenant, actor.user_id, *id, state.clock.now()).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::NoContent().finish())
}

/// Issuer keys, trust-bundle versions and each lock's bundle version, those behind first (admins).
#[utoipa::path(get, path = "/api/v1/admin/keys", tag = "admin",
    responses((status = 200, body = KeysOverview), (status = 401), (status = 404)))]
#[get("/api/v1/admin/keys")]
pub async fn keys(state: web::Data<AppState>, actor: Actor) -> Result<HttpResponse, ApiError> {
    let client = allowed(&state, &actor, Intent::View).await?;
    Ok(HttpResponse::Ok().json(municipal::keys_overview(&client, actor.tenant).await?))
}

/// The policy set in force: its hash, files and policy ids (admins).
#[utoipa::path(get, path = "/api/v1/admin/policy", tag = "admin",
    responses((status = 200, body = PolicySetView), (status = 401), (status = 404)))]
#[get("/api/v1/admin/policy")]
pub async fn policy_set(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    drop(allowed(&state, &actor, Intent::View).await?);
    Ok(HttpResponse::Ok().json(municipal::policy_set(&state.policy)))
}

/// A CAD system grants entry for an incident, in the name of the dispatcher the body names:
/// decided by the same policy as that dispatcher's own grant (the signed, fresh request stands for
/// their step-up), recorded with the credential. Signed and idempotent like the other CAD calls; a
/// retry with the same key returns the first response (`Idempotent-Replayed: true`).
#[utoipa::path(post, path = "/api/v1/cad/incidents/{cad_number}/grants", tag = "cad", request_body = CadGrant,
    params(("cad_number" = String, Path, description = "The incident's CAD number")),
    responses((status = 201, body = Grant), (status = 400), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/cad/incidents/{cad_number}/grants")]
pub async fn cad_create_grant(
    state: web::Data<AppState>,
    req: HttpRequest,
    cad_number: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    super::dispatch::cad_call(
        &state,
        &req,
        &body,
        CadAction::CreateGrant(cad_number.into_inner()),
    )
    .await
}

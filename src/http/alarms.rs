//! HTTP endpoints of the home's reports: the signed monitoring API (`/api/v1/monitoring/`, exempt
//! from the browser Origin check like the CAD API), the homeowner's alarm rules and monitoring
//! accounts, the alarms on an incident, and the admin's list of locks behind on their trust bundle
//! or with a clock off. Handlers extract, call [`crate::alarms`] or [`crate::health`], and map.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, put, web};
use utoipa::OpenApi;
use uuid::Uuid;

use super::AppState;
use super::dispatch::header;
use super::error::ApiError;
use crate::alarms::api::MonitoringAlarm;
use crate::alarms::{
    self, AlarmKind, AlarmOutcome, AlarmRule, AlarmRules, AlarmView, MonitoringLink,
    NewMonitoringLink, RuleAction,
};
use crate::auth::Actor;
use crate::domain::Role;
use crate::emergency::cad::{self, CadCall};
use crate::health::{self, LockDrift, LockHealth};
use crate::policy::{AuthzRequest, StepUpContext};
use crate::store::StoreError;

/// How far a lock's reported time floor may be from the server's clock before the admin sees it.
pub(crate) const FLOOR_TOLERANCE_MINUTES: i64 = 10;

/// OpenAPI description of these endpoints.
#[derive(OpenApi)]
#[openapi(
    paths(monitoring_alarm, put_alarm_rules, get_alarm_rules, link_monitoring_account, incident_alarms,
          property_lock_health, put_property_offline_period, put_lock_offline_period, locks_drift),
    components(schemas(MonitoringAlarm, AlarmKind, AlarmOutcome, AlarmRule, AlarmRules, RuleAction,
                        AlarmView, NewMonitoringLink, MonitoringLink, LockHealth, LockDrift,
                        health::BatterySample, OfflinePeriod, LockOfflinePeriod)),
    tags((name = "alarms", description = "Alarms from monitoring centres and locks, and lock health"))
)]
pub struct AlarmsApi;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(monitoring_alarm)
        .service(put_alarm_rules)
        .service(get_alarm_rules)
        .service(link_monitoring_account)
        .service(incident_alarms)
        .service(property_lock_health)
        .service(put_property_offline_period)
        .service(put_lock_offline_period)
        .service(locks_drift);
}

/// A monitoring provider reports an alarm for an account a homeowner linked. Signed and idempotent
/// exactly like the CAD API (`X-Firstkey-Key-Id`, `X-Firstkey-Timestamp`, `X-Firstkey-Signature`,
/// `Idempotency-Key`); a retry with the same key returns the first answer
/// (`Idempotent-Replayed: true`). An unknown account is a 404.
#[utoipa::path(post, path = "/api/v1/monitoring/alarms", tag = "alarms", request_body = MonitoringAlarm,
    responses((status = 202, body = AlarmOutcome), (status = 400), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/monitoring/alarms")]
pub async fn monitoring_alarm(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path(), |p| p.as_str());
    let call = CadCall {
        key_id: header(&req, cad::KEY_ID_HEADER),
        timestamp: header(&req, cad::TIMESTAMP_HEADER),
        signature: header(&req, cad::SIGNATURE_HEADER),
        idempotency_key: header(&req, cad::IDEMPOTENCY_HEADER),
        method: req.method().as_str(),
        path,
        body: &body,
    };
    let now = state.clock.now();
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let response = alarms::api::handle(&mut client, &state.kek, &state.policy, &call, now).await?;
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::ACCEPTED);
    let mut builder = HttpResponse::build(status);
    if response.replayed {
        builder.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(builder.json(response.body))
}

fn edit_plan(
    p: &crate::policy::PrincipalAttrs,
    prop: &crate::policy::PropertyAttrs,
    fresh: bool,
) -> AuthzRequest {
    AuthzRequest::edit_plan(
        p,
        prop,
        StepUpContext {
            step_up_fresh: fresh,
        },
    )
}

/// The homeowner sets what each kind of alarm does at the property (step-up: a rule may open the
/// door). The whole set is replaced; kinds not listed have no rule (an alarm is only audited).
#[utoipa::path(put, path = "/api/v1/properties/{id}/alarm-rules", tag = "alarms", request_body = AlarmRules,
    responses((status = 200, body = [AlarmRule]), (status = 400), (status = 401), (status = 404)))]
#[put("/api/v1/properties/{id}/alarm-rules")]
pub async fn put_alarm_rules(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<AlarmRules>,
) -> Result<HttpResponse, ApiError> {
    body.validate()?;
    let (mut client, ctx) =
        super::properties::load_and_authorize(&state, &actor, *id, edit_plan).await?;
    let now = state.clock.now();
    let tx = client.transaction().await.map_err(StoreError::from)?;
    alarms::set_rules(
        &tx,
        &state.kek,
        actor.tenant,
        actor.user_id,
        ctx.property.id,
        &body,
        now,
    )
    .await?;
    let rules = alarms::rules(&tx, actor.tenant, ctx.property.id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(rules))
}

/// The property's alarm rules, for its homeowner.
#[utoipa::path(get, path = "/api/v1/properties/{id}/alarm-rules", tag = "alarms",
    responses((status = 200, body = [AlarmRule]), (status = 404)))]
#[get("/api/v1/properties/{id}/alarm-rules")]
pub async fn get_alarm_rules(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    // Reading the rules needs what writing them needs, without the step-up.
    let (client, ctx) = super::properties::load_and_authorize(&state, &actor, *id, |p, prop, _| {
        edit_plan(p, prop, true)
    })
    .await?;
    let rules = alarms::rules(&client, actor.tenant, ctx.property.id).await?;
    Ok(HttpResponse::Ok().json(rules))
}

/// The homeowner links their account at a monitoring provider to the property (step-up).
#[utoipa::path(post, path = "/api/v1/properties/{id}/monitoring-accounts", tag = "alarms",
    request_body = NewMonitoringLink,
    responses((status = 201, body = MonitoringLink), (status = 400), (status = 401), (status = 404), (status = 409)))]
#[post("/api/v1/properties/{id}/monitoring-accounts")]
pub async fn link_monitoring_account(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<NewMonitoringLink>,
) -> Result<HttpResponse, ApiError> {
    let (mut client, ctx) =
        super::properties::load_and_authorize(&state, &actor, *id, edit_plan).await?;
    let now = state.clock.now();
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let link = alarms::link_account(
        &tx,
        actor.tenant,
        actor.user_id,
        ctx.property.id,
        &body,
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Created().json(link))
}

/// The alarms recorded against an incident (kind, source, confirmation, time), for dispatchers.
#[utoipa::path(get, path = "/api/v1/incidents/{id}/alarms", tag = "alarms",
    responses((status = 200, body = [AlarmView]), (status = 404)))]
#[get("/api/v1/incidents/{id}/alarms")]
pub async fn incident_alarms(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    if !actor.has(Role::Dispatcher) {
        return Err(ApiError::Forbidden);
    }
    let client = state.pool.get().await.map_err(StoreError::from)?;
    let incident = crate::emergency::incidents::by_id(&client, actor.tenant, *id).await?;
    let alarms = alarms::of_incident(&client, actor.tenant, incident.id).await?;
    Ok(HttpResponse::Ok().json(alarms))
}

/// The health of a property's locks with warnings, for whoever may see its plan summary.
#[utoipa::path(get, path = "/api/v1/properties/{id}/locks/health", tag = "alarms",
    responses((status = 200, body = [LockHealth]), (status = 404)))]
#[get("/api/v1/properties/{id}/locks/health")]
pub async fn property_lock_health(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let (client, ctx) =
        super::properties::load_and_authorize(&state, &actor, *id, |p, prop, fresh| {
            AuthzRequest::view_plan_summary(
                p,
                prop,
                StepUpContext {
                    step_up_fresh: fresh,
                },
            )
        })
        .await?;
    let health =
        health::of_property(&client, actor.tenant, ctx.property.id, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(health))
}

/// For the municipal admin: locks whose trust bundle is behind the newest, or whose reported time
/// floor is more than ten minutes from the server's clock.
#[utoipa::path(get, path = "/api/v1/admin/locks/drift", tag = "alarms",
    responses((status = 200, body = [LockDrift]), (status = 401), (status = 404)))]
#[get("/api/v1/admin/locks/drift")]
pub async fn locks_drift(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let client =
        crate::http::admin::allowed(&state, &actor, crate::municipal::Intent::View).await?;
    let drift = health::drift(
        &client,
        actor.tenant,
        chrono::Duration::minutes(FLOOR_TOLERANCE_MINUTES),
    )
    .await?;
    Ok(HttpResponse::Ok().json(drift))
}

/// Body of `PUT /api/v1/properties/{id}/offline-period`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfflinePeriod {
    /// Mail the homeowner when a lock has been out of touch this many minutes (10 to 43200;
    /// default 1440, a day).
    #[schema(minimum = 10, maximum = 43200)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub minutes: u32,
}

/// Body of `PUT /api/v1/properties/{id}/locks/{lock}/offline-period`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LockOfflinePeriod {
    /// This lock's own period, minutes (10 to 43200); `null` to use the property's.
    #[schema(minimum = 10, maximum = 43200)]
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    pub minutes: Option<u32>,
}

fn manage_locks(
    p: &crate::policy::PrincipalAttrs,
    prop: &crate::policy::PropertyAttrs,
    fresh: bool,
) -> AuthzRequest {
    AuthzRequest::manage_locks(
        p,
        prop,
        StepUpContext {
            step_up_fresh: fresh,
        },
    )
}

/// The homeowner sets after how long out of touch a lock of the property is mailed about (the
/// offline sweep, once per absence); audited. Answers the locks' health with the periods in force.
#[utoipa::path(put, path = "/api/v1/properties/{id}/offline-period", tag = "alarms",
    request_body = OfflinePeriod,
    responses((status = 200, body = [LockHealth]), (status = 400), (status = 404)))]
#[put("/api/v1/properties/{id}/offline-period")]
pub async fn put_property_offline_period(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<OfflinePeriod>,
) -> Result<HttpResponse, ApiError> {
    let minutes = health::check_offline_minutes(body.minutes).map_err(ApiError::BadRequest)?;
    set_period(&state, &actor, *id, None, Some(minutes)).await
}

/// The homeowner sets one lock's own offline period, or (`minutes: null`) goes back to the
/// property's; audited. Answers the locks' health with the periods in force.
#[utoipa::path(put, path = "/api/v1/properties/{id}/locks/{lock}/offline-period", tag = "alarms",
    request_body = LockOfflinePeriod,
    responses((status = 200, body = [LockHealth]), (status = 400), (status = 404)))]
#[put("/api/v1/properties/{id}/locks/{lock}/offline-period")]
pub async fn put_lock_offline_period(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<LockOfflinePeriod>,
) -> Result<HttpResponse, ApiError> {
    let (id, lock) = path.into_inner();
    let minutes = body
        .minutes
        .map(health::check_offline_minutes)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    set_period(&state, &actor, id, Some(lock), minutes).await
}

async fn set_period(
    state: &AppState,
    actor: &Actor,
    property: Uuid,
    lock: Option<Uuid>,
    minutes: Option<u32>,
) -> Result<HttpResponse, ApiError> {
    let (mut client, ctx) =
        super::properties::load_and_authorize(state, actor, property, manage_locks).await?;
    let now = state.clock.now();
    let tx = client.transaction().await.map_err(StoreError::from)?;
    health::set_offline_period(
        &tx,
        actor.tenant,
        actor.user_id,
        ctx.property.id,
        lock,
        minutes,
        now,
    )
    .await?;
    let locks = health::of_property(&tx, actor.tenant, ctx.property.id, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(locks))
}

//! HTTP endpoints of properties, locks, access plans, the notes reveal and the audit log.
//!
//! Every endpoint that takes an id loads the row in the caller's tenant and asks the policy; a caller
//! who may not see it gets the same 404 as for an id that does not exist.

use actix_web::{HttpResponse, get, post, put, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::access;
use crate::audit::{self, Event, Outcome};
use crate::auth::Actor;
use crate::crypto;
use crate::domain::{Role, Text};
use crate::plans::{PlanInput, PlanSummary, PlanView, ResponderNotes};
use crate::policy::{AuditLogAttrs, AuthzRequest, RevealContext, StepUpContext};
use crate::store::StoreError;
use crate::store::properties::{self as store, Lock, Property};
use crate::store::registrations::{self, LockRegistration};

/// OpenAPI description of these endpoints.
#[derive(OpenApi)]
#[openapi(
    paths(
        create_property, list_properties, get_property, register_lock, list_locks, list_lock_registrations,
        reset_pairing, cancel_lock_registration, put_plan, get_plan,
        get_plan_summary, reveal_notes, reveal_key_box, search_properties, read_audit
    ),
    components(schemas(
        NewProperty, Property, NewLock, Lock, LockRegistration, PlanInput, PlanSummary, PlanView, ResponderNotes, PlanVersion,
        KeyBoxRevealRequest, KeyBoxCode, crate::plans::PhysicalKey, crate::plans::PhysicalKeySummary,
        crate::plans::KeyHolder, audit::Entry
    )),
    tags((name = "properties", description = "Homes, their locks and access plans"),
         (name = "audit", description = "The audit log"))
)]
pub struct PropertiesApi;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create_property)
        .service(list_properties)
        .service(search_properties)
        .service(get_property)
        .service(register_lock)
        .service(list_locks)
        .service(list_lock_registrations)
        .service(reset_pairing)
        .service(cancel_lock_registration)
        .service(put_plan)
        .service(get_plan)
        .service(get_plan_summary)
        .service(reveal_notes)
        .service(reveal_key_box)
        .service(read_audit);
}

/// Body of `POST /api/v1/properties`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProperty {
    /// Street address, 1 to 500 characters (not only white space).
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub address: String,
}

/// A homeowner registers a property.
#[utoipa::path(post, path = "/api/v1/properties", tag = "properties", request_body = NewProperty,
    responses((status = 201, body = Property), (status = 400), (status = 401), (status = 403)))]
#[post("/api/v1/properties")]
pub async fn create_property(
    state: web::Data<AppState>,
    actor: Actor,
    body: web::Json<NewProperty>,
) -> Result<HttpResponse, ApiError> {
    if !actor.has(Role::Homeowner) {
        return Err(ApiError::Forbidden);
    }
    let address = Text::parse("address", &body.address, 500)?;
    let address = address.as_str();
    let now = state.clock.now();
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let property = store::create_property(&tx, actor.tenant, actor.user_id, address, now).await?;
    // The address is personal: it goes into the entry encrypted, erasable (audit::personal).
    audit::record_personal(
        &tx,
        actor.tenant,
        &Event::new("property.create", Outcome::Info)
            .actor(actor.user_id)
            .subject("property", property.id)
            .property(property.id),
        &serde_json::json!({ "address": property.address }),
        &state.kek,
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Created().json(property))
}

/// The caller's own properties (homeowners).
#[utoipa::path(get, path = "/api/v1/properties", tag = "properties",
    responses((status = 200, body = [Property]), (status = 401)))]
#[get("/api/v1/properties")]
pub async fn list_properties(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await.map_err(StoreError::from)?;
    let list = store::properties_of(&client, actor.tenant, actor.user_id).await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Query of the dispatcher's property search.
#[derive(Debug, Deserialize, IntoParams)]
pub struct SearchQuery {
    /// Part of the address, 3 to 200 characters.
    #[param(
        min_length = 3,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub q: String,
}

/// A dispatcher finds properties by address.
#[utoipa::path(get, path = "/api/v1/dispatch/properties", tag = "properties", params(SearchQuery),
    responses((status = 200, body = [Property]), (status = 400), (status = 401), (status = 403)))]
#[get("/api/v1/dispatch/properties")]
pub async fn search_properties(
    state: web::Data<AppState>,
    actor: Actor,
    query: web::Query<SearchQuery>,
) -> Result<HttpResponse, ApiError> {
    if !actor.has(Role::Dispatcher) {
        return Err(ApiError::Forbidden);
    }
    let q = Text::parse("q", &query.q, 200)?;
    let q = q.as_str();
    if q.chars().count() < 3 {
        return Err(ApiError::BadRequest("q: 3 to 200 characters".to_owned()));
    }
    let client = state.pool.get().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(store::search_properties(&client, actor.tenant, q).await?))
}

/// One property: its owner, or a dispatcher of the municipality.
#[utoipa::path(get, path = "/api/v1/properties/{id}", tag = "properties",
    responses((status = 200, body = Property), (status = 401), (status = 404)))]
#[get("/api/v1/properties/{id}")]
pub async fn get_property(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let (_, ctx) = load_and_authorize(&state, &actor, *id, |p, prop, fresh| {
        AuthzRequest::view_plan_summary(
            p,
            prop,
            StepUpContext {
                step_up_fresh: fresh,
            },
        )
    })
    .await?;
    Ok(HttpResponse::Ok().json(ctx.property))
}

/// Body of `POST /api/v1/properties/{id}/locks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLock {
    /// The lock id `firstkey-agent init` printed.
    pub lock_id: Uuid,
    /// A name, e.g. "Front door", 1 to 100 characters (not only white space).
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub name: String,
    /// The pairing code `firstkey-agent init` printed (XXXXX-XXXXX): 10 letters (not U) or
    /// digits, case-insensitive (I and L read as 1, O as 0), dashes and spaces ignored.
    #[schema(pattern = r"^[- ]*([0-9A-TV-Za-tv-z][- ]*){10}$")]
    pub pairing_code: String,
}

/// The homeowner registers a lock with the code its agent printed: a registration waiting for the
/// lock (7 days, renewable), which pairs once the agent proves, over its channel, the device key the
/// code was derived from. It reserves nothing: another home registering the same lock id does not
/// stop this one, and the lock pairs with the registration that has its code (the others are
/// closed). 409 when the lock is already paired, this home already waits for it or has a lock of
/// that name, or has 10 registrations waiting; 429 when the account made 20 in a day or has 20
/// waiting.
#[utoipa::path(post, path = "/api/v1/properties/{id}/locks", tag = "properties", request_body = NewLock,
    responses((status = 201, body = LockRegistration), (status = 400), (status = 401), (status = 404),
        (status = 409), (status = 429)))]
#[post("/api/v1/properties/{id}/locks")]
pub async fn register_lock(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<NewLock>,
) -> Result<HttpResponse, ApiError> {
    let name = Text::parse("name", &body.name, 100)?;
    let name = name.as_str();
    let code = crate::pairing::normalise(&body.pairing_code)?;
    let (client, ctx) = manage_locks_of(&state, &actor, *id).await?;
    let now = state.clock.now();
    drop(client);
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let registration = crate::pairing::register(
        &tx,
        actor.tenant,
        ctx.property.id,
        actor.user_id,
        body.lock_id,
        name,
        &code,
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Created().json(registration))
}

/// The paired locks of a property, with last contact and battery (registrations still waiting
/// for their lock: `GET …/lock-registrations`).
#[utoipa::path(get, path = "/api/v1/properties/{id}/locks", tag = "properties",
    responses((status = 200, body = [Lock]), (status = 401), (status = 404)))]
#[get("/api/v1/properties/{id}/locks")]
pub async fn list_locks(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let (client, ctx) = manage_locks_of(&state, &actor, *id).await?;
    Ok(HttpResponse::Ok().json(store::locks(&client, actor.tenant, ctx.property.id).await?))
}

/// The property's lock registrations: those waiting for their lock and those closed in the last
/// 30 days (paired, paired with another registration of the id, code mismatch, contested,
/// cancelled, expired), newest first.
#[utoipa::path(get, path = "/api/v1/properties/{id}/lock-registrations", tag = "properties",
    responses((status = 200, body = [LockRegistration]), (status = 401), (status = 404)))]
#[get("/api/v1/properties/{id}/lock-registrations")]
pub async fn list_lock_registrations(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let (client, ctx) = manage_locks_of(&state, &actor, *id).await?;
    let list =
        registrations::of_property(&client, actor.tenant, ctx.property.id, state.clock.now())
            .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// The homeowner (with step-up) renews the property's waiting registration of lock `{lock}` for
/// another seven days (audited `lock.pairing_reset`). 404 when the home does not wait for it.
#[utoipa::path(post, path = "/api/v1/properties/{id}/locks/{lock}/pairing/reset", tag = "properties",
    responses((status = 200, body = LockRegistration), (status = 401), (status = 404)))]
#[post("/api/v1/properties/{id}/locks/{lock}/pairing/reset")]
pub async fn reset_pairing(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (id, lock_id) = path.into_inner();
    let (client, ctx) = manage_locks_of(&state, &actor, id).await?;
    drop(client);
    let now = state.clock.now();
    // Keeping a registration open longer is a change to the lock's security.
    actor.require_step_up(now)?;
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let registration =
        registrations::renew(&tx, actor.tenant, ctx.property.id, lock_id, now).await?;
    audit::record(
        &tx,
        actor.tenant,
        &Event::new("lock.pairing_reset", Outcome::Info)
            .actor(actor.user_id)
            .subject("lock", lock_id)
            .property(ctx.property.id)
            .details(serde_json::json!({ "registration": registration.id })),
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(registration))
}

/// The homeowner cancels a waiting lock registration of the property (audited
/// `lock.registration_cancel`). 404 when it is not waiting or not this home's.
#[utoipa::path(delete, path = "/api/v1/properties/{id}/lock-registrations/{registration}", tag = "properties",
    responses((status = 200, body = LockRegistration), (status = 401), (status = 404)))]
#[actix_web::delete("/api/v1/properties/{id}/lock-registrations/{registration}")]
pub async fn cancel_lock_registration(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (id, registration) = path.into_inner();
    let (client, ctx) = manage_locks_of(&state, &actor, id).await?;
    drop(client);
    let now = state.clock.now();
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let cancelled = crate::pairing::cancel(
        &tx,
        actor.tenant,
        ctx.property.id,
        actor.user_id,
        registration,
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(cancelled))
}

/// The version a plan change created.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanVersion {
    /// The new version number.
    pub version: i32,
}

/// The homeowner writes a new version of the access plan (step-up required).
#[utoipa::path(put, path = "/api/v1/properties/{id}/plan", tag = "properties", request_body = PlanInput,
    responses((status = 201, body = PlanVersion), (status = 400), (status = 401), (status = 404)))]
#[put("/api/v1/properties/{id}/plan")]
pub async fn put_plan(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<PlanInput>,
) -> Result<HttpResponse, ApiError> {
    body.validate()?;
    let (client, ctx) = load_and_authorize(&state, &actor, *id, |p, prop, fresh| {
        AuthzRequest::edit_plan(
            p,
            prop,
            StepUpContext {
                step_up_fresh: fresh,
            },
        )
    })
    .await?;
    drop(client);
    let now = state.clock.now();
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let plan = body.into_inner();
    let version = save_plan(&state, &tx, &actor, ctx.property.id, &plan, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Created().json(PlanVersion { version }))
}

/// Saves the next version of a property's plan in `tx` (both faces, after the policy allowed it):
/// the notes sealed under the KEK for the new row, and the `plan.update` audit entry, whose
/// personal details (erasable, `audit::record_personal`) are the plan's contacts as saved.
pub(crate) async fn save_plan(
    state: &AppState,
    tx: &impl deadpool_postgres::GenericClient,
    actor: &Actor,
    property: Uuid,
    plan: &PlanInput,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<i32, ApiError> {
    let kek = &state.kek;
    let version = store::insert_plan(
        tx,
        actor.tenant,
        property,
        actor.user_id,
        plan,
        |plan_id| store::seal_plan(kek, plan, plan_id),
        now,
    )
    .await?;
    let event = Event::new("plan.update", Outcome::Allow)
        .actor(actor.user_id)
        .subject("property", property)
        .property(property)
        .details(serde_json::json!({ "version": version }));
    if plan.contacts.is_empty() {
        audit::record(tx, actor.tenant, &event, now).await?;
    } else {
        let contacts = serde_json::json!({ "contacts": plan.contacts });
        audit::record_personal(tx, actor.tenant, &event, &contacts, kek, now).await?;
    }
    Ok(version)
}

/// The homeowner's full current plan, notes included. The owner reading what they wrote is not a
/// reveal to a third party and, like every GET, changes nothing (only a denial is audited).
#[utoipa::path(get, path = "/api/v1/properties/{id}/plan", tag = "properties",
    responses((status = 200, body = PlanView), (status = 404)))]
#[get("/api/v1/properties/{id}/plan")]
pub async fn get_plan(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let (_client, ctx) = load_and_authorize(&state, &actor, *id, |p, prop, fresh| {
        AuthzRequest::reveal_notes(
            p,
            prop,
            RevealContext {
                step_up_fresh: fresh,
                ..RevealContext::default()
            },
        )
    })
    .await?;
    // The full plan (contacts, notification choices) is the owner's alone; others use the summary
    // and the incident-bound reveal.
    if ctx.property.owner_id != actor.user_id {
        return Err(ApiError::NotFound);
    }
    let plan = ctx.plan.as_ref().ok_or(ApiError::NotFound)?;
    let notes = open_notes(&state, plan)?;
    let view = PlanView {
        version: plan.version,
        plan: PlanInput {
            agencies: plan.agencies.clone(),
            max_grant_minutes: plan.max_grant_minutes,
            notes,
            contacts: serde_json::from_value(plan.contacts.clone())
                .map_err(|e| ApiError::Internal(e.into()))?,
            notifications: plan.notifications.clone(),
            retention_days: plan.retention_days,
            live_consent: plan.live_consent,
            physical_key: crate::plans::PhysicalKey {
                key_box_code: store::open_key_box(&state.kek, plan)?,
                ..plan.physical_key.clone()
            },
        },
    };
    Ok(HttpResponse::Ok().json(view))
}

fn open_notes(state: &AppState, plan: &store::StoredPlan) -> Result<ResponderNotes, ApiError> {
    match &plan.notes {
        None => Ok(ResponderNotes::default()),
        Some(sealed) => {
            let bytes = crypto::open(&state.kek, plan.id.as_bytes(), sealed)
                .map_err(|e| ApiError::Internal(e.into()))?;
            serde_json::from_slice(&bytes).map_err(|e| ApiError::Internal(e.into()))
        }
    }
}

/// What a dispatcher may see without revealing the notes.
#[utoipa::path(get, path = "/api/v1/properties/{id}/plan/summary", tag = "properties",
    responses((status = 200, body = PlanSummary), (status = 404)))]
#[get("/api/v1/properties/{id}/plan/summary")]
pub async fn get_plan_summary(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let (_, ctx) = load_and_authorize(&state, &actor, *id, |p, prop, fresh| {
        AuthzRequest::view_plan_summary(
            p,
            prop,
            StepUpContext {
                step_up_fresh: fresh,
            },
        )
    })
    .await?;
    let plan = ctx.plan.ok_or(ApiError::NotFound)?;
    let client = state.pool.get().await.map_err(StoreError::from)?;
    let trusted_access = crate::trusted::shared_with_dispatch(
        &client,
        actor.tenant,
        ctx.property.id,
        state.clock.now(),
    )
    .await?;
    let lock_health =
        crate::health::of_property(&client, actor.tenant, ctx.property.id, state.clock.now())
            .await?;
    Ok(HttpResponse::Ok().json(PlanSummary {
        version: plan.version,
        agencies: plan.agencies,
        max_grant_minutes: plan.max_grant_minutes,
        has_notes: plan.notes.is_some(),
        live_consent: plan.live_consent,
        trusted_access,
        lock_health,
        physical_key: plan.physical_key.public_with(plan.key_box.is_some()),
    }))
}

/// Reveals the responder notes to a dispatcher (with step-up) whose own agency has an open incident
/// tied to the property (a grant for it, or an explicit link), or to a responder named in a live grant
/// for it. Every reveal is audited; a POST because it writes that entry.
#[utoipa::path(post, path = "/api/v1/properties/{id}/plan/reveal", tag = "properties",
    responses((status = 200, body = ResponderNotes), (status = 401), (status = 404)))]
#[post("/api/v1/properties/{id}/plan/reveal")]
pub async fn reveal_notes(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let (_, notes) = reveal_plan(&state, &actor, *id).await?;
    Ok(HttpResponse::Ok().json(notes))
}

/// The reveal's steps for the notes, for both faces (this endpoint and the responder's page):
/// [`reveal_secret`] without an incident to tie or a reason. Returns the plan in force with its
/// opened notes.
pub(crate) async fn reveal_plan(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
) -> Result<(store::StoredPlan, ResponderNotes), ApiError> {
    let revealed = reveal_secret(state, actor, id, Secret::Notes, None, None).await?;
    Ok((revealed.plan, revealed.notes))
}

/// Which sealed part of the plan a reveal opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Secret {
    /// The responder notes (audited `plan.reveal_notes`).
    Notes,
    /// The key box code (audited `plan.reveal_key_box`; a reason is required).
    KeyBox,
}

/// What a reveal opened.
pub(crate) struct Revealed {
    /// The plan in force.
    pub plan: store::StoredPlan,
    /// The property's address.
    pub address: String,
    /// The notes (empty unless [`Secret::Notes`] was asked for).
    pub notes: ResponderNotes,
    /// The key box code (only for [`Secret::KeyBox`]; `None` when the plan has none).
    pub key_box_code: Option<String>,
}

/// The one reveal of a plan's sealed parts, for every face (JSON, the dispatcher's console, the
/// responder's page): with `incident`, the dispatcher first ties that incident to the property
/// (`POST /api/v1/incidents/{id}/properties`'s steps, audited); the policy decides (`reveal_notes`:
/// a dispatcher with step-up whose agency has an open incident here, or a responder named in a live
/// grant for it; a denial is audited by `access::authorize`); the part is opened and the reveal is
/// audited with the reason. The key box code needs a reason (1 to 500 characters).
pub(crate) async fn reveal_secret(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
    secret: Secret,
    incident: Option<Uuid>,
    reason: Option<&str>,
) -> Result<Revealed, ApiError> {
    let reason = match reason {
        Some(r) => Some(Text::parse("reason", r, 500)?.into_string()),
        None if secret == Secret::KeyBox => {
            return Err(ApiError::BadRequest(
                "reason: say why you need the key box code (1 to 500 characters)".to_owned(),
            ));
        }
        None => None,
    };
    let now = state.clock.now();
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    if let Some(incident) = incident {
        let tx = client.transaction().await.map_err(StoreError::from)?;
        crate::emergency::incidents::link_property(&tx, actor, incident, id, now).await?;
        tx.commit().await.map_err(StoreError::from)?;
    }
    let ctx = access::property(&client, actor.tenant, id).await?;
    let principal = access::principal(&client, actor).await?;
    let named = access::named_in_live_grant(&client, actor, ctx.property.id, now).await?;
    let agencies = access::incident_agencies_here(&client, actor.tenant, ctx.property.id).await?;
    let decision = access::authorize(
        &mut client,
        &state.policy,
        actor,
        Some(ctx.property.id),
        now,
        |fresh| {
            AuthzRequest::reveal_notes(
                &principal,
                &ctx.attrs,
                RevealContext {
                    step_up_fresh: fresh,
                    named_in_live_grant: named,
                    incident_agencies: agencies.clone(),
                },
            )
        },
    )
    .await?;
    let plan = ctx.plan.ok_or(ApiError::NotFound)?;
    let (notes, key_box_code, action) = match secret {
        Secret::Notes => (open_notes(state, &plan)?, None, "plan.reveal_notes"),
        Secret::KeyBox => (
            ResponderNotes::default(),
            store::open_key_box(&state.kek, &plan)?,
            "plan.reveal_key_box",
        ),
    };
    let mut details = serde_json::Map::new();
    details.insert("version".to_owned(), serde_json::json!(plan.version));
    details.insert(
        "policies".to_owned(),
        serde_json::json!(decision.determining_policies),
    );
    details.insert("named_in_live_grant".to_owned(), serde_json::json!(named));
    details.insert("incident_agencies".to_owned(), serde_json::json!(agencies));
    if secret == Secret::KeyBox {
        details.insert(
            "had_code".to_owned(),
            serde_json::json!(key_box_code.is_some()),
        );
    }
    let details = serde_json::Value::Object(details);
    let mut event = Event::new(action, Outcome::Allow)
        .actor(actor.user_id)
        .subject("property", ctx.property.id)
        .property(ctx.property.id)
        .policy(decision.policy_set_hash)
        .details(details);
    if let Some(incident) = incident {
        event = event.incident(incident);
    }
    let tx = client.transaction().await.map_err(StoreError::from)?;
    // The reason is free text: it goes in only as personal details (erasable), never in clear.
    match &reason {
        Some(reason) => {
            let personal = serde_json::json!({ "reason": reason });
            audit::record_personal(&tx, actor.tenant, &event, &personal, &state.kek, now).await?;
        }
        None => {
            audit::record(&tx, actor.tenant, &event, now).await?;
        }
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Revealed {
        plan,
        address: ctx.property.address,
        notes,
        key_box_code,
    })
}

/// Body of `POST /api/v1/properties/{id}/plan/reveal-key-box`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyBoxRevealRequest {
    /// Why the code is needed, 1 to 500 characters (recorded in the audit log, shown to the
    /// homeowner).
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub reason: String,
    /// A dispatcher's incident to tie to the property first (as `POST
    /// /api/v1/incidents/{id}/properties` does).
    #[serde(default)]
    pub incident: Option<Uuid>,
}

/// A revealed key box code.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyBoxCode {
    /// Plan version it is from.
    pub version: i32,
    /// Where the key box is.
    pub location: Option<String>,
    /// The code (none when the plan stores none).
    pub code: Option<String>,
}

/// Reveals the key box code to whoever may reveal the notes (a dispatcher with step-up whose agency
/// has an open incident here, or a responder named in a live grant), for a reason; audited
/// (`plan.reveal_key_box`, with the reason), never cached.
#[utoipa::path(post, path = "/api/v1/properties/{id}/plan/reveal-key-box", tag = "properties",
    request_body = KeyBoxRevealRequest,
    responses((status = 200, body = KeyBoxCode), (status = 400), (status = 401), (status = 404)))]
#[post("/api/v1/properties/{id}/plan/reveal-key-box")]
pub async fn reveal_key_box(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
    body: web::Json<KeyBoxRevealRequest>,
) -> Result<HttpResponse, ApiError> {
    let revealed = reveal_secret(
        &state,
        &actor,
        *id,
        Secret::KeyBox,
        body.incident,
        Some(&body.reason),
    )
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(KeyBoxCode {
            version: revealed.plan.version,
            location: revealed.plan.physical_key.location.clone(),
            code: revealed.key_box_code,
        }))
}

/// Query of the audit log listing.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Only entries about this property (homeowners must give their own property).
    pub property: Option<Uuid>,
    /// Entries after this sequence number (paging); default from the start.
    pub after: Option<i64>,
    /// At most this many entries (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// Reads the audit log: auditors the whole municipality's, homeowners their own property's (both
/// with a fresh step-up). A refused read is audited like every policy denial.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = [audit::Entry]), (status = 401), (status = 404)))]
#[get("/api/v1/audit")]
pub async fn read_audit(
    state: web::Data<AppState>,
    actor: Actor,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let principal = access::principal(&client, &actor).await?;
    match query.property {
        Some(property) => {
            let ctx = access::property(&client, actor.tenant, property).await?;
            access::authorize(
                &mut client,
                &state.policy,
                &actor,
                Some(property),
                now,
                |fresh| {
                    AuthzRequest::read_property_audit(
                        &principal,
                        &ctx.attrs,
                        StepUpContext {
                            step_up_fresh: fresh,
                        },
                    )
                },
            )
            .await?;
        }
        None => {
            let log = AuditLogAttrs {
                municipality: actor.tenant.id(),
            };
            access::authorize(&mut client, &state.policy, &actor, None, now, |fresh| {
                AuthzRequest::read_audit_log(
                    &principal,
                    log,
                    StepUpContext {
                        step_up_fresh: fresh,
                    },
                )
            })
            .await?;
        }
    }
    let entries = audit::entries(
        &client,
        actor.tenant,
        query.property,
        query.after.unwrap_or(-1),
        query.limit.unwrap_or(100),
    )
    .await?;
    Ok(HttpResponse::Ok().json(entries))
}

/// Loads a property in the actor's tenant and asks the policy; returns the connection for reuse.
/// A connection and the property, once the policy allowed `actor` to manage its locks.
async fn manage_locks_of(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
) -> Result<(deadpool_postgres::Object, access::PropertyContext), ApiError> {
    load_and_authorize(state, actor, id, |p, prop, fresh| {
        AuthzRequest::manage_locks(
            p,
            prop,
            StepUpContext {
                step_up_fresh: fresh,
            },
        )
    })
    .await
}

pub(crate) async fn load_and_authorize(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
    build: impl Fn(&crate::policy::PrincipalAttrs, &crate::policy::PropertyAttrs, bool) -> AuthzRequest,
) -> Result<(deadpool_postgres::Object, access::PropertyContext), ApiError> {
    let now = state.clock.now();
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let ctx = access::property(&client, actor.tenant, id).await?;
    let principal = access::principal(&client, actor).await?;
    access::authorize(
        &mut client,
        &state.policy,
        actor,
        Some(ctx.property.id),
        now,
        |fresh| build(&principal, &ctx.attrs, fresh),
    )
    .await?;
    Ok((client, ctx))
}

//! Privacy over the JSON API (issue 10, step 6): reports over the audit log for a period, the
//! data-subject export, and a homeowner's erasure of a home's personal audit details
//! (crypto-shredding; `audit::personal`). Authorization is the policy set's, as for reading the
//! log: `read_audit` on the municipality's log (auditors) or on one property (its homeowner, or an
//! auditor), with a fresh step-up; erasure is `edit_plan` on the property (its owner, with step-up:
//! how long a home's records are kept is part of its plan).

use actix_web::{HttpResponse, delete, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, Problem};
use crate::access;
use crate::audit::personal;
use crate::audit::report::{
    self, ActionCount, ActorActivity, AgencyActivity, ApprovedGrant, GrantOutsidePlan,
    RepeatedDenials, Report, ReportError,
};
use crate::audit::subject;
use crate::auth::Actor;
use crate::auth::deletion::{self, Deleted};
use crate::auth::session;
use crate::domain::Role;
use crate::policy::{AuditLogAttrs, AuthzRequest, StepUpContext};
use crate::store::{StoreError, properties};

/// OpenAPI description of these endpoints.
#[derive(OpenApi)]
#[openapi(
    paths(audit_report, subject_export, erase_property_details, delete_my_account),
    components(schemas(Report, ActionCount, RepeatedDenials, ActorActivity, AgencyActivity,
        ApprovedGrant, GrantOutsidePlan, Erased, Deleted)),
    tags((name = "audit", description = "The audit log: entries, reports, exports, erasure"))
)]
pub struct PrivacyApi;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(audit_report)
        .service(subject_export)
        .service(erase_property_details)
        .service(delete_my_account);
}

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Store(s) => s.into(),
            ReportError::Period(d) => Self::BadRequest(d.to_owned()),
        }
    }
}

fn fresh(fresh: bool) -> StepUpContext {
    StepUpContext {
        step_up_fresh: fresh,
    }
}

/// Asks the policy whether `actor` may read the audit entries of `property` (or of the whole log).
pub(crate) async fn authorize_read(
    state: &AppState,
    client: &mut deadpool_postgres::Object,
    actor: &Actor,
    property: Option<Uuid>,
) -> Result<(), ApiError> {
    let principal = access::principal(&*client, actor).await?;
    let now = state.clock.now();
    match property {
        Some(id) => {
            let ctx = access::property(&*client, actor.tenant, id).await?;
            access::authorize(client, &state.policy, actor, Some(id), now, |f| {
                AuthzRequest::read_property_audit(&principal, &ctx.attrs, fresh(f))
            })
            .await?;
        }
        None => {
            let log = AuditLogAttrs {
                municipality: actor.tenant.id(),
            };
            access::authorize(client, &state.policy, actor, None, now, |f| {
                AuthzRequest::read_audit_log(&principal, log, fresh(f))
            })
            .await?;
        }
    }
    Ok(())
}

/// The period and scope of a report.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ReportQuery {
    /// Start of the period (RFC 3339, inclusive).
    pub from: DateTime<Utc>,
    /// End of the period (RFC 3339, exclusive).
    pub to: DateTime<Utc>,
    /// Only this property (homeowners must give their own); the whole municipality when absent.
    pub property: Option<Uuid>,
}

/// A report over the audit log for a period: counts, reconciliation of door openings with their
/// incidents, tokens without receipts, grants without tokens, reveals of notes (and those with no
/// opening after), denials. Computed against the newest signed checkpoint, which it carries.
#[utoipa::path(get, path = "/api/v1/audit/report", tag = "audit", params(ReportQuery),
    responses((status = 200, body = Report), (status = 400, body = Problem), (status = 401), (status = 404)))]
#[get("/api/v1/audit/report")]
#[tracing::instrument(skip_all)]
pub async fn audit_report(
    state: web::Data<AppState>,
    actor: Actor,
    query: web::Query<ReportQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    authorize_read(&state, &mut client, &actor, query.property).await?;
    crate::audit::seal(&client, actor.tenant).await?;
    let report =
        report::report(&client, actor.tenant, query.property, query.from, query.to).await?;
    Ok(HttpResponse::Ok().json(report))
}

/// Everything firstkey holds about the signed-in user and their homes (GDPR Art. 15), as one JSON
/// document (`format` = `firstkey-subject-export/v1`); each home's audit entries come with their
/// inclusion proofs against the newest signed checkpoint (`firstkey audit verify` checks them).
/// Needs a fresh step-up.
#[utoipa::path(get, path = "/api/v1/me/export", tag = "audit",
    responses((status = 200, description = "The export", body = Object), (status = 401, body = Problem)))]
#[get("/api/v1/me/export")]
#[tracing::instrument(skip_all)]
pub async fn subject_export(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    actor.require_step_up(now)?;
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let homes = if actor.has(Role::Homeowner) {
        properties::properties_of(&client, actor.tenant, actor.user_id).await?
    } else {
        Vec::new()
    };
    for home in &homes {
        authorize_read(&state, &mut client, &actor, Some(home.id)).await?;
    }
    let ids: Vec<Uuid> = homes.iter().map(|h| h.id).collect();
    let export =
        subject::export(&client, actor.tenant, actor.user_id, &ids, &state.kek, now).await?;
    Ok(HttpResponse::Ok()
        .insert_header((
            "Content-Disposition",
            "attachment; filename=\"firstkey-my-data.json\"",
        ))
        .json(export))
}

/// What an erasure destroyed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Erased {
    /// Data keys destroyed (one per month of entries with personal details).
    pub keys_erased: u64,
}

/// The homeowner erases the personal details in the audit entries about their home, now (they
/// are otherwise erased when the plan's retention runs out): the data keys are destroyed, the
/// entries, their proofs and the log's checkpoints stay valid. Needs a fresh step-up. Entries
/// written later get a new key.
#[utoipa::path(post, path = "/api/v1/properties/{id}/audit/erase", tag = "audit",
    params(("id" = Uuid, Path, description = "The property")),
    responses((status = 200, body = Erased), (status = 401, body = Problem), (status = 404, body = Problem)))]
#[post("/api/v1/properties/{id}/audit/erase")]
#[tracing::instrument(skip_all)]
pub async fn erase_property_details(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let keys_erased = erase(&state, &mut client, &actor, *id, now).await?;
    Ok(HttpResponse::Ok().json(Erased { keys_erased }))
}

/// The policy check and the erasure (the page and the API share it).
pub(crate) async fn erase(
    state: &AppState,
    client: &mut deadpool_postgres::Object,
    actor: &Actor,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<u64, ApiError> {
    let ctx = access::property(&*client, actor.tenant, id).await?;
    let principal = access::principal(&*client, actor).await?;
    access::authorize(client, &state.policy, actor, Some(id), now, |f| {
        AuthzRequest::edit_plan(&principal, &ctx.attrs, fresh(f))
    })
    .await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let erased =
        personal::erase_property(&tx, actor.tenant, id, actor.user_id, "homeowner", now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(erased.keys_erased)
}

/// A homeowner deletes their own account (GDPR Art. 17): the personal details in the audit
/// entries about their homes are crypto-shredded (the log, its checkpoints and proofs stay valid),
/// their homes' addresses, plan notes and contacts, grant justifications and trusted parties are
/// erased, their locks retired, their sessions and keys removed, and a mail confirms it. Needs a
/// fresh step-up; refused (409) while entry to one of their homes is granted or awaiting approval.
/// Other roles: 404 (their accounts are the municipality's to disable).
#[utoipa::path(delete, path = "/api/v1/me", tag = "audit", operation_id = "delete_my_account",
    responses((status = 200, body = Deleted), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
#[delete("/api/v1/me")]
#[tracing::instrument(skip_all)]
pub async fn delete_my_account(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let deleted = delete_account(&state, &mut client, &actor, now).await?;
    Ok(HttpResponse::Ok()
        .cookie(session::removal_cookie())
        .json(deleted))
}

/// The checks and the deletion (the page and the API share it): homeowners only, a fresh step-up,
/// and the policy's `edit_plan` on each of their homes (what erasing a home's details asks).
pub(crate) async fn delete_account(
    state: &AppState,
    client: &mut deadpool_postgres::Object,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<Deleted, ApiError> {
    if !actor.has(Role::Homeowner) {
        return Err(ApiError::NotFound);
    }
    actor.require_step_up(now)?;
    let homes = properties::properties_of(&*client, actor.tenant, actor.user_id).await?;
    let mut ids = Vec::with_capacity(homes.len());
    for home in homes {
        let ctx = access::property(&*client, actor.tenant, home.id).await?;
        let principal = access::principal(&*client, actor).await?;
        access::authorize(client, &state.policy, actor, Some(home.id), now, |f| {
            AuthzRequest::edit_plan(&principal, &ctx.attrs, fresh(f))
        })
        .await?;
        ids.push(home.id);
    }
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let deleted = deletion::delete_account(&tx, actor, &ids, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(deleted)
}

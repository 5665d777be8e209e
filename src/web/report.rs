//! `/audit/report`: the audit report of a period in words (`GET /api/v1/audit/report`'s
//! `audit::report`), for auditors (the municipality) and, with `?property=`, for a homeowner (their
//! home); `/audit/report.csv` the same as CSV. Reading is the policy's `read_audit` (fresh step-up,
//! asked inline when stale), as for the JSON.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::WebError;
use super::auditor::{attachment, time_field};
use super::page::{self, Chrome, SignedIn};
use crate::audit::report::{self, Report, ReportError};
use crate::auth::Actor;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::store::StoreError;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/audit/report", web::get().to(show))
        .route("/audit/report.csv", web::get().to(csv));
}

#[derive(Debug, Clone, Default, Deserialize)]
struct PeriodForm {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    property: String,
}

#[derive(Template)]
#[template(path = "audit_report.html")]
struct ReportPage {
    chrome: Chrome,
    form: PeriodForm,
    csv: String,
    step_up: bool,
    error: Option<String>,
    report: Option<Report>,
}

/// A report's period and scope: from, to, property.
type Scope = (DateTime<Utc>, DateTime<Utc>, Option<Uuid>);

/// The period (default: the last 30 days) and the property, or what is wrong (naming the field).
fn parse(form: &PeriodForm, now: DateTime<Utc>) -> Result<Scope, String> {
    let to = time_field("until", &form.to)?.unwrap_or(now);
    let from = time_field("from", &form.from)?.unwrap_or(to - Duration::days(30));
    let property = match form.property.trim() {
        "" => None,
        p => Some(Uuid::parse_str(p).map_err(|_| "property: not a property id".to_owned())?),
    };
    Ok((from, to, property))
}

async fn compute(
    state: &AppState,
    actor: &Actor,
    form: &PeriodForm,
) -> Result<Result<Report, String>, ApiError> {
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let (from, to, property) = match parse(form, state.clock.now()) {
        Ok(p) => p,
        Err(words) => return Ok(Err(words)),
    };
    crate::http::privacy::authorize_read(state, &mut client, actor, property).await?;
    crate::audit::seal(&client, actor.tenant).await?;
    match report::report(&client, actor.tenant, property, from, to).await {
        Ok(r) => Ok(Ok(r)),
        Err(ReportError::Period(words)) => Ok(Err(words.to_owned())),
        Err(ReportError::Store(e)) => Err(e.into()),
    }
}

async fn show(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    query: web::Query<PeriodForm>,
) -> Result<HttpResponse, WebError> {
    let form = query.into_inner();
    let csv = format!(
        "/audit/report.csv?from={}&to={}&property={}",
        form.from.trim(),
        form.to.trim(),
        form.property.trim()
    );
    let (status, step_up, error, report) = match compute(&state, &actor, &form).await {
        Ok(Ok(r)) => (StatusCode::OK, false, None, Some(r)),
        Ok(Err(words)) => (StatusCode::BAD_REQUEST, false, Some(words), None),
        Err(ApiError::StepUpRequired) => (StatusCode::UNAUTHORIZED, true, None, None),
        Err(e) => return Err(e.into()),
    };
    let client = state.pool.get().await.map_err(StoreError::from)?;
    page::render(
        status,
        &ReportPage {
            chrome: Chrome::of(&client, &actor).await?,
            form,
            csv,
            step_up,
            error,
            report,
        },
    )
}

async fn csv(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    query: web::Query<PeriodForm>,
) -> Result<HttpResponse, WebError> {
    match compute(&state, &actor, &query).await? {
        Ok(r) => Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header(attachment("audit-report.csv"))
            .body(report::to_csv(&r))),
        Err(words) => Err(ApiError::BadRequest(words).into()),
    }
}

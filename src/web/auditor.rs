//! Auditor pages: the municipality's audit log with filters (time range, actor, the actor's
//! agency, property, incident, action, outcome), newest first in pages of
//! [`search::PAGE_SIZE`]; an entry's detail; CSV and JSON export of the filtered view (at most
//! [`search::EXPORT_LIMIT`] entries); the chain's verification status and the latest signed
//! checkpoint.
//!
//! Reading is the policy's `read_audit` on the municipality's log, with a fresh step-up, as for
//! `GET /api/v1/audit`; without one the page offers the inline confirmation. A refusal is audited.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::WebError;
use super::page::{self, Chrome, SignedIn};
use crate::access;
use crate::audit::search::{self, Filter};
use crate::audit::{self, ChainCheck, Entry};
use crate::auth::Actor;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::policy::{AuditLogAttrs, AuthzRequest, StepUpContext};
use crate::store::StoreError;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/audit", web::get().to(log_page))
        .route("/audit/entries/{seq}", web::get().to(entry_page))
        .route("/audit/export.csv", web::get().to(export_csv))
        .route("/audit/export.json", web::get().to(export_json));
}

fn when(at: DateTime<Utc>) -> String {
    super::zone::when_seconds(at)
}

/// The filter form as typed (every field text, so the page can show it back).
#[derive(Debug, Clone, Default, Deserialize)]
struct FilterForm {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    agency: String,
    #[serde(default)]
    property: String,
    #[serde(default)]
    incident: String,
    /// The action filter; named `event` on the form, since a control named `action` shadows
    /// the form's own `action` in the DOM.
    #[serde(default, rename = "event")]
    action: String,
    #[serde(default)]
    outcome: String,
    before: Option<i64>,
    /// `verify=full`: recompute the whole chain now rather than only what was sealed since the
    /// last full recomputation.
    #[serde(default)]
    verify: String,
}

fn uuid_field(field: &str, text: &str) -> Result<Option<Uuid>, String> {
    match text.trim() {
        "" => Ok(None),
        t => Uuid::parse_str(t)
            .map(Some)
            .map_err(|_| format!("{field}: not an id")),
    }
}

/// A `datetime-local` value (`2026-12-01T14:02`, seconds optional), read in the municipality's
/// zone.
pub(super) fn time_field(field: &str, text: &str) -> Result<Option<DateTime<Utc>>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    super::zone::parse_local(field, text).map(Some)
}

impl FilterForm {
    /// The filter, or what is wrong with the form (naming the field).
    fn parse(&self) -> Result<Filter, String> {
        let action = match self.action.trim() {
            "" => None,
            a if a.len() <= 64
                && a.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_') =>
            {
                Some(a.to_owned())
            }
            _ => return Err("action: lower-case letters, digits, dots and underscores, e.g. grant.create or grant.".to_owned()),
        };
        let outcome = match self.outcome.trim() {
            "" => None,
            o @ ("allow" | "deny" | "info") => Some(o.to_owned()),
            _ => return Err("outcome: allow, deny or info".to_owned()),
        };
        Ok(Filter {
            from: time_field("from", &self.from)?,
            to: time_field("to", &self.to)?,
            actor: uuid_field("actor", &self.actor)?,
            agency: uuid_field("agency", &self.agency)?,
            property: uuid_field("property", &self.property)?,
            incident: uuid_field("incident", &self.incident)?,
            action,
            outcome,
        })
    }

    /// The query string of the filter (without paging), for export and paging links.
    fn query(&self) -> String {
        let pairs = [
            ("from", &self.from),
            ("to", &self.to),
            ("actor", &self.actor),
            ("agency", &self.agency),
            ("property", &self.property),
            ("incident", &self.incident),
            ("event", &self.action),
            ("outcome", &self.outcome),
        ];
        pairs
            .iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, v)| format!("{k}={}", encode(v.trim())))
            .collect::<Vec<_>>()
            .join("&")
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Asks the policy whether the viewer may read the whole log (audited when refused).
async fn authorize_read(
    state: &AppState,
    client: &mut deadpool_postgres::Object,
    actor: &Actor,
) -> Result<(), WebError> {
    let principal = access::principal(&*client, actor).await?;
    let log = AuditLogAttrs {
        municipality: actor.tenant.id(),
    };
    access::authorize(
        client,
        &state.policy,
        actor,
        None,
        state.clock.now(),
        |fresh| {
            AuthzRequest::read_audit_log(
                &principal,
                log,
                StepUpContext {
                    step_up_fresh: fresh,
                },
            )
        },
    )
    .await?;
    Ok(())
}

#[derive(Template)]
#[template(path = "auditor_log.html")]
struct LogPage {
    chrome: Chrome,
    form: FilterForm,
    error: Option<String>,
    step_up: bool,
    rows: Vec<Row>,
    query: String,
    older: Option<String>,
    chain: String,
    chain_ok: bool,
    checkpoint: Option<(u64, String, String)>,
}

/// An entry as a table row.
struct Row {
    seq: i64,
    at: String,
    actor: String,
    action: String,
    outcome: String,
    about: String,
}

/// Display names of the actors of `entries` (one query).
async fn actor_names(
    client: &impl deadpool_postgres::GenericClient,
    actor: &Actor,
    entries: &[Entry],
) -> Result<std::collections::HashMap<Uuid, String>, StoreError> {
    let ids: Vec<Uuid> = entries.iter().filter_map(|e| e.actor).collect();
    Ok(client
        .query(
            "SELECT id, display_name FROM users WHERE municipality_id = $1 AND id = ANY($2)",
            &[&actor.tenant.id(), &ids],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

fn about(e: &Entry) -> String {
    let mut parts = Vec::new();
    if let (Some(kind), Some(id)) = (&e.subject_kind, e.subject_id) {
        parts.push(format!("{kind} {id}"));
    }
    if let Some(p) = e.property {
        parts.push(format!("property {p}"));
    }
    if let Some(i) = e.incident {
        parts.push(format!("incident {i}"));
    }
    parts.join(" · ")
}

async fn log_page(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    form: web::Query<FilterForm>,
) -> Result<HttpResponse, WebError> {
    let form = form.into_inner();
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let chrome = Chrome::of(&client, &actor).await?;
    let mut page_data = LogPage {
        chrome,
        query: form.query(),
        form: form.clone(),
        error: None,
        step_up: false,
        rows: Vec::new(),
        older: None,
        chain: String::new(),
        chain_ok: false,
        checkpoint: None,
    };
    match authorize_read(&state, &mut client, &actor).await {
        Ok(()) => {}
        Err(WebError::Api(ApiError::StepUpRequired)) => {
            page_data.step_up = true;
            return page::render(StatusCode::UNAUTHORIZED, &page_data);
        }
        Err(e) => return Err(e),
    }
    let filter = match form.parse() {
        Ok(f) => f,
        Err(why) => {
            page_data.error = Some(why);
            return page::render(StatusCode::BAD_REQUEST, &page_data);
        }
    };
    let entries = search::search(
        &client,
        actor.tenant,
        &filter,
        form.before,
        search::PAGE_SIZE,
    )
    .await?;
    let names = actor_names(&client, &actor, &entries).await?;
    if i64::try_from(entries.len()).unwrap_or(0) == search::PAGE_SIZE
        && let Some(last) = entries.last()
    {
        let sep = if page_data.query.is_empty() { "" } else { "&" };
        page_data.older = Some(format!(
            "/audit?{}{sep}before={}",
            page_data.query, last.seq
        ));
    }
    page_data.rows = entries
        .iter()
        .map(|e| Row {
            seq: e.seq,
            at: when(e.recorded_at),
            actor: e.actor.map_or_else(
                || "system".to_owned(),
                |id| names.get(&id).cloned().unwrap_or_else(|| id.to_string()),
            ),
            action: e.action.clone(),
            outcome: e.outcome.clone(),
            about: about(e),
        })
        .collect();
    let (check, coverage) = state
        .chain_checks
        .verify(&client, actor.tenant, form.verify == "full")
        .await?;
    let checked = match coverage {
        audit::ChainCoverage::Full => "all recomputed just now".to_owned(),
        audit::ChainCoverage::Since { age } => format!(
            "all recomputed {} min ago, entries sealed since then recomputed now",
            age.as_secs() / 60
        ),
    };
    let (chain, ok) = match check {
        ChainCheck::Intact { entries, head } => {
            (format!("{entries} entries ({checked}), head {head}"), true)
        }
        ChainCheck::Broken { seq } => (format!("at entry {seq}"), false),
    };
    page_data.chain = chain;
    page_data.chain_ok = ok;
    page_data.checkpoint = audit::log::checkpoint(&client, actor.tenant, None)
        .await?
        .map(|cp| (cp.size, when(cp.signed_at), cp.note));
    page::ok(&page_data)
}

#[derive(Template)]
#[template(path = "auditor_entry.html")]
struct EntryPage {
    chrome: Chrome,
    entry: Entry,
    at: String,
    actor: String,
    details: String,
}

async fn entry_page(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    seq: web::Path<i64>,
) -> Result<HttpResponse, WebError> {
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    authorize_read(&state, &mut client, &actor).await?;
    let entry = search::entry(&client, actor.tenant, *seq).await?;
    let names = actor_names(&client, &actor, std::slice::from_ref(&entry)).await?;
    page::ok(&EntryPage {
        chrome: Chrome::of(&client, &actor).await?,
        at: when(entry.recorded_at),
        actor: entry.actor.map_or_else(
            || "system".to_owned(),
            |id| {
                names
                    .get(&id)
                    .map_or_else(|| id.to_string(), |n| format!("{n} ({id})"))
            },
        ),
        details: serde_json::to_string_pretty(&entry.details).unwrap_or_default(),
        entry,
    })
}

/// The filtered entries for an export, after the same checks as the page.
async fn exported(
    state: &AppState,
    actor: &Actor,
    form: &FilterForm,
) -> Result<Vec<Entry>, WebError> {
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    authorize_read(state, &mut client, actor).await?;
    let filter = form.parse().map_err(ApiError::BadRequest)?;
    Ok(search::search(
        &client,
        actor.tenant,
        &filter,
        form.before,
        search::EXPORT_LIMIT,
    )
    .await?)
}

pub(super) fn attachment(name: &str) -> (&'static str, String) {
    (
        "Content-Disposition",
        format!("attachment; filename=\"{name}\""),
    )
}

async fn export_csv(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    form: web::Query<FilterForm>,
) -> Result<HttpResponse, WebError> {
    let entries = exported(&state, &actor, &form).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header(attachment("audit.csv"))
        .body(search::to_csv(&entries)))
}

async fn export_json(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    form: web::Query<FilterForm>,
) -> Result<HttpResponse, WebError> {
    let entries = exported(&state, &actor, &form).await?;
    Ok(HttpResponse::Ok()
        .insert_header(attachment("audit.json"))
        .json(entries))
}

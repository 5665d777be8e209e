//! The dispatcher console: open incidents (open one, close, filter), one incident with its grants
//! and their live state, the property search by address with each home's plan summary, the audited
//! notes reveal (with the reason asked), the grant form (responders or a unit, duration capped by
//! the plan, justification), the second-approval queue, revoke; and the incident's live-state
//! stream (server-sent events, `GET /dispatch/incidents/{id}/events`).
//!
//! Every action calls the core function its JSON handler in `http::dispatch` / `http::properties`
//! calls (`emergency::incidents`, `emergency::grants`, `access`), so the policy, limits and audit
//! are the same. Actions that need a fresh step-up show the page again with what was typed and the
//! inline confirmation (`webauthn.js`), which then submits the form once more.
//!
//! The live state works without script: the page shows each grant's state as stored, and a reload
//! shows the newest. With script (`live.js`) the page subscribes to the stream, which sends the
//! incident's grant states at once and again each time a transaction changes them (PostgreSQL
//! `NOTIFY`, fanned out by `emergency::live::GrantEvents`), with a comment every 15 s to keep the
//! connection open through proxies.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::WebError;
use super::assets;
use super::page::{self, Chrome, SignedIn};
use crate::access;
use crate::auth::Actor;
use crate::domain::{Role, Text};
use crate::emergency::EmergencyError;
use crate::emergency::grants::{self, Grant, NewGrant};
use crate::emergency::incidents::{self, Incident, NewIncident, Origin};
use crate::emergency::live::{self, GrantState, GrantStatus};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::properties::{Secret, reveal_secret};
use crate::plans::AgencyRule;
use crate::policy::{AuthzRequest, StepUpContext};
use crate::store::{StoreError, properties as store, tenancy};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/dispatch", web::get().to(console))
        .route("/dispatch/incidents", web::post().to(open_incident))
        .route("/dispatch/incidents/{id}", web::get().to(show))
        .route("/dispatch/incidents/{id}/close", web::post().to(close))
        .route("/dispatch/incidents/{id}/grants", web::post().to(grant))
        .route("/dispatch/incidents/{id}/reveal", web::post().to(reveal))
        .route(
            "/dispatch/incidents/{id}/keypad-codes",
            web::post().to(keypad_code),
        )
        .route(
            "/dispatch/incidents/{id}/keypad-codes",
            web::get().to(back_to_incident),
        )
        .route("/dispatch/incidents/{id}/events", web::get().to(events))
        .route("/dispatch/approvals", web::get().to(approvals))
        .route("/dispatch/grants/{id}/approve", web::post().to(approve))
        .route("/dispatch/grants/{id}/revoke", web::post().to(revoke));
}

/// Most incidents the console lists at once (the filter narrows them).
pub const MAX_LISTED: i64 = 1000;

/// A time as the pages show it (the municipality's zone, named).
fn when(t: DateTime<Utc>) -> String {
    super::zone::when(t)
}

fn dispatcher(actor: &Actor) -> Result<(), WebError> {
    if actor.has(Role::Dispatcher) {
        Ok(())
    } else {
        Err(WebError::not_found())
    }
}

async fn connection(state: &AppState) -> Result<deadpool_postgres::Object, WebError> {
    Ok(state.pool.get().await.map_err(StoreError::from)?)
}

fn api(e: EmergencyError) -> WebError {
    WebError::Api(e.into())
}

/// A refusal the page shows beside the form (bad input, a conflict), rather than an error page.
fn inline(e: &EmergencyError) -> Option<String> {
    match e {
        EmergencyError::Invalid(d) => Some(format!("That did not work: {d}.")),
        EmergencyError::Conflict(d) => Some(format!("That conflicts with what is there: {d}.")),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The console: open incidents, the filter, opening one.

/// An incident row of the console.
pub struct IncidentRow {
    id: Uuid,
    cad_number: String,
    kind: String,
    address: String,
    agency: String,
    opened: String,
    grants: i64,
    awaiting: i64,
    live: i64,
}

/// The console's filter.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Filter {
    /// Part of the CAD number, type or address.
    pub q: String,
    /// `open` (default), `closed` or `all`.
    pub show: String,
}

impl Filter {
    fn show(&self) -> &'static str {
        match self.show.as_str() {
            "closed" => "closed",
            "all" => "all",
            _ => "open",
        }
    }
}

/// What the open-incident form was given.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct IncidentForm {
    cad_number: String,
    kind: String,
    address: String,
    agency: String,
}

#[derive(Template)]
#[template(path = "dispatch_console.html")]
struct Console {
    chrome: Chrome,
    filter_q: String,
    show: &'static str,
    incidents: Vec<IncidentRow>,
    truncated: bool,
    awaiting: i64,
    agencies: Vec<(Uuid, String)>,
    form: IncidentForm,
    error: Option<String>,
}

/// The incidents the console lists: the filter's, newest first, with their grant counts.
pub async fn listed(
    client: &impl deadpool_postgres::GenericClient,
    tenant: crate::store::Tenant,
    filter: &Filter,
) -> Result<(Vec<IncidentRow>, bool), WebError> {
    let q = filter.q.trim();
    let pattern = format!(
        "%{}%",
        q.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let closed = match filter.show() {
        "open" => Some(false),
        "closed" => Some(true),
        _ => None,
    };
    let rows = client
        .query(
            "SELECT i.id, i.cad_number, i.kind, i.address, a.name, i.opened_at,
                    count(g.id), count(g.id) FILTER (WHERE g.status = 'awaiting_approval'),
                    count(g.id) FILTER (WHERE g.status = 'live')
             FROM incidents i
             JOIN agencies a ON a.id = i.agency_id
             LEFT JOIN grants g ON g.municipality_id = i.municipality_id AND g.incident_id = i.id
             WHERE i.municipality_id = $1
               AND ($2::boolean IS NULL OR (i.closed_at IS NOT NULL) = $2)
               AND ($3 = '%%' OR i.cad_number ILIKE $3 OR i.kind ILIKE $3 OR i.address ILIKE $3)
             GROUP BY i.id, a.name
             ORDER BY i.opened_at DESC, i.id
             LIMIT $4",
            &[&tenant.id(), &closed, &pattern, &(MAX_LISTED + 1)],
        )
        .await
        .map_err(StoreError::from)?;
    let truncated = rows.len() > usize::try_from(MAX_LISTED).unwrap_or(usize::MAX);
    Ok((
        rows.iter()
            .take(usize::try_from(MAX_LISTED).unwrap_or(usize::MAX))
            .map(|r| IncidentRow {
                id: r.get(0),
                cad_number: r.get(1),
                kind: r.get(2),
                address: r.get(3),
                agency: r.get(4),
                opened: when(r.get(5)),
                grants: r.get(6),
                awaiting: r.get(7),
                live: r.get(8),
            })
            .collect(),
        truncated,
    ))
}

/// Renders the console for `actor` (the benchmark renders it too).
pub async fn render_console(
    client: &impl deadpool_postgres::GenericClient,
    actor: &Actor,
    filter: &Filter,
) -> Result<String, WebError> {
    Ok(
        console_page(client, actor, filter, IncidentForm::default(), None)
            .await?
            .render()?,
    )
}

async fn console_page(
    client: &impl deadpool_postgres::GenericClient,
    actor: &Actor,
    filter: &Filter,
    form: IncidentForm,
    error: Option<String>,
) -> Result<Console, WebError> {
    let (incidents, truncated) = listed(client, actor.tenant, filter).await?;
    let awaiting = grants::awaiting_approval_count(client, actor.tenant)
        .await
        .map_err(api)?;
    // Dispatchers open incidents for their own agency only.
    let agencies = tenancy::agencies(client, actor.tenant)
        .await?
        .into_iter()
        .filter(|a| Some(a.id) == actor.agency_id)
        .map(|a| (a.id, a.name))
        .collect();
    Ok(Console {
        chrome: Chrome::of(client, actor).await?,
        filter_q: filter.q.clone(),
        show: filter.show(),
        incidents,
        truncated,
        awaiting,
        agencies,
        form,
        error,
    })
}

async fn console(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    filter: web::Query<Filter>,
) -> Result<HttpResponse, WebError> {
    dispatcher(&actor)?;
    if filter.q.len() > 200 || filter.q.contains('\0') {
        return Err(WebError::Api(ApiError::BadRequest(
            "q: at most 200 characters".to_owned(),
        )));
    }
    let client = connection(&state).await?;
    page::ok(&console_page(&client, &actor, &filter, IncidentForm::default(), None).await?)
}

/// `POST /api/v1/incidents`'s steps; bad input shows the form again as typed.
async fn open_incident(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    form: web::Form<IncidentForm>,
) -> Result<HttpResponse, WebError> {
    dispatcher(&actor)?;
    let form = form.into_inner();
    let mut client = connection(&state).await?;
    let parsed = Uuid::parse_str(form.agency.trim())
        .map_err(|_| EmergencyError::Invalid("agency: choose one".to_owned()))
        .and_then(|agency| {
            NewIncident {
                cad_number: form.cad_number.clone(),
                kind: form.kind.clone(),
                address: form.address.clone(),
                agency,
            }
            .parse()
        });
    let now = state.clock.now();
    let result = match parsed {
        Ok(input) => {
            let tx = client.transaction().await.map_err(StoreError::from)?;
            match incidents::open(&tx, actor.tenant, &Origin::User(actor.user_id), &input, now)
                .await
            {
                Ok(incident) => {
                    tx.commit().await.map_err(StoreError::from)?;
                    Ok(incident)
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(incident) => Ok(page::see_other(&format!(
            "/dispatch/incidents/{}",
            incident.id
        ))),
        Err(e) => match inline(&e) {
            Some(error) => {
                let page =
                    console_page(&client, &actor, &Filter::default(), form, Some(error)).await?;
                page::render(StatusCode::BAD_REQUEST, &page)
            }
            None => Err(api(e)),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// One incident.

/// A grant as the incident page shows it.
struct GrantRow {
    id: Uuid,
    address: String,
    named: String,
    window: String,
    state: GrantStatus,
    can_approve: bool,
    can_revoke: bool,
    justification: String,
}

/// A found property with its plan summary.
struct Found {
    id: Uuid,
    address: String,
    plan: Option<PlanSummary>,
}

/// The plan in the console's words.
struct PlanSummary {
    version: i32,
    rule: String,
    second_approval: bool,
    allowed: bool,
    max_minutes: i32,
    has_notes: bool,
    /// "the homeowner is asked first (180 s; then …)" where the plan asks for live consent.
    consent: Option<String>,
    /// Where the physical key or key box is, if the plan says.
    key_location: Option<String>,
    /// Who holds a key: "name (phone)".
    key_holders: Vec<String>,
    has_key_box_code: bool,
    /// Each lock's warnings, "Front door: battery critical …".
    lock_warnings: Vec<String>,
}

/// The grant form as typed.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct GrantForm {
    property: String,
    responders: Vec<String>,
    unit: String,
    minutes: String,
    justification: String,
}

/// The reveal form as typed (`what`: `notes`, or `key_box` for the key box code).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct RevealForm {
    property: String,
    reason: String,
    what: String,
}

/// What the page is asked to show, beyond the incident.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IncidentQuery {
    q: String,
    property: String,
}

#[derive(Template)]
#[template(path = "dispatch_incident.html")]
struct IncidentPage {
    chrome: Chrome,
    live_js: &'static str,
    incident: Incident,
    open: bool,
    opened: String,
    grants: Vec<GrantRow>,
    q: String,
    found: Vec<Found>,
    searched: bool,
    /// The property the grant form is for, with its plan.
    chosen: Option<Found>,
    responders: Vec<(Uuid, String, bool)>,
    units: Vec<(String, bool)>,
    form: GrantForm,
    reveal_form: RevealForm,
    notes: Option<(String, Vec<(&'static str, String)>)>,
    error: Option<String>,
    /// Which form waits for a fresh step-up (its id), if any.
    step_up_for: Option<&'static str>,
    /// The alarms behind the incident, oldest first.
    alarms: Vec<AlarmLine>,
    /// Live grants a keypad code may be issued under, with their homes' paired locks.
    code_grants: Vec<CodeGrant>,
    /// Keypad codes issued for this incident (never the digits).
    codes: Vec<CodeRow>,
    /// A code just issued, shown once.
    issued_code: Option<IssuedView>,
    /// The code form as typed.
    code_form: CodeForm,
}

/// An alarm as the incident page lists it.
struct AlarmLine {
    kind: &'static str,
    source: String,
    received: String,
    confirmed: &'static str,
    repeat: bool,
}

/// A live grant in the keypad-code form.
struct CodeGrant {
    id: Uuid,
    address: String,
    locks: Vec<(Uuid, String)>,
    /// Its form waits for a fresh step-up.
    step_up: bool,
}

/// An issued code in the list.
struct CodeRow {
    lock: String,
    issued: String,
    window: String,
    state: &'static str,
}

/// A code just issued.
struct IssuedView {
    digits: String,
    lock: String,
    address: String,
    until: String,
}

/// The keypad-code form as typed.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct CodeForm {
    grant: String,
    lock: String,
    minutes: String,
}

fn rule_words(rule: &AgencyRule) -> String {
    if !rule.allowed {
        return "may not enter".to_owned();
    }
    if rule.incident_types.is_empty() {
        "may enter for any incident".to_owned()
    } else {
        format!("may enter for: {}", rule.incident_types.join(", "))
    }
}

async fn summary(
    state: &AppState,
    client: &mut deadpool_postgres::Object,
    actor: &Actor,
    incident: &Incident,
    id: Uuid,
) -> Result<Found, WebError> {
    let ctx = access::property(&*client, actor.tenant, id).await?;
    let principal = access::principal(&*client, actor).await?;
    let visible = access::authorize(
        client,
        &state.policy,
        actor,
        Some(ctx.property.id),
        state.clock.now(),
        |fresh| {
            AuthzRequest::view_plan_summary(
                &principal,
                &ctx.attrs,
                StepUpContext {
                    step_up_fresh: fresh,
                },
            )
        },
    )
    .await
    .is_ok();
    let nobody = AgencyRule {
        allowed: false,
        incident_types: Vec::new(),
        second_approval: false,
    };
    let health = if visible {
        crate::health::of_property(&*client, actor.tenant, ctx.property.id, state.clock.now())
            .await?
    } else {
        Vec::new()
    };
    let plan = ctx.plan.as_ref().filter(|_| visible).map(|p| {
        let rule = match incident.agency_kind {
            crate::domain::AgencyKind::Fire => &p.agencies.fire,
            crate::domain::AgencyKind::Ems => &p.agencies.ems,
            crate::domain::AgencyKind::Police => &p.agencies.police,
            crate::domain::AgencyKind::Other => &nobody,
        };
        PlanSummary {
            version: p.version,
            rule: rule_words(rule),
            second_approval: rule.allowed && rule.second_approval,
            allowed: rule.allowed
                && (rule.incident_types.is_empty() || rule.incident_types.contains(&incident.kind)),
            max_minutes: p.max_grant_minutes,
            has_notes: p.notes.is_some(),
            consent: p.live_consent.map(|c| {
                format!(
                    "the homeowner is asked first ({} s to answer; then {})",
                    c.timeout_seconds,
                    c.fallback.words()
                )
            }),
            key_location: p.physical_key.location.clone(),
            key_holders: p
                .physical_key
                .holders
                .iter()
                .map(|h| match &h.phone {
                    Some(phone) => format!("{} ({phone})", h.name),
                    None => h.name.clone(),
                })
                .collect(),
            has_key_box_code: p.key_box.is_some(),
            lock_warnings: health
                .iter()
                .flat_map(|l| l.warnings.iter().map(move |w| format!("{}: {w}", l.name)))
                .collect(),
        }
    });
    Ok(Found {
        id: ctx.property.id,
        address: ctx.property.address,
        plan,
    })
}

fn named_words(grant: &Grant, names: &std::collections::HashMap<Uuid, String>) -> String {
    let people: Vec<&str> = grant
        .responders
        .iter()
        .map(|id| names.get(id).map_or("a responder", String::as_str))
        .collect();
    match &grant.unit {
        Some(unit) => format!("{unit} ({})", people.join(", ")),
        None => people.join(", "),
    }
}

/// Everything the incident page shows; `form`, `reveal_form` and `error` carry a refused action.
#[allow(clippy::too_many_arguments)]
async fn incident_page(
    state: &AppState,
    client: &mut deadpool_postgres::Object,
    actor: &Actor,
    id: Uuid,
    query: &IncidentQuery,
    form: GrantForm,
    reveal_form: RevealForm,
    notes: Option<(String, Vec<(&'static str, String)>)>,
    error: Option<String>,
    step_up_for: Option<&'static str>,
) -> Result<IncidentPage, WebError> {
    let now = state.clock.now();
    let incident = incidents::by_id(&*client, actor.tenant, id)
        .await
        .map_err(api)?;
    let list = grants::of_incident(&*client, actor.tenant, incident.id)
        .await
        .map_err(api)?;
    let states = live::states_of_incident(&*client, actor.tenant, incident.id, now)
        .await
        .map_err(api)?;
    let eligible = grants::eligible_responders(&*client, actor.tenant, incident.agency_kind)
        .await
        .map_err(api)?;
    let mut names: std::collections::HashMap<Uuid, String> =
        eligible.iter().map(|e| (e.id, e.name.clone())).collect();
    for g in &list {
        for r in &g.responders {
            if !names.contains_key(r)
                && let Ok(u) = crate::store::people::user(&*client, actor.tenant, *r).await
            {
                names.insert(*r, u.display_name);
            }
        }
    }
    let mut rows = Vec::with_capacity(list.len());
    for g in &list {
        let address = store::property(&*client, actor.tenant, g.property_id)
            .await
            .map(|p| p.address)
            .unwrap_or_default();
        let state = states
            .iter()
            .find(|s| s.grant == g.id)
            .cloned()
            .unwrap_or(GrantStatus {
                grant: g.id,
                state: GrantState::Ended,
                words: GrantState::Ended.words(),
                badge: GrantState::Ended.badge(),
                consent: None,
            });
        rows.push(GrantRow {
            id: g.id,
            address,
            named: named_words(g, &names),
            window: format!("{} – {}", when(g.starts_at), when(g.ends_at)),
            can_approve: g.status == "awaiting_approval" && g.granted_by != actor.user_id,
            can_revoke: matches!(
                g.status.as_str(),
                "live" | "awaiting_approval" | "awaiting_consent"
            ),
            justification: g.justification.clone(),
            state,
        });
    }
    let q = query.q.trim().to_owned();
    let mut found = Vec::new();
    let searched = q.chars().count() >= 3;
    if searched {
        let text = Text::parse("q", &q, 200).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        for p in store::search_properties(&*client, actor.tenant, text.as_str()).await? {
            found.push(summary(state, client, actor, &incident, p.id).await?);
        }
    }
    let chosen_id = Uuid::parse_str(if form.property.is_empty() {
        &query.property
    } else {
        &form.property
    })
    .ok();
    let chosen = match chosen_id {
        Some(p) => match summary(state, client, actor, &incident, p).await {
            Ok(found) => Some(found),
            Err(WebError::Api(ApiError::NotFound)) => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    let picked: Vec<Uuid> = form
        .responders
        .iter()
        .filter_map(|r| Uuid::parse_str(r).ok())
        .collect();
    let mut units: Vec<(String, bool)> = Vec::new();
    for e in &eligible {
        if let Some(u) = &e.unit
            && !units.iter().any(|(n, _)| n == u)
        {
            units.push((u.clone(), form.unit == *u));
        }
    }
    let alarms = crate::alarms::of_incident(&*client, actor.tenant, incident.id)
        .await
        .map_err(api)?
        .into_iter()
        .map(|a| AlarmLine {
            kind: a.kind.words(),
            source: match (a.source.as_str(), &a.detector) {
                ("lock", Some(d)) => format!("the lock's detector input ({d})"),
                ("lock", None) => "the lock's detector input".to_owned(),
                (_, Some(d)) => format!("the monitoring centre ({d})"),
                (_, None) => "the monitoring centre".to_owned(),
            },
            received: when(a.received_at),
            confirmed: match (a.source.as_str(), a.confirmed) {
                ("lock", _) => "not applicable (a lock's detector)",
                (_, true) => "confirmed by the monitoring centre",
                (_, false) => "not confirmed",
            },
            repeat: a.duplicate,
        })
        .collect();
    let open = incident.closed_at.is_none();
    let mut code_grants = Vec::new();
    if open {
        for g in list.iter().filter(|g| g.is_live(now)) {
            let locks = store::locks(&*client, actor.tenant, g.property_id)
                .await?
                .into_iter()
                .filter(|l| l.pairing_state == "paired")
                .map(|l| (l.id, l.name))
                .collect::<Vec<_>>();
            if locks.is_empty() {
                continue;
            }
            let address = rows
                .iter()
                .find(|r| r.id == g.id)
                .map(|r| r.address.clone())
                .unwrap_or_default();
            code_grants.push(CodeGrant {
                id: g.id,
                address,
                locks,
                step_up: false,
            });
        }
    }
    let codes = crate::codes::of_incident(&*client, actor.tenant, incident.id, now)
        .await?
        .into_iter()
        .map(|c| CodeRow {
            lock: c.lock_name,
            issued: format!("{} by {}", when(c.issued_at), c.issued_by),
            window: format!("{} – {}", when(c.not_before), when(c.not_after)),
            state: c.state,
        })
        .collect();
    Ok(IncidentPage {
        alarms,
        code_grants,
        codes,
        issued_code: None,
        code_form: CodeForm::default(),
        chrome: Chrome::of(&*client, actor).await?,
        live_js: &assets::LIVE_JS.path,
        opened: when(incident.opened_at),
        open,
        incident,
        grants: rows,
        q,
        found,
        searched,
        chosen,
        responders: eligible
            .into_iter()
            .map(|e| {
                let label = match e.unit {
                    Some(u) => format!("{} ({u})", e.name),
                    None => e.name,
                };
                (e.id, label, picked.contains(&e.id))
            })
            .collect(),
        units,
        form,
        reveal_form,
        notes,
        error,
        step_up_for,
    })
}

async fn show(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    query: web::Query<IncidentQuery>,
) -> Result<HttpResponse, WebError> {
    dispatcher(&actor)?;
    if query.q.len() > 200 {
        return Err(WebError::Api(ApiError::BadRequest(
            "q: at most 200 characters".to_owned(),
        )));
    }
    let mut client = connection(&state).await?;
    let page = incident_page(
        &state,
        &mut client,
        &actor,
        *id,
        &query,
        GrantForm::default(),
        RevealForm::default(),
        None,
        None,
        None,
    )
    .await?;
    page::ok(&page)
}

/// `POST /api/v1/incidents/{id}/close`'s steps.
async fn close(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    dispatcher(&actor)?;
    let now = state.clock.now();
    let mut client = connection(&state).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let incident = incidents::close(&tx, actor.tenant, &Origin::User(actor.user_id), *id, now)
        .await
        .map_err(api)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(page::see_other(&format!(
        "/dispatch/incidents/{}",
        incident.id
    )))
}

/// `POST /api/v1/incidents/{id}/grants`'s steps. Bad input, a conflict, or a missing step-up shows
/// the page again with the form as typed.
async fn grant(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, WebError> {
    dispatcher(&actor)?;
    // A form may repeat `responders`; read the pairs.
    let mut typed = GrantForm::default();
    for (k, v) in form.into_inner() {
        match k.as_str() {
            "property" => typed.property = v,
            "responders" if typed.responders.len() < grants::MAX_RESPONDERS + 1 => {
                typed.responders.push(v);
            }
            "unit" => typed.unit = v,
            "minutes" => typed.minutes = v,
            "justification" => typed.justification = v,
            _ => {}
        }
    }
    let mut client = connection(&state).await?;
    let parsed = parse_grant(&typed);
    let now = state.clock.now();
    let outcome = match parsed {
        Ok(input) => {
            grants::create(
                &mut client,
                &state.policy,
                &state.kek,
                &actor,
                *id,
                &input,
                &state.settings.public_origin,
                now,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let (error, step_up) = match outcome {
        Ok(_) => return Ok(page::see_other(&format!("/dispatch/incidents/{id}#grants"))),
        Err(EmergencyError::StepUpRequired) => (None, Some("grant-form")),
        Err(e) => match inline(&e) {
            Some(words) => (Some(words), None),
            None => return Err(api(e)),
        },
    };
    let status = if step_up.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    let page = incident_page(
        &state,
        &mut client,
        &actor,
        *id,
        &IncidentQuery::default(),
        typed,
        RevealForm::default(),
        None,
        error,
        step_up,
    )
    .await?;
    page::render(status, &page)
}

fn parse_grant(form: &GrantForm) -> Result<grants::GrantInput, EmergencyError> {
    let invalid = |s: &str| EmergencyError::Invalid(s.to_owned());
    let property =
        Uuid::parse_str(form.property.trim()).map_err(|_| invalid("property: choose a home"))?;
    let responders = form
        .responders
        .iter()
        .map(|r| Uuid::parse_str(r.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid("responders: choose from the list"))?;
    let minutes = form
        .minutes
        .trim()
        .parse::<u32>()
        .map_err(|_| invalid("minutes: a whole number"))?;
    let unit = Some(form.unit.trim().to_owned()).filter(|u| !u.is_empty());
    NewGrant {
        property,
        responders,
        unit,
        minutes,
        justification: form.justification.clone(),
    }
    .parse()
}

/// Reveals a home's responder notes, or its key box code (`what=key_box`), to the dispatcher, for a
/// reason they give: the one reveal of `http::properties::reveal_secret` (ties the incident to the
/// property, asks the policy, audits the reveal with the reason), as the JSON reveals run it.
async fn reveal(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<RevealForm>,
) -> Result<HttpResponse, WebError> {
    dispatcher(&actor)?;
    let form = form.into_inner();
    let secret = if form.what == "key_box" {
        Secret::KeyBox
    } else {
        Secret::Notes
    };
    let checked = Uuid::parse_str(form.property.trim())
        .map_err(|_| "Choose the home first.".to_owned())
        .and_then(|p| {
            Text::parse("reason", &form.reason, 500)
                .map(|r| (p, r.into_string()))
                .map_err(|_| "Say why you need it (1 to 500 characters).".to_owned())
        });
    let result: Result<_, Option<String>> = match checked {
        Err(words) => Err(Some(words)),
        Ok((property, reason)) => {
            match reveal_steps(&state, &actor, *id, property, secret, &reason).await {
                Ok(notes) => Ok(notes),
                Err(WebError::Api(ApiError::StepUpRequired)) => Err(None),
                Err(WebError::Api(ApiError::Conflict(d) | ApiError::BadRequest(d))) => Err(Some(d)),
                Err(WebError::Api(ApiError::NotFound)) => Err(Some(
                    "What the homeowner sealed is not yours to see for this incident.".to_owned(),
                )),
                Err(e) => return Err(e),
            }
        }
    };
    let (notes, error, step_up, status) = match result {
        Ok(notes) => (Some(notes), None, None, StatusCode::OK),
        Err(None) => (
            None,
            None,
            Some(match secret {
                Secret::Notes => "reveal-form",
                Secret::KeyBox => "key-box-form",
            }),
            StatusCode::UNAUTHORIZED,
        ),
        Err(Some(words)) => (None, Some(words), None, StatusCode::BAD_REQUEST),
    };
    let query = IncidentQuery {
        property: form.property.clone(),
        ..IncidentQuery::default()
    };
    let mut client = connection(&state).await?;
    let page = incident_page(
        &state,
        &mut client,
        &actor,
        *id,
        &query,
        GrantForm {
            property: form.property.clone(),
            ..GrantForm::default()
        },
        form,
        notes,
        error,
        step_up,
    )
    .await?;
    page::render(status, &page)
}

async fn reveal_steps(
    state: &AppState,
    actor: &Actor,
    incident: Uuid,
    property: Uuid,
    secret: Secret,
    reason: &str,
) -> Result<(String, Vec<(&'static str, String)>), WebError> {
    let revealed =
        reveal_secret(state, actor, property, secret, Some(incident), Some(reason)).await?;
    let line = |o: &Option<String>| o.clone().unwrap_or_else(|| "—".to_owned());
    let notes = &revealed.notes;
    let lines = match secret {
        Secret::Notes => vec![
            ("Pets", line(&notes.pets)),
            ("Hazards", line(&notes.hazards)),
            ("Medical equipment", line(&notes.medical_equipment)),
            ("Shut-offs", line(&notes.utilities)),
            ("Other notes", line(&notes.free_text)),
        ],
        Secret::KeyBox => vec![
            ("Key box", line(&revealed.plan.physical_key.location)),
            ("Key box code", line(&revealed.key_box_code)),
        ],
    };
    Ok((revealed.address, lines))
}

// ---------------------------------------------------------------------------------------------
// Keypad codes read over the radio.

/// `POST /api/v1/grants/{grant}/keypad-codes`'s steps: the code is shown once on the page
/// (`no-store`), to read to the crew by radio; a stale step-up is asked for inline and keeps the
/// choices; a refusal is said beside the form.
async fn keypad_code(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<CodeForm>,
) -> Result<HttpResponse, WebError> {
    dispatcher(&actor)?;
    let typed = form.into_inner();
    let mut client = connection(&state).await?;
    let now = state.clock.now();
    let parsed = match (
        Uuid::parse_str(typed.grant.trim()),
        Uuid::parse_str(typed.lock.trim()),
    ) {
        (Ok(g), Ok(l)) => {
            let minutes = typed.minutes.trim();
            if minutes.is_empty() {
                Ok((g, l, None))
            } else {
                minutes
                    .parse::<u32>()
                    .map(|m| (g, l, Some(m)))
                    .map_err(|_| "minutes: 10 to 120".to_owned())
            }
        }
        _ => Err("choose a grant and a lock".to_owned()),
    };
    // The grant must be one of this incident's.
    if let Ok((grant, _, _)) = &parsed {
        let g = grants::by_id(&client, actor.tenant, *grant)
            .await
            .map_err(api)?;
        if g.incident_id != *id {
            return Err(WebError::not_found());
        }
    }
    let root = crate::codes::SecretRoot::derive(&state.kek);
    let outcome = match &parsed {
        Ok((grant, lock, minutes)) => {
            crate::codes::issue_incident(
                &mut client,
                &state.policy,
                &root,
                &actor,
                *grant,
                &crate::codes::IncidentCodeRequest {
                    lock: *lock,
                    minutes: *minutes,
                },
                now,
            )
            .await
        }
        Err(words) => Err(EmergencyError::Invalid(words.clone())),
    };
    let (status, issued, error, step_up) = match outcome {
        Ok(code) => (StatusCode::CREATED, Some(code), None, None),
        Err(EmergencyError::StepUpRequired) => (
            StatusCode::UNAUTHORIZED,
            None,
            None,
            parsed.as_ref().ok().map(|(g, _, _)| *g),
        ),
        Err(e) => match inline(&e) {
            Some(words) => (StatusCode::BAD_REQUEST, None, Some(words), None),
            None => return Err(api(e)),
        },
    };
    let mut page = incident_page(
        &state,
        &mut client,
        &actor,
        *id,
        &IncidentQuery::default(),
        GrantForm::default(),
        RevealForm::default(),
        None,
        error,
        None,
    )
    .await?;
    for g in &mut page.code_grants {
        g.step_up = step_up == Some(g.id);
    }
    page.code_form = typed;
    if let Some(code) = issued {
        let lock = page
            .code_grants
            .iter()
            .flat_map(|g| g.locks.iter())
            .find(|(l, _)| *l == code.lock_id)
            .map_or_else(|| code.lock_id.to_string(), |(_, n)| n.clone());
        let address = page
            .code_grants
            .iter()
            .find(|g| g.id == code.grant_id)
            .map(|g| g.address.clone())
            .unwrap_or_default();
        page.issued_code = Some(IssuedView {
            digits: code.code,
            lock,
            address,
            until: when(code.not_after),
        });
        page.code_form = CodeForm::default();
        // The digits are on this page only: not for a cache or the back button.
        return Ok(page::html_response(status)
            .insert_header(("Cache-Control", "no-store"))
            .body(page.render()?));
    }
    page::render(status, &page)
}

/// Reloading the page of an issued code issues no second code.
async fn back_to_incident(id: web::Path<Uuid>) -> HttpResponse {
    page::see_other(&format!("/dispatch/incidents/{id}#codes"))
}

// ---------------------------------------------------------------------------------------------
// The approval queue, approve, revoke.

struct AwaitingRow {
    id: Uuid,
    incident: Uuid,
    cad_number: String,
    address: String,
    created: String,
    minutes: i64,
    justification: String,
    mine: bool,
    asks_step_up: bool,
}

#[derive(Template)]
#[template(path = "dispatch_approvals.html")]
struct Approvals {
    chrome: Chrome,
    rows: Vec<AwaitingRow>,
    error: Option<String>,
}

async fn approvals_page(
    client: &impl deadpool_postgres::GenericClient,
    actor: &Actor,
    error: Option<String>,
    step_up_for: Option<Uuid>,
) -> Result<Approvals, WebError> {
    let rows = grants::awaiting_approval(client, actor.tenant)
        .await
        .map_err(api)?
        .into_iter()
        .map(|a| AwaitingRow {
            id: a.grant.id,
            incident: a.grant.incident_id,
            cad_number: a.cad_number,
            address: a.address,
            created: when(a.grant.created_at),
            minutes: (a.grant.ends_at - a.grant.starts_at).num_minutes(),
            justification: a.grant.justification,
            mine: a.grant.granted_by == actor.user_id,
            asks_step_up: step_up_for == Some(a.grant.id),
        })
        .collect();
    Ok(Approvals {
        chrome: Chrome::of(client, actor).await?,
        rows,
        error,
    })
}

async fn approvals(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
) -> Result<HttpResponse, WebError> {
    dispatcher(&actor)?;
    let client = connection(&state).await?;
    page::ok(&approvals_page(&client, &actor, None, None).await?)
}

/// Where a grant action returns to: the incident page, or the queue.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Back {
    from: String,
}

/// `POST /api/v1/grants/{id}/approve`'s steps; without a fresh step-up the queue asks for it inline.
async fn approve(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    back: web::Form<Back>,
) -> Result<HttpResponse, WebError> {
    dispatcher(&actor)?;
    let now = state.clock.now();
    let mut client = connection(&state).await?;
    match grants::approve(&mut client, &state.policy, &actor, *id, now).await {
        Ok(g) if back.from == "incident" => Ok(page::see_other(&format!(
            "/dispatch/incidents/{}#grants",
            g.incident_id
        ))),
        Ok(_) => Ok(page::see_other("/dispatch/approvals")),
        Err(EmergencyError::StepUpRequired) => page::render(
            StatusCode::UNAUTHORIZED,
            &approvals_page(&client, &actor, None, Some(*id)).await?,
        ),
        Err(e) => match inline(&e) {
            Some(words) => page::render(
                StatusCode::CONFLICT,
                &approvals_page(&client, &actor, Some(words), None).await?,
            ),
            None => Err(api(e)),
        },
    }
}

/// `POST /api/v1/grants/{id}/revoke`'s steps.
async fn revoke(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    dispatcher(&actor)?;
    let now = state.clock.now();
    let mut client = connection(&state).await?;
    let g = grants::revoke(&mut client, &actor, *id, now)
        .await
        .map_err(api)?;
    Ok(page::see_other(&format!(
        "/dispatch/incidents/{}#grants",
        g.incident_id
    )))
}

// ---------------------------------------------------------------------------------------------
// The live-state stream.

/// How often the stream sends a keep-alive comment (and re-derives the states: a grant's window
/// ends without any row changing).
const KEEPALIVE: Duration = Duration::from_secs(15);

fn sse_event(states: &[GrantStatus]) -> web::Bytes {
    let json = serde_json::to_string(states).unwrap_or_else(|_| "[]".to_owned());
    web::Bytes::from(format!("event: grants\ndata: {json}\n\n"))
}

/// `GET /dispatch/incidents/{id}/events`: `text/event-stream` of the incident's grant states (event
/// `grants`, data: a JSON array of `{grant, state, words, badge}`), at once and after every change.
/// A session holds at most `live::MAX_PER_SESSION` streams (a new one ends its oldest); 429 when
/// the replica serves as many as it may.
async fn events(
    state: web::Data<AppState>,
    actor: Actor,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    if !actor.has(Role::Dispatcher) {
        return Err(ApiError::NotFound);
    }
    let incident = {
        let client = state.pool.get().await.map_err(StoreError::from)?;
        incidents::by_id(&client, actor.tenant, *id).await?
    };
    let subscription = state
        .grant_events
        .subscribe(actor.session_id)
        .map_err(|_| ApiError::TooManyRequests { retry_after: 15 })?;
    let tenant = actor.tenant;
    let session = actor.session_id;
    let stream = futures_util::stream::unfold(
        (
            state.into_inner(),
            subscription,
            None::<Vec<GrantStatus>>,
            true,
        ),
        move |(state, mut sub, last, first)| async move {
            loop {
                if !first || last.is_some() {
                    let wait = tokio::time::timeout(KEEPALIVE, sub.next_for(tenant, incident.id));
                    let heard = wait.await;
                    if heard == Ok(live::Change::Evicted) {
                        // A newer view of this session took this one's place.
                        return None;
                    }
                    if heard.is_err() {
                        // Quiet: re-derive (windows end by time), else keep the connection alive.
                        let states = current(&state, tenant, session, incident.id).await?;
                        if Some(&states) != last.as_ref() {
                            let event = sse_event(&states);
                            return Some((
                                Ok::<_, actix_web::Error>(event),
                                (state, sub, Some(states), false),
                            ));
                        }
                        return Some((
                            Ok(web::Bytes::from_static(b": keep-alive\n\n")),
                            (state, sub, last, false),
                        ));
                    }
                }
                let Some(states) = current(&state, tenant, session, incident.id).await else {
                    // The database is briefly unavailable: end the stream; the browser reconnects.
                    return None;
                };
                if Some(&states) != last.as_ref() {
                    let event = sse_event(&states);
                    return Some((Ok(event), (state, sub, Some(states), false)));
                }
            }
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// The incident's grant states, while the stream's session is still signed in (`None` ends the
/// stream: signed out, expired, or the database briefly unavailable; the browser reconnects).
async fn current(
    state: &AppState,
    tenant: crate::store::Tenant,
    session: Uuid,
    incident: Uuid,
) -> Option<Vec<GrantStatus>> {
    let now = state.clock.now();
    let client = state.pool.get().await.ok()?;
    let live = crate::store::exists(
        &client,
        "SELECT 1 FROM sessions WHERE id = $1 AND municipality_id = $2 AND ended_at IS NULL
           AND absolute_expires_at > $3",
        &[&session, &tenant.id(), &now],
    )
    .await
    .ok()?;
    if !live {
        return None;
    }
    live::states_of_incident(&client, tenant, incident, now)
        .await
        .ok()
}

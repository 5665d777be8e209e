//! Homeowner pages: the list of one's properties, adding one, a property with its locks (add a lock
//! with the id and pairing code its agent printed; pairing state, last contact, battery), the
//! access-plan editor (a new version per save; a fresh step-up, asked inline, keeps what was typed)
//! and the plan's versions with a side-by-side comparison of any two.
//!
//! Each action runs the steps of its JSON endpoint in `http::properties` (the same store, policy and
//! audit calls, the same limits); every page loads the property in the viewer's tenant, asks the
//! policy, and answers a property that is not the viewer's like one that does not exist.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::WebError;
use super::page::{self, Chrome, SignedIn};
use crate::access::{self, PropertyContext};
use crate::audit::{self, Event, Outcome};
use crate::auth::Actor;
use crate::crypto;
use crate::domain::Role;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::plans::{
    AgencyRule, AgencyRules, ConsentFallback, Contact, KeyHolder, LiveConsent, NotificationChoices,
    PhysicalKey, PlanInput, ResponderNotes,
};
use crate::policy::{AuthzRequest, PrincipalAttrs, PropertyAttrs, RevealContext, StepUpContext};
use crate::store::properties::{self as store, Lock, Property, StoredPlan};
use crate::store::registrations::{self, LockRegistration, RegisterError};
use crate::store::{StoreError, plan_history};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/homes", web::get().to(list))
        .route("/homes", web::post().to(create))
        .route("/homes/{id}", web::get().to(show))
        .route("/homes/{id}/locks", web::post().to(add_lock))
        .route(
            "/homes/{id}/lock-registrations/{registration}/cancel",
            web::post().to(cancel_registration),
        )
        .route(
            "/homes/{id}/offline-period",
            web::post().to(set_offline_period),
        )
        .route("/homes/{id}/alarms", web::get().to(alarm_rules_page))
        .route("/homes/{id}/alarms", web::post().to(save_alarm_rules))
        .route(
            "/homes/{id}/alarms/accounts",
            web::post().to(link_monitoring_account),
        )
        .route("/homes/{id}/plan", web::get().to(edit_plan))
        .route("/homes/{id}/plan", web::post().to(save_plan))
        .route("/homes/{id}/plan/compare", web::get().to(compare))
        .route("/homes/{id}/plan/print", web::get().to(print_plan));
}

/// A time as the pages show it (the municipality's zone, named).
fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "never".to_owned(), super::zone::when)
}

fn homeowner(actor: &Actor) -> Result<(), WebError> {
    if actor.has(Role::Homeowner) {
        Ok(())
    } else {
        Err(WebError::not_found())
    }
}

async fn connection(state: &AppState) -> Result<deadpool_postgres::Object, WebError> {
    Ok(state.pool.get().await.map_err(StoreError::from)?)
}

/// Loads the viewer's own property and asks the policy (as `http::properties` does); someone
/// else's property is "not found".
async fn own_property(
    state: &AppState,
    client: &mut deadpool_postgres::Object,
    actor: &Actor,
    id: Uuid,
    build: impl Fn(&PrincipalAttrs, &PropertyAttrs, bool) -> AuthzRequest,
) -> Result<PropertyContext, WebError> {
    let ctx = access::property(&*client, actor.tenant, id).await?;
    let principal = access::principal(&*client, actor).await?;
    access::authorize(
        client,
        &state.policy,
        actor,
        Some(ctx.property.id),
        state.clock.now(),
        |fresh| build(&principal, &ctx.attrs, fresh),
    )
    .await?;
    if ctx.property.owner_id != actor.user_id {
        return Err(WebError::not_found());
    }
    Ok(ctx)
}

fn manage_locks(p: &PrincipalAttrs, prop: &PropertyAttrs, fresh: bool) -> AuthzRequest {
    AuthzRequest::manage_locks(
        p,
        prop,
        StepUpContext {
            step_up_fresh: fresh,
        },
    )
}

fn read_own_plan(p: &PrincipalAttrs, prop: &PropertyAttrs, fresh: bool) -> AuthzRequest {
    AuthzRequest::reveal_notes(
        p,
        prop,
        RevealContext {
            step_up_fresh: fresh,
            ..RevealContext::default()
        },
    )
}

fn edit(p: &PrincipalAttrs, prop: &PropertyAttrs, fresh: bool) -> AuthzRequest {
    AuthzRequest::edit_plan(
        p,
        prop,
        StepUpContext {
            step_up_fresh: fresh,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// The list of properties, and adding one.

#[derive(Template)]
#[template(path = "homes.html")]
struct Homes {
    chrome: Chrome,
    homes: Vec<Property>,
    address: String,
    error: Option<String>,
}

async fn list(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let client = connection(&state).await?;
    page::ok(&Homes {
        chrome: Chrome::of(&client, &actor).await?,
        homes: store::properties_of(&client, actor.tenant, actor.user_id).await?,
        address: String::new(),
        error: None,
    })
}

#[derive(Deserialize)]
struct NewHome {
    address: String,
}

/// `POST /api/v1/properties`'s steps.
async fn create(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    form: web::Form<NewHome>,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let mut client = connection(&state).await?;
    let address = form.address.trim();
    if address.is_empty() || address.len() > 500 {
        return page::render(
            StatusCode::BAD_REQUEST,
            &Homes {
                chrome: Chrome::of(&client, &actor).await?,
                homes: store::properties_of(&client, actor.tenant, actor.user_id).await?,
                address: form.address.clone(),
                error: Some("The address must have 1 to 500 characters.".to_owned()),
            },
        );
    }
    let now = state.clock.now();
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
    Ok(page::see_other(&format!("/homes/{}", property.id)))
}

// ---------------------------------------------------------------------------------------------
// One property: its locks, its plan, the plan's versions.

/// A lock as the page shows it: paired (or retired), or a registration waiting for its lock.
struct LockRow {
    id: Uuid,
    name: String,
    paired: bool,
    state: String,
    last_seen: String,
    battery: String,
    /// For a waiting registration: its id (the cancel form names it).
    registration: Option<Uuid>,
}

impl LockRow {
    fn waiting(r: LockRegistration) -> Self {
        Self {
            id: r.lock_id,
            name: r.name,
            paired: false,
            state: format!("waiting for the lock (until {})", when(Some(r.expires_at))),
            last_seen: when(None),
            battery: "not reported".to_owned(),
            registration: Some(r.id),
        }
    }
}

/// A closed registration as the page explains it.
struct ClosedRow {
    lock_id: Uuid,
    closed: String,
    words: String,
}

impl From<Lock> for LockRow {
    fn from(l: Lock) -> Self {
        let state = match l.pairing_state.as_str() {
            "paired" => "paired",
            _ => "retired",
        };
        Self {
            id: l.id,
            paired: l.pairing_state == "paired",
            name: l.name,
            state: state.to_owned(),
            registration: None,
            last_seen: when(l.last_seen_at),
            battery: l
                .battery_percent
                .map_or_else(|| "not reported".to_owned(), |b| format!("{b} %")),
        }
    }
}

struct VersionRow {
    version: i32,
    created: String,
    author: String,
}

#[derive(Default)]
struct NewLockForm {
    lock_id: String,
    name: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "home_detail.html")]
struct HomeDetail {
    chrome: Chrome,
    property: Property,
    locks: Vec<LockRow>,
    closed: Vec<ClosedRow>,
    plan: Option<PlanFacts>,
    versions: Vec<VersionRow>,
    new_lock: NewLockForm,
    health: Vec<HealthRow>,
    offline_minutes: u32,
    period_error: Option<String>,
    alarms: Vec<AlarmRow>,
}

/// A paired lock's health as the homeowner's page shows it.
struct HealthRow {
    id: Uuid,
    name: String,
    battery: String,
    trend: String,
    days_left: String,
    last_seen: String,
    period: String,
    own_period: Option<u32>,
    warnings: Vec<String>,
}

impl From<crate::health::LockHealth> for HealthRow {
    fn from(h: crate::health::LockHealth) -> Self {
        let battery = match (h.battery_percent, h.battery_millivolts) {
            (Some(p), Some(mv)) => format!("{p} % ({mv} mV)"),
            (Some(p), None) => format!("{p} %"),
            _ => "not reported".to_owned(),
        };
        let trend = if h.battery_trend.is_empty() {
            "no change in 30 days".to_owned()
        } else {
            h.battery_trend
                .iter()
                .map(|s| format!("{} % on {}", s.percent, s.at.format("%Y-%m-%d")))
                .collect::<Vec<_>>()
                .join(" → ")
        };
        Self {
            id: h.lock,
            name: h.name,
            battery,
            trend,
            days_left: h.battery_days_left.map_or_else(
                || "no falling trend yet".to_owned(),
                |d| format!("about {d} days"),
            ),
            last_seen: when(h.last_seen_at),
            period: minutes_words(h.offline_after_minutes),
            own_period: h.own_offline_period.then_some(h.offline_after_minutes),
            warnings: h.warnings,
        }
    }
}

/// "90 minutes", "24 hours", "3 days".
fn minutes_words(m: u32) -> String {
    if m.is_multiple_of(1440) {
        format!("{} days", m / 1440).replace("1 days", "1 day")
    } else if m.is_multiple_of(60) {
        format!("{} hours", m / 60).replace("1 hours", "1 hour")
    } else {
        format!("{m} minutes")
    }
}

/// An alarm as the homeowner's page lists it.
struct AlarmRow {
    received: String,
    kind: &'static str,
    source: String,
    what: String,
}

/// The plan in words, for the property page.
struct PlanFacts {
    version: i32,
    agencies: Vec<(&'static str, String)>,
    max_grant_minutes: i32,
    has_notes: bool,
}

fn rule_words(rule: &AgencyRule) -> String {
    if !rule.allowed {
        return "may not enter".to_owned();
    }
    let mut words = if rule.incident_types.is_empty() {
        "may enter for any incident".to_owned()
    } else {
        format!("may enter for: {}", rule.incident_types.join(", "))
    };
    if rule.second_approval {
        words.push_str("; a second dispatcher must approve");
    }
    words
}

fn agency_rows(a: &AgencyRules) -> Vec<(&'static str, String)> {
    vec![
        ("Fire department", rule_words(&a.fire)),
        ("Ambulance (EMS)", rule_words(&a.ems)),
        ("Police", rule_words(&a.police)),
    ]
}

async fn detail_page(
    state: &AppState,
    client: &mut deadpool_postgres::Object,
    actor: &Actor,
    id: Uuid,
    new_lock: NewLockForm,
    period_error: Option<String>,
) -> Result<HomeDetail, WebError> {
    let ctx = own_property(state, client, actor, id, manage_locks).await?;
    let locks = store::locks(&*client, actor.tenant, ctx.property.id).await?;
    let (waiting, closed): (Vec<_>, Vec<_>) =
        registrations::of_property(&*client, actor.tenant, ctx.property.id, state.clock.now())
            .await?
            .into_iter()
            .partition(|r| r.state == "pending");
    let versions = plan_history::versions(&*client, actor.tenant, ctx.property.id).await?;
    let now = state.clock.now();
    let health = crate::health::of_property(&*client, actor.tenant, ctx.property.id, now).await?;
    let offline_minutes =
        crate::health::property_offline_minutes(&*client, actor.tenant, ctx.property.id).await?;
    let alarms = crate::alarms::of_property(&*client, actor.tenant, ctx.property.id, 20)
        .await
        .map_err(|e| WebError::Api(e.into()))?
        .into_iter()
        .map(|a| AlarmRow {
            received: when(Some(a.view.received_at)),
            kind: a.view.kind.words(),
            source: match (a.view.source.as_str(), a.view.confirmed) {
                ("lock", _) => "your lock's detector input".to_owned(),
                (_, true) => "your monitoring centre (confirmed)".to_owned(),
                (_, false) => "your monitoring centre".to_owned(),
            },
            what: match (a.incident, a.granted, a.view.duplicate) {
                (Some(cad), _, true) => format!("a repeat, recorded with incident {cad}"),
                (Some(cad), true, _) => format!("incident {cad}; entry granted by your rule"),
                (Some(cad), false, _) => format!("incident {cad} for dispatch"),
                (None, _, _) => "recorded".to_owned(),
            },
        })
        .collect();
    Ok(HomeDetail {
        health: health.into_iter().map(HealthRow::from).collect(),
        offline_minutes,
        period_error,
        alarms,
        chrome: Chrome::of(&*client, actor).await?,
        locks: locks
            .into_iter()
            .map(LockRow::from)
            .chain(waiting.into_iter().map(LockRow::waiting))
            .collect(),
        closed: closed
            .into_iter()
            // A registration that paired is the lock in the table above.
            .filter(|r| r.state != "paired")
            .map(|r| ClosedRow {
                lock_id: r.lock_id,
                closed: when(r.closed_at.or(Some(r.expires_at))),
                words: crate::pairing::closed_words(&r.state, &r.name),
            })
            .collect(),
        plan: ctx.plan.as_ref().map(|p| PlanFacts {
            version: p.version,
            agencies: agency_rows(&p.agencies),
            max_grant_minutes: p.max_grant_minutes,
            has_notes: p.notes.is_some(),
        }),
        versions: versions
            .into_iter()
            .map(|v| VersionRow {
                version: v.version,
                created: when(Some(v.created_at)),
                author: v.author,
            })
            .collect(),
        property: ctx.property,
        new_lock,
    })
}

async fn show(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let mut client = connection(&state).await?;
    page::ok(
        &detail_page(
            &state,
            &mut client,
            &actor,
            *id,
            NewLockForm::default(),
            None,
        )
        .await?,
    )
}

#[derive(Deserialize)]
struct NewLock {
    lock_id: String,
    name: String,
    pairing_code: String,
}

/// `POST /api/v1/properties/{id}/locks`'s steps; bad input shows the form again with what was typed
/// (except the pairing code, a secret).
async fn add_lock(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<NewLock>,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let mut client = connection(&state).await?;
    let ctx = own_property(&state, &mut client, &actor, *id, manage_locks).await?;
    let name = form.name.trim();
    let checked = Uuid::parse_str(form.lock_id.trim())
        .map_err(|_| {
            "The lock id is the one `firstkey-agent init` printed, like 0c9f…-….".to_owned()
        })
        .and_then(|lock_id| {
            if name.is_empty() || name.len() > 100 {
                Err("The name must have 1 to 100 characters.".to_owned())
            } else {
                Ok(lock_id)
            }
        })
        .and_then(|lock_id| {
            crate::pairing::normalise(&form.pairing_code)
                .map(|code| (lock_id, code))
                .map_err(|e| e.to_string())
        });
    let (lock_id, code) = match checked {
        Ok(ok) => ok,
        Err(error) => {
            let again = NewLockForm {
                lock_id: form.lock_id.clone(),
                name: form.name.clone(),
                error: Some(error),
            };
            let page = detail_page(&state, &mut client, &actor, *id, again, None).await?;
            return page::render(StatusCode::BAD_REQUEST, &page);
        }
    };
    let now = state.clock.now();
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let registered = crate::pairing::register(
        &tx,
        actor.tenant,
        ctx.property.id,
        actor.user_id,
        lock_id,
        name,
        &code,
        now,
    )
    .await;
    match registered {
        Ok(_) => {}
        Err(RegisterError::Refused(refusal)) => {
            tx.rollback().await.map_err(StoreError::from)?;
            let status = match refusal {
                registrations::Refusal::AccountFull { .. } => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::CONFLICT,
            };
            let again = NewLockForm {
                lock_id: form.lock_id.clone(),
                name: form.name.clone(),
                error: Some(format!("Not added: {}.", refusal.message())),
            };
            let page = detail_page(&state, &mut client, &actor, *id, again, None).await?;
            return page::render(status, &page);
        }
        Err(RegisterError::Store(e)) => return Err(e.into()),
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(page::see_other(&format!(
        "/homes/{}#locks",
        ctx.property.id
    )))
}

/// `DELETE /api/v1/properties/{id}/lock-registrations/{registration}`'s steps.
async fn cancel_registration(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let (id, registration) = path.into_inner();
    let mut client = connection(&state).await?;
    let ctx = own_property(&state, &mut client, &actor, id, manage_locks).await?;
    let now = state.clock.now();
    let tx = client.transaction().await.map_err(StoreError::from)?;
    crate::pairing::cancel(
        &tx,
        actor.tenant,
        ctx.property.id,
        actor.user_id,
        registration,
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(page::see_other(&format!(
        "/homes/{}#locks",
        ctx.property.id
    )))
}

#[derive(Deserialize)]
struct PeriodForm {
    /// Empty: the whole home's period; otherwise one lock's.
    #[serde(default)]
    lock: String,
    /// Minutes; empty for a lock goes back to the home's period.
    #[serde(default)]
    minutes: String,
}

/// `PUT /api/v1/properties/{id}/offline-period` (no `lock`) or
/// `PUT /api/v1/properties/{id}/locks/{lock}/offline-period`'s steps.
async fn set_offline_period(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<PeriodForm>,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let mut client = connection(&state).await?;
    let ctx = own_property(&state, &mut client, &actor, *id, manage_locks).await?;
    let lock = match form.lock.trim() {
        "" => Ok(None),
        l => Uuid::parse_str(l)
            .map(Some)
            .map_err(|_| "Choose one of the locks.".to_owned()),
    };
    let minutes = match form.minutes.trim() {
        "" => Ok(None),
        m => m
            .parse::<u32>()
            .map_err(|_| "The period is a whole number of minutes.".to_owned())
            .and_then(|m| {
                crate::health::check_offline_minutes(m)
                    .map(Some)
                    .map_err(|_| "The period is 10 to 43200 minutes (30 days).".to_owned())
            }),
    };
    let checked = lock.and_then(|l| {
        minutes.and_then(|m| match (l, m) {
            (None, None) => Err("Give the home's period in minutes.".to_owned()),
            ok => Ok(ok),
        })
    });
    let (lock, minutes) = match checked {
        Ok(ok) => ok,
        Err(words) => {
            let page = detail_page(
                &state,
                &mut client,
                &actor,
                *id,
                NewLockForm::default(),
                Some(words),
            )
            .await?;
            return page::render(StatusCode::BAD_REQUEST, &page);
        }
    };
    let now = state.clock.now();
    let tx = client.transaction().await.map_err(StoreError::from)?;
    crate::health::set_offline_period(
        &tx,
        actor.tenant,
        actor.user_id,
        ctx.property.id,
        lock,
        minutes,
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(page::see_other(&format!(
        "/homes/{}#health",
        ctx.property.id
    )))
}

// ---------------------------------------------------------------------------------------------
// Alarm rules and monitoring accounts.

/// One kind's rule as the form shows and takes it.
struct RuleRow {
    kind: &'static str,
    words: &'static str,
    /// `none` (no rule), `nothing`, `incident`, `incident_and_grant`.
    action: String,
    agency: String,
    minutes: String,
}

#[derive(Template)]
#[template(path = "home_alarms.html")]
struct AlarmRulesPage {
    chrome: Chrome,
    property: Property,
    rules: Vec<RuleRow>,
    /// Agencies to choose from: (id, "name (kind)").
    agencies: Vec<(Uuid, String)>,
    accounts: Vec<crate::alarms::MonitoringLink>,
    account_form: (String, String),
    error: Option<String>,
    step_up: Option<&'static str>,
}

fn rule_rows(
    rules: &[crate::alarms::AlarmRule],
    typed: Option<&std::collections::HashMap<String, String>>,
) -> Vec<RuleRow> {
    crate::alarms::AlarmKind::ALL
        .into_iter()
        .map(|kind| {
            let field = |name: &str| {
                typed.map(|t| {
                    t.get(&format!("{}_{name}", kind.as_str()))
                        .cloned()
                        .unwrap_or_default()
                })
            };
            let stored = rules.iter().find(|r| r.kind == kind);
            RuleRow {
                kind: kind.as_str(),
                words: kind.words(),
                action: field("action").unwrap_or_else(|| {
                    stored
                        .map_or("none", |r| match r.action {
                            crate::alarms::RuleAction::Nothing => "nothing",
                            crate::alarms::RuleAction::Incident => "incident",
                            crate::alarms::RuleAction::IncidentAndGrant => "incident_and_grant",
                        })
                        .to_owned()
                }),
                agency: field("agency").unwrap_or_else(|| {
                    stored
                        .and_then(|r| r.agency)
                        .map(|a| a.to_string())
                        .unwrap_or_default()
                }),
                minutes: field("minutes").unwrap_or_else(|| {
                    stored
                        .and_then(|r| r.minutes)
                        .map(|m| m.to_string())
                        .unwrap_or_default()
                }),
            }
        })
        .collect()
}

/// The rules as typed, checked as `PUT /api/v1/properties/{id}/alarm-rules` checks them.
fn typed_rules(
    form: &std::collections::HashMap<String, String>,
) -> Result<crate::alarms::AlarmRules, String> {
    let mut rules = Vec::new();
    for kind in crate::alarms::AlarmKind::ALL {
        let get = |name: &str| {
            form.get(&format!("{}_{name}", kind.as_str()))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let action = match get("action").as_str() {
            "" | "none" => continue,
            "nothing" => crate::alarms::RuleAction::Nothing,
            "incident" => crate::alarms::RuleAction::Incident,
            "incident_and_grant" => crate::alarms::RuleAction::IncidentAndGrant,
            _ => return Err(format!("{}: choose what it does.", kind.words())),
        };
        let agency = match (action, get("agency").as_str()) {
            (crate::alarms::RuleAction::Nothing, _) => None,
            (_, "") => return Err(format!("{}: choose the agency.", kind.words())),
            (_, a) => Some(
                Uuid::parse_str(a).map_err(|_| format!("{}: choose the agency.", kind.words()))?,
            ),
        };
        let minutes = match action {
            crate::alarms::RuleAction::IncidentAndGrant => Some(
                get("minutes")
                    .parse::<u32>()
                    .map_err(|_| format!("{}: minutes of entry, 1 to 1440.", kind.words()))?,
            ),
            _ => None,
        };
        rules.push(crate::alarms::AlarmRule {
            kind,
            action,
            agency,
            minutes,
        });
    }
    let rules = crate::alarms::AlarmRules { rules };
    rules.validate().map_err(|e| e.to_string())?;
    Ok(rules)
}

fn blank() -> (String, String) {
    (String::new(), String::new())
}

#[allow(clippy::too_many_arguments)]
async fn alarms_page(
    client: &deadpool_postgres::Object,
    actor: &Actor,
    property: Property,
    typed: Option<&std::collections::HashMap<String, String>>,
    account_form: (String, String),
    error: Option<String>,
    step_up: Option<&'static str>,
) -> Result<AlarmRulesPage, WebError> {
    let api = |e: crate::emergency::EmergencyError| WebError::Api(e.into());
    let rules = crate::alarms::rules(client, actor.tenant, property.id)
        .await
        .map_err(api)?;
    let agencies = crate::store::tenancy::agencies(client, actor.tenant)
        .await?
        .into_iter()
        .filter(|a| a.kind != crate::domain::AgencyKind::Police)
        .map(|a| (a.id, format!("{} ({})", a.name, a.kind.as_str())))
        .collect();
    Ok(AlarmRulesPage {
        chrome: Chrome::of(client, actor).await?,
        rules: rule_rows(&rules, typed),
        agencies,
        accounts: crate::alarms::accounts(client, actor.tenant, property.id)
            .await
            .map_err(api)?,
        property,
        account_form,
        error,
        step_up,
    })
}

async fn alarm_rules_page(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let mut client = connection(&state).await?;
    // Reading the rules needs what writing them needs, without the step-up (as the JSON GET).
    let ctx = own_property(&state, &mut client, &actor, *id, |p, prop, _| {
        edit(p, prop, true)
    })
    .await?;
    let page = alarms_page(
        &client,
        &actor,
        ctx.property,
        None,
        (String::new(), String::new()),
        None,
        None,
    )
    .await?;
    page::ok(&page)
}

/// `PUT /api/v1/properties/{id}/alarm-rules`'s steps (the plan is written once more, recording the
/// rules); without a fresh step-up the form comes back as typed with the inline confirmation.
async fn save_alarm_rules(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<std::collections::HashMap<String, String>>,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let form = form.into_inner();
    let mut client = connection(&state).await?;
    let rules = typed_rules(&form);
    let ctx = match own_property(&state, &mut client, &actor, *id, edit).await {
        Ok(ctx) => Ok(ctx),
        Err(WebError::Api(ApiError::StepUpRequired)) => Err(()),
        Err(e) => return Err(e),
    };
    let (ctx, rules) = match (ctx, rules) {
        (Ok(ctx), Ok(rules)) => (ctx, rules),
        (Ok(ctx), Err(words)) => {
            let page = alarms_page(
                &client,
                &actor,
                ctx.property,
                Some(&form),
                blank(),
                Some(words),
                None,
            )
            .await?;
            return page::render(StatusCode::BAD_REQUEST, &page);
        }
        (Err(()), _) => {
            let property = store::property(&client, actor.tenant, *id).await?;
            if property.owner_id != actor.user_id {
                return Err(WebError::not_found());
            }
            let page = alarms_page(
                &client,
                &actor,
                property,
                Some(&form),
                blank(),
                None,
                Some("rules-form"),
            )
            .await?;
            return page::render(StatusCode::UNAUTHORIZED, &page);
        }
    };
    let now = state.clock.now();
    let tx = client.transaction().await.map_err(StoreError::from)?;
    match crate::alarms::set_rules(
        &tx,
        &state.kek,
        actor.tenant,
        actor.user_id,
        ctx.property.id,
        &rules,
        now,
    )
    .await
    {
        Ok(_) => {}
        Err(crate::emergency::EmergencyError::Invalid(words)) => {
            drop(tx);
            let page = alarms_page(
                &client,
                &actor,
                ctx.property,
                Some(&form),
                blank(),
                Some(words),
                None,
            )
            .await?;
            return page::render(StatusCode::BAD_REQUEST, &page);
        }
        Err(e) => return Err(WebError::Api(e.into())),
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(page::see_other(&format!(
        "/homes/{}/alarms?saved=1#rules",
        ctx.property.id
    )))
}

#[derive(Deserialize)]
struct AccountForm {
    key_id: String,
    account: String,
}

/// `POST /api/v1/properties/{id}/monitoring-accounts`'s steps.
async fn link_monitoring_account(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<AccountForm>,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let form = form.into_inner();
    let mut client = connection(&state).await?;
    let typed = (form.key_id.clone(), form.account.clone());
    let ctx = match own_property(&state, &mut client, &actor, *id, edit).await {
        Ok(ctx) => ctx,
        Err(WebError::Api(ApiError::StepUpRequired)) => {
            let property = store::property(&client, actor.tenant, *id).await?;
            if property.owner_id != actor.user_id {
                return Err(WebError::not_found());
            }
            let page = alarms_page(
                &client,
                &actor,
                property,
                None,
                typed,
                None,
                Some("account-form"),
            )
            .await?;
            return page::render(StatusCode::UNAUTHORIZED, &page);
        }
        Err(e) => return Err(e),
    };
    let now = state.clock.now();
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let input = crate::alarms::NewMonitoringLink {
        key_id: form.key_id.trim().to_owned(),
        account: form.account,
    };
    match crate::alarms::link_account(
        &tx,
        actor.tenant,
        actor.user_id,
        ctx.property.id,
        &input,
        now,
    )
    .await
    {
        Ok(_) => {}
        Err(
            crate::emergency::EmergencyError::Invalid(words)
            | crate::emergency::EmergencyError::Conflict(words),
        ) => {
            drop(tx);
            let page = alarms_page(
                &client,
                &actor,
                ctx.property,
                None,
                typed,
                Some(words),
                None,
            )
            .await?;
            return page::render(StatusCode::BAD_REQUEST, &page);
        }
        Err(e) => return Err(WebError::Api(e.into())),
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(page::see_other(&format!(
        "/homes/{}/alarms#accounts",
        ctx.property.id
    )))
}

// ---------------------------------------------------------------------------------------------
// The access-plan editor.

/// The editor's fields as typed: strings and checkboxes, so a refused save shows exactly what the
/// homeowner entered.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct PlanForm {
    fire_allowed: Option<String>,
    fire_types: String,
    fire_second: Option<String>,
    ems_allowed: Option<String>,
    ems_types: String,
    ems_second: Option<String>,
    police_allowed: Option<String>,
    police_types: String,
    police_second: Option<String>,
    max_grant_minutes: String,
    retention_days: String,
    pets: String,
    hazards: String,
    medical_equipment: String,
    utilities: String,
    free_text: String,
    contact1_name: String,
    contact1_email: String,
    contact1_phone: String,
    contact2_name: String,
    contact2_email: String,
    contact2_phone: String,
    notify_homeowner: Option<String>,
    notify_contacts: Option<String>,
    /// Ask me before any entry goes live.
    consent_ask: Option<String>,
    /// Seconds to answer.
    consent_seconds: String,
    /// `proceed` or `second_dispatcher`.
    consent_fallback: String,
    key_location: String,
    key_box_code: String,
    holder1_name: String,
    holder1_phone: String,
    holder2_name: String,
    holder2_phone: String,
}

fn checked(b: bool) -> Option<String> {
    b.then(|| "on".to_owned())
}

fn optional(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

fn types(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

impl PlanForm {
    /// A new home's starting point: nobody may enter until the homeowner says so.
    fn fresh() -> Self {
        Self {
            max_grant_minutes: "60".to_owned(),
            retention_days: "365".to_owned(),
            notify_homeowner: checked(true),
            consent_seconds: crate::plans::DEFAULT_CONSENT_SECONDS.to_string(),
            consent_fallback: "proceed".to_owned(),
            ..Self::default()
        }
    }

    fn from_plan(plan: &PlanInput) -> Self {
        let contact = |i: usize| plan.contacts.get(i).cloned();
        let c1 = contact(0);
        let c2 = contact(1);
        let a = &plan.agencies;
        let key = &plan.physical_key;
        let holder = |i: usize| key.holders.get(i);
        Self {
            fire_allowed: checked(a.fire.allowed),
            fire_types: a.fire.incident_types.join(", "),
            fire_second: checked(a.fire.second_approval),
            ems_allowed: checked(a.ems.allowed),
            ems_types: a.ems.incident_types.join(", "),
            ems_second: checked(a.ems.second_approval),
            police_allowed: checked(a.police.allowed),
            police_types: a.police.incident_types.join(", "),
            police_second: checked(a.police.second_approval),
            max_grant_minutes: plan.max_grant_minutes.to_string(),
            retention_days: plan.retention_days.to_string(),
            pets: plan.notes.pets.clone().unwrap_or_default(),
            hazards: plan.notes.hazards.clone().unwrap_or_default(),
            medical_equipment: plan.notes.medical_equipment.clone().unwrap_or_default(),
            utilities: plan.notes.utilities.clone().unwrap_or_default(),
            free_text: plan.notes.free_text.clone().unwrap_or_default(),
            contact1_name: c1.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
            contact1_email: c1.as_ref().map(|c| c.email.clone()).unwrap_or_default(),
            contact1_phone: c1.and_then(|c| c.phone).unwrap_or_default(),
            contact2_name: c2.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
            contact2_email: c2.as_ref().map(|c| c.email.clone()).unwrap_or_default(),
            contact2_phone: c2.and_then(|c| c.phone).unwrap_or_default(),
            notify_homeowner: checked(plan.notifications.homeowner),
            notify_contacts: checked(plan.notifications.contacts),
            consent_ask: checked(plan.live_consent.is_some()),
            consent_seconds: plan
                .live_consent
                .map_or(crate::plans::DEFAULT_CONSENT_SECONDS, |c| c.timeout_seconds)
                .to_string(),
            consent_fallback: plan
                .live_consent
                .map_or("proceed", |c| c.fallback.as_str())
                .to_owned(),
            key_location: key.location.clone().unwrap_or_default(),
            key_box_code: key.key_box_code.clone().unwrap_or_default(),
            holder1_name: holder(0).map(|h| h.name.clone()).unwrap_or_default(),
            holder1_phone: holder(0).and_then(|h| h.phone.clone()).unwrap_or_default(),
            holder2_name: holder(1).map(|h| h.name.clone()).unwrap_or_default(),
            holder2_phone: holder(1).and_then(|h| h.phone.clone()).unwrap_or_default(),
        }
    }

    /// The typed plan, checked as `PUT …/plan` checks it; the error names the field in words.
    fn to_plan(&self) -> Result<PlanInput, String> {
        let number = |s: &str, what: &str| {
            s.trim()
                .parse::<i32>()
                .map_err(|_| format!("{what}: a whole number, please."))
        };
        let mut contacts = Vec::new();
        for (name, email, phone) in [
            (
                &self.contact1_name,
                &self.contact1_email,
                &self.contact1_phone,
            ),
            (
                &self.contact2_name,
                &self.contact2_email,
                &self.contact2_phone,
            ),
        ] {
            if name.trim().is_empty() && email.trim().is_empty() && phone.trim().is_empty() {
                continue;
            }
            contacts.push(Contact {
                name: name.trim().to_owned(),
                email: email.trim().to_owned(),
                phone: optional(phone),
            });
        }
        let plan = PlanInput {
            agencies: AgencyRules {
                fire: AgencyRule {
                    allowed: self.fire_allowed.is_some(),
                    incident_types: types(&self.fire_types),
                    second_approval: self.fire_second.is_some(),
                },
                ems: AgencyRule {
                    allowed: self.ems_allowed.is_some(),
                    incident_types: types(&self.ems_types),
                    second_approval: self.ems_second.is_some(),
                },
                police: AgencyRule {
                    allowed: self.police_allowed.is_some(),
                    incident_types: types(&self.police_types),
                    second_approval: self.police_second.is_some(),
                },
            },
            max_grant_minutes: number(&self.max_grant_minutes, "Longest entry")?,
            notes: ResponderNotes {
                pets: optional(&self.pets),
                hazards: optional(&self.hazards),
                medical_equipment: optional(&self.medical_equipment),
                utilities: optional(&self.utilities),
                free_text: optional(&self.free_text),
            },
            contacts,
            notifications: NotificationChoices {
                homeowner: self.notify_homeowner.is_some(),
                contacts: self.notify_contacts.is_some(),
            },
            retention_days: number(&self.retention_days, "Keep records for")?,
            live_consent: match self.consent_ask {
                None => None,
                Some(_) => Some(LiveConsent {
                    timeout_seconds: number(&self.consent_seconds, "Time to answer")?,
                    fallback: ConsentFallback::parse(&self.consent_fallback).ok_or_else(|| {
                        "If I do not answer: choose one of the two options.".to_owned()
                    })?,
                }),
            },
            physical_key: PhysicalKey {
                location: optional(&self.key_location),
                holders: [
                    (&self.holder1_name, &self.holder1_phone),
                    (&self.holder2_name, &self.holder2_phone),
                ]
                .into_iter()
                .filter(|(n, p)| !n.trim().is_empty() || !p.trim().is_empty())
                .map(|(n, p)| KeyHolder {
                    name: n.trim().to_owned(),
                    phone: optional(p),
                })
                .collect(),
                key_box_code: optional(&self.key_box_code),
            },
        };
        plan.validate().map_err(|e| e.to_string())?;
        Ok(plan)
    }
}

#[derive(Template)]
#[template(path = "plan_edit.html")]
struct PlanEdit {
    chrome: Chrome,
    property: Property,
    version: Option<i32>,
    form: PlanForm,
    error: Option<String>,
    step_up: bool,
}

fn open_notes(state: &AppState, plan: &StoredPlan) -> Result<ResponderNotes, WebError> {
    match &plan.notes {
        None => Ok(ResponderNotes::default()),
        Some(sealed) => {
            let bytes = crypto::open(&state.kek, plan.id.as_bytes(), sealed)
                .map_err(|e| ApiError::Internal(e.into()))?;
            Ok(serde_json::from_slice(&bytes).map_err(|e| ApiError::Internal(e.into()))?)
        }
    }
}

/// A stored version as the homeowner wrote it (notes opened).
fn plan_input(state: &AppState, plan: &StoredPlan) -> Result<PlanInput, WebError> {
    Ok(PlanInput {
        agencies: plan.agencies.clone(),
        max_grant_minutes: plan.max_grant_minutes,
        notes: open_notes(state, plan)?,
        contacts: serde_json::from_value(plan.contacts.clone())
            .map_err(|e| ApiError::Internal(e.into()))?,
        notifications: plan.notifications.clone(),
        retention_days: plan.retention_days,
        live_consent: plan.live_consent,
        physical_key: PhysicalKey {
            key_box_code: store::open_key_box(&state.kek, plan)?,
            ..plan.physical_key.clone()
        },
    })
}

async fn edit_plan(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let mut client = connection(&state).await?;
    let ctx = own_property(&state, &mut client, &actor, *id, read_own_plan).await?;
    let form = match &ctx.plan {
        Some(plan) => PlanForm::from_plan(&plan_input(&state, plan)?),
        None => PlanForm::fresh(),
    };
    page::ok(&PlanEdit {
        chrome: Chrome::of(&client, &actor).await?,
        version: ctx.plan.as_ref().map(|p| p.version),
        property: ctx.property,
        form,
        error: None,
        step_up: !actor.stepped_up(state.clock.now()),
    })
}

/// `PUT /api/v1/properties/{id}/plan`'s steps. A save without a fresh step-up shows the form again,
/// as typed, with the inline confirmation that then submits it once more.
async fn save_plan(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<PlanForm>,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let form = form.into_inner();
    let mut client = connection(&state).await?;
    let plan = form.to_plan();
    let ctx = match own_property(&state, &mut client, &actor, *id, edit).await {
        Ok(ctx) => Ok(ctx),
        Err(WebError::Api(ApiError::StepUpRequired)) => Err(()),
        Err(e) => return Err(e),
    };
    let (ctx, plan) = match (ctx, plan) {
        (Ok(ctx), Ok(plan)) => (ctx, plan),
        (ctx, plan) => {
            // Show the form again as typed: with the input error, or asking to confirm first.
            let property = match ctx {
                Ok(ctx) => ctx.property,
                Err(_) => store::property(&client, actor.tenant, *id).await?,
            };
            let step_up = !actor.stepped_up(state.clock.now());
            let current = store::current_plan(&client, actor.tenant, property.id)
                .await
                .ok()
                .map(|p| p.version);
            return page::render(
                if plan.is_err() {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::UNAUTHORIZED
                },
                &PlanEdit {
                    chrome: Chrome::of(&client, &actor).await?,
                    property,
                    version: current,
                    form,
                    error: plan.err(),
                    step_up,
                },
            );
        }
    };
    let now = state.clock.now();
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let version =
        crate::http::properties::save_plan(&state, &tx, &actor, ctx.property.id, &plan, now)
            .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(page::see_other(&format!(
        "/homes/{}?saved={version}#plan",
        ctx.property.id
    )))
}

// ---------------------------------------------------------------------------------------------
// Two versions side by side.

#[derive(Deserialize)]
struct CompareQuery {
    a: i32,
    b: i32,
}

struct DiffRow {
    label: &'static str,
    a: String,
    b: String,
    changed: bool,
}

#[derive(Template)]
#[template(path = "plan_compare.html")]
struct Compare {
    chrome: Chrome,
    property: Property,
    a: i32,
    b: i32,
    rows: Vec<DiffRow>,
}

/// A plan as labelled lines, the same lines for every version so two line up.
fn lines(plan: &PlanInput) -> Vec<(&'static str, String)> {
    let text = |o: &Option<String>| o.clone().unwrap_or_else(|| "—".to_owned());
    let yes = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let contact = |i: usize| {
        plan.contacts.get(i).map_or_else(
            || "—".to_owned(),
            |c| match &c.phone {
                Some(p) => format!("{} <{}>, {p}", c.name, c.email),
                None => format!("{} <{}>", c.name, c.email),
            },
        )
    };
    let mut out = agency_rows(&plan.agencies);
    out.extend([
        (
            "Longest entry",
            format!("{} minutes", plan.max_grant_minutes),
        ),
        ("Pets", text(&plan.notes.pets)),
        ("Hazards", text(&plan.notes.hazards)),
        ("Medical equipment", text(&plan.notes.medical_equipment)),
        ("Shut-offs", text(&plan.notes.utilities)),
        ("Other notes", text(&plan.notes.free_text)),
        ("Contact 1", contact(0)),
        ("Contact 2", contact(1)),
        ("Tell me", yes(plan.notifications.homeowner)),
        ("Tell my contacts", yes(plan.notifications.contacts)),
        ("Keep records for", format!("{} days", plan.retention_days)),
        ("Key or key box at", text(&plan.physical_key.location)),
        ("Key box code", text(&plan.physical_key.key_box_code)),
        (
            "Key holders",
            if plan.physical_key.holders.is_empty() {
                "—".to_owned()
            } else {
                plan.physical_key
                    .holders
                    .iter()
                    .map(|h| match &h.phone {
                        Some(p) => format!("{} ({p})", h.name),
                        None => h.name.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        ),
    ]);
    out
}

/// The alarm rules a version recorded, in words ("smoke: incident and entry for 30 minutes; …").
fn alarm_rules_words(rules: Option<&serde_json::Value>) -> String {
    let Some(rules) = rules.and_then(serde_json::Value::as_array) else {
        return "not recorded with this version".to_owned();
    };
    if rules.is_empty() {
        return "none (an alarm is only recorded)".to_owned();
    }
    rules
        .iter()
        .map(|r| {
            let kind = r["kind"].as_str().unwrap_or("?");
            match (r["action"].as_str(), r["minutes"].as_i64()) {
                (Some("incident_and_grant"), Some(m)) => {
                    format!("{kind}: incident and entry for {m} minutes")
                }
                (Some("incident"), _) => format!("{kind}: incident for dispatch"),
                _ => format!("{kind}: nothing"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn compare(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    query: web::Query<CompareQuery>,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let mut client = connection(&state).await?;
    let ctx = own_property(&state, &mut client, &actor, *id, read_own_plan).await?;
    let (a, b) = (query.a.min(query.b), query.a.max(query.b));
    let old = plan_history::version(&client, actor.tenant, ctx.property.id, a).await?;
    let new = plan_history::version(&client, actor.tenant, ctx.property.id, b).await?;
    let mut old_lines = lines(&plan_input(&state, &old)?);
    let mut new_lines = lines(&plan_input(&state, &new)?);
    old_lines.push(("Alarm rules", alarm_rules_words(old.alarm_rules.as_ref())));
    new_lines.push(("Alarm rules", alarm_rules_words(new.alarm_rules.as_ref())));
    let rows = old_lines
        .into_iter()
        .zip(new_lines)
        .map(|((label, a), (_, b))| DiffRow {
            label,
            changed: a != b,
            a,
            b,
        })
        .collect();
    page::ok(&Compare {
        chrome: Chrome::of(&client, &actor).await?,
        property: ctx.property,
        a,
        b,
        rows,
    })
}

// ---------------------------------------------------------------------------------------------
// The printable plan, for a family member or an emergency contact: the plan in force with its
// notes, on one sheet (the print rules of `static/portal.css`). A PDF is the browser's "Save as
// PDF" of this page; the server makes none (a PDF crate such as genpdf would also need a vendored
// font, and was not added).

#[derive(Template)]
#[template(path = "plan_print.html")]
struct PlanPrint {
    chrome: Chrome,
    property: Property,
    version: i32,
    written: String,
    printed: String,
    agencies: Vec<(&'static str, String)>,
    max_grant_minutes: i32,
    notes: Vec<(&'static str, String)>,
    contacts: Vec<Contact>,
    locks: Vec<String>,
    retention_days: i32,
}

async fn print_plan(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let mut client = connection(&state).await?;
    let ctx = own_property(&state, &mut client, &actor, *id, read_own_plan).await?;
    let Some(stored) = &ctx.plan else {
        return Err(WebError::not_found());
    };
    let plan = plan_input(&state, stored)?;
    let text = |o: &Option<String>| o.clone().unwrap_or_else(|| "—".to_owned());
    // Paired locks, then those still waiting to pair (a responder finds no lock for those yet).
    let waiting =
        registrations::of_property(&client, actor.tenant, ctx.property.id, state.clock.now())
            .await?
            .into_iter()
            .filter(|r| r.state == "pending")
            .map(|r| format!("{} (waiting to pair)", r.name));
    let locks = store::locks(&client, actor.tenant, ctx.property.id)
        .await?
        .into_iter()
        .filter(|l| l.pairing_state != "retired")
        .map(|l| l.name)
        .chain(waiting)
        .collect();
    page::ok(&PlanPrint {
        chrome: Chrome::of(&client, &actor).await?,
        version: stored.version,
        written: when(
            plan_history::versions(&client, actor.tenant, ctx.property.id)
                .await?
                .into_iter()
                .find(|v| v.version == stored.version)
                .map(|v| v.created_at),
        ),
        printed: when(Some(state.clock.now())),
        agencies: agency_rows(&plan.agencies),
        max_grant_minutes: plan.max_grant_minutes,
        notes: vec![
            ("Pets", text(&plan.notes.pets)),
            ("Hazards", text(&plan.notes.hazards)),
            ("Medical equipment", text(&plan.notes.medical_equipment)),
            ("Shut-offs", text(&plan.notes.utilities)),
            ("Anything else", text(&plan.notes.free_text)),
            ("Key or key box at", text(&plan.physical_key.location)),
            (
                "Key holders",
                plan.physical_key
                    .holders
                    .iter()
                    .map(|h| match &h.phone {
                        Some(p) => format!("{} ({p})", h.name),
                        None => h.name.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        ],
        contacts: plan.contacts,
        locks,
        retention_days: plan.retention_days,
        property: ctx.property,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_editor_round_trips_a_plan() {
        let mut form = PlanForm::fresh();
        form.fire_allowed = checked(true);
        form.fire_types = "fire, medical".to_owned();
        form.ems_allowed = checked(true);
        form.ems_second = checked(true);
        form.pets = "  a dog  ".to_owned();
        form.contact1_name = "Sam".to_owned();
        form.contact1_email = "sam@example.org".to_owned();
        let plan = form.to_plan().unwrap();
        assert_eq!(plan.agencies.fire.incident_types, ["fire", "medical"]);
        assert!(plan.agencies.ems.second_approval && !plan.agencies.police.allowed);
        assert_eq!(plan.notes.pets.as_deref(), Some("a dog"));
        assert_eq!(plan.contacts.len(), 1);
        assert_eq!(PlanForm::from_plan(&plan).to_plan().unwrap(), plan);
    }

    #[test]
    fn the_editor_names_what_is_wrong() {
        let mut form = PlanForm::fresh();
        form.max_grant_minutes = "ten".to_owned();
        assert!(form.to_plan().unwrap_err().contains("Longest entry"));
        form.max_grant_minutes = "5000".to_owned();
        assert!(form.to_plan().unwrap_err().contains("max_grant_minutes"));
        form.max_grant_minutes = "30".to_owned();
        form.fire_types = "Fire!".to_owned();
        assert!(form.to_plan().unwrap_err().contains("incident_types"));
    }
}

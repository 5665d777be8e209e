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
    AgencyRule, AgencyRules, Contact, NotificationChoices, PlanInput, ResponderNotes,
};
use crate::policy::{AuthzRequest, PrincipalAttrs, PropertyAttrs, RevealContext, StepUpContext};
use crate::store::properties::{self as store, Lock, Property, StoredPlan};
use crate::store::{StoreError, plan_history};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/homes", web::get().to(list))
        .route("/homes", web::post().to(create))
        .route("/homes/{id}", web::get().to(show))
        .route("/homes/{id}/locks", web::post().to(add_lock))
        .route("/homes/{id}/plan", web::get().to(edit_plan))
        .route("/homes/{id}/plan", web::post().to(save_plan))
        .route("/homes/{id}/plan/compare", web::get().to(compare))
        .route("/homes/{id}/plan/print", web::get().to(print_plan));
}

/// A time as the pages show it (UTC, with the zone named).
fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "never".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
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

/// A lock as the page shows it.
struct LockRow {
    id: Uuid,
    name: String,
    paired: bool,
    state: &'static str,
    last_seen: String,
    battery: String,
}

impl From<Lock> for LockRow {
    fn from(l: Lock) -> Self {
        let state = match l.pairing_state.as_str() {
            "paired" => "paired",
            "unpaired" => "waiting for the lock",
            _ => "retired",
        };
        Self {
            id: l.id,
            paired: l.pairing_state == "paired",
            name: l.name,
            state,
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
    plan: Option<PlanFacts>,
    versions: Vec<VersionRow>,
    new_lock: NewLockForm,
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
) -> Result<HomeDetail, WebError> {
    let ctx = own_property(state, client, actor, id, manage_locks).await?;
    let locks = store::locks(&*client, actor.tenant, ctx.property.id).await?;
    let versions = plan_history::versions(&*client, actor.tenant, ctx.property.id).await?;
    Ok(HomeDetail {
        chrome: Chrome::of(&*client, actor).await?,
        locks: locks.into_iter().map(LockRow::from).collect(),
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
    page::ok(&detail_page(&state, &mut client, &actor, *id, NewLockForm::default()).await?)
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
            let page = detail_page(&state, &mut client, &actor, *id, again).await?;
            return page::render(StatusCode::BAD_REQUEST, &page);
        }
    };
    let code_hash = crate::pairing::code_hash(&code);
    let now = state.clock.now();
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let lock = store::register_lock(
        &tx,
        actor.tenant,
        ctx.property.id,
        lock_id,
        name,
        &code_hash,
        now,
    )
    .await?;
    audit::record(
        &tx,
        actor.tenant,
        &Event::new("lock.register", Outcome::Info)
            .actor(actor.user_id)
            .subject("lock", lock.id)
            .property(ctx.property.id),
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(page::see_other(&format!(
        "/homes/{}#locks",
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
            ..Self::default()
        }
    }

    fn from_plan(plan: &PlanInput) -> Self {
        let contact = |i: usize| plan.contacts.get(i).cloned();
        let c1 = contact(0);
        let c2 = contact(1);
        let a = &plan.agencies;
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
    ]);
    out
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
    let rows = lines(&plan_input(&state, &old)?)
        .into_iter()
        .zip(lines(&plan_input(&state, &new)?))
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
    let locks = store::locks(&client, actor.tenant, ctx.property.id)
        .await?
        .into_iter()
        .filter(|l| l.pairing_state != "retired")
        .map(|l| l.name)
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
            ("Shut-offs and key box", text(&plan.notes.utilities)),
            ("Anything else", text(&plan.notes.free_text)),
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

//! Municipal admin pages: agencies (add, rename, retire), units (add, rename, retire) and their
//! members, staff (invite into an agency and role, the accounts with their status,
//! disable/enable, pending invitations and revoking them), CAD credentials (create shows the secret
//! once, list, revoke), and trust: attestation CAs, issuer keys, trust-bundle versions with each
//! lock's bundle version, and the policy set in force.
//!
//! Each page and each form runs the steps of its JSON endpoint in `http::admin` (the same
//! [`crate::municipal`] calls, the same policy questions, the same audit entries). A change needs a
//! fresh step-up; without one every page offers the inline confirmation, and a form posted without
//! it comes back as the page asking for it.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::WebError;
use super::page::{self, Chrome, SignedIn};
use crate::auth::Actor;
use crate::auth::accounts::{self, NewInvitation};
use crate::auth::webauthn::{self, TrustedCa};
use crate::domain::Role;
use crate::emergency::cad;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::municipal::{
    self, AgencyView, CredentialView, Intent, NewAgency, NewUnit, PendingInvitation, PolicySetView,
    UnitView, UserFilter, UserView,
};
use crate::store::StoreError;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin", web::get().to(agencies_page))
        .route("/admin/agencies", web::post().to(add_agency))
        .route("/admin/time-zone", web::post().to(set_time_zone))
        .route("/admin/agencies/{id}/rename", web::post().to(rename_agency))
        .route("/admin/agencies/{id}/retire", web::post().to(retire_agency))
        .route("/admin/units", web::get().to(units_page))
        .route("/admin/units", web::post().to(add_unit))
        .route("/admin/units/{id}/members", web::post().to(add_member))
        .route("/admin/units/{id}/rename", web::post().to(rename_unit))
        .route("/admin/units/{id}/retire", web::post().to(retire_unit))
        .route(
            "/admin/units/{id}/members/{user}/remove",
            web::post().to(remove_member),
        )
        .route("/admin/people", web::get().to(people_page))
        .route("/admin/people/invite", web::post().to(invite))
        .route("/admin/users/{id}/disable", web::post().to(disable))
        .route("/admin/users/{id}/enable", web::post().to(enable))
        .route(
            "/admin/invitations/{id}/revoke",
            web::post().to(revoke_invitation),
        )
        .route("/admin/cad", web::get().to(cad_page))
        .route("/admin/cad", web::post().to(create_credential))
        .route("/admin/cad/{id}/revoke", web::post().to(revoke_credential))
        .route("/admin/trust", web::get().to(trust_page))
        .route("/admin/trust/cas", web::post().to(add_ca))
        .route(
            "/admin/trust/cas/{fingerprint}/remove",
            web::post().to(remove_ca),
        );
}

/// A time as the pages show it.
fn when(at: DateTime<Utc>) -> String {
    super::zone::when(at)
}

fn when_opt(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "never".to_owned(), when)
}

/// A connection, after the policy allowed `intent` for the viewer (as the JSON face asks).
async fn allowed(
    state: &AppState,
    actor: &Actor,
    intent: Intent,
) -> Result<deadpool_postgres::Object, WebError> {
    Ok(crate::http::admin::allowed(state, actor, intent).await?)
}

/// What every admin page shows besides its content: the section links and the step-up offer.
struct AdminChrome {
    /// The section this page is.
    section: &'static str,
    /// Changes need a fresh confirmation first.
    step_up: bool,
    /// What the last form did, from the redirect.
    done: Option<String>,
    /// Why the form just sent was refused (its safe detail), shown above the page.
    problem: Option<String>,
}

impl AdminChrome {
    fn new(state: &AppState, actor: &Actor, section: &'static str, done: &Done) -> Self {
        Self {
            section,
            step_up: !actor.stepped_up(state.clock.now()),
            done: done
                .done
                .as_deref()
                .map(done_words)
                .filter(|w| !w.is_empty())
                .map(str::to_owned),
            problem: done.problem.clone(),
        }
    }
}

/// The outcome a redirect names, in words (only these; anything else shows nothing).
fn done_words(code: &str) -> &'static str {
    match code {
        "agency-added" => "The agency was added.",
        "agency-renamed" => "The agency was renamed.",
        "agency-retired" => "The agency was retired.",
        "time-zone-set" => "The time zone was set; pages show times in it.",
        "unit-added" => "The unit was added.",
        "member-added" => "The responder is now in the unit.",
        "unit-renamed" => "The unit was renamed; its members moved with it.",
        "unit-retired" => "The unit was retired; its members are in no unit now.",
        "member-removed" => "The responder left the unit.",
        "invited" => "The invitation was mailed.",
        "disabled" => "The account was disabled; its sessions ended.",
        "enabled" => "The account was enabled.",
        "invitation-revoked" => "The invitation was revoked; its link no longer works.",
        "credential-revoked" => "The credential was revoked; CAD calls signed with it are refused.",
        "ca-added" => "The CA was added.",
        "ca-removed" => "The CA was removed.",
        "step-up" => {
            "Nothing was changed: confirm with your security key first (above), then try again."
        }
        _ => "",
    }
}

#[derive(Default, Deserialize)]
struct Done {
    done: Option<String>,
    /// Set only by a refused form (never read from the URL, so no link can put words here).
    #[serde(skip)]
    problem: Option<String>,
}

impl Done {
    fn problem(detail: String) -> web::Query<Self> {
        web::Query(Self {
            done: None,
            problem: Some(detail),
        })
    }
}

/// A change's outcome, as the page shows it: success and a step-up needed send the viewer back to
/// the page (which says what happened or offers the step-up); a refusal with a safe detail (bad
/// input, a conflict) renders the page again with that detail above it, with the refusal's status;
/// anything else is the error page.
async fn after_change<F, Fut>(
    result: Result<&'static str, WebError>,
    page_path: &str,
    again: F,
) -> Result<HttpResponse, WebError>
where
    F: FnOnce(web::Query<Done>) -> Fut,
    Fut: std::future::Future<Output = Result<HttpResponse, WebError>>,
{
    let (status, detail) = match result {
        Ok(code) => return Ok(page::see_other(&format!("{page_path}?done={code}"))),
        Err(WebError::Api(ApiError::StepUpRequired)) => {
            return Ok(page::see_other(&format!("{page_path}?done=step-up")));
        }
        Err(WebError::Api(ApiError::BadRequest(d))) => (StatusCode::BAD_REQUEST, d),
        Err(WebError::Api(ApiError::Conflict(d))) => (StatusCode::CONFLICT, d),
        Err(e) => return Err(e),
    };
    let mut page = again(Done::problem(detail)).await?;
    *page.status_mut() = status;
    Ok(page)
}

// ---------------------------------------------------------------------------------------------
// Agencies.

#[derive(Template)]
#[template(path = "admin_agencies.html")]
struct AgenciesPage {
    chrome: Chrome,
    admin: AdminChrome,
    agencies: Vec<AgencyRow>,
    /// The municipality's time zone.
    time_zone: String,
}

struct AgencyRow {
    agency: AgencyView,
    retired: Option<String>,
}

async fn agencies_page(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    query: web::Query<Done>,
) -> Result<HttpResponse, WebError> {
    let client = allowed(&state, &actor, Intent::View).await?;
    let agencies = municipal::agencies(&client, actor.tenant)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|agency| AgencyRow {
            retired: agency.retired_at.map(when),
            agency,
        })
        .collect();
    page::ok(&AgenciesPage {
        chrome: Chrome::of(&client, &actor).await?,
        admin: AdminChrome::new(&state, &actor, "agencies", &query),
        agencies,
        time_zone: municipal::time_zone(&client, actor.tenant)
            .await
            .map_err(ApiError::from)?
            .time_zone,
    })
}

async fn add_agency(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    form: web::Form<NewAgency>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        municipal::create_agency(
            &tx,
            actor.tenant,
            Some(actor.user_id),
            &form,
            state.clock.now(),
        )
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("agency-added")
    }
    .await;
    after_change(result, "/admin", |q| {
        agencies_page(state.clone(), SignedIn(actor.clone()), q)
    })
    .await
}

async fn set_time_zone(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    form: web::Form<municipal::TimeZone>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        municipal::set_time_zone(
            &tx,
            actor.tenant,
            Some(actor.user_id),
            &form.time_zone,
            state.clock.now(),
        )
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        super::zone::forget(actor.tenant);
        Ok("time-zone-set")
    }
    .await;
    after_change(result, "/admin", |q| {
        agencies_page(state.clone(), SignedIn(actor.clone()), q)
    })
    .await
}

#[derive(Deserialize)]
struct NameForm {
    name: String,
}

async fn rename_agency(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<NameForm>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        municipal::rename_agency(
            &tx,
            actor.tenant,
            Some(actor.user_id),
            *id,
            &form.name,
            state.clock.now(),
        )
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("agency-renamed")
    }
    .await;
    after_change(result, "/admin", |q| {
        agencies_page(state.clone(), SignedIn(actor.clone()), q)
    })
    .await
}

async fn retire_agency(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        municipal::retire_agency(
            &tx,
            actor.tenant,
            Some(actor.user_id),
            *id,
            state.clock.now(),
        )
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("agency-retired")
    }
    .await;
    after_change(result, "/admin", |q| {
        agencies_page(state.clone(), SignedIn(actor.clone()), q)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Units.

#[derive(Template)]
#[template(path = "admin_units.html")]
struct UnitsPage {
    chrome: Chrome,
    admin: AdminChrome,
    units: Vec<UnitRow>,
    open_agencies: Vec<AgencyView>,
}

struct UnitRow {
    unit: UnitView,
    /// Responders of the unit's agency not in it, who may be added.
    candidates: Vec<UserView>,
}

async fn units_page(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    query: web::Query<Done>,
) -> Result<HttpResponse, WebError> {
    let client = allowed(&state, &actor, Intent::View).await?;
    let units = municipal::units(&client, actor.tenant)
        .await
        .map_err(ApiError::from)?;
    let responders = municipal::users(
        &client,
        actor.tenant,
        &UserFilter {
            role: Some("responder".to_owned()),
            ..UserFilter::default()
        },
    )
    .await
    .map_err(ApiError::from)?;
    let units = units
        .into_iter()
        .map(|unit| UnitRow {
            candidates: responders
                .iter()
                .filter(|r| {
                    r.agency_id == Some(unit.agency_id)
                        && r.status != "disabled"
                        && r.unit.as_deref() != Some(unit.name.as_str())
                })
                .cloned()
                .collect(),
            unit,
        })
        .collect();
    let open_agencies = municipal::agencies(&client, actor.tenant)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .filter(|a| a.retired_at.is_none())
        .collect();
    page::ok(&UnitsPage {
        chrome: Chrome::of(&client, &actor).await?,
        admin: AdminChrome::new(&state, &actor, "units", &query),
        units,
        open_agencies,
    })
}

async fn add_unit(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    form: web::Form<NewUnit>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        municipal::create_unit(&tx, actor.tenant, actor.user_id, &form, state.clock.now())
            .await
            .map_err(ApiError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("unit-added")
    }
    .await;
    after_change(result, "/admin/units", |q| {
        units_page(state.clone(), SignedIn(actor.clone()), q)
    })
    .await
}

async fn rename_unit(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<NameForm>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        municipal::rename_unit(
            &tx,
            actor.tenant,
            actor.user_id,
            *id,
            &form.name,
            state.clock.now(),
        )
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("unit-renamed")
    }
    .await;
    after_change(result, "/admin/units", |q| {
        units_page(state.clone(), SignedIn(actor.clone()), q)
    })
    .await
}

async fn retire_unit(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        municipal::retire_unit(&tx, actor.tenant, actor.user_id, *id, state.clock.now())
            .await
            .map_err(ApiError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("unit-retired")
    }
    .await;
    after_change(result, "/admin/units", |q| {
        units_page(state.clone(), SignedIn(actor.clone()), q)
    })
    .await
}

#[derive(Deserialize)]
struct MemberForm {
    user: Uuid,
}

async fn add_member(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<MemberForm>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        municipal::add_member(
            &tx,
            actor.tenant,
            actor.user_id,
            *id,
            form.user,
            state.clock.now(),
        )
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("member-added")
    }
    .await;
    after_change(result, "/admin/units", |q| {
        units_page(state.clone(), SignedIn(actor.clone()), q)
    })
    .await
}

async fn remove_member(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, WebError> {
    let (unit, user) = path.into_inner();
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        municipal::remove_member(
            &tx,
            actor.tenant,
            actor.user_id,
            unit,
            user,
            state.clock.now(),
        )
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("member-removed")
    }
    .await;
    after_change(result, "/admin/units", |q| {
        units_page(state.clone(), SignedIn(actor.clone()), q)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// People: accounts, invitations.

#[derive(Template)]
#[template(path = "admin_people.html")]
struct PeoplePage {
    chrome: Chrome,
    admin: AdminChrome,
    users: Vec<UserRow>,
    invitations: Vec<InvitationRow>,
    agencies: Vec<AgencyView>,
    filter_role: String,
    filter_agency: String,
    filter_status: String,
    roles: [&'static str; 5],
    staff_roles: [&'static str; 4],
    viewer: Uuid,
}

struct UserRow {
    user: UserView,
    roles: String,
    agency: String,
    unit: String,
}

struct InvitationRow {
    invitation: PendingInvitation,
    agency: String,
    sent: String,
    expires: String,
}

#[derive(Deserialize)]
struct PeopleQuery {
    role: Option<String>,
    agency: Option<String>,
    status: Option<String>,
    #[serde(flatten)]
    done: Done,
}

impl PeopleQuery {
    /// The unfiltered list with a refused form's detail.
    fn problem(done: Done) -> Self {
        Self {
            role: None,
            agency: None,
            status: None,
            done,
        }
    }
}

async fn people_page(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    query: web::Query<PeopleQuery>,
) -> Result<HttpResponse, WebError> {
    let client = allowed(&state, &actor, Intent::View).await?;
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let agency = match nonempty(&query.agency) {
        Some(a) => Some(
            Uuid::parse_str(&a)
                .map_err(|_| ApiError::BadRequest("agency: not an agency id".to_owned()))?,
        ),
        None => None,
    };
    let filter = UserFilter {
        role: nonempty(&query.role),
        agency,
        status: nonempty(&query.status),
    };
    let users = municipal::users(&client, actor.tenant, &filter)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|user| UserRow {
            roles: user.roles.join(", "),
            agency: user.agency_name.clone().unwrap_or_default(),
            unit: user.unit.clone().unwrap_or_default(),
            user,
        })
        .collect();
    let invitations = municipal::pending_invitations(&client, actor.tenant, state.clock.now())
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|invitation| InvitationRow {
            agency: invitation.agency_name.clone().unwrap_or_default(),
            sent: when(invitation.created_at),
            expires: when(invitation.expires_at),
            invitation,
        })
        .collect();
    let agencies = municipal::agencies(&client, actor.tenant)
        .await
        .map_err(ApiError::from)?;
    page::ok(&PeoplePage {
        chrome: Chrome::of(&client, &actor).await?,
        admin: AdminChrome::new(&state, &actor, "people", &query.done),
        users,
        invitations,
        agencies,
        filter_role: query.role.clone().unwrap_or_default(),
        filter_agency: query.agency.clone().unwrap_or_default(),
        filter_status: query.status.clone().unwrap_or_default(),
        roles: [
            "municipal_admin",
            "dispatcher",
            "responder",
            "auditor",
            "homeowner",
        ],
        staff_roles: ["dispatcher", "responder", "auditor", "municipal_admin"],
        viewer: actor.user_id,
    })
}

#[derive(Deserialize)]
struct InviteForm {
    email: String,
    display_name: String,
    role: String,
    #[serde(default)]
    agency: String,
}

async fn invite(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    form: web::Form<InviteForm>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let role = Role::parse(&form.role)?;
        let agency_id = match form.agency.trim() {
            "" => None,
            a => Some(
                Uuid::parse_str(a)
                    .map_err(|_| ApiError::BadRequest("agency: not an agency id".to_owned()))?,
            ),
        };
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        let new = NewInvitation {
            role,
            agency_id,
            email: form.email.clone(),
            display_name: form.display_name.clone(),
        };
        accounts::invite(
            &tx,
            actor.tenant,
            actor.user_id,
            &new,
            &state.settings.public_origin,
            state.clock.now(),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("invited")
    }
    .await;
    after_change(result, "/admin/people", |q| {
        people_page(
            state.clone(),
            SignedIn(actor.clone()),
            web::Query(PeopleQuery::problem(q.into_inner())),
        )
    })
    .await
}

async fn disable(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        accounts::disable(&tx, &actor, *id, state.clock.now()).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("disabled")
    }
    .await;
    after_change(result, "/admin/people", |q| {
        people_page(
            state.clone(),
            SignedIn(actor.clone()),
            web::Query(PeopleQuery::problem(q.into_inner())),
        )
    })
    .await
}

async fn enable(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        municipal::enable(&tx, actor.tenant, actor.user_id, *id, state.clock.now())
            .await
            .map_err(ApiError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("enabled")
    }
    .await;
    after_change(result, "/admin/people", |q| {
        people_page(
            state.clone(),
            SignedIn(actor.clone()),
            web::Query(PeopleQuery::problem(q.into_inner())),
        )
    })
    .await
}

async fn revoke_invitation(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        municipal::revoke_invitation(&tx, actor.tenant, actor.user_id, *id, state.clock.now())
            .await
            .map_err(ApiError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("invitation-revoked")
    }
    .await;
    after_change(result, "/admin/people", |q| {
        people_page(
            state.clone(),
            SignedIn(actor.clone()),
            web::Query(PeopleQuery::problem(q.into_inner())),
        )
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// CAD credentials.

#[derive(Template)]
#[template(path = "admin_cad.html")]
struct CadPage {
    chrome: Chrome,
    admin: AdminChrome,
    credentials: Vec<CredentialRow>,
    /// The credential just created: its key id and secret, shown this once.
    created: Option<cad::NewCredential>,
}

struct CredentialRow {
    credential: CredentialView,
    created: String,
    revoked: Option<String>,
}

async fn cad_page_with(
    state: &AppState,
    client: &deadpool_postgres::Object,
    actor: &Actor,
    done: &Done,
    created: Option<cad::NewCredential>,
) -> Result<CadPage, WebError> {
    let credentials = municipal::credentials(client, actor.tenant)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|credential| CredentialRow {
            created: when(credential.created_at),
            revoked: credential.revoked_at.map(when),
            credential,
        })
        .collect();
    Ok(CadPage {
        chrome: Chrome::of(client, actor).await?,
        admin: AdminChrome::new(state, actor, "cad", done),
        credentials,
        created,
    })
}

async fn cad_page(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    query: web::Query<Done>,
) -> Result<HttpResponse, WebError> {
    let client = allowed(&state, &actor, Intent::View).await?;
    page::ok(&cad_page_with(&state, &client, &actor, &query, None).await?)
}

/// Creates a credential and shows its secret on the answer itself (never stored, never
/// redirected through a URL); reloading the page does not show it again.
async fn create_credential(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    form: web::Form<NameForm>,
) -> Result<HttpResponse, WebError> {
    let mut client = match allowed(&state, &actor, Intent::Change).await {
        Ok(client) => client,
        Err(WebError::Api(ApiError::StepUpRequired)) => {
            return Ok(page::see_other("/admin/cad?done=step-up"));
        }
        Err(e) => return Err(e),
    };
    let now = state.clock.now();
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let created = cad::create_credential(
        &tx,
        &state.kek,
        actor.tenant,
        Some(actor.user_id),
        &form.name,
        now,
    )
    .await
    .map_err(ApiError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    let body = cad_page_with(&state, &client, &actor, &Done::default(), Some(created)).await?;
    page::render(StatusCode::CREATED, &body)
}

async fn revoke_credential(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        municipal::revoke_credential(&tx, actor.tenant, actor.user_id, *id, state.clock.now())
            .await
            .map_err(ApiError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("credential-revoked")
    }
    .await;
    after_change(result, "/admin/cad", |q| {
        cad_page(state.clone(), SignedIn(actor.clone()), q)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Trust: attestation CAs, issuer keys, bundles, locks, the policy set.

#[derive(Template)]
#[template(path = "admin_trust.html")]
struct TrustPage {
    chrome: Chrome,
    admin: AdminChrome,
    cas: Vec<TrustedCa>,
    key_rows: Vec<(String, String, String)>,
    bundle_rows: Vec<(i64, String)>,
    lock_rows: Vec<LockRow>,
    behind: usize,
    /// Locks whose reported time floor is far from the server's clock (`GET
    /// /api/v1/admin/locks/drift`'s clock part): name, address, offset in words, last seen.
    clock_rows: Vec<(String, String, String, String)>,
    policy: PolicySetView,
}

struct LockRow {
    name: String,
    address: String,
    state: String,
    version: String,
    behind: bool,
    last_seen: String,
}

async fn trust_page(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    query: web::Query<Done>,
) -> Result<HttpResponse, WebError> {
    let client = allowed(&state, &actor, Intent::View).await?;
    let cas = webauthn::added_attestation_cas(&client, actor.tenant).await?;
    let keys = municipal::keys_overview(&client, actor.tenant)
        .await
        .map_err(ApiError::from)?;
    let key_rows = keys
        .issuer_keys
        .iter()
        .map(|k| {
            (
                k.kid.clone(),
                when(k.created_at),
                k.retired_at
                    .map_or_else(|| "signing".to_owned(), |t| format!("retired {}", when(t))),
            )
        })
        .collect();
    let bundle_rows = keys
        .bundles
        .iter()
        .map(|b| (b.version, when(b.created_at)))
        .collect();
    let lock_rows: Vec<LockRow> = keys
        .locks
        .iter()
        .map(|l| LockRow {
            name: l.name.clone(),
            address: l.address.clone(),
            state: l.pairing_state.clone(),
            version: l
                .bundle_version
                .map_or_else(|| "none reported".to_owned(), |v| v.to_string()),
            behind: l.behind,
            last_seen: when_opt(l.last_seen_at),
        })
        .collect();
    let behind = lock_rows.iter().filter(|l| l.behind).count();
    let tolerance = chrono::Duration::minutes(crate::http::alarms::FLOOR_TOLERANCE_MINUTES);
    let addresses: std::collections::HashMap<Uuid, String> = keys
        .locks
        .iter()
        .map(|l| (l.id, l.address.clone()))
        .collect();
    let clock_rows = crate::health::drift(&client, actor.tenant, tolerance)
        .await?
        .into_iter()
        .filter_map(|d| {
            let offset = d.floor_offset_seconds?;
            (offset.abs() > tolerance.num_seconds()).then(|| {
                let minutes = offset.abs() / 60;
                let words = if offset > 0 {
                    format!("{minutes} minutes ahead")
                } else {
                    format!("{minutes} minutes behind")
                };
                (
                    d.name,
                    addresses.get(&d.lock).cloned().unwrap_or_default(),
                    words,
                    when_opt(d.last_seen_at),
                )
            })
        })
        .collect();
    page::ok(&TrustPage {
        clock_rows,
        chrome: Chrome::of(&client, &actor).await?,
        admin: AdminChrome::new(&state, &actor, "trust", &query),
        cas,
        key_rows,
        bundle_rows,
        lock_rows,
        behind,
        policy: municipal::policy_set(&state.policy),
    })
}

#[derive(Deserialize)]
struct CaForm {
    pem: String,
}

async fn add_ca(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    form: web::Form<CaForm>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        if form.pem.len() > 64 * 1024 {
            return Err(ApiError::BadRequest("pem: at most 64 KiB".to_owned()).into());
        }
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        webauthn::add_attestation_ca(
            &tx,
            actor.tenant,
            &form.pem,
            Some(actor.user_id),
            state.clock.now(),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("ca-added")
    }
    .await;
    after_change(result, "/admin/trust", |q| {
        trust_page(state.clone(), SignedIn(actor.clone()), q)
    })
    .await
}

async fn remove_ca(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    fingerprint: web::Path<String>,
) -> Result<HttpResponse, WebError> {
    let result = async {
        let mut client = allowed(&state, &actor, Intent::Change).await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        webauthn::remove_attestation_ca(
            &tx,
            actor.tenant,
            &fingerprint,
            actor.user_id,
            state.clock.now(),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok("ca-removed")
    }
    .await;
    after_change(result, "/admin/trust", |q| {
        trust_page(state.clone(), SignedIn(actor.clone()), q)
    })
    .await
}

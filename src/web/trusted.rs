//! Trusted-party pages (issue 11 §1 and §3, the portal's part).
//!
//! For the homeowner, under a home: its trusted parties (status, locks, window, schedule, entries
//! per day), inviting one, pausing, resuming and revoking, and "open the door remotely". For the
//! trusted party: `/trusted`, the accesses they hold and a door pass for one lock.
//!
//! Every action calls the core function its JSON endpoint in `http::trusted` calls
//! (`trusted::list`, `invite`, `edit`, `revoke`, `mine`, `issue_token`, `remote::unlock`): the same
//! policy, step-up, audit and limits. An action that needs a fresh step-up shows the page again
//! with the step-up asked inline (`webauthn.js` confirms and resubmits the form, which keeps what
//! was typed). A home that is not the viewer's, or an access that is not theirs, is "not found".

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use base64::Engine;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::WebError;
use super::page::{self, Chrome, SignedIn};
use crate::access;
use crate::auth::Actor;
use crate::domain::Role;
use crate::emergency::EmergencyError;
use crate::emergency::tokens::Minting;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::store::StoreError;
use crate::store::properties::{self as store, Property};
use crate::trusted::remote::{self, RemoteOutcome, RemoteUnlockRequest};
use crate::trusted::{
    self, NewTrustedParty, Schedule, TrustedParty, TrustedPartyEdit, TrustedStatusChoice,
    TrustedTokenRequest,
};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/homes/{id}/trusted", web::get().to(show))
        .route("/homes/{id}/trusted", web::post().to(invite))
        .route(
            "/homes/{id}/trusted/{party}/status",
            web::post().to(set_status),
        )
        .route("/homes/{id}/trusted/{party}/revoke", web::post().to(revoke))
        .route("/homes/{id}/remote-open", web::post().to(remote_open))
        .route("/homes/{id}/remote-open", web::get().to(back_to_home))
        .route("/trusted", web::get().to(mine))
        .route("/trusted/tokens", web::post().to(request_token))
        .route("/trusted/tokens", web::get().to(back_to_mine))
        .route("/trusted/keypad-codes", web::post().to(reveal_codes))
        .route("/trusted/keypad-codes", web::get().to(back_to_mine));
}

const WEEKDAYS: [(&str, &str); 7] = [
    ("mon", "Mon"),
    ("tue", "Tue"),
    ("wed", "Wed"),
    ("thu", "Thu"),
    ("fri", "Fri"),
    ("sat", "Sat"),
    ("sun", "Sun"),
];

/// A time as the pages show it (the municipality's zone, named).
fn when(at: DateTime<Utc>) -> String {
    super::zone::when(at)
}

async fn connection(state: &AppState) -> Result<deadpool_postgres::Object, WebError> {
    Ok(state.pool.get().await.map_err(StoreError::from)?)
}

fn emergency(e: EmergencyError) -> WebError {
    WebError::Api(ApiError::from(e))
}

fn schedule_words(s: Option<&Schedule>) -> String {
    s.map_or_else(
        || "any time".to_owned(),
        |s| format!("{} {}–{} UTC", s.days.join(", "), s.from, s.until),
    )
}

// ---------------------------------------------------------------------------------------------
// The homeowner's page: trusted parties of one home, and remote unlock.

/// A trusted party as a row.
struct PartyRow {
    id: Uuid,
    label: String,
    email: String,
    status: String,
    locks: Vec<String>,
    window: String,
    schedule: String,
    uses_per_day: i16,
    notify_on_use: bool,
    share_with_dispatch: bool,
    keypad_codes: bool,
    code_rotation_days: i16,
}

/// The invitation form as typed.
#[derive(Default)]
struct InviteForm {
    email: String,
    label: String,
    locks: Vec<Uuid>,
    from: String,
    until: String,
    days: Vec<String>,
    hour_from: String,
    hour_until: String,
    uses_per_day: String,
    notify_on_use: bool,
    share_with_dispatch: bool,
    keypad_codes: bool,
    code_rotation_days: String,
}

impl InviteForm {
    fn fresh() -> Self {
        Self {
            uses_per_day: "1".to_owned(),
            code_rotation_days: crate::codes::standing::DEFAULT_ROTATION_DAYS.to_string(),
            notify_on_use: true,
            ..Self::default()
        }
    }

    fn has_day(&self, day: &str) -> bool {
        self.days.iter().any(|d| d == day)
    }

    fn from_pairs(pairs: &[(String, String)]) -> Self {
        let mut f = Self::default();
        for (k, v) in pairs {
            match k.as_str() {
                "email" => f.email.clone_from(v),
                "label" => f.label.clone_from(v),
                "lock" => f.locks.extend(Uuid::parse_str(v).ok()),
                "from" => f.from.clone_from(v),
                "until" => f.until.clone_from(v),
                "day" => f.days.push(v.clone()),
                "hour_from" => f.hour_from.clone_from(v),
                "hour_until" => f.hour_until.clone_from(v),
                "uses_per_day" => f.uses_per_day.clone_from(v),
                "notify_on_use" => f.notify_on_use = true,
                "share_with_dispatch" => f.share_with_dispatch = true,
                "keypad_codes" => f.keypad_codes = true,
                "code_rotation_days" => f.code_rotation_days.clone_from(v),
                _ => {}
            }
        }
        f
    }

    /// The JSON body `POST …/trusted-parties` takes; the error names the field in words.
    fn to_body(&self, now: DateTime<Utc>) -> Result<NewTrustedParty, String> {
        let date = |s: &str, what: &str| {
            NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
                .map_err(|_| format!("{what}: a date, like 2026-12-24."))
        };
        let starts_at = if self.from.trim().is_empty() {
            None
        } else {
            Some(date(&self.from, "From")?).filter(|s| *s > now)
        };
        // "Until" is a day: access lasts to its end.
        let ends_at = date(&self.until, "Until")? + Duration::days(1);
        let hours = !self.hour_from.trim().is_empty() || !self.hour_until.trim().is_empty();
        let schedule = if self.days.is_empty() && !hours {
            None
        } else {
            Some(Schedule {
                days: if self.days.is_empty() {
                    WEEKDAYS.iter().map(|(d, _)| (*d).to_owned()).collect()
                } else {
                    self.days.clone()
                },
                from: Some(self.hour_from.trim())
                    .filter(|s| !s.is_empty())
                    .unwrap_or("00:00")
                    .to_owned(),
                until: Some(self.hour_until.trim())
                    .filter(|s| !s.is_empty())
                    .unwrap_or("24:00")
                    .to_owned(),
            })
        };
        let uses_per_day = self
            .uses_per_day
            .trim()
            .parse::<i16>()
            .map_err(|_| "Entries per day: a whole number, 1 to 50.".to_owned())?;
        let rotation = self.code_rotation_days.trim();
        let code_rotation_days = if rotation.is_empty() {
            None
        } else {
            Some(
                rotation
                    .parse::<i16>()
                    .map_err(|_| "New code every: a whole number of days, 1 to 90.".to_owned())?,
            )
        };
        if self.keypad_codes && schedule.is_some() {
            return Err(
                "Keypad codes work at any hour of the window: leave the days and hours \
                        empty, or keypad codes off."
                    .to_owned(),
            );
        }
        Ok(NewTrustedParty {
            email: self.email.trim().to_owned(),
            label: self.label.trim().to_owned(),
            locks: self.locks.clone(),
            starts_at,
            ends_at,
            schedule,
            uses_per_day: Some(uses_per_day),
            notify_on_use: Some(self.notify_on_use),
            share_with_dispatch: Some(self.share_with_dispatch),
            keypad_codes: Some(self.keypad_codes),
            code_rotation_days,
        })
    }
}

/// The remote-unlock form, and what became of it.
struct RemoteForm {
    lock: Option<Uuid>,
    seconds: String,
    /// The core's answer in words, after a request.
    answer: Option<(&'static str, String)>,
}

impl Default for RemoteForm {
    fn default() -> Self {
        Self {
            lock: None,
            seconds: "10".to_owned(),
            answer: None,
        }
    }
}

/// Which form waits for a fresh step-up: its id (to resubmit) and what it asks.
struct StepUp {
    form: String,
    words: &'static str,
}

#[derive(Template)]
#[template(path = "trusted_home.html")]
struct HomeTrusted {
    chrome: Chrome,
    property: Property,
    /// Paired locks: (id, name).
    locks: Vec<(Uuid, String)>,
    parties: Vec<PartyRow>,
    form: InviteForm,
    weekdays: &'static [(&'static str, &'static str)],
    invite_error: Option<String>,
    invited: bool,
    remote: RemoteForm,
    step_up: Option<StepUp>,
}

async fn home_page(
    state: &AppState,
    client: &mut deadpool_postgres::Object,
    actor: &Actor,
    id: Uuid,
    form: InviteForm,
    remote: RemoteForm,
) -> Result<HomeTrusted, WebError> {
    if !actor.has(Role::Homeowner) {
        return Err(WebError::not_found());
    }
    let now = state.clock.now();
    let list = trusted::list(client, &state.policy, actor, id, now)
        .await
        .map_err(emergency)?;
    let ctx = access::property(&*client, actor.tenant, id).await?;
    if ctx.property.owner_id != actor.user_id {
        return Err(WebError::not_found());
    }
    let all = store::locks(&*client, actor.tenant, id).await?;
    let name = |lock: &Uuid| {
        all.iter()
            .find(|l| l.id == *lock)
            .map_or_else(|| lock.to_string(), |l| l.name.clone())
    };
    let parties = list
        .iter()
        .map(|p| PartyRow {
            id: p.id,
            label: p.label.clone(),
            email: p.email.clone(),
            status: p.status.clone(),
            locks: p.locks.iter().map(name).collect(),
            window: format!("{} to {}", when(p.starts_at), when(p.ends_at)),
            schedule: schedule_words(p.schedule.as_ref()),
            uses_per_day: p.uses_per_day,
            notify_on_use: p.notify_on_use,
            share_with_dispatch: p.share_with_dispatch,
            keypad_codes: p.keypad_codes,
            code_rotation_days: p.code_rotation_days,
        })
        .collect();
    Ok(HomeTrusted {
        chrome: Chrome::of(&*client, actor).await?,
        locks: all
            .iter()
            .filter(|l| l.pairing_state == "paired")
            .map(|l| (l.id, l.name.clone()))
            .collect(),
        property: ctx.property,
        parties,
        form,
        weekdays: &WEEKDAYS,
        invite_error: None,
        invited: false,
        remote,
        step_up: None,
    })
}

#[derive(Deserialize)]
struct Shown {
    invited: Option<String>,
}

async fn show(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    query: web::Query<Shown>,
) -> Result<HttpResponse, WebError> {
    let mut client = connection(&state).await?;
    let mut page = home_page(
        &state,
        &mut client,
        &actor,
        *id,
        InviteForm::fresh(),
        RemoteForm::default(),
    )
    .await?;
    page.invited = query.invited.is_some();
    page::ok(&page)
}

/// `POST /api/v1/properties/{id}/trusted-parties`'s steps; bad input or a stale step-up shows the
/// form again with what was typed.
async fn invite(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, WebError> {
    let mut client = connection(&state).await?;
    let now = state.clock.now();
    let typed = InviteForm::from_pairs(&form);
    let outcome = match typed.to_body(now) {
        Err(words) => Err(EmergencyError::Invalid(words)),
        Ok(body) => trusted::invite(
            &mut client,
            &state.policy,
            &state.kek,
            &state.settings.public_origin,
            &actor,
            *id,
            &body,
            now,
        )
        .await
        .map(|_| ()),
    };
    let (status, error, step_up) = match outcome {
        Ok(()) => {
            return Ok(page::see_other(&format!(
                "/homes/{id}/trusted?invited=1#parties"
            )));
        }
        Err(EmergencyError::StepUpRequired) => (
            StatusCode::UNAUTHORIZED,
            None,
            Some(StepUp {
                form: "invite-form".to_owned(),
                words: "Inviting someone needs a fresh confirmation with your passkey or security key. What you typed is kept.",
            }),
        ),
        Err(EmergencyError::Invalid(words) | EmergencyError::Conflict(words)) => {
            (StatusCode::BAD_REQUEST, Some(words), None)
        }
        Err(e) => return Err(emergency(e)),
    };
    let mut page = home_page(
        &state,
        &mut client,
        &actor,
        *id,
        typed,
        RemoteForm::default(),
    )
    .await?;
    page.invite_error = error;
    page.step_up = step_up;
    page::render(status, &page)
}

#[derive(Deserialize)]
struct StatusForm {
    status: TrustedStatusChoice,
}

/// The party `party` of home `id`, as its owner's list has it.
async fn party_of(
    state: &AppState,
    client: &mut deadpool_postgres::Object,
    actor: &Actor,
    id: Uuid,
    party: Uuid,
) -> Result<TrustedParty, WebError> {
    trusted::list(client, &state.policy, actor, id, state.clock.now())
        .await
        .map_err(emergency)?
        .into_iter()
        .find(|p| p.id == party)
        .ok_or_else(WebError::not_found)
}

/// After a step-up is needed for a party's form: the page again, asking inline.
async fn ask_step_up(
    state: &AppState,
    client: &mut deadpool_postgres::Object,
    actor: &Actor,
    id: Uuid,
    form: String,
) -> Result<HttpResponse, WebError> {
    let mut page = home_page(
        state,
        client,
        actor,
        id,
        InviteForm::fresh(),
        RemoteForm::default(),
    )
    .await?;
    page.step_up = Some(StepUp {
        form,
        words: "Changing someone's access needs a fresh confirmation with your passkey or security key.",
    });
    page::render(StatusCode::UNAUTHORIZED, &page)
}

/// Pause or resume: `PUT …/trusted-parties/{party}` with the current terms and the new status.
async fn set_status(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    path: web::Path<(Uuid, Uuid)>,
    form: web::Form<StatusForm>,
) -> Result<HttpResponse, WebError> {
    let (id, party) = path.into_inner();
    let mut client = connection(&state).await?;
    let current = party_of(&state, &mut client, &actor, id, party).await?;
    let now = state.clock.now();
    let edit = TrustedPartyEdit {
        status: form.status,
        locks: current.locks,
        // The window stays as it was (a start in the past is fine for an edit).
        starts_at: Some(current.starts_at),
        ends_at: current.ends_at,
        schedule: current.schedule,
        uses_per_day: Some(current.uses_per_day),
        notify_on_use: Some(current.notify_on_use),
        share_with_dispatch: Some(current.share_with_dispatch),
        keypad_codes: Some(current.keypad_codes),
        code_rotation_days: Some(current.code_rotation_days),
    };
    let root = crate::codes::SecretRoot::derive(&state.kek);
    match trusted::edit(
        &mut client,
        &state.policy,
        &root,
        &actor,
        id,
        party,
        &edit,
        now,
    )
    .await
    {
        Ok(_) => Ok(page::see_other(&format!("/homes/{id}/trusted#parties"))),
        Err(EmergencyError::StepUpRequired) => {
            ask_step_up(&state, &mut client, &actor, id, format!("status-{party}")).await
        }
        Err(e) => Err(emergency(e)),
    }
}

/// `DELETE …/trusted-parties/{party}`'s steps.
async fn revoke(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, WebError> {
    let (id, party) = path.into_inner();
    let mut client = connection(&state).await?;
    if !actor.has(Role::Homeowner) {
        return Err(WebError::not_found());
    }
    let now = state.clock.now();
    match trusted::revoke(&mut client, &state.policy, &actor, id, party, now).await {
        Ok(_) => Ok(page::see_other(&format!("/homes/{id}/trusted#parties"))),
        Err(EmergencyError::StepUpRequired) => {
            ask_step_up(&state, &mut client, &actor, id, format!("revoke-{party}")).await
        }
        Err(e) => Err(emergency(e)),
    }
}

#[derive(Deserialize)]
struct RemoteOpenForm {
    lock: Uuid,
    seconds: String,
}

/// `POST /api/v1/locks/{lock}/remote-open`'s steps, for a lock of home `id`; the page shows the
/// answer (opened, refused, no answer) in words.
async fn remote_open(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<RemoteOpenForm>,
) -> Result<HttpResponse, WebError> {
    let mut client = connection(&state).await?;
    // The lock must be one of this home's (the core checks the owner and the policy).
    let locks = store::locks(&client, actor.tenant, *id).await?;
    if !locks.iter().any(|l| l.id == form.lock) {
        return Err(WebError::not_found());
    }
    let mut remote = RemoteForm {
        lock: Some(form.lock),
        seconds: form.seconds.clone(),
        answer: None,
    };
    let mut status = StatusCode::OK;
    let mut step_up = None;
    match form.seconds.trim().parse::<u32>() {
        Err(_) => {
            status = StatusCode::BAD_REQUEST;
            remote.answer = Some((
                "error",
                format!("Seconds: a whole number, 1 to {}.", remote::MAX_HOLD_SECS),
            ));
        }
        Ok(seconds) => {
            let minting = Minting {
                key_dir: &state.settings.key_dir,
                lifetime: state.settings.token_lifetime,
            };
            let answer = remote::unlock(
                &mut client,
                &state.policy,
                minting,
                state.clock.as_ref(),
                &actor,
                form.lock,
                &RemoteUnlockRequest { seconds },
                remote::ACK_WAIT,
            )
            .await;
            match answer {
                Ok(a) => {
                    let words = match a.outcome {
                        RemoteOutcome::Opened => (
                            "ok",
                            format!(
                                "The lock opened{} and holds the door for {} seconds.",
                                a.decided_at
                                    .map(|t| format!(" at {}", when(t)))
                                    .unwrap_or_default(),
                                a.hold_seconds
                            ),
                        ),
                        RemoteOutcome::Refused => (
                            "error",
                            format!(
                                "The lock answered but refused to open ({}).",
                                a.reason.as_deref().unwrap_or("no reason given")
                            ),
                        ),
                        RemoteOutcome::NoAnswer => (
                            "warn",
                            format!(
                                "The lock did not answer in time. It will not open later: the request stops working at {}.",
                                when(a.expires_at)
                            ),
                        ),
                    };
                    remote.answer = Some(words);
                }
                Err(EmergencyError::StepUpRequired) => {
                    status = StatusCode::UNAUTHORIZED;
                    step_up = Some(StepUp {
                        form: "remote-form".to_owned(),
                        words: "Opening the door needs a fresh confirmation with your passkey or security key.",
                    });
                }
                Err(EmergencyError::Invalid(words) | EmergencyError::Conflict(words)) => {
                    status = StatusCode::BAD_REQUEST;
                    remote.answer = Some(("error", words));
                }
                Err(e) => return Err(emergency(e)),
            }
        }
    }
    let mut page = home_page(
        &state,
        &mut client,
        &actor,
        *id,
        InviteForm::fresh(),
        remote,
    )
    .await?;
    page.step_up = step_up;
    page::render(status, &page)
}

/// Reloading the answer to a remote unlock opens nothing a second time.
async fn back_to_home(id: web::Path<Uuid>) -> HttpResponse {
    page::see_other(&format!("/homes/{id}/trusted"))
}

// ---------------------------------------------------------------------------------------------
// The trusted party's page: my accesses, and a door pass for one lock.

/// An access as a card.
struct AccessRow {
    id: Uuid,
    address: String,
    status: String,
    window: String,
    schedule: String,
    uses_per_day: i16,
    open_now: bool,
    locks: Vec<(Uuid, String)>,
    keypad_codes: bool,
    /// Its current keypad codes.
    codes: Vec<CodeRow>,
}

/// A current standing keypad code as a row (digits only when they may be shown).
struct CodeRow {
    access: Uuid,
    lock: String,
    digits: Option<String>,
    valid: String,
}

#[derive(Template)]
#[template(path = "trusted_mine.html")]
struct Mine {
    chrome: Chrome,
    accesses: Vec<AccessRow>,
    /// The (access, lock) whose door pass waits for a fresh step-up.
    step_up_for: Option<(Uuid, Uuid)>,
    /// Why the last request was refused, in words.
    refused: Option<String>,
    /// Showing the codes' digits again waits for a fresh step-up.
    codes_step_up: bool,
    /// Some code's digits are on the page.
    codes_shown: bool,
    /// Some code's digits are hidden (shown before).
    codes_hidden: bool,
}

impl Mine {
    /// Puts each code under its access.
    fn set_codes(&mut self, codes: Vec<crate::codes::standing::ShownCode>) {
        for c in codes {
            let row = CodeRow {
                access: c.trusted_party,
                lock: c.lock_name,
                digits: c.digits,
                valid: format!("{} to {}", when(c.not_before), when(c.not_after)),
            };
            self.codes_shown |= row.digits.is_some();
            self.codes_hidden |= row.digits.is_none();
            if let Some(a) = self.accesses.iter_mut().find(|a| a.id == row.access) {
                a.codes.push(row);
            }
        }
    }
}

/// The page with its codes; `no-store` whenever digits are on it.
fn mine_response(status: StatusCode, page: &Mine) -> Result<HttpResponse, WebError> {
    if page.codes_shown {
        Ok(page::html_response(status)
            .insert_header(("Cache-Control", "no-store"))
            .body(page.render()?))
    } else {
        page::render(status, page)
    }
}

async fn mine_page(
    state: &AppState,
    client: &deadpool_postgres::Object,
    actor: &Actor,
) -> Result<Mine, WebError> {
    if !actor.has(Role::TrustedParty) {
        return Err(WebError::not_found());
    }
    let accesses = trusted::mine(client, actor, state.clock.now())
        .await
        .map_err(emergency)?
        .into_iter()
        .map(|a| AccessRow {
            id: a.trusted_party_id,
            address: a.address,
            status: a.status,
            window: format!("{} to {}", when(a.starts_at), when(a.ends_at)),
            schedule: schedule_words(a.schedule.as_ref()),
            uses_per_day: a.uses_per_day,
            open_now: a.open_now,
            locks: a.locks.into_iter().map(|l| (l.id, l.name)).collect(),
            keypad_codes: a.keypad_codes,
            codes: Vec::new(),
        })
        .collect();
    Ok(Mine {
        chrome: Chrome::of(client, actor).await?,
        accesses,
        step_up_for: None,
        refused: None,
        codes_step_up: false,
        codes_shown: false,
        codes_hidden: false,
    })
}

/// The accesses, with a newly issued keypad code shown once (then only after a fresh step-up).
async fn mine(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
) -> Result<HttpResponse, WebError> {
    let mut client = connection(&state).await?;
    let mut page = mine_page(&state, &client, &actor).await?;
    let root = crate::codes::SecretRoot::derive(&state.kek);
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let codes = crate::codes::standing::codes_of(
        &tx,
        &root,
        actor.tenant,
        actor.user_id,
        crate::codes::standing::Reveal::New,
        state.clock.now(),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    page.set_codes(codes);
    mine_response(StatusCode::OK, &page)
}

/// Every current keypad code with its digits, after a fresh step-up (asked inline).
async fn reveal_codes(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
) -> Result<HttpResponse, WebError> {
    if !actor.has(Role::TrustedParty) {
        return Err(WebError::not_found());
    }
    let mut client = connection(&state).await?;
    let root = crate::codes::SecretRoot::derive(&state.kek);
    let now = state.clock.now();
    let revealed =
        crate::codes::standing::reveal(&mut client, &state.policy, &root, &actor, now).await;
    let mut page = mine_page(&state, &client, &actor).await?;
    match revealed {
        Ok(codes) => {
            page.set_codes(codes);
            mine_response(StatusCode::OK, &page)
        }
        Err(EmergencyError::StepUpRequired) => {
            let tx = client.transaction().await.map_err(StoreError::from)?;
            let codes = crate::codes::standing::codes_of(
                &tx,
                &root,
                actor.tenant,
                actor.user_id,
                crate::codes::standing::Reveal::New,
                now,
            )
            .await?;
            tx.commit().await.map_err(StoreError::from)?;
            page.set_codes(codes);
            page.codes_step_up = true;
            mine_response(StatusCode::UNAUTHORIZED, &page)
        }
        Err(e) => Err(emergency(e)),
    }
}

#[derive(Deserialize)]
struct TokenForm {
    trusted_party: Uuid,
    lock: Uuid,
    /// The assertion `webauthn.js` put in (see `responder::form_assertion`).
    #[serde(default)]
    assertion: Option<String>,
}

#[derive(Template)]
#[template(path = "trusted_token.html")]
struct TokenPage {
    chrome: Chrome,
    door_pass: String,
    token_id: String,
    address: String,
    lock: String,
    lock_id: Uuid,
    expires: String,
}

/// `POST /api/v1/trusted/tokens`'s steps; without a fresh step-up the page asks inline; outside
/// the terms it says why.
async fn request_token(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    form: web::Form<TokenForm>,
) -> Result<HttpResponse, WebError> {
    if !actor.has(Role::TrustedParty) {
        return Err(WebError::not_found());
    }
    let mut client = connection(&state).await?;
    let now = state.clock.now();
    let minting = Minting {
        key_dir: &state.settings.key_dir,
        lifetime: state.settings.token_lifetime,
    };
    let request = TrustedTokenRequest {
        trusted_party: form.trusted_party,
        lock: form.lock,
        assertion: super::responder::form_assertion(form.assertion.as_deref())?,
    };
    let (rp, keys) = crate::http::tokens::proving_parts(&state)?;
    let proving = crate::auth::proof::Proving {
        rp: &rp,
        keys: &keys,
    };
    let issued = match trusted::issue_token(
        &mut client,
        &state.policy,
        minting,
        proving,
        &actor,
        &request,
        now,
    )
    .await
    {
        Ok(issued) => issued,
        Err(EmergencyError::StepUpRequired) => {
            let mut page = mine_page(&state, &client, &actor).await?;
            page.step_up_for = Some((form.trusted_party, form.lock));
            return page::render(StatusCode::UNAUTHORIZED, &page);
        }
        Err(EmergencyError::Conflict(words)) => {
            let mut page = mine_page(&state, &client, &actor).await?;
            page.refused = Some(words);
            return page::render(StatusCode::CONFLICT, &page);
        }
        Err(e) => return Err(emergency(e)),
    };
    let cti = hex::decode(&issued.token_id).map_err(|e| ApiError::Internal(e.into()))?;
    let row = client
        .query_one(
            "SELECT c.credential_id, p.address, l.name FROM issued_tokens t
             JOIN webauthn_credentials c ON c.id = t.credential_id
             JOIN locks l ON l.id = t.lock_id
             JOIN properties p ON p.id = l.property_id
             WHERE t.municipality_id = $1 AND t.cti = $2",
            &[&actor.tenant.id(), &cti],
        )
        .await
        .map_err(StoreError::from)?;
    let credential: Vec<u8> = row.get(0);
    let page = TokenPage {
        chrome: Chrome::of(&client, &actor).await?,
        door_pass: format!(
            "{}.{}",
            issued.token,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(credential)
        ),
        token_id: issued.token_id,
        address: row.get(1),
        lock: row.get(2),
        lock_id: issued.lock_id,
        expires: when(issued.expires_at),
    };
    // The pass is a secret for the door: not for a cache or the back button.
    Ok(page::html_response(StatusCode::CREATED)
        .insert_header(("Cache-Control", "no-store"))
        .body(page.render()?))
}

/// Reloading the answer to a token request asks for no second token.
async fn back_to_mine() -> HttpResponse {
    page::see_other("/trusted")
}

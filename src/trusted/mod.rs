//! Trusted parties (issue 11 §1): standing access a homeowner gives a neighbour, relative, home-care
//! agency or security firm to one property.
//!
//! The homeowner invites by e-mail (with a fresh step-up): which locks, a window of at most
//! [`MAX_WINDOW_DAYS`] days (renewed by editing it), an optional weekly schedule (ISO weekdays and
//! hours, in UTC: municipalities carry no time zone yet) and a number of entries per day. The
//! invitee accepts through the one-time invitation link, enrolling a security key, and gets the
//! `trusted_party` role. Inside the window and schedule they ask for a token exactly as a responder
//! does: fresh assertion, `cnf` = that key, short lifetime, one lock, opens once — minted, recorded,
//! audited and queued by the same [`tokens::mint_recorded`]. Outside it the policy refuses (audited)
//! and the caller is told why. A pause, an edit or a revocation revokes the tokens already issued,
//! at the locks too (Revocation inbox entries).

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use deadpool_postgres::GenericClient;
use firstkey_token::Scope;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access;
use crate::audit::{self, Event, Outcome};
use crate::auth::Actor;
use crate::auth::accounts::{self, NewInvitation};
use crate::auth::proof::{self, Bound, Proving};
use crate::domain::{Email, Role, Text};
use crate::emergency::tokens::{self, Holder, Mint, Minting, Signer};
use crate::emergency::{EmergencyError, Notice, notify_property};
use crate::error::CoreError;
use crate::policy::{AuthzRequest, PolicyEngine, StepUpContext, TrustedTokenContext};
use crate::settings::PublicOrigin;
use crate::store::{StoreError, Tenant};

pub mod remote;

/// Longest window of standing access; the homeowner renews by editing it.
pub const MAX_WINDOW_DAYS: i64 = 90;
/// Most entries per day a homeowner may allow.
pub const MAX_USES_PER_DAY: i16 = 50;

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A weekly schedule: on these ISO weekdays, from `from` until `until` (UTC, `HH:MM`, `until` may
/// be `24:00`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Weekdays: `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun` (at least one).
    pub days: Vec<String>,
    /// Start of each day's slot, `HH:MM` (UTC).
    #[schema(pattern = r"^[0-2][0-9]:[0-5][0-9]$")]
    pub from: String,
    /// End of each day's slot (exclusive), `HH:MM` (UTC), after `from`; `24:00` for midnight.
    #[schema(pattern = r"^[0-2][0-9]:[0-5][0-9]$")]
    pub until: String,
}

/// A schedule as stored: weekday bits (Monday = 1 … Sunday = 64) and minutes of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSchedule {
    days: i16,
    from: i16,
    until: i16,
}

fn minutes(field: &'static str, text: &str) -> Result<i16, EmergencyError> {
    let bad = || EmergencyError::Invalid(format!("{field}: HH:MM between 00:00 and 24:00"));
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i16 = h.parse().map_err(|_| bad())?;
    let m: i16 = m.parse().map_err(|_| bad())?;
    if !(0..=24).contains(&h) || !(0..60).contains(&m) || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn hhmm(minutes: i16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

impl StoredSchedule {
    /// Parses the submitted form.
    pub fn parse(schedule: &Schedule) -> Result<Self, EmergencyError> {
        let mut days = 0i16;
        if schedule.days.is_empty() || schedule.days.len() > 7 {
            return Err(EmergencyError::Invalid(
                "schedule.days: one to seven of mon, tue, wed, thu, fri, sat, sun".to_owned(),
            ));
        }
        for day in &schedule.days {
            let i = WEEKDAYS
                .iter()
                .position(|d| *d == day.as_str())
                .ok_or_else(|| {
                    EmergencyError::Invalid(
                        "schedule.days: each one of mon, tue, wed, thu, fri, sat, sun".to_owned(),
                    )
                })?;
            days |= 1 << i;
        }
        let from = minutes("schedule.from", &schedule.from)?;
        let until = minutes("schedule.until", &schedule.until)?;
        if from >= 1440 || until <= from {
            return Err(EmergencyError::Invalid(
                "schedule.until: must be after schedule.from on the same day".to_owned(),
            ));
        }
        Ok(Self { days, from, until })
    }

    /// Whether `now` falls in the schedule (UTC).
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        let day = now.weekday().num_days_from_monday();
        let minute = i16::try_from(now.hour() * 60 + now.minute()).unwrap_or(i16::MAX);
        self.days & (1 << day) != 0 && minute >= self.from && minute < self.until
    }

    fn view(&self) -> Schedule {
        Schedule {
            days: WEEKDAYS
                .iter()
                .enumerate()
                .filter(|(i, _)| self.days & (1 << i) != 0)
                .map(|(_, d)| (*d).to_owned())
                .collect(),
            from: hhmm(self.from),
            until: hhmm(self.until),
        }
    }
}

/// The terms of a trusted party's access, as the homeowner sets them (invite and edit).
struct Terms<'a> {
    locks: &'a [Uuid],
    starts_at: Option<DateTime<Utc>>,
    ends_at: DateTime<Utc>,
    schedule: Option<&'a Schedule>,
    uses_per_day: Option<i16>,
    notify_on_use: Option<bool>,
    share_with_dispatch: Option<bool>,
    keypad_codes: Option<bool>,
    code_rotation_days: Option<i16>,
}

/// Body of an invitation: who, and the terms.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTrustedParty {
    /// Where the invitation link is mailed.
    #[schema(value_type = crate::domain::Email)]
    pub email: String,
    /// What the homeowner calls them, e.g. "Sam at no. 12", 1 to 200 characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub label: String,
    /// Locks of the property they may open (one to twenty).
    pub locks: Vec<Uuid>,
    /// Start of the window; now if absent.
    pub starts_at: Option<DateTime<Utc>>,
    /// End of the window: in the future, at most 90 days after its start (renew by editing).
    pub ends_at: DateTime<Utc>,
    /// Weekly schedule inside the window; any time if absent.
    pub schedule: Option<Schedule>,
    /// Entries (tokens) per day (UTC), 1 to 50; 1 if absent.
    #[schema(minimum = 1, maximum = 50)]
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    pub uses_per_day: Option<i16>,
    /// Mail the homeowner each time a token is issued to them (default true).
    pub notify_on_use: Option<bool>,
    /// Dispatch may be told this party holds access (shown on the plan summary; default false).
    pub share_with_dispatch: Option<bool>,
    /// Standing keypad codes besides tokens (default false): mailed to them, rotated every
    /// `code_rotation_days`, working at the lock's keypad any number of times inside the window.
    /// The lock cannot check a weekly schedule offline, so not with a `schedule`.
    pub keypad_codes: Option<bool>,
    /// Days between keypad-code rotations, 1 to 90 (default 7). The previous code keeps working
    /// for a quarter of the period (at most a day) after the next one is mailed.
    #[schema(minimum = 1, maximum = 90)]
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    pub code_rotation_days: Option<i16>,
}

/// Body of an edit: new terms, and whether access is paused.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustedPartyEdit {
    /// `active` or `paused` (a paused party gets no token; tokens already issued are revoked).
    pub status: TrustedStatusChoice,
    /// Locks of the property they may open (one to twenty).
    pub locks: Vec<Uuid>,
    /// Start of the window; now if absent.
    pub starts_at: Option<DateTime<Utc>>,
    /// End of the window: in the future, at most 90 days after its start (renew by editing).
    pub ends_at: DateTime<Utc>,
    /// Weekly schedule inside the window; any time if absent.
    pub schedule: Option<Schedule>,
    /// Entries (tokens) per day (UTC), 1 to 50; 1 if absent.
    #[schema(minimum = 1, maximum = 50)]
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    pub uses_per_day: Option<i16>,
    /// Mail the homeowner each time a token is issued to them (default true).
    pub notify_on_use: Option<bool>,
    /// Dispatch may be told this party holds access (shown on the plan summary; default false).
    pub share_with_dispatch: Option<bool>,
    /// Standing keypad codes besides tokens (default false): mailed to them, rotated every
    /// `code_rotation_days`, working at the lock's keypad any number of times inside the window.
    /// The lock cannot check a weekly schedule offline, so not with a `schedule`.
    pub keypad_codes: Option<bool>,
    /// Days between keypad-code rotations, 1 to 90 (default 7). The previous code keeps working
    /// for a quarter of the period (at most a day) after the next one is mailed.
    #[schema(minimum = 1, maximum = 90)]
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    pub code_rotation_days: Option<i16>,
}

macro_rules! terms_of {
    ($body:expr) => {
        Terms {
            locks: &$body.locks,
            starts_at: $body.starts_at,
            ends_at: $body.ends_at,
            schedule: $body.schedule.as_ref(),
            uses_per_day: $body.uses_per_day,
            notify_on_use: $body.notify_on_use,
            share_with_dispatch: $body.share_with_dispatch,
            keypad_codes: $body.keypad_codes,
            code_rotation_days: $body.code_rotation_days,
        }
    };
}

/// The states a homeowner may set by editing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrustedStatusChoice {
    /// Access as the terms say.
    Active,
    /// No access until set active again.
    Paused,
}

/// A trusted party as its homeowner sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrustedParty {
    /// Identifier.
    pub id: Uuid,
    /// The property.
    pub property_id: Uuid,
    /// The homeowner's name for them.
    pub label: String,
    /// Their e-mail address.
    pub email: String,
    /// `invited` (not yet accepted), `active`, `paused` or `revoked`.
    pub status: String,
    /// Locks they may open.
    pub locks: Vec<Uuid>,
    /// Window start.
    pub starts_at: DateTime<Utc>,
    /// Window end.
    pub ends_at: DateTime<Utc>,
    /// Weekly schedule (UTC), if any.
    pub schedule: Option<Schedule>,
    /// Entries per day.
    pub uses_per_day: i16,
    /// The homeowner is mailed on each use.
    pub notify_on_use: bool,
    /// Dispatch may be told they hold access.
    pub share_with_dispatch: bool,
    /// They get standing keypad codes.
    pub keypad_codes: bool,
    /// Days between keypad-code rotations.
    pub code_rotation_days: i16,
    /// When invited.
    pub created_at: DateTime<Utc>,
}

/// A trusted party's own view of one access they hold.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MyAccess {
    /// The trusted party record (ask tokens with it).
    pub trusted_party_id: Uuid,
    /// The property.
    pub property_id: Uuid,
    /// Its address.
    pub address: String,
    /// Locks they may open, with names.
    pub locks: Vec<crate::emergency::grants::GrantLock>,
    /// `active` or `paused`.
    pub status: String,
    /// Window start.
    pub starts_at: DateTime<Utc>,
    /// Window end.
    pub ends_at: DateTime<Utc>,
    /// Weekly schedule (UTC), if any.
    pub schedule: Option<Schedule>,
    /// Entries per day.
    pub uses_per_day: i16,
    /// Whether a token request would be inside the terms now (window, schedule, entries left).
    pub open_now: bool,
    /// They get standing keypad codes (mailed; shown on their page).
    pub keypad_codes: bool,
}

/// Body of a trusted party's token request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustedTokenRequest {
    /// The trusted party record.
    pub trusted_party: Uuid,
    /// The lock to open.
    pub lock: Uuid,
    /// The assertion over the options of `GET /api/v1/tokens/challenge` for this record and lock,
    /// as a responder's token request carries it (one request per token). Without it the session
    /// needs a fresh step-up.
    #[serde(default)]
    #[schema(schema_with = crate::auth::webauthn::assertion_schema)]
    pub assertion: Option<webauthn_rs::prelude::PublicKeyCredential>,
}

/// A token minted for a trusted party.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrustedToken {
    /// The token (COSE_Sign1 bytes), base64url without padding. Secret: present it only at the door.
    pub token: String,
    /// The token id (`cti`), hex.
    pub token_id: String,
    /// The lock it opens.
    pub lock_id: Uuid,
    /// The trusted party it was minted for.
    pub trusted_party_id: Uuid,
    /// The issuer key id that signed it.
    pub kid: String,
    /// Not valid before.
    pub not_before: DateTime<Utc>,
    /// Not valid from this instant.
    pub expires_at: DateTime<Utc>,
    /// How many times it opens the lock.
    pub max_uses: u32,
}

/// An active trusted party of a property right now (for other features, e.g. standing keypad
/// codes): accepted, not paused or revoked, inside its window and schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveTrustedParty {
    /// The trusted party record.
    pub id: Uuid,
    /// Their account.
    pub user_id: Uuid,
    /// Their e-mail address.
    pub email: String,
    /// The homeowner's name for them.
    pub label: String,
    /// Locks they may open.
    pub locks: Vec<Uuid>,
    /// End of the window.
    pub ends_at: DateTime<Utc>,
}

struct Row {
    id: Uuid,
    property_id: Uuid,
    user_id: Uuid,
    label: String,
    email: String,
    status: String,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    schedule: Option<StoredSchedule>,
    uses_per_day: i16,
    notify_on_use: bool,
    share_with_dispatch: bool,
    created_at: DateTime<Utc>,
    locks: Vec<Uuid>,
    keypad_codes: bool,
    code_rotation_days: i16,
}

const SELECT: &str =
    "SELECT t.id, t.property_id, t.user_id, t.label, u.email, t.status, t.starts_at, t.ends_at,
        t.schedule_days, t.schedule_from, t.schedule_until, t.uses_per_day, t.notify_on_use,
        t.share_with_dispatch, t.created_at,
        coalesce((SELECT array_agg(l.lock_id ORDER BY l.lock_id) FROM trusted_party_locks l
                  WHERE l.trusted_party_id = t.id), '{}'),
        t.keypad_codes, t.code_rotation_days
     FROM trusted_parties t JOIN users u ON u.id = t.user_id";

fn row(r: &tokio_postgres::Row) -> Row {
    let days: Option<i16> = r.get(8);
    let from: Option<i16> = r.get(9);
    let until: Option<i16> = r.get(10);
    Row {
        id: r.get(0),
        property_id: r.get(1),
        user_id: r.get(2),
        label: r.get(3),
        email: r.get(4),
        status: r.get(5),
        starts_at: r.get(6),
        ends_at: r.get(7),
        schedule: match (days, from, until) {
            (Some(days), Some(from), Some(until)) => Some(StoredSchedule { days, from, until }),
            _ => None,
        },
        uses_per_day: r.get(11),
        notify_on_use: r.get(12),
        share_with_dispatch: r.get(13),
        created_at: r.get(14),
        locks: r.get(15),
        keypad_codes: r.get(16),
        code_rotation_days: r.get(17),
    }
}

impl Row {
    fn view(&self) -> TrustedParty {
        TrustedParty {
            id: self.id,
            property_id: self.property_id,
            label: self.label.clone(),
            email: self.email.clone(),
            status: self.status.clone(),
            locks: self.locks.clone(),
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            schedule: self.schedule.as_ref().map(StoredSchedule::view),
            uses_per_day: self.uses_per_day,
            notify_on_use: self.notify_on_use,
            share_with_dispatch: self.share_with_dispatch,
            keypad_codes: self.keypad_codes,
            code_rotation_days: self.code_rotation_days,
            created_at: self.created_at,
        }
    }

    /// Why a token may not be issued now, or `None` when it may (entries per day aside).
    fn refusal(&self, now: DateTime<Utc>) -> Option<&'static str> {
        match self.status.as_str() {
            "active" => {}
            "paused" => return Some("the homeowner has paused your access"),
            "revoked" => return Some("the homeowner has revoked your access"),
            _ => return Some("the invitation has not been accepted"),
        }
        if now < self.starts_at {
            return Some("your access has not started yet");
        }
        if now >= self.ends_at {
            return Some("your access has ended");
        }
        if let Some(s) = &self.schedule
            && !s.contains(now)
        {
            return Some("outside the schedule the homeowner set");
        }
        None
    }
}

/// Validated terms.
struct Checked {
    locks: Vec<Uuid>,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    schedule: Option<StoredSchedule>,
    uses_per_day: i16,
    notify_on_use: bool,
    share_with_dispatch: bool,
    keypad_codes: bool,
    code_rotation_days: i16,
}

async fn check_terms(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    terms: &Terms<'_>,
    now: DateTime<Utc>,
) -> Result<Checked, EmergencyError> {
    let mut locks = terms.locks.to_vec();
    locks.sort_unstable();
    locks.dedup();
    if locks.is_empty() || locks.len() > 20 {
        return Err(EmergencyError::Invalid(
            "locks: one to twenty locks of the property".to_owned(),
        ));
    }
    let found: i64 = client
        .query_one(
            "SELECT count(*) FROM locks WHERE municipality_id = $1 AND property_id = $2
               AND id = ANY($3) AND pairing_state <> 'retired'",
            &[&tenant.id(), &property, &locks],
        )
        .await?
        .get(0);
    if usize::try_from(found).unwrap_or(0) != locks.len() {
        return Err(EmergencyError::Invalid(
            "locks: each must be a lock of this property".to_owned(),
        ));
    }
    let starts_at = terms.starts_at.unwrap_or(now);
    let ends_at = terms.ends_at;
    if ends_at <= starts_at || ends_at <= now {
        return Err(EmergencyError::Invalid(
            "ends_at: must be after starts_at and in the future".to_owned(),
        ));
    }
    if ends_at - starts_at > Duration::days(MAX_WINDOW_DAYS) {
        return Err(EmergencyError::Invalid(format!(
            "ends_at: at most {MAX_WINDOW_DAYS} days after starts_at (renew by editing)"
        )));
    }
    let uses_per_day = terms.uses_per_day.unwrap_or(1);
    if !(1..=MAX_USES_PER_DAY).contains(&uses_per_day) {
        return Err(EmergencyError::Invalid(format!(
            "uses_per_day: 1 to {MAX_USES_PER_DAY}"
        )));
    }
    let keypad_codes = terms.keypad_codes.unwrap_or(false);
    if keypad_codes && terms.schedule.is_some() {
        return Err(EmergencyError::Invalid(
            "keypad_codes: a keypad code works at any hour of the window (the lock cannot check a \
             weekly schedule offline); remove the weekly schedule or leave keypad codes off"
                .to_owned(),
        ));
    }
    let code_rotation_days = terms
        .code_rotation_days
        .unwrap_or(crate::codes::standing::DEFAULT_ROTATION_DAYS);
    if !(1..=crate::codes::standing::MAX_ROTATION_DAYS).contains(&code_rotation_days) {
        return Err(EmergencyError::Invalid(format!(
            "code_rotation_days: 1 to {}",
            crate::codes::standing::MAX_ROTATION_DAYS
        )));
    }
    Ok(Checked {
        keypad_codes,
        code_rotation_days,
        locks,
        starts_at,
        ends_at,
        schedule: terms.schedule.map(StoredSchedule::parse).transpose()?,
        uses_per_day,
        notify_on_use: terms.notify_on_use.unwrap_or(true),
        share_with_dispatch: terms.share_with_dispatch.unwrap_or(false),
    })
}

fn denied(e: CoreError) -> EmergencyError {
    match e {
        CoreError::NotFound => EmergencyError::NotFound,
        CoreError::StepUpRequired => EmergencyError::StepUpRequired,
        other => EmergencyError::Denied(other),
    }
}

/// Asks the policy whether `actor` may view (or, `manage`, change) the trusted parties of
/// `property`; a denial is audited and is `NotFound` (or step up).
async fn authorize_owner(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    actor: &Actor,
    property: Uuid,
    manage: bool,
    now: DateTime<Utc>,
) -> Result<(access::PropertyContext, crate::policy::AuthzDecision), EmergencyError> {
    let ctx = access::property(&*client, actor.tenant, property).await?;
    let principal = access::principal(&*client, actor).await?;
    let decision = access::authorize(client, engine, actor, Some(property), now, |fresh| {
        let step_up = StepUpContext {
            step_up_fresh: fresh,
        };
        if manage {
            AuthzRequest::manage_trusted_parties(&principal, &ctx.attrs, step_up)
        } else {
            AuthzRequest::view_trusted_parties(&principal, &ctx.attrs, step_up)
        }
    })
    .await
    .map_err(denied)?;
    Ok((ctx, decision))
}

async fn insert_locks(
    tx: &impl GenericClient,
    tenant: Tenant,
    party: Uuid,
    locks: &[Uuid],
) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM trusted_party_locks WHERE trusted_party_id = $1",
        &[&party],
    )
    .await?;
    tx.execute(
        "INSERT INTO trusted_party_locks (municipality_id, trusted_party_id, lock_id)
         SELECT $1, $2, unnest($3::uuid[])",
        &[&tenant.id(), &party, &locks],
    )
    .await?;
    Ok(())
}

fn from_auth(e: crate::auth::error::AuthError) -> EmergencyError {
    use crate::auth::error::AuthError;
    match e {
        AuthError::Invalid(d) => EmergencyError::Invalid(d),
        AuthError::Conflict(d) => EmergencyError::Conflict(d.to_owned()),
        AuthError::Store(s) => EmergencyError::Store(s),
        other => EmergencyError::Conflict(format!("the invitation could not be made: {other}")),
    }
}

/// The homeowner invites a trusted party (needs a fresh step-up): a pending account and a
/// one-time invitation link mailed to them, the trusted-party record with its terms, and an audit
/// entry, in one transaction. Returns the record and the link secret (the HTTP API does not return
/// the secret).
#[allow(clippy::too_many_arguments)]
pub async fn invite(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    kek: &crate::crypto::Kek,
    origin: &PublicOrigin,
    actor: &Actor,
    property: Uuid,
    new: &NewTrustedParty,
    now: DateTime<Utc>,
) -> Result<(TrustedParty, accounts::LinkSecret), EmergencyError> {
    let (ctx, decision) = authorize_owner(client, engine, actor, property, true, now).await?;
    let label = Text::parse("label", &new.label, 200)
        .map_err(|e| EmergencyError::Invalid(e.to_string()))?;
    let email = Email::parse(&new.email).map_err(|e| EmergencyError::Invalid(e.to_string()))?;
    let checked = check_terms(&*client, actor.tenant, property, &terms_of!(new), now).await?;
    let wording = InvitationWording::load(&*client, actor, &ctx.property.address, &checked).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let (invitation, secret) = accounts::invite_worded(
        &tx,
        actor.tenant,
        actor.user_id,
        &NewInvitation {
            role: Role::TrustedParty,
            agency_id: None,
            email: email.as_str().to_owned(),
            display_name: label.as_str().to_owned(),
        },
        now,
        |secret| wording.mail(&secret.trusted_invitation_url(origin)),
    )
    .await
    .map_err(from_auth)?;
    if invitation.user_id == actor.user_id {
        return Err(EmergencyError::Invalid(
            "email: you cannot invite yourself".to_owned(),
        ));
    }
    let id = Uuid::new_v4();
    let schedule = checked.schedule;
    tx.execute(
        "INSERT INTO trusted_parties (id, municipality_id, property_id, user_id, invitation_id, invited_by,
             label, status, starts_at, ends_at, schedule_days, schedule_from, schedule_until,
             uses_per_day, notify_on_use, share_with_dispatch, created_at, updated_at, keypad_codes,
             code_rotation_days)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'invited', $8, $9, $10, $11, $12, $13, $14, $15, $16, $16,
             $17, $18)",
        &[
            &id,
            &actor.tenant.id(),
            &property,
            &invitation.user_id,
            &invitation.id,
            &actor.user_id,
            &label.as_str(),
            &checked.starts_at,
            &checked.ends_at,
            &schedule.map(|s| s.days),
            &schedule.map(|s| s.from),
            &schedule.map(|s| s.until),
            &checked.uses_per_day,
            &checked.notify_on_use,
            &checked.share_with_dispatch,
            &now,
            &checked.keypad_codes,
            &checked.code_rotation_days,
        ],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    insert_locks(&tx, actor.tenant, id, &checked.locks).await?;
    let event = Event::new("trusted.invite", Outcome::Allow)
        .actor(actor.user_id)
        .subject("trusted_party", id)
        .property(property)
        .policy(decision.policy_set_hash)
        .details(serde_json::json!({
            "invitation": invitation.id,
            "user": invitation.user_id,
            "locks": checked.locks,
            "starts_at": checked.starts_at.to_rfc3339(),
            "ends_at": checked.ends_at.to_rfc3339(),
            "schedule": schedule.map(|s| s.view()),
            "uses_per_day": checked.uses_per_day,
            "keypad_codes": checked.keypad_codes,
            "code_rotation_days": checked.code_rotation_days,
        }));
    // Who was invited, in words (label, address), is personal: erasable details only.
    let personal = serde_json::json!({ "label": label.as_str(), "email": email.as_str() });
    audit::record_personal(&tx, actor.tenant, &event, &personal, kek, now).await?;
    let party = load(&tx, actor.tenant, property, id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok((party.view(), secret))
}

/// What a trusted party's invitation mail says: who invited them, for which home and locks, when,
/// and what to do.
struct InvitationWording {
    inviter: String,
    address: String,
    locks: Vec<String>,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    schedule: Option<StoredSchedule>,
    uses_per_day: i16,
}

impl InvitationWording {
    async fn load(
        client: &impl GenericClient,
        actor: &Actor,
        address: &str,
        checked: &Checked,
    ) -> Result<Self, StoreError> {
        let inviter: String = client
            .query_one(
                "SELECT display_name FROM users WHERE municipality_id = $1 AND id = $2",
                &[&actor.tenant.id(), &actor.user_id],
            )
            .await?
            .get(0);
        let locks = client
            .query(
                "SELECT name FROM locks WHERE municipality_id = $1 AND id = ANY($2) ORDER BY name, id",
                &[&actor.tenant.id(), &checked.locks],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(Self {
            inviter,
            address: address.to_owned(),
            locks,
            starts_at: checked.starts_at,
            ends_at: checked.ends_at,
            schedule: checked.schedule,
            uses_per_day: checked.uses_per_day,
        })
    }

    /// The schedule in words: "Mondays and Wednesdays, 08:00 to 18:30 (UTC)" or "any day, any time".
    fn schedule_words(&self) -> String {
        const NAMES: [&str; 7] = [
            "Mondays",
            "Tuesdays",
            "Wednesdays",
            "Thursdays",
            "Fridays",
            "Saturdays",
            "Sundays",
        ];
        let Some(s) = self.schedule else {
            return "any day, at any time".to_owned();
        };
        let days: Vec<&str> = NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| s.days & (1 << i) != 0)
            .map(|(_, d)| *d)
            .collect();
        let days = match days.as_slice() {
            [] => String::new(),
            [one] => (*one).to_owned(),
            [first @ .., last] => format!("{} and {last}", first.join(", ")),
        };
        format!("{days}, {} to {} (UTC)", hhmm(s.from), hhmm(s.until))
    }

    fn mail(&self, link: &str) -> accounts::InvitationMail {
        let entries = if self.uses_per_day == 1 {
            "one entry a day".to_owned()
        } else {
            format!("up to {} entries a day", self.uses_per_day)
        };
        let text = format!(
            "{inviter} has asked you to be a trusted party for their home at {address}: you may let \
             yourself in with your phone when they cannot.\n\n\
             Doors: {locks}\n\
             From {from} until {until}\n\
             When: {schedule}, {entries}\n\n\
             What to do: open this link within 72 hours and create a passkey (your phone's or \
             computer's screen lock, or a security key you own):\n{link}\n\n\
             Then, when you are at the door and inside those hours, sign in at firstkey, open \
             \"My accesses\" and ask for a door pass; confirm it with your passkey and hold your phone \
             to the lock. Each pass opens one door once and only for a few minutes. {inviter} can \
             see every entry and can pause or end your access at any time.\n\n\
             If you do not know {inviter} or did not expect this, ignore this mail: nothing happens \
             unless you open the link.",
            inviter = self.inviter,
            address = self.address,
            locks = self.locks.join(", "),
            from = self.starts_at.format("%Y-%m-%d %H:%M UTC"),
            until = self.ends_at.format("%Y-%m-%d %H:%M UTC"),
            schedule = self.schedule_words(),
        );
        accounts::InvitationMail {
            subject: format!("firstkey: {} invites you as a trusted party", self.inviter),
            text,
        }
    }
}

async fn load(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    id: Uuid,
) -> Result<Row, EmergencyError> {
    let sql = format!("{SELECT} WHERE t.municipality_id = $1 AND t.property_id = $2 AND t.id = $3");
    client
        .query_opt(&sql, &[&tenant.id(), &property, &id])
        .await?
        .map(|r| row(&r))
        .ok_or(EmergencyError::NotFound)
}

/// Called inside the enrolment transaction when a `trusted_party` invitation is accepted: the
/// record becomes active (audited). Returns whether there was one.
pub async fn accept(
    tx: &impl GenericClient,
    tenant: Tenant,
    invitation: Uuid,
    user: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let row = tx
        .query_opt(
            "UPDATE trusted_parties SET status = 'active', updated_at = $4
             WHERE municipality_id = $1 AND invitation_id = $2 AND user_id = $3 AND status = 'invited'
             RETURNING id, property_id",
            &[&tenant.id(), &invitation, &user, &now],
        )
        .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let event = Event::new("trusted.accept", Outcome::Info)
        .actor(user)
        .subject("trusted_party", row.get::<_, Uuid>(0))
        .property(row.get(1));
    audit::record(tx, tenant, &event, now).await?;
    // Keypad codes: the slots reach the locks with this commit; the rotation loop issues (mails)
    // the first code within its period (a minute).
    crate::codes::standing::sync_party(tx, tenant, row.get(0), now).await?;
    Ok(true)
}

/// The trusted parties of a property, for its owner, newest first.
pub async fn list(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    actor: &Actor,
    property: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<TrustedParty>, EmergencyError> {
    authorize_owner(client, engine, actor, property, false, now).await?;
    let sql = format!(
        "{SELECT} WHERE t.municipality_id = $1 AND t.property_id = $2 ORDER BY t.created_at DESC, t.id"
    );
    Ok(client
        .query(&sql, &[&actor.tenant.id(), &property])
        .await?
        .iter()
        .map(|r| row(r).view())
        .collect())
}

/// The homeowner edits the terms or pauses/resumes (fresh step-up). Tokens already issued are
/// revoked, at the locks too, so what can open the door is only what the new terms allow.
#[allow(clippy::too_many_arguments)]
pub async fn edit(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    root: &crate::codes::SecretRoot,
    actor: &Actor,
    property: Uuid,
    id: Uuid,
    edit: &TrustedPartyEdit,
    now: DateTime<Utc>,
) -> Result<TrustedParty, EmergencyError> {
    let (_, decision) = authorize_owner(client, engine, actor, property, true, now).await?;
    let checked = check_terms(&*client, actor.tenant, property, &terms_of!(edit), now).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let current = tx
        .query_opt(
            "SELECT status FROM trusted_parties WHERE municipality_id = $1 AND property_id = $2 AND id = $3
             FOR UPDATE",
            &[&actor.tenant.id(), &property, &id],
        )
        .await?
        .ok_or(EmergencyError::NotFound)?
        .get::<_, String>(0);
    let status = match (current.as_str(), edit.status) {
        ("revoked", _) => {
            return Err(EmergencyError::Conflict(
                "revoked; invite them again instead".to_owned(),
            ));
        }
        // An invitation not yet accepted stays invited (a pause is recorded only once accepted).
        ("invited", TrustedStatusChoice::Active) => "invited",
        ("invited", TrustedStatusChoice::Paused) => {
            return Err(EmergencyError::Conflict(
                "the invitation has not been accepted yet".to_owned(),
            ));
        }
        (_, TrustedStatusChoice::Active) => "active",
        (_, TrustedStatusChoice::Paused) => "paused",
    };
    let schedule = checked.schedule;
    tx.execute(
        "UPDATE trusted_parties SET status = $3, starts_at = $4, ends_at = $5, schedule_days = $6,
             schedule_from = $7, schedule_until = $8, uses_per_day = $9, notify_on_use = $10,
             share_with_dispatch = $11, updated_at = $12, keypad_codes = $13, code_rotation_days = $14
         WHERE municipality_id = $1 AND id = $2",
        &[
            &actor.tenant.id(),
            &id,
            &status,
            &checked.starts_at,
            &checked.ends_at,
            &schedule.map(|s| s.days),
            &schedule.map(|s| s.from),
            &schedule.map(|s| s.until),
            &checked.uses_per_day,
            &checked.notify_on_use,
            &checked.share_with_dispatch,
            &now,
            &checked.keypad_codes,
            &checked.code_rotation_days,
        ],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    insert_locks(&tx, actor.tenant, id, &checked.locks).await?;
    let revoked =
        crate::emergency::revoke_tokens_of_trusted_party(&tx, actor.tenant, id, now).await?;
    // Keypad slots follow the new terms at the locks (cleared when paused); a new slot's first
    // code is issued and mailed with this commit.
    let slots = crate::codes::standing::sync_party(&tx, actor.tenant, id, now).await?;
    crate::codes::standing::issue_due_for_party(&tx, root, actor.tenant, id, now).await?;
    let event = Event::new("trusted.edit", Outcome::Allow)
        .actor(actor.user_id)
        .subject("trusted_party", id)
        .property(property)
        .policy(decision.policy_set_hash)
        .details(serde_json::json!({
            "status": status,
            "locks": checked.locks,
            "starts_at": checked.starts_at.to_rfc3339(),
            "ends_at": checked.ends_at.to_rfc3339(),
            "schedule": schedule.map(|s| s.view()),
            "uses_per_day": checked.uses_per_day,
            "tokens_revoked": revoked,
            "keypad_codes": checked.keypad_codes,
            "code_rotation_days": checked.code_rotation_days,
            "keypad_slots_set": slots.set,
            "keypad_slots_cleared": slots.cleared,
        }));
    audit::record(&tx, actor.tenant, &event, now).await?;
    let party = load(&tx, actor.tenant, property, id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(party.view())
}

/// The homeowner revokes a trusted party (fresh step-up): for good, with every token already
/// issued revoked at its lock. Returns the record; revoking twice changes nothing more.
pub async fn revoke(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    actor: &Actor,
    property: Uuid,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<TrustedParty, EmergencyError> {
    let (_, decision) = authorize_owner(client, engine, actor, property, true, now).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let changed = tx
        .execute(
            "UPDATE trusted_parties SET status = 'revoked', revoked_at = $4, updated_at = $4
             WHERE municipality_id = $1 AND property_id = $2 AND id = $3 AND status <> 'revoked'",
            &[&actor.tenant.id(), &property, &id, &now],
        )
        .await?;
    if changed == 1 {
        let revoked =
            crate::emergency::revoke_tokens_of_trusted_party(&tx, actor.tenant, id, now).await?;
        // Its keypad slots are cleared at the locks: its codes stop working there.
        let slots = crate::codes::standing::sync_party(&tx, actor.tenant, id, now).await?;
        // An invitation not yet accepted can no longer be.
        tx.execute(
            "UPDATE invitations SET revoked_at = $3 WHERE municipality_id = $1
               AND id = (SELECT invitation_id FROM trusted_parties WHERE id = $2)
               AND used_at IS NULL AND revoked_at IS NULL",
            &[&actor.tenant.id(), &id, &now],
        )
        .await?;
        let event = Event::new("trusted.revoke", Outcome::Allow)
            .actor(actor.user_id)
            .subject("trusted_party", id)
            .property(property)
            .policy(decision.policy_set_hash)
            .details(serde_json::json!({
                "tokens_revoked": revoked,
                "keypad_slots_cleared": slots.cleared,
            }));
        audit::record(&tx, actor.tenant, &event, now).await?;
    }
    let party = load(&tx, actor.tenant, property, id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(party.view())
}

async fn used_today(
    client: &impl GenericClient,
    party: Uuid,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let midnight = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or(now);
    Ok(client
        .query_one(
            "SELECT count(*) FROM issued_tokens WHERE trusted_party_id = $1 AND issued_at >= $2",
            &[&party, &midnight],
        )
        .await?
        .get(0))
}

/// The accesses the signed-in trusted party holds (not revoked, window not over).
pub async fn mine(
    client: &impl GenericClient,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<Vec<MyAccess>, EmergencyError> {
    if !actor.has(Role::TrustedParty) {
        return Err(EmergencyError::Forbidden);
    }
    let sql = format!(
        "{SELECT} WHERE t.municipality_id = $1 AND t.user_id = $2 AND t.status IN ('active', 'paused')
           AND t.ends_at > $3 ORDER BY t.starts_at, t.id"
    );
    let mut out = Vec::new();
    for r in client
        .query(&sql, &[&actor.tenant.id(), &actor.user_id, &now])
        .await?
    {
        let r = row(&r);
        let address: String = client
            .query_one(
                "SELECT address FROM properties WHERE id = $1",
                &[&r.property_id],
            )
            .await?
            .get(0);
        let locks = client
            .query(
                "SELECT id, name FROM locks WHERE id = ANY($1) ORDER BY name, id",
                &[&r.locks],
            )
            .await?
            .iter()
            .map(|l| crate::emergency::grants::GrantLock {
                id: l.get(0),
                name: l.get(1),
            })
            .collect();
        let open_now = r.refusal(now).is_none()
            && used_today(client, r.id, now).await? < i64::from(r.uses_per_day);
        out.push(MyAccess {
            trusted_party_id: r.id,
            property_id: r.property_id,
            address,
            locks,
            status: r.status.clone(),
            starts_at: r.starts_at,
            ends_at: r.ends_at,
            schedule: r.schedule.as_ref().map(StoredSchedule::view),
            uses_per_day: r.uses_per_day,
            open_now,
            keypad_codes: r.keypad_codes,
        });
    }
    Ok(out)
}

/// The trusted parties of a property whose access holds right now (accepted, not paused or
/// revoked, inside window and schedule). The core question other features ask (standing codes).
pub async fn active_now(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<ActiveTrustedParty>, StoreError> {
    let sql = format!(
        "{SELECT} WHERE t.municipality_id = $1 AND t.property_id = $2 AND t.status = 'active'
           AND t.starts_at <= $3 AND t.ends_at > $3 ORDER BY t.created_at, t.id"
    );
    Ok(client
        .query(&sql, &[&tenant.id(), &property, &now])
        .await?
        .iter()
        .map(row)
        .filter(|r| r.refusal(now).is_none())
        .map(|r| ActiveTrustedParty {
            id: r.id,
            user_id: r.user_id,
            email: r.email,
            label: r.label,
            locks: r.locks,
            ends_at: r.ends_at,
        })
        .collect())
}

/// The labels of a property's trusted parties that the homeowner lets dispatch know about, with
/// access now or later (accepted, not paused or revoked, window not over).
pub async fn shared_with_dispatch(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    Ok(client
        .query(
            "SELECT label FROM trusted_parties WHERE municipality_id = $1 AND property_id = $2
               AND status = 'active' AND share_with_dispatch AND ends_at > $3
             ORDER BY created_at, id",
            &[&tenant.id(), &property, &now],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// A trusted party asks for a token for one lock (fresh step-up with the key it will be bound to).
/// Inside the terms: minted through the responder's path, recorded, audited, queued for the lock,
/// and the homeowner mailed if they chose so. Outside: the policy refuses (audited as
/// `policy.deny`, and `trusted.token` with the reason) and the caller is told why (409). Someone
/// else's record, or a lock not in it, is `NotFound`.
pub async fn issue_token(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    minting: Minting<'_>,
    proving: Proving<'_>,
    actor: &Actor,
    request: &TrustedTokenRequest,
    now: DateTime<Utc>,
) -> Result<TrustedToken, EmergencyError> {
    if !actor.has(Role::TrustedParty) {
        return Err(EmergencyError::NotFound);
    }
    let tenant = actor.tenant;
    // One transaction, as a responder's token: the request's own assertion, the terms, the policy
    // and the token's records.
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let proven = match &request.assertion {
        Some(assertion) => {
            let bound = Bound::Trusted {
                party: request.trusted_party,
                lock: request.lock,
            };
            match proof::verify_in(&tx, proving, actor, bound, assertion, now).await {
                Ok(credential) => Some(credential),
                Err(e) => {
                    tx.commit().await.map_err(StoreError::from)?;
                    return Err(tokens::refused(e));
                }
            }
        }
        None => None,
    };
    // Under a lock on the record: a pause, edit or revocation that commits first wins, and one
    // that comes later waits for this token and then revokes it. The daily count is read under the
    // same lock, so two concurrent requests cannot both take the last entry.
    let sql = format!(
        "{SELECT} WHERE t.municipality_id = $1 AND t.id = $2 AND t.user_id = $3 FOR UPDATE OF t"
    );
    let party = tx
        .query_opt(
            &sql,
            &[&tenant.id(), &request.trusted_party, &actor.user_id],
        )
        .await?
        .map(|r| row(&r));
    let lock_paired = match &party {
        Some(party) => tx
            .query_opt(
                "SELECT name FROM locks WHERE municipality_id = $1 AND id = $2 AND property_id = $3
                   AND pairing_state = 'paired'",
                &[&tenant.id(), &request.lock, &party.property_id],
            )
            .await?
            .map(|r| r.get::<_, String>(0)),
        None => None,
    };
    let (party, lock_name) = match (party, lock_paired) {
        (Some(party), Some(name)) if party.locks.contains(&request.lock) => (party, name),
        _ => {
            tx.commit().await.map_err(StoreError::from)?;
            return Err(EmergencyError::NotFound);
        }
    };
    let mut refusal = party.refusal(now);
    if refusal.is_none() && used_today(&tx, party.id, now).await? >= i64::from(party.uses_per_day) {
        refusal = Some("no entries left today");
    }
    let ctx = access::property(&tx, tenant, party.property_id).await?;
    let principal = access::principal(&tx, actor).await?;
    let fresh = proven.is_some() || actor.stepped_up(now);
    let authorized = access::authorize_in(
        &tx,
        engine,
        actor,
        Some(party.property_id),
        fresh,
        now,
        |fresh| {
            AuthzRequest::request_trusted_token(
                &principal,
                &ctx.attrs,
                TrustedTokenContext {
                    step_up_fresh: fresh,
                    trusted_now: refusal.is_none(),
                },
            )
        },
    )
    .await;
    let decision = match (authorized, refusal) {
        (Ok(decision), _) => decision,
        (Err(CoreError::StepUpRequired), None) => {
            tx.commit().await.map_err(StoreError::from)?;
            return Err(EmergencyError::StepUpRequired);
        }
        (Err(e), Some(reason)) => {
            let event = Event::new("trusted.token", Outcome::Deny)
                .actor(actor.user_id)
                .subject("trusted_party", party.id)
                .property(party.property_id)
                .details(serde_json::json!({ "lock": request.lock, "reason": reason }));
            audit::record(&tx, tenant, &event, now).await?;
            tx.commit().await.map_err(StoreError::from)?;
            return Err(match e {
                CoreError::NotFound | CoreError::StepUpRequired => {
                    EmergencyError::Conflict(reason.to_owned())
                }
                other => denied(other),
            });
        }
        (Err(e), None) => {
            tx.commit().await.map_err(StoreError::from)?;
            return Err(denied(e));
        }
    };
    let Some(credential) = proven.or(actor.step_up_credential) else {
        tx.commit().await.map_err(StoreError::from)?;
        return Err(EmergencyError::StepUpRequired);
    };
    let confirmation =
        tokens::confirmation_key(&tx, actor, credential, &["security_key", "passkey"]).await?;
    let signer = Signer::load(&tx, tenant, request.lock, minting.key_dir, now).await?;
    let mut expires_at = party.ends_at.min(now + minting.lifetime);
    if let Some(s) = party.schedule {
        // Not past the end of today's slot.
        let end = now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc() + Duration::minutes(i64::from(s.until)));
        if let Some(end) = end {
            expires_at = expires_at.min(end);
        }
    }
    let minted = tokens::mint_recorded(
        &tx,
        &signer,
        &Mint {
            tenant,
            holder: Holder::Trusted { party: party.id },
            subject: actor.user_id,
            property: party.property_id,
            lock: request.lock,
            credential,
            confirmation: Some(confirmation),
            scope: Scope::Open,
            expires_at,
            policy_set_hash: decision.policy_set_hash,
            policies: &decision.determining_policies,
            proven_in_request: proven.is_some(),
        },
        now,
    )
    .await?;
    if party.notify_on_use {
        let text = format!(
            "{} asked for an entry token for your lock \"{lock_name}\" at {}, as you allowed. It is \
             valid until {} and opens the door once.",
            party.label,
            ctx.property.address,
            minted.expires_at.format("%Y-%m-%d %H:%M:%S UTC"),
        );
        notify_property(
            &tx,
            tenant,
            party.property_id,
            &Notice {
                kind: "trusted.token",
                event: hex::encode(minted.cti),
                subject: "firstkey: your trusted party asked for entry",
                text: &text,
            },
            now,
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    crate::metrics::count(|m| m.tokens_issued.inc());
    Ok(TrustedToken {
        token: minted.token_text(),
        token_id: hex::encode(minted.cti),
        lock_id: request.lock,
        trusted_party_id: party.id,
        kid: minted.kid,
        not_before: minted.not_before,
        expires_at: minted.expires_at,
        max_uses: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn schedule(days: &[&str], from: &str, until: &str) -> Result<StoredSchedule, EmergencyError> {
        StoredSchedule::parse(&Schedule {
            days: days.iter().map(|d| (*d).to_owned()).collect(),
            from: from.to_owned(),
            until: until.to_owned(),
        })
    }

    #[test]
    fn a_schedule_holds_on_its_days_and_hours_only() {
        let s = schedule(&["mon", "wed"], "08:00", "18:30").unwrap();
        // 2026-11-30 is a Monday.
        assert!(s.contains(at("2026-11-30T08:00:00Z")));
        assert!(s.contains(at("2026-11-30T18:29:59Z")));
        assert!(!s.contains(at("2026-11-30T18:30:00Z")));
        assert!(!s.contains(at("2026-11-30T07:59:59Z")));
        assert!(!s.contains(at("2026-12-01T12:00:00Z")), "Tuesday");
        assert!(s.contains(at("2026-12-02T12:00:00Z")), "Wednesday");
        assert!(!s.contains(at("2026-12-06T12:00:00Z")), "Sunday");
        let late = schedule(&["sun"], "20:00", "24:00").unwrap();
        assert!(late.contains(at("2026-12-06T23:59:59Z")));
        assert!(!late.contains(at("2026-12-07T00:00:00Z")), "Monday");
        assert_eq!(late.view().until, "24:00");
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert!(schedule(&[], "08:00", "09:00").is_err());
        assert!(schedule(&["monday"], "08:00", "09:00").is_err());
        assert!(schedule(&["mon"], "09:00", "09:00").is_err());
        assert!(schedule(&["mon"], "10:00", "09:00").is_err());
        assert!(schedule(&["mon"], "8:00", "09:00").is_err());
        assert!(schedule(&["mon"], "08:60", "09:00").is_err());
        assert!(schedule(&["mon"], "24:00", "24:00").is_err());
        assert!(schedule(&["mon"], "08:00", "24:01").is_err());
        assert!(schedule(&["mon"], "\u{0}8:00", "09:00").is_err());
        let all = schedule(
            &["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "00:00",
            "24:00",
        );
        assert_eq!(all.unwrap().days, 127);
    }
}

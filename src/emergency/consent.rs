//! Live consent (issue 11 §3): where the property's plan asks for it ([`LiveConsent`]), a grant
//! first asks the homeowner, and goes on only as they or the clock decide.
//!
//! - **Asked** in the grant's own transaction ([`ask`]): the grant is `awaiting_consent`, a
//!   `grant_consents` row holds the SHA-256 of a one-time link secret, the deadline
//!   (`timeout_seconds` after asking) and the plan's fallback; the owner is mailed the link
//!   (`/consents/{grant}#secret`: the secret is in the fragment, so it reaches no server log).
//!   The owner is mailed whatever their notification choices say: the request needs an answer.
//! - **Answered** by the owner ([`decide`]): signed in, with the link's secret, and with a passkey
//!   assertion made *after* the request was asked and within the step-up window; Cedar's
//!   `decide_consent` decides who may (the owner of that property only). Approve: the grant goes
//!   on to what it would have been without the consent step (`live`, its window starting now, or
//!   `awaiting_approval` where the agency rule wants a second dispatcher). Refuse: the grant is
//!   `refused` (ended, never live, no token can be minted). The link works once: a second answer,
//!   an answer after the deadline, or another link's secret is refused and audited.
//! - **Timed out** by the background loop ([`sweep_timeouts`], every replica, due rows claimed
//!   with `FOR UPDATE SKIP LOCKED`, each one's whole change in one transaction, so a crash either
//!   applies it fully or leaves it for the next pass): the plan's fallback applies — `proceed` as
//!   an approval does, or `second_dispatcher`: the grant waits in the approval queue.
//! - A grant revoked or whose incident closes while it waits cancels its request ([`cancel`]).
//!
//! Every step is audited (`consent.approve`, `consent.refuse`, `consent.timeout`, `consent.deny`),
//! and every change of `grant_consents.status` notifies the incident's dispatcher consoles (V30
//! trigger), which show the consent state live ([`ConsentState`]).

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::EmergencyError;
use crate::access;
use crate::audit::{self, Event, Outcome};
use crate::auth::Actor;
use crate::domain::Email;
use crate::error::CoreError;
use crate::notify::{self, Mail};
use crate::plans::{ConsentFallback, LiveConsent};
use crate::policy::{AuthzRequest, PolicyEngine, StepUpContext};
use crate::settings::PublicOrigin;
use crate::store::{StoreError, Tenant};

/// Most due requests one sweep handles (the rest wait for the next pass).
const SWEEP_BATCH: i64 = 100;

/// The secret of a consent link. Never logged; it leaves the server only in the owner's mail.
pub struct ConsentSecret(String);

impl ConsentSecret {
    fn new() -> Result<Self, StoreError> {
        crate::auth::session::random_secret(&ring::rand::SystemRandom::new(), 32).map(Self)
    }

    /// The raw secret (tests and the demo read it from the mail instead).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The link mailed to the owner.
    pub fn url(&self, origin: &PublicOrigin, grant: Uuid) -> String {
        format!("{}/consents/{grant}#{}", origin.as_str(), self.0)
    }
}

impl std::fmt::Debug for ConsentSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsentSecret(..)")
    }
}

fn hash(secret: &str) -> Vec<u8> {
    digest(&SHA256, secret.as_bytes()).as_ref().to_vec()
}

/// What the mail and the page tell the owner about the grant asked for.
pub(crate) struct Asked<'a> {
    /// The grant.
    pub grant: Uuid,
    /// Its property.
    pub property: Uuid,
    /// Its address.
    pub address: &'a str,
    /// The agency kind, e.g. `fire`.
    pub agency_kind: &'a str,
    /// The incident's type and CAD number.
    pub incident_kind: &'a str,
    /// The incident's CAD number.
    pub cad_number: &'a str,
    /// The dispatcher's reason.
    pub justification: &'a str,
    /// How long the entry would last.
    pub minutes: u32,
    /// What the grant becomes once consent is given: `live` or `awaiting_approval`.
    pub then_status: &'static str,
}

/// Asks the property's owner, inside the grant's transaction `tx`: the request row and the mail
/// with the link. Returns the link's secret (the HTTP API never returns it).
pub(crate) async fn ask(
    tx: &impl GenericClient,
    tenant: Tenant,
    asked: &Asked<'_>,
    rule: LiveConsent,
    origin: &PublicOrigin,
    now: DateTime<Utc>,
) -> Result<ConsentSecret, EmergencyError> {
    let owner = tx
        .query_one(
            "SELECT u.id, u.email FROM properties p
             JOIN users u ON u.municipality_id = p.municipality_id AND u.id = p.owner_id
             WHERE p.municipality_id = $1 AND p.id = $2",
            &[&tenant.id(), &asked.property],
        )
        .await?;
    let (owner_id, email): (Uuid, String) = (owner.get(0), owner.get(1));
    let secret = ConsentSecret::new()?;
    let expires_at: DateTime<Utc> = tx
        .query_one(
            "INSERT INTO grant_consents (grant_id, municipality_id, property_id, owner_id, secret_hash,
                 status, then_status, timeout_seconds, fallback, asked_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9,
                     $9::timestamptz + make_interval(secs => $7::int))
             RETURNING expires_at",
            &[
                &asked.grant,
                &tenant.id(),
                &asked.property,
                &owner_id,
                &hash(secret.expose()),
                &asked.then_status,
                &rule.timeout_seconds,
                &rule.fallback.as_str(),
                &now,
            ],
        )
        .await
        .map_err(crate::store::conflict_or_query)?
        .get(0);
    let link = secret.url(origin, asked.grant);
    let text = format!(
        "Dispatch asks to let the {agency} service into your home at {address} now, for incident \
         {cad} ({kind}), for up to {minutes} minutes.\nReason given by dispatch: {why}\n\n\
         Approve or refuse it with your passkey by {deadline} (within {seconds} seconds):\n{link}\n\n\
         If you do not answer in time, your access plan says: {fallback}.\n\nThe link works once. \
         Every entry is recorded and you will be told of each one.",
        agency = asked.agency_kind,
        address = asked.address,
        cad = asked.cad_number,
        kind = asked.incident_kind,
        minutes = asked.minutes,
        why = asked.justification,
        deadline = expires_at.format("%H:%M:%S UTC"),
        seconds = rule.timeout_seconds,
        fallback = rule.fallback.words(),
    );
    if let Ok(to) = Email::parse(&email) {
        let mail = Mail {
            dedupe_key: format!("consent.request:{}", asked.grant),
            kind: "consent.request",
            to,
            subject: "firstkey: dispatch asks to enter your home — approve or refuse".to_owned(),
            html: format!(
                "<p>{}</p>",
                notify::html_escape(&text).replace('\n', "<br>")
            ),
            text,
        };
        notify::enqueue(tx, tenant, &mail, now).await?;
    }
    Ok(secret)
}

/// Where a request for consent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsentState {
    /// Waiting for the owner's answer.
    Pending,
    /// The owner approved.
    Approved,
    /// The owner refused.
    Refused,
    /// Nobody answered in time: the plan's fallback applied.
    TimedOut,
    /// The grant was revoked or its incident closed while waiting.
    Cancelled,
}

impl ConsentState {
    /// Parses the stored name (anything unknown reads as pending).
    pub fn parse(stored: &str) -> Self {
        match stored {
            "approved" => Self::Approved,
            "refused" => Self::Refused,
            "timed_out" => Self::TimedOut,
            "cancelled" => Self::Cancelled,
            _ => Self::Pending,
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Refused => "refused",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The consent part of a grant's state, in the dispatcher console's words.
pub fn words(state: ConsentState, fallback: ConsentFallback, expires_at: DateTime<Utc>) -> String {
    match state {
        ConsentState::Pending => format!(
            "asking the homeowner (until {}; then {})",
            expires_at.format("%H:%M:%S UTC"),
            fallback.words()
        ),
        ConsentState::Approved => "the homeowner approved".to_owned(),
        ConsentState::Refused => "the homeowner refused".to_owned(),
        ConsentState::TimedOut => format!("no answer from the homeowner: {}", fallback.words()),
        ConsentState::Cancelled => "request to the homeowner withdrawn".to_owned(),
    }
}

/// A request for consent as its owner sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Consent {
    /// The grant asked for (also the request's id).
    pub grant_id: Uuid,
    /// The property.
    pub property_id: Uuid,
    /// Its address.
    pub address: String,
    /// `pending`, `approved`, `refused`, `timed_out` or `cancelled`.
    pub state: ConsentState,
    /// The grant's status now.
    pub grant_status: String,
    /// Kind of the agency asking to enter: `fire`, `ems`, `police` or `other`.
    pub agency_kind: String,
    /// The incident's type.
    pub incident_kind: String,
    /// The incident's CAD number.
    pub cad_number: String,
    /// The dispatcher's reason.
    pub justification: String,
    /// How long the entry lasts once it goes live, in minutes.
    pub minutes: i64,
    /// What happens without an answer in time.
    pub fallback: ConsentFallback,
    /// When the owner was asked.
    pub asked_at: DateTime<Utc>,
    /// The deadline.
    pub expires_at: DateTime<Utc>,
    /// When it was answered (or timed out, or was withdrawn).
    pub decided_at: Option<DateTime<Utc>>,
}

const SELECT: &str = "SELECT c.grant_id, c.property_id, p.address, c.status, g.status, a.kind, i.kind,
        i.cad_number, g.justification, (extract(epoch FROM g.ends_at - g.starts_at) / 60)::bigint,
        c.fallback, c.asked_at, c.expires_at, c.decided_at, c.secret_hash, c.then_status, g.incident_id
     FROM grant_consents c
     JOIN grants g ON g.municipality_id = c.municipality_id AND g.id = c.grant_id
     JOIN incidents i ON i.municipality_id = g.municipality_id AND i.id = g.incident_id
     JOIN agencies a ON a.id = i.agency_id
     JOIN properties p ON p.municipality_id = c.municipality_id AND p.id = c.property_id";

struct Row {
    consent: Consent,
    secret_hash: Vec<u8>,
    then_status: String,
    incident: Uuid,
}

fn row(r: &tokio_postgres::Row) -> Row {
    let fallback: String = r.get(10);
    Row {
        consent: Consent {
            grant_id: r.get(0),
            property_id: r.get(1),
            address: r.get(2),
            state: ConsentState::parse(r.get(3)),
            grant_status: r.get(4),
            agency_kind: r.get(5),
            incident_kind: r.get(6),
            cad_number: r.get(7),
            justification: r.get(8),
            minutes: r.get(9),
            fallback: ConsentFallback::parse(&fallback)
                .unwrap_or(ConsentFallback::SecondDispatcher),
            asked_at: r.get(11),
            expires_at: r.get(12),
            decided_at: r.get(13),
        },
        secret_hash: r.get(14),
        then_status: r.get(15),
        incident: r.get(16),
    }
}

async fn load(
    client: &impl GenericClient,
    tenant: Tenant,
    grant: Uuid,
    lock: bool,
) -> Result<Row, EmergencyError> {
    let sql = format!(
        "{SELECT} WHERE c.municipality_id = $1 AND c.grant_id = $2{}",
        if lock { " FOR UPDATE OF c, g" } else { "" }
    );
    client
        .query_opt(&sql, &[&tenant.id(), &grant])
        .await?
        .map(|r| row(&r))
        .ok_or(EmergencyError::NotFound)
}

fn denied(e: CoreError) -> EmergencyError {
    match e {
        CoreError::NotFound => EmergencyError::NotFound,
        CoreError::StepUpRequired => EmergencyError::StepUpRequired,
        other => EmergencyError::Denied(other),
    }
}

/// The request for consent of `grant`, for the owner of its property (Cedar `view_consent`);
/// anyone else, and any other municipality, gets `NotFound`.
pub async fn view(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    actor: &Actor,
    grant: Uuid,
    now: DateTime<Utc>,
) -> Result<Consent, EmergencyError> {
    let found = load(&*client, actor.tenant, grant, false).await?;
    let ctx = access::property(&*client, actor.tenant, found.consent.property_id).await?;
    let principal = access::principal(&*client, actor).await?;
    access::authorize(client, engine, actor, Some(ctx.property.id), now, |fresh| {
        AuthzRequest::view_consent(
            &principal,
            &ctx.attrs,
            StepUpContext {
                step_up_fresh: fresh,
            },
        )
    })
    .await
    .map_err(denied)?;
    Ok(found.consent)
}

/// The owner's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Let them in.
    Approve,
    /// Keep the door shut.
    Refuse,
}

/// Body of the owner's answer. Its `Debug` never shows the secret.
#[derive(Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentAnswer {
    /// The secret of the mailed link (the part after `#`).
    #[schema(min_length = 1, max_length = 200, pattern = r"^[A-Za-z0-9_-]+$")]
    pub secret: String,
    /// `approve` or `refuse`.
    pub answer: Answer,
}

impl std::fmt::Debug for ConsentAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentAnswer")
            .field("secret", &"..")
            .field("answer", &self.answer)
            .finish()
    }
}

/// The owner answers a request for consent; see the module documentation. Another owner, another
/// municipality, or a grant that asked nothing is `NotFound`; a missing or stale assertion (or one
/// from before the request) is `StepUpRequired`; a wrong secret, a second answer or one after the
/// deadline is a `Conflict`, audited as `consent.deny`.
pub async fn decide(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    actor: &Actor,
    grant: Uuid,
    body: &ConsentAnswer,
    now: DateTime<Utc>,
) -> Result<Consent, EmergencyError> {
    let found = load(&*client, actor.tenant, grant, false).await?;
    let ctx = access::property(&*client, actor.tenant, found.consent.property_id).await?;
    let principal = access::principal(&*client, actor).await?;
    // A fresh assertion, and one made after the owner was asked: an assertion from before cannot
    // answer a question that had not been put, so it counts as none (the owner is told to confirm).
    let mut asking = actor.clone();
    if asking
        .stepped_up_at
        .is_none_or(|at| at < found.consent.asked_at)
    {
        asking.stepped_up_at = None;
    }
    let decision = access::authorize(
        client,
        engine,
        &asking,
        Some(ctx.property.id),
        now,
        |fresh| {
            AuthzRequest::decide_consent(
                &principal,
                &ctx.attrs,
                StepUpContext {
                    step_up_fresh: fresh,
                },
            )
        },
    )
    .await
    .map_err(denied)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let current = load(&tx, actor.tenant, grant, true).await?;
    let refusal = if current.secret_hash != hash(&body.secret) {
        Some((
            "wrong_link",
            "this link does not belong to this request; open the newest mail",
        ))
    } else if current.consent.state != ConsentState::Pending {
        Some(("already_answered", "this request was already answered"))
    } else if now >= current.consent.expires_at {
        Some((
            "expired",
            "the time to answer is over; your access plan's fallback applies",
        ))
    } else {
        None
    };
    if let Some((reason, words)) = refusal {
        let event = Event::new("consent.deny", Outcome::Deny)
            .actor(actor.user_id)
            .subject("grant", grant)
            .property(current.consent.property_id)
            .incident(current.incident)
            .details(serde_json::json!({ "reason": reason }));
        audit::record(&tx, actor.tenant, &event, now).await?;
        tx.commit().await.map_err(StoreError::from)?;
        return Err(EmergencyError::Conflict(words.to_owned()));
    }
    let (state, action) = match body.answer {
        Answer::Approve => (ConsentState::Approved, "consent.approve"),
        Answer::Refuse => (ConsentState::Refused, "consent.refuse"),
    };
    settle(&tx, actor.tenant, &current, state, now).await?;
    let grant_status = match body.answer {
        Answer::Approve => go_on(&tx, actor.tenant, &current, &current.then_status, now).await?,
        Answer::Refuse => {
            tx.execute(
                "UPDATE grants SET status = 'refused', ended_at = $3, end_reason = 'consent_refused'
                 WHERE municipality_id = $1 AND id = $2 AND status = 'awaiting_consent'",
                &[&actor.tenant.id(), &grant, &now],
            )
            .await?;
            "refused".to_owned()
        }
    };
    let event = Event::new(action, Outcome::Allow)
        .actor(actor.user_id)
        .subject("grant", grant)
        .property(current.consent.property_id)
        .incident(current.incident)
        .policy(decision.policy_set_hash)
        .details(serde_json::json!({
            "grant_status": grant_status,
            "policies": decision.determining_policies,
        }));
    audit::record(&tx, actor.tenant, &event, now).await?;
    let answered = load(&tx, actor.tenant, grant, false).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(answered.consent)
}

/// Closes the request with `state` (inside `tx`).
async fn settle(
    tx: &impl GenericClient,
    tenant: Tenant,
    current: &Row,
    state: ConsentState,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE grant_consents SET status = $3, decided_at = $4
         WHERE municipality_id = $1 AND grant_id = $2 AND status = 'pending'",
        &[
            &tenant.id(),
            &current.consent.grant_id,
            &state.as_str(),
            &now,
        ],
    )
    .await?;
    Ok(())
}

/// The grant leaves `awaiting_consent` for `status` (`live`: its window starts now and keeps its
/// length; `awaiting_approval`: the queue). A grant that went live mails the homeowner as any
/// grant does. Returns the new status.
async fn go_on(
    tx: &impl GenericClient,
    tenant: Tenant,
    current: &Row,
    status: &str,
    now: DateTime<Utc>,
) -> Result<String, EmergencyError> {
    let status = if status == "live" {
        "live"
    } else {
        "awaiting_approval"
    };
    let moved = tx
        .execute(
            "UPDATE grants g SET status = $3,
                 starts_at = $4::timestamptz, ends_at = $4::timestamptz + (g.ends_at - g.starts_at)
             FROM incidents i
             WHERE g.municipality_id = $1 AND g.id = $2 AND g.status = 'awaiting_consent'
               AND i.id = g.incident_id AND i.closed_at IS NULL",
            &[&tenant.id(), &current.consent.grant_id, &status, &now],
        )
        .await?;
    if moved != 1 {
        return Err(EmergencyError::Conflict(
            "the grant no longer waits for consent".to_owned(),
        ));
    }
    if status == "live" {
        let grant = super::grants::by_id(tx, tenant, current.consent.grant_id).await?;
        let incident = super::incidents::by_id(tx, tenant, grant.incident_id).await?;
        super::grants::notify_granted(tx, tenant, &grant, &incident, &current.consent.address, now)
            .await?;
    }
    Ok(status.to_owned())
}

/// Withdraws the pending request of `grant` (revoked, or its incident closed), inside `tx`.
pub(crate) async fn cancel(
    tx: &impl GenericClient,
    tenant: Tenant,
    grant: Uuid,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE grant_consents SET status = 'cancelled', decided_at = $3
         WHERE municipality_id = $1 AND grant_id = $2 AND status = 'pending'",
        &[&tenant.id(), &grant, &now],
    )
    .await?;
    Ok(())
}

/// Applies the plan's fallback to every request whose deadline has passed unanswered: claims up to
/// [`SWEEP_BATCH`] due rows (`FOR UPDATE SKIP LOCKED`, so replicas never take the same one), and
/// for each, in the same transaction, closes it as `timed_out`, moves its grant on (`proceed`: as
/// an approval would; `second_dispatcher`: to the approval queue), audits `consent.timeout` and
/// mails the homeowner. Returns how many it handled.
pub async fn sweep_timeouts(pool: &Pool, now: DateTime<Utc>) -> Result<usize, EmergencyError> {
    let mut client = pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let due = tx
        .query(
            "SELECT municipality_id, grant_id FROM grant_consents
             WHERE status = 'pending' AND expires_at <= $1
             ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&now, &SWEEP_BATCH],
        )
        .await?;
    for d in &due {
        let tenant = Tenant::assume(d.get(0));
        let current = load(&tx, tenant, d.get(1), true).await?;
        settle(&tx, tenant, &current, ConsentState::TimedOut, now).await?;
        let then = match current.consent.fallback {
            ConsentFallback::Proceed => current.then_status.clone(),
            ConsentFallback::SecondDispatcher => "awaiting_approval".to_owned(),
        };
        let status = match go_on(&tx, tenant, &current, &then, now).await {
            Ok(status) => status,
            // The grant ended meanwhile (revoked, incident closed): nothing to move.
            Err(EmergencyError::Conflict(_)) => "unchanged".to_owned(),
            Err(e) => return Err(e),
        };
        let event = Event::new("consent.timeout", Outcome::Info)
            .subject("grant", current.consent.grant_id)
            .property(current.consent.property_id)
            .incident(current.incident)
            .details(serde_json::json!({
                "fallback": current.consent.fallback.as_str(),
                "grant_status": status,
            }));
        audit::record(&tx, tenant, &event, now).await?;
        let text = format!(
            "You did not answer dispatch's request to let the {} service into your home at {} in \
             time. As your access plan says: {}.",
            current.consent.agency_kind,
            current.consent.address,
            current.consent.fallback.words()
        );
        super::notify_property(
            &tx,
            tenant,
            current.consent.property_id,
            &super::Notice {
                kind: "consent.timeout",
                event: current.consent.grant_id.to_string(),
                subject: "firstkey: no answer in time — your plan's fallback applied",
                text: &text,
            },
            now,
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(due.len())
}

/// Runs [`sweep_timeouts`] every `period` until the task is dropped.
pub async fn run_timeout_sweeper(
    pool: Pool,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
    period: std::time::Duration,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sweep_timeouts(&pool, clock.now()).await {
            tracing::warn!(error = %e, "consent timeout sweep failed");
        }
    }
}

/// The consent part of each grant of an incident that asked for consent: (grant, state, fallback,
/// deadline).
pub async fn of_incident(
    client: &impl GenericClient,
    tenant: Tenant,
    incident: Uuid,
) -> Result<Vec<(Uuid, ConsentState, ConsentFallback, DateTime<Utc>)>, StoreError> {
    Ok(client
        .query(
            "SELECT c.grant_id, c.status, c.fallback, c.expires_at FROM grant_consents c
             JOIN grants g ON g.municipality_id = c.municipality_id AND g.id = c.grant_id
             WHERE c.municipality_id = $1 AND g.incident_id = $2",
            &[&tenant.id(), &incident],
        )
        .await?
        .iter()
        .map(|r| {
            let fallback: String = r.get(2);
            (
                r.get(0),
                ConsentState::parse(r.get(1)),
                ConsentFallback::parse(&fallback).unwrap_or(ConsentFallback::SecondDispatcher),
                r.get(3),
            )
        })
        .collect())
}

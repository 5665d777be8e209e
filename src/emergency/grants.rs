//! Grants of entry: a dispatcher's decision that named responders (or every responder of a unit) may
//! open a property's locks for an incident until a time.
//!
//! The Cedar policy decides ([`crate::policy::Action::CreateGrant`]) against the property's current
//! plan; the grant records that plan version and the deciding policy set's hash, as does its audit
//! entry. Where the plan's rule for the incident's agency kind asks for a second approval, the grant
//! waits (`awaiting_approval`) until another dispatcher approves ([`approve`]); the window starts at
//! approval, and the approval decides the grant again against the plan in force (a plan changed in
//! the meantime so that it no longer admits the grant refuses the approval), recording that version. A grant ends when it is revoked ([`revoke`]) or its incident closes (`incidents::close`);
//! either way its live tokens are revoked at the locks in the same transaction.
//!
//! Responders named must be active responders of an agency of the incident's kind: the plan's rule
//! for that kind is what allowed the grant, so it cannot carry another agency through the door.

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::consent;
use super::incidents::{self, Incident};
use super::{
    EmergencyError, Notice, notify_property, revoke_tokens_of_grant, revoke_tokens_of_responder,
};
use crate::access;
use crate::audit::{self, Event, Outcome};
use crate::auth::Actor;
use crate::crypto::Kek;
use crate::domain::{AgencyKind, Role, Text};
use crate::error::CoreError;
use crate::policy::{ApprovalContext, AuthzRequest, GrantContext, PolicyEngine};
use crate::settings::PublicOrigin;
use crate::store::StoreError;

/// Most responders one grant may name.
pub const MAX_RESPONDERS: usize = 50;

/// Body of a grant request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    /// The property to enter.
    pub property: Uuid,
    /// The responders allowed in (users of the municipality); give these or `unit`, not both.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub responders: Vec<Uuid>,
    /// A unit (`users.unit`, e.g. "Engine 7"): every active responder of it at the time of the grant.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub unit: Option<String>,
    /// How long the grant lasts, in minutes (1 to 1440, and at most the plan's maximum).
    #[schema(minimum = 1, maximum = 1440)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub minutes: u32,
    /// Why entry is needed, 1 to 2000 characters (shown to the homeowner).
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub justification: String,
}

/// Whom a grant names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Named {
    Responders(Vec<Uuid>),
    Unit(String),
}

/// A grant request with every field checked.
#[derive(Debug, Clone)]
pub struct GrantInput {
    property: Uuid,
    named: Named,
    minutes: u32,
    justification: String,
}

impl NewGrant {
    /// Checks every field; the error names it.
    pub fn parse(self) -> Result<GrantInput, EmergencyError> {
        let invalid = |s: &str| EmergencyError::Invalid(s.to_owned());
        let named = match (self.responders.is_empty(), self.unit) {
            (false, None) => {
                let mut ids = self.responders;
                ids.sort_unstable();
                ids.dedup();
                if ids.len() > MAX_RESPONDERS {
                    return Err(invalid("responders: at most 50"));
                }
                Named::Responders(ids)
            }
            (true, Some(unit)) => Named::Unit(
                Text::parse("unit", &unit, 100)
                    .map_err(|e| EmergencyError::Invalid(e.to_string()))?
                    .into_string(),
            ),
            _ => return Err(invalid("give either responders or unit")),
        };
        if !(1..=crate::plans::MAX_GRANT_MINUTES.unsigned_abs()).contains(&self.minutes) {
            return Err(invalid("minutes: 1 to 1440"));
        }
        let justification = Text::parse("justification", &self.justification, 2000)
            .map_err(|e| EmergencyError::Invalid(e.to_string()))?;
        Ok(GrantInput {
            property: self.property,
            named,
            minutes: self.minutes,
            justification: justification.into_string(),
        })
    }
}

/// A grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Grant {
    /// Identifier.
    pub id: Uuid,
    /// Its incident.
    pub incident_id: Uuid,
    /// The property.
    pub property_id: Uuid,
    /// The plan version row it was decided under.
    pub plan_id: Uuid,
    /// That plan's version number.
    pub plan_version: i32,
    /// `awaiting_consent` (the homeowner is asked first), `awaiting_approval`, `live`, `refused`
    /// (the homeowner said no), `revoked` or `ended`.
    pub status: String,
    /// The unit, when granted to a unit.
    pub unit: Option<String>,
    /// The responders named (a unit's members at the time of the grant).
    pub responders: Vec<Uuid>,
    /// The dispatcher who granted.
    pub granted_by: Uuid,
    /// The second dispatcher who approved, where the plan asked for one.
    pub approved_by: Option<Uuid>,
    /// The plan version in force when it was approved (the approval re-decided against it).
    pub approved_plan_version: Option<i32>,
    /// Why.
    pub justification: String,
    /// SHA-256 (hex) of the policy set that decided.
    pub policy_set_hash: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Start of the window (approval time, for grants that needed one).
    pub starts_at: DateTime<Utc>,
    /// End of the window.
    pub ends_at: DateTime<Utc>,
    /// When it was revoked or ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// `revoked`, `incident_closed`, `expired` or `consent_refused`.
    pub end_reason: Option<String>,
}

impl Grant {
    /// Whether tokens may be issued under it at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.status == "live" && self.starts_at <= now && now < self.ends_at
    }
}

const COLUMNS: &str = "g.id, g.incident_id, g.property_id, g.plan_id, ap.version, g.status, g.unit,
    ARRAY(SELECT responder_id FROM grant_responders r WHERE r.grant_id = g.id ORDER BY responder_id),
    g.granted_by, g.approved_by, g.justification, g.policy_set_hash, g.created_at, g.starts_at, g.ends_at,
    g.ended_at, g.end_reason, (SELECT version FROM access_plans p WHERE p.id = g.approved_plan_id)";

fn from_row(row: &tokio_postgres::Row) -> Grant {
    let hash: Vec<u8> = row.get(11);
    Grant {
        id: row.get(0),
        incident_id: row.get(1),
        property_id: row.get(2),
        plan_id: row.get(3),
        plan_version: row.get(4),
        status: row.get(5),
        unit: row.get(6),
        responders: row.get(7),
        granted_by: row.get(8),
        approved_by: row.get(9),
        justification: row.get(10),
        policy_set_hash: hex::encode(hash),
        created_at: row.get(12),
        starts_at: row.get(13),
        ends_at: row.get(14),
        ended_at: row.get(15),
        end_reason: row.get(16),
        approved_plan_version: row.get(17),
    }
}

/// One grant of the tenant.
pub async fn by_id(
    client: &impl GenericClient,
    tenant: crate::store::Tenant,
    id: Uuid,
) -> Result<Grant, EmergencyError> {
    client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM grants g JOIN access_plans ap ON ap.id = g.plan_id
                 WHERE g.municipality_id = $1 AND g.id = $2"
            ),
            &[&tenant.id(), &id],
        )
        .await?
        .map(|r| from_row(&r))
        .ok_or(EmergencyError::NotFound)
}

/// The grants of an incident.
pub async fn of_incident(
    client: &impl GenericClient,
    tenant: crate::store::Tenant,
    incident: Uuid,
) -> Result<Vec<Grant>, EmergencyError> {
    Ok(client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM grants g JOIN access_plans ap ON ap.id = g.plan_id
                 WHERE g.municipality_id = $1 AND g.incident_id = $2 ORDER BY g.created_at"
            ),
            &[&tenant.id(), &incident],
        )
        .await?
        .iter()
        .map(from_row)
        .collect())
}

/// A grant as the responder it names sees it: where, for what, which locks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponderGrant {
    /// The grant.
    pub grant_id: Uuid,
    /// CAD number of the incident.
    pub cad_number: String,
    /// Incident type.
    pub incident_kind: String,
    /// The property.
    pub property_id: Uuid,
    /// Its address.
    pub address: String,
    /// End of the window.
    pub ends_at: DateTime<Utc>,
    /// The property's paired locks.
    pub locks: Vec<GrantLock>,
}

/// A lock a responder may ask a token for.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GrantLock {
    /// Lock id.
    pub id: Uuid,
    /// Its name, e.g. "Front door".
    pub name: String,
}

/// The live grants that name `actor`, with the locks of each property.
pub async fn live_for_responder(
    client: &impl GenericClient,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<Vec<ResponderGrant>, EmergencyError> {
    let rows = client
        .query(
            "SELECT g.id, i.cad_number, i.kind, p.id, p.address, g.ends_at,
                    ARRAY(SELECT l.id FROM locks l WHERE l.property_id = p.id AND l.pairing_state = 'paired' ORDER BY l.name),
                    ARRAY(SELECT l.name FROM locks l WHERE l.property_id = p.id AND l.pairing_state = 'paired' ORDER BY l.name)
             FROM grants g
             JOIN grant_responders r ON r.grant_id = g.id
             JOIN incidents i ON i.id = g.incident_id
             JOIN properties p ON p.id = g.property_id
             WHERE g.municipality_id = $1 AND r.responder_id = $2 AND g.status = 'live'
               AND g.starts_at <= $3 AND g.ends_at > $3 AND i.closed_at IS NULL
             ORDER BY g.ends_at",
            &[&actor.tenant.id(), &actor.user_id, &now],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let ids: Vec<Uuid> = r.get(6);
            let names: Vec<String> = r.get(7);
            ResponderGrant {
                grant_id: r.get(0),
                cad_number: r.get(1),
                incident_kind: r.get(2),
                property_id: r.get(3),
                address: r.get(4),
                ends_at: r.get(5),
                locks: ids
                    .into_iter()
                    .zip(names)
                    .map(|(id, name)| GrantLock { id, name })
                    .collect(),
            }
        })
        .collect())
}

fn denied(e: CoreError) -> EmergencyError {
    match e {
        CoreError::NotFound => EmergencyError::NotFound,
        CoreError::StepUpRequired => EmergencyError::StepUpRequired,
        other => EmergencyError::Denied(other),
    }
}

/// Creates a grant for an open incident, as the policy decides; see the module documentation.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    kek: &Kek,
    actor: &Actor,
    incident_id: Uuid,
    input: &GrantInput,
    origin: &PublicOrigin,
    now: DateTime<Utc>,
) -> Result<Grant, EmergencyError> {
    create_as(
        client,
        engine,
        kek,
        actor,
        incident_id,
        input,
        None,
        origin,
        now,
    )
    .await
}

/// The CAD credential through which a CAD system made a grant on a dispatcher's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViaCad {
    /// `api_credentials.id`.
    pub credential_id: Uuid,
    /// Its public key id.
    pub key_id: String,
}

/// [`create`], made by `actor` directly (`via` = `None`) or by a CAD system in their name: the
/// same policy question and the same checks; the grant and its audit entry also name the
/// credential. Where the plan asks for live consent the grant is `awaiting_consent` and the
/// homeowner is asked in the same transaction ([`consent::ask`]; `origin` makes the mailed link).
/// The justification (free text) goes into the audit entry only as personal details, encrypted
/// under the home's erasable data key (`audit::record_personal`).
#[allow(clippy::too_many_arguments)]
pub async fn create_as(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    kek: &Kek,
    actor: &Actor,
    incident_id: Uuid,
    input: &GrantInput,
    via: Option<&ViaCad>,
    origin: &PublicOrigin,
    now: DateTime<Utc>,
) -> Result<Grant, EmergencyError> {
    if !actor.has(Role::Dispatcher) {
        return Err(EmergencyError::NotFound);
    }
    let tenant = actor.tenant;
    let incident = incidents::by_id(&*client, tenant, incident_id).await?;
    if incident.closed_at.is_some() {
        return Err(EmergencyError::Conflict(
            "the incident is closed".to_owned(),
        ));
    }
    let ctx = access::property(&*client, tenant, input.property)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => EmergencyError::NotFound,
            other => other.into(),
        })?;
    let principal = access::principal(&*client, actor).await?;
    let context = |fresh| GrantContext {
        step_up_fresh: fresh,
        incident_agency_kind: incident.agency_kind,
        incident_type: incident.kind.clone(),
        requested_minutes: input.minutes,
    };
    let decision = access::authorize(client, engine, actor, Some(ctx.property.id), now, |fresh| {
        AuthzRequest::create_grant(&principal, &ctx.attrs, &context(fresh))
    })
    .await
    .map_err(denied)?;
    let plan = ctx.plan.as_ref().ok_or(EmergencyError::NotFound)?;
    let rule = match incident.agency_kind {
        AgencyKind::Fire => &plan.agencies.fire,
        AgencyKind::Ems => &plan.agencies.ems,
        AgencyKind::Police => &plan.agencies.police,
        AgencyKind::Other => return Err(EmergencyError::NotFound),
    };
    let then_status = if rule.second_approval {
        "awaiting_approval"
    } else {
        "live"
    };
    let status = if plan.live_consent.is_some() {
        "awaiting_consent"
    } else {
        then_status
    };
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let responders = resolve(&tx, actor, &incident, &input.named).await?;
    let id = Uuid::new_v4();
    let unit = match &input.named {
        Named::Unit(u) => Some(u.as_str()),
        Named::Responders(_) => None,
    };
    let ends_at = now + Duration::minutes(i64::from(input.minutes));
    tx.execute(
        "INSERT INTO grants (id, municipality_id, incident_id, property_id, plan_id, granted_by, unit,
             justification, status, policy_set_hash, created_at, starts_at, ends_at, cad_credential_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13)",
        &[
            &id,
            &tenant.id(),
            &incident.id,
            &ctx.property.id,
            &plan.id,
            &actor.user_id,
            &unit,
            &input.justification,
            &status,
            &decision.policy_set_hash.to_vec(),
            &now,
            &ends_at,
            &via.map(|v| v.credential_id),
        ],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    for responder in &responders {
        tx.execute(
            "INSERT INTO grant_responders (municipality_id, grant_id, responder_id) VALUES ($1, $2, $3)",
            &[&tenant.id(), &id, responder],
        )
        .await?;
    }
    let mut details = serde_json::json!({
        "plan_id": plan.id,
        "plan_version": plan.version,
        "status": status,
        "minutes": input.minutes,
        "responders": responders.len(),
        "unit": unit,
        "policies": decision.determining_policies,
    });
    if let (Some(via), Some(map)) = (via, details.as_object_mut()) {
        map.insert("cad_key_id".to_owned(), via.key_id.clone().into());
    }
    if let (Some(rule), Some(map)) = (plan.live_consent, details.as_object_mut()) {
        map.insert(
            "consent".to_owned(),
            serde_json::json!({
                "timeout_seconds": rule.timeout_seconds,
                "fallback": rule.fallback.as_str(),
            }),
        );
    }
    let event = Event::new("grant.create", Outcome::Allow)
        .actor(actor.user_id)
        .subject("grant", id)
        .property(ctx.property.id)
        .incident(incident.id)
        .policy(decision.policy_set_hash)
        .details(details);
    let personal = serde_json::json!({ "justification": input.justification });
    audit::record_personal(&tx, tenant, &event, &personal, kek, now).await?;
    let grant = by_id(&tx, tenant, id).await?;
    if grant.status == "live" {
        notify_granted(&tx, tenant, &grant, &incident, &ctx.property.address, now).await?;
    }
    if let Some(rule) = plan.live_consent {
        consent::ask(
            &tx,
            tenant,
            &consent::Asked {
                grant: grant.id,
                property: grant.property_id,
                address: &ctx.property.address,
                agency_kind: incident.agency_kind.as_str(),
                incident_kind: &incident.kind,
                cad_number: &incident.cad_number,
                justification: &grant.justification,
                minutes: input.minutes,
                then_status,
            },
            rule,
            origin,
            now,
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(grant)
}

/// The responders a grant names: each must be an active responder of an agency of the incident's
/// kind that is not retired.
async fn resolve(
    tx: &impl GenericClient,
    actor: &Actor,
    incident: &Incident,
    named: &Named,
) -> Result<Vec<Uuid>, EmergencyError> {
    const RESPONDERS: &str = "SELECT u.id FROM users u
        JOIN user_roles r ON r.user_id = u.id AND r.role = 'responder'
        JOIN agencies a ON a.id = u.agency_id AND a.municipality_id = u.municipality_id
        WHERE u.municipality_id = $1 AND u.status = 'active' AND a.kind = $2
          AND a.retired_at IS NULL";
    let kind = incident.agency_kind.as_str();
    match named {
        Named::Responders(ids) => {
            let found: Vec<Uuid> = tx
                .query(
                    &format!("{RESPONDERS} AND u.id = ANY($3) ORDER BY u.id"),
                    &[&actor.tenant.id(), &kind, ids],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if found.len() != ids.len() {
                return Err(EmergencyError::Invalid(format!(
                    "responders: each must be an active responder of a {kind} agency"
                )));
            }
            Ok(found)
        }
        Named::Unit(unit) => {
            let found: Vec<Uuid> = tx
                .query(
                    &format!("{RESPONDERS} AND u.unit = $3 ORDER BY u.id LIMIT 51"),
                    &[&actor.tenant.id(), &kind, unit],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if found.is_empty() || found.len() > MAX_RESPONDERS {
                return Err(EmergencyError::Invalid(format!(
                    "unit: needs 1 to 50 active responders of a {kind} agency"
                )));
            }
            Ok(found)
        }
    }
}

pub(crate) async fn notify_granted(
    tx: &impl GenericClient,
    tenant: crate::store::Tenant,
    grant: &Grant,
    incident: &Incident,
    address: &str,
    now: DateTime<Utc>,
) -> Result<(), EmergencyError> {
    let who = match &grant.unit {
        Some(unit) => format!("unit {unit}"),
        None => format!("{} named responder(s)", grant.responders.len()),
    };
    let text = format!(
        "Emergency entry to {address} was granted to {who} of the {} service for incident {} ({}), \
         until {}.\nReason given by dispatch: {}\n\nEvery use of this entry is recorded; you will be told \
         when it ends.",
        incident.agency_kind.as_str(),
        incident.cad_number,
        incident.kind,
        grant.ends_at.format("%Y-%m-%d %H:%M UTC"),
        grant.justification,
    );
    notify_property(
        tx,
        tenant,
        grant.property_id,
        &Notice {
            kind: "grant.created",
            event: grant.id.to_string(),
            subject: "firstkey: emergency entry to your home was granted",
            text: &text,
        },
        now,
    )
    .await?;
    Ok(())
}

/// A second dispatcher approves a grant awaiting approval; it goes live with its window starting now.
/// The creator can never approve their own grant.
///
/// Approval is a decision of its own about the home as it is now: besides `approve_grant` (four
/// eyes, step-up), the grant is decided again — the same `create_grant` question the creator asked —
/// against the plan in force. If the homeowner has since changed the plan so that it no longer admits
/// this grant, the approval is refused (a `policy.deny` audit entry) and the grant keeps waiting. The
/// approved grant records the plan version it was approved under.
pub async fn approve(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    actor: &Actor,
    grant_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Grant, EmergencyError> {
    if !actor.has(Role::Dispatcher) {
        return Err(EmergencyError::NotFound);
    }
    let tenant = actor.tenant;
    let grant = by_id(&*client, tenant, grant_id).await?;
    if grant.status != "awaiting_approval" {
        return Err(not_awaiting());
    }
    let incident = incidents::by_id(&*client, tenant, grant.incident_id).await?;
    let ctx = access::property(&*client, tenant, grant.property_id).await?;
    let principal = access::principal(&*client, actor).await?;
    let decision = access::authorize(client, engine, actor, Some(ctx.property.id), now, |fresh| {
        AuthzRequest::approve_grant(
            &principal,
            &ctx.attrs,
            ApprovalContext {
                step_up_fresh: fresh,
                grant_creator: grant.granted_by,
            },
        )
    })
    .await
    .map_err(|e| {
        if grant.granted_by == actor.user_id {
            EmergencyError::Forbidden
        } else {
            denied(e)
        }
    })?;
    let minutes =
        u32::try_from((grant.ends_at - grant.starts_at).num_minutes()).unwrap_or(u32::MAX);
    let context = |fresh| GrantContext {
        step_up_fresh: fresh,
        incident_agency_kind: incident.agency_kind,
        incident_type: incident.kind.clone(),
        requested_minutes: minutes,
    };
    let redecision =
        access::authorize(client, engine, actor, Some(ctx.property.id), now, |fresh| {
            AuthzRequest::create_grant(&principal, &ctx.attrs, &context(fresh))
        })
        .await
        .map_err(|e| match e {
            CoreError::StepUpRequired => EmergencyError::StepUpRequired,
            _ => EmergencyError::Conflict(
                "the access plan in force no longer allows this grant".to_owned(),
            ),
        })?;
    let plan = ctx
        .plan
        .as_ref()
        .ok_or_else(|| EmergencyError::Conflict("the property has no access plan".to_owned()))?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    // Hold off plan edits (they lock the property row for update) until this commits, and make sure
    // the plan decided on is still the one in force.
    let current: Option<Uuid> = tx
        .query_one(
            "SELECT (SELECT ap.id FROM access_plans ap WHERE ap.property_id = p.id ORDER BY ap.version DESC LIMIT 1)
             FROM properties p WHERE p.municipality_id = $1 AND p.id = $2 FOR SHARE OF p",
            &[&tenant.id(), &grant.property_id],
        )
        .await?
        .get(0);
    if current != Some(plan.id) {
        return Err(EmergencyError::Conflict(
            "the access plan changed while approving; approve again".to_owned(),
        ));
    }
    let updated = tx
        .execute(
            "UPDATE grants g SET status = 'live', approved_by = $3, approved_plan_id = $5,
                 starts_at = $4::timestamptz, ends_at = $4::timestamptz + (g.ends_at - g.starts_at)
             FROM incidents i
             WHERE g.municipality_id = $1 AND g.id = $2 AND g.status = 'awaiting_approval'
               AND g.granted_by <> $3 AND i.id = g.incident_id AND i.closed_at IS NULL",
            &[&tenant.id(), &grant_id, &actor.user_id, &now, &plan.id],
        )
        .await?;
    if updated != 1 {
        return Err(not_awaiting());
    }
    let grant = by_id(&tx, tenant, grant_id).await?;
    let event = Event::new("grant.approve", Outcome::Allow)
        .actor(actor.user_id)
        .subject("grant", grant.id)
        .property(grant.property_id)
        .incident(grant.incident_id)
        .policy(decision.policy_set_hash)
        .details(serde_json::json!({
            "granted_by": grant.granted_by,
            "policies": decision.determining_policies,
            "plan_id": plan.id,
            "plan_version": plan.version,
            "plan_policies": redecision.determining_policies,
        }));
    audit::record(&tx, tenant, &event, now).await?;
    notify_granted(&tx, tenant, &grant, &incident, &ctx.property.address, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(grant)
}

fn not_awaiting() -> EmergencyError {
    EmergencyError::Conflict("the grant is not awaiting approval".to_owned())
}

/// A dispatcher revokes a grant that is live or awaiting approval: its live tokens are revoked at
/// the locks, and the homeowner is told (if it had gone live).
pub async fn revoke(
    client: &mut deadpool_postgres::Object,
    actor: &Actor,
    grant_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Grant, EmergencyError> {
    if !actor.has(Role::Dispatcher) {
        return Err(EmergencyError::NotFound);
    }
    let tenant = actor.tenant;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let row = tx
        .query_opt(
            "SELECT status FROM grants WHERE municipality_id = $1 AND id = $2 FOR UPDATE",
            &[&tenant.id(), &grant_id],
        )
        .await?
        .ok_or(EmergencyError::NotFound)?;
    let status: String = row.get(0);
    if !matches!(
        status.as_str(),
        "live" | "awaiting_approval" | "awaiting_consent"
    ) {
        return Err(EmergencyError::Conflict(
            "the grant has already ended".to_owned(),
        ));
    }
    tx.execute(
        "UPDATE grants SET status = 'revoked', ended_at = $3, end_reason = 'revoked'
         WHERE municipality_id = $1 AND id = $2",
        &[&tenant.id(), &grant_id, &now],
    )
    .await?;
    consent::cancel(&tx, tenant, grant_id, now).await?;
    let revoked = revoke_tokens_of_grant(&tx, tenant, grant_id, now).await?;
    let grant = by_id(&tx, tenant, grant_id).await?;
    let incident = incidents::by_id(&tx, tenant, grant.incident_id).await?;
    let event = Event::new("grant.revoke", Outcome::Info)
        .actor(actor.user_id)
        .subject("grant", grant.id)
        .property(grant.property_id)
        .incident(grant.incident_id)
        .details(serde_json::json!({ "tokens_revoked": revoked }));
    audit::record(&tx, tenant, &event, now).await?;
    if status == "live" {
        let text = format!(
            "Dispatch revoked the emergency entry to your home for incident {} ({}). Any unused entry \
             token was withdrawn from your locks.",
            incident.cad_number, incident.kind
        );
        notify_property(
            &tx,
            tenant,
            grant.property_id,
            &Notice {
                kind: "grant.revoked",
                event: grant.id.to_string(),
                subject: "firstkey: emergency entry to your home was revoked",
                text: &text,
            },
            now,
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(grant)
}

/// The account of `responder` was disabled by `by` (inside the caller's transaction): every live or
/// waiting grant naming it in which no other active responder is named ends as a revocation does
/// (its tokens revoked at the locks, audited, the homeowner told if it was live); grants that name
/// active colleagues stay theirs. Then every token still live for `responder` is revoked at its
/// lock. Returns how many grants ended and how many tokens were revoked.
pub(crate) async fn end_for_disabled_responder(
    tx: &impl GenericClient,
    tenant: crate::store::Tenant,
    by: Uuid,
    responder: Uuid,
    now: DateTime<Utc>,
) -> Result<(usize, usize), StoreError> {
    let rows = tx
        .query(
            "SELECT g.id, g.status, g.property_id, g.incident_id FROM grants g
             JOIN grant_responders gr ON gr.municipality_id = g.municipality_id AND gr.grant_id = g.id
             WHERE g.municipality_id = $1 AND gr.responder_id = $2
               AND g.status IN ('live', 'awaiting_approval', 'awaiting_consent')
               AND NOT EXISTS (
                   SELECT 1 FROM grant_responders o
                   JOIN users u ON u.municipality_id = o.municipality_id AND u.id = o.responder_id
                   WHERE o.municipality_id = g.municipality_id AND o.grant_id = g.id
                     AND o.responder_id <> $2 AND u.status = 'active')
             ORDER BY g.id
             FOR UPDATE OF g",
            &[&tenant.id(), &responder],
        )
        .await?;
    let mut tokens = 0;
    for row in &rows {
        let (grant_id, status): (Uuid, String) = (row.get(0), row.get(1));
        let (property, incident): (Uuid, Uuid) = (row.get(2), row.get(3));
        tx.execute(
            "UPDATE grants SET status = 'revoked', ended_at = $3, end_reason = 'revoked'
             WHERE municipality_id = $1 AND id = $2",
            &[&tenant.id(), &grant_id, &now],
        )
        .await?;
        super::consent::cancel(tx, tenant, grant_id, now).await?;
        let revoked = revoke_tokens_of_grant(tx, tenant, grant_id, now).await?;
        tokens += revoked;
        let event = Event::new("grant.revoke", Outcome::Info)
            .actor(by)
            .subject("grant", grant_id)
            .property(property)
            .incident(incident)
            .details(serde_json::json!({
                "tokens_revoked": revoked,
                "reason": "responder_disabled",
            }));
        audit::record(tx, tenant, &event, now).await?;
        if status == "live" {
            notify_property(
                tx,
                tenant,
                property,
                &Notice {
                    kind: "grant.revoked",
                    event: grant_id.to_string(),
                    subject: "firstkey: emergency entry to your home was revoked",
                    text: "The emergency entry to your home was withdrawn: the responder's account \
                           was disabled. Any unused entry token was withdrawn from your locks.",
                },
                now,
            )
            .await?;
        }
    }
    tokens += revoke_tokens_of_responder(tx, tenant, responder, now).await?;
    Ok((rows.len(), tokens))
}

/// A grant as a dispatcher of the municipality, or a responder it names, may see it.
pub async fn view(
    client: &impl GenericClient,
    actor: &Actor,
    grant_id: Uuid,
) -> Result<Grant, EmergencyError> {
    let grant = by_id(client, actor.tenant, grant_id).await?;
    let visible = actor.has(Role::Dispatcher)
        || (actor.has(Role::Responder) && grant.responders.contains(&actor.user_id));
    if visible {
        Ok(grant)
    } else {
        Err(EmergencyError::NotFound)
    }
}

/// A responder a grant may name for an incident of an agency kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eligible {
    /// The user.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Their unit, if any.
    pub unit: Option<String>,
}

/// The active responders of agencies of `kind` (the ones [`create`] accepts), by unit and name, at
/// most 500.
pub async fn eligible_responders(
    client: &impl GenericClient,
    tenant: crate::store::Tenant,
    kind: AgencyKind,
) -> Result<Vec<Eligible>, EmergencyError> {
    Ok(client
        .query(
            "SELECT u.id, u.display_name, u.unit FROM users u
             JOIN user_roles r ON r.user_id = u.id AND r.role = 'responder'
             JOIN agencies a ON a.id = u.agency_id AND a.municipality_id = u.municipality_id
             WHERE u.municipality_id = $1 AND u.status = 'active' AND a.kind = $2
               AND a.retired_at IS NULL
             ORDER BY u.unit NULLS LAST, u.display_name, u.id LIMIT 500",
            &[&tenant.id(), &kind.as_str()],
        )
        .await?
        .iter()
        .map(|r| Eligible {
            id: r.get(0),
            name: r.get(1),
            unit: r.get(2),
        })
        .collect())
}

/// A grant waiting for a second approval, with where and for what.
#[derive(Debug, Clone)]
pub struct Awaiting {
    /// The grant.
    pub grant: Grant,
    /// Its incident's CAD number.
    pub cad_number: String,
    /// The property's address.
    pub address: String,
}

/// The tenant's grants awaiting approval on open incidents, oldest first, at most 200.
pub async fn awaiting_approval(
    client: &impl GenericClient,
    tenant: crate::store::Tenant,
) -> Result<Vec<Awaiting>, EmergencyError> {
    Ok(client
        .query(
            &format!(
                "SELECT {COLUMNS}, i.cad_number, p.address FROM grants g
                 JOIN access_plans ap ON ap.id = g.plan_id
                 JOIN incidents i ON i.id = g.incident_id
                 JOIN properties p ON p.id = g.property_id
                 WHERE g.municipality_id = $1 AND g.status = 'awaiting_approval' AND i.closed_at IS NULL
                 ORDER BY g.created_at, g.id LIMIT 200"
            ),
            &[&tenant.id()],
        )
        .await?
        .iter()
        .map(|r| Awaiting {
            grant: from_row(r),
            cad_number: r.get(18),
            address: r.get(19),
        })
        .collect())
}

/// How many of the tenant's grants on open incidents await approval.
pub async fn awaiting_approval_count(
    client: &impl GenericClient,
    tenant: crate::store::Tenant,
) -> Result<i64, EmergencyError> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM grants g JOIN incidents i ON i.id = g.incident_id
             WHERE g.municipality_id = $1 AND g.status = 'awaiting_approval' AND i.closed_at IS NULL",
            &[&tenant.id()],
        )
        .await?
        .get(0))
}

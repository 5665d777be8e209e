//! Dispatch incidents: opened by a dispatcher or a CAD system, closed the same ways. Closing an
//! incident ends its grants (`end_reason = incident_closed`), revokes their live tokens at the locks
//! and tells the homeowners, in the closing transaction.
//!
//! Who may open or close is the caller's business (`http::dispatch` checks the dispatcher role; the
//! CAD path authenticates the municipality's credential); this module records who did it, and holds
//! one rule itself: a dispatcher opens incidents only for their own agency (the CAD system, the
//! municipality's record of calls, may open them for any of its agencies).
//!
//! An incident concerns a property when a grant for it is made, or when a dispatcher of the
//! incident's agency links the two explicitly ([`link_property`], step-up, audited). Such a tie is
//! what lets that agency's dispatchers reveal the home's responder notes; an address match is not.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{EmergencyError, Notice, notify_property, revoke_tokens_of_grant};
use crate::audit::{self, Event, Outcome};
use crate::auth::Actor;
use crate::domain::{AgencyKind, Role, Text};
use crate::store::{StoreError, Tenant};

/// Body of an incident opening (dispatcher or CAD).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewIncident {
    /// The CAD incident number, unique in the municipality: 1 to 64 of `A-Z a-z 0-9 - _ . /`.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._/-]+$")]
    pub cad_number: String,
    /// Incident type as plans name them (`fire`, `medical`, …): 1 to 64 lower-case letters or `_`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z_]+$")]
    pub kind: String,
    /// Where it is, 1 to 500 characters (not only white space).
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub address: String,
    /// The agency handling it (an agency of the municipality).
    pub agency: Uuid,
}

/// An incident parsed at the boundary: every field within its limits.
#[derive(Debug, Clone)]
pub struct IncidentInput {
    cad_number: String,
    kind: String,
    address: String,
    agency: Uuid,
}

impl NewIncident {
    /// Checks every field; the error names it.
    pub fn parse(self) -> Result<IncidentInput, EmergencyError> {
        let cad_number = parse_cad_number(&self.cad_number)?;
        let kind = self.kind.trim();
        if kind.is_empty()
            || kind.len() > 64
            || !kind.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            return Err(EmergencyError::Invalid(
                "kind: 1 to 64 lower-case letters or underscores".to_owned(),
            ));
        }
        let address = Text::parse("address", &self.address, 500)
            .map_err(|e| EmergencyError::Invalid(e.to_string()))?;
        Ok(IncidentInput {
            cad_number,
            kind: kind.to_owned(),
            address: address.into_string(),
            agency: self.agency,
        })
    }
}

/// Checks a CAD number: 1 to 64 characters of `A-Z a-z 0-9 - _ . /` (it travels in tokens).
pub fn parse_cad_number(text: &str) -> Result<String, EmergencyError> {
    let text = text.trim();
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(text.to_owned())
    } else {
        Err(EmergencyError::Invalid(
            "cad_number: 1 to 64 characters of A-Z a-z 0-9 - _ . /".to_owned(),
        ))
    }
}

/// An incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Incident {
    /// Identifier.
    pub id: Uuid,
    /// CAD incident number.
    pub cad_number: String,
    /// Incident type.
    pub kind: String,
    /// Address.
    pub address: String,
    /// Handling agency.
    pub agency_id: Uuid,
    /// Kind of the handling agency (decides which plan rule applies).
    pub agency_kind: AgencyKind,
    /// When it was opened.
    pub opened_at: DateTime<Utc>,
    /// When it was closed; `None` while open.
    pub closed_at: Option<DateTime<Utc>>,
}

/// Who acted on an incident.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A signed-in dispatcher.
    User(Uuid),
    /// A CAD system, by its credential's key id.
    Cad(String),
    /// An alarm, by its id, acting under the homeowner's standing alarm rule.
    Alarm(Uuid),
}

impl Origin {
    fn user(&self) -> Option<Uuid> {
        match self {
            Self::User(u) => Some(*u),
            Self::Cad(_) | Self::Alarm(_) => None,
        }
    }

    fn event(&self, action: &'static str, outcome: Outcome) -> Event {
        match self {
            Self::User(u) => Event::new(action, outcome).actor(*u),
            Self::Cad(key) => Event::new(action, outcome)
                .details(serde_json::json!({ "via": "cad", "key_id": key })),
            Self::Alarm(alarm) => Event::new(action, outcome)
                .details(serde_json::json!({ "via": "alarm", "alarm_id": alarm })),
        }
    }
}

const COLUMNS: &str =
    "i.id, i.cad_number, i.kind, i.address, i.agency_id, a.kind, i.opened_at, i.closed_at";

fn from_row(row: &tokio_postgres::Row) -> Result<Incident, EmergencyError> {
    let kind: String = row.get(5);
    Ok(Incident {
        id: row.get(0),
        cad_number: row.get(1),
        kind: row.get(2),
        address: row.get(3),
        agency_id: row.get(4),
        agency_kind: AgencyKind::parse(&kind)
            .map_err(|e| StoreError::Conflict(format!("stored agency kind: {e}")))?,
        opened_at: row.get(6),
        closed_at: row.get(7),
    })
}

/// The agency a user belongs to now (not as the session remembers it).
async fn agency_of(
    client: &impl GenericClient,
    tenant: Tenant,
    user: Uuid,
) -> Result<Option<Uuid>, EmergencyError> {
    Ok(client
        .query_opt(
            "SELECT agency_id FROM users WHERE municipality_id = $1 AND id = $2",
            &[&tenant.id(), &user],
        )
        .await?
        .and_then(|r| r.get(0)))
}

/// Opens an incident (audited `incident.open`). A CAD number already used in the municipality is a
/// conflict; an agency of another municipality, or a retired one, is invalid; a dispatcher naming an
/// agency other than their own is refused (`Forbidden`), so no one can make an incident "of"
/// another agency.
pub async fn open(
    tx: &impl GenericClient,
    tenant: Tenant,
    origin: &Origin,
    input: &IncidentInput,
    now: DateTime<Utc>,
) -> Result<Incident, EmergencyError> {
    if let Origin::User(user) = origin
        && agency_of(tx, tenant, *user).await? != Some(input.agency)
    {
        return Err(EmergencyError::Forbidden);
    }
    let id = Uuid::new_v4();
    let inserted = tx
        .execute(
            "INSERT INTO incidents (id, municipality_id, agency_id, cad_number, kind, address, opened_by, opened_at)
             SELECT $1, $2, a.id, $4, $5, $6, $7, $8 FROM agencies a
             WHERE a.municipality_id = $2 AND a.id = $3 AND a.retired_at IS NULL",
            &[
                &id,
                &tenant.id(),
                &input.agency,
                &input.cad_number,
                &input.kind,
                &input.address,
                &origin.user(),
                &now,
            ],
        )
        .await
        .map_err(crate::store::conflict_or_query)
        .map_err(|e| match e {
            StoreError::Conflict(_) => EmergencyError::Conflict(
                "an incident with this CAD number already exists".to_owned(),
            ),
            other => other.into(),
        })?;
    if inserted != 1 {
        let retired = crate::store::exists(
            tx,
            "SELECT 1 FROM agencies WHERE municipality_id = $1 AND id = $2 AND retired_at IS NOT NULL",
            &[&tenant.id(), &input.agency],
        )
        .await?;
        return Err(EmergencyError::Invalid(if retired {
            "agency: the agency is retired".to_owned()
        } else {
            "agency: not an agency of this municipality".to_owned()
        }));
    }
    let incident = by_id(tx, tenant, id).await?;
    let event = origin
        .event("incident.open", Outcome::Info)
        .subject("incident", id)
        .incident(id);
    audit::record(tx, tenant, &event, now).await?;
    Ok(incident)
}

/// One incident of the tenant.
pub async fn by_id(
    client: &impl GenericClient,
    tenant: Tenant,
    id: Uuid,
) -> Result<Incident, EmergencyError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM incidents i JOIN agencies a ON a.id = i.agency_id
                 WHERE i.municipality_id = $1 AND i.id = $2"
            ),
            &[&tenant.id(), &id],
        )
        .await?
        .ok_or(EmergencyError::NotFound)?;
    from_row(&row)
}

/// The incident with a CAD number.
pub async fn by_cad_number(
    client: &impl GenericClient,
    tenant: Tenant,
    cad_number: &str,
) -> Result<Incident, EmergencyError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM incidents i JOIN agencies a ON a.id = i.agency_id
                 WHERE i.municipality_id = $1 AND i.cad_number = $2"
            ),
            &[&tenant.id(), &cad_number],
        )
        .await?
        .ok_or(EmergencyError::NotFound)?;
    from_row(&row)
}

/// The tenant's open incidents, newest first.
pub async fn open_incidents(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<Vec<Incident>, EmergencyError> {
    client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM incidents i JOIN agencies a ON a.id = i.agency_id
                 WHERE i.municipality_id = $1 AND i.closed_at IS NULL ORDER BY i.opened_at DESC LIMIT 500"
            ),
            &[&tenant.id()],
        )
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// Closes an open incident: every grant of it that is live or awaiting approval ends
/// (`incident_closed`), their live tokens are revoked at the locks, and homeowners of live grants
/// are told. A closed incident is a conflict.
pub async fn close(
    tx: &impl GenericClient,
    tenant: Tenant,
    origin: &Origin,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Incident, EmergencyError> {
    let row = tx
        .query_opt(
            "SELECT closed_at FROM incidents WHERE municipality_id = $1 AND id = $2 FOR UPDATE",
            &[&tenant.id(), &id],
        )
        .await?
        .ok_or(EmergencyError::NotFound)?;
    if row.get::<_, Option<DateTime<Utc>>>(0).is_some() {
        return Err(EmergencyError::Conflict(
            "the incident is already closed".to_owned(),
        ));
    }
    tx.execute(
        "UPDATE incidents SET closed_at = $3 WHERE municipality_id = $1 AND id = $2",
        &[&tenant.id(), &id, &now],
    )
    .await?;
    let incident = by_id(tx, tenant, id).await?;
    let grants = tx
        .query(
            "SELECT g.id, g.property_id, g.status, p.address FROM grants g
             JOIN properties p ON p.id = g.property_id
             WHERE g.municipality_id = $1 AND g.incident_id = $2
               AND g.status IN ('live', 'awaiting_approval', 'awaiting_consent')
             ORDER BY g.id FOR UPDATE OF g",
            &[&tenant.id(), &id],
        )
        .await?;
    for grant in &grants {
        let grant_id: Uuid = grant.get(0);
        let property: Uuid = grant.get(1);
        let status: String = grant.get(2);
        let address: String = grant.get(3);
        tx.execute(
            "UPDATE grants SET status = 'ended', ended_at = $3, end_reason = 'incident_closed'
             WHERE municipality_id = $1 AND id = $2",
            &[&tenant.id(), &grant_id, &now],
        )
        .await?;
        super::consent::cancel(tx, tenant, grant_id, now).await?;
        let revoked = revoke_tokens_of_grant(tx, tenant, grant_id, now).await?;
        let event = origin
            .event("grant.end", Outcome::Info)
            .subject("grant", grant_id)
            .property(property)
            .incident(id);
        let event = Event {
            details: merge(
                &event.details,
                serde_json::json!({ "reason": "incident_closed", "tokens_revoked": revoked }),
            ),
            ..event
        };
        audit::record(tx, tenant, &event, now).await?;
        if status == "live" {
            let text = format!(
                "Incident {} is closed. The emergency entry granted for {address} has ended; any \
                 unused entry token was withdrawn from your locks.",
                incident.cad_number
            );
            notify_property(
                tx,
                tenant,
                property,
                &Notice {
                    kind: "grant.ended",
                    event: grant_id.to_string(),
                    subject: "firstkey: emergency entry to your home has ended",
                    text: &text,
                },
                now,
            )
            .await?;
        }
    }
    let event = origin
        .event("incident.close", Outcome::Info)
        .subject("incident", id)
        .incident(id);
    let event = Event {
        details: merge(
            &event.details,
            serde_json::json!({ "grants_ended": grants.len() }),
        ),
        ..event
    };
    audit::record(tx, tenant, &event, now).await?;
    Ok(incident)
}

/// An explicit tie between an incident and a property.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct IncidentLink {
    /// The incident.
    pub incident_id: Uuid,
    /// The property it concerns.
    pub property_id: Uuid,
    /// The dispatcher who linked them.
    pub linked_by: Option<Uuid>,
    /// When.
    pub linked_at: DateTime<Utc>,
}

/// Body of an incident↔property link.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLink {
    /// The property the incident concerns (a property of the municipality).
    pub property: Uuid,
}

/// A dispatcher of the incident's own agency, with a fresh step-up, ties an open incident to a
/// property (audited `incident.link_property`). Returns the link and whether it is new; linking twice
/// changes nothing.
pub async fn link_property(
    tx: &impl GenericClient,
    actor: &Actor,
    incident_id: Uuid,
    property_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(IncidentLink, bool), EmergencyError> {
    if !actor.has(Role::Dispatcher) {
        return Err(EmergencyError::NotFound);
    }
    let tenant = actor.tenant;
    let incident = by_id(tx, tenant, incident_id).await?;
    if agency_of(tx, tenant, actor.user_id).await? != Some(incident.agency_id) {
        return Err(EmergencyError::Forbidden);
    }
    if !actor.stepped_up(now) {
        return Err(EmergencyError::StepUpRequired);
    }
    if incident.closed_at.is_some() {
        return Err(EmergencyError::Conflict(
            "the incident is closed".to_owned(),
        ));
    }
    crate::store::properties::property(tx, tenant, property_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => EmergencyError::NotFound,
            other => other.into(),
        })?;
    let inserted = tx
        .query_opt(
            "INSERT INTO incident_properties (municipality_id, incident_id, property_id, linked_by, linked_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (incident_id, property_id) DO NOTHING
             RETURNING linked_by, linked_at",
            &[&tenant.id(), &incident_id, &property_id, &actor.user_id, &now],
        )
        .await?;
    let created = inserted.is_some();
    let row = match inserted {
        Some(row) => row,
        None => {
            tx.query_one(
                "SELECT linked_by, linked_at FROM incident_properties
                 WHERE municipality_id = $1 AND incident_id = $2 AND property_id = $3",
                &[&tenant.id(), &incident_id, &property_id],
            )
            .await?
        }
    };
    if created {
        let event = Event::new("incident.link_property", Outcome::Info)
            .actor(actor.user_id)
            .subject("incident", incident_id)
            .property(property_id)
            .incident(incident_id);
        audit::record(tx, tenant, &event, now).await?;
    }
    Ok((
        IncidentLink {
            incident_id,
            property_id,
            linked_by: row.get(0),
            linked_at: row.get(1),
        },
        created,
    ))
}

fn merge(a: &serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    let mut out = a.as_object().cloned().unwrap_or_default();
    if let serde_json::Value::Object(b) = b {
        out.extend(b);
    }
    serde_json::Value::Object(out)
}

//! Alarms: a monitoring centre, a smart-home hub or the lock's own detector says something is wrong
//! at a home, and the homeowner's standing rule for that kind of alarm decides what happens.
//!
//! **Sources.** A monitoring provider calls `POST /api/v1/monitoring/alarms`, signed and idempotent
//! exactly like the CAD API ([`crate::emergency::cad`]: a municipal API credential, HMAC over the
//! request, an `Idempotency-Key`); the alarm names the provider's *account*, which the homeowner
//! linked to the property ([`link_account`]). A lock reports an alarm from a connected detector over
//! its channel (`AgentMessage::Alarm`, `PROTOCOL.md`). Both end in [`raise`].
//!
//! **Rules.** Per alarm kind (smoke, CO, medical, intrusion) the homeowner chooses: nothing; open an
//! incident for dispatch (handled by the agency the rule names); or open an incident and grant that
//! agency entry for N minutes at once. Opening and granting are each a Cedar decision
//! (`open_alarm_incident`, `grant_on_alarm`, `policies/alarms.cedar`) asked for the owner, whose
//! standing rule acts; the shipped set never grants police entry on an alarm. No rule for the kind,
//! or a denied decision: an audit entry and nothing else.
//!
//! **Bursts.** Alarms of one property and kind are serialised (a transaction-scoped advisory lock);
//! an alarm within [`BURST_WINDOW`] of one that opened a still-open incident is recorded against that
//! incident and opens nothing.
//!
//! **Repeats.** An alarm the source gave an id ([`Alarm::source_id`], the lock's alarm id) that was
//! recorded before, at any time, is answered with what it did then and changes nothing: a lock that
//! sends the same alarm again after the burst window (or after the incident was closed) opens no
//! second incident.
//!
//! Everything an alarm causes (alarm row, incident, grant, audit entries, mail) commits in the
//! caller's transaction.

pub mod api;
pub mod bench;

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{self, Event, Outcome};
use crate::domain::Text;
use crate::emergency::incidents::{self, NewIncident, Origin};
use crate::emergency::{EmergencyError, Notice, notify_property};
use crate::policy::{AlarmContext, AuthzRequest, PolicyEngine, PrincipalAttrs};
use crate::store::{StoreError, Tenant};

/// Alarms of the same property and kind this close together make one incident.
pub const BURST_WINDOW: Duration = Duration::minutes(10);

/// Most responders an automatic grant names (every active responder of the agency, up to this).
const MAX_AUTO_RESPONDERS: i64 = 50;

/// What went off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// A smoke detector.
    Smoke,
    /// A carbon monoxide detector.
    Co,
    /// A medical alert (pendant, fall detector).
    Medical,
    /// An intrusion alarm.
    Intrusion,
}

impl AlarmKind {
    /// Every kind.
    pub const ALL: [Self; 4] = [Self::Smoke, Self::Co, Self::Medical, Self::Intrusion];

    /// The stored and policy name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Smoke => "smoke",
            Self::Co => "co",
            Self::Medical => "medical",
            Self::Intrusion => "intrusion",
        }
    }

    /// The kind of the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The incident type an alarm of this kind opens (as plans name incident types).
    pub fn incident_type(self) -> &'static str {
        match self {
            Self::Smoke => "smoke_alarm",
            Self::Co => "co_alarm",
            Self::Medical => "medical_alarm",
            Self::Intrusion => "intrusion_alarm",
        }
    }

    /// The kind in words ("carbon monoxide alarm").
    pub fn words(self) -> &'static str {
        match self {
            Self::Smoke => "smoke alarm",
            Self::Co => "carbon monoxide alarm",
            Self::Medical => "medical alert",
            Self::Intrusion => "intrusion alarm",
        }
    }
}

impl From<firstkey_agent::protocol::channel::DetectorKind> for AlarmKind {
    fn from(kind: firstkey_agent::protocol::channel::DetectorKind) -> Self {
        use firstkey_agent::protocol::channel::DetectorKind as D;
        match kind {
            D::Smoke => Self::Smoke,
            D::CarbonMonoxide => Self::Co,
            D::Medical => Self::Medical,
            D::Intrusion => Self::Intrusion,
        }
    }
}

/// What the homeowner's rule does with an alarm of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Record it (audit) and nothing more.
    Nothing,
    /// Open an incident for the named agency's dispatch to act on.
    Incident,
    /// Open an incident and grant the named agency entry for `minutes` at once.
    IncidentAndGrant,
}

impl RuleAction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Nothing => "nothing",
            Self::Incident => "incident",
            Self::IncidentAndGrant => "incident_and_grant",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Nothing, Self::Incident, Self::IncidentAndGrant]
            .into_iter()
            .find(|a| a.as_str() == text)
    }
}

/// One rule as the homeowner writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlarmRule {
    /// The alarm kind this rule is for.
    pub kind: AlarmKind,
    /// What to do.
    pub action: RuleAction,
    /// The agency that handles the incident (and is granted entry); required unless `nothing`.
    #[serde(default)]
    pub agency: Option<Uuid>,
    /// Minutes of entry, 1 to 1440 (and at most the plan's maximum); only with `incident_and_grant`.
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    #[schema(minimum = 1, maximum = 1440)]
    pub minutes: Option<u32>,
}

/// Body of `PUT /api/v1/properties/{id}/alarm-rules`: the whole set (kinds not listed have no rule).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlarmRules {
    /// At most one rule per kind.
    #[schema(max_items = 4)]
    pub rules: Vec<AlarmRule>,
}

impl AlarmRules {
    /// Checks the set; the error names the problem.
    pub fn validate(&self) -> Result<(), EmergencyError> {
        let invalid = |s: String| Err(EmergencyError::Invalid(s));
        for (i, rule) in self.rules.iter().enumerate() {
            if self.rules.iter().take(i).any(|r| r.kind == rule.kind) {
                return invalid(format!("rules: {} listed twice", rule.kind.as_str()));
            }
            match (rule.action, rule.agency, rule.minutes) {
                (RuleAction::Nothing, None, None) | (RuleAction::Incident, Some(_), None) => {}
                (RuleAction::IncidentAndGrant, Some(_), Some(m)) if (1..=1440).contains(&m) => {}
                (RuleAction::IncidentAndGrant, Some(_), Some(_)) => {
                    return invalid("rules: minutes must be 1 to 1440".to_owned());
                }
                _ => {
                    return invalid(format!(
                        "rules: {}: `nothing` takes no agency or minutes, `incident` an agency, \
                         `incident_and_grant` an agency and minutes",
                        rule.kind.as_str()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Replaces the property's alarm rules (the caller has authorized `edit_plan`); audited. The plan
/// is written once more as its next version recording the new rules, so every version names the
/// rules in force with it (a property without a plan records them in its first version). Returns
/// that version.
pub async fn set_rules(
    tx: &impl GenericClient,
    kek: &crate::crypto::Kek,
    tenant: Tenant,
    actor: Uuid,
    property: Uuid,
    rules: &AlarmRules,
    now: DateTime<Utc>,
) -> Result<Option<i32>, EmergencyError> {
    rules.validate()?;
    tx.execute(
        "DELETE FROM alarm_rules WHERE municipality_id = $1 AND property_id = $2",
        &[&tenant.id(), &property],
    )
    .await?;
    for rule in &rules.rules {
        let minutes = rule.minutes.map(|m| i32::try_from(m).unwrap_or(i32::MAX));
        let inserted = tx
            .execute(
                "INSERT INTO alarm_rules (municipality_id, property_id, kind, action, agency_id, minutes, updated_by, updated_at)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8
                 WHERE $5::uuid IS NULL OR EXISTS (SELECT 1 FROM agencies WHERE municipality_id = $1 AND id = $5)",
                &[
                    &tenant.id(),
                    &property,
                    &rule.kind.as_str(),
                    &rule.action.as_str(),
                    &rule.agency,
                    &minutes,
                    &actor,
                    &now,
                ],
            )
            .await?;
        if inserted != 1 {
            return Err(EmergencyError::Invalid(
                "rules: agency: not an agency of this municipality".to_owned(),
            ));
        }
    }
    let summary: Vec<_> = rules
        .rules
        .iter()
        .map(|r| serde_json::json!({ "kind": r.kind, "action": r.action, "agency": r.agency, "minutes": r.minutes }))
        .collect();
    let version =
        crate::store::properties::rewrite_plan_with_rules(tx, kek, tenant, property, actor, now)
            .await?;
    let event = Event::new("alarm.rules_set", Outcome::Info)
        .actor(actor)
        .property(property)
        .details(serde_json::json!({ "rules": summary, "plan_version": version }));
    audit::record(tx, tenant, &event, now).await?;
    Ok(version)
}

/// The property's alarm rules.
pub async fn rules(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
) -> Result<Vec<AlarmRule>, EmergencyError> {
    let rows = client
        .query(
            "SELECT kind, action, agency_id, minutes FROM alarm_rules
             WHERE municipality_id = $1 AND property_id = $2 ORDER BY kind",
            &[&tenant.id(), &property],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let bad =
                || EmergencyError::Store(StoreError::Conflict("stored alarm rule".to_owned()));
            Ok(AlarmRule {
                kind: AlarmKind::parse(r.get(0)).ok_or_else(bad)?,
                action: RuleAction::parse(r.get(1)).ok_or_else(bad)?,
                agency: r.get(2),
                minutes: r
                    .get::<_, Option<i32>>(3)
                    .and_then(|m| u32::try_from(m).ok()),
            })
        })
        .collect()
}

/// Body of `POST /api/v1/properties/{id}/monitoring-accounts`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMonitoringLink {
    /// The monitoring provider's API key id (as the municipality issued it).
    #[schema(min_length = 8, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    pub key_id: String,
    /// The homeowner's account number at the provider, 1 to 100 characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub account: String,
}

/// A monitoring account linked to a property.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MonitoringLink {
    /// Row id.
    pub id: Uuid,
    /// The provider's key id.
    pub key_id: String,
    /// The account at the provider.
    pub account: String,
}

/// Links a monitoring account to a property (the caller has authorized `edit_plan`); audited.
/// An account already linked (to any property) is a conflict; an unknown key id is invalid.
pub async fn link_account(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Uuid,
    property: Uuid,
    input: &NewMonitoringLink,
    now: DateTime<Utc>,
) -> Result<MonitoringLink, EmergencyError> {
    let account = Text::parse("account", &input.account, 100)
        .map_err(|e| EmergencyError::Invalid(e.to_string()))?
        .into_string();
    let key_id = Text::parse("key_id", &input.key_id, 64)
        .map_err(|e| EmergencyError::Invalid(e.to_string()))?
        .into_string();
    let id = Uuid::new_v4();
    let inserted = tx
        .execute(
            "INSERT INTO monitoring_accounts (id, municipality_id, property_id, key_id, account, created_by, created_at)
             SELECT $1, $2, $3, c.key_id, $5, $6, $7 FROM api_credentials c
             WHERE c.key_id = $4 AND c.municipality_id = $2 AND c.revoked_at IS NULL
             ON CONFLICT (key_id, account) DO NOTHING",
            &[&id, &tenant.id(), &property, &key_id, &account, &actor, &now],
        )
        .await?;
    if inserted != 1 {
        let known = tx
            .query_opt(
                "SELECT 1 FROM api_credentials WHERE key_id = $1 AND municipality_id = $2 AND revoked_at IS NULL",
                &[&key_id, &tenant.id()],
            )
            .await?
            .is_some();
        return Err(if known {
            EmergencyError::Conflict("this monitoring account is already linked".to_owned())
        } else {
            EmergencyError::Invalid(
                "key_id: not a monitoring provider of this municipality".to_owned(),
            )
        });
    }
    let event = Event::new("alarm.account_link", Outcome::Info)
        .actor(actor)
        .subject("monitoring_account", id)
        .property(property)
        .details(serde_json::json!({ "key_id": key_id }));
    audit::record(tx, tenant, &event, now).await?;
    Ok(MonitoringLink {
        id,
        key_id,
        account,
    })
}

/// Where an alarm came from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A monitoring provider, by its API key id; `confirmed` when its operator verified the alarm.
    Monitoring {
        /// The credential's key id.
        key_id: String,
        /// Confirmed by the monitoring centre.
        confirmed: bool,
    },
    /// The lock's own detector input (never confirmed).
    Lock(Uuid),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Self::Monitoring { .. } => "monitoring",
            Self::Lock(_) => "lock",
        }
    }

    fn reference(&self) -> String {
        match self {
            Self::Monitoring { key_id, .. } => key_id.clone(),
            Self::Lock(id) => id.to_string(),
        }
    }

    fn confirmed(&self) -> bool {
        matches!(
            self,
            Self::Monitoring {
                confirmed: true,
                ..
            }
        )
    }
}

/// An alarm to act on, its fields checked.
#[derive(Debug, Clone)]
pub struct Alarm {
    /// The property it is for.
    pub property: Uuid,
    /// What went off.
    pub kind: AlarmKind,
    /// Where the report came from.
    pub source: Source,
    /// The id the source gave this alarm (a lock's `AgentMessage::Alarm.id`): offered again, at
    /// any time, it is recognised and acts no more.
    pub source_id: Option<Uuid>,
    /// The detector's name as the source gives it (`Kitchen`), 1 to 100 characters.
    pub detector: Option<String>,
}

/// What an alarm did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AlarmOutcome {
    /// The alarm's id (`None` when no rule applied and only an audit entry was written).
    pub alarm: Option<Uuid>,
    /// The incident it opened, or the one it was a duplicate of.
    pub incident: Option<Uuid>,
    /// The grant it made.
    pub grant: Option<Uuid>,
    /// It repeated an alarm that already opened an incident.
    pub duplicate: bool,
    /// What the rule said (`none` when the property has no rule for this kind).
    pub rule: String,
}

/// The owner of a property as the policy sees them.
async fn owner(
    client: &impl GenericClient,
    tenant: Tenant,
    owner: Uuid,
) -> Result<PrincipalAttrs, StoreError> {
    let row = client
        .query_opt(
            "SELECT u.status, array_agg(r.role) FILTER (WHERE r.role IS NOT NULL)
             FROM users u LEFT JOIN user_roles r ON r.user_id = u.id
             WHERE u.municipality_id = $1 AND u.id = $2 GROUP BY u.status",
            &[&tenant.id(), &owner],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    let status: String = row.get(0);
    let roles: Vec<String> = row.get::<_, Option<Vec<String>>>(1).unwrap_or_default();
    Ok(PrincipalAttrs {
        id: owner,
        municipality: tenant.id(),
        roles: roles
            .iter()
            .filter_map(|r| crate::domain::Role::parse(r).ok())
            .collect(),
        agency_kind: None,
        agency: None,
        active: status == "active",
    })
}

/// Acts on an alarm inside `tx`, as the module documentation describes.
pub async fn raise(
    tx: &impl GenericClient,
    engine: &PolicyEngine,
    tenant: Tenant,
    alarm: &Alarm,
    now: DateTime<Utc>,
) -> Result<AlarmOutcome, EmergencyError> {
    let detector = match &alarm.detector {
        Some(d) => Some(
            Text::parse("detector", d, 100)
                .map_err(|e| EmergencyError::Invalid(e.to_string()))?
                .into_string(),
        ),
        None => None,
    };
    let kind = alarm.kind;
    // One alarm of a property and kind at a time, so a burst makes one incident.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 12))",
        &[&format!("alarm:{}:{}", alarm.property, kind.as_str())],
    )
    .await?;
    let base_details = serde_json::json!({
        "kind": kind.as_str(),
        "source": alarm.source.name(),
        "source_ref": alarm.source.reference(),
        "confirmed": alarm.source.confirmed(),
    });
    let base = |extra: serde_json::Value| {
        let mut details = base_details.clone();
        if let (Some(d), Some(e)) = (details.as_object_mut(), extra.as_object()) {
            d.extend(e.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Event::new("alarm.received", Outcome::Info)
            .property(alarm.property)
            .details(details)
    };
    if let Some(source_id) = alarm.source_id {
        let seen = tx
            .query_opt(
                "SELECT id, incident_id, grant_id FROM alarms
                 WHERE municipality_id = $1 AND source = $2 AND source_ref = $3 AND source_alarm_id = $4",
                &[
                    &tenant.id(),
                    &alarm.source.name(),
                    &alarm.source.reference(),
                    &source_id,
                ],
            )
            .await?;
        if let Some(row) = seen {
            return Ok(AlarmOutcome {
                alarm: Some(row.get(0)),
                incident: row.get(1),
                grant: row.get(2),
                duplicate: true,
                rule: "repeat".to_owned(),
            });
        }
    }
    let recent = tx
        .query_opt(
            "SELECT a.incident_id FROM alarms a JOIN incidents i ON i.id = a.incident_id
             WHERE a.municipality_id = $1 AND a.property_id = $2 AND a.kind = $3
               AND a.incident_id IS NOT NULL AND a.received_at > $4 AND i.closed_at IS NULL
             ORDER BY a.received_at DESC LIMIT 1",
            &[
                &tenant.id(),
                &alarm.property,
                &kind.as_str(),
                &(now - BURST_WINDOW),
            ],
        )
        .await?;
    if let Some(row) = recent {
        let incident: Uuid = row.get(0);
        let id = insert_alarm(
            tx,
            tenant,
            alarm,
            detector.as_deref(),
            Some(incident),
            None,
            true,
            now,
        )
        .await?;
        let event = base(serde_json::json!({ "duplicate": true }))
            .subject("alarm", id)
            .incident(incident);
        audit::record(tx, tenant, &event, now).await?;
        return Ok(AlarmOutcome {
            alarm: Some(id),
            incident: Some(incident),
            grant: None,
            duplicate: true,
            rule: "duplicate".to_owned(),
        });
    }
    let rule = tx
        .query_opt(
            "SELECT r.action, r.agency_id, r.minutes, a.kind FROM alarm_rules r
             LEFT JOIN agencies a ON a.id = r.agency_id AND a.municipality_id = r.municipality_id
             WHERE r.municipality_id = $1 AND r.property_id = $2 AND r.kind = $3",
            &[&tenant.id(), &alarm.property, &kind.as_str()],
        )
        .await?;
    let Some(rule) = rule else {
        let event = base(serde_json::json!({ "rule": "none" }));
        audit::record(tx, tenant, &event, now).await?;
        return Ok(AlarmOutcome {
            alarm: None,
            incident: None,
            grant: None,
            duplicate: false,
            rule: "none".to_owned(),
        });
    };
    let action: String = rule.get(0);
    let agency: Option<Uuid> = rule.get(1);
    let minutes = rule
        .get::<_, Option<i32>>(2)
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(0);
    let agency_kind: String = rule
        .get::<_, Option<String>>(3)
        .unwrap_or_else(|| "none".to_owned());
    let ctx = crate::access::property(tx, tenant, alarm.property).await?;
    let principal = owner(tx, tenant, ctx.property.owner_id).await?;
    let context = AlarmContext {
        alarm_kind: kind.as_str().to_owned(),
        rule_action: action.clone(),
        agency_kind: agency_kind.clone(),
        minutes,
        confirmed: alarm.source.confirmed(),
    };
    let decision = engine.decide(&AuthzRequest::open_alarm_incident(
        &principal, &ctx.attrs, &context,
    ));
    let Some(agency) = agency.filter(|_| decision.allowed) else {
        let event = base(serde_json::json!({
            "rule": action,
            "policies": decision.determining_policies,
        }))
        .policy(decision.policy_set_hash);
        audit::record(tx, tenant, &event, now).await?;
        return Ok(AlarmOutcome {
            alarm: None,
            incident: None,
            grant: None,
            duplicate: false,
            rule: action,
        });
    };
    let alarm_id = Uuid::new_v4();
    let origin = Origin::Alarm(alarm_id);
    let cad_number = format!("ALM-{}", &alarm_id.simple().to_string()[..12]);
    let input = NewIncident {
        cad_number,
        kind: kind.incident_type().to_owned(),
        address: ctx.property.address.clone(),
        agency,
    }
    .parse()?;
    let incident = incidents::open(tx, tenant, &origin, &input, now).await?;
    let mut grant = None;
    let mut grant_policies = Vec::new();
    if action == RuleAction::IncidentAndGrant.as_str() {
        let decision = engine.decide(&AuthzRequest::grant_on_alarm(
            &principal, &ctx.attrs, &context,
        ));
        grant_policies.clone_from(&decision.determining_policies);
        if let (true, Some(plan)) = (decision.allowed, ctx.plan.as_ref()) {
            let id = Uuid::new_v4();
            let ends_at = now + Duration::minutes(i64::from(minutes));
            let justification = format!(
                "Automatic entry on a {} (the homeowner's standing alarm rule)",
                kind.words()
            );
            tx.execute(
                "INSERT INTO grants (id, municipality_id, incident_id, property_id, plan_id, granted_by,
                     justification, status, policy_set_hash, created_at, starts_at, ends_at, alarm_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'live', $8, $9, $9, $10, $11)",
                &[
                    &id,
                    &tenant.id(),
                    &incident.id,
                    &ctx.property.id,
                    &plan.id,
                    &ctx.property.owner_id,
                    &justification,
                    &decision.policy_set_hash.to_vec(),
                    &now,
                    &ends_at,
                    &alarm_id,
                ],
            )
            .await?;
            let named = tx
                .execute(
                    "INSERT INTO grant_responders (municipality_id, grant_id, responder_id)
                     SELECT u.municipality_id, $2, u.id FROM users u
                     JOIN user_roles r ON r.user_id = u.id AND r.role = 'responder'
                     WHERE u.municipality_id = $1 AND u.agency_id = $3 AND u.status = 'active'
                     ORDER BY u.id LIMIT $4",
                    &[&tenant.id(), &id, &agency, &MAX_AUTO_RESPONDERS],
                )
                .await?;
            let event = Event::new("grant.create", Outcome::Allow)
                .subject("grant", id)
                .property(ctx.property.id)
                .incident(incident.id)
                .policy(decision.policy_set_hash)
                .details(serde_json::json!({
                    "via": "alarm",
                    "alarm_id": alarm_id,
                    "plan_id": plan.id,
                    "plan_version": plan.version,
                    "status": "live",
                    "minutes": minutes,
                    "responders": named,
                    "policies": decision.determining_policies,
                }));
            audit::record(tx, tenant, &event, now).await?;
            grant = Some(id);
        } else {
            let event = Event::new("policy.deny", Outcome::Deny)
                .property(ctx.property.id)
                .incident(incident.id)
                .policy(decision.policy_set_hash)
                .details(serde_json::json!({
                    "action": "grant_on_alarm",
                    "alarm_id": alarm_id,
                    "policies": decision.determining_policies,
                }));
            audit::record(tx, tenant, &event, now).await?;
        }
    }
    tx.execute(
        "INSERT INTO alarms (id, municipality_id, property_id, kind, source, source_ref, confirmed, detector,
             received_at, incident_id, grant_id, source_alarm_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        &[
            &alarm_id,
            &tenant.id(),
            &alarm.property,
            &kind.as_str(),
            &alarm.source.name(),
            &alarm.source.reference(),
            &alarm.source.confirmed(),
            &detector,
            &now,
            &incident.id,
            &grant,
            &alarm.source_id,
        ],
    )
    .await?;
    let mut event = base(serde_json::json!({
        "rule": action,
        "grant": grant,
        "policies": decision.determining_policies,
        "grant_policies": grant_policies,
    }))
    .subject("alarm", alarm_id)
    .incident(incident.id)
    .policy(decision.policy_set_hash);
    event.outcome = Outcome::Allow;

    audit::record(tx, tenant, &event, now).await?;
    let entry = match grant {
        Some(_) => format!(
            " The {} service was granted entry for {minutes} minutes, as your alarm rule says; every use is recorded.",
            agency_kind
        ),
        None => " Dispatch has been alerted; nobody was granted entry automatically.".to_owned(),
    };
    let text = format!(
        "A {} at {} was reported by {} at {}{}.{entry}\nIncident: {}",
        kind.words(),
        ctx.property.address,
        match &alarm.source {
            Source::Monitoring {
                confirmed: true, ..
            } => "your monitoring centre (confirmed)",
            Source::Monitoring { .. } => "your monitoring centre",
            Source::Lock(_) => "your lock's detector input",
        },
        now.format("%Y-%m-%d %H:%M UTC"),
        detector
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default(),
        incident.cad_number,
    );
    notify_property(
        tx,
        tenant,
        ctx.property.id,
        &Notice {
            kind: "alarm.raised",
            event: alarm_id.to_string(),
            subject: "firstkey: an alarm went off at your home",
            text: &text,
        },
        now,
    )
    .await?;
    Ok(AlarmOutcome {
        alarm: Some(alarm_id),
        incident: Some(incident.id),
        grant,
        duplicate: false,
        rule: action,
    })
}

#[allow(clippy::too_many_arguments)]
async fn insert_alarm(
    tx: &impl GenericClient,
    tenant: Tenant,
    alarm: &Alarm,
    detector: Option<&str>,
    incident: Option<Uuid>,
    grant: Option<Uuid>,
    duplicate: bool,
    now: DateTime<Utc>,
) -> Result<Uuid, EmergencyError> {
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO alarms (id, municipality_id, property_id, kind, source, source_ref, confirmed, detector,
             received_at, incident_id, grant_id, duplicate, source_alarm_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &id,
            &tenant.id(),
            &alarm.property,
            &alarm.kind.as_str(),
            &alarm.source.name(),
            &alarm.source.reference(),
            &alarm.source.confirmed(),
            &detector,
            &now,
            &incident,
            &grant,
            &duplicate,
            &alarm.source_id,
        ],
    )
    .await?;
    Ok(id)
}

/// An alarm as the dispatcher sees it on an incident.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlarmView {
    /// Identifier.
    pub id: Uuid,
    /// What went off.
    pub kind: AlarmKind,
    /// `monitoring` or `lock`.
    pub source: String,
    /// Confirmed by the monitoring centre.
    pub confirmed: bool,
    /// The detector's name, if given.
    pub detector: Option<String>,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// A repeat within the burst window.
    pub duplicate: bool,
}

/// The alarms recorded against an incident, oldest first (at most 100).
pub async fn of_incident(
    client: &impl GenericClient,
    tenant: Tenant,
    incident: Uuid,
) -> Result<Vec<AlarmView>, EmergencyError> {
    let rows = client
        .query(
            "SELECT id, kind, source, confirmed, detector, received_at, duplicate FROM alarms
             WHERE municipality_id = $1 AND incident_id = $2 ORDER BY received_at, id LIMIT 100",
            &[&tenant.id(), &incident],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(AlarmView {
                id: r.get(0),
                kind: AlarmKind::parse(r.get(1)).ok_or_else(|| {
                    EmergencyError::Store(StoreError::Conflict("stored alarm kind".to_owned()))
                })?,
                source: r.get(2),
                confirmed: r.get(3),
                detector: r.get(4),
                received_at: r.get(5),
                duplicate: r.get(6),
            })
        })
        .collect()
}

/// An alarm as its homeowner's page lists it.
#[derive(Debug, Clone)]
pub struct HomeAlarm {
    /// The alarm.
    pub view: AlarmView,
    /// The CAD number of the incident it opened or repeated.
    pub incident: Option<String>,
    /// Whether it granted entry.
    pub granted: bool,
}

/// The property's alarms, newest first (at most `limit`, up to 100).
pub async fn of_property(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    limit: i64,
) -> Result<Vec<HomeAlarm>, EmergencyError> {
    let rows = client
        .query(
            "SELECT a.id, a.kind, a.source, a.confirmed, a.detector, a.received_at, a.duplicate,
                    i.cad_number, a.grant_id IS NOT NULL
             FROM alarms a LEFT JOIN incidents i ON i.id = a.incident_id
             WHERE a.municipality_id = $1 AND a.property_id = $2
             ORDER BY a.received_at DESC, a.id LIMIT $3",
            &[&tenant.id(), &property, &limit.clamp(1, 100)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(HomeAlarm {
                view: AlarmView {
                    id: r.get(0),
                    kind: AlarmKind::parse(r.get(1)).ok_or_else(|| {
                        EmergencyError::Store(StoreError::Conflict("stored alarm kind".to_owned()))
                    })?,
                    source: r.get(2),
                    confirmed: r.get(3),
                    detector: r.get(4),
                    received_at: r.get(5),
                    duplicate: r.get(6),
                },
                incident: r.get(7),
                granted: r.get(8),
            })
        })
        .collect()
}

/// The monitoring accounts linked to a property, oldest first.
pub async fn accounts(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
) -> Result<Vec<MonitoringLink>, EmergencyError> {
    Ok(client
        .query(
            "SELECT id, key_id, account FROM monitoring_accounts
             WHERE municipality_id = $1 AND property_id = $2 ORDER BY created_at, id LIMIT 50",
            &[&tenant.id(), &property],
        )
        .await?
        .iter()
        .map(|r| MonitoringLink {
            id: r.get(0),
            key_id: r.get(1),
            account: r.get(2),
        })
        .collect())
}

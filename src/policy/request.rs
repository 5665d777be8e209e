//! Typed authorization requests. Callers describe who asks, for what, about which property or log,
//! with plain Rust values; this module alone turns them into Cedar entities, a context and a request,
//! always through cedar's value API (never by formatting policy text), so no outside value can change
//! the meaning of a policy.

use std::collections::{BTreeSet, HashMap, HashSet};

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
    Schema,
};
use uuid::Uuid;

use crate::domain::{AgencyKind, Role};

/// The actions the policy set decides, one per authorization question the server asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// See a property's plan summary (which agencies may enter, no notes).
    ViewPlanSummary,
    /// Decrypt and read a property's responder notes.
    RevealNotes,
    /// Write a new version of a property's access plan.
    EditPlan,
    /// Pair, rename or retire a property's locks.
    ManageLocks,
    /// Create a grant of entry to a property for an incident.
    CreateGrant,
    /// Approve a grant that awaits a second dispatcher.
    ApproveGrant,
    /// Ask for an override token for a lock of a property.
    RequestToken,
    /// Read audit entries (of the whole municipality, or about one property).
    ReadAudit,
    /// See the municipality's administration (agencies, units, users, invitations, credentials).
    ViewAdministration,
    /// Change the municipality's administration.
    Administer,
    /// See the trusted parties of a property.
    ViewTrustedParties,
    /// Invite, edit, pause or revoke a trusted party of a property.
    ManageTrustedParties,
    /// A trusted party asks for a token.
    RequestTrustedToken,
    /// The homeowner opens a lock of the property remotely.
    RemoteUnlock,
    /// Issue a one-time keypad code for a lock of a property under a live grant.
    IssueKeypadCode,
    /// Open an incident because an alarm went off (asked for the owner's standing alarm rule).
    OpenAlarmIncident,
    /// Grant an agency entry at once because an alarm went off (the owner's standing rule).
    GrantOnAlarm,
    /// See a grant's request for the homeowner's live consent.
    ViewConsent,
    /// Approve or refuse a grant's request for live consent.
    DecideConsent,
}

impl Action {
    /// Every action, in schema order.
    pub const ALL: [Self; 19] = [
        Self::ViewPlanSummary,
        Self::RevealNotes,
        Self::EditPlan,
        Self::ManageLocks,
        Self::CreateGrant,
        Self::ApproveGrant,
        Self::RequestToken,
        Self::ReadAudit,
        Self::ViewAdministration,
        Self::Administer,
        Self::ViewTrustedParties,
        Self::ManageTrustedParties,
        Self::RequestTrustedToken,
        Self::RemoteUnlock,
        Self::IssueKeypadCode,
        Self::OpenAlarmIncident,
        Self::GrantOnAlarm,
        Self::ViewConsent,
        Self::DecideConsent,
    ];

    /// The action's id in the Cedar schema (`Action::"…"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ViewPlanSummary => "view_plan_summary",
            Self::RevealNotes => "reveal_notes",
            Self::EditPlan => "edit_plan",
            Self::ManageLocks => "manage_locks",
            Self::CreateGrant => "create_grant",
            Self::ApproveGrant => "approve_grant",
            Self::RequestToken => "request_token",
            Self::ReadAudit => "read_audit",
            Self::ViewAdministration => "view_administration",
            Self::Administer => "administer",
            Self::ViewTrustedParties => "view_trusted_parties",
            Self::ManageTrustedParties => "manage_trusted_parties",
            Self::RequestTrustedToken => "request_trusted_token",
            Self::RemoteUnlock => "remote_unlock",
            Self::IssueKeypadCode => "issue_keypad_code",
            Self::OpenAlarmIncident => "open_alarm_incident",
            Self::GrantOnAlarm => "grant_on_alarm",
            Self::ViewConsent => "view_consent",
            Self::DecideConsent => "decide_consent",
        }
    }
}

/// The user asking, as the server knows them from its database (not from the request).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalAttrs {
    /// The user's id.
    pub id: Uuid,
    /// The user's municipality.
    pub municipality: Uuid,
    /// The user's roles.
    pub roles: Vec<Role>,
    /// The kind of the user's agency; `None` for users outside any agency.
    pub agency_kind: Option<AgencyKind>,
    /// The user's agency; `None` for users outside any agency.
    #[serde(default)]
    pub agency: Option<Uuid>,
    /// `false` when the account is pending or disabled.
    pub active: bool,
}

/// What an access plan says about one agency kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgencyRule {
    /// The agency may be granted entry at all.
    pub allowed: bool,
    /// Incident types for which entry may be granted.
    pub incident_types: BTreeSet<String>,
    /// A second dispatcher must approve a grant.
    pub second_approval: bool,
}

/// The current access-plan version of a property, as the policy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanAttrs {
    /// Conditions for the fire service.
    pub fire: AgencyRule,
    /// Conditions for emergency medical services.
    pub ems: AgencyRule,
    /// Conditions for police.
    pub police: AgencyRule,
    /// Longest grant the homeowner accepts, in minutes.
    pub max_grant_minutes: u32,
}

impl PlanAttrs {
    /// The plan of a property that has none yet: no agency may enter.
    pub fn closed() -> Self {
        Self::default()
    }

    /// The policy's view of a stored plan's agency rules and maximum grant duration. A maximum
    /// below zero (which the database refuses anyway) becomes 0, so no grant fits.
    pub fn from_plan(agencies: &crate::plans::AgencyRules, max_grant_minutes: i32) -> Self {
        Self {
            fire: AgencyRule::from(&agencies.fire),
            ems: AgencyRule::from(&agencies.ems),
            police: AgencyRule::from(&agencies.police),
            max_grant_minutes: u32::try_from(max_grant_minutes).unwrap_or(0),
        }
    }
}

impl From<&crate::plans::AgencyRule> for AgencyRule {
    fn from(rule: &crate::plans::AgencyRule) -> Self {
        Self {
            allowed: rule.allowed,
            incident_types: rule.incident_types.iter().cloned().collect(),
            second_approval: rule.second_approval,
        }
    }
}

/// A property, with its owner and its current plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropertyAttrs {
    /// The property's id.
    pub id: Uuid,
    /// The property's municipality.
    pub municipality: Uuid,
    /// The homeowner who registered it.
    pub owner: Uuid,
    /// Its current access plan ([`PlanAttrs::closed`] when it has none).
    pub plan: PlanAttrs,
}

/// A municipality's audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLogAttrs {
    /// The municipality whose log it is (also the log's entity id).
    pub municipality: Uuid,
}

/// A municipality, as the object of its administration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MunicipalityAttrs {
    /// The municipality (also the entity id).
    pub municipality: Uuid,
}

/// Context of actions that need nothing beyond the session's step-up state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepUpContext {
    /// The session holds a WebAuthn assertion from the last few minutes.
    pub step_up_fresh: bool,
}

/// Context of [`Action::RevealNotes`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevealContext {
    /// The session holds a WebAuthn assertion from the last few minutes.
    pub step_up_fresh: bool,
    /// The principal is named in a live grant for this property.
    pub named_in_live_grant: bool,
    /// The agencies that have an open incident tied to this property: by a grant for it, or by an
    /// explicit incident↔property link (an address match is no tie).
    #[serde(default)]
    pub incident_agencies: BTreeSet<Uuid>,
}

/// Context of [`Action::CreateGrant`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantContext {
    /// The session holds a WebAuthn assertion from the last few minutes.
    pub step_up_fresh: bool,
    /// Kind of the agency handling the incident.
    pub incident_agency_kind: AgencyKind,
    /// The incident's type (as listed in the plan's `incident_types`).
    pub incident_type: String,
    /// Requested duration of the grant, in minutes.
    pub requested_minutes: u32,
}

/// Context of [`Action::ApproveGrant`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalContext {
    /// The session holds a WebAuthn assertion from the last few minutes.
    pub step_up_fresh: bool,
    /// The user who created the grant awaiting approval.
    pub grant_creator: Uuid,
}

/// Context of [`Action::RequestToken`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenContext {
    /// The session holds a WebAuthn assertion from the last few minutes.
    pub step_up_fresh: bool,
    /// The principal is named in a live grant for this property.
    pub named_in_live_grant: bool,
}

/// Context of `request_trusted_token`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedTokenContext {
    /// A WebAuthn assertion within the last few minutes.
    pub step_up_fresh: bool,
    /// An active trusted party of the property for the lock, inside its window and schedule, with
    /// an entry left today.
    pub trusted_now: bool,
}

/// Context of [`Action::IssueKeypadCode`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeypadCodeContext {
    /// The session holds a WebAuthn assertion from the last few minutes.
    pub step_up_fresh: bool,
    /// The grant is live (approved, started, not ended or revoked) and its incident open.
    pub grant_live: bool,
}

/// Context of [`Action::OpenAlarmIncident`] and [`Action::GrantOnAlarm`]: the alarm and the
/// owner's rule for its kind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmContext {
    /// `smoke`, `co`, `medical` or `intrusion`.
    pub alarm_kind: String,
    /// The rule: `nothing`, `incident` or `incident_and_grant`.
    pub rule_action: String,
    /// Kind of the agency the rule names (`fire`, `ems`, `police`, `other`), or `none`.
    pub agency_kind: String,
    /// Minutes of entry the rule grants (0 for none).
    pub minutes: u32,
    /// The monitoring centre confirmed the alarm.
    pub confirmed: bool,
}

/// What a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A property (with its plan).
    Property(PropertyAttrs),
    /// A municipality's audit log.
    AuditLog(AuditLogAttrs),
    /// A municipality, for its administration.
    Municipality(MunicipalityAttrs),
}

/// One authorization question, built only by the typed constructors below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzRequest {
    pub(super) principal: PrincipalAttrs,
    pub(super) action: Action,
    pub(super) resource: Resource,
    context: Vec<(&'static str, ContextValue)>,
}

/// A context value; converted to a Cedar value only in [`AuthzRequest::to_cedar`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum ContextValue {
    Bool(bool),
    Long(i64),
    Str(String),
    Strs(Vec<String>),
    User(Uuid),
}

impl AuthzRequest {
    /// May `principal` see the plan summary of `property`?
    pub fn view_plan_summary(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: StepUpContext,
    ) -> Self {
        Self::on_property(principal, Action::ViewPlanSummary, property, step_up(ctx))
    }

    /// May `principal` read the responder notes of `property`?
    pub fn reveal_notes(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: RevealContext,
    ) -> Self {
        let context = vec![
            ("step_up_fresh", ContextValue::Bool(ctx.step_up_fresh)),
            (
                "named_in_live_grant",
                ContextValue::Bool(ctx.named_in_live_grant),
            ),
            (
                "incident_agencies",
                ContextValue::Strs(ctx.incident_agencies.iter().map(Uuid::to_string).collect()),
            ),
        ];
        Self::on_property(principal, Action::RevealNotes, property, context)
    }

    /// May `principal` write a new plan version for `property`?
    pub fn edit_plan(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: StepUpContext,
    ) -> Self {
        Self::on_property(principal, Action::EditPlan, property, step_up(ctx))
    }

    /// May `principal` pair, rename or retire locks of `property`?
    pub fn manage_locks(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: StepUpContext,
    ) -> Self {
        Self::on_property(principal, Action::ManageLocks, property, step_up(ctx))
    }

    /// May `principal` grant entry to `property` for an incident?
    pub fn create_grant(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: &GrantContext,
    ) -> Self {
        let context = vec![
            ("step_up_fresh", ContextValue::Bool(ctx.step_up_fresh)),
            (
                "incident_agency_kind",
                ContextValue::Str(ctx.incident_agency_kind.as_str().to_owned()),
            ),
            (
                "incident_type",
                ContextValue::Str(ctx.incident_type.clone()),
            ),
            (
                "requested_minutes",
                ContextValue::Long(i64::from(ctx.requested_minutes)),
            ),
        ];
        Self::on_property(principal, Action::CreateGrant, property, context)
    }

    /// May `principal` approve a grant for `property` that awaits a second dispatcher?
    pub fn approve_grant(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: ApprovalContext,
    ) -> Self {
        let context = vec![
            ("step_up_fresh", ContextValue::Bool(ctx.step_up_fresh)),
            ("grant_creator", ContextValue::User(ctx.grant_creator)),
        ];
        Self::on_property(principal, Action::ApproveGrant, property, context)
    }

    /// May `principal` get an override token for a lock of `property`?
    pub fn request_token(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: TokenContext,
    ) -> Self {
        let context = vec![
            ("step_up_fresh", ContextValue::Bool(ctx.step_up_fresh)),
            (
                "named_in_live_grant",
                ContextValue::Bool(ctx.named_in_live_grant),
            ),
        ];
        Self::on_property(principal, Action::RequestToken, property, context)
    }

    /// May `principal` issue a one-time keypad code for a lock of `property`?
    pub fn issue_keypad_code(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: KeypadCodeContext,
    ) -> Self {
        let context = vec![
            ("step_up_fresh", ContextValue::Bool(ctx.step_up_fresh)),
            ("grant_live", ContextValue::Bool(ctx.grant_live)),
        ];
        Self::on_property(principal, Action::IssueKeypadCode, property, context)
    }

    /// May `principal` read the municipality's whole audit log?
    pub fn read_audit_log(
        principal: &PrincipalAttrs,
        log: AuditLogAttrs,
        ctx: StepUpContext,
    ) -> Self {
        Self {
            principal: principal.clone(),
            action: Action::ReadAudit,
            resource: Resource::AuditLog(log),
            context: step_up(ctx),
        }
    }

    /// May `principal` read the audit entries about `property`?
    pub fn read_property_audit(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: StepUpContext,
    ) -> Self {
        Self::on_property(principal, Action::ReadAudit, property, step_up(ctx))
    }

    /// May `principal` see the administration of `town`?
    pub fn view_administration(
        principal: &PrincipalAttrs,
        town: MunicipalityAttrs,
        ctx: StepUpContext,
    ) -> Self {
        Self {
            principal: principal.clone(),
            action: Action::ViewAdministration,
            resource: Resource::Municipality(town),
            context: step_up(ctx),
        }
    }

    /// May `principal` change the administration of `town`?
    pub fn administer(
        principal: &PrincipalAttrs,
        town: MunicipalityAttrs,
        ctx: StepUpContext,
    ) -> Self {
        Self {
            principal: principal.clone(),
            action: Action::Administer,
            resource: Resource::Municipality(town),
            context: step_up(ctx),
        }
    }

    /// `view_trusted_parties` on a property.
    pub fn view_trusted_parties(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: StepUpContext,
    ) -> Self {
        Self::on_property(
            principal,
            Action::ViewTrustedParties,
            property,
            step_up(ctx),
        )
    }

    /// `manage_trusted_parties` on a property.
    pub fn manage_trusted_parties(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: StepUpContext,
    ) -> Self {
        Self::on_property(
            principal,
            Action::ManageTrustedParties,
            property,
            step_up(ctx),
        )
    }

    /// `request_trusted_token` on a property.
    pub fn request_trusted_token(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: TrustedTokenContext,
    ) -> Self {
        let context = vec![
            ("step_up_fresh", ContextValue::Bool(ctx.step_up_fresh)),
            ("trusted_now", ContextValue::Bool(ctx.trusted_now)),
        ];
        Self::on_property(principal, Action::RequestTrustedToken, property, context)
    }

    /// `remote_unlock` on a property.
    pub fn remote_unlock(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: StepUpContext,
    ) -> Self {
        Self::on_property(principal, Action::RemoteUnlock, property, step_up(ctx))
    }

    /// May `principal` see the request for live consent of a grant for `property`?
    pub fn view_consent(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: StepUpContext,
    ) -> Self {
        Self::on_property(principal, Action::ViewConsent, property, step_up(ctx))
    }

    /// May `principal` approve or refuse it? `step_up_fresh`: an assertion within the last few
    /// minutes made after the request was asked.
    pub fn decide_consent(
        principal: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: StepUpContext,
    ) -> Self {
        Self::on_property(principal, Action::DecideConsent, property, step_up(ctx))
    }

    /// May the owner's standing rule open an incident for this alarm at `property`? `owner` is
    /// the property's owner as the database knows them.
    pub fn open_alarm_incident(
        owner: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: &AlarmContext,
    ) -> Self {
        Self::on_property(owner, Action::OpenAlarmIncident, property, alarm(ctx))
    }

    /// May the owner's standing rule grant the named agency entry for this alarm at `property`?
    pub fn grant_on_alarm(
        owner: &PrincipalAttrs,
        property: &PropertyAttrs,
        ctx: &AlarmContext,
    ) -> Self {
        Self::on_property(owner, Action::GrantOnAlarm, property, alarm(ctx))
    }

    fn on_property(
        principal: &PrincipalAttrs,
        action: Action,
        property: &PropertyAttrs,
        context: Vec<(&'static str, ContextValue)>,
    ) -> Self {
        Self {
            principal: principal.clone(),
            action,
            resource: Resource::Property(property.clone()),
            context,
        }
    }

    /// The action asked about.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The user asking.
    pub fn principal(&self) -> &PrincipalAttrs {
        &self.principal
    }

    /// What the request is about.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// Builds the Cedar request and entity store, checked against `schema`.
    pub(crate) fn to_cedar(&self, schema: &Schema) -> Result<(Request, Entities), String> {
        let principal_uid = user_uid(self.principal.id)?;
        let mut entities = vec![user_entity(&self.principal)?];
        let resource_uid = match &self.resource {
            Resource::Property(property) => {
                let uid = uid("Property", property.id.to_string())?;
                entities.push(property_entity(uid.clone(), property)?);
                uid
            }
            Resource::AuditLog(log) => {
                let uid = uid("AuditLog", log.municipality.to_string())?;
                let attrs = HashMap::from([(
                    "municipality".to_owned(),
                    RestrictedExpression::new_string(log.municipality.to_string()),
                )]);
                entities.push(Entity::new(uid.clone(), attrs, HashSet::new()).map_err(err)?);
                uid
            }
            Resource::Municipality(town) => {
                let uid = uid("Municipality", town.municipality.to_string())?;
                let attrs = HashMap::from([(
                    "municipality".to_owned(),
                    RestrictedExpression::new_string(town.municipality.to_string()),
                )]);
                entities.push(Entity::new(uid.clone(), attrs, HashSet::new()).map_err(err)?);
                uid
            }
        };
        let mut pairs = Vec::with_capacity(self.context.len());
        for (key, value) in &self.context {
            let value = match value {
                ContextValue::Bool(b) => RestrictedExpression::new_bool(*b),
                ContextValue::Long(n) => RestrictedExpression::new_long(*n),
                ContextValue::Str(s) => RestrictedExpression::new_string(s.clone()),
                ContextValue::Strs(items) => strings(items.iter().map(String::as_str)),
                ContextValue::User(id) => RestrictedExpression::new_entity_uid(user_uid(*id)?),
            };
            pairs.push(((*key).to_owned(), value));
        }
        let context = Context::from_pairs(pairs).map_err(err)?;
        let action_uid = uid("Action", self.action.as_str().to_owned())?;
        let request = Request::new(
            principal_uid,
            action_uid,
            resource_uid,
            context,
            Some(schema),
        )
        .map_err(err)?;
        let entities = Entities::from_entities(entities, Some(schema)).map_err(err)?;
        Ok((request, entities))
    }
}

fn step_up(ctx: StepUpContext) -> Vec<(&'static str, ContextValue)> {
    vec![("step_up_fresh", ContextValue::Bool(ctx.step_up_fresh))]
}

fn alarm(ctx: &AlarmContext) -> Vec<(&'static str, ContextValue)> {
    vec![
        ("alarm_kind", ContextValue::Str(ctx.alarm_kind.clone())),
        ("rule_action", ContextValue::Str(ctx.rule_action.clone())),
        ("agency_kind", ContextValue::Str(ctx.agency_kind.clone())),
        ("minutes", ContextValue::Long(i64::from(ctx.minutes))),
        ("confirmed", ContextValue::Bool(ctx.confirmed)),
    ]
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn uid(type_name: &str, id: String) -> Result<EntityUid, String> {
    let type_name: EntityTypeName = type_name.parse().map_err(err)?;
    Ok(EntityUid::from_type_name_and_id(
        type_name,
        EntityId::new(id),
    ))
}

fn user_uid(id: Uuid) -> Result<EntityUid, String> {
    uid("User", id.to_string())
}

fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> RestrictedExpression {
    RestrictedExpression::new_set(
        items
            .into_iter()
            .map(|s| RestrictedExpression::new_string(s.to_owned())),
    )
}

fn user_entity(user: &PrincipalAttrs) -> Result<Entity, String> {
    let agency_kind = user.agency_kind.map_or("none", AgencyKind::as_str);
    let mut attrs = HashMap::from([
        (
            "municipality".to_owned(),
            RestrictedExpression::new_string(user.municipality.to_string()),
        ),
        (
            "roles".to_owned(),
            strings(user.roles.iter().map(|r| r.as_str())),
        ),
        (
            "agency_kind".to_owned(),
            RestrictedExpression::new_string(agency_kind.to_owned()),
        ),
        (
            "active".to_owned(),
            RestrictedExpression::new_bool(user.active),
        ),
    ]);
    if let Some(agency) = user.agency {
        attrs.insert(
            "agency".to_owned(),
            RestrictedExpression::new_string(agency.to_string()),
        );
    }
    Entity::new(user_uid(user.id)?, attrs, HashSet::new()).map_err(err)
}

fn agency_rule(rule: &AgencyRule) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record([
        (
            "allowed".to_owned(),
            RestrictedExpression::new_bool(rule.allowed),
        ),
        (
            "incident_types".to_owned(),
            strings(rule.incident_types.iter().map(String::as_str)),
        ),
        (
            "second_approval".to_owned(),
            RestrictedExpression::new_bool(rule.second_approval),
        ),
    ])
    .map_err(err)
}

fn property_entity(uid: EntityUid, property: &PropertyAttrs) -> Result<Entity, String> {
    let plan = RestrictedExpression::new_record([
        ("fire".to_owned(), agency_rule(&property.plan.fire)?),
        ("ems".to_owned(), agency_rule(&property.plan.ems)?),
        ("police".to_owned(), agency_rule(&property.plan.police)?),
        (
            "max_grant_minutes".to_owned(),
            RestrictedExpression::new_long(i64::from(property.plan.max_grant_minutes)),
        ),
    ])
    .map_err(err)?;
    let attrs = HashMap::from([
        (
            "municipality".to_owned(),
            RestrictedExpression::new_string(property.municipality.to_string()),
        ),
        (
            "owner".to_owned(),
            RestrictedExpression::new_entity_uid(user_uid(property.owner)?),
        ),
        ("plan".to_owned(), plan),
    ]);
    Entity::new(uid, attrs, HashSet::new()).map_err(err)
}

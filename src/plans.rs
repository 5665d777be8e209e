//! Access plans: what a homeowner allows in an emergency. A plan is parsed once at the boundary into
//! [`PlanInput`]; stored plans are versioned and immutable (an edit is version n+1), and a grant
//! records the version it was decided under.
//!
//! Responder notes are the one secret part: sealed with envelope encryption ([`crate::crypto`]) and
//! only revealed through the audited, policy-checked reveal. [`PlanSummary`] is what a dispatcher sees
//! without a reveal.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{Email, ParseError, Text};

/// Longest grant a plan may allow, in minutes (24 h).
pub const MAX_GRANT_MINUTES: i32 = 1440;

/// One agency kind's entry in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgencyRule {
    /// Whether this kind of agency may enter at all.
    pub allowed: bool,
    /// Incident types for which entry is allowed (empty: none): at most 32, each 1 to 64
    /// lower-case letters or underscores.
    #[serde(default)]
    #[schema(schema_with = incident_types_schema)]
    pub incident_types: Vec<String>,
    /// Whether a second dispatcher must approve a grant before it is live.
    #[serde(default)]
    pub second_approval: bool,
}

/// The schema of [`AgencyRule::incident_types`], as [`PlanInput::validate`] checks it.
fn incident_types_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(crate::domain::string_schema(
            "An incident type: lower-case letters or underscores.",
            1,
            64,
            Some("^[a-z_]+$"),
        ))
        .max_items(Some(32))
        .description(Some(
            "Incident types for which entry is allowed (empty: none), at most 32.",
        ))
        .build()
}

impl AgencyRule {
    fn denied() -> Self {
        Self {
            allowed: false,
            incident_types: Vec::new(),
            second_approval: false,
        }
    }
}

/// Per-agency-kind rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgencyRules {
    /// Fire department.
    #[serde(
        default = "AgencyRule::denied",
        deserialize_with = "crate::domain::object"
    )]
    pub fire: AgencyRule,
    /// Emergency medical services.
    #[serde(
        default = "AgencyRule::denied",
        deserialize_with = "crate::domain::object"
    )]
    pub ems: AgencyRule,
    /// Police.
    #[serde(
        default = "AgencyRule::denied",
        deserialize_with = "crate::domain::object"
    )]
    pub police: AgencyRule,
}

/// Structured notes for responders. Secret: encrypted at rest, revealed only under policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponderNotes {
    /// Animals in the home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 4000, pattern = r"^[^\u0000]*$")]
    pub pets: Option<String>,
    /// Hazards (oxygen in use, chemicals, structural issues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 4000, pattern = r"^[^\u0000]*$")]
    pub hazards: Option<String>,
    /// Medical equipment in the home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 4000, pattern = r"^[^\u0000]*$")]
    pub medical_equipment: Option<String>,
    /// Where the water, gas and power shut-offs are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 4000, pattern = r"^[^\u0000]*$")]
    pub utilities: Option<String>,
    /// Anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 4000, pattern = r"^[^\u0000]*$")]
    pub free_text: Option<String>,
}

impl ResponderNotes {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    fn fields(&self) -> [(&'static str, &Option<String>); 5] {
        [
            ("notes.pets", &self.pets),
            ("notes.hazards", &self.hazards),
            ("notes.medical_equipment", &self.medical_equipment),
            ("notes.utilities", &self.utilities),
            ("notes.free_text", &self.free_text),
        ]
    }
}

/// An emergency contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// Name, 1 to 200 characters (not only white space).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub name: String,
    /// E-mail for notifications.
    #[schema(value_type = crate::domain::Email)]
    pub email: String,
    /// Phone number, free form, at most 40 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 40, pattern = r"^[^\u0000]*$")]
    pub phone: Option<String>,
}

/// Someone who holds a key to the home (a neighbour, a relative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyHolder {
    /// Name, 1 to 200 characters (not only white space).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub name: String,
    /// Phone number, free form, at most 40 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 40, pattern = r"^[^\u0000]*$")]
    pub phone: Option<String>,
}

/// The way in when the electronics fail: where a physical key or key box is, who holds a key, and
/// the key box code. Location and holders are shown on the dispatcher's summary; the code is secret
/// (sealed like the notes, shown only through the audited reveal, with a reason).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhysicalKey {
    /// Where the key or key box is ("key box left of the garage door"), at most 500 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 500, pattern = r"^[^\u0000]*$")]
    pub location: Option<String>,
    /// Who holds a key, at most 5.
    #[serde(default, deserialize_with = "crate::domain::objects")]
    #[schema(max_items = 5)]
    pub holders: Vec<KeyHolder>,
    /// The key box code (secret), 1 to 40 characters (not only white space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 40,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub key_box_code: Option<String>,
}

impl PhysicalKey {
    /// What may be shown without a reveal: location and holders, never the code (only whether a
    /// sealed one is stored).
    pub fn public_with(&self, has_key_box_code: bool) -> PhysicalKeySummary {
        PhysicalKeySummary {
            location: self.location.clone(),
            holders: self.holders.clone(),
            has_key_box_code,
        }
    }
}

/// The physical key as the dispatcher's summary shows it (the code only as "there is one").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PhysicalKeySummary {
    /// Where the key or key box is.
    pub location: Option<String>,
    /// Who holds a key.
    pub holders: Vec<KeyHolder>,
    /// Whether a key box code is stored (reveal it with the audited reveal).
    pub has_key_box_code: bool,
}

/// What to tell whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationChoices {
    /// Mail the homeowner about grants, tokens and openings.
    #[serde(default = "yes")]
    pub homeowner: bool,
    /// Mail the emergency contacts too.
    #[serde(default)]
    pub contacts: bool,
}

fn yes() -> bool {
    true
}

impl Default for NotificationChoices {
    fn default() -> Self {
        Self {
            homeowner: true,
            contacts: false,
        }
    }
}

/// Fewest seconds a plan may give the homeowner to answer a request for consent.
pub const MIN_CONSENT_SECONDS: i32 = 15;
/// Most seconds a plan may give the homeowner to answer (30 minutes).
pub const MAX_CONSENT_SECONDS: i32 = 1800;
/// Seconds the homeowner has when the plan does not say (3 minutes).
pub const DEFAULT_CONSENT_SECONDS: i32 = 180;

/// What happens to a grant when the homeowner does not answer a request for consent in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsentFallback {
    /// The grant goes ahead as if there were no consent step (a second dispatcher still approves
    /// where the agency rule asks for one).
    Proceed,
    /// The grant waits for a second dispatcher's approval (the approval queue).
    SecondDispatcher,
}

impl ConsentFallback {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proceed => "proceed",
            Self::SecondDispatcher => "second_dispatcher",
        }
    }

    /// Parses the stored name.
    pub fn parse(stored: &str) -> Option<Self> {
        match stored {
            "proceed" => Some(Self::Proceed),
            "second_dispatcher" => Some(Self::SecondDispatcher),
            _ => None,
        }
    }

    /// In the homeowner's and the dispatcher's words.
    pub fn words(self) -> &'static str {
        match self {
            Self::Proceed => "entry goes ahead",
            Self::SecondDispatcher => "a second dispatcher must approve the entry",
        }
    }
}

fn default_consent_seconds() -> i32 {
    DEFAULT_CONSENT_SECONDS
}

/// Live consent: before a grant for this home goes live, ask the homeowner (a mailed link; they
/// approve or refuse with their passkey), and what happens if they do not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiveConsent {
    /// Seconds the homeowner has to answer (15 to 1800; 180 if absent).
    #[schema(minimum = 15, maximum = 1800)]
    #[serde(
        default = "default_consent_seconds",
        deserialize_with = "crate::domain::integer"
    )]
    pub timeout_seconds: i32,
    /// What happens without an answer in time.
    pub fallback: ConsentFallback,
}

/// A plan as submitted by the homeowner (the body of `PUT …/plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanInput {
    /// Which agencies may enter and under what conditions.
    #[serde(deserialize_with = "crate::domain::object")]
    pub agencies: AgencyRules,
    /// Longest grant a dispatcher may give, in minutes (1 to 1440).
    #[schema(minimum = 1, maximum = 1440)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub max_grant_minutes: i32,
    /// Notes for responders (secret).
    #[serde(default, deserialize_with = "crate::domain::object")]
    pub notes: ResponderNotes,
    /// Emergency contacts, at most 10.
    #[serde(default, deserialize_with = "crate::domain::objects")]
    #[schema(max_items = 10)]
    pub contacts: Vec<Contact>,
    /// Notification choices.
    #[serde(default, deserialize_with = "crate::domain::object")]
    pub notifications: NotificationChoices,
    /// How long records about the home are kept, in days (1 to 3650).
    #[schema(minimum = 1, maximum = 3650)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub retention_days: i32,
    /// Ask the homeowner to approve or refuse each grant before it goes live; absent or `null`:
    /// do not ask.
    #[serde(default, deserialize_with = "crate::domain::optional_object")]
    pub live_consent: Option<LiveConsent>,
    /// The physical key or key box, and who holds a key.
    #[serde(default, deserialize_with = "crate::domain::object")]
    pub physical_key: PhysicalKey,
}

impl PlanInput {
    /// Checks every limit; the error names the field.
    pub fn validate(&self) -> Result<(), ParseError> {
        let err = |field: &'static str, reason: &str| ParseError {
            field,
            reason: reason.to_owned(),
        };
        if !(1..=MAX_GRANT_MINUTES).contains(&self.max_grant_minutes) {
            return Err(err("max_grant_minutes", "must be between 1 and 1440"));
        }
        if !(1..=3650).contains(&self.retention_days) {
            return Err(err("retention_days", "must be between 1 and 3650"));
        }
        if let Some(consent) = &self.live_consent
            && !(MIN_CONSENT_SECONDS..=MAX_CONSENT_SECONDS).contains(&consent.timeout_seconds)
        {
            return Err(err(
                "live_consent.timeout_seconds",
                "must be between 15 and 1800",
            ));
        }
        for rule in [
            &self.agencies.fire,
            &self.agencies.ems,
            &self.agencies.police,
        ] {
            if rule.incident_types.len() > 32
                || rule.incident_types.iter().any(|t| {
                    t.is_empty()
                        || t.len() > 64
                        || !t.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                })
            {
                return Err(err(
                    "agencies.incident_types",
                    "at most 32 types of 1 to 64 lower-case letters or underscores",
                ));
            }
        }
        for (field, note) in self.notes.fields() {
            if let Some(text) = note {
                Text::check(field, text, 4000)?;
            }
        }
        if self.contacts.len() > 10 {
            return Err(err("contacts", "at most 10 contacts"));
        }
        for c in &self.contacts {
            Text::parse("contacts.name", &c.name, 200)?;
            Email::parse(&c.email).map_err(|e| err("contacts.email", &e.reason))?;
            if let Some(phone) = &c.phone {
                Text::check("contacts.phone", phone, 40)?;
            }
        }
        let key = &self.physical_key;
        if let Some(location) = &key.location {
            Text::check("physical_key.location", location, 500)?;
        }
        if key.holders.len() > 5 {
            return Err(err("physical_key.holders", "at most 5 key holders"));
        }
        for h in &key.holders {
            Text::parse("physical_key.holders.name", &h.name, 200)?;
            if let Some(phone) = &h.phone {
                Text::check("physical_key.holders.phone", phone, 40)?;
            }
        }
        if let Some(code) = &key.key_box_code {
            Text::parse("physical_key.key_box_code", code, 40)?;
        }
        Ok(())
    }

    /// Whether there are notes to seal.
    pub fn has_notes(&self) -> bool {
        !self.notes.is_empty()
    }
}

/// What a dispatcher sees of a plan without revealing the notes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PlanSummary {
    /// Plan version.
    pub version: i32,
    /// Agency rules.
    pub agencies: AgencyRules,
    /// Longest grant allowed.
    pub max_grant_minutes: i32,
    /// Whether notes exist (reveal them with the audited reveal).
    pub has_notes: bool,
    /// Whether a grant first asks the homeowner, for how long, and what happens without an answer.
    pub live_consent: Option<LiveConsent>,
    /// Trusted parties (e.g. "Sam at no. 12") the homeowner lets dispatch know hold access, so
    /// dispatch can call them.
    pub trusted_access: Vec<String>,
    /// The property's locks as last reported, with warnings to heed before relying on them
    /// ("battery critical …", "offline for 3 days …").
    pub lock_health: Vec<crate::health::LockHealth>,
    /// Where a physical key or key box is and who holds a key (the code only through the audited
    /// reveal).
    pub physical_key: PhysicalKeySummary,
}

/// The full plan, as its homeowner sees it: the fields of [`PlanInput`] and `version`, in one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanView {
    /// Plan version.
    pub version: i32,
    /// The plan.
    #[serde(flatten)]
    pub plan: PlanInput,
}

// The derive would describe the flattened plan as `allOf: [PlanInput, {version}]`; `PlanInput` is
// closed (`additionalProperties: false`, it refuses unknown fields), so no JSON could satisfy both.
// The schema is `PlanInput`'s own object with `version` added, built from it so the two cannot drift.
impl utoipa::PartialSchema for PlanView {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
        let mut schema = <PlanInput as utoipa::PartialSchema>::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.description = Some("The full plan, as its homeowner sees it.".to_owned());
            object.properties.insert(
                "version".to_owned(),
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
                    .minimum(Some(1))
                    .description(Some("Plan version."))
                    .into(),
            );
            object.required.insert(0, "version".to_owned());
        }
        schema
    }
}

impl ToSchema for PlanView {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <PlanInput as ToSchema>::schemas(schemas);
    }
}

#[cfg(test)]
mod schema_tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<PlanInput, serde_json::Error> {
        serde_json::from_value(json)
    }

    /// What schemathesis found: `notes: [null, null]` (fields as an array) was stored as a plan.
    #[test]
    fn nested_plan_parts_are_objects_only() {
        let base = serde_json::json!({
            "agencies": {}, "max_grant_minutes": 60.0, "retention_days": 30
        });
        assert!(parse(base.clone()).is_ok(), "60.0 is the integer 60");
        for (field, value) in [
            ("notes", serde_json::json!([null, null])),
            ("notifications", serde_json::json!([true, false])),
            ("agencies", serde_json::json!([])),
            ("contacts", serde_json::json!([["n", "n@x.test"]])),
        ] {
            let mut plan = base.clone();
            plan[field] = value;
            assert!(parse(plan).is_err(), "{field} as an array");
        }
        let mut plan = base;
        plan["agencies"] = serde_json::json!({ "fire": [true] });
        assert!(parse(plan).is_err(), "an agency rule as an array");
    }
}

//! Authorization decisions with Cedar. This module owns the policy engine: loading a policy set
//! (the default shipped in `policies/`, embedded in the binary, or a municipality's own directory),
//! validating it strictly against the schema, hashing it, and answering typed [`AuthzRequest`]s
//! with an [`AuthzDecision`] that names the policies that decided and the set's hash, for the audit
//! log. It also checks a directory for `firstkey policy check`.
//!
//! It does not fetch anything: callers gather the facts (roles, plan, live grants, step-up) from
//! the database and pass them in; it does not write audit entries either, it returns what they need.
//! The entity model is documented in `policies/README.md`.

mod compile;
mod request;

use std::path::Path;

use cedar_policy::{Authorizer, Decision, PolicySet, Schema};

pub use compile::{CheckReport, Diagnostic, Location, SchemaOrigin};
pub use request::KeypadCodeContext;
pub use request::{
    Action, AgencyRule, AlarmContext, ApprovalContext, AuditLogAttrs, AuthzRequest, GrantContext,
    MunicipalityAttrs, PlanAttrs, PrincipalAttrs, PropertyAttrs, Resource, RevealContext,
    StepUpContext, TokenContext, TrustedTokenContext,
};

use compile::SourceFile;

/// The shipped schema.
const SHIPPED_SCHEMA: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/policies/schema.cedarschema"
));

/// The shipped policy files, by name. A test checks this list against the `policies/` directory.
const SHIPPED_POLICIES: &[(&str, &str)] = &[
    (
        "admin.cedar",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/admin.cedar")),
    ),
    (
        "alarms.cedar",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/alarms.cedar"
        )),
    ),
    (
        "audit.cedar",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/audit.cedar")),
    ),
    (
        "consent.cedar",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/consent.cedar"
        )),
    ),
    (
        "dispatch.cedar",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/dispatch.cedar"
        )),
    ),
    (
        "guards.cedar",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/guards.cedar"
        )),
    ),
    (
        "homeowner.cedar",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/homeowner.cedar"
        )),
    ),
    (
        "keypad.cedar",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/keypad.cedar"
        )),
    ),
    (
        "responder.cedar",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/responder.cedar"
        )),
    ),
    (
        "trusted.cedar",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/trusted.cedar"
        )),
    ),
];

/// Why a policy set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The set could not be read, or a file failed to parse, lacks an `@id`, or fails strict
    /// validation against the schema. Each diagnostic names the file and position.
    #[error("invalid policy set: {}", first_of(.0))]
    Invalid(Vec<Diagnostic>),
    /// The schema accepts the policies but not the entities and context firstkey sends for
    /// `action` (a municipality's schema must keep the shipped attributes).
    #[error("the schema does not accept firstkey's `{action}` requests: {reason}")]
    IncompatibleSchema {
        /// The action whose request was refused.
        action: &'static str,
        /// Cedar's reason.
        reason: String,
    },
}

fn first_of(diagnostics: &[Diagnostic]) -> String {
    match diagnostics {
        [] => "no details".to_owned(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    }
}

/// The outcome of one authorization question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzDecision {
    /// Whether the action is allowed. `false` whenever `errors` is not empty.
    pub allowed: bool,
    /// SHA-256 of the policy set that decided (see `policies/README.md` for the canonical form).
    pub policy_set_hash: [u8; 32],
    /// The `@id`s of the policies that determined the decision: the permits that allowed it, or
    /// the forbids that denied it; empty for a default deny. Sorted.
    pub determining_policies: Vec<String>,
    /// Evaluation or request-building errors; any error makes the decision a deny.
    pub errors: Vec<String>,
}

/// A loaded, validated policy set, ready to decide. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    schema: Schema,
    policies: PolicySet,
    policy_ids: Vec<String>,
    hash: [u8; 32],
    authorizer: Authorizer,
    /// The set's files: name and hex SHA-256 of the text, sorted by name.
    files: Vec<(String, String)>,
}

impl PolicyEngine {
    /// The default municipal policy set shipped with firstkey (embedded in the binary).
    pub fn shipped() -> Result<Self, PolicyError> {
        let (schema, files) = shipped_sources();
        Self::build(&schema, &files)
    }

    /// A municipality's own set: every `*.cedar` file in `dir`, validated against `dir`'s
    /// `schema.cedarschema`, or against the shipped schema when the directory has none.
    pub fn from_dir(dir: &Path) -> Result<Self, PolicyError> {
        let (schema, files, _) =
            compile::read_dir(dir, SHIPPED_SCHEMA).map_err(PolicyError::Invalid)?;
        Self::build(&schema, &files)
    }

    fn build(schema: &SourceFile, files: &[SourceFile]) -> Result<Self, PolicyError> {
        let compiled = compile::compile(schema, files).map_err(PolicyError::Invalid)?;
        let engine = Self {
            schema: compiled.schema,
            policies: compiled.policies,
            policy_ids: compiled.policy_ids,
            hash: compiled.hash,
            authorizer: Authorizer::new(),
            files: {
                let mut files: Vec<(String, String)> = files
                    .iter()
                    .map(|f| {
                        let hash = ring::digest::digest(&ring::digest::SHA256, f.text.as_bytes());
                        (f.name.clone(), hex::encode(hash))
                    })
                    .collect();
                files.sort();
                files
            },
        };
        engine.check_request_shapes()?;
        Ok(engine)
    }

    /// Refuses a schema that would make every request for some action fail (and so deny):
    /// builds one request of each kind and checks it against the schema.
    fn check_request_shapes(&self) -> Result<(), PolicyError> {
        for request in sample_requests() {
            if let Err(reason) = request.to_cedar(&self.schema) {
                return Err(PolicyError::IncompatibleSchema {
                    action: request.action().as_str(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// SHA-256 of the set; recorded with every decision.
    pub fn policy_set_hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The set's files: name and hex SHA-256 of each file's text, sorted by name.
    pub fn files(&self) -> &[(String, String)] {
        &self.files
    }

    /// The `@id`s of the set's policies, in file order (files sorted by name).
    pub fn policy_ids(&self) -> impl Iterator<Item = &str> {
        self.policy_ids.iter().map(String::as_str)
    }

    /// Decides `request`. Never fails: a request the schema refuses, or a policy that errors
    /// while evaluating, makes a deny with the reason in [`AuthzDecision::errors`].
    pub fn decide(&self, request: &AuthzRequest) -> AuthzDecision {
        let (cedar_request, entities) = match request.to_cedar(&self.schema) {
            Ok(built) => built,
            Err(reason) => {
                tracing::warn!(action = request.action().as_str(), %reason, "policy request refused by the schema");
                count_decision(request.action().as_str(), false);
                return AuthzDecision {
                    allowed: false,
                    policy_set_hash: self.hash,
                    determining_policies: Vec::new(),
                    errors: vec![reason],
                };
            }
        };
        let response = self
            .authorizer
            .is_authorized(&cedar_request, &self.policies, &entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();
        let mut determining_policies: Vec<String> =
            diagnostics.reason().map(ToString::to_string).collect();
        determining_policies.sort_unstable();
        if !errors.is_empty() {
            tracing::warn!(
                action = request.action().as_str(),
                ?errors,
                "policy evaluation errors; denying"
            );
        }
        let allowed = response.decision() == Decision::Allow && errors.is_empty();
        count_decision(request.action().as_str(), allowed);
        AuthzDecision {
            allowed,
            policy_set_hash: self.hash,
            determining_policies,
            errors,
        }
    }
}

/// Counts a decision in `firstkey_policy_decisions_total` (the action names are a closed set).
fn count_decision(action: &'static str, allowed: bool) {
    let decision = if allowed { "allow" } else { "deny" };
    crate::metrics::count(|m| {
        m.policy_decisions
            .with_label_values(&[action, decision])
            .inc();
    });
}

/// Checks the policy set in `dir` (for `firstkey policy check DIR`): every `*.cedar` file,
/// validated strictly against `dir/schema.cedarschema` or, when absent, the shipped schema.
/// On failure, every problem found, each with its file and (where known) line and column.
pub fn check_dir(dir: &Path) -> Result<CheckReport, Vec<Diagnostic>> {
    let (schema, files, origin) = compile::read_dir(dir, SHIPPED_SCHEMA)?;
    let compiled = compile::compile(&schema, &files)?;
    let engine = PolicyEngine {
        schema: compiled.schema,
        policies: compiled.policies,
        policy_ids: compiled.policy_ids.clone(),
        hash: compiled.hash,
        authorizer: Authorizer::new(),
        files: Vec::new(),
    };
    if let Err(e) = engine.check_request_shapes() {
        return Err(vec![Diagnostic {
            file: compile::SCHEMA_FILE.to_owned(),
            location: None,
            policy_id: None,
            message: e.to_string(),
        }]);
    }
    Ok(CheckReport {
        files: files.len(),
        permits: compiled.permits,
        forbids: compiled.forbids,
        policy_ids: compiled.policy_ids,
        schema: origin,
        warnings: compiled.warnings,
        policy_set_hash: compiled.hash,
    })
}

fn shipped_sources() -> (SourceFile, Vec<SourceFile>) {
    let schema = SourceFile::new(compile::SCHEMA_FILE, SHIPPED_SCHEMA);
    let files = SHIPPED_POLICIES
        .iter()
        .map(|(name, text)| SourceFile::new(*name, *text))
        .collect();
    (schema, files)
}

/// One request of each kind, with placeholder values, to check a schema accepts their shapes.
fn sample_requests() -> Vec<AuthzRequest> {
    use crate::domain::{AgencyKind, Role};
    let principal = PrincipalAttrs {
        id: uuid::Uuid::nil(),
        municipality: uuid::Uuid::nil(),
        roles: vec![Role::Dispatcher],
        agency_kind: Some(AgencyKind::Fire),
        agency: Some(uuid::Uuid::nil()),
        active: true,
    };
    let property = PropertyAttrs {
        id: uuid::Uuid::nil(),
        municipality: uuid::Uuid::nil(),
        owner: uuid::Uuid::nil(),
        plan: PlanAttrs::closed(),
    };
    let step_up = StepUpContext::default();
    let alarm = AlarmContext {
        alarm_kind: "smoke".to_owned(),
        rule_action: "nothing".to_owned(),
        agency_kind: "none".to_owned(),
        minutes: 0,
        confirmed: false,
    };
    vec![
        AuthzRequest::view_plan_summary(&principal, &property, step_up),
        AuthzRequest::reveal_notes(
            &principal,
            &property,
            RevealContext {
                incident_agencies: [uuid::Uuid::nil()].into(),
                ..RevealContext::default()
            },
        ),
        AuthzRequest::edit_plan(&principal, &property, step_up),
        AuthzRequest::manage_locks(&principal, &property, step_up),
        AuthzRequest::create_grant(
            &principal,
            &property,
            &GrantContext {
                step_up_fresh: false,
                incident_agency_kind: AgencyKind::Fire,
                incident_type: String::new(),
                requested_minutes: 1,
            },
        ),
        AuthzRequest::approve_grant(
            &principal,
            &property,
            ApprovalContext {
                step_up_fresh: false,
                grant_creator: uuid::Uuid::nil(),
            },
        ),
        AuthzRequest::request_token(&principal, &property, TokenContext::default()),
        AuthzRequest::read_audit_log(
            &principal,
            AuditLogAttrs {
                municipality: uuid::Uuid::nil(),
            },
            step_up,
        ),
        AuthzRequest::read_property_audit(&principal, &property, step_up),
        AuthzRequest::view_administration(
            &principal,
            MunicipalityAttrs {
                municipality: uuid::Uuid::nil(),
            },
            step_up,
        ),
        AuthzRequest::administer(
            &principal,
            MunicipalityAttrs {
                municipality: uuid::Uuid::nil(),
            },
            step_up,
        ),
        AuthzRequest::view_trusted_parties(&principal, &property, step_up),
        AuthzRequest::manage_trusted_parties(&principal, &property, step_up),
        AuthzRequest::request_trusted_token(&principal, &property, TrustedTokenContext::default()),
        AuthzRequest::remote_unlock(&principal, &property, step_up),
        AuthzRequest::open_alarm_incident(&principal, &property, &alarm),
        AuthzRequest::grant_on_alarm(&principal, &property, &alarm),
        AuthzRequest::view_consent(&principal, &property, step_up),
        AuthzRequest::decide_consent(&principal, &property, step_up),
    ]
}

#[cfg(test)]
mod tests;

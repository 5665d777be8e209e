//! Policy tests. The rule cases live beside the policies, in `policies/tests/*.json`, and run
//! against the shipped set through the public request builders; every `@id` in the set must have
//! at least one allow and one deny case.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cedar_policy::{Effect, PolicyId};
use serde::Deserialize;

use super::compile::{self, SourceFile};
use super::*;
use crate::domain::{AgencyKind, Role};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

#[derive(Debug, Deserialize)]
struct Fixtures {
    principals: BTreeMap<String, PrincipalAttrs>,
    resources: BTreeMap<String, ResourceJson>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ResourceJson {
    Property(PropertyAttrs),
    AuditLog(AuditLogAttrs),
    Municipality(MunicipalityAttrs),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    policy: String,
    principal: String,
    action: Action,
    resource: String,
    context: serde_json::Value,
    expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Expect {
    Allow,
    Deny,
}

/// A case resolved against the fixtures: where it came from and the typed request.
struct Loaded {
    origin: String,
    case: Case,
    principal: PrincipalAttrs,
    resource: ResourceJson,
}

fn load_cases() -> Vec<Loaded> {
    let dir = policies_dir().join("tests");
    let fixtures: Fixtures = serde_json::from_str(
        &std::fs::read_to_string(dir.join("fixtures.json")).expect("fixtures.json"),
    )
    .expect("fixtures.json parses");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("policies/tests")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "fixtures.json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no case files in {}", dir.display());
    let mut loaded = Vec::new();
    for path in paths {
        let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
        let file: CaseFile = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{file_name}: {e}"));
        for case in file.cases {
            let origin = format!("{file_name}: {}", case.name);
            let principal = fixtures
                .principals
                .get(&case.principal)
                .unwrap_or_else(|| panic!("{origin}: unknown principal {}", case.principal))
                .clone();
            let resource = fixtures
                .resources
                .get(&case.resource)
                .unwrap_or_else(|| panic!("{origin}: unknown resource {}", case.resource))
                .clone();
            loaded.push(Loaded {
                origin,
                case,
                principal,
                resource,
            });
        }
    }
    loaded
}

fn context<T: serde::de::DeserializeOwned>(origin: &str, value: &serde_json::Value) -> T {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{origin}: context: {e}"))
}

/// Builds the request exactly as a caller would, through the typed builders.
fn request(l: &Loaded) -> AuthzRequest {
    let (p, o, ctx) = (&l.principal, l.origin.as_str(), &l.case.context);
    let property = match &l.resource {
        ResourceJson::Property(property) => property,
        ResourceJson::AuditLog(log) => {
            assert_eq!(
                l.case.action,
                Action::ReadAudit,
                "{o}: an audit log only takes read_audit"
            );
            return AuthzRequest::read_audit_log(p, *log, context(o, ctx));
        }
        ResourceJson::Municipality(town) => {
            return match l.case.action {
                Action::ViewAdministration => {
                    AuthzRequest::view_administration(p, *town, context(o, ctx))
                }
                Action::Administer => AuthzRequest::administer(p, *town, context(o, ctx)),
                other => panic!("{o}: a municipality does not take {other:?}"),
            };
        }
    };
    match l.case.action {
        Action::ViewPlanSummary => AuthzRequest::view_plan_summary(p, property, context(o, ctx)),
        Action::RevealNotes => AuthzRequest::reveal_notes(p, property, context(o, ctx)),
        Action::EditPlan => AuthzRequest::edit_plan(p, property, context(o, ctx)),
        Action::ManageLocks => AuthzRequest::manage_locks(p, property, context(o, ctx)),
        Action::CreateGrant => AuthzRequest::create_grant(p, property, &context(o, ctx)),
        Action::ApproveGrant => AuthzRequest::approve_grant(p, property, context(o, ctx)),
        Action::RequestToken => AuthzRequest::request_token(p, property, context(o, ctx)),
        Action::ReadAudit => AuthzRequest::read_property_audit(p, property, context(o, ctx)),
        Action::ViewAdministration | Action::Administer => {
            panic!("{o}: administration is asked of a municipality, not a property")
        }
        Action::ViewTrustedParties => {
            AuthzRequest::view_trusted_parties(p, property, context(o, ctx))
        }
        Action::ManageTrustedParties => {
            AuthzRequest::manage_trusted_parties(p, property, context(o, ctx))
        }
        Action::RequestTrustedToken => {
            AuthzRequest::request_trusted_token(p, property, context(o, ctx))
        }
        Action::RemoteUnlock => AuthzRequest::remote_unlock(p, property, context(o, ctx)),
        Action::IssueKeypadCode => AuthzRequest::issue_keypad_code(p, property, context(o, ctx)),
        Action::OpenAlarmIncident => {
            AuthzRequest::open_alarm_incident(p, property, &context(o, ctx))
        }
        Action::GrantOnAlarm => AuthzRequest::grant_on_alarm(p, property, &context(o, ctx)),
        Action::ViewConsent => AuthzRequest::view_consent(p, property, context(o, ctx)),
        Action::DecideConsent => AuthzRequest::decide_consent(p, property, context(o, ctx)),
    }
}

fn engine() -> PolicyEngine {
    PolicyEngine::shipped().unwrap_or_else(|e| panic!("shipped set: {e}"))
}

fn effect(engine: &PolicyEngine, id: &str) -> Effect {
    engine
        .policies
        .policy(&PolicyId::new(id))
        .unwrap_or_else(|| panic!("no policy @id({id:?}) in the shipped set"))
        .effect()
}

#[test]
fn policy_cases_from_files_hold() {
    let engine = engine();
    let cases = load_cases();
    let mut failures = Vec::new();
    for l in &cases {
        let decision = engine.decide(&request(l));
        let expected_allow = l.case.expect == Expect::Allow;
        let id = l.case.policy.as_str();
        let named = decision.determining_policies.iter().any(|d| d == id);
        let problem = if !decision.errors.is_empty() {
            Some(format!("errors {:?}", decision.errors))
        } else if decision.allowed != expected_allow {
            Some(format!(
                "expected {:?}, got allowed={} by {:?}",
                l.case.expect, decision.allowed, decision.determining_policies
            ))
        } else {
            // The exercised rule must be the one that decided (a permit that allowed, a forbid
            // that denied), or be absent from the reasons (a permit that did not apply).
            match (effect(&engine, id), l.case.expect) {
                (Effect::Permit, Expect::Allow) | (Effect::Forbid, Expect::Deny) if !named => {
                    Some(format!(
                        "decided by {:?}, not by {id}",
                        decision.determining_policies
                    ))
                }
                (Effect::Permit, Expect::Deny) | (Effect::Forbid, Expect::Allow) if named => {
                    Some(format!("{id} should not be among the reasons"))
                }
                _ => None,
            }
        };
        if let Some(problem) = problem {
            failures.push(format!("{}: {problem}", l.origin));
        }
        assert_eq!(decision.policy_set_hash, engine.policy_set_hash());
    }
    assert!(
        failures.is_empty(),
        "failing policy cases:\n{}",
        failures.join("\n")
    );
    assert!(cases.len() >= 2 * engine.policy_ids().count());
}

#[test]
fn every_policy_has_an_allow_and_a_deny_case() {
    let engine = engine();
    let cases = load_cases();
    let mut uncovered = Vec::new();
    for id in engine.policy_ids() {
        for expect in [Expect::Allow, Expect::Deny] {
            if !cases
                .iter()
                .any(|l| l.case.policy == id && l.case.expect == expect)
            {
                uncovered.push(format!("{id}: no {expect:?} case"));
            }
        }
    }
    for l in &cases {
        if !engine.policy_ids().any(|id| id == l.case.policy) {
            uncovered.push(format!("{}: unknown policy {}", l.origin, l.case.policy));
        }
    }
    assert!(uncovered.is_empty(), "{}", uncovered.join("\n"));
}

/// Every allowed case, moved into another municipality (principal side, then resource side), is
/// denied by the tenancy guard; the allowed cases cover every action.
#[test]
fn wrong_municipality_is_denied_for_every_action() {
    let engine = engine();
    let elsewhere = uuid::Uuid::from_u128(0x9999);
    let mut actions = BTreeSet::new();
    for l in load_cases()
        .into_iter()
        .filter(|l| l.case.expect == Expect::Allow)
    {
        actions.insert(l.case.action.as_str());
        let mut foreign_principal = Loaded {
            origin: l.origin.clone(),
            case: l.case.clone(),
            principal: l.principal.clone(),
            resource: l.resource.clone(),
        };
        foreign_principal.principal.municipality = elsewhere;
        let mut foreign_resource = l;
        match &mut foreign_resource.resource {
            ResourceJson::Property(p) => p.municipality = elsewhere,
            ResourceJson::AuditLog(log) => log.municipality = elsewhere,
            ResourceJson::Municipality(town) => town.municipality = elsewhere,
        }
        for moved in [foreign_principal, foreign_resource] {
            let decision = engine.decide(&request(&moved));
            assert!(
                !decision.allowed,
                "{}: allowed across municipalities",
                moved.origin
            );
            assert!(
                decision
                    .determining_policies
                    .contains(&"forbid-other-municipality".to_owned()),
                "{}: {:?}",
                moved.origin,
                decision.determining_policies
            );
        }
    }
    let all: BTreeSet<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(actions, all, "some action has no allow case");
}

#[test]
fn inactive_user_is_denied_everything() {
    let engine = engine();
    for mut l in load_cases()
        .into_iter()
        .filter(|l| l.case.expect == Expect::Allow)
    {
        l.principal.active = false;
        let decision = engine.decide(&request(&l));
        assert!(!decision.allowed, "{}", l.origin);
        assert!(
            decision
                .determining_policies
                .contains(&"forbid-inactive-user".to_owned())
        );
    }
}

#[test]
fn embedded_set_matches_the_policies_directory() {
    let dir = policies_dir();
    let (schema, files, origin) = compile::read_dir(&dir, "").unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(origin, SchemaOrigin::Directory);
    let (shipped_schema, shipped_files) = shipped_sources();
    assert_eq!(schema, shipped_schema);
    assert_eq!(
        files, shipped_files,
        "update SHIPPED_POLICIES in src/policy/mod.rs"
    );
    let report = check_dir(&dir).unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(report.policy_set_hash, engine().policy_set_hash());
    assert_eq!(report.files, SHIPPED_POLICIES.len());
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(report.permits + report.forbids, report.policy_ids.len());
}

fn shipped_with(name: &str, text: &str) -> (SourceFile, Vec<SourceFile>) {
    let (schema, mut files) = shipped_sources();
    files.push(SourceFile::new(name, text));
    (schema, files)
}

#[test]
fn a_syntax_error_names_file_and_line() {
    let text = "// a municipality's extra rule\n\n@id(\"ok\")\npermit (principal, action == Action::\"view_plan_summary\", resource);\n\n  @id(\"broken\")\n  permit (principal, action, resource) when { principal.active && };\n";
    let (schema, files) = shipped_with("extra.cedar", text);
    let problems = compile::compile(&schema, &files).expect_err("must fail");
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert_eq!(p.file, "extra.cedar");
    // The exact token: the `}` where an operand was expected.
    assert_eq!(
        p.location,
        Some(Location {
            line: 7,
            column: 67
        })
    );
    assert!(p.to_string().starts_with("extra.cedar:7:67: "), "{p}");
}

#[test]
fn a_policy_without_id_or_with_duplicate_id_is_refused() {
    let text = "permit (principal, action, resource) when { principal.active };\n@id(\"auditor-read-audit\")\npermit (principal, action, resource) when { principal.active };\n";
    let (schema, files) = shipped_with("extra.cedar", text);
    let problems = compile::compile(&schema, &files).expect_err("must fail");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0].location, Some(Location { line: 1, column: 1 }));
    assert!(problems[0].message.contains("@id"));
    assert_eq!(problems[1].location, Some(Location { line: 2, column: 1 }));
    assert!(problems[1].message.contains("duplicate"), "{}", problems[1]);
    assert!(
        problems[1].message.contains("audit.cedar:"),
        "{}",
        problems[1]
    );
}

#[test]
fn an_unknown_attribute_fails_validation() {
    let text = "\n\n@id(\"uses-unknown\")\npermit (principal, action == Action::\"view_plan_summary\", resource)\nwhen { principal.clearance_level > 3 };\n";
    let (schema, files) = shipped_with("extra.cedar", text);
    let problems = compile::compile(&schema, &files).expect_err("must fail");
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert_eq!(p.file, "extra.cedar");
    assert_eq!(p.policy_id.as_deref(), Some("uses-unknown"));
    // The exact expression: `principal.clearance_level`.
    assert_eq!(p.location, Some(Location { line: 5, column: 8 }));
    assert!(p.message.contains("clearance_level"), "{p}");
}

#[test]
fn an_unknown_context_field_for_the_action_fails_validation() {
    // `incident_agencies` exists for reveal_notes, not for request_token.
    let text = "@id(\"wrong-context\")\npermit (principal, action == Action::\"request_token\", resource)\nwhen { context.incident_agencies.contains(\"x\") };\n";
    let (schema, files) = shipped_with("extra.cedar", text);
    let problems = compile::compile(&schema, &files).expect_err("must fail");
    assert_eq!(problems[0].policy_id.as_deref(), Some("wrong-context"));
}

#[test]
fn a_bad_schema_is_reported_against_the_schema_file() {
    let (_, files) = shipped_sources();
    let schema = SourceFile::new(compile::SCHEMA_FILE, "entity User = { oops ");
    let problems = compile::compile(&schema, &files).expect_err("must fail");
    assert_eq!(problems[0].file, compile::SCHEMA_FILE);
}

#[test]
fn the_hash_changes_when_any_file_changes() {
    let (schema, files) = shipped_sources();
    let base = compile::set_hash(&schema, &files);
    assert_eq!(base, engine().policy_set_hash());

    let mut edited = files.clone();
    edited[0].text.push(' ');
    assert_ne!(compile::set_hash(&schema, &edited), base);

    let mut renamed = files.clone();
    renamed[0].name = "zz.cedar".to_owned();
    assert_ne!(compile::set_hash(&schema, &renamed), base);

    let schema_edited = SourceFile::new(compile::SCHEMA_FILE, format!("{}\n", schema.text));
    assert_ne!(compile::set_hash(&schema_edited, &files), base);

    // File order does not matter: the canonical form sorts by name.
    let mut reversed = files.clone();
    reversed.reverse();
    assert_eq!(compile::set_hash(&schema, &reversed), base);

    // Moving text between name and content does not collide (length prefixes).
    let a = [SourceFile::new("a.cedar", "bc")];
    let b = [SourceFile::new("a.cedarb", "c")];
    assert_ne!(
        compile::set_hash(&schema, &a),
        compile::set_hash(&schema, &b)
    );
}

#[test]
fn check_dir_reports_counts_hash_and_problems() {
    let dir = tempfile::tempdir().unwrap();
    // Without a schema file, the shipped schema is used.
    std::fs::write(
        dir.path().join("only.cedar"),
        "@id(\"auditors\")\npermit (principal, action == Action::\"read_audit\", resource)\nwhen { principal.roles.contains(\"auditor\") };\n\n@id(\"no-inactive\")\nforbid (principal, action, resource) unless { principal.active };\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
    let report = check_dir(dir.path()).unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(report.schema, SchemaOrigin::Shipped);
    assert_eq!((report.files, report.permits, report.forbids), (1, 1, 1));
    assert_eq!(report.policy_ids, ["auditors", "no-inactive"]);
    assert!(
        report
            .to_string()
            .contains(&hex::encode(report.policy_set_hash))
    );

    // The engine loads the same directory with the same hash.
    let engine = PolicyEngine::from_dir(dir.path()).unwrap();
    assert_eq!(engine.policy_set_hash(), report.policy_set_hash);

    std::fs::write(
        dir.path().join("bad.cedar"),
        "@id(\"x\")\npermit (principal, action, resource) when { resource.nope };\n",
    )
    .unwrap();
    let problems = check_dir(dir.path()).expect_err("must fail");
    // One error per resource type the unscoped policy could apply to.
    assert_eq!(problems.len(), 3, "{problems:?}");
    let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        shown.contains(
            &"bad.cedar:2:45: policy `x`: attribute `nope` on entity type `Property` not found"
                .to_owned()
        ),
        "{shown:?}"
    );
    assert!(matches!(
        PolicyEngine::from_dir(dir.path()),
        Err(PolicyError::Invalid(_))
    ));

    let empty = tempfile::tempdir().unwrap();
    let problems = check_dir(empty.path()).expect_err("no policies");
    assert!(problems[0].message.contains("no *.cedar"));
}

#[test]
fn a_schema_without_the_shipped_attributes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(compile::SCHEMA_FILE),
        "entity User = { active: Bool };\nentity Property;\nentity AuditLog;\naction view_plan_summary appliesTo { principal: User, resource: Property };\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "@id(\"p\")\npermit (principal, action == Action::\"view_plan_summary\", resource) when { principal.active };\n",
    )
    .unwrap();
    assert!(matches!(
        PolicyEngine::from_dir(dir.path()),
        Err(PolicyError::IncompatibleSchema { .. })
    ));
    assert!(check_dir(dir.path()).is_err());
}

#[test]
fn split_policies_respects_strings_and_comments() {
    let text = "// c; with ; semicolons\n@id(\"a;b\") permit (principal, action, resource) when { \"x\\\";\" == \"y\" };\n  // trailing; comment\n@id(\"c\")\nforbid (principal, action, resource);";
    let chunks = compile::split_policies(text);
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert!(chunks[0].text.starts_with("@id(\"a;b\")"));
    assert!(chunks[0].text.ends_with("};"));
    assert_eq!(
        compile::location(text, chunks[1].start),
        Location { line: 4, column: 1 }
    );
    assert!(compile::split_policies("  // only a comment\n").is_empty());
    // An unterminated last policy is still handed to the parser (which reports it).
    assert_eq!(compile::split_policies("permit (principal").len(), 1);
}

#[test]
fn evaluation_problems_deny_and_are_reported() {
    // A schema refusing the request's shape makes `decide` deny with the reason, never allow.
    let engine = engine();
    let principal = PrincipalAttrs {
        id: uuid::Uuid::from_u128(1),
        municipality: uuid::Uuid::from_u128(7),
        roles: vec![Role::Responder],
        agency_kind: Some(AgencyKind::Fire),
        agency: None,
        active: true,
    };
    let property = PropertyAttrs {
        id: uuid::Uuid::from_u128(2),
        municipality: uuid::Uuid::from_u128(7),
        owner: uuid::Uuid::from_u128(3),
        plan: PlanAttrs::closed(),
    };
    let ok = engine.decide(&AuthzRequest::request_token(
        &principal,
        &property,
        TokenContext {
            step_up_fresh: true,
            named_in_live_grant: true,
        },
    ));
    assert!(ok.allowed && ok.errors.is_empty(), "{ok:?}");
    assert_eq!(ok.determining_policies, ["responder-request-token"]);

    // An audit-log resource with an action that does not apply to it is refused by the schema.
    let mut odd = AuthzRequest::read_audit_log(
        &principal,
        AuditLogAttrs {
            municipality: uuid::Uuid::from_u128(7),
        },
        StepUpContext::default(),
    );
    odd.action = Action::RequestToken;
    let decision = engine.decide(&odd);
    assert!(!decision.allowed);
    assert!(!decision.errors.is_empty());
}

#[test]
fn the_engine_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicyEngine>();
}

#[test]
fn a_stored_plan_becomes_plan_attributes() {
    let rule = |allowed, types: &[&str]| crate::plans::AgencyRule {
        allowed,
        incident_types: types.iter().map(|t| (*t).to_owned()).collect(),
        second_approval: !allowed,
    };
    let agencies = crate::plans::AgencyRules {
        fire: rule(true, &["fire", "fire"]),
        ems: rule(false, &[]),
        police: rule(true, &["welfare_check"]),
    };
    let plan = PlanAttrs::from_plan(&agencies, 90);
    assert!(plan.fire.allowed && !plan.fire.second_approval);
    assert_eq!(plan.fire.incident_types.len(), 1);
    assert!(!plan.ems.allowed && plan.ems.second_approval);
    assert!(plan.police.incident_types.contains("welfare_check"));
    assert_eq!(plan.max_grant_minutes, 90);
    assert_eq!(PlanAttrs::from_plan(&agencies, -5).max_grant_minutes, 0);
}

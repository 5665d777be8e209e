//! Reports over the audit log for a period, for a whole municipality (auditors) or one property
//! (its homeowner or an auditor), each computed against a signed checkpoint: only entries inside
//! that checkpoint's tree count, so a report can be checked against an export of the same size.
//!
//! What a report answers (issue 10, item 6, the part that the log alone can answer):
//! - counts per action and outcome;
//! - **reconciliation**: every door opening (`lock.receipt` allowed) should trace back to an
//!   incident (the token the lock accepted names it); an opening without one is flagged, as is a
//!   token (`token.issue`) with no receipt for it, and a grant (`grant.create`) with no token;
//! - reveals of responder notes, and reveals with no door opening of that home after them;
//! - denials: by the policy and at the door, and the locks with repeated door denials;
//! - activity by dispatcher and by agency (grants, approvals, reveals, policy denials, per actor,
//!   with the actor's agency as it is now);
//! - two-person-rule grants (`grant.approve`) with who asked and who approved;
//! - grants outside their plan: each `grant.create` checked against the plan version it names
//!   (minutes over the plan's maximum, an agency kind or incident type the plan does not admit,
//!   or a dispatcher's grant live at once where the plan asks for a second approval).
//!
//! Entries are read in position order, at most [`MAX_ENTRIES`] per report (a longer period is
//! refused; run it in parts).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

use crate::store::{StoreError, Tenant};

/// The most entries one report reads.
pub const MAX_ENTRIES: i64 = 200_000;

/// How many entries of one action had one outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ActionCount {
    /// `area.verb`.
    pub action: String,
    /// `allow`, `deny` or `info`.
    pub outcome: String,
    /// How many.
    pub count: u64,
}

/// A lock with repeated denials at the door.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RepeatedDenials {
    /// The lock.
    pub lock: Uuid,
    /// How many denials in the period.
    pub denials: u64,
}

/// What one actor did in the period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ActorActivity {
    /// The account.
    pub actor: Uuid,
    /// Its agency now, if any.
    pub agency: Option<Uuid>,
    /// Grants it made (`grant.create`).
    pub grants: u64,
    /// Second approvals it gave (`grant.approve`).
    pub approvals: u64,
    /// Reveals of notes it was shown (`plan.reveal_notes`).
    pub reveals: u64,
    /// Requests the policy refused it (`policy.deny`).
    pub policy_denials: u64,
}

/// The same, summed per agency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AgencyActivity {
    /// The agency (none: actors of no agency, e.g. homeowners).
    pub agency: Option<Uuid>,
    /// Its name.
    pub name: Option<String>,
    /// Grants.
    pub grants: u64,
    /// Approvals.
    pub approvals: u64,
    /// Reveals.
    pub reveals: u64,
    /// Policy denials.
    pub policy_denials: u64,
}

/// A grant made under the two-person rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApprovedGrant {
    /// The grant.
    pub grant: Uuid,
    /// Position of its approval.
    pub seq: i64,
    /// Who asked (the `grant.create` entry's actor, when it is in the period).
    pub requested_by: Option<Uuid>,
    /// Who approved.
    pub approved_by: Option<Uuid>,
}

/// A grant its own plan version does not admit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct GrantOutsidePlan {
    /// Position of the `grant.create` entry.
    pub seq: i64,
    /// The grant.
    pub grant: Uuid,
    /// What the plan does not admit.
    pub reasons: Vec<String>,
}

/// A report for a period.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// The property it is about, or none for the whole municipality.
    pub property: Option<Uuid>,
    /// Start of the period (inclusive).
    pub from: DateTime<Utc>,
    /// End of the period (exclusive).
    pub to: DateTime<Utc>,
    /// Size of the checkpoint the report was computed against (0: no checkpoint yet, nothing counted).
    pub tree_size: u64,
    /// That checkpoint's signed note.
    pub checkpoint: Option<String>,
    /// Entries counted.
    pub entries: u64,
    /// Per action and outcome.
    pub counts: Vec<ActionCount>,
    /// Door openings (allowed `lock.receipt`).
    pub openings: u64,
    /// Positions of openings that trace back to no incident.
    pub openings_without_incident: Vec<i64>,
    /// Positions of issued tokens with no receipt in the period.
    pub tokens_without_receipt: Vec<i64>,
    /// Positions of grants with no token in the period.
    pub grants_without_token: Vec<i64>,
    /// Reveals of responder notes.
    pub reveals: u64,
    /// Positions of reveals after which that home's door was not opened in the period.
    pub reveals_without_opening: Vec<i64>,
    /// Policy denials (`policy.deny`).
    pub policy_denials: u64,
    /// Denials at the door (refused `lock.receipt`).
    pub door_denials: u64,
    /// Locks with at least 3 door denials in the period.
    pub repeated_door_denials: Vec<RepeatedDenials>,
    /// Activity per actor (grants, approvals, reveals, policy denials), most active first.
    pub by_actor: Vec<ActorActivity>,
    /// The same per agency.
    pub by_agency: Vec<AgencyActivity>,
    /// Grants approved by a second dispatcher.
    pub approved_grants: Vec<ApprovedGrant>,
    /// Grants outside the plan version they name.
    pub grants_outside_plan: Vec<GrantOutsidePlan>,
}

/// Why a report was not made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The period is empty or backwards, or holds more than [`MAX_ENTRIES`] entries.
    #[error("{0}")]
    Period(&'static str),
}

/// Computes the report for `[from, to)` against the newest checkpoint.
pub async fn report(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Option<Uuid>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Report, ReportError> {
    if to <= from {
        return Err(ReportError::Period("the period must end after it starts"));
    }
    let checkpoint = super::log::checkpoint(client, tenant, None).await?;
    let (tree_size, note) = match checkpoint {
        Some(cp) => (cp.size, Some(cp.note)),
        None => (0, None),
    };
    let rows = client
        .query(
            "SELECT seq, action, outcome, subject_id, property_id, incident_id, public_details, actor_id
             FROM audit_entries
             WHERE municipality_id = $1 AND seq IS NOT NULL AND seq < $2
               AND recorded_at >= $3 AND recorded_at < $4
               AND ($5::uuid IS NULL OR property_id = $5)
             ORDER BY seq LIMIT $6",
            &[
                &tenant.id(),
                &i64::try_from(tree_size).unwrap_or(i64::MAX),
                &from,
                &to,
                &property,
                &MAX_ENTRIES.saturating_add(1),
            ],
        )
        .await
        .map_err(StoreError::from)?;
    if i64::try_from(rows.len()).unwrap_or(i64::MAX) > MAX_ENTRIES {
        return Err(ReportError::Period(
            "the period holds too many entries for one report; ask for a shorter one",
        ));
    }
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut report = Report {
        property,
        from,
        to,
        tree_size,
        checkpoint: note,
        entries: u64::try_from(rows.len()).unwrap_or(u64::MAX),
        counts: Vec::new(),
        openings: 0,
        openings_without_incident: Vec::new(),
        tokens_without_receipt: Vec::new(),
        grants_without_token: Vec::new(),
        reveals: 0,
        reveals_without_opening: Vec::new(),
        policy_denials: 0,
        door_denials: 0,
        repeated_door_denials: Vec::new(),
        by_actor: Vec::new(),
        by_agency: Vec::new(),
        approved_grants: Vec::new(),
        grants_outside_plan: Vec::new(),
    };
    let mut activity: BTreeMap<Uuid, ActorActivity> = BTreeMap::new();
    let mut requested: BTreeMap<Uuid, Uuid> = BTreeMap::new();
    let mut created: Vec<(i64, Uuid, serde_json::Value)> = Vec::new();
    let mut received_ctis: HashSet<String> = HashSet::new();
    let mut tokened_grants: HashSet<String> = HashSet::new();
    let mut tokens: Vec<(i64, Uuid)> = Vec::new();
    let mut grants: Vec<(i64, Uuid)> = Vec::new();
    let mut reveals: Vec<(i64, Option<Uuid>)> = Vec::new();
    let mut openings: Vec<(i64, Option<Uuid>)> = Vec::new();
    let mut door_denials: BTreeMap<Uuid, u64> = BTreeMap::new();
    for row in &rows {
        let seq: i64 = row.get(0);
        let action: String = row.get(1);
        let outcome: String = row.get(2);
        let subject: Option<Uuid> = row.get(3);
        let home: Option<Uuid> = row.get(4);
        let incident: Option<Uuid> = row.get(5);
        let details: serde_json::Value = row.get(6);
        let actor: Option<Uuid> = row.get(7);
        if let Some(a) = actor {
            let mine = activity.entry(a).or_insert_with(|| ActorActivity {
                actor: a,
                ..ActorActivity::default()
            });
            match (action.as_str(), outcome.as_str()) {
                ("grant.create", "allow") => mine.grants += 1,
                ("grant.approve", "allow") => mine.approvals += 1,
                ("plan.reveal_notes", "allow") => mine.reveals += 1,
                ("policy.deny", _) => mine.policy_denials += 1,
                _ => {}
            }
        }
        match (action.as_str(), outcome.as_str()) {
            ("grant.approve", "allow") => {
                if let Some(grant) = subject {
                    report.approved_grants.push(ApprovedGrant {
                        grant,
                        seq,
                        requested_by: None,
                        approved_by: actor,
                    });
                }
            }
            ("lock.receipt", "allow") => {
                report.openings += 1;
                if incident.is_none() {
                    report.openings_without_incident.push(seq);
                }
                if let Some(cti) = details.get("cti").and_then(|c| c.as_str()) {
                    received_ctis.insert(cti.to_owned());
                }
                openings.push((seq, home));
            }
            ("lock.receipt", _) => {
                report.door_denials += 1;
                if let Some(cti) = details.get("cti").and_then(|c| c.as_str()) {
                    received_ctis.insert(cti.to_owned());
                }
                if let Some(lock) = subject {
                    *door_denials.entry(lock).or_default() += 1;
                }
            }
            ("token.issue", "allow") => {
                if let Some(token) = subject {
                    tokens.push((seq, token));
                }
                if let Some(grant) = details.get("grant").and_then(|g| g.as_str()) {
                    tokened_grants.insert(grant.to_owned());
                }
            }
            ("grant.create", "allow") => {
                if let Some(grant) = subject {
                    grants.push((seq, grant));
                    created.push((seq, grant, details.clone()));
                    if let Some(a) = actor {
                        requested.insert(grant, a);
                    }
                }
            }
            ("plan.reveal_notes", "allow") => {
                report.reveals += 1;
                reveals.push((seq, home));
            }
            ("policy.deny", _) => report.policy_denials += 1,
            _ => {}
        }
        *counts.entry((action, outcome)).or_default() += 1;
    }
    report.counts = counts
        .into_iter()
        .map(|((action, outcome), count)| ActionCount {
            action,
            outcome,
            count,
        })
        .collect();
    // A receipt names the token by its 16-byte id in hex; a token's subject is the same bytes as a UUID.
    report.tokens_without_receipt = tokens
        .iter()
        .filter(|(_, t)| !received_ctis.contains(&t.simple().to_string()))
        .map(|(seq, _)| *seq)
        .collect();
    report.grants_without_token = grants
        .iter()
        .filter(|(_, g)| !tokened_grants.contains(&g.to_string()))
        .map(|(seq, _)| *seq)
        .collect();
    report.reveals_without_opening = reveals
        .iter()
        .filter(|(seq, home)| {
            !openings
                .iter()
                .any(|(opened, at)| opened > seq && home.is_some() && at == home)
        })
        .map(|(seq, _)| *seq)
        .collect();
    report.repeated_door_denials = door_denials
        .into_iter()
        .filter(|(_, n)| *n >= 3)
        .map(|(lock, denials)| RepeatedDenials { lock, denials })
        .collect();
    for approved in &mut report.approved_grants {
        approved.requested_by = requested.get(&approved.grant).copied();
    }
    activity_by_agency(client, tenant, activity, &mut report).await?;
    report.grants_outside_plan = outside_plan(client, tenant, &created).await?;
    Ok(report)
}

/// Fills in `by_actor` (actors with any counted activity, most active first) and `by_agency`.
async fn activity_by_agency(
    client: &impl GenericClient,
    tenant: Tenant,
    activity: BTreeMap<Uuid, ActorActivity>,
    report: &mut Report,
) -> Result<(), StoreError> {
    let mut actors: Vec<ActorActivity> = activity
        .into_values()
        .filter(|a| a.grants + a.approvals + a.reveals + a.policy_denials > 0)
        .collect();
    let ids: Vec<Uuid> = actors.iter().map(|a| a.actor).collect();
    let mut agency_of: BTreeMap<Uuid, (Uuid, String)> = BTreeMap::new();
    for r in client
        .query(
            "SELECT u.id, a.id, a.name FROM users u JOIN agencies a ON a.id = u.agency_id
             WHERE u.municipality_id = $1 AND u.id = ANY($2)",
            &[&tenant.id(), &ids],
        )
        .await?
    {
        agency_of.insert(r.get(0), (r.get(1), r.get(2)));
    }
    let mut agencies: BTreeMap<Option<Uuid>, AgencyActivity> = BTreeMap::new();
    for a in &mut actors {
        let found = agency_of.get(&a.actor);
        a.agency = found.map(|(id, _)| *id);
        let sum = agencies.entry(a.agency).or_insert_with(|| AgencyActivity {
            agency: a.agency,
            name: found.map(|(_, name)| name.clone()),
            ..AgencyActivity::default()
        });
        sum.grants += a.grants;
        sum.approvals += a.approvals;
        sum.reveals += a.reveals;
        sum.policy_denials += a.policy_denials;
    }
    let total = |a: &ActorActivity| a.grants + a.approvals + a.reveals + a.policy_denials;
    actors.sort_by(|x, y| total(y).cmp(&total(x)).then(x.actor.cmp(&y.actor)));
    report.by_actor = actors;
    report.by_agency = agencies.into_values().collect();
    Ok(())
}

/// Each grant checked against the plan version, incident and agency it names.
async fn outside_plan(
    client: &impl GenericClient,
    tenant: Tenant,
    created: &[(i64, Uuid, serde_json::Value)],
) -> Result<Vec<GrantOutsidePlan>, StoreError> {
    let ids: Vec<Uuid> = created.iter().map(|(_, g, _)| *g).collect();
    let mut facts: BTreeMap<Uuid, (serde_json::Value, i32, String, String)> = BTreeMap::new();
    for r in client
        .query(
            "SELECT g.id, p.rules, p.max_grant_minutes, a.kind, i.kind
             FROM grants g JOIN access_plans p ON p.id = g.plan_id
             JOIN incidents i ON i.id = g.incident_id JOIN agencies a ON a.id = i.agency_id
             WHERE g.municipality_id = $1 AND g.id = ANY($2)",
            &[&tenant.id(), &ids],
        )
        .await?
    {
        facts.insert(r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4)));
    }
    let mut out = Vec::new();
    for (seq, grant, details) in created {
        let mut reasons = Vec::new();
        match facts.get(grant) {
            None => reasons.push("no grant row or plan version for it".to_owned()),
            Some((rules, max_minutes, agency_kind, incident_kind)) => {
                let minutes = details.get("minutes").and_then(serde_json::Value::as_i64);
                if minutes.is_some_and(|m| m > i64::from(*max_minutes)) {
                    reasons.push(format!(
                        "{} minutes, the plan allows at most {max_minutes}",
                        minutes.unwrap_or_default()
                    ));
                }
                let rule = rules.get(agency_kind.as_str());
                let allowed = rule
                    .and_then(|r| r.get("allowed"))
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false);
                if !allowed {
                    reasons.push(format!("the plan does not admit {agency_kind}"));
                } else if !rule
                    .and_then(|r| r.get("incident_types"))
                    .and_then(serde_json::Value::as_array)
                    .is_some_and(|t| t.iter().any(|k| k.as_str() == Some(incident_kind)))
                {
                    reasons.push(format!(
                        "the plan does not admit {agency_kind} for a {incident_kind} incident"
                    ));
                }
                let second = rule
                    .and_then(|r| r.get("second_approval"))
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false);
                let via_alarm = details.get("via").and_then(|v| v.as_str()) == Some("alarm");
                let status = details.get("status").and_then(|v| v.as_str());
                if second && !via_alarm && status == Some("live") {
                    reasons
                        .push("live at once, but the plan asks for a second approval".to_owned());
                }
            }
        }
        if !reasons.is_empty() {
            out.push(GrantOutsidePlan {
                seq: *seq,
                grant: *grant,
                reasons,
            });
        }
    }
    Ok(out)
}

/// The report as CSV, one row per fact: `section,seq,subject,value` (counts, flags, activity),
/// after a row naming the period and the checkpoint's size.
pub fn to_csv(r: &Report) -> String {
    let mut out = String::from("section,seq,subject,value\r\n");
    let mut row = |section: &str, seq: Option<i64>, subject: &str, value: &str| {
        let seq = seq.map(|s| s.to_string()).unwrap_or_default();
        for (i, v) in [section, seq.as_str(), subject, value].iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            super::search::csv_cell(&mut out, v);
        }
        out.push_str("\r\n");
    };
    let period = format!("{} .. {}", r.from.to_rfc3339(), r.to.to_rfc3339());
    row("period", None, &period, &r.tree_size.to_string());
    for c in &r.counts {
        row(
            "count",
            None,
            &format!("{} {}", c.action, c.outcome),
            &c.count.to_string(),
        );
    }
    for seq in &r.openings_without_incident {
        row("opening without incident", Some(*seq), "", "");
    }
    for seq in &r.tokens_without_receipt {
        row("token without receipt", Some(*seq), "", "");
    }
    for seq in &r.grants_without_token {
        row("grant without token", Some(*seq), "", "");
    }
    for seq in &r.reveals_without_opening {
        row("reveal without opening", Some(*seq), "", "");
    }
    for d in &r.repeated_door_denials {
        row(
            "repeated door denials",
            None,
            &d.lock.to_string(),
            &d.denials.to_string(),
        );
    }
    for g in &r.grants_outside_plan {
        row(
            "grant outside plan",
            Some(g.seq),
            &g.grant.to_string(),
            &g.reasons.join("; "),
        );
    }
    for g in &r.approved_grants {
        let who = format!(
            "asked by {}, approved by {}",
            g.requested_by.map(|u| u.to_string()).unwrap_or_default(),
            g.approved_by.map(|u| u.to_string()).unwrap_or_default()
        );
        row("two-person grant", Some(g.seq), &g.grant.to_string(), &who);
    }
    for a in &r.by_actor {
        let what = format!(
            "grants {}, approvals {}, reveals {}, policy denials {}",
            a.grants, a.approvals, a.reveals, a.policy_denials
        );
        row("actor", None, &a.actor.to_string(), &what);
    }
    for a in &r.by_agency {
        let what = format!(
            "grants {}, approvals {}, reveals {}, policy denials {}",
            a.grants, a.approvals, a.reveals, a.policy_denials
        );
        let name = a.name.clone().unwrap_or_else(|| "(no agency)".to_owned());
        row("agency", None, &name, &what);
    }
    out
}

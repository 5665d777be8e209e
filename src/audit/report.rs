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
//! - denials: by the policy and at the door, and the locks with repeated door denials.
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
            "SELECT seq, action, outcome, subject_id, property_id, incident_id, public_details
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
    };
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
        match (action.as_str(), outcome.as_str()) {
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
    Ok(report)
}

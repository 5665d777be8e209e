//! Filtered reading of a municipality's log, for auditors: by time range, actor, the actor's
//! agency, property, incident, action and outcome, newest first, in bounded pages (and bounded
//! exports). Seals what is pending first, as every reader does.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::{ENTRY_COLUMNS, Entry, entry_from_row, seal};
use crate::store::{StoreError, Tenant};

/// Most entries one page shows.
pub const PAGE_SIZE: i64 = 100;
/// Most entries one export holds.
pub const EXPORT_LIMIT: i64 = 10_000;

/// What to look for; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Recorded at or after.
    pub from: Option<DateTime<Utc>>,
    /// Recorded before.
    pub to: Option<DateTime<Utc>>,
    /// Who acted.
    pub actor: Option<Uuid>,
    /// The actor's agency.
    pub agency: Option<Uuid>,
    /// Property concerned.
    pub property: Option<Uuid>,
    /// Incident concerned.
    pub incident: Option<Uuid>,
    /// The action (`grant.create`), or a prefix ending in a dot (`grant.`).
    pub action: Option<String>,
    /// `allow`, `deny` or `info`.
    pub outcome: Option<String>,
}

/// Sealed entries matching `filter` with `seq < before` (all when `None`), newest first, at most
/// `limit` (clamped to 1..=[`EXPORT_LIMIT`]).
pub async fn search(
    client: &impl GenericClient,
    tenant: Tenant,
    filter: &Filter,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Entry>, StoreError> {
    seal(client, tenant).await?;
    let (action_exact, action_prefix) = match filter.action.as_deref() {
        Some(a) if a.ends_with('.') => {
            // LIKE's wildcards in the prefix match only themselves.
            let literal = a.replace(['\\', '%'], "").replace('_', "\\_");
            (None, Some(format!("{literal}%")))
        }
        Some(a) => (Some(a.to_owned()), None),
        None => (None, None),
    };
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_entries e
         WHERE e.municipality_id = $1 AND e.seq IS NOT NULL
           AND ($2::bigint IS NULL OR e.seq < $2)
           AND ($3::timestamptz IS NULL OR e.recorded_at >= $3)
           AND ($4::timestamptz IS NULL OR e.recorded_at < $4)
           AND ($5::uuid IS NULL OR e.actor_id = $5)
           AND ($6::uuid IS NULL OR EXISTS (SELECT 1 FROM users u WHERE u.municipality_id = e.municipality_id
                                             AND u.id = e.actor_id AND u.agency_id = $6))
           AND ($7::uuid IS NULL OR e.property_id = $7)
           AND ($8::uuid IS NULL OR e.incident_id = $8)
           AND ($9::text IS NULL OR e.action = $9)
           AND ($10::text IS NULL OR e.action LIKE $10)
           AND ($11::text IS NULL OR e.outcome = $11)
         ORDER BY e.seq DESC LIMIT $12"
    );
    let rows = client
        .query(
            &sql,
            &[
                &tenant.id(),
                &before,
                &filter.from,
                &filter.to,
                &filter.actor,
                &filter.agency,
                &filter.property,
                &filter.incident,
                &action_exact,
                &action_prefix,
                &filter.outcome,
                &limit.clamp(1, EXPORT_LIMIT),
            ],
        )
        .await?;
    Ok(rows.iter().map(entry_from_row).collect())
}

/// One sealed entry by position.
pub async fn entry(
    client: &impl GenericClient,
    tenant: Tenant,
    seq: i64,
) -> Result<Entry, StoreError> {
    seal(client, tenant).await?;
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_entries WHERE municipality_id = $1 AND seq = $2"
    );
    client
        .query_opt(&sql, &[&tenant.id(), &seq])
        .await?
        .map(|r| entry_from_row(&r))
        .ok_or(StoreError::NotFound)
}

/// The entries as CSV (RFC 4180): a header line, then one line per entry; details as compact JSON.
/// A cell starting with `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet does not run it.
pub fn to_csv(entries: &[Entry]) -> String {
    let cell = csv_cell;
    let opt = |u: Option<Uuid>| u.map(|u| u.to_string()).unwrap_or_default();
    let mut out = String::from(
        "seq,recorded_at,actor,action,outcome,subject_kind,subject_id,property,incident,policy_set_hash,details,leaf_hash\r\n",
    );
    for e in entries {
        let fields = [
            e.seq.to_string(),
            e.recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            opt(e.actor),
            e.action.clone(),
            e.outcome.clone(),
            e.subject_kind.clone().unwrap_or_default(),
            opt(e.subject_id),
            opt(e.property),
            opt(e.incident),
            e.policy_set_hash.clone().unwrap_or_default(),
            e.details.to_string(),
            e.leaf_hash.clone(),
        ];
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            cell(&mut out, f);
        }
        out.push_str("\r\n");
    }
    out
}

/// Appends one CSV cell (RFC 4180 quoting), with a leading `'` before `=`, `+`, `-`, `@` so a
/// spreadsheet never reads a cell as a formula.
pub fn csv_cell(out: &mut String, value: &str) {
    let guarded = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&guarded.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(&guarded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let e = Entry {
            seq: 3,
            recorded_at: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            actor: None,
            action: "=cmd".to_owned(),
            outcome: "allow".to_owned(),
            subject_kind: Some("a,\"b\"".to_owned()),
            subject_id: None,
            property: None,
            incident: None,
            policy_set_hash: None,
            details: serde_json::json!({"k": "v"}),
            leaf_hash: "ab".to_owned(),
            chain_hash: "cd".to_owned(),
            personal: None,
            data_key: None,
        };
        let csv = to_csv(&[e]);
        let line = csv.lines().nth(1).unwrap_or_default();
        assert_eq!(
            line,
            "3,1970-01-01T00:00:00.000000Z,,'=cmd,allow,\"a,\"\"b\"\"\",,,,,\"{\"\"k\"\":\"\"v\"\"}\",ab"
        );
    }
}

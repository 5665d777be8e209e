//! The data-subject export (GDPR Art. 15): everything firstkey holds about a homeowner and their
//! homes, as one JSON document — account, keys, properties, locks, plan versions (notes opened),
//! contacts, grants, tokens, receipts, mails, and every audit entry about their homes with its
//! inclusion proof against the newest signed checkpoint (verifiable with `firstkey audit verify`),
//! plus the entries they acted in. Personal details of entries are included where still readable;
//! erased ones say so.
//!
//! Left out on purpose: secrets (pairing-code hashes, token bytes and hashes, credential key
//! material, session secrets) and mail bodies (an unsent one may hold a one-time link; sent ones
//! are not kept).
//!
//! The caller authorizes (the policy's `read_audit` on each home, with step-up).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::{Value, json};
use uuid::Uuid;

use super::personal::{self, Personal};
use crate::crypto::{self, Kek};
use crate::store::{StoreError, Tenant};

/// The export's format name.
pub const FORMAT: &str = "firstkey-subject-export/v1";

/// Most entries the account's own actions list carries (the newest are kept).
const MAX_OWN_ENTRIES: i64 = 10_000;

async fn rows_json(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Value>, StoreError> {
    Ok(client
        .query(sql, params)
        .await?
        .iter()
        .map(|r| r.get::<_, Value>(0))
        .collect())
}

fn personal_json(p: Option<&Personal>) -> Value {
    match p {
        None | Some(Personal::None) => Value::Null,
        Some(Personal::Readable(v)) => v.clone(),
        Some(Personal::Erased) => json!("erased"),
    }
}

/// Builds the export for `user` of `tenant`, whose homes are `homes` (already authorized).
pub async fn export(
    client: &impl GenericClient,
    tenant: Tenant,
    user: Uuid,
    homes: &[Uuid],
    kek: &Kek,
    now: DateTime<Utc>,
) -> Result<Value, StoreError> {
    super::seal(client, tenant).await?;
    let t = tenant.id();
    let account = client
        .query_one(
            "SELECT jsonb_build_object('id', u.id, 'email', u.email, 'display_name', u.display_name,
                 'status', u.status, 'created_at', u.created_at, 'email_verified_at', u.email_verified_at,
                 'roles', ARRAY(SELECT role FROM user_roles r WHERE r.user_id = u.id ORDER BY role),
                 'municipality', m.slug)
             FROM users u JOIN municipalities m ON m.id = u.municipality_id
             WHERE u.municipality_id = $1 AND u.id = $2",
            &[&t, &user],
        )
        .await?
        .get::<_, Value>(0);
    let keys = rows_json(
        client,
        "SELECT jsonb_build_object('id', id, 'name', name, 'kind', kind, 'status', status,
             'created_at', created_at, 'last_used_at', last_used_at, 'removed_at', removed_at)
         FROM webauthn_credentials WHERE municipality_id = $1 AND user_id = $2 ORDER BY created_at",
        &[&t, &user],
    )
    .await?;
    let sessions = rows_json(
        client,
        "SELECT jsonb_build_object('created_at', created_at, 'last_seen_at', last_seen_at,
             'ended_at', ended_at)
         FROM sessions WHERE municipality_id = $1 AND user_id = $2 ORDER BY created_at",
        &[&t, &user],
    )
    .await?;
    let email: String = account
        .get("email")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mails = rows_json(
        client,
        "SELECT jsonb_build_object('kind', kind, 'recipient', recipient, 'subject', subject,
             'created_at', created_at, 'sent_at', sent_at)
         FROM notification_outbox WHERE municipality_id = $1 AND lower(recipient) = lower($2)
         ORDER BY created_at",
        &[&t, &email],
    )
    .await?;
    let mut properties = Vec::new();
    for &home in homes {
        properties.push(property(client, tenant, home, kek).await?);
    }
    let own_rows = client
        .query(
            &format!(
                "SELECT {} FROM audit_entries WHERE municipality_id = $1 AND actor_id = $2
                 AND seq IS NOT NULL ORDER BY seq DESC LIMIT $3",
                super::ENTRY_COLUMNS
            ),
            &[&t, &user, &MAX_OWN_ENTRIES],
        )
        .await?;
    let mut own: Vec<super::Entry> = own_rows.iter().map(super::entry_from_row).collect();
    own.reverse();
    Ok(json!({
        "format": FORMAT,
        "generated_at": now,
        "account": account,
        "security_keys": keys,
        "sessions": sessions,
        "mails": mails,
        "properties": properties,
        "own_audit_entries": own,
    }))
}

async fn property(
    client: &impl GenericClient,
    tenant: Tenant,
    home: Uuid,
    kek: &Kek,
) -> Result<Value, StoreError> {
    let t = tenant.id();
    let facts = client
        .query_one(
            "SELECT jsonb_build_object('id', id, 'address', address, 'created_at', created_at)
             FROM properties WHERE municipality_id = $1 AND id = $2",
            &[&t, &home],
        )
        .await?
        .get::<_, Value>(0);
    let locks = rows_json(
        client,
        "SELECT jsonb_build_object('id', id, 'name', name, 'pairing_state', pairing_state,
             'paired_at', paired_at, 'last_seen_at', last_seen_at, 'battery_percent', battery_percent,
             'trust_bundle_version', trust_bundle_version, 'created_at', created_at)
         FROM locks WHERE municipality_id = $1 AND property_id = $2 ORDER BY created_at",
        &[&t, &home],
    )
    .await?;
    // Registrations of locks for this home, waiting or closed (never the code's hash).
    let lock_registrations = rows_json(
        client,
        "SELECT jsonb_build_object('id', id, 'lock_id', lock_id, 'name', name, 'state', state,
             'created_at', created_at, 'expires_at', expires_at, 'closed_at', closed_at)
         FROM lock_registrations WHERE municipality_id = $1 AND property_id = $2 ORDER BY created_at",
        &[&t, &home],
    )
    .await?;
    let plan_rows = client
        .query(
            "SELECT id, version, created_at, rules, max_grant_minutes, contacts, notifications,
                 retention_days, notes_ciphertext, notes_wrapped_key
             FROM access_plans WHERE municipality_id = $1 AND property_id = $2 ORDER BY version",
            &[&t, &home],
        )
        .await?;
    let mut plans = Vec::new();
    for r in &plan_rows {
        let id: Uuid = r.get(0);
        let ciphertext: Option<Vec<u8>> = r.get(8);
        let wrapped: Option<Vec<u8>> = r.get(9);
        let notes = match (ciphertext, wrapped) {
            (Some(ciphertext), Some(wrapped_key)) => {
                let sealed = crypto::Sealed {
                    ciphertext,
                    wrapped_key,
                };
                let plain = crypto::open(kek, id.as_bytes(), &sealed)
                    .map_err(|e| StoreError::Unavailable(format!("plan notes: {e}")))?;
                serde_json::from_slice::<Value>(&plain).unwrap_or(Value::Null)
            }
            _ => Value::Null,
        };
        plans.push(json!({
            "version": r.get::<_, i32>(1),
            "created_at": r.get::<_, DateTime<Utc>>(2),
            "agencies": r.get::<_, Value>(3),
            "max_grant_minutes": r.get::<_, i32>(4),
            "contacts": r.get::<_, Value>(5),
            "notifications": r.get::<_, Value>(6),
            "retention_days": r.get::<_, i32>(7),
            "notes": notes,
        }));
    }
    let grants = rows_json(
        client,
        "SELECT jsonb_build_object('id', g.id, 'incident', i.cad_number, 'incident_kind', i.kind,
             'agency', a.name, 'unit', g.unit, 'justification', g.justification, 'status', g.status,
             'granted_by', gb.display_name, 'approved_by', ab.display_name,
             'created_at', g.created_at, 'starts_at', g.starts_at, 'ends_at', g.ends_at,
             'ended_at', g.ended_at, 'end_reason', g.end_reason,
             'responders', ARRAY(SELECT u.display_name FROM grant_responders r JOIN users u ON u.id = r.responder_id
                                 WHERE r.grant_id = g.id ORDER BY u.display_name))
         FROM grants g JOIN incidents i ON i.id = g.incident_id JOIN agencies a ON a.id = i.agency_id
             JOIN users gb ON gb.id = g.granted_by LEFT JOIN users ab ON ab.id = g.approved_by
         WHERE g.municipality_id = $1 AND g.property_id = $2 ORDER BY g.created_at",
        &[&t, &home],
    )
    .await?;
    let tokens = rows_json(
        client,
        "SELECT jsonb_build_object('id', encode(t.cti, 'hex'), 'grant', t.grant_id, 'lock', l.name,
             'responder', u.display_name, 'issued_at', t.issued_at, 'not_before', t.not_before,
             'expires_at', t.expires_at, 'status', t.status, 'revoked_at', t.revoked_at)
         FROM issued_tokens t JOIN locks l ON l.id = t.lock_id JOIN users u ON u.id = t.responder_id
         WHERE t.municipality_id = $1 AND l.property_id = $2 ORDER BY t.issued_at",
        &[&t, &home],
    )
    .await?;
    let receipts = rows_json(
        client,
        "SELECT jsonb_build_object('lock', l.name, 'seq', r.seq, 'decision', r.decision, 'reason', r.reason,
             'decided_at', r.decided_at, 'received_at', r.received_at,
             'receipt_hash', encode(r.receipt_hash, 'hex'))
         FROM receipts r JOIN locks l ON l.id = r.lock_id
         WHERE r.municipality_id = $1 AND l.property_id = $2 ORDER BY l.name, r.seq",
        &[&t, &home],
    )
    .await?;
    let log = super::log::export(client, tenant, Some(home))
        .await
        .map_err(|e| match e {
            super::log::LogError::Store(s) => s,
            other => StoreError::Conflict(other.to_string()),
        })?;
    let seqs: Vec<i64> = client
        .query(
            "SELECT seq FROM audit_entries WHERE municipality_id = $1 AND property_id = $2
             AND seq IS NOT NULL AND data_key_id IS NOT NULL ORDER BY seq",
            &[&t, &home],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let opened = personal::open_many(client, tenant, &seqs, kek).await?;
    let personal_details: Vec<Value> = seqs
        .iter()
        .map(|s| json!({ "index": s, "details": personal_json(opened.get(s)) }))
        .collect();
    Ok(json!({
        "property": facts,
        "locks": locks,
        "lock_registrations": lock_registrations,
        "plan_versions": plans,
        "grants": grants,
        "tokens": tokens,
        "receipts": receipts,
        "audit": log,
        "audit_personal_details": personal_details,
    }))
}

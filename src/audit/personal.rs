//! Personal details in audit entries, and their erasure by crypto-shredding.
//!
//! An entry's personal details (an address, a name, free text) are not in its public `details`:
//! [`super::record_personal`] encrypts them (AES-256-GCM) under a **data key** of the entry's
//! property and calendar month (UTC), stored in `audit_entries.private_details`, and the entry's
//! leaf input carries only `personal` (hex SHA-256 of that ciphertext) and `data_key` (the key's
//! id). Data keys live in `audit_data_keys`, wrapped under the KEK; the key of a month is made
//! with `erase_after` = the month's end plus the retention days of the home's plan in force
//! (365 without a plan).
//!
//! **Erasure** sets a key's `wrapped_key` to NULL (a trigger allows exactly that change and nothing
//! else, and no deletion). The ciphertext stays in the sealed, never-updated entry, so every leaf,
//! the chain, the Merkle tree, checkpoints and proofs verify exactly as before; the details can no
//! longer be read by anyone, the server included. Erasure happens when a key's `erase_after`
//! passes ([`erase_due`], run by every replica's sealer task, one replica per municipality at a
//! time under an advisory lock) or when the homeowner erases a home's history details
//! ([`erase_property`]); both are audited.
//!
//! Never logged: the details, the keys.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::{Event, Outcome};
use crate::crypto::{self, Kek};
use crate::store::{StoreError, Tenant};

/// Retention when the home has no plan yet.
const DEFAULT_RETENTION_DAYS: i64 = 365;

/// Personal details sealed for an entry.
#[derive(Debug, Clone)]
pub struct SealedDetails {
    /// The data key's id.
    pub key: Uuid,
    /// Nonce ‖ AES-256-GCM ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

/// What an entry's personal details are, to a reader.
#[derive(Debug, Clone, PartialEq)]
pub enum Personal {
    /// The entry has none.
    None,
    /// Readable.
    Readable(serde_json::Value),
    /// Erased: their data key was destroyed (retention or the homeowner's erasure).
    Erased,
}

fn key_aad(tenant: Tenant, key: Uuid) -> Vec<u8> {
    let mut aad = b"firstkey audit data key ".to_vec();
    aad.extend_from_slice(tenant.id().as_bytes());
    aad.extend_from_slice(key.as_bytes());
    aad
}

fn details_aad(tenant: Tenant, key: Uuid) -> Vec<u8> {
    let mut aad = b"firstkey audit personal details ".to_vec();
    aad.extend_from_slice(tenant.id().as_bytes());
    aad.extend_from_slice(key.as_bytes());
    aad
}

fn crypto_fault(e: crypto::CryptoError) -> StoreError {
    StoreError::Unavailable(format!("audit data key: {e}"))
}

/// The first day of `now`'s month and the first instant of the next month.
fn month_of(now: DateTime<Utc>) -> (NaiveDate, DateTime<Utc>) {
    let first = NaiveDate::from_ymd_opt(now.year(), now.month(), 1).unwrap_or(now.date_naive());
    let (y, m) = if now.month() == 12 {
        (now.year().saturating_add(1), 1)
    } else {
        (now.year(), now.month().saturating_add(1))
    };
    let next = NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(now, |d| Utc.from_utc_datetime(&d));
    (first, next)
}

/// The live data key of `property` for `now`'s month: its id and wrapped bytes, made if missing
/// (also after an erasure: entries written later get a new key).
async fn key_for(
    tx: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    kek: &Kek,
    now: DateTime<Utc>,
) -> Result<(Uuid, Vec<u8>), StoreError> {
    let (period, month_end) = month_of(now);
    let find = "SELECT id, wrapped_key FROM audit_data_keys
                WHERE municipality_id = $1 AND property_id = $2 AND period = $3 AND erased_at IS NULL";
    if let Some(row) = tx
        .query_opt(find, &[&tenant.id(), &property, &period])
        .await?
    {
        return Ok((row.get(0), row.get(1)));
    }
    let retention: i64 = tx
        .query_opt(
            "SELECT retention_days FROM access_plans
             WHERE municipality_id = $1 AND property_id = $2 ORDER BY version DESC LIMIT 1",
            &[&tenant.id(), &property],
        )
        .await?
        .map_or(DEFAULT_RETENTION_DAYS, |r| i64::from(r.get::<_, i32>(0)));
    let id = Uuid::new_v4();
    let wrapped = crypto::wrap_new_key(kek, &key_aad(tenant, id)).map_err(crypto_fault)?;
    tx.execute(
        "INSERT INTO audit_data_keys (id, municipality_id, property_id, period, wrapped_key, created_at,
             erase_after)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (municipality_id, property_id, period)
             WHERE property_id IS NOT NULL AND period IS NOT NULL AND erased_at IS NULL DO NOTHING",
        &[
            &id,
            &tenant.id(),
            &property,
            &period,
            &wrapped,
            &now,
            &(month_end + Duration::days(retention)),
        ],
    )
    .await?;
    // Another writer may have made it first: take whichever is stored.
    let row = tx
        .query_one(find, &[&tenant.id(), &property, &period])
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Encrypts `details` under the property's data key for `now`'s month.
pub async fn seal(
    tx: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    details: &serde_json::Value,
    kek: &Kek,
    now: DateTime<Utc>,
) -> Result<SealedDetails, StoreError> {
    let (key, wrapped) = key_for(tx, tenant, property, kek, now).await?;
    let plain =
        serde_json::to_vec(details).map_err(|e| StoreError::Conflict(format!("details: {e}")))?;
    let ciphertext = crypto::seal_with_wrapped(
        kek,
        &key_aad(tenant, key),
        &wrapped,
        &details_aad(tenant, key),
        &plain,
    )
    .map_err(crypto_fault)?;
    Ok(SealedDetails { key, ciphertext })
}

/// Reads the personal details of the sealed entry at `seq`.
pub async fn open(
    client: &impl GenericClient,
    tenant: Tenant,
    seq: i64,
    kek: &Kek,
) -> Result<Personal, StoreError> {
    let row = client
        .query_opt(
            "SELECT e.private_details, k.id, k.wrapped_key FROM audit_entries e
             LEFT JOIN audit_data_keys k ON k.municipality_id = e.municipality_id AND k.id = e.data_key_id
             WHERE e.municipality_id = $1 AND e.seq = $2",
            &[&tenant.id(), &seq],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    let private: Option<Vec<u8>> = row.get(0);
    let (Some(private), Some(key)) = (private, row.get::<_, Option<Uuid>>(1)) else {
        return Ok(Personal::None);
    };
    let Some(wrapped) = row.get::<_, Option<Vec<u8>>>(2) else {
        return Ok(Personal::Erased);
    };
    let plain = crypto::open_with_wrapped(
        kek,
        &key_aad(tenant, key),
        &wrapped,
        &details_aad(tenant, key),
        &private,
    )
    .map_err(crypto_fault)?;
    serde_json::from_slice(&plain)
        .map(Personal::Readable)
        .map_err(|e| StoreError::Conflict(format!("personal details: {e}")))
}

/// The personal details of many entries at once (`seq` → details), for pages and exports.
pub async fn open_many(
    client: &impl GenericClient,
    tenant: Tenant,
    seqs: &[i64],
    kek: &Kek,
) -> Result<std::collections::HashMap<i64, Personal>, StoreError> {
    let mut out = std::collections::HashMap::new();
    let rows = client
        .query(
            "SELECT e.seq, e.private_details, k.id, k.wrapped_key FROM audit_entries e
             JOIN audit_data_keys k ON k.municipality_id = e.municipality_id AND k.id = e.data_key_id
             WHERE e.municipality_id = $1 AND e.seq = ANY($2)",
            &[&tenant.id(), &seqs],
        )
        .await?;
    for row in &rows {
        let seq: i64 = row.get(0);
        let private: Vec<u8> = row.get(1);
        let key: Uuid = row.get(2);
        let personal = match row.get::<_, Option<Vec<u8>>>(3) {
            None => Personal::Erased,
            Some(wrapped) => {
                let plain = crypto::open_with_wrapped(
                    kek,
                    &key_aad(tenant, key),
                    &wrapped,
                    &details_aad(tenant, key),
                    &private,
                )
                .map_err(crypto_fault)?;
                serde_json::from_slice(&plain)
                    .map(Personal::Readable)
                    .map_err(|e| StoreError::Conflict(format!("personal details: {e}")))?
            }
        };
        out.insert(seq, personal);
    }
    Ok(out)
}

/// The text an erased grant justification or trusted-party label reads as.
pub const ERASED: &str = "(erased)";

/// Erases the justifications of `property`'s grants that have ended and were created before
/// `before` (all of them when `None`): free text a dispatcher typed, kept in `grants` for the
/// grant's life. Grants still live (or awaiting approval) keep theirs until they end. Returns how many.
pub async fn erase_justifications(
    tx: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(tx
        .execute(
            "UPDATE grants SET justification = $4, justification_erased_at = $3
             WHERE municipality_id = $1 AND property_id = $2
               AND (status IN ('revoked', 'ended') OR (status = 'live' AND ends_at <= $3))
               AND justification_erased_at IS NULL AND ($5::timestamptz IS NULL OR created_at < $5)",
            &[&tenant.id(), &property, &now, &ERASED, &before],
        )
        .await?)
}

/// What erasing a home's personal details destroyed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HomeErasure {
    /// Data keys destroyed (one per month of entries with personal details).
    pub keys_erased: u64,
    /// Justifications of ended grants overwritten.
    pub justifications_erased: u64,
}

/// Erases every data key of `property` now (the homeowner's erasure, or their account's deletion:
/// `reason` `homeowner` or `account_deleted`), and the justifications of its ended grants, in the
/// caller's transaction, and audits it.
pub async fn erase_property(
    tx: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    actor: Uuid,
    reason: &'static str,
    now: DateTime<Utc>,
) -> Result<HomeErasure, StoreError> {
    let keys_erased = tx
        .execute(
            "UPDATE audit_data_keys SET wrapped_key = NULL, erased_at = $3
             WHERE municipality_id = $1 AND property_id = $2 AND erased_at IS NULL",
            &[&tenant.id(), &property, &now],
        )
        .await?;
    let justifications_erased = erase_justifications(tx, tenant, property, None, now).await?;
    let event = Event::new("audit.erase", Outcome::Info)
        .actor(actor)
        .subject("property", property)
        .property(property)
        .details(serde_json::json!({
            "keys_erased": keys_erased,
            "justifications_erased": justifications_erased,
            "reason": reason,
        }));
    super::record(tx, tenant, &event, now).await?;
    Ok(HomeErasure {
        keys_erased,
        justifications_erased,
    })
}

/// Erases the keys whose retention ran out, per municipality under an advisory lock (so one
/// replica does each municipality's run), one audit entry per home. Returns how many keys.
pub async fn erase_due(
    pool: &deadpool_postgres::Pool,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut client = pool.get().await?;
    let tenants: Vec<Uuid> = client
        .query(
            "SELECT DISTINCT municipality_id FROM audit_data_keys
             WHERE erased_at IS NULL AND erase_after <= $1",
            &[&now],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut total = 0;
    for t in tenants {
        let tenant = Tenant::assume(t);
        let tx = client.transaction().await?;
        let locked: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock(7002, hashtext($1::uuid::text))",
                &[&t],
            )
            .await?
            .get(0);
        if !locked {
            continue;
        }
        let rows = tx
            .query(
                "UPDATE audit_data_keys SET wrapped_key = NULL, erased_at = $2
                 WHERE municipality_id = $1 AND erased_at IS NULL AND erase_after <= $2
                 RETURNING property_id, period",
                &[&t, &now],
            )
            .await?;
        // Per home: how many keys, and the end of the latest month they covered.
        let mut per_home: std::collections::BTreeMap<Option<Uuid>, (u64, Option<NaiveDate>)> =
            Default::default();
        for r in &rows {
            let entry = per_home.entry(r.get(0)).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(r.get::<_, Option<NaiveDate>>(1));
        }
        for (property, (keys, latest)) in per_home {
            let mut details = serde_json::json!({ "keys_erased": keys, "reason": "retention" });
            let mut event = Event::new("audit.erase", Outcome::Info);
            if let Some(p) = property {
                // The justifications of the grants of those months go with them.
                let month_end = latest.and_then(|d| d.and_hms_opt(0, 0, 0)).map(|d| {
                    let (_, next) = month_of(Utc.from_utc_datetime(&d));
                    next
                });
                if let Some(before) = month_end {
                    let n = erase_justifications(&tx, tenant, p, Some(before), now).await?;
                    if let Some(map) = details.as_object_mut() {
                        map.insert("justifications_erased".to_owned(), n.into());
                    }
                }
                event = event.subject("property", p).property(p);
            }
            super::record(&tx, tenant, &event.details(details), now).await?;
        }
        tx.commit().await?;
        total += u64::try_from(rows.len()).unwrap_or(0);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_runs_to_the_first_of_the_next() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 0).unwrap();
        let (first, next) = month_of(t);
        assert_eq!(first, NaiveDate::from_ymd_opt(2026, 12, 1).unwrap());
        assert_eq!(next, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        let (first, next) = month_of(Utc.with_ymd_and_hms(2026, 2, 3, 4, 5, 6).unwrap());
        assert_eq!(first, NaiveDate::from_ymd_opt(2026, 2, 1).unwrap());
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap());
    }
}

//! Properties, their locks, and their versioned access plans.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

use super::{StoreError, Tenant, conflict_or_query};
use crate::crypto::Sealed;
use crate::plans::{AgencyRules, NotificationChoices, PlanInput};

/// A property row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Property {
    /// Identifier.
    pub id: Uuid,
    /// The homeowner.
    pub owner_id: Uuid,
    /// Street address.
    pub address: String,
}

fn property_from_row(row: &tokio_postgres::Row) -> Property {
    Property {
        id: row.get(0),
        owner_id: row.get(1),
        address: row.get(2),
    }
}

/// Adds a property for `owner`.
pub async fn create_property(
    client: &impl GenericClient,
    tenant: Tenant,
    owner: Uuid,
    address: &str,
    now: DateTime<Utc>,
) -> Result<Property, StoreError> {
    let row = client
        .query_one(
            "INSERT INTO properties (id, municipality_id, owner_id, address, created_at) VALUES ($1, $2, $3, $4, $5)
             RETURNING id, owner_id, address",
            &[&Uuid::new_v4(), &tenant.id(), &owner, &address, &now],
        )
        .await
        .map_err(conflict_or_query)?;
    Ok(property_from_row(&row))
}

/// One property of the tenant.
pub async fn property(
    client: &impl GenericClient,
    tenant: Tenant,
    id: Uuid,
) -> Result<Property, StoreError> {
    client
        .query_opt(
            "SELECT id, owner_id, address FROM properties WHERE municipality_id = $1 AND id = $2",
            &[&tenant.id(), &id],
        )
        .await?
        .map(|r| property_from_row(&r))
        .ok_or(StoreError::NotFound)
}

/// The properties `owner` registered.
pub async fn properties_of(
    client: &impl GenericClient,
    tenant: Tenant,
    owner: Uuid,
) -> Result<Vec<Property>, StoreError> {
    Ok(client
        .query(
            "SELECT id, owner_id, address FROM properties WHERE municipality_id = $1 AND owner_id = $2 ORDER BY created_at",
            &[&tenant.id(), &owner],
        )
        .await?
        .iter()
        .map(property_from_row)
        .collect())
}

/// Properties of the tenant whose address contains `query` (case-insensitive), for dispatchers.
pub async fn search_properties(
    client: &impl GenericClient,
    tenant: Tenant,
    query: &str,
) -> Result<Vec<Property>, StoreError> {
    let pattern = format!(
        "%{}%",
        query
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    Ok(client
        .query(
            "SELECT id, owner_id, address FROM properties
             WHERE municipality_id = $1 AND address ILIKE $2 AND deleted_at IS NULL
             ORDER BY address LIMIT 20",
            &[&tenant.id(), &pattern],
        )
        .await?
        .iter()
        .map(property_from_row)
        .collect())
}

/// A lock as its homeowner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Lock {
    /// The lock id the agent printed at `init`.
    pub id: Uuid,
    /// Name, e.g. "Front door".
    pub name: String,
    /// `unpaired` (waiting for the agent to prove its key), `paired` or `retired`.
    pub pairing_state: String,
    /// Last contact over the agent channel.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Battery level, when the lock reported one.
    pub battery_percent: Option<i16>,
}

/// Registers a lock on a property with the SHA-256 of the pairing code the homeowner typed. The lock
/// becomes `paired` when its agent proves the device key the code was derived from.
pub async fn register_lock(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    lock_id: Uuid,
    name: &str,
    code_hash: &[u8; 32],
    now: DateTime<Utc>,
) -> Result<Lock, StoreError> {
    client
        .execute(
            "INSERT INTO locks (id, municipality_id, property_id, name, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&lock_id, &tenant.id(), &property, &name, &now],
        )
        .await
        .map_err(conflict_or_query)?;
    client
        .execute(
            "INSERT INTO lock_pairings (lock_id, municipality_id, code_hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&lock_id, &tenant.id(), &code_hash.to_vec(), &now, &(now + chrono::Duration::days(7))],
        )
        .await
        .map_err(conflict_or_query)?;
    lock(client, tenant, property, lock_id).await
}

const LOCK_COLUMNS: &str = "id, name, pairing_state, last_seen_at, battery_percent";

fn lock_from_row(row: &tokio_postgres::Row) -> Lock {
    Lock {
        id: row.get(0),
        name: row.get(1),
        pairing_state: row.get(2),
        last_seen_at: row.get(3),
        battery_percent: row.get(4),
    }
}

/// One lock of a property.
pub async fn lock(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    id: Uuid,
) -> Result<Lock, StoreError> {
    client
        .query_opt(
            &format!("SELECT {LOCK_COLUMNS} FROM locks WHERE municipality_id = $1 AND property_id = $2 AND id = $3"),
            &[&tenant.id(), &property, &id],
        )
        .await?
        .map(|r| lock_from_row(&r))
        .ok_or(StoreError::NotFound)
}

/// The locks of a property.
pub async fn locks(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
) -> Result<Vec<Lock>, StoreError> {
    Ok(client
        .query(
            &format!("SELECT {LOCK_COLUMNS} FROM locks WHERE municipality_id = $1 AND property_id = $2 ORDER BY name"),
            &[&tenant.id(), &property],
        )
        .await?
        .iter()
        .map(lock_from_row)
        .collect())
}

/// How long a window of pairing failures lasts: at most a channel's `max_pairing_failures` wrong
/// codes per lock within it; after it the count starts again (a 50-bit code stays out of reach of
/// online guessing at that rate, and nobody can use up a lock's attempts for good).
pub const PAIRING_FAILURE_WINDOW: chrono::Duration = chrono::Duration::minutes(10);

/// Whether a pairing attempt for `lock_id` may be checked at `now`: `None` when the lock has no
/// pending pairing, `Some(false)` while its current window already holds `max_failures` failures.
/// Locks the pending pairing row for the rest of the transaction.
pub async fn pairing_attempt_allowed(
    client: &impl GenericClient,
    lock_id: Uuid,
    max_failures: i32,
    now: DateTime<Utc>,
) -> Result<Option<bool>, StoreError> {
    let row = client
        .query_opt(
            "SELECT failed_attempts, failure_window_start FROM lock_pairings WHERE lock_id = $1 FOR UPDATE",
            &[&lock_id],
        )
        .await?;
    Ok(row.map(|r| {
        let failures: i32 = r.get(0);
        let window: Option<DateTime<Utc>> = r.get(1);
        let window_open = window.is_some_and(|start| now < start + PAIRING_FAILURE_WINDOW);
        !window_open || failures < max_failures
    }))
}

/// Counts a wrong code against the lock's current failure window (starting a new window when the
/// last one is over). Returns the failures in the window, this one included.
pub async fn record_pairing_failure(
    client: &impl GenericClient,
    lock_id: Uuid,
    now: DateTime<Utc>,
) -> Result<i32, StoreError> {
    let window_start = now - PAIRING_FAILURE_WINDOW;
    let row = client
        .query_opt(
            "UPDATE lock_pairings SET
                 failed_attempts = CASE WHEN failure_window_start > $3 THEN failed_attempts + 1 ELSE 1 END,
                 failure_window_start = CASE WHEN failure_window_start > $3 THEN failure_window_start ELSE $2 END
             WHERE lock_id = $1 RETURNING failed_attempts",
            &[&lock_id, &now, &window_start],
        )
        .await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// The homeowner resets a lock's pending pairing: its failure count is cleared and it is valid for
/// another seven days. A lock that is not waiting for its agent (paired, retired, or of another
/// property) is `NotFound`.
pub async fn reset_pairing(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    lock_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Lock, StoreError> {
    let updated = client
        .execute(
            "UPDATE lock_pairings p SET failed_attempts = 0, failure_window_start = NULL, expires_at = $4
             FROM locks l
             WHERE p.lock_id = $3 AND l.id = p.lock_id AND l.municipality_id = $1 AND l.property_id = $2
               AND p.municipality_id = $1 AND l.pairing_state = 'unpaired'",
            &[&tenant.id(), &property, &lock_id, &(now + chrono::Duration::days(7))],
        )
        .await?;
    if updated != 1 {
        return Err(StoreError::NotFound);
    }
    lock(client, tenant, property, lock_id).await
}

/// Completes pairing once the agent has proven possession of `device_public_key` (the caller verified
/// the signature over its challenge) and the pairing code derived from that key matches what the
/// homeowner typed. Returns false, changing nothing, when it does not match or has expired.
pub async fn complete_pairing(
    client: &impl GenericClient,
    lock_id: Uuid,
    device_public_key: &[u8; 32],
    derived_code_hash: &[u8; 32],
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let updated = client
        .execute(
            "UPDATE locks l SET pairing_state = 'paired', device_public_key = $2, paired_at = $4
             FROM lock_pairings p
             WHERE l.id = $1 AND p.lock_id = l.id AND p.code_hash = $3 AND p.expires_at > $4
               AND l.pairing_state = 'unpaired'",
            &[
                &lock_id,
                &device_public_key.to_vec(),
                &derived_code_hash.to_vec(),
                &now,
            ],
        )
        .await
        .map_err(conflict_or_query)?;
    if updated == 1 {
        client
            .execute("DELETE FROM lock_pairings WHERE lock_id = $1", &[&lock_id])
            .await?;
    }
    Ok(updated == 1)
}

/// A stored plan version.
#[derive(Debug, Clone)]
pub struct StoredPlan {
    /// Row id (what a grant references).
    pub id: Uuid,
    /// Version number, from 1.
    pub version: i32,
    /// Agency rules.
    pub agencies: AgencyRules,
    /// Longest grant.
    pub max_grant_minutes: i32,
    /// Sealed notes, if any.
    pub notes: Option<Sealed>,
    /// Contacts as stored.
    pub contacts: serde_json::Value,
    /// Notification choices.
    pub notifications: NotificationChoices,
    /// Retention in days.
    pub retention_days: i32,
}

/// Inserts the next version of the property's plan. `seal_notes` seals the notes for the new row id.
pub async fn insert_plan(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    author: Uuid,
    plan: &PlanInput,
    seal_notes: impl FnOnce(Uuid) -> Result<Option<Sealed>, StoreError>,
    now: DateTime<Utc>,
) -> Result<i32, StoreError> {
    // Serialise concurrent edits of one property's plan so versions stay dense.
    client
        .execute(
            "SELECT 1 FROM properties WHERE municipality_id = $1 AND id = $2 FOR UPDATE",
            &[&tenant.id(), &property],
        )
        .await?;
    let id = Uuid::new_v4();
    let sealed = seal_notes(id)?;
    let to_json = |v: serde_json::Result<serde_json::Value>| {
        v.map_err(|e| StoreError::Conflict(e.to_string()))
    };
    let rules = to_json(serde_json::to_value(&plan.agencies))?;
    let contacts = to_json(serde_json::to_value(&plan.contacts))?;
    let notifications = to_json(serde_json::to_value(&plan.notifications))?;
    let row = client
        .query_one(
            "INSERT INTO access_plans (id, municipality_id, property_id, version, created_at, created_by, rules,
                 max_grant_minutes, notes_ciphertext, notes_wrapped_key, notes_kek_id, contacts, notifications,
                 retention_days)
             SELECT $1, $2, $3, coalesce(max(version), 0) + 1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13
             FROM access_plans WHERE property_id = $3
             RETURNING version",
            &[
                &id,
                &tenant.id(),
                &property,
                &now,
                &author,
                &rules,
                &plan.max_grant_minutes,
                &sealed.as_ref().map(|s| s.ciphertext.clone()),
                &sealed.as_ref().map(|s| s.wrapped_key.clone()),
                &sealed.as_ref().map(|_| "kek"),
                &contacts,
                &notifications,
                &plan.retention_days,
            ],
        )
        .await
        .map_err(conflict_or_query)?;
    Ok(row.get(0))
}

/// The newest plan version of a property. A deleted account's homes have none (their versions'
/// notes and contacts were erased): nothing governs entry there any more, so the policy sees a
/// closed plan.
pub async fn current_plan(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
) -> Result<StoredPlan, StoreError> {
    let row = client
        .query_opt(
            "SELECT id, version, rules, max_grant_minutes, notes_ciphertext, notes_wrapped_key, contacts, notifications,
                    retention_days
             FROM access_plans WHERE municipality_id = $1 AND property_id = $2 AND erased_at IS NULL
             ORDER BY version DESC LIMIT 1",
            &[&tenant.id(), &property],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    plan_of_row(&row)
}

/// A plan row selected as `id, version, rules, max_grant_minutes, notes_ciphertext,
/// notes_wrapped_key, contacts, notifications, retention_days`.
pub(crate) fn plan_of_row(row: &tokio_postgres::Row) -> Result<StoredPlan, StoreError> {
    let bad = |e: serde_json::Error| StoreError::Conflict(format!("stored plan: {e}"));
    let ciphertext: Option<Vec<u8>> = row.get(4);
    let wrapped: Option<Vec<u8>> = row.get(5);
    Ok(StoredPlan {
        id: row.get(0),
        version: row.get(1),
        agencies: serde_json::from_value(row.get(2)).map_err(bad)?,
        max_grant_minutes: row.get(3),
        notes: ciphertext
            .zip(wrapped)
            .map(|(ciphertext, wrapped_key)| Sealed {
                ciphertext,
                wrapped_key,
            }),
        contacts: row.get(6),
        notifications: serde_json::from_value(row.get(7)).map_err(bad)?,
        retention_days: row.get(8),
    })
}

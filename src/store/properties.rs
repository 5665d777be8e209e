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
            "SELECT id, owner_id, address FROM properties WHERE municipality_id = $1 AND address ILIKE $2
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
    /// `paired` or `retired` (a lock waiting for its agent is a registration, not yet a lock:
    /// `store::registrations`).
    pub pairing_state: String,
    /// Last contact over the agent channel.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Battery level, when the lock reported one.
    pub battery_percent: Option<i16>,
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
    /// Live consent, if the plan asks for it.
    pub live_consent: Option<crate::plans::LiveConsent>,
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
    let live_consent = plan
        .live_consent
        .map(|c| to_json(serde_json::to_value(c)))
        .transpose()?;
    let row = client
        .query_one(
            "INSERT INTO access_plans (id, municipality_id, property_id, version, created_at, created_by, rules,
                 max_grant_minutes, notes_ciphertext, notes_wrapped_key, notes_kek_id, contacts, notifications,
                 retention_days, live_consent)
             SELECT $1, $2, $3, coalesce(max(version), 0) + 1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14
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
                &live_consent,
            ],
        )
        .await
        .map_err(conflict_or_query)?;
    Ok(row.get(0))
}

/// The newest plan version of a property.
pub async fn current_plan(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
) -> Result<StoredPlan, StoreError> {
    let row = client
        .query_opt(
            "SELECT id, version, rules, max_grant_minutes, notes_ciphertext, notes_wrapped_key, contacts, notifications,
                    retention_days, live_consent
             FROM access_plans WHERE municipality_id = $1 AND property_id = $2 ORDER BY version DESC LIMIT 1",
            &[&tenant.id(), &property],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    plan_of_row(&row)
}

/// A plan row selected as `id, version, rules, max_grant_minutes, notes_ciphertext,
/// notes_wrapped_key, contacts, notifications, retention_days, live_consent`.
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
        live_consent: row
            .get::<_, Option<serde_json::Value>>(9)
            .map(serde_json::from_value)
            .transpose()
            .map_err(bad)?,
    })
}

//! Properties, their locks, and their versioned access plans.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

use super::{StoreError, Tenant, conflict_or_query};
use crate::crypto::{Kek, Sealed};
use crate::plans::{AgencyRules, NotificationChoices, PhysicalKey, PlanInput};

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
    /// Key location and holders (`key_box_code` is always `None` here: the code is `key_box`).
    pub physical_key: PhysicalKey,
    /// The sealed key box code, if any.
    pub key_box: Option<Sealed>,
    /// The alarm rules in force when this version was written (`None` before they were recorded).
    pub alarm_rules: Option<serde_json::Value>,
}

/// The sealed parts of a plan version: notes and key box code, each under its own data key.
#[derive(Debug, Default)]
pub struct SealedPlan {
    /// The responder notes.
    pub notes: Option<Sealed>,
    /// The key box code.
    pub key_box: Option<Sealed>,
}

/// The additional data a key box code is sealed with: its purpose and the plan row, so neither a
/// notes ciphertext nor another version's code opens as this one.
fn key_box_aad(plan_id: Uuid) -> Vec<u8> {
    let mut aad = b"firstkey-key-box-v1:".to_vec();
    aad.extend_from_slice(plan_id.as_bytes());
    aad
}

/// Seals a plan's secret parts for the row `plan_id` (the notes bound to the row id, as they
/// always were; the key box code to [`key_box_aad`]). What `insert_plan` takes as `seal`.
pub fn seal_plan(kek: &Kek, plan: &PlanInput, plan_id: Uuid) -> Result<SealedPlan, StoreError> {
    let unavailable = |e: crate::crypto::CryptoError| StoreError::Unavailable(e.to_string());
    let notes = if plan.has_notes() {
        let bytes =
            serde_json::to_vec(&plan.notes).map_err(|e| StoreError::Conflict(e.to_string()))?;
        Some(crate::crypto::seal(kek, plan_id.as_bytes(), &bytes).map_err(unavailable)?)
    } else {
        None
    };
    let key_box = match &plan.physical_key.key_box_code {
        Some(code) => Some(
            crate::crypto::seal(kek, &key_box_aad(plan_id), code.as_bytes())
                .map_err(unavailable)?,
        ),
        None => None,
    };
    Ok(SealedPlan { notes, key_box })
}

/// Opens a stored version's key box code (`None`: the plan has none).
pub fn open_key_box(kek: &Kek, plan: &StoredPlan) -> Result<Option<String>, StoreError> {
    let Some(sealed) = &plan.key_box else {
        return Ok(None);
    };
    let bytes = crate::crypto::open(kek, &key_box_aad(plan.id), sealed)
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| StoreError::Conflict("stored key box code".to_owned()))
}

/// The alarm rules of the property as a plan version records them (kind order).
const ALARM_RULES_SNAPSHOT: &str = "(SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
        'kind', r.kind, 'action', r.action, 'agency', r.agency_id, 'minutes', r.minutes)) ORDER BY r.kind), '[]'::jsonb)
     FROM alarm_rules r WHERE r.property_id = $3)";

/// Inserts the next version of the property's plan. `seal` seals its secret parts for the new row
/// id (usually [`seal_plan`]). The version records the alarm rules in force.
pub async fn insert_plan(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    author: Uuid,
    plan: &PlanInput,
    seal: impl FnOnce(Uuid) -> Result<SealedPlan, StoreError>,
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
    let sealed = seal(id)?;
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
    // The code never goes into the open column.
    let physical_key = to_json(serde_json::to_value(PhysicalKey {
        key_box_code: None,
        ..plan.physical_key.clone()
    }))?;
    let row = client
        .query_one(
            &format!(
                "INSERT INTO access_plans (id, municipality_id, property_id, version, created_at, created_by, rules,
                     max_grant_minutes, notes_ciphertext, notes_wrapped_key, notes_kek_id, contacts, notifications,
                     retention_days, physical_key, key_box_ciphertext, key_box_wrapped_key, alarm_rules,
                     live_consent)
                 SELECT $1, $2, $3, coalesce(max(version), 0) + 1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                        $14, $15, $16, {ALARM_RULES_SNAPSHOT}, $17
                 FROM access_plans WHERE property_id = $3
                 RETURNING version"
            ),
            &[
                &id,
                &tenant.id(),
                &property,
                &now,
                &author,
                &rules,
                &plan.max_grant_minutes,
                &sealed.notes.as_ref().map(|s| s.ciphertext.clone()),
                &sealed.notes.as_ref().map(|s| s.wrapped_key.clone()),
                &sealed.notes.as_ref().map(|_| "kek"),
                &contacts,
                &notifications,
                &plan.retention_days,
                &physical_key,
                &sealed.key_box.as_ref().map(|s| s.ciphertext.clone()),
                &sealed.key_box.as_ref().map(|s| s.wrapped_key.clone()),
                &live_consent,
            ],
        )
        .await
        .map_err(conflict_or_query)?;
    Ok(row.get(0))
}

/// The property's current plan written once more as the next version, by `author`, with the alarm
/// rules now in force: what a change of the alarm rules does, so every version names the rules it
/// was in force with. Its sealed parts are opened and sealed again for the new row (each is bound to
/// its row). `None` when the property has no plan yet (its first version will record
/// the rules).
pub async fn rewrite_plan_with_rules(
    client: &impl GenericClient,
    kek: &Kek,
    tenant: Tenant,
    property: Uuid,
    author: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<i32>, StoreError> {
    let current = match current_plan(client, tenant, property).await {
        Ok(p) => p,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    let notes = match &current.notes {
        Some(sealed) => {
            let bytes = crate::crypto::open(kek, current.id.as_bytes(), sealed)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Conflict(e.to_string()))?
        }
        None => crate::plans::ResponderNotes::default(),
    };
    let plan = PlanInput {
        agencies: current.agencies.clone(),
        max_grant_minutes: current.max_grant_minutes,
        notes,
        contacts: serde_json::from_value(current.contacts.clone())
            .map_err(|e| StoreError::Conflict(e.to_string()))?,
        notifications: current.notifications.clone(),
        retention_days: current.retention_days,
        physical_key: PhysicalKey {
            key_box_code: open_key_box(kek, &current)?,
            ..current.physical_key.clone()
        },
        live_consent: current.live_consent,
    };
    insert_plan(
        client,
        tenant,
        property,
        author,
        &plan,
        |id| seal_plan(kek, &plan, id),
        now,
    )
    .await
    .map(Some)
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
            &format!(
                "SELECT {PLAN_COLUMNS} FROM access_plans
                 WHERE municipality_id = $1 AND property_id = $2 AND erased_at IS NULL
                 ORDER BY version DESC LIMIT 1"
            ),
            &[&tenant.id(), &property],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    plan_of_row(&row)
}

/// The columns [`plan_of_row`] reads, in its order.
pub(crate) const PLAN_COLUMNS: &str = "id, version, rules, max_grant_minutes, notes_ciphertext, notes_wrapped_key, \
     contacts, notifications, retention_days, physical_key, key_box_ciphertext, key_box_wrapped_key, alarm_rules, \
     live_consent";

/// A plan row selected as [`PLAN_COLUMNS`].
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
            .get::<_, Option<serde_json::Value>>(13)
            .map(serde_json::from_value)
            .transpose()
            .map_err(bad)?,
        physical_key: PhysicalKey {
            key_box_code: None,
            ..serde_json::from_value(row.get(9)).map_err(bad)?
        },
        key_box: row
            .get::<_, Option<Vec<u8>>>(10)
            .zip(row.get::<_, Option<Vec<u8>>>(11))
            .map(|(ciphertext, wrapped_key)| Sealed {
                ciphertext,
                wrapped_key,
            }),
        alarm_rules: row.get(12),
    })
}

#[cfg(test)]
mod key_box_tests {
    use super::*;

    fn plan(code: Option<&str>, pets: Option<&str>) -> PlanInput {
        let mut plan: PlanInput = serde_json::from_value(serde_json::json!({
            "agencies": {}, "max_grant_minutes": 30, "retention_days": 30
        }))
        .unwrap();
        plan.physical_key.key_box_code = code.map(str::to_owned);
        plan.notes.pets = pets.map(str::to_owned);
        plan
    }

    fn stored(id: Uuid, sealed: SealedPlan) -> StoredPlan {
        StoredPlan {
            id,
            version: 1,
            agencies: plan(None, None).agencies,
            max_grant_minutes: 30,
            notes: sealed.notes,
            contacts: serde_json::json!([]),
            notifications: NotificationChoices::default(),
            retention_days: 30,
            physical_key: PhysicalKey::default(),
            key_box: sealed.key_box,
            alarm_rules: None,
            live_consent: None,
        }
    }

    /// The code opens only for the row it was sealed for, and a notes ciphertext never opens as a
    /// code (nor another row's code as this one's): each is bound to its purpose and row.
    #[test]
    fn a_key_box_code_opens_only_as_itself_for_its_row() {
        let kek = Kek::from_base64("KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=").unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = seal_plan(&kek, &plan(Some("4711"), Some("Two dogs")), a).unwrap();
        let notes = sealed.notes.clone();
        let code = sealed.key_box.clone();
        assert_eq!(
            open_key_box(&kek, &stored(a, sealed)).unwrap().as_deref(),
            Some("4711")
        );
        // Another row.
        let moved = SealedPlan {
            notes: None,
            key_box: code,
        };
        assert!(open_key_box(&kek, &stored(b, moved)).is_err());
        // The notes' ciphertext put where the code goes.
        let swapped = SealedPlan {
            notes: None,
            key_box: notes,
        };
        assert!(open_key_box(&kek, &stored(a, swapped)).is_err());
        // No code: nothing sealed, nothing opened.
        let none = seal_plan(&kek, &plan(None, None), a).unwrap();
        assert!(none.key_box.is_none() && none.notes.is_none());
        assert_eq!(open_key_box(&kek, &stored(a, none)).unwrap(), None);
    }
}

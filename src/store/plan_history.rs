//! The version history of a property's access plan: which versions exist, when each was written, and
//! any one version in full (plans are immutable, so a version read today is what a grant decided
//! under then). The newest version and writing a new one are `properties`'.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::properties::StoredPlan;
use super::{StoreError, Tenant};

/// One entry of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanVersionInfo {
    /// Version number, from 1.
    pub version: i32,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Display name of its author.
    pub author: String,
}

/// Every version of the property's plan, newest first.
pub async fn versions(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
) -> Result<Vec<PlanVersionInfo>, StoreError> {
    Ok(client
        .query(
            "SELECT p.version, p.created_at, u.display_name
             FROM access_plans p JOIN users u ON u.municipality_id = p.municipality_id AND u.id = p.created_by
             WHERE p.municipality_id = $1 AND p.property_id = $2 ORDER BY p.version DESC",
            &[&tenant.id(), &property],
        )
        .await?
        .iter()
        .map(|row| PlanVersionInfo {
            version: row.get(0),
            created_at: row.get(1),
            author: row.get(2),
        })
        .collect())
}

/// One version of the property's plan.
pub async fn version(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    version: i32,
) -> Result<StoredPlan, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {} FROM access_plans WHERE municipality_id = $1 AND property_id = $2 AND version = $3",
                super::properties::PLAN_COLUMNS
            ),
            &[&tenant.id(), &property, &version],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    super::properties::plan_of_row(&row)
}

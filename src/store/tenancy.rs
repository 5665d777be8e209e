//! Municipalities (the tenants) and their agencies, and [`Tenant`], the scope every tenant-owned
//! query runs in.
//!
//! A [`Tenant`] is a capability: holding one means the caller has established which municipality it
//! acts for (through a session, a CAD credential, or an operator command). Repository functions take
//! it and put its id in the `WHERE` clause; they never take a bare municipality id.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::{StoreError, conflict_or_query};
use crate::domain::{AgencyKind, Slug};

/// The municipality a piece of code acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tenant {
    id: Uuid,
}

impl Tenant {
    /// Scope for operator commands (`firstkey demo`, `firstkey admin …`) that name the municipality
    /// themselves. HTTP code obtains a `Tenant` from the authenticated session instead.
    pub fn assume(id: Uuid) -> Self {
        Self { id }
    }

    /// The municipality's id.
    pub fn id(&self) -> Uuid {
        self.id
    }
}

/// A municipality row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Municipality {
    /// Identifier.
    pub id: Uuid,
    /// URL-safe short name.
    pub slug: String,
    /// Display name.
    pub name: String,
}

/// Creates a municipality, or returns the existing one with the same slug.
pub async fn ensure_municipality(
    client: &impl GenericClient,
    slug: &Slug,
    name: &str,
    now: DateTime<Utc>,
) -> Result<(Tenant, Municipality), StoreError> {
    let row = client
        .query_one(
            "INSERT INTO municipalities (id, slug, name, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (slug) DO UPDATE SET slug = EXCLUDED.slug
             RETURNING id, slug, name",
            &[&Uuid::new_v4(), &slug.as_str(), &name, &now],
        )
        .await
        .map_err(conflict_or_query)?;
    let m = Municipality {
        id: row.get(0),
        slug: row.get(1),
        name: row.get(2),
    };
    Ok((Tenant::assume(m.id), m))
}

/// Finds a municipality by slug.
pub async fn municipality_by_slug(
    client: &impl GenericClient,
    slug: &Slug,
) -> Result<(Tenant, Municipality), StoreError> {
    let row = client
        .query_opt(
            "SELECT id, slug, name FROM municipalities WHERE slug = $1",
            &[&slug.as_str()],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    let m = Municipality {
        id: row.get(0),
        slug: row.get(1),
        name: row.get(2),
    };
    Ok((Tenant::assume(m.id), m))
}

/// An agency row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Agency {
    /// Identifier.
    pub id: Uuid,
    /// Fire, EMS, police or other.
    pub kind: AgencyKind,
    /// Display name, unique within the municipality.
    pub name: String,
}

fn agency_from_row(row: &tokio_postgres::Row) -> Result<Agency, StoreError> {
    let kind: String = row.get(1);
    Ok(Agency {
        id: row.get(0),
        kind: AgencyKind::parse(&kind).map_err(|e| StoreError::Conflict(e.to_string()))?,
        name: row.get(2),
    })
}

/// Creates an agency in the tenant, or returns the existing one with the same name.
pub async fn ensure_agency(
    client: &impl GenericClient,
    tenant: Tenant,
    kind: AgencyKind,
    name: &str,
    now: DateTime<Utc>,
) -> Result<Agency, StoreError> {
    let row = client
        .query_one(
            "INSERT INTO agencies (id, municipality_id, kind, name, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (municipality_id, name) DO UPDATE SET name = EXCLUDED.name
             RETURNING id, kind, name",
            &[&Uuid::new_v4(), &tenant.id(), &kind.as_str(), &name, &now],
        )
        .await
        .map_err(conflict_or_query)?;
    agency_from_row(&row)
}

/// Lists the tenant's agencies by name.
pub async fn agencies(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<Vec<Agency>, StoreError> {
    client
        .query(
            "SELECT id, kind, name FROM agencies WHERE municipality_id = $1 ORDER BY name",
            &[&tenant.id()],
        )
        .await?
        .iter()
        .map(agency_from_row)
        .collect()
}

/// Reads one agency of the tenant; another tenant's agency is [`StoreError::NotFound`].
pub async fn agency(
    client: &impl GenericClient,
    tenant: Tenant,
    id: Uuid,
) -> Result<Agency, StoreError> {
    let row = client
        .query_opt(
            "SELECT id, kind, name FROM agencies WHERE municipality_id = $1 AND id = $2",
            &[&tenant.id(), &id],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    agency_from_row(&row)
}

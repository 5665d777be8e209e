//! Users and their roles within a municipality.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::{StoreError, Tenant, conflict_or_query};
use crate::domain::{Email, Role};

/// A user row with its roles.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct User {
    /// Identifier.
    pub id: Uuid,
    /// Display name.
    pub display_name: String,
    /// Agency the user belongs to, for dispatchers and responders.
    pub agency_id: Option<Uuid>,
    /// Roles held.
    pub roles: Vec<Role>,
}

/// Creates an active user with `roles`, or returns the existing user with the same e-mail (adding any
/// missing roles).
pub async fn ensure_user(
    client: &impl GenericClient,
    tenant: Tenant,
    email: &Email,
    display_name: &str,
    agency_id: Option<Uuid>,
    roles: &[Role],
    now: DateTime<Utc>,
) -> Result<User, StoreError> {
    let row = client
        .query_one(
            "INSERT INTO users (id, municipality_id, agency_id, email, display_name, status, email_verified_at, created_at)
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $6)
             ON CONFLICT (municipality_id, lower(email)) DO UPDATE SET display_name = users.display_name
             RETURNING id",
            &[&Uuid::new_v4(), &tenant.id(), &agency_id, &email.as_str(), &display_name, &now],
        )
        .await
        .map_err(conflict_or_query)?;
    let id: Uuid = row.get(0);
    for role in roles {
        client
            .execute(
                "INSERT INTO user_roles (municipality_id, user_id, role, granted_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&tenant.id(), &id, &role.as_str(), &now],
            )
            .await?;
    }
    user(client, tenant, id).await
}

/// Reads one user of the tenant; another tenant's user is [`StoreError::NotFound`].
pub async fn user(
    client: &impl GenericClient,
    tenant: Tenant,
    id: Uuid,
) -> Result<User, StoreError> {
    let row = client
        .query_opt(
            "SELECT u.id, u.display_name, u.agency_id,
                    coalesce(array_agg(r.role ORDER BY r.role) FILTER (WHERE r.role IS NOT NULL), '{}')
             FROM users u LEFT JOIN user_roles r ON r.user_id = u.id
             WHERE u.municipality_id = $1 AND u.id = $2
             GROUP BY u.id",
            &[&tenant.id(), &id],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    let roles: Vec<String> = row.get(3);
    Ok(User {
        id: row.get(0),
        display_name: row.get(1),
        agency_id: row.get(2),
        roles: roles.iter().filter_map(|r| Role::parse(r).ok()).collect(),
    })
}

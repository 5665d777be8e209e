//! `firstkey demo`: a seeded demo municipality with agencies and one user of each role, so a person
//! can explore the server right away.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;

use crate::domain::{AgencyKind, Email, Role, Slug};
use crate::store::{self, StoreError, Tenant};

/// What the demo seed created.
#[derive(Debug)]
pub struct DemoWorld {
    /// The demo municipality.
    pub tenant: Tenant,
    /// Its slug.
    pub slug: String,
    /// (role, e-mail) of each seeded user.
    pub users: Vec<(Role, String)>,
}

/// Seeds the demo municipality; running it again changes nothing.
pub async fn seed(pool: &Pool, now: DateTime<Utc>) -> Result<DemoWorld, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let slug = Slug::parse("demo-city").map_err(|e| StoreError::Conflict(e.to_string()))?;
    let (tenant, municipality) =
        store::tenancy::ensure_municipality(&tx, &slug, "Demo City", now).await?;
    let fire = store::tenancy::ensure_agency(
        &tx,
        tenant,
        AgencyKind::Fire,
        "Demo City Fire Department",
        now,
    )
    .await?;
    let ems =
        store::tenancy::ensure_agency(&tx, tenant, AgencyKind::Ems, "Demo City EMS", now).await?;
    store::tenancy::ensure_agency(&tx, tenant, AgencyKind::Police, "Demo City Police", now).await?;
    let seeds: [(&str, &str, Option<uuid::Uuid>, Role); 5] = [
        (
            "admin@demo-city.example",
            "Avery Admin",
            None,
            Role::MunicipalAdmin,
        ),
        (
            "dispatch@demo-city.example",
            "Dana Dispatcher",
            Some(ems.id),
            Role::Dispatcher,
        ),
        (
            "engine7@demo-city.example",
            "Engine 7",
            Some(fire.id),
            Role::Responder,
        ),
        (
            "privacy@demo-city.example",
            "Alex Auditor",
            None,
            Role::Auditor,
        ),
        (
            "home@demo-city.example",
            "Harper Homeowner",
            None,
            Role::Homeowner,
        ),
    ];
    let mut users = Vec::new();
    for (email, name, agency, role) in seeds {
        let email = Email::parse(email).map_err(|e| StoreError::Conflict(e.to_string()))?;
        store::people::ensure_user(&tx, tenant, &email, name, agency, &[role], now).await?;
        users.push((role, email.as_str().to_owned()));
    }
    tx.commit().await?;
    Ok(DemoWorld {
        tenant,
        slug: municipality.slug,
        users,
    })
}

//! Tenant isolation: a row of municipality A is never returned through municipality B's scope, and the
//! database refuses cross-tenant references.

use chrono::Utc;
use firstkey::domain::{AgencyKind, Email, Role, Slug};
use firstkey::store::{self, StoreError, people, tenancy};

use crate::helpers::{admin_config, fresh_database};

#[tokio::test]
async fn rows_of_one_municipality_never_show_through_another() {
    let db = fresh_database().await;
    let mut config = admin_config();
    config.dbname(&db);
    let pool = store::pool(config, 2).unwrap();
    let client = pool.get().await.unwrap();
    let now = Utc.timestamp_opt(1_790_000_000, 0).unwrap();
    let (a, _) =
        tenancy::ensure_municipality(&client, &Slug::parse("town-a").unwrap(), "Town A", now)
            .await
            .unwrap();
    let (b, _) =
        tenancy::ensure_municipality(&client, &Slug::parse("town-b").unwrap(), "Town B", now)
            .await
            .unwrap();
    let fire_a = tenancy::ensure_agency(&client, a, AgencyKind::Fire, "A Fire", now)
        .await
        .unwrap();
    let user_a = people::ensure_user(
        &client,
        a,
        &Email::parse("r@a.example").unwrap(),
        "Responder A",
        Some(fire_a.id),
        &[Role::Responder],
        now,
    )
    .await
    .unwrap();

    assert_eq!(
        tenancy::agencies(&client, a).await.unwrap(),
        vec![fire_a.clone()]
    );
    assert!(tenancy::agencies(&client, b).await.unwrap().is_empty());
    assert!(matches!(
        tenancy::agency(&client, b, fire_a.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        people::user(&client, b, user_a.id).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        people::user(&client, a, user_a.id).await.unwrap().roles,
        vec![Role::Responder]
    );

    // B cannot even create a user that points at A's agency: the composite foreign key refuses it.
    let err = people::ensure_user(
        &client,
        b,
        &Email::parse("x@b.example").unwrap(),
        "Intruder",
        Some(fire_a.id),
        &[Role::Responder],
        now,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

use chrono::TimeZone;

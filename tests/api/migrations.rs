//! Migrations apply to an empty database, a second run is a no-op, and append-only tables refuse edits.

use firstkey::store::{self, Readiness};

use crate::helpers::{admin_config, empty_database, fresh_database};

fn pool_for(db: &str) -> deadpool_postgres::Pool {
    let mut config = admin_config();
    config.dbname(db);
    store::pool(config, 2).unwrap()
}

#[tokio::test]
async fn migrations_apply_on_an_empty_database_and_a_second_run_is_a_noop() {
    let db = empty_database().await;
    let pool = pool_for(&db);
    assert!(matches!(
        store::readiness(&pool).await,
        Readiness::SchemaMismatch { applied: None, .. }
    ));
    let applied = store::migrate(&pool).await.unwrap();
    assert_eq!(applied, store::migration_count());
    assert_eq!(store::readiness(&pool).await, Readiness::Ready);
    let tables: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        store::migrate(&pool).await.unwrap(),
        0,
        "second run applies nothing"
    );
    let tables_after: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, tables_after);
    assert!(
        tables > 20,
        "the whole domain schema is there: {tables} tables"
    );
}

#[tokio::test]
async fn concurrent_migrations_from_two_replicas_apply_once() {
    let db = empty_database().await;
    let (a, b) = (pool_for(&db), pool_for(&db));
    let (ra, rb) = tokio::join!(store::migrate(&a), store::migrate(&b));
    assert_eq!(ra.unwrap() + rb.unwrap(), store::migration_count());
}

#[tokio::test]
async fn append_only_tables_refuse_update_and_delete() {
    let db = fresh_database().await;
    let pool = pool_for(&db);
    let client = pool.get().await.unwrap();
    let m = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO municipalities (id, slug, name, created_at) VALUES ($1, 'ao-test', 'AO', now())",
            &[&m],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO audit_entries (municipality_id, seq, recorded_at, action, outcome, leaf_hash, chain_hash)
             VALUES ($1, 0, now(), 'test.entry', 'info', $2, $2)",
            &[&m, &vec![0u8; 32]],
        )
        .await
        .unwrap();
    for sql in [
        "UPDATE audit_entries SET action = 'test.rewritten'",
        "DELETE FROM audit_entries",
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        assert!(
            err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
            "{sql}: {err:?}"
        );
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM audit_entries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
}

/// V22 (issue 8, 13(b)): a lock waiting for its agent becomes a pending registration with the same
/// code hash, registered by the home's owner; its never-paired `locks` row goes with what was
/// queued for it; paired locks stay as they were; no lock row may be "unpaired" any more.
#[tokio::test]
async fn v22_turns_waiting_locks_into_registrations_and_keeps_paired_locks() {
    use chrono::Utc;
    use firstkey::domain::{Email, Role, Slug};
    use firstkey::store::{people, properties, tenancy};
    use uuid::Uuid;
    let db = empty_database().await;
    let pool = pool_for(&db);
    store::migrate_to(&pool, 21).await.unwrap();
    let client = pool.get().await.unwrap();
    let now = Utc::now();
    let (tenant, _) =
        tenancy::ensure_municipality(&client, &Slug::parse("old-town").unwrap(), "Old", now)
            .await
            .unwrap();
    let owner = people::ensure_user(
        &client,
        tenant,
        &Email::parse("owner@old.example").unwrap(),
        "Owner",
        None,
        &[Role::Homeowner],
        now,
    )
    .await
    .unwrap();
    let home = properties::create_property(&client, tenant, owner.id, "1 Old Road", now)
        .await
        .unwrap();
    let (waiting, paired) = (Uuid::new_v4(), Uuid::new_v4());
    let hash = vec![5u8; 32];
    client
        .execute(
            "INSERT INTO locks (id, municipality_id, property_id, name, created_at) VALUES ($1, $2, $3, 'Back door', $4)",
            &[&waiting, &tenant.id(), &home.id, &now],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO lock_pairings (lock_id, municipality_id, code_hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&waiting, &tenant.id(), &hash, &now, &(now + chrono::Duration::days(7))],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO lock_inbox (lock_id, seq, municipality_id, kind, payload, created_at)
             VALUES ($1, 1, $2, 'trust_bundle', '\\x00', $3)",
            &[&waiting, &tenant.id(), &now],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO locks (id, municipality_id, property_id, name, pairing_state, device_public_key, paired_at, created_at)
             VALUES ($1, $2, $3, 'Front door', 'paired', $4, $5, $5)",
            &[&paired, &tenant.id(), &home.id, &vec![1u8; 32], &now],
        )
        .await
        .unwrap();
    drop(client);

    store::migrate(&pool).await.unwrap();
    let client = pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT property_id, name, registered_by, code_hash, state FROM lock_registrations WHERE lock_id = $1",
            &[&waiting],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), home.id);
    assert_eq!(row.get::<_, String>(1), "Back door");
    assert_eq!(row.get::<_, Uuid>(2), owner.id);
    assert_eq!(row.get::<_, Vec<u8>>(3), hash);
    assert_eq!(row.get::<_, String>(4), "pending");
    let count = |sql: &'static str, id: Uuid| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[&id])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM locks WHERE id = $1", waiting).await,
        0
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM lock_inbox WHERE lock_id = $1",
            waiting
        )
        .await,
        0
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM locks WHERE id = $1 AND pairing_state = 'paired'",
            paired
        )
        .await,
        1
    );
    assert!(
        client
            .query_opt("SELECT to_regclass('lock_pairings')::text", &[])
            .await
            .unwrap()
            .and_then(|r| r.get::<_, Option<String>>(0))
            .is_none()
    );
    assert!(
        client
            .execute(
                "INSERT INTO locks (id, municipality_id, property_id, name, pairing_state, created_at)
                 VALUES ($1, $2, $3, 'Side door', 'unpaired', now())",
                &[&Uuid::new_v4(), &tenant.id(), &home.id],
            )
            .await
            .is_err()
    );
}

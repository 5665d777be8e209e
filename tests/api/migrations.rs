//! Migrations apply to an empty database, a second run is a no-op, and append-only tables refuse edits.

use firstkey::store::{self, Readiness};

use crate::helpers::{admin_config, empty_database, fresh_database};

/// How many migrations the database has applied (versions may have gaps: each helper owns a number).
async fn applied_count(pool: &deadpool_postgres::Pool) -> usize {
    let n: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    usize::try_from(n).unwrap()
}

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
    assert_eq!(applied, applied_count(&pool).await);
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
    assert_eq!(ra.unwrap() + rb.unwrap(), applied_count(&a).await);
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

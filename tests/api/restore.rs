//! The restore drill of docs/operations.md, run by the suite: the whole story (`firstkey demo
//! --once`) on a database, `pg_dump`, the database wiped (dropped), recreated empty and restored
//! with `pg_restore`; then every municipality's audit chain still verifies to the same head, every
//! lock's stored receipts still verify as a signed hash chain under its device key, and the server
//! still accepts the lock's chain where it left off (re-uploading the old receipts is idempotent).

use std::process::Command;

use firstkey::audit::{ChainCheck, verify_chain};
use firstkey::channel::receipts::{BatchOutcome, LockIdentity, store_batch};
use firstkey::store::Tenant;
use firstkey_agent::receipt::{self, ChainHead};

use crate::helpers::{admin_config, admin_execute, fresh_database};

fn pool_for(db: &str) -> deadpool_postgres::Pool {
    let mut config = admin_config();
    config.dbname(db);
    firstkey::store::pool(config, 2).unwrap()
}

/// `host`, `port` and `user` of the test server, as pg_dump/pg_restore arguments.
fn pg_args() -> Vec<String> {
    let config = admin_config();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    vec![
        "-h".to_owned(),
        host,
        "-p".to_owned(),
        port.to_string(),
        "-U".to_owned(),
        config.get_user().unwrap_or("postgres").to_owned(),
    ]
}

/// What must survive: each municipality's chain head, and each lock's receipts.
#[derive(Debug, PartialEq, Eq)]
struct Evidence {
    chains: Vec<(uuid::Uuid, ChainCheck)>,
    receipts: Vec<(uuid::Uuid, u64, [u8; 32])>,
}

async fn evidence(pool: &deadpool_postgres::Pool) -> Evidence {
    let client = pool.get().await.unwrap();
    let mut chains = Vec::new();
    for row in client
        .query("SELECT id FROM municipalities ORDER BY id", &[])
        .await
        .unwrap()
    {
        let id: uuid::Uuid = row.get(0);
        let check = verify_chain(&client, Tenant::assume(id)).await.unwrap();
        assert!(
            matches!(check, ChainCheck::Intact { entries, .. } if entries > 0),
            "{id}: {check:?}"
        );
        chains.push((id, check));
    }
    let mut receipts = Vec::new();
    for lock in client
        .query(
            "SELECT id, device_public_key FROM locks WHERE pairing_state = 'paired' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
    {
        let id: uuid::Uuid = lock.get(0);
        let device_key: Vec<u8> = lock.get(1);
        let rows = client
            .query(
                "SELECT receipt FROM receipts WHERE lock_id = $1 ORDER BY seq",
                &[&id],
            )
            .await
            .unwrap();
        let encoded: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
        let head = receipt::verify_chain(
            encoded.iter().map(Vec::as_slice),
            &device_key,
            &id.to_string(),
            ChainHead::GENESIS,
        )
        .unwrap_or_else(|e| panic!("lock {id}: stored receipts do not chain: {e}"));
        receipts.push((id, head.seq, head.hash));
    }
    Evidence { chains, receipts }
}

#[tokio::test]
async fn restore_drill_dump_wipe_restore_and_the_evidence_still_verifies() {
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("host=127.0.0.1 port=5432 user=postgres dbname={db}");
    let demo = tokio::task::spawn_blocking({
        let cwd = dir.path().to_path_buf();
        let url = url.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_firstkey"))
                .args(["demo", "--once"])
                .current_dir(cwd)
                .env("FIRSTKEY_DATABASE_URL", url)
                .env("FIRSTKEY_KEY_DIR", "keys")
                .env_remove("FIRSTKEY_SMTP_RELAY")
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        demo.status.success(),
        "demo failed:\n{}\n{}",
        String::from_utf8_lossy(&demo.stdout),
        String::from_utf8_lossy(&demo.stderr)
    );

    let pool = pool_for(&db);
    let before = evidence(&pool).await;
    assert!(
        before.receipts.iter().any(|(_, seq, _)| *seq >= 2),
        "the story left an allow and a deny receipt: {before:?}"
    );
    pool.close();
    drop(pool);

    // Dump (custom format, as docs/operations.md says), wipe, restore into an empty database.
    let dump = dir.path().join("firstkey.dump");
    let out = Command::new("pg_dump")
        .args(pg_args())
        .args(["--format=custom", "--no-owner", "--file"])
        .arg(&dump)
        .arg(db.name())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIPPED restore drill: pg_dump cannot run here ({e})");
            admin_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
            return;
        }
    };
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    admin_execute(&format!("DROP DATABASE {db} WITH (FORCE)")).await;
    admin_execute(&format!("CREATE DATABASE {db} TEMPLATE template0")).await;
    let out = Command::new("pg_restore")
        .args(pg_args())
        .args(["--no-owner", "--exit-on-error", "--dbname", db.name()])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pool = pool_for(&db);
    let after = evidence(&pool).await;
    assert_eq!(
        after, before,
        "the restored evidence is the evidence that was dumped"
    );

    // The server takes each lock's chain up where it was: the old receipts, uploaded again as an
    // agent would after the restore, are recognised (idempotent), not a fork or a broken chain.
    let client = pool.get().await.unwrap();
    for (lock, seq, _) in &after.receipts {
        let row = client
            .query_one(
                "SELECT municipality_id, property_id, name, device_public_key FROM locks WHERE id = $1",
                &[lock],
            )
            .await
            .unwrap();
        let key: Vec<u8> = row.get(3);
        let identity = LockIdentity {
            id: *lock,
            wire_id: lock.to_string(),
            tenant: Tenant::assume(row.get(0)),
            property: row.get(1),
            name: row.get(2),
            device_public_key: key.as_slice().try_into().unwrap(),
        };
        let stored: Vec<Vec<u8>> = client
            .query(
                "SELECT receipt FROM receipts WHERE lock_id = $1 ORDER BY seq",
                &[lock],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let outcome = store_batch(&pool, &identity, &stored, chrono::Utc::now())
            .await
            .unwrap();
        assert_eq!(outcome, BatchOutcome::Stored { through: *seq });
    }
    // The schema came back whole: the server would start on it without migrating.
    assert!(matches!(
        firstkey::store::readiness(&pool).await,
        firstkey::store::Readiness::Ready
    ));
    drop(client);
    pool.close();
    drop(pool);
    admin_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
}

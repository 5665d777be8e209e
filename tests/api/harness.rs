//! The test harness itself: every per-test database is dropped when its test ends (also when the test
//! panics), and a run removes the leftovers of killed runs without touching those of live ones.

use tokio_postgres::NoTls;

use crate::helpers::{admin_config, admin_execute, fresh_database, remove_leftovers, spawn_app};

async fn exists(name: &str) -> bool {
    let (client, connection) = admin_config().connect(NoTls).await.unwrap();
    let task = tokio::spawn(connection);
    let found = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some();
    drop(client);
    let _ = task.await;
    found
}

#[tokio::test]
async fn a_test_database_is_dropped_when_its_test_ends_even_by_a_panic() {
    let app = spawn_app().await;
    let name = app.database.name().to_owned();
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert!(exists(&name).await);
    drop(app);
    assert!(!exists(&name).await, "{name} outlived its test");

    let (tx, rx) = tokio::sync::oneshot::channel();
    let failing = tokio::spawn(async move {
        let app = spawn_app().await;
        tx.send(app.database.name().to_owned()).unwrap();
        panic!("the test fails while its app is up");
    });
    assert!(failing.await.is_err(), "the task panicked");
    let name = rx.await.unwrap();
    assert!(!exists(&name).await, "{name} outlived its panicking test");
}

#[tokio::test]
async fn leftovers_of_gone_processes_are_removed_and_those_of_live_ones_kept() {
    let live = fresh_database().await;
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    let random = || uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    // A killed run, and a killed run whose pid this very process now has (another start time).
    let of_gone = format!("fk_test_{gone}_1_{}", random());
    let of_reused_pid = format!("fk_test_{}_1_{}", std::process::id(), random());
    for name in [&of_gone, &of_reused_pid] {
        admin_execute(&format!("CREATE DATABASE {name} TEMPLATE template0")).await;
    }
    remove_leftovers().await;
    assert!(!exists(&of_gone).await, "leftover of a gone process kept");
    assert!(
        !exists(&of_reused_pid).await,
        "leftover of a reused pid kept"
    );
    assert!(exists(&live).await, "a live test's database was dropped");
}

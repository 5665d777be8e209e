//! The whole story across real processes: `firstkey demo --once` (server, HTTP API with WebAuthn
//! ceremonies, agent channel over TLS, outbox over SMTP into the sink) drives a real
//! `firstkey-agent` process; then every step's record, audit entry and mail is checked in the
//! database and the mail folder.

use std::process::Command;

use crate::helpers::{admin_config, fresh_database};

#[tokio::test]
async fn the_whole_story_leaves_every_record_audit_entry_and_mail() {
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::task::spawn_blocking({
        let cwd = dir.path().to_path_buf();
        let url = format!("host=127.0.0.1 port=5432 user=postgres dbname={db}");
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
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for step in [
        "trust bundle v1",
        "enrolled a passkey",
        "wrote access plan v1",
        "paired",
        "granted Engine 7 entry",
        "byte token for the front door",
        "acknowledged",
        "ALLOW",
        "DENY (single use)",
        "receipts (allow, then deny: replayed) uploaded",
        "Front door opened",
        "chain intact",
        "the story is complete",
    ] {
        assert!(stdout.contains(step), "missing step {step:?} in:\n{stdout}");
    }

    let mut config = admin_config();
    config.dbname(&db);
    let pool = firstkey::store::pool(config, 1).unwrap();
    let client = pool.get().await.unwrap();
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT count(*) FROM locks WHERE pairing_state = 'paired'").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM grants WHERE status = 'live' AND policy_set_hash IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM issued_tokens WHERE status = 'used'").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM receipts WHERE decision = 'allow'").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM receipts WHERE decision = 'deny' AND reason = 'replayed'")
            .await,
        1
    );
    for action in [
        "account.sign_up",
        "auth.enrol",
        "plan.update",
        "lock.register",
        "lock.pair",
        "grant.create",
        "token.issue",
        "lock.receipt",
    ] {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM audit_entries WHERE action = $1",
                &[&action],
            )
            .await
            .unwrap()
            .get(0);
        assert!(n >= 1, "no audit entry {action}");
    }
    assert_eq!(
        count("SELECT count(*) FROM notification_outbox WHERE sent_at IS NULL").await,
        0,
        "every mail delivered"
    );
    let mails = firstkey::notify::sink::messages(&dir.path().join(".firstkey/demo/mail")).unwrap();
    let subjects: Vec<&str> = mails
        .iter()
        .filter_map(|m| m.lines().find(|l| l.starts_with("Subject:")))
        .collect();
    for expected in ["confirm your e-mail", "Front door opened"] {
        assert!(
            subjects.iter().any(|s| s.contains(expected)),
            "no mail {expected:?}: {subjects:?}"
        );
    }
    assert!(
        !mails.iter().any(|m| m.contains("Home oxygen")),
        "responder notes never go into mail"
    );
}

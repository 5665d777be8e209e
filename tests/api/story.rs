//! The whole story across real processes: `firstkey demo --once` (server, HTTP API with WebAuthn
//! ceremonies, agent channel over TLS, outbox over SMTP into the sink) drives a real
//! `firstkey-agent` process; then every step's record, audit entry and mail is checked in the
//! database and the mail folder.

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;

use crate::helpers::{admin_config, fresh_database};

/// `firstkey demo --once` on database `db` in `cwd`, logging at `rust_log`. `key_dir` is left at its
/// default (`.firstkey/keys`) unless given.
async fn run_demo(db: &str, cwd: &Path, rust_log: &str, key_dir: Option<&str>) -> Output {
    run_demo_with(db, cwd, rust_log, key_dir, &[]).await
}

/// [`run_demo`] with more environment variables (`FIRSTKEY_OTLP_*`, …).
pub(crate) async fn run_demo_with(
    db: &str,
    cwd: &Path,
    rust_log: &str,
    key_dir: Option<&str>,
    env: &[(&str, &str)],
) -> Output {
    let cwd = cwd.to_path_buf();
    let url = format!("host=127.0.0.1 port=5432 user=postgres dbname={db}");
    let rust_log = rust_log.to_owned();
    let key_dir = key_dir.map(str::to_owned);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_firstkey"));
        command
            .args(["demo", "--once"])
            .current_dir(cwd)
            .env("FIRSTKEY_DATABASE_URL", url)
            .env_remove("FIRSTKEY_SMTP_RELAY")
            .env_remove("FIRSTKEY_KEY_DIR")
            .env("RUST_LOG", rust_log);
        if let Some(key_dir) = key_dir {
            command.env("FIRSTKEY_KEY_DIR", key_dir);
        }
        command.envs(env);
        command.output().unwrap()
    })
    .await
    .unwrap()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_whole_story_leaves_every_record_audit_entry_and_mail() {
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let output = run_demo(&db, dir.path(), "warn", Some("keys")).await;
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
        "trusted neighbour Lee",
        "tapped: ALLOW",
        "remote unlock",
        "opened for 10 s",
        "a keypad code read over radio",
        "DENY (one use)",
        "keypad receipts (allow, then deny: replayed) uploaded",
        "the fire crew is in",
        "battery is low",
        "opened the front door with the physical key",
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
        2,
        "the dispatcher's grant and the smoke alarm's"
    );
    // The responder's token, the trusted neighbour's, the homeowner's remote unlock, the fire crew's.
    assert_eq!(
        count("SELECT count(*) FROM issued_tokens WHERE status = 'used'").await,
        4
    );
    assert_eq!(
        count("SELECT count(*) FROM issued_tokens WHERE status = 'used' AND trusted_party_id IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM issued_tokens WHERE status = 'used' AND remote_open").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM receipts WHERE decision = 'allow' AND reason = 'ok'").await,
        4
    );
    assert_eq!(
        count("SELECT count(*) FROM receipts WHERE decision = 'allow' AND reason = 'keypad_ok'")
            .await,
        1
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM receipts WHERE decision = 'deny' AND reason = 'keypad_replayed'"
        )
        .await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM receipts WHERE decision = 'event' AND reason = 'door:key_override'")
            .await,
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
        "keypad_code.issue",
        "lock.receipt",
        "trusted.invite",
        "trusted.accept",
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

/// Every secret a demo run in `demo_dir` (on database `db`) handled, named by kind: the mailed link
/// secrets, the override tokens and the responder's key (in every encoding a log might use), the
/// lock's pairing code, the plan's responder notes. What no log line and no exported span may hold.
pub(crate) async fn demo_secrets(db: &str, demo_dir: &Path) -> Vec<(&'static str, String)> {
    let mut tokens = Vec::new();
    for entry in std::fs::read_dir(demo_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if (name.starts_with("token-") || name.starts_with("responder-")) && path.is_file() {
            tokens.push(std::fs::read(&path).unwrap());
        }
    }
    let mut secrets: Vec<(&str, String)> = Vec::new();
    // Link secrets: the part after `#` of every mailed link.
    for mail in firstkey::notify::sink::messages(&demo_dir.join("mail")).unwrap() {
        let mail = mail.replace("=\r\n", "").replace("=\n", "");
        for part in mail.split('#').skip(1) {
            let secret: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if secret.len() >= 20 {
                secrets.push(("link secret", secret));
            }
        }
    }
    assert!(secrets.len() >= 3, "the run mailed links: {secrets:?}");
    // The override token and the responder's key, in every encoding a log might use.
    assert!(tokens.len() >= 2, "token and key files written");
    for bytes in &tokens {
        for form in byte_forms(bytes) {
            secrets.push(("token or key", form));
        }
    }
    // The lock's pairing code, derived as the agent derives it.
    let mut config = admin_config();
    config.dbname(db);
    let pool = firstkey::store::pool(config, 1).unwrap();
    let client = pool.get().await.unwrap();
    for row in client
        .query("SELECT id, device_public_key FROM locks", &[])
        .await
        .unwrap()
    {
        let id: uuid::Uuid = row.get(0);
        let key: Vec<u8> = row.get(1);
        let code = firstkey_agent::pairing::PairingCode::derive(&key, &id.to_string()).display();
        secrets.push(("pairing code", code.replace('-', "")));
        secrets.push(("pairing code", code));
    }
    // The responder notes of the plan.
    for note in ["Friendly dog, Biscuit", "Home oxygen in the bedroom"] {
        secrets.push(("note", note.to_owned()));
    }
    secrets
}

/// The ways a byte secret could be written into a log.
fn byte_forms(bytes: &[u8]) -> Vec<String> {
    let debug_list: Vec<String> = bytes.iter().take(12).map(u8::to_string).collect();
    vec![
        hex::encode(bytes),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        base64::engine::general_purpose::STANDARD.encode(bytes),
        // `{:?}` of a byte slice, as tokio-postgres writes parameters.
        debug_list.join(", "),
    ]
}

#[tokio::test]
async fn a_demo_at_debug_level_logs_no_token_link_secret_pairing_code_or_note() {
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let output = run_demo(&db, dir.path(), "debug", Some("keys")).await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let demo_dir = dir.path().join(".firstkey/demo");
    // Everything the run logged: its own output and the lock agent's log.
    let mut log = format!("{stdout}\n{stderr}");
    for entry in std::fs::read_dir(&demo_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".log") {
            log.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    assert!(
        log.lines().count() > 100,
        "the run logged at debug level:\n{log}"
    );
    let secrets = demo_secrets(&db, &demo_dir).await;
    for (kind, secret) in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "{kind} {secret:?} is in the log"
        );
    }
}

#[tokio::test]
async fn the_demo_works_again_after_its_folder_is_deleted_and_says_what_it_did() {
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let first = run_demo(&db, dir.path(), "warn", None).await;
    let (stdout, stderr) = text(&first);
    assert!(
        first.status.success(),
        "first demo failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("demo municipality demo-city: created"),
        "{stdout}"
    );
    // The printed lock hint names a state directory that exists.
    let hint = stdout
        .lines()
        .find_map(|l| l.split("--state-dir ").nth(1))
        .unwrap_or_else(|| panic!("no lock hint in:\n{stdout}"));
    let state_dir = dir.path().join(hint.split_whitespace().next().unwrap());
    assert!(
        state_dir.join("config.json").is_file(),
        "{}: {stdout}",
        state_dir.display()
    );

    // A newcomer starts over: the keys of the first run are gone, the database still has its city.
    std::fs::remove_dir_all(dir.path().join(".firstkey")).unwrap();
    let second = run_demo(&db, dir.path(), "warn", None).await;
    let (stdout, stderr) = text(&second);
    assert!(
        second.status.success(),
        "second demo failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("made with other keys"), "{stdout}");
    assert!(stdout.contains("the story is complete"), "{stdout}");
}

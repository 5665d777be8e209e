//! The operator's commands, run as the built binary: they answer in sentences, name what was not
//! found and how to list it, and running one twice does not leave two of anything.

use std::process::{Command, Output};

use crate::helpers::{TestDatabase, admin_config, fresh_database};

fn firstkey(db: &TestDatabase, dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firstkey"))
        .args(args)
        .current_dir(dir)
        .env(
            "FIRSTKEY_DATABASE_URL",
            format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
        )
        .env("FIRSTKEY_KEY_DIR", "keys")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn out(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn admin_and_keys_commands_answer_in_sentences() {
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let create = [
        "admin",
        "create",
        "--municipality",
        "cli-town",
        "--email",
        "chief@cli.example",
        "--name",
        "Pat Chief",
    ];
    let first = firstkey(&db, dir.path(), &create);
    assert!(first.status.success(), "{}", out(&first));
    let second = firstkey(&db, dir.path(), &create);
    assert!(second.status.success(), "{}", out(&second));
    let said = out(&second);
    assert!(
        said.contains("already exists") && said.contains("replaces"),
        "{said}"
    );
    let mut config = admin_config();
    config.dbname(&db);
    let pool = firstkey::store::pool(config, 1).unwrap();
    let open: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM invitations WHERE email = 'chief@cli.example' AND used_at IS NULL AND expires_at > now()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 1, "one working admin link, not two");

    // A municipality that does not exist: say which, and how to list them.
    let nowhere = firstkey(
        &db,
        dir.path(),
        &["keys", "rotate", "--municipality", "nowhere"],
    );
    assert!(!nowhere.status.success());
    let said = out(&nowhere);
    assert!(
        said.contains("`nowhere`") && said.contains("firstkey admin municipalities"),
        "{said}"
    );
    let listed = firstkey(&db, dir.path(), &["admin", "municipalities"]);
    assert!(listed.status.success(), "{}", out(&listed));
    assert!(out(&listed).contains("cli-town"), "{}", out(&listed));

    // trust-ca: a sentence with the fingerprint, not a debug dump.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let trusted = firstkey(
        &db,
        dir.path(),
        &["admin", "trust-ca", "--municipality", "cli-town", "ca.pem"],
    );
    let said = out(&trusted);
    assert!(trusted.status.success(), "{said}");
    assert!(
        !said.contains("TrustedCa") && !said.contains("BEGIN CERTIFICATE"),
        "{said}"
    );
    assert!(
        said.contains("cli-town") && said.contains("fingerprint"),
        "{said}"
    );
    assert_eq!(said.lines().count(), 1, "{said}");
}

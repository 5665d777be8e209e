//! Start-up: bad settings fail with a clear message and a non-zero exit; the CLI answers --help and
//! --version; the private PostgreSQL cluster of the embedded default starts and stops.

use std::process::Command;

fn firstkey() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_firstkey"));
    c.env_remove("FIRSTKEY_DATABASE_URL");
    c
}

#[test]
fn a_bad_setting_fails_startup_naming_the_setting() {
    for (var, value, setting) in [
        ("FIRSTKEY_LISTEN", "not-an-address", "listen"),
        (
            "FIRSTKEY_PUBLIC_ORIGIN",
            "http://example.org",
            "public_origin",
        ),
        ("FIRSTKEY_LOG_FORMAT", "yaml", "log_format"),
    ] {
        let output = firstkey().arg("serve").env(var, value).output().unwrap();
        assert!(!output.status.success(), "{var}={value} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("`{setting}`")), "{var}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    }
}

#[test]
fn a_missing_config_file_fails_startup() {
    let output = firstkey()
        .args(["--config", "/nonexistent/firstkey.toml", "migrate"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/firstkey.toml"));
}

#[test]
fn config_file_values_are_read_and_env_overrides_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("firstkey.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9999\"\nlog_format = \"nonsense\"\n",
    )
    .unwrap();
    let output = firstkey()
        .arg("--config")
        .arg(&file)
        .arg("serve")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("`log_format`"));
    let settings = firstkey::settings::Settings::load(
        Some(&file),
        [("FIRSTKEY_LOG_FORMAT".to_owned(), "json".to_owned())],
    )
    .unwrap();
    assert_eq!(settings.listen.port(), 9999);
    assert_eq!(settings.log_format, firstkey::settings::LogFormat::Json);
}

#[test]
fn help_and_version() {
    let output = firstkey().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["serve", "migrate", "demo"] {
        assert!(help.contains(command), "{help}");
    }
    let output = firstkey().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn a_private_cluster_starts_answers_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = match firstkey::store::embedded::PrivateCluster::start(dir.path()) {
        Ok(c) => c,
        Err(e) if e.contains("not installed") => {
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("private cluster failed to start: {e}"),
    };
    let (client, connection) = cluster
        .config()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(client);
    let _ = task.await;
    let pid_file = cluster.data_dir().join("postmaster.pid");
    assert!(pid_file.exists());
    drop(cluster);
    assert!(!pid_file.exists(), "stopped cleanly on drop");
}

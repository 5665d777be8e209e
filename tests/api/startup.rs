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

/// `firstkey` on the test database `db`, in a scratch directory, all ports picked by the system.
pub(crate) fn firstkey_on(db: &str, dir: &std::path::Path) -> Command {
    let mut c = firstkey();
    c.current_dir(dir)
        .env(
            "FIRSTKEY_DATABASE_URL",
            format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
        )
        .env("FIRSTKEY_LISTEN", "127.0.0.1:0")
        .env("FIRSTKEY_AGENT_LISTEN", "127.0.0.1:0")
        .env("FIRSTKEY_KEY_DIR", "keys")
        .env_remove("FIRSTKEY_SMTP_RELAY")
        .env_remove("RUST_LOG");
    c
}

/// Runs `serve` expecting it to stop at start-up; returns (exit code, stderr).
fn failed_start(mut command: Command) -> (Option<i32>, String) {
    let output = command.arg("serve").output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_missing_database_or_role_is_named_and_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for (url, named) in [
        (
            "host=127.0.0.1 port=5432 user=postgres dbname=fk_no_such_database",
            "database fk_no_such_database",
        ),
        (
            "host=127.0.0.1 port=5432 user=fk_no_such_role dbname=postgres",
            "role fk_no_such_role",
        ),
    ] {
        let mut command = firstkey_on("unused", dir.path());
        command.env("FIRSTKEY_DATABASE_URL", url);
        let (code, stderr) = failed_start(command);
        assert_eq!(code, Some(2), "{url}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        for part in ["`database_url`", "127.0.0.1:5432", named, "does not exist"] {
            assert!(stderr.contains(part), "{url}: {part:?} missing in {stderr}");
        }
        assert!(
            !stderr.contains("retrying"),
            "a permanent fault is not retried: {stderr}"
        );
    }
}

#[tokio::test]
async fn refused_connections_are_retried_and_missing_databases_are_not() {
    use firstkey::server::{ConnectFault, classify_connect_error};
    // A port nothing listens on: the database may still be starting.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut closed = tokio_postgres::Config::new();
    closed.host("127.0.0.1").port(port).user("postgres");
    let Err(err) = closed.connect(tokio_postgres::NoTls).await else {
        panic!("nothing listens on {port}")
    };
    assert!(matches!(
        classify_connect_error(&err),
        ConnectFault::Transient(_)
    ));
    let mut missing = crate::helpers::admin_config();
    missing.dbname("fk_no_such_database");
    let Err(err) = missing.connect(tokio_postgres::NoTls).await else {
        panic!("fk_no_such_database exists")
    };
    assert!(matches!(
        classify_connect_error(&err),
        ConnectFault::Permanent(_)
    ));
}

#[tokio::test]
async fn unusable_directories_and_addresses_name_their_setting_and_exit_2() {
    let db = crate::helpers::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-file"), "not a directory").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    for (var, value, setting) in [
        ("FIRSTKEY_POLICY_DIR", "no-such-policies", "policy_dir"),
        ("FIRSTKEY_KEY_DIR", "a-file/keys", "key_dir"),
        ("FIRSTKEY_AGENT_LISTEN", taken_addr.as_str(), "agent_listen"),
        ("FIRSTKEY_LISTEN", taken_addr.as_str(), "listen"),
    ] {
        let mut command = firstkey_on(&db, dir.path());
        command.env(var, value);
        let (code, stderr) = failed_start(command);
        let last = stderr.lines().last().unwrap_or_default();
        assert_eq!(code, Some(2), "{var}={value}: {stderr}");
        assert!(
            last.contains(&format!("`{setting}`")),
            "{var}={value}: {stderr}"
        );
        assert!(last.starts_with("firstkey: "), "{var}={value}: {stderr}");
    }
}

#[tokio::test]
async fn the_lock_agents_variables_do_not_stop_the_server() {
    let db = crate::helpers::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let output = firstkey_on(&db, dir.path())
        .env("FIRSTKEY_AGENT_STATE_DIR", "/var/lib/firstkey-agent")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `firstkey serve` child process whose log goes to a file, and its HTTP address.
pub(crate) struct Served {
    pub(crate) child: std::process::Child,
    log: std::path::PathBuf,
    pub(crate) base: String,
}

impl Served {
    pub(crate) fn start(mut command: Command, dir: &std::path::Path) -> Self {
        let log = dir.join("serve.log");
        let child = command
            .arg("serve")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let base = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .filter(|l| l.contains("INFO listening "))
                .find_map(|l| l.split("address=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
            {
                break format!("http://{addr}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not start:\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        Self { child, log, base }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_access_log_has_one_plain_line_per_request_and_no_query_string() {
    let db = crate::helpers::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(firstkey_on(&db, dir.path()), dir.path());
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (method, path, origin, status) in [
        ("GET", "/healthz", None, 200),
        ("GET", "/no/such/page?secret=SearchTermQ1", None, 404),
        (
            "GET",
            "/api/v1/dispatch/properties?q=SearchTermQ2",
            None,
            401,
        ),
        (
            "POST",
            "/api/v1/accounts/sign-up",
            Some("https://evil.example"),
            403,
        ),
    ] {
        let mut request = http.request(method.parse().unwrap(), format!("{}{path}", served.base));
        if let Some(origin) = origin {
            request = request
                .header("origin", origin)
                .json(&serde_json::json!({ "municipality": "x", "email": "a@example.org", "display_name": "SecretBody" }));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        ids.push((id, method, status));
    }
    // The last line is written before the response leaves; give a slow machine a moment anyway.
    let mut log = served.log();
    for _ in 0..50 {
        if log.contains(&ids.last().unwrap().0) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        log = served.log();
    }
    assert!(!log.contains('\u{1b}'), "no ANSI colour in a file:\n{log}");
    for secret in ["SearchTermQ1", "SearchTermQ2", "SecretBody"] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
    for (id, method, status) in &ids {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(id.as_str())).collect();
        let access: Vec<&&str> = lines.iter().filter(|l| l.contains("status=")).collect();
        assert_eq!(access.len(), 1, "one access line for {id}:\n{log}");
        let line = access[0];
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains(&format!("method={method}")), "{line}");
        assert!(line.contains(&format!("status={status}")), "{line}");
        assert!(
            line.contains("route=") && line.contains("duration_ms="),
            "{line}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.contains(" WARN ") || l.contains(" ERROR ")),
            "an expected answer is not a warning:\n{log}"
        );
    }
    assert!(log.contains("route=/api/v1/dispatch/properties"), "{log}");
}

//! Test harness: a fresh database per test, cloned from a migrated template (so a test costs a
//! `CREATE DATABASE … TEMPLATE`, not a migration run), the real application on port 0, and a small
//! typed client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use deadpool_postgres::Pool;
use firstkey::clock::SystemClock;
use firstkey::http::Application;
use firstkey::settings::Settings;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, OnceCell};
use tokio::task::JoinSet;
use tokio_postgres::NoTls;

/// Where the test PostgreSQL server is: `FIRSTKEY_TEST_DATABASE_URL`, default the local server.
pub fn admin_config() -> tokio_postgres::Config {
    std::env::var("FIRSTKEY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".to_owned())
        .parse()
        .expect("FIRSTKEY_TEST_DATABASE_URL is a PostgreSQL connection string")
}

/// Runs one statement on the maintenance database.
pub async fn admin_execute(sql: &str) {
    let (client, connection) = admin_config()
        .connect(NoTls)
        .await
        .expect("connect to test PostgreSQL");
    let task = tokio::spawn(connection);
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(client);
    let _ = task.await;
}

fn config_for(db: &str) -> tokio_postgres::Config {
    let mut c = admin_config();
    c.dbname(db);
    c
}

/// A per-test database, dropped (`WITH (FORCE)`) when this guard is dropped: at the end of the test,
/// and also when the test panics (the guard is dropped while unwinding). Dereferences to its name.
///
/// Names are `fk_test_<pid>_<process start time>_<random>`, so a later run can tell the databases of
/// a process that is gone (killed runs) from those of a live one, even when the pid was reused:
/// [`remove_leftovers`].
pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// A new, unique name owned by this process.
    fn new_name() -> String {
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!(
            "fk_test_{}_{}_{}",
            std::process::id(),
            process_start_time(std::process::id()).unwrap_or(0),
            &random[..16]
        )
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for TestDatabase {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl From<&TestDatabase> for String {
    fn from(db: &TestDatabase) -> Self {
        db.name.clone()
    }
}

impl std::fmt::Display for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime (or while unwinding); a thread with its own runtime
        // does the blocking work. Failing to drop must not panic here (a panic while unwinding aborts).
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || drop_database_now(&name)).join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!(
                "could not drop test database {}: the dropping thread panicked",
                self.name
            ),
        }
    }
}

/// Drops `name` (terminating its connections) from a fresh single-threaded runtime.
fn drop_database_now(name: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let (client, connection) = admin_config()
            .connect(NoTls)
            .await
            .map_err(|e| e.to_string())?;
        let task = tokio::spawn(connection);
        let result = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
            .map_err(|e| e.to_string());
        drop(client);
        let _ = task.await;
        result
    })
}

/// Start time of process `pid` (clock ticks since boot, field 22 of `/proc/<pid>/stat`), or `None`
/// when there is no such process (or no `/proc`).
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: count from the last ')'.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a database named by [`TestDatabase::new_name`] (or by the older `fk_test_<pid>_<uuid>`
/// scheme) may belong to a live process. When in doubt (no `/proc`, a name we cannot read) it says
/// yes: a database of a live test is never dropped.
fn owner_may_be_alive(name: &str) -> bool {
    let parts: Vec<&str> = name.split('_').collect();
    let Some(pid) = parts.get(2).and_then(|p| p.parse::<u32>().ok()) else {
        return true;
    };
    if !std::path::Path::new("/proc/self/stat").exists() {
        return true;
    }
    match (process_start_time(pid), parts.len()) {
        (None, _) => false,
        // New scheme: the same pid with another start time is a reused pid, not the owner.
        (Some(start), 5) => parts
            .get(3)
            .and_then(|s| s.parse::<u64>().ok())
            .is_none_or(|s| s == start),
        (Some(_), _) => true,
    }
}

/// Drops the per-test databases of test processes that are gone (runs that were killed before their
/// guards ran). Returns the names it dropped. Databases of live processes (other test runs going on
/// at the same time) are never touched.
pub async fn remove_leftovers() -> Vec<String> {
    let (client, connection) = admin_config().connect(NoTls).await.unwrap();
    let task = tokio::spawn(connection);
    let mut dropped = Vec::new();
    for row in client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'fk\\_test\\_%'",
            &[],
        )
        .await
        .unwrap()
    {
        let db: String = row.get(0);
        if !owner_may_be_alive(&db)
            && client
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .await
                .is_ok()
        {
            dropped.push(db);
        }
    }
    drop(client);
    let _ = task.await;
    dropped
}

/// Name of the migrated template database; it is built once per test run and per schema.
async fn template() -> &'static str {
    static TEMPLATE: OnceCell<String> = OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            // Keyed by what this binary embeds (build.rs makes cargo rebuild when sql/ changes).
            let name = format!("fk_tpl_{}", &firstkey::store::migrations_fingerprint()[..12]);
            remove_leftovers().await;
            let (client, connection) = admin_config().connect(NoTls).await.unwrap();
            let task = tokio::spawn(connection);
            let exists = client
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                .await
                .unwrap()
                .is_some();
            if !exists {
                let building = format!("{name}_build_{}", std::process::id());
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)")).await.unwrap();
                client.batch_execute(&format!("CREATE DATABASE {building}")).await.unwrap();
                let pool = firstkey::store::pool(config_for(&building), 1).unwrap();
                firstkey::store::migrate(&pool).await.expect("migrations apply to an empty database");
                pool.close();
                drop(pool);
                client
                    .batch_execute(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{building}';
                         ALTER DATABASE {building} RENAME TO {name}"
                    ))
                    .await
                    .unwrap();
            }
            drop(client);
            let _ = task.await;
            name
        })
        .await
}

/// A fresh, migrated database for one test; dropped when the returned guard is.
pub async fn fresh_database() -> TestDatabase {
    let template = template().await;
    let name = TestDatabase::new_name();
    admin_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}")).await;
    TestDatabase { name }
}

/// An empty (unmigrated) database for one test; dropped when the returned guard is.
pub async fn empty_database() -> TestDatabase {
    // Leftovers are removed here too, for runs that never build the template.
    template().await;
    let name = TestDatabase::new_name();
    admin_execute(&format!("CREATE DATABASE {name} TEMPLATE template0")).await;
    TestDatabase { name }
}

/// A running application and what a test needs to talk to it.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// A pool on the same database, for arranging and asserting.
    pub pool: Pool,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The proxy between the application and PostgreSQL, when the test asked for one.
    pub proxy: Option<PgProxy>,
    /// The test's database; dropped with the app (declared last: dropped after the pool).
    pub database: TestDatabase,
}

impl TestApp {
    /// GET a path.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request reaches the server")
    }
}

/// Settings for a test: port 0, the given database.
pub fn test_settings(database: tokio_postgres::Config) -> Settings {
    test_settings_with(database, &[])
}

/// [`test_settings`] with more `FIRSTKEY_*` variables.
pub fn test_settings_with(database: tokio_postgres::Config, extra: &[(&str, &str)]) -> Settings {
    let url = connection_url(&database);
    let extra = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    Settings::load(
        None,
        [
            ("FIRSTKEY_DATABASE_URL".to_owned(), url),
            ("FIRSTKEY_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("FIRSTKEY_DB_POOL_SIZE".to_owned(), "4".to_owned()),
            // base64 of 32 bytes of 0x2a: a fixed test key-encryption key.
            (
                "FIRSTKEY_DATA_KEY".to_owned(),
                "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".to_owned(),
            ),
        ]
        .into_iter()
        .chain(extra),
    )
    .expect("test settings are valid")
}

fn connection_url(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "host={host} port={port} user={} dbname={}",
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap_or("postgres")
    )
}

/// Starts the application on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn(false, &[]).await
}

/// Starts the application on a fresh database with more `FIRSTKEY_*` settings.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    spawn(false, extra).await
}

/// Starts the application on a fresh database reached through a [`PgProxy`] the test can cut.
pub async fn spawn_app_behind_proxy() -> TestApp {
    spawn(true, &[]).await
}

async fn spawn(with_proxy: bool, extra: &[(&str, &str)]) -> TestApp {
    let db = fresh_database().await;
    let direct = config_for(&db);
    let (app_config, proxy) = if with_proxy {
        let upstream = SocketAddr::from((
            [127, 0, 0, 1],
            direct.get_ports().first().copied().unwrap_or(5432),
        ));
        let proxy = PgProxy::start(upstream).await;
        // A new Config: `host()`/`port()` append to the lists of an existing one.
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(proxy.port)
            .user(direct.get_user().unwrap_or("postgres"))
            .dbname(&db);
        (c, Some(proxy))
    } else {
        (direct.clone(), None)
    };
    let settings = test_settings_with(app_config.clone(), extra);
    let app_pool = firstkey::store::pool(app_config, settings.db_pool_size).unwrap();
    let app =
        Application::build(settings, app_pool, Arc::new(SystemClock)).expect("application builds");
    let address = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        pool: firstkey::store::pool(direct, 2).unwrap(),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        proxy,
        database: db,
    }
}

/// A TCP proxy in front of PostgreSQL that a test can take down (dropping every open connection and
/// refusing new ones) and bring back, to simulate the database going away without touching it.
pub struct PgProxy {
    port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<JoinSet<()>>>,
    attempts: Arc<AtomicUsize>,
}

impl PgProxy {
    /// A proxy on a free port of 127.0.0.1 in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let attempts = Arc::new(AtomicUsize::new(0));
        let (accept_up, accept_connections, accept_attempts) =
            (up.clone(), connections.clone(), attempts.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                accept_attempts.fetch_add(1, Ordering::SeqCst);
                if !accept_up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                accept_connections.lock().await.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            port,
            up,
            connections,
            attempts,
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections attempted through the proxy so far (refused ones included).
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// The database "goes away": open connections are cut, new ones refused.
    pub async fn take_down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.connections.lock().await.abort_all();
    }

    /// The database "returns".
    pub fn bring_up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A signed-in test user (session made directly in the database); a stepped-up user's credential
/// holds the real P-256 public key of `key`, a software authenticator, so proofs of possession made
/// with it verify.
pub struct As {
    /// The user.
    pub id: uuid::Uuid,
    /// `Cookie` header value.
    pub cookie: String,
    /// The key behind the step-up credential, for stepped-up users.
    pub key: Option<firstkey_token::SoftwareAuthenticator>,
}

/// The COSE_Key (EC2, P-256, ES256) of a software authenticator's public key.
pub fn cose_p256(key: &firstkey_token::SoftwareAuthenticator) -> Vec<u8> {
    let firstkey_token::ConfirmationKey::P256(point) = key.confirmation_key() else {
        panic!("P-256 key expected");
    };
    let mut out = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
    out.extend_from_slice(&point[1..33]);
    out.extend_from_slice(&[0x22, 0x58, 0x20]);
    out.extend_from_slice(&point[33..]);
    out
}

/// Creates (or finds) a user with `role` and a session for them; `stepped_up` gives the session a
/// fresh step-up with an enrolled credential.
pub async fn user(
    app: &TestApp,
    tenant: firstkey::store::Tenant,
    email: &str,
    agency: Option<uuid::Uuid>,
    role: firstkey::domain::Role,
    stepped_up: bool,
) -> As {
    use firstkey::auth::session;
    use firstkey_token::SoftwareAuthenticator;
    let client = app.pool.get().await.unwrap();
    let now = chrono::Utc::now();
    let u = firstkey::store::people::ensure_user(
        &client,
        tenant,
        &firstkey::domain::Email::parse(email).unwrap(),
        email,
        agency,
        &[role],
        now,
    )
    .await
    .unwrap();
    let rng = ring::rand::SystemRandom::new();
    let pk8 = SoftwareAuthenticator::generate_pkcs8(&rng).unwrap();
    let key = SoftwareAuthenticator::from_pkcs8(&pk8, "localhost", &rng).unwrap();
    let credential = if stepped_up {
        let id = uuid::Uuid::new_v4();
        client
            .execute(
                "INSERT INTO webauthn_credentials (id, municipality_id, user_id, credential_id, kind, credential,
                     public_key_cose, backup_eligible, created_at)
                 VALUES ($1, $2, $3, $4, 'security_key', '{}', $5, false, now())",
                &[&id, &tenant.id(), &u.id, &uuid::Uuid::new_v4().as_bytes().to_vec(), &cose_p256(&key)],
            )
            .await
            .unwrap();
        Some(id)
    } else {
        None
    };
    let (_, secret) = session::create(&client, tenant, u.id, credential, now)
        .await
        .unwrap();
    As {
        id: u.id,
        cookie: format!("{}={}", session::COOKIE, secret.expose()),
        key: stepped_up.then_some(key),
    }
}

/// A new home of `who`, made through the API; its id.
pub async fn home_of(app: &TestApp, who: &As, address: &str) -> uuid::Uuid {
    let (status, body) = call(
        app,
        reqwest::Method::POST,
        "/api/v1/properties",
        Some(who),
        Some(serde_json::json!({ "address": address })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().parse().unwrap()
}

/// The public origin of test servers; state-changing requests carry it as `Origin`.
pub const ORIGIN: &str = "http://localhost:8080";

/// One JSON API call as a browser makes it: session cookie if signed in, `Origin` on writes.
/// Returns the status and the JSON body (or the text as a JSON string).
pub async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    who: Option<&As>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = app
        .http
        .request(method.clone(), format!("{}{path}", app.address));
    if let Some(who) = who {
        request = request.header("cookie", &who.cookie);
    }
    if method != reqwest::Method::GET {
        request = request.header("origin", ORIGIN);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

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

/// Name of the migrated template database; it is built once per test run and per schema.
async fn template() -> &'static str {
    static TEMPLATE: OnceCell<String> = OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            // Keyed by what this binary embeds (build.rs makes cargo rebuild when sql/ changes).
            let name = format!("fk_tpl_{}", &firstkey::store::migrations_fingerprint()[..12]);
            // Leftovers of earlier runs: databases whose test process is gone (the name carries its pid).
            let (client, connection) = admin_config().connect(NoTls).await.unwrap();
            let task = tokio::spawn(connection);
            for row in client
                .query("SELECT datname FROM pg_database WHERE datname LIKE 'fk\\_test\\_%'", &[])
                .await
                .unwrap()
            {
                let db: String = row.get(0);
                let pid = db.split('_').nth(2).unwrap_or_default();
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).await;
                }
            }
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

/// A fresh, migrated database for one test.
pub async fn fresh_database() -> String {
    let template = template().await;
    let name = format!(
        "fk_test_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    admin_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}")).await;
    name
}

/// An empty (unmigrated) database for one test.
pub async fn empty_database() -> String {
    let name = format!(
        "fk_test_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    admin_execute(&format!("CREATE DATABASE {name} TEMPLATE template0")).await;
    name
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
    let url = connection_url(&database);
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
        ],
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
    spawn(false).await
}

/// Starts the application on a fresh database reached through a [`PgProxy`] the test can cut.
pub async fn spawn_app_behind_proxy() -> TestApp {
    spawn(true).await
}

async fn spawn(with_proxy: bool) -> TestApp {
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
    let settings = test_settings(app_config.clone());
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

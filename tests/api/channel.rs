//! The agent channel across real processes: the `firstkey-agent` binary (init, run, tap) over TLS
//! against the server's channel listener on a fresh database; replicas are listeners in this
//! process that share the database and are stopped (every task aborted) to play a killed replica.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use deadpool_postgres::Pool;
use firstkey::channel::inbox::{self, InboxMessage};
use firstkey::channel::receipts::{self, BatchOutcome, LockIdentity};
use firstkey::channel::server::{ChannelOptions, RunningChannel, start_with};
use firstkey::channel::tls::ServerIdentity;
use firstkey::clock::SystemClock;
use firstkey::domain::{AgencyKind, Email, Role, Slug};
use firstkey::store::{Tenant, people, properties, tenancy};
use firstkey_agent::protocol::Bytes;
use firstkey_agent::protocol::tap::Outcome as TapOutcome;
use firstkey_agent::receipt::{ChainHead, ReceiptBody, sign_next};
use uuid::Uuid;

use crate::helpers::{admin_config, fresh_database};

/// The agent binary beside this test binary (`target/debug/firstkey-agent`), built once if missing.
pub(crate) fn agent_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap();
        let bin = dir.join("firstkey-agent");
        if !bin.is_file() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "firstkey-agent", "--bin", "firstkey-agent"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .unwrap();
            assert!(status.success(), "building firstkey-agent failed");
        }
        // A binary older than the agent's sources tests yesterday's agent (cargo cannot be asked
        // to rebuild it from inside `cargo test`, which holds the build lock): say so plainly.
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-agent");
        if let Some(newer) = newest_source(&root).filter(|(t, _)| *t > built) {
            panic!(
                "{} is older than {}: run `cargo build -p firstkey-agent` (or `cargo test \
                 --workspace`, which builds it) before `cargo test --test api`",
                bin.display(),
                newer.1.display()
            );
        }
        bin
    })
}

/// The newest `.rs` or `Cargo.toml` under `dir` (skipping `target` and `fuzz`), with its time.
fn newest_source(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let found = if path.is_dir() {
            if name == "target" || name == "fuzz" {
                continue;
            }
            newest_source(&path)
        } else if path.extension().is_some_and(|e| e == "rs") || name == "Cargo.toml" {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .map(|t| (t, path))
        } else {
            None
        };
        if let Some(f) = found
            && newest.as_ref().is_none_or(|n| f.0 > n.0)
        {
            newest = Some(f);
        }
    }
    newest
}

pub(crate) fn agent_cli(args: &[&str]) -> String {
    let out = Command::new(agent_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "firstkey-agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A database with one municipality, a homeowner and a property, and a key directory for the dev CA.
pub(crate) struct World {
    pub(crate) db_config: tokio_postgres::Config,
    pub(crate) pool: Pool,
    pub(crate) tenant: Tenant,
    pub(crate) property: Uuid,
    pub(crate) owner: Uuid,
    pub(crate) dir: tempfile::TempDir,
    /// Dropped with the world, after the pool.
    pub(crate) _db: crate::helpers::TestDatabase,
}

impl World {
    pub(crate) async fn new() -> Self {
        let db = fresh_database().await;
        let mut db_config = admin_config();
        db_config.dbname(&db);
        let pool = firstkey::store::pool(db_config.clone(), 8).unwrap();
        let client = pool.get().await.unwrap();
        let now = Utc::now();
        let (tenant, _) = tenancy::ensure_municipality(
            &client,
            &Slug::parse("channel-city").unwrap(),
            "Channel City",
            now,
        )
        .await
        .unwrap();
        let owner = people::ensure_user(
            &client,
            tenant,
            &Email::parse("owner@example.org").unwrap(),
            "Owner",
            None,
            &[Role::Homeowner],
            now,
        )
        .await
        .unwrap();
        let property = properties::create_property(&client, tenant, owner.id, "1 Main St", now)
            .await
            .unwrap();
        drop(client);
        Self {
            db_config,
            pool,
            tenant,
            property: property.id,
            owner: owner.id,
            dir: tempfile::tempdir().unwrap(),
            _db: db,
        }
    }

    pub(crate) fn key_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// A replica: a channel listener on `port` (0: any) with its own pool and LISTEN connection.
    pub(crate) async fn replica(&self, port: u16) -> RunningChannel {
        replica_on(&self.key_dir(), self.db_config.clone(), port).await
    }

    /// A replica with explicit options, its LISTEN connection made with `listen_config`.
    pub(crate) async fn replica_with(
        &self,
        options: ChannelOptions,
        listen_config: tokio_postgres::Config,
    ) -> RunningChannel {
        let identity = ServerIdentity::dev(
            &self.key_dir(),
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
        )
        .unwrap();
        start_with(
            ([127, 0, 0, 1], 0).into(),
            identity,
            firstkey::store::pool(self.db_config.clone(), 4).unwrap(),
            listen_config,
            Arc::new(SystemClock),
            options,
        )
        .await
        .unwrap()
    }

    /// Registers a lock with the pairing code its agent printed, as the homeowner would.
    pub(crate) async fn register(&self, lock: Uuid, name: &str, code: &str) {
        let client = self.pool.get().await.unwrap();
        firstkey::pairing::register(
            &client,
            self.tenant,
            self.property,
            self.owner,
            lock,
            name,
            &firstkey::pairing::normalise(code).unwrap(),
            Utc::now(),
        )
        .await
        .unwrap();
    }

    async fn push(&self, pool: &Pool, lock: Uuid, n: u8) -> i64 {
        let mut client = pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let seq = inbox::push(
            &tx,
            self.tenant,
            lock,
            &InboxMessage::Revocation {
                token_hash: [n; 32],
                expires_at: 4_000_000_000,
            },
            Utc::now(),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        seq
    }

    pub(crate) async fn scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> T {
        let client = self.pool.get().await.unwrap();
        client.query_one(sql, params).await.unwrap().get(0)
    }

    async fn acked(&self, lock: Uuid) -> i64 {
        self.scalar("SELECT inbox_acked_seq FROM locks WHERE id = $1", &[&lock])
            .await
    }
}

/// A channel listener on `port` (0: any) with the dev identity in `key_dir`, its own pool and
/// LISTEN connection on the database of `db_config`.
pub(crate) async fn replica_on(
    key_dir: &Path,
    db_config: tokio_postgres::Config,
    port: u16,
) -> RunningChannel {
    let identity =
        ServerIdentity::dev(key_dir, &["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    start_with(
        ([127, 0, 0, 1], port).into(),
        identity,
        firstkey::store::pool(db_config.clone(), 4).unwrap(),
        db_config,
        Arc::new(SystemClock),
        ChannelOptions::default(),
    )
    .await
    .unwrap()
}

/// Polls `check` until it holds, or fails after `secs` seconds.
pub(crate) async fn eventually<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One lock agent process and its state directory.
pub(crate) struct Agent {
    pub(crate) lock: Uuid,
    pub(crate) state: PathBuf,
    pub(crate) code: String,
    pub(crate) child: Option<Child>,
    pub(crate) _dir: tempfile::TempDir,
}

impl Agent {
    /// `firstkey-agent init` against the channel at `port`, trusting the dev CA of `world`.
    pub(crate) fn init(world: &World, port: u16, extra: &[&str]) -> Self {
        Self::init_trusting(
            &world.key_dir().join(firstkey::channel::tls::DEV_CA_FILE),
            port,
            extra,
        )
    }

    /// `firstkey-agent init` against the channel at `port`, trusting the CA in the file `ca`.
    pub(crate) fn init_trusting(ca: &Path, port: u16, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let server = format!("127.0.0.1:{port}");
        let root = hex::encode([7u8; 32]);
        let mut args = vec![
            "init",
            "--state-dir",
            state.to_str().unwrap(),
            "--server",
            &server,
            "--server-name",
            "localhost",
            "--server-ca",
            ca.to_str().unwrap(),
            "--hold-ms",
            "100",
        ];
        if !extra.contains(&"--root-public-key") {
            args.extend(["--root-public-key", &root]);
        }
        args.extend(extra);
        let out = agent_cli(&args);
        let code = out
            .lines()
            .find_map(|l| l.strip_prefix("pairing code:"))
            .unwrap()
            .trim()
            .to_owned();
        // The lock id is the one derived from the new device key (the only one the server pairs).
        let lock = out
            .lines()
            .find_map(|l| l.strip_prefix("lock id:"))
            .and_then(|id| Uuid::parse_str(id.trim()).ok())
            .unwrap();
        Self {
            lock,
            state,
            code,
            child: None,
            _dir: dir,
        }
    }

    pub(crate) fn run(&mut self) {
        let child = Command::new(agent_bin())
            .args(["run", "--state-dir", self.state.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn status(&self) -> serde_json::Value {
        serde_json::from_str(&agent_cli(&[
            "status",
            "--json",
            "--state-dir",
            self.state.to_str().unwrap(),
        ]))
        .unwrap()
    }

    fn inbox_seq(&self) -> u64 {
        self.status()["inbox_seq"].as_u64().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `lock` is paired (its `locks` row exists only once it is).
pub(crate) async fn paired(world: &World, lock: Uuid) -> bool {
    world
        .scalar::<i64>(
            "SELECT count(*) FROM locks WHERE id = $1 AND pairing_state = 'paired'",
            &[&lock],
        )
        .await
        == 1
}

#[tokio::test]
async fn pairing_completes_at_first_connect_and_an_entry_is_delivered_and_acked() {
    let world = World::new().await;
    let replica = world.replica(0).await;
    let mut agent = Agent::init(&world, replica.local_addr().port(), &[]);
    world.register(agent.lock, "Front door", &agent.code).await;
    agent.run();
    eventually("pairing", 20, || paired(&world, agent.lock)).await;
    let audited: i64 = world
        .scalar(
            "SELECT count(*) FROM audit_entries WHERE action = 'lock.pair' AND outcome = 'allow' AND subject_id = $1",
            &[&agent.lock],
        )
        .await;
    assert_eq!(audited, 1);

    let seq = world.push(&world.pool, agent.lock, 1).await;
    eventually("the ack", 20, || async {
        world.acked(agent.lock).await == seq
    })
    .await;
    assert_eq!(agent.inbox_seq(), u64::try_from(seq).unwrap());
    assert_eq!(agent.status()["revocations"].as_u64(), Some(1));
    // Status reached the server.
    let seen: Option<chrono::DateTime<Utc>> = world
        .scalar(
            "SELECT last_seen_at FROM locks WHERE id = $1",
            &[&agent.lock],
        )
        .await;
    assert!(seen.is_some());
}

#[tokio::test]
async fn a_wrong_pairing_code_is_refused_closed_and_audited() {
    let world = World::new().await;
    let replica = world.replica(0).await;
    let mut agent = Agent::init(&world, replica.local_addr().port(), &[]);
    // The homeowner mistyped one symbol.
    let mut wrong = agent.code.clone().into_bytes();
    wrong[0] = if wrong[0] == b'A' { b'B' } else { b'A' };
    world
        .register(
            agent.lock,
            "Back door",
            std::str::from_utf8(&wrong).unwrap(),
        )
        .await;
    agent.run();
    // The lock's key is bound to its id, so a code that is not the lock's never will be: the
    // registration closes at the lock's first handshake, and its owner is told.
    eventually("the registration to close", 20, || async {
        world
            .scalar::<String>(
                "SELECT state FROM lock_registrations WHERE lock_id = $1",
                &[&agent.lock],
            )
            .await
            == "code_mismatch"
    })
    .await;
    assert!(!paired(&world, agent.lock).await);
    let denied: i64 = world
        .scalar(
            "SELECT count(*) FROM audit_entries WHERE action = 'lock.pair' AND outcome = 'deny' AND subject_id = $1",
            &[&agent.lock],
        )
        .await;
    assert_eq!(denied, 1);
    let mailed: i64 = world
        .scalar(
            "SELECT count(*) FROM notification_outbox WHERE kind = 'lock.registration_closed'",
            &[],
        )
        .await;
    assert_eq!(mailed, 1);
    // The owner adds it again with the right code: it pairs at the agent's next connection.
    world.register(agent.lock, "Back door", &agent.code).await;
    eventually("pairing", 30, || paired(&world, agent.lock)).await;
}

#[tokio::test]
async fn a_push_through_replica_b_wakes_the_agent_on_replica_a() {
    let world = World::new().await;
    let a = world.replica(0).await;
    let b = world.replica(0).await;
    let mut agent = Agent::init(&world, a.local_addr().port(), &[]);
    world.register(agent.lock, "Front door", &agent.code).await;
    agent.run();
    eventually("pairing", 20, || paired(&world, agent.lock)).await;
    eventually("the session on A", 10, || async { a.registry().len() == 1 }).await;
    assert_eq!(b.registry().len(), 0);
    // Replica B's own pool commits the entry; only A's LISTEN can tell A's session.
    let b_pool = firstkey::store::pool(world.db_config.clone(), 2).unwrap();
    let started = Instant::now();
    let seq = world.push(&b_pool, agent.lock, 2).await;
    eventually("the ack", 10, || async {
        world.acked(agent.lock).await == seq
    })
    .await;
    // Woken by NOTIFY, not by a reconnect or a poll: well within the agent's 30 s keep-alive.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(agent.inbox_seq(), u64::try_from(seq).unwrap());
}

#[tokio::test]
async fn entries_pushed_while_the_agent_is_offline_arrive_on_reconnect() {
    let world = World::new().await;
    let replica = world.replica(0).await;
    let mut agent = Agent::init(&world, replica.local_addr().port(), &[]);
    world.register(agent.lock, "Front door", &agent.code).await;
    agent.run();
    eventually("pairing", 20, || paired(&world, agent.lock)).await;
    agent.kill();
    let first = world.push(&world.pool, agent.lock, 3).await;
    let second = world.push(&world.pool, agent.lock, 4).await;
    assert!(second > first);
    assert_eq!(world.acked(agent.lock).await, 0);
    agent.run();
    eventually("both acks", 20, || async {
        world.acked(agent.lock).await == second
    })
    .await;
    assert_eq!(agent.status()["revocations"].as_u64(), Some(2));
}

#[tokio::test]
async fn an_entry_committed_while_the_replica_is_dead_is_delivered_after_restart() {
    let world = World::new().await;
    let replica = world.replica(0).await;
    let port = replica.local_addr().port();
    let mut agent = Agent::init(&world, port, &[]);
    world.register(agent.lock, "Front door", &agent.code).await;
    agent.run();
    eventually("pairing", 20, || paired(&world, agent.lock)).await;
    eventually("the session", 10, || async {
        replica.registry().len() == 1
    })
    .await;
    // Killed: listener, sessions and LISTEN connection all gone; the commit happens after that.
    replica.stop();
    let seq = world.push(&world.pool, agent.lock, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.acked(agent.lock).await, 0);
    let restarted = world.replica(port).await;
    eventually("the ack after restart", 30, || async {
        world.acked(agent.lock).await == seq
    })
    .await;
    assert_eq!(restarted.registry().len(), 1);
}

#[tokio::test]
async fn a_lost_listen_connection_loses_no_wake_up() {
    let world = World::new().await;
    let replica = world.replica(0).await;
    let mut agent = Agent::init(&world, replica.local_addr().port(), &[]);
    world.register(agent.lock, "Front door", &agent.code).await;
    agent.run();
    eventually("pairing", 20, || paired(&world, agent.lock)).await;
    eventually("the session", 10, || async {
        replica.registry().len() == 1
    })
    .await;
    let db = world.db_config.get_dbname().unwrap().to_owned();
    // Cut the LISTEN connection (the only one of this database in LISTEN state) and push at once:
    // the notification may be lost, the wake-up after reconnecting is not.
    let cut: i64 = world
        .scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND query ILIKE 'LISTEN%'",
            &[&db],
        )
        .await;
    assert_eq!(cut, 1);
    let seq = world.push(&world.pool, agent.lock, 6).await;
    eventually("the ack", 20, || async {
        world.acked(agent.lock).await == seq
    })
    .await;
}

/// Issuer, responder key and token made with the agent's own demo commands; the server-side records
/// (incident, grant, issued token) inserted as token issuance would.
#[tokio::test]
async fn tap_receipts_are_uploaded_once_audited_and_mailed() {
    let world = World::new().await;
    let replica = world.replica(0).await;
    let issuer = world.dir.path().join("issuer");
    let out = agent_cli(&["demo", "issuer", "--dir", issuer.to_str().unwrap()]);
    let root = out
        .lines()
        .find_map(|l| l.strip_prefix("root public key:"))
        .unwrap()
        .trim()
        .to_owned();
    let bundle = issuer.join("bundle.cbor");
    let mut agent = Agent::init(
        &world,
        replica.local_addr().port(),
        &[
            "--root-public-key",
            &root,
            "--trust-bundle",
            bundle.to_str().unwrap(),
        ],
    );
    world.register(agent.lock, "Front door", &agent.code).await;
    let key = world.dir.path().join("responder.pk8");
    agent_cli(&["demo", "key", "--out", key.to_str().unwrap()]);
    let token = world.dir.path().join("token.cbor");
    agent_cli(&[
        "demo",
        "mint",
        "--dir",
        issuer.to_str().unwrap(),
        "--lock-id",
        &agent.lock.to_string(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        token.to_str().unwrap(),
    ]);
    let token_hash = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&token).unwrap())
        .as_ref()
        .to_vec();
    agent.run();
    eventually("pairing", 20, || paired(&world, agent.lock)).await;
    // Tokens are issued for paired locks only (the lock's row exists once it paired).
    let incident = record_issued_token(&world, agent.lock, &token_hash).await;
    let state = agent.state.clone();
    let tap = |expect: i32| {
        let out = Command::new(agent_bin())
            .args([
                "tap",
                "--state-dir",
                state.to_str().unwrap(),
                "--token",
                token.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(expect),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    tap(0); // allow
    tap(2); // deny: replayed
    let lock = agent.lock;
    let receipts = || async {
        world
            .scalar::<i64>("SELECT count(*) FROM receipts WHERE lock_id = $1", &[&lock])
            .await
    };
    eventually("two receipts", 20, || async { receipts().await == 2 }).await;
    eventually("the upload ack", 10, || async {
        agent.status()["uploaded_through"].as_u64() == Some(2)
    })
    .await;

    // Audited, allow and deny, with the incident joined through the token.
    let client = world.pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT outcome, incident_id, public_details FROM audit_entries
             WHERE action = 'lock.receipt' AND subject_id = $1 ORDER BY seq",
            &[&agent.lock],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let outcome: String = rows[0].get(0);
    assert_eq!(outcome, "allow");
    assert_eq!(rows[0].get::<_, Option<Uuid>>(1), Some(incident));
    let details: serde_json::Value = rows[0].get(2);
    assert_eq!(details["seq"], 1);
    assert_eq!(details["reason"], "ok");
    assert_eq!(details["cti"].as_str().unwrap().len(), 32);
    assert_eq!(rows[1].get::<_, String>(0), "deny");
    let details: serde_json::Value = rows[1].get(2);
    assert_eq!(details["reason"], "replayed");

    // The homeowner's door-opened mail.
    let mail = client
        .query(
            "SELECT recipient, body_text FROM notification_outbox WHERE kind = 'door.opened'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].get::<_, String>(0), "owner@example.org");
    let text: String = mail[0].get(1);
    assert!(
        text.starts_with("Front door opened by Engine 7 for incident 25-04711 at "),
        "{text}"
    );
    let status: String = client
        .query_one(
            "SELECT status FROM issued_tokens WHERE token_hash = $1",
            &[&token_hash],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "used");

    // Reconnecting uploads nothing twice: Welcome says the server holds both.
    agent.kill();
    agent.run();
    let socket = agent.state.join("tap.sock");
    eventually("the restarted agent's tap socket", 20, || async {
        tokio::net::UnixStream::connect(&socket).await.is_ok()
    })
    .await;
    tap(2);
    eventually("the third receipt", 20, || async { receipts().await == 3 }).await;
    let audited: i64 = world
        .scalar(
            "SELECT count(*) FROM audit_entries WHERE action = 'lock.receipt' AND subject_id = $1",
            &[&agent.lock],
        )
        .await;
    assert_eq!(audited, 3);
}

/// Inserts what token issuance records for `token_hash`: an incident, a live grant to a responder of
/// unit "Engine 7", and the issued token. Returns the incident.
async fn record_issued_token(world: &World, lock: Uuid, token_hash: &[u8]) -> Uuid {
    let client = world.pool.get().await.unwrap();
    let now = Utc::now();
    let agency = tenancy::ensure_agency(
        &client,
        world.tenant,
        AgencyKind::parse("fire").unwrap(),
        "Fire",
        now,
    )
    .await
    .unwrap();
    let responder = people::ensure_user(
        &client,
        world.tenant,
        &Email::parse("firefighter@example.org").unwrap(),
        "Pat Firefighter",
        Some(agency.id),
        &[Role::Responder],
        now,
    )
    .await
    .unwrap();
    let m = world.tenant.id();
    client
        .execute(
            "UPDATE users SET unit = 'Engine 7' WHERE id = $1",
            &[&responder.id],
        )
        .await
        .unwrap();
    let (incident, plan, grant) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    client
        .execute(
            "INSERT INTO incidents (id, municipality_id, agency_id, cad_number, kind, address, opened_at)
             VALUES ($1, $2, $3, '25-04711', 'fire', '1 Main St', $4)",
            &[&incident, &m, &agency.id, &now],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO access_plans (id, municipality_id, property_id, version, created_at, created_by, rules,
                 max_grant_minutes, retention_days)
             VALUES ($1, $2, $3, 1, $4, $5, '{}'::jsonb, 60, 30)",
            &[&plan, &m, &world.property, &now, &world.owner],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO grants (id, municipality_id, incident_id, property_id, plan_id, granted_by, justification,
                 status, policy_set_hash, created_at, starts_at, ends_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'smoke reported', 'live', $7, $8, $8, $8::timestamptz + interval '1 hour')",
            &[&grant, &m, &incident, &world.property, &plan, &world.owner, &vec![0u8; 32], &now],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO signing_keys (kid, municipality_id, public_key, created_at) VALUES ('k1', $1, $2, $3)",
            &[&m, &vec![1u8; 32], &now],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO issued_tokens (cti, municipality_id, grant_id, lock_id, responder_id, kid, token_hash,
                 issued_at, not_before, expires_at)
             VALUES ($1, $2, $3, $4, $5, 'k1', $6, $7, $7, $7::timestamptz + interval '10 minutes')",
            &[&vec![9u8; 16], &m, &grant, &lock, &responder.id, &token_hash, &now],
        )
        .await
        .unwrap();
    incident
}

/// The receipt store alone, with receipts signed here: idempotent re-upload, forks and gaps
/// refused, and the repeated-denials mail at the third denial within ten minutes.
#[tokio::test]
async fn receipt_batches_are_idempotent_and_forks_are_refused() {
    let world = World::new().await;
    let rng = ring::rand::SystemRandom::new();
    let pk8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(pk8.as_ref()).unwrap();
    let public: [u8; 32] = ring::signature::KeyPair::public_key(&key)
        .as_ref()
        .try_into()
        .unwrap();
    let id = Uuid::new_v4();
    let client = world.pool.get().await.unwrap();
    client
        .execute(
            "INSERT INTO locks (id, municipality_id, property_id, name, pairing_state, device_public_key, paired_at, created_at)
             VALUES ($1, $2, $3, 'Side door', 'paired', $4, now(), now())",
            &[&id, &world.tenant.id(), &world.property, &public.to_vec()],
        )
        .await
        .unwrap();
    drop(client);
    let lock = LockIdentity {
        id,
        wire_id: id.to_string(),
        tenant: world.tenant,
        property: world.property,
        name: "Side door".to_owned(),
        device_public_key: public,
    };
    let t0 = 1_750_000_000u64;
    let body = |time: u64, reason: &str| ReceiptBody {
        version: 1,
        lock_id: id.to_string(),
        seq: 0,
        time,
        prev: Bytes([0; 32]),
        outcome: TapOutcome::Deny,
        reason: reason.to_owned(),
        token_hash: None,
        token_id: None,
        expires_at: None,
        door_event: None,
    };
    let mut head = ChainHead::GENESIS;
    let mut chain = Vec::new();
    for i in 0..4u64 {
        let r = sign_next(&key, head, body(t0 + i * 60, "expired")).unwrap();
        head = ChainHead {
            seq: r.body.seq,
            hash: r.hash,
        };
        chain.push(r);
    }
    let enc = |rs: &[firstkey_agent::receipt::VerifiedReceipt]| -> Vec<Vec<u8>> {
        rs.iter().map(|r| r.encoded.clone()).collect()
    };
    let now = Utc::now();
    let store = |batch: Vec<Vec<u8>>| {
        let (pool, lock) = (world.pool.clone(), lock.clone());
        async move {
            receipts::store_batch(&pool, &lock, &batch, now)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        store(enc(&chain[..2])).await,
        BatchOutcome::Stored { through: 2 }
    );
    // A lost ack: the same receipts again, plus the next ones.
    assert_eq!(
        store(enc(&chain[..4])).await,
        BatchOutcome::Stored { through: 4 }
    );
    assert_eq!(
        store(enc(&chain[1..3])).await,
        BatchOutcome::Stored { through: 4 }
    );
    let count: i64 = world
        .scalar("SELECT count(*) FROM receipts WHERE lock_id = $1", &[&id])
        .await;
    assert_eq!(count, 4);
    // Three denials within ten minutes make one mail (at the third), four do not make two.
    let denial_mails: i64 = world
        .scalar(
            "SELECT count(*) FROM notification_outbox WHERE kind = 'door.denials'",
            &[],
        )
        .await;
    assert_eq!(denial_mails, 1);

    // A different receipt at seq 2 is a fork; a receipt after a gap breaks the chain.
    let fork = sign_next(
        &key,
        ChainHead {
            seq: 1,
            hash: chain[0].hash,
        },
        body(t0 + 5, "revoked"),
    )
    .unwrap();
    assert!(matches!(
        store(vec![fork.encoded]).await,
        BatchOutcome::Rejected {
            reason: "fork",
            seq: Some(2)
        }
    ));
    let gap = sign_next(
        &key,
        ChainHead {
            seq: 9,
            hash: [1; 32],
        },
        body(t0, "expired"),
    )
    .unwrap();
    assert!(matches!(
        store(vec![gap.encoded]).await,
        BatchOutcome::Rejected {
            reason: "broken_chain",
            ..
        }
    ));
    // Signed by another key.
    let other = ring::signature::Ed25519KeyPair::from_pkcs8(
        ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let forged = sign_next(&other, head, body(t0, "expired")).unwrap();
    assert!(matches!(
        store(vec![forged.encoded]).await,
        BatchOutcome::Rejected {
            reason: "bad_signature",
            ..
        }
    ));
    let count: i64 = world
        .scalar("SELECT count(*) FROM receipts WHERE lock_id = $1", &[&id])
        .await;
    assert_eq!(count, 4);
    let audited: i64 = world
        .scalar(
            "SELECT count(*) FROM audit_entries WHERE action = 'lock.receipt' AND subject_id = $1",
            &[&id],
        )
        .await;
    assert_eq!(audited, 4);
}

/// Benchmark figures at test scale (`cargo test --test api channel::bench -- --ignored
/// --nocapture`); `firstkey bench` runs the same hooks at full scale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn bench_push_latency_and_idle_memory() {
    use firstkey::channel::bench::{self, Fleet};
    let agents: usize = std::env::var("FIRSTKEY_TEST_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let world = World::new().await;
    let replica = world.replica(0).await;
    let ca = std::fs::read(world.key_dir().join(firstkey::channel::tls::DEV_CA_FILE)).unwrap();
    let target =
        firstkey::channel::sim::SimTarget::new(replica.local_addr(), "localhost", &ca).unwrap();
    let clock = SystemClock;
    let (memory, mut fleet) = bench::idle_memory(
        &world.pool,
        world.tenant,
        world.property,
        &target,
        agents,
        &clock,
    )
    .await
    .unwrap();
    println!(
        "idle agents: {} connected, RSS {} -> {} KiB, {} bytes per agent (client and server ends)",
        memory.agents,
        memory.rss_before / 1024,
        memory.rss_after / 1024,
        memory.per_agent()
    );
    let latency = bench::push_latency(&world.pool, world.tenant, &mut fleet, 1000, &clock)
        .await
        .unwrap();
    println!(
        "push latency over {} pushes with {} agents: p50 {:?}, p99 {:?}, max {:?}",
        latency.samples,
        fleet.connected(),
        latency.p50,
        latency.p99,
        latency.max
    );
    let _: &Fleet = &fleet;
}

/// A `firstkey serve` process on the world's database and key directory, agent channel on `port`.
fn serve_process(world: &World, port: u16) -> Child {
    let host = match world.db_config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let url = format!(
        "host={host} port={} user={} dbname={}",
        world.db_config.get_ports().first().copied().unwrap_or(5432),
        world.db_config.get_user().unwrap_or("postgres"),
        world.db_config.get_dbname().unwrap()
    );
    Command::new(env!("CARGO_BIN_EXE_firstkey"))
        .arg("serve")
        .env("FIRSTKEY_DATABASE_URL", url)
        .env("FIRSTKEY_LISTEN", "127.0.0.1:0")
        .env("FIRSTKEY_AGENT_LISTEN", format!("127.0.0.1:{port}"))
        .env("FIRSTKEY_KEY_DIR", world.key_dir())
        .env(
            "FIRSTKEY_DATA_KEY",
            "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=",
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_server_killed_with_sigkill_after_the_commit_delivers_the_entry_after_restart() {
    let world = World::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = serve_process(&world, port);
    let ca = world.key_dir().join(firstkey::channel::tls::DEV_CA_FILE);
    eventually("the server's dev CA", 30, || async { ca.is_file() }).await;
    let mut agent = Agent::init(&world, port, &[]);
    world.register(agent.lock, "Front door", &agent.code).await;
    agent.run();
    eventually("pairing through the server process", 30, || {
        paired(&world, agent.lock)
    })
    .await;
    // Pairing queues the lock's keypad code secret; let it arrive first, so that what is acked
    // before the kill is settled.
    eventually("the entries queued at pairing", 30, || async {
        let queued: Option<i64> = world
            .scalar(
                "SELECT max(seq) FROM lock_inbox WHERE lock_id = $1",
                &[&agent.lock],
            )
            .await;
        world.acked(agent.lock).await == queued.unwrap_or(0)
    })
    .await;
    let before = world.acked(agent.lock).await;

    // SIGKILL: no shutdown path runs. Then an entry commits (as a grant's token would) with no
    // server alive to push it.
    server.kill().unwrap();
    server.wait().unwrap();
    let seq = world.push(&world.pool, agent.lock, 9).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        world.acked(agent.lock).await,
        before,
        "nobody could have delivered it"
    );

    let mut restarted = serve_process(&world, port);
    eventually("delivery after the restart", 60, || async {
        world.acked(agent.lock).await == seq
    })
    .await;
    let _ = restarted.kill();
    let _ = restarted.wait();
}

// ---------------------------------------------------------------------------------------------
// before authentication, and the LISTEN connection

/// A TLS connection to `replica` that has read the server's `Challenge`.
async fn tls_to(
    replica: &RunningChannel,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use firstkey_agent::protocol::channel::{
        MAX_CHANNEL_FRAME, ServerMessage, decode_server_message,
    };
    let ca = replica.identity().ca_pem().unwrap().as_bytes().to_vec();
    let tls = firstkey_agent::client::tls_config(&ca).unwrap();
    let tcp = tokio::net::TcpStream::connect(replica.local_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost".to_owned()).unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let first = firstkey_agent::protocol::read_frame(&mut stream, MAX_CHANNEL_FRAME)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        decode_server_message(&first).unwrap(),
        ServerMessage::Challenge { .. }
    ));
    stream
}

/// Whether the server closes `stream` (end of stream, or an error) before anything else arrives,
/// waiting at most `secs` seconds.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, secs: u64) -> bool {
    use firstkey_agent::protocol::channel::{ErrorCode, ServerMessage, decode_server_message};
    let read = tokio::time::timeout(
        Duration::from_secs(secs),
        firstkey_agent::protocol::read_frame(stream, 1 << 20),
    )
    .await;
    match read {
        Err(_) => false,
        Ok(Ok(None)) | Ok(Err(_)) => true,
        Ok(Ok(Some(frame))) => matches!(
            decode_server_message(&frame),
            Ok(ServerMessage::Error {
                code: ErrorCode::Malformed
            })
        ),
    }
}

#[tokio::test]
async fn a_peer_declaring_a_256_kib_frame_before_hello_is_dropped() {
    use tokio::io::AsyncWriteExt;
    let world = World::new().await;
    // A long handshake timeout: the drop must come from the cap, not from the timer.
    let replica = world
        .replica_with(
            ChannelOptions {
                handshake_timeout: Duration::from_secs(120),
                ..ChannelOptions::default()
            },
            world.db_config.clone(),
        )
        .await;
    let mut stream = tls_to(&replica).await;
    let declared = u32::try_from(256 * 1024).unwrap();
    stream.write_all(&declared.to_be_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    assert!(
        closed_by_server(&mut stream, 30).await,
        "the server waited for a 256 KiB payload from a peer that has proved nothing"
    );
}

#[tokio::test]
async fn unauthenticated_connections_are_capped_per_address_and_overall() {
    let world = World::new().await;
    for (max, per_address) in [(100, 2), (2, 100)] {
        let replica = world
            .replica_with(
                ChannelOptions {
                    handshake_timeout: Duration::from_secs(120),
                    max_unauthenticated: max,
                    max_unauthenticated_per_address: per_address,
                    ..ChannelOptions::default()
                },
                world.db_config.clone(),
            )
            .await;
        // Two peers that never start TLS hold both places.
        let first = tokio::net::TcpStream::connect(replica.local_addr())
            .await
            .unwrap();
        let _second = tokio::net::TcpStream::connect(replica.local_addr())
            .await
            .unwrap();
        // The next one is closed at once (it would otherwise wait out the handshake timeout).
        eventually("the third connection to be refused", 30, || async {
            let mut third = tokio::net::TcpStream::connect(replica.local_addr())
                .await
                .unwrap();
            closed_by_server(&mut third, 2).await
        })
        .await;
        // A place frees when a stalled peer goes: a real agent handshake gets its Challenge.
        drop(first);
        eventually("a freed place", 30, || async {
            let ca = replica.identity().ca_pem().unwrap().as_bytes().to_vec();
            let tls = firstkey_agent::client::tls_config(&ca).unwrap();
            let tcp = tokio::net::TcpStream::connect(replica.local_addr())
                .await
                .unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost".to_owned()).unwrap();
            tokio::time::timeout(
                Duration::from_secs(2),
                tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
            )
            .await
            .is_ok_and(|r| r.is_ok())
        })
        .await;
    }
}

#[tokio::test]
async fn the_listen_connection_comes_back_promptly_after_a_second_outage() {
    let world = World::new().await;
    let upstream = std::net::SocketAddr::from((
        [127, 0, 0, 1],
        world.db_config.get_ports().first().copied().unwrap_or(5432),
    ));
    let proxy = crate::helpers::PgProxy::start(upstream).await;
    let mut listen_config = tokio_postgres::Config::new();
    listen_config
        .host("127.0.0.1")
        .port(proxy.port())
        .user(world.db_config.get_user().unwrap_or("postgres"))
        .dbname(world.db_config.get_dbname().unwrap());
    let db = world.db_config.get_dbname().unwrap().to_owned();
    let _replica = world
        .replica_with(ChannelOptions::default(), listen_config)
        .await;
    let listening_since = |since: chrono::DateTime<Utc>| {
        let world = &world;
        let db = db.clone();
        async move {
            let n: i64 = world
                .scalar(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = $1 AND query ILIKE 'LISTEN%' AND backend_start > $2",
                    &[&db, &since],
                )
                .await;
            n > 0
        }
    };
    // First outage, long enough for the reconnect delay to reach its cap (100 ms doubling to
    // 5 s: seven failed attempts take about 6 s).
    proxy.take_down().await;
    let before = proxy.attempts();
    eventually("seven failed reconnects", 60, || async {
        proxy.attempts() >= before + 7
    })
    .await;
    let back = Utc::now();
    proxy.bring_up();
    eventually("LISTEN after the first outage", 30, || {
        listening_since(back)
    })
    .await;
    // Second outage: the delays start from 100 ms again, so three attempts come within about a
    // second (with the old, unreset backoff they were 5 s apart).
    proxy.take_down().await;
    let before = proxy.attempts();
    eventually("three prompt reconnect attempts", 8, || async {
        proxy.attempts() >= before + 3
    })
    .await;
    let back = Utc::now();
    proxy.bring_up();
    eventually("LISTEN after the second outage", 30, || {
        listening_since(back)
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// lock ids are bound to device keys (issue 8, item 13(b))

/// A handshake as lock `id` holding `key`: the server's answer to our signed `Hello`.
pub(crate) async fn hello_as(
    replica: &RunningChannel,
    id: &str,
    key: &ring::signature::Ed25519KeyPair,
) -> firstkey_agent::protocol::channel::ServerMessage {
    use firstkey_agent::protocol::channel::{
        AgentMessage, MAX_CHANNEL_FRAME, ServerMessage, auth_signed_bytes, decode_server_message,
        encode_agent_message,
    };
    use ring::signature::KeyPair;
    let ca = replica.identity().ca_pem().unwrap().as_bytes().to_vec();
    let tls = firstkey_agent::client::tls_config(&ca).unwrap();
    let tcp = tokio::net::TcpStream::connect(replica.local_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost".to_owned()).unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let read = |frame: Vec<u8>| decode_server_message(&frame).unwrap();
    let first = firstkey_agent::protocol::read_frame(&mut stream, MAX_CHANNEL_FRAME)
        .await
        .unwrap()
        .unwrap();
    let ServerMessage::Challenge { nonce, .. } = read(first) else {
        panic!("no challenge")
    };
    let signature = key.sign(&auth_signed_bytes(&nonce.0, id, "localhost"));
    let mut public = [0u8; 32];
    public.copy_from_slice(key.public_key().as_ref());
    let hello = AgentMessage::Hello {
        version: firstkey_agent::protocol::PROTOCOL_VERSION,
        lock_id: id.to_owned(),
        device_public_key: Bytes(public),
        resume_after: 0,
        signature: signature.as_ref().to_vec(),
    };
    firstkey_agent::protocol::write_frame(
        &mut stream,
        &encode_agent_message(&hello).unwrap(),
        MAX_CHANNEL_FRAME,
    )
    .await
    .unwrap();
    let answer = firstkey_agent::protocol::read_frame(&mut stream, MAX_CHANNEL_FRAME)
        .await
        .unwrap()
        .unwrap();
    read(answer)
}

pub(crate) fn new_device_key() -> ring::signature::Ed25519KeyPair {
    let rng = ring::rand::SystemRandom::new();
    let pk8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    ring::signature::Ed25519KeyPair::from_pkcs8(pk8.as_ref()).unwrap()
}

pub(crate) fn code_for(key: &ring::signature::Ed25519KeyPair, id: &str) -> String {
    use ring::signature::KeyPair;
    firstkey_agent::pairing::PairingCode::derive(key.public_key().as_ref(), id).display()
}

#[tokio::test]
async fn nobody_pairs_their_own_key_under_another_locks_id_in_any_municipality() {
    use firstkey_agent::protocol::channel::{ErrorCode, ServerMessage};
    use ring::signature::KeyPair;
    let world = World::new().await;
    let replica = world.replica(0).await;
    let refused = |m: &ServerMessage| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::AuthenticationFailed
            }
        )
    };
    // Another municipality with its own homeowner and property: the squatter.
    let client = world.pool.get().await.unwrap();
    let now = Utc::now();
    let (other, _) = tenancy::ensure_municipality(
        &client,
        &Slug::parse("squat-town").unwrap(),
        "Squat Town",
        now,
    )
    .await
    .unwrap();
    let squatter = people::ensure_user(
        &client,
        other,
        &Email::parse("squatter@example.org").unwrap(),
        "Squatter",
        None,
        &[Role::Homeowner],
        now,
    )
    .await
    .unwrap();
    let squat_home = properties::create_property(&client, other, squatter.id, "9 Side St", now)
        .await
        .unwrap();
    let owner = world.owner;
    let register = |tenant: Tenant, property: Uuid, by: Uuid, id: Uuid, code: String| {
        let client = &client;
        async move {
            firstkey::pairing::register(
                client,
                tenant,
                property,
                by,
                id,
                &format!("Door {}", &id.to_string()[..8]),
                &firstkey::pairing::normalise(&code).unwrap(),
                Utc::now(),
            )
            .await
        }
    };

    // The genuine lock: its id is derived from its key; the homeowner registers it.
    let genuine = new_device_key();
    let id_text = firstkey_agent::pairing::derived_lock_id(genuine.public_key().as_ref());
    let id = Uuid::parse_str(&id_text).unwrap();
    register(
        world.tenant,
        world.property,
        owner,
        id,
        code_for(&genuine, &id_text),
    )
    .await
    .unwrap();

    // A squatter who learnt the id registers it too, in another municipality and on another
    // property of the same one, with a code of their own key: accepted (a registration reserves
    // nothing), and changes nothing for the genuine one.
    let own = new_device_key();
    let own_code = code_for(&own, &id_text);
    register(other, squat_home.id, squatter.id, id, own_code.clone())
        .await
        .unwrap();
    let second = properties::create_property(&client, world.tenant, world.owner, "2 Main St", now)
        .await
        .unwrap();
    register(world.tenant, second.id, owner, id, own_code)
        .await
        .unwrap();

    // Their own key under the genuine id: refused without touching any registration of it,
    // however often they try.
    for _ in 0..12 {
        assert!(refused(&hello_as(&replica, &id_text, &own).await));
    }
    assert!(!paired(&world, id).await);
    let waiting: i64 = world
        .scalar(
            "SELECT count(*) FROM lock_registrations WHERE lock_id = $1 AND state = 'pending'",
            &[&id],
        )
        .await;
    assert_eq!(waiting, 3);

    // A lock registered under an id its key does not derive (a squat prepared with the
    // squatter's own code for that id) never pairs either.
    let squat_id = Uuid::new_v4();
    register(
        other,
        squat_home.id,
        squatter.id,
        squat_id,
        code_for(&own, &squat_id.to_string()),
    )
    .await
    .unwrap();
    assert!(refused(
        &hello_as(&replica, &squat_id.to_string(), &own).await
    ));
    assert!(!paired(&world, squat_id).await);

    // The genuine lock pairs at once, with its own key, in its own municipality.
    assert!(matches!(
        hello_as(&replica, &id_text, &genuine).await,
        ServerMessage::Welcome { .. }
    ));
    assert!(paired(&world, id).await);
    let (municipality, key): (Uuid, Vec<u8>) = {
        let row = client
            .query_one(
                "SELECT municipality_id, device_public_key FROM locks WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(municipality, world.tenant.id());
    assert_eq!(key, genuine.public_key().as_ref());
    // The squatter's registrations of the id are closed: the lock paired elsewhere.
    let states: Vec<String> = client
        .query(
            "SELECT state FROM lock_registrations WHERE lock_id = $1 ORDER BY created_at",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(states, ["paired", "paired_elsewhere", "paired_elsewhere"]);
    // Now paired, the squatter's key is refused as before.
    assert!(refused(&hello_as(&replica, &id_text, &own).await));
}

/// Keypad codes across real processes (issue 11 §2): the code secret reaches a paired agent over
/// the channel (derived from the data key, never stored); with the channel killed the agent's
/// keypad opens once for the code and refuses it again; when the channel returns, the keypad
/// receipts are uploaded and audited, joined to the incident the code was issued for.
#[tokio::test]
async fn a_keypad_code_works_with_the_channel_killed_and_its_receipts_join_the_incident() {
    use firstkey_agent::keypad;
    let world = World::new().await;
    let root = firstkey::codes::SecretRoot::derive(&firstkey::crypto::Kek::from_bytes([9; 32]));
    let options = || ChannelOptions {
        keypad_root: Some(root.clone()),
        ..ChannelOptions::default()
    };
    let replica = world.replica_with(options(), world.db_config.clone()).await;
    let port = replica.local_addr().port();
    let mut agent = Agent::init(&world, port, &[]);
    world.register(agent.lock, "Front door", &agent.code).await;
    agent.run();
    eventually("pairing", 20, || paired(&world, agent.lock)).await;
    eventually("the keypad secret at the lock", 20, || async {
        agent.status()["keypad_secret"] == serde_json::json!(true)
    })
    .await;
    // The inbox holds the generation only, never the secret.
    let payload: Vec<u8> = world
        .scalar(
            "SELECT payload FROM lock_inbox WHERE lock_id = $1 AND kind = 'keypad_secret'",
            &[&agent.lock],
        )
        .await;
    assert_eq!(payload, 1i32.to_be_bytes());
    let secret = root.lock_secret(agent.lock, 1);
    let on_disk = std::fs::read(agent.state.join("keypad.key")).unwrap();
    assert_eq!(on_disk, secret.0);

    // An incident and a code for it, as the dispatcher's request records it.
    let client = world.pool.get().await.unwrap();
    let now = Utc::now();
    let agency = tenancy::ensure_agency(&client, world.tenant, AgencyKind::Fire, "Fire", now)
        .await
        .unwrap()
        .id;
    let incident = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO incidents (id, municipality_id, agency_id, cad_number, kind, address, opened_at)
             VALUES ($1, $2, $3, '26-0001', 'fire', '1 Main St', $4)",
            &[&incident, &world.tenant.id(), &agency, &now],
        )
        .await
        .unwrap();
    let now_s = u64::try_from(now.timestamp()).unwrap();
    let window = keypad::incident_window(now_s, now_s + 1800).unwrap();
    let lock_wire = agent.lock.to_string();
    let (code, spec) = keypad::incident_code(&secret, &lock_wire, window, 0).unwrap();
    let record = Uuid::new_v4();
    let at = |s: u64| chrono::DateTime::from_timestamp(i64::try_from(s).unwrap(), 0).unwrap();
    client
        .execute(
            "INSERT INTO keypad_codes (id, municipality_id, lock_id, kind, code_id, secret_generation,
                 grant_id, incident_id, slot_index, not_before, not_after, issued_by, issued_at)
             VALUES ($1, $2, $3, 'incident', $4, 1, $5, $6, 0, $7, $8, $9, $10)",
            &[
                &record,
                &world.tenant.id(),
                &agent.lock,
                &keypad::code_id(&secret, &lock_wire, &spec).to_vec(),
                &Uuid::new_v4(),
                &incident,
                &at(window.0),
                &at(window.1),
                &world.owner,
                &now,
            ],
        )
        .await
        .unwrap();
    drop(client);

    // The channel is killed: the replica is gone (its aborted tasks, the listener among them, are
    // dropped once this runtime runs again).
    replica.stop();
    tokio::task::yield_now().await;
    let keypad_cli = |code: &str| {
        Command::new(agent_bin())
            .args(["keypad", "--code", code, "--state-dir"])
            .arg(&agent.state)
            .output()
            .unwrap()
    };
    let first = keypad_cli(&code.display());
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    assert_eq!(
        keypad_cli(&code.digits()).status.code(),
        Some(2),
        "replayed"
    );
    assert_eq!(
        keypad_cli("123 456 789 012 345").status.code(),
        Some(2),
        "a wrong code"
    );
    assert_eq!(agent.status()["receipt_seq"].as_u64(), Some(3));

    // The channel returns (on the same port): the receipts are uploaded and audited.
    // A listener on the same port, as a restarted replica: the agent reconnects to it.
    let identity = ServerIdentity::dev(
        &world.key_dir(),
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
    )
    .unwrap();
    let mut again = None;
    for _ in 0..50 {
        match start_with(
            ([127, 0, 0, 1], port).into(),
            identity.clone(),
            firstkey::store::pool(world.db_config.clone(), 4).unwrap(),
            world.db_config.clone(),
            Arc::new(SystemClock),
            options(),
        )
        .await
        {
            Ok(r) => {
                again = Some(r);
                break;
            }
            // The old listener's socket may still be closing.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let again = again.expect("the port is free again");
    eventually("three keypad receipts stored", 60, || async {
        world
            .scalar::<i64>(
                "SELECT count(*) FROM receipts WHERE lock_id = $1",
                &[&agent.lock],
            )
            .await
            == 3
    })
    .await;
    let reasons: Vec<String> = {
        let client = world.pool.get().await.unwrap();
        client
            .query(
                "SELECT reason FROM receipts WHERE lock_id = $1 ORDER BY seq",
                &[&agent.lock],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(reasons, ["keypad_ok", "keypad_replayed", "keypad_invalid"]);
    // Both decisions on the code are audited with its incident and record; the wrong one with none.
    let joined: i64 = world
        .scalar(
            "SELECT count(*) FROM audit_entries WHERE action = 'lock.receipt' AND subject_id = $1
               AND incident_id = $2 AND public_details->>'keypad_code' = $3",
            &[&agent.lock, &incident, &record.to_string()],
        )
        .await;
    assert_eq!(joined, 2);
    // The homeowner is told how the door was opened; no mail, row or entry holds the digits.
    let client = world.pool.get().await.unwrap();
    let texts: Vec<String> = client
        .query(
            "SELECT body_text FROM notification_outbox WHERE kind = 'door.opened'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("keypad code issued for incident 26-0001")),
        "{texts:?}"
    );
    let digits = code.digits();
    let leaks: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM audit_entries WHERE public_details::text LIKE '%' || $1 || '%')
                  + (SELECT count(*) FROM notification_outbox WHERE body_text LIKE '%' || $1 || '%')",
            &[&&digits[4..]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaks, 0);
    again.stop();
}

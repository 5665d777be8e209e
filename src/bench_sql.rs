//! `firstkey bench`: how many SQL statements, round trips and commits a token issuance costs,
//! counted on the wire. A loopback proxy between a second server instance and PostgreSQL reads the
//! frontend messages of the PostgreSQL protocol (v3) that pass through it: every simple `Query`
//! (`BEGIN`, `COMMIT` and `batch_execute` text among them) and every `Execute` of an extended-protocol
//! statement is a statement; every `Query` and every `Sync` waits for the server's `ReadyForQuery`,
//! so is a round trip (tokio-postgres prepares an unnamed statement in one round trip and binds and
//! executes it in a second); a `Query` whose text is `COMMIT` is a commit. No server setting
//! (`log_statement`, `pg_stat_statements`) is needed.
//!
//! The counting server runs without its background tasks (the audit sealer would add its passes
//! every 50 ms); each request is counted on its own, many times, and the smallest count is taken.

// Indexing a `serde_json::Value` by key yields `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Counts {
    statements: AtomicU64,
    round_trips: AtomicU64,
    commits: AtomicU64,
}

/// What passed through the proxy so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tally {
    /// Statements executed.
    pub statements: u64,
    /// Round trips (each waits for `ReadyForQuery`).
    pub round_trips: u64,
    /// Commits.
    pub commits: u64,
}

impl std::ops::Sub for Tally {
    type Output = Tally;
    fn sub(self, earlier: Tally) -> Tally {
        Tally {
            statements: self.statements.saturating_sub(earlier.statements),
            round_trips: self.round_trips.saturating_sub(earlier.round_trips),
            commits: self.commits.saturating_sub(earlier.commits),
        }
    }
}

impl std::ops::Add for Tally {
    type Output = Tally;
    fn add(self, other: Tally) -> Tally {
        Tally {
            statements: self.statements + other.statements,
            round_trips: self.round_trips + other.round_trips,
            commits: self.commits + other.commits,
        }
    }
}

/// A counting proxy in front of one PostgreSQL server; it runs until the process ends.
pub struct SqlCounter {
    addr: SocketAddr,
    counts: Arc<Counts>,
}

impl SqlCounter {
    /// Listens on a loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counts = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = pipe(client, server, counts).await;
                    }
                });
            }
        });
        Ok(Self { addr, counts })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counts so far.
    pub fn tally(&self) -> Tally {
        Tally {
            statements: self.counts.statements.load(Ordering::SeqCst),
            round_trips: self.counts.round_trips.load(Ordering::SeqCst),
            commits: self.counts.commits.load(Ordering::SeqCst),
        }
    }
}

async fn pipe(client: TcpStream, server: TcpStream, counts: Arc<Counts>) -> std::io::Result<()> {
    let (mut from_client, mut to_server) = (client, server);
    let (mut server_read, mut server_write) = to_server.split();
    let (mut client_read, mut client_write) = from_client.split();
    let upstream = async {
        // The startup message has no type byte: a length, then the rest.
        let mut len = [0u8; 4];
        client_read.read_exact(&mut len).await?;
        let mut rest = vec![
            0u8;
            usize::try_from(u32::from_be_bytes(len))
                .unwrap_or(4)
                .saturating_sub(4)
        ];
        client_read.read_exact(&mut rest).await?;
        server_write.write_all(&len).await?;
        server_write.write_all(&rest).await?;
        loop {
            let mut head = [0u8; 5];
            if client_read.read_exact(&mut head).await.is_err() {
                break;
            }
            let [tag, a, b, c, d] = head;
            let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(4);
            let mut body = vec![0u8; len.saturating_sub(4)];
            client_read.read_exact(&mut body).await?;
            match tag {
                b'Q' => {
                    counts.statements.fetch_add(1, Ordering::SeqCst);
                    counts.round_trips.fetch_add(1, Ordering::SeqCst);
                    if body
                        .get(..6)
                        .is_some_and(|t| t.eq_ignore_ascii_case(b"COMMIT"))
                    {
                        counts.commits.fetch_add(1, Ordering::SeqCst);
                    }
                }
                b'E' => {
                    counts.statements.fetch_add(1, Ordering::SeqCst);
                }
                b'S' => {
                    counts.round_trips.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
            server_write.write_all(&head).await?;
            server_write.write_all(&body).await?;
        }
        server_write.shutdown().await
    };
    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
    let (up, down) = tokio::join!(upstream, downstream);
    up?;
    down.map(|_| ())
}

/// Requests of each kind counted (the smallest count of each is printed).
const SAMPLES: usize = 15;

/// Counts the SQL of one issuance, both ways (one request; step-up + token request), on a second
/// server instance whose pool goes through a [`SqlCounter`]; prints the figures.
pub(crate) async fn count_issuance(
    settings: &crate::settings::Settings,
    db: &tokio_postgres::Config,
    responders: &mut [crate::bench::Staff],
    grant: &str,
    locks: &[uuid::Uuid],
    clock: Arc<dyn crate::clock::Clock>,
) -> anyhow::Result<()> {
    use anyhow::anyhow;
    use serde_json::json;
    let host = match db.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => return Err(anyhow!("the database is not reached over TCP")),
    };
    let port = db.get_ports().first().copied().unwrap_or(5432);
    let upstream = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| anyhow!("{host} does not resolve"))?;
    let counter = SqlCounter::start(upstream).await?;
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(counter.addr().port())
        .user(db.get_user().unwrap_or("postgres"))
        .dbname(db.get_dbname().unwrap_or("postgres"));
    if let Some(password) = db.get_password() {
        config.password(password);
    }
    let pool = crate::store::pool(config, 4)?;
    let mut own = settings.clone();
    own.listen = ([127, 0, 0, 1], 0).into();
    // The bench's own server keeps sealing the log; this one only answers requests.
    let app = crate::http::Application::build(own, pool.clone(), clock)?.without_background_tasks();
    let base = format!("http://{}", app.local_addr());
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let client = crate::demo::client::ApiClient::new(&base, settings.public_origin.as_str())?;
    let r = responders
        .first_mut()
        .ok_or_else(|| anyhow!("no responders"))?;
    let mut least = [None::<Tally>; 5];
    let mut keep = |i: usize, t: Tally| {
        if let Some(slot) = least.get_mut(i) {
            *slot = Some(slot.map_or(t, |old: Tally| old.min(t)));
        }
    };
    let counted = async {
        // One of each first: pool connections open, statements are cached.
        for i in 0..=SAMPLES {
            let lock = locks
                .get(i % locks.len().max(1))
                .ok_or_else(|| anyhow!("no locks"))?
                .to_string();
            let t = counter.tally();
            let start = client
                .post("/api/v1/auth/step-up/start", &json!({}), Some(&r.cookie))
                .await?;
            let a = counter.tally();
            let credential = r.key.assert(&start["options"])?;
            let b0 = counter.tally();
            client
                .post(
                    "/api/v1/auth/step-up/finish",
                    &json!({ "ceremony": start["ceremony"], "credential": credential }),
                    Some(&r.cookie),
                )
                .await?;
            let b = counter.tally();
            client
                .post(
                    "/api/v1/tokens",
                    &json!({ "grant": grant, "lock": lock }),
                    Some(&r.cookie),
                )
                .await?;
            let c = counter.tally();
            let challenge = client
                .get(
                    &format!("/api/v1/tokens/challenge?grant={grant}&lock={lock}"),
                    Some(&r.cookie),
                )
                .await?;
            let d = counter.tally();
            let assertion = r.key.assert(&challenge["options"])?;
            let e0 = counter.tally();
            client
                .post(
                    "/api/v1/tokens",
                    &json!({ "grant": grant, "lock": lock, "assertion": assertion }),
                    Some(&r.cookie),
                )
                .await?;
            let e = counter.tally();
            if i > 0 {
                keep(0, a - t);
                keep(1, b - b0);
                keep(2, c - b);
                keep(3, d - c);
                keep(4, e - e0);
            }
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    handle.stop(true).await;
    let _ = server.await;
    pool.close();
    counted?;
    let [
        Some(start),
        Some(finish),
        Some(old_token),
        Some(get),
        Some(new_token),
    ] = least
    else {
        return Err(anyhow!("nothing counted"));
    };
    let show = |t: Tally| {
        format!(
            "{} statements, {} round trips, {} commits",
            t.statements, t.round_trips, t.commits
        )
    };
    println!(
        "    SQL per issuance, counted on the wire (least of {SAMPLES} samples per request; session lookup included):"
    );
    println!("      one request:  challenge GET {}", show(get));
    println!("                    token request {}", show(new_token));
    println!(
        "                    total         {}",
        show(get + new_token)
    );
    println!("      before:       step-up start {}", show(start));
    println!("                    step-up finish {}", show(finish));
    println!("                    token request {}", show(old_token));
    println!(
        "                    total         {}",
        show(start + finish + old_token)
    );
    Ok(())
}

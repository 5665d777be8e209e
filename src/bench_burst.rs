//! `firstkey bench --burst`: the disaster burst (issue 14, item 4), measured on loopback against a
//! scratch database (created, migrated, dropped).
//!
//! Three server replicas — real `firstkey serve` processes of this binary — share one PostgreSQL.
//! N simulated agents (real TLS channels, [`crate::channel::sim`]) are connected round-robin
//! across them, then `grants` grants (one per home, each naming one of `clients` responders) are
//! made by a dispatcher, and within `seconds` the responders ask for one token per grant, each at
//! its scheduled instant (evenly spread over the window: an open load, not a closed loop), each
//! client talking to one replica. Reported, each with its target and a baseline measured in the
//! same run:
//!
//! - token latency p50/p99, from the scheduled instant to the answer (one token =
//!   [`request_token`]), against the raw single-INSERT transaction rate at the same concurrency;
//! - push latency p99, from the responder's answer to the agent receiving the token (the agent
//!   acknowledges at once), against inbox commit → agent ack alone across the replicas;
//! - proof of delivery: tokens that reached their lock (counted at the agents) and tokens the
//!   replicas recorded as acknowledged (`issued_tokens.status = 'delivered'`);
//! - memory per idle agent connection: growth of the replicas' resident memory (their own
//!   processes: server side only) over the agents connected, at N and at the most agents the
//!   open-file limit lets this process hold (the soft limit raised to the hard one first).
//!
//! Nothing is asserted; a failed step ends the run with an error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use deadpool_postgres::Pool;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::bench::{Staff, connection_string};
use crate::channel::bench::{self as channel_bench, Fleet};
use crate::channel::sim::{self, SimTarget};
use crate::clock::{Clock, SystemClock};
use crate::demo::client::ApiClient;
use crate::settings::Settings;
use crate::store::{self, StoreError};

/// Database connections of this process's pool and of each replica's: small, so three replicas
/// and the bench stay well inside PostgreSQL's default 100 connections on a shared server.
const BENCH_POOL: usize = 8;

/// What the burst does.
#[derive(Debug, Clone, Copy)]
pub struct BurstOptions {
    /// Server replicas (processes).
    pub replicas: usize,
    /// Idle agents connected across the replicas during the burst.
    pub agents: usize,
    /// Grants, one token each.
    pub grants: usize,
    /// Concurrent responders (clients) asking for the tokens.
    pub clients: usize,
    /// The window the tokens are asked for in.
    pub window: Duration,
    /// Also connect as many agents as the open-file limit allows and measure memory again.
    pub max_agents: bool,
}

/// Runs the burst and prints its figures.
pub async fn run(
    settings: Settings,
    server: tokio_postgres::Config,
    options: BurstOptions,
) -> anyhow::Result<()> {
    if options.replicas == 0 || options.clients == 0 || options.grants == 0 {
        bail!("--replicas, --burst-clients and --burst-grants must be at least 1");
    }
    let (soft_before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
    let soft = rlimit::increase_nofile_limit(hard).unwrap_or(soft_before);
    println!(
        "firstkey bench --burst: {} replicas, {} agents, {} grants, {} clients, {} s window; \
         open-file limit {soft_before} raised to {soft} (hard {hard})",
        options.replicas,
        options.agents,
        options.grants,
        options.clients,
        options.window.as_secs()
    );
    let name = format!("firstkey_burst_{}", std::process::id());
    crate::bench::admin(&server, &format!("DROP DATABASE IF EXISTS {name}")).await?;
    crate::bench::admin(&server, &format!("CREATE DATABASE {name}")).await?;
    let result = async {
        let mut config = server.clone();
        config.dbname(&name);
        let pool = store::pool(config.clone(), BENCH_POOL)?;
        store::migrate(&pool).await?;
        let measured = measure(settings, &pool, &config, options, soft).await;
        pool.close();
        measured
    }
    .await;
    crate::bench::admin(
        &server,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await?;
    result
}

/// One `firstkey serve` child process.
struct Replica {
    child: tokio::process::Child,
    base: String,
    agent_addr: SocketAddr,
}

impl Replica {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Resident memory of the replica process, bytes.
    fn rss(&self) -> u64 {
        self.pid()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/statm")).ok())
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| pages.saturating_mul(4096))
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// Starts replica `i` of this binary on free ports, sharing `key_dir` and the database, and waits
/// until it answers `/readyz`.
async fn start_replica(
    i: usize,
    settings: &Settings,
    db: &tokio_postgres::Config,
    key_dir: &Path,
    work: &Path,
) -> anyhow::Result<Replica> {
    let (http, agent) = (free_port()?, free_port()?);
    let log = std::fs::File::create(work.join(format!("replica-{i}.log")))?;
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .current_dir(work)
        .env("FIRSTKEY_DATABASE_URL", connection_string(db))
        .env("FIRSTKEY_LISTEN", format!("127.0.0.1:{http}"))
        .env("FIRSTKEY_AGENT_LISTEN", format!("127.0.0.1:{agent}"))
        .env("FIRSTKEY_KEY_DIR", key_dir)
        .env("FIRSTKEY_PUBLIC_ORIGIN", settings.public_origin.as_str())
        .env("FIRSTKEY_DB_POOL_SIZE", BENCH_POOL.to_string())
        // Every simulated agent connects from 127.0.0.1 (see `bench::loopback_fleet_limits`).
        .env("FIRSTKEY_AGENT_MAX_UNAUTHENTICATED", "1024")
        .env("FIRSTKEY_AGENT_MAX_UNAUTHENTICATED_PER_ADDRESS", "1024")
        .env("RUST_LOG", "warn")
        .env_remove("FIRSTKEY_SMTP_RELAY")
        .env_remove("FIRSTKEY_METRICS_LISTEN")
        .env_remove("FIRSTKEY_TLS_CERT")
        .env_remove("FIRSTKEY_TLS_KEY")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting a replica")?;
    let base = format!("http://127.0.0.1:{http}");
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = probe.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "replica {i} not ready after 120 s (log: {})",
                work.join(format!("replica-{i}.log")).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Replica {
        child,
        base,
        agent_addr: ([127, 0, 0, 1], agent).into(),
    })
}

/// The one place the burst asks for a token, as a responder's phone does: the token request
/// carries its own WebAuthn assertion over a challenge the server does not store (a GET that
/// writes nothing, then the one issuing request).
async fn request_token(
    client: &ApiClient,
    responder: &mut Staff,
    grant: &str,
    lock: Uuid,
) -> anyhow::Result<()> {
    client
        .request_token(
            &responder.cookie,
            &mut responder.key,
            grant,
            &lock.to_string(),
        )
        .await?;
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len().saturating_sub(1) as f64) * q).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn kib_per(bytes: u64, n: usize) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let (b, n) = (bytes as f64, n.max(1) as f64);
    b / n / 1024.0
}

/// Total resident memory of the replicas, after letting connections settle.
async fn replicas_rss(replicas: &[Replica]) -> u64 {
    tokio::time::sleep(Duration::from_secs(3)).await;
    replicas.iter().map(Replica::rss).sum()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// What one token request of the burst took.
struct Sample {
    lock: Uuid,
    scheduled: Instant,
    answered: Instant,
}

#[allow(clippy::too_many_lines)]
async fn measure(
    mut settings: Settings,
    pool: &Pool,
    db: &tokio_postgres::Config,
    options: BurstOptions,
    fd_limit: u64,
) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let key_dir = work.path().join("keys");
    std::fs::create_dir_all(&key_dir)?;
    settings.key_dir = key_dir.clone();
    settings.smtp = None;
    // Material every replica must share, made once before they start: the agent channel's dev
    // certificate and the data key.
    crate::channel::tls::ServerIdentity::from_settings(&settings)?;
    crate::crypto::Kek::load_or_create(&key_dir)?;
    let mut replicas = Vec::with_capacity(options.replicas);
    for i in 0..options.replicas {
        replicas.push(start_replica(i, &settings, db, &key_dir, work.path()).await?);
    }
    let origin = settings.public_origin.clone();
    let clients: Vec<ApiClient> = replicas
        .iter()
        .map(|r| ApiClient::new(&r.base, origin.as_str()))
        .collect::<anyhow::Result<_>>()?;
    let first = clients.first().ok_or_else(|| anyhow!("no replica"))?;
    let clock = SystemClock;

    // --- The world: municipality, issuer key, homes with plans, a dispatcher, the responders.
    let started = Instant::now();
    let (tenant, property, dispatcher, mut responders) = crate::bench::world(
        pool,
        first,
        &settings,
        &origin,
        options.clients,
        clock.now(),
    )
    .await?;
    let c = pool.get().await.map_err(StoreError::from)?;
    let owner: Uuid = c
        .query_one(
            "SELECT owner_id FROM properties WHERE id = $1",
            &[&property],
        )
        .await?
        .get(0);
    let plan: crate::plans::PlanInput = serde_json::from_value(json!({
        "agencies": { "fire": { "allowed": true, "incident_types": ["fire"] } },
        "max_grant_minutes": 60,
        "retention_days": 30
    }))?;
    let mut properties = vec![property];
    for i in 1..options.grants {
        let p = store::properties::create_property(
            &c,
            tenant,
            owner,
            &format!("{i} Burst Road"),
            clock.now(),
        )
        .await?;
        store::properties::insert_plan(
            &c,
            tenant,
            p.id,
            owner,
            &plan,
            |_| Ok(store::properties::SealedPlan::default()),
            clock.now(),
        )
        .await?;
        properties.push(p.id);
    }
    let fire: Uuid = c
        .query_one(
            "SELECT id FROM agencies WHERE municipality_id = $1 AND kind = 'fire'",
            &[&tenant.id()],
        )
        .await?
        .get(0);
    println!(
        "world: {} homes, {} responders enrolled ({:.1} s)",
        properties.len(),
        responders.len(),
        started.elapsed().as_secs_f64()
    );

    // --- Agents across the replicas: lock i on home i % grants, agent i on replica i % replicas.
    let targets: Vec<SimTarget> = {
        let ca = std::fs::read(key_dir.join(crate::channel::tls::DEV_CA_FILE))?;
        replicas
            .iter()
            .map(|r| SimTarget::new(r.agent_addr, "localhost", &ca))
            .collect::<Result<_, _>>()?
    };
    let rss_empty = replicas_rss(&replicas).await;
    let locks = sim::provision_across(&c, tenant, &properties, options.agents, clock.now()).await?;
    let connecting = Instant::now();
    let mut fleet = Fleet::connect_spread(locks, &targets, 64).await?;
    let connect_secs = connecting.elapsed().as_secs_f64();
    let connected = fleet.connected();
    let rss_connected = replicas_rss(&replicas).await;
    #[allow(clippy::cast_precision_loss)]
    let rate = connected as f64 / connect_secs.max(0.001);
    println!(
        "agents: {connected} connected across {} replicas in {connect_secs:.1} s ({rate:.0}/s)",
        replicas.len()
    );
    let burst_locks: Vec<Uuid> = fleet
        .locks
        .iter()
        .take(options.grants)
        .map(|l| l.id)
        .collect();
    if burst_locks.len() < options.grants {
        bail!("--burst-agents must be at least --burst-grants (one lock per grant)");
    }

    // --- Baselines, same run: inbox commit → agent ack across the replicas, raw INSERT rate.
    let bare = channel_bench::push_latency(pool, tenant, &mut fleet, 300, &clock).await?;
    fleet.drain_deliveries();
    c.batch_execute("CREATE TABLE bench_raw (id uuid PRIMARY KEY, payload bytea NOT NULL)")
        .await?;
    // As many connections as this process's pool has free (one is held for the setup queries);
    // each replica's pool is as large.
    let raw_connections = options.clients.min(BENCH_POOL - 1);
    let raw = crate::bench::raw_insert_rate(pool, raw_connections, Duration::from_secs(5)).await?;

    // --- The grants: one per home, each naming one responder, made by the dispatcher.
    let incident = first
        .post(
            "/api/v1/incidents",
            &json!({ "cad_number": "BURST-1", "kind": "fire", "address": "Citywide", "agency": fire }),
            Some(&dispatcher.cookie),
        )
        .await?;
    let incident = incident
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no incident id: {incident}"))?
        .to_owned();
    let granting = Instant::now();
    let mut dispatcher = dispatcher;
    let mut grants: Vec<String> = Vec::with_capacity(options.grants);
    // 24 at a time (a replica's pool is 8 connections), the step-up renewed every 192.
    for chunk in properties.chunks(24).enumerate() {
        let (n, homes) = chunk;
        if n % 8 == 0 {
            // The dispatcher's step-up stays fresh (5-minute window).
            first
                .step_up(&dispatcher.cookie, &mut dispatcher.key)
                .await?;
        }
        let made = futures_util::future::join_all(homes.iter().enumerate().map(|(i, home)| {
            let responder = responders
                .get((n * 24 + i) % responders.len())
                .map(|r| r.id);
            let client = clients.get((n * 24 + i) % clients.len()).unwrap_or(first);
            let body = json!({ "property": home, "responders": [responder], "minutes": 60,
                               "justification": "disaster burst" });
            let path = format!("/api/v1/incidents/{incident}/grants");
            let cookie = dispatcher.cookie.clone();
            async move { client.post(&path, &body, Some(&cookie)).await }
        }))
        .await;
        for grant in made {
            let grant = grant?;
            grants.push(
                grant
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("no grant id: {grant}"))?
                    .to_owned(),
            );
        }
    }
    println!(
        "grants: {} made in {:.1} s",
        grants.len(),
        granting.elapsed().as_secs_f64()
    );

    // --- The burst: token g at window·g/grants, asked by responder g % clients through replica
    // (g % clients) % replicas.
    let window = options.window;
    let n = grants.len();
    let start = Instant::now() + Duration::from_millis(500);
    let schedule = |g: usize| {
        let offset = window.mul_f64(f64::from(u32::try_from(g).unwrap_or(u32::MAX)))
            / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        start + offset
    };
    let per_client =
        futures_util::future::join_all(responders.iter_mut().enumerate().map(|(r, responder)| {
            let grants = &grants;
            let burst_locks = &burst_locks;
            let client = clients.get(r % clients.len()).unwrap_or(first);
            let clients_n = options.clients;
            async move {
                let mut samples = Vec::new();
                for g in (r..n).step_by(clients_n) {
                    let scheduled = schedule(g);
                    tokio::time::sleep_until(scheduled.into()).await;
                    let (Some(grant), Some(lock)) = (grants.get(g), burst_locks.get(g)) else {
                        continue;
                    };
                    request_token(client, responder, grant, *lock)
                        .await
                        .with_context(|| format!("token {g}"))?;
                    samples.push(Sample {
                        lock: *lock,
                        scheduled,
                        answered: Instant::now(),
                    });
                }
                Ok::<_, anyhow::Error>(samples)
            }
        }))
        .await;
    let mut samples = Vec::with_capacity(n);
    for s in per_client {
        samples.extend(s?);
    }
    let last_answer = samples
        .iter()
        .map(|s| s.answered)
        .max()
        .unwrap_or(start)
        .saturating_duration_since(start);
    // Every token must reach its lock: wait up to 30 s for the stragglers.
    let mut arrived: HashMap<Uuid, Instant> = HashMap::new();
    let wanted: std::collections::HashSet<Uuid> = samples.iter().map(|s| s.lock).collect();
    let waiting = Instant::now();
    while arrived.len() < wanted.len() && waiting.elapsed() < Duration::from_secs(30) {
        for d in fleet.drain_deliveries() {
            if wanted.contains(&d.lock) {
                arrived.entry(d.lock).or_insert(d.at);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The replicas record the agents' acks (`delivered`) after the agents received the tokens.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recorded: i64 = c
        .query_one(
            "SELECT count(*) FROM issued_tokens WHERE municipality_id = $1 AND status = 'delivered'",
            &[&tenant.id()],
        )
        .await?
        .get(0);
    let issued: i64 = c
        .query_one(
            "SELECT count(*) FROM issued_tokens WHERE municipality_id = $1",
            &[&tenant.id()],
        )
        .await?
        .get(0);

    let mut token_latency: Vec<Duration> = samples
        .iter()
        .map(|s| s.answered.saturating_duration_since(s.scheduled))
        .collect();
    token_latency.sort();
    let mut early = 0usize;
    let mut push: Vec<Duration> = samples
        .iter()
        .filter_map(|s| {
            let at = arrived.get(&s.lock)?;
            if *at < s.answered {
                early += 1;
            }
            Some(at.saturating_duration_since(s.answered))
        })
        .collect();
    push.sort();
    let mut request_to_lock: Vec<Duration> = samples
        .iter()
        .filter_map(|s| Some(arrived.get(&s.lock)?.saturating_duration_since(s.scheduled)))
        .collect();
    request_to_lock.sort();
    #[allow(clippy::cast_precision_loss)]
    let achieved = samples.len() as f64 / last_answer.as_secs_f64().max(0.001);

    println!();
    println!(
        "(f) disaster burst: {} tokens for {} grants, {} clients over {} replicas, {} agents connected",
        samples.len(),
        n,
        options.clients,
        replicas.len(),
        connected
    );
    println!(
        "    asked within {:.0} s, last answer {:.1} s after the start (target: all within 60 s)",
        window.as_secs_f64(),
        last_answer.as_secs_f64()
    );
    println!(
        "    token latency (scheduled → answer, one request with its own assertion, plus its challenge GET): p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms (target p99 ≤ 250 ms)",
        ms(percentile(&token_latency, 0.50)),
        ms(percentile(&token_latency, 0.99)),
        ms(token_latency.last().copied().unwrap_or_default())
    );
    println!(
        "      baseline: raw single-INSERT transactions {raw:.0}/s with {} connections; the burst \
         asked {achieved:.1} tokens/s ({:.1}% of it)",
        raw_connections,
        100.0 * achieved / raw.max(0.001)
    );
    println!(
        "    push latency (answer → agent ack): p50 {:.2} ms, p99 {:.2} ms ({early} of {} \
         reached the lock before the responder had the answer)",
        ms(percentile(&push, 0.50)),
        ms(percentile(&push, 0.99)),
        push.len()
    );
    println!(
        "      request → agent ack: p50 {:.1} ms, p99 {:.1} ms; baseline inbox commit → agent \
         ack across the replicas p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&request_to_lock, 0.50)),
        ms(percentile(&request_to_lock, 0.99)),
        ms(bare.p50),
        ms(bare.p99)
    );
    println!(
        "    delivered: {} of {} tokens reached their lock (counted at the agents); the replicas \
         recorded {recorded} of {issued} issued as acknowledged (target: all)",
        arrived.len(),
        samples.len()
    );
    let grown = rss_connected.saturating_sub(rss_empty);
    println!(
        "    memory: replicas' RSS {} → {} MiB with {connected} idle agents: {:.1} KiB per idle \
         agent connection (target ≤ 10 KiB; server processes only)",
        rss_empty / (1024 * 1024),
        rss_connected / (1024 * 1024),
        kib_per(grown, connected)
    );

    // --- As many agents as this process's open-file limit allows (each holds one socket here;
    // a replica holds a third of them).
    if options.max_agents {
        let limit = usize::try_from(fd_limit).unwrap_or(usize::MAX);
        let room = limit.saturating_sub(open_fds()).saturating_sub(512);
        if room > 0 {
            let more = sim::provision_across(&c, tenant, &properties, room, clock.now()).await?;
            let connecting = Instant::now();
            fleet.connect_more(more, &targets, 64).await?;
            let total = fleet.connected();
            let rss_max = replicas_rss(&replicas).await;
            println!(
                "    at the open-file limit ({limit}): {total} idle agents (+{room} in {:.1} s), \
                 replicas' RSS {} MiB: {:.1} KiB per idle agent connection",
                connecting.elapsed().as_secs_f64(),
                rss_max / (1024 * 1024),
                kib_per(rss_max.saturating_sub(rss_empty), total)
            );
        } else {
            println!("    at the open-file limit ({limit}): no room for more agents");
        }
    }
    drop(fleet);
    drop(c);
    for mut r in replicas {
        let _ = r.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), r.child.wait()).await;
    }
    Ok(())
}

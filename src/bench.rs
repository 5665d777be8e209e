//! `firstkey bench`: the emergency-entry figures, measured in one run on loopback against a scratch
//! database (created, migrated, dropped), each printed with the baseline it is compared to:
//!
//! (a) push latency — from a responder's token request (HTTP, policy, mint, audit, inbox, commit)
//!     to the simulated agent receiving and acknowledging that token — p50/p99 over many requests
//!     with many agents connected over TLS;
//! (b) token issuance throughput with concurrent responders, each issuance including a fresh
//!     WebAuthn assertion and the issuing transaction, as a ratio to a plain single-INSERT
//!     transaction rate with the same concurrency on the same database: one request per token
//!     (the challenge GET stores nothing; the token request carries its assertion), and the older
//!     step-up ceremony + token request for comparison; then the SQL statements, round trips and
//!     commits of each, counted on the wire (`bench_sql`);
//! (c) memory per idle connected agent: RSS growth of this process divided by N. The simulated
//!     agents run in this process too, so the figure includes both ends of each connection and is
//!     an upper bound for the server alone;
//! (d), (e) the dispatcher console: render time with 1,000 open incidents and 10,000 grants, and
//!     live-state latency to 100 subscribed consoles (`bench_console`).
//!
//! A figure is never asserted here; targets are printed beside the measurements.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use chrono::Utc;
use deadpool_postgres::Pool;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::channel::bench::{self as channel_bench, Fleet};
use crate::channel::sim::SimTarget;
use crate::clock::{Clock, SystemClock};
use crate::demo::client::ApiClient;
use crate::demo::softkey::SoftSecurityKey;
use crate::domain::{AgencyKind, Email, Role, Slug};
use crate::settings::Settings;
use crate::store::{self, StoreError, Tenant};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Agents connected while measuring push latency.
    pub latency_agents: usize,
    /// Token requests timed for push latency.
    pub pushes: usize,
    /// Concurrent responders for the issuance throughput.
    pub responders: usize,
    /// How long each throughput measurement runs.
    pub duration: Duration,
    /// Idle agents for the memory figure.
    pub idle_agents: usize,
    /// Alarms timed for alarm → live grant latency (0: skip).
    pub alarms: usize,
    /// Locks sending one battery report each for the health write cost (0: skip).
    pub battery_agents: usize,
    /// Run only the home section (alarms, battery), not (a)–(c).
    pub home_only: bool,
    /// Only the dispatcher-console figures (d), (e).
    pub console_only: bool,
}

/// A staff member enrolled over HTTP: session cookie, security key, user id.
pub(crate) struct Staff {
    pub(crate) cookie: String,
    pub(crate) key: SoftSecurityKey,
    pub(crate) id: Uuid,
}

/// Runs every measurement and prints the figures.
pub async fn run(
    mut settings: Settings,
    server: tokio_postgres::Config,
    options: BenchOptions,
) -> anyhow::Result<()> {
    raise_file_limit(
        options
            .idle_agents
            .saturating_add(options.latency_agents)
            .saturating_mul(2)
            + 4096,
    );
    // A scratch database on the same server.
    let name = format!("firstkey_bench_{}", std::process::id());
    admin(&server, &format!("DROP DATABASE IF EXISTS {name}")).await?;
    admin(&server, &format!("CREATE DATABASE {name}")).await?;
    let result = async {
        let mut config = server.clone();
        config.dbname(&name);
        let pool = store::pool(config.clone(), 48)?;
        store::migrate(&pool).await?;
        let measured = measure(&mut settings, pool.clone(), config, options).await;
        // Close the pool before the database goes, so no connection dies (and complains) under it.
        pool.close();
        measured
    }
    .await;
    admin(
        &server,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await?;
    result
}

/// Lets `concurrent` simulated agents, all on the loopback address, handshake at once (the caps on
/// unauthenticated connections count per address; a real fleet comes from many).
pub(crate) fn loopback_fleet_limits(settings: &mut Settings, concurrent: usize) {
    let wanted = concurrent.saturating_mul(2);
    settings.agent_max_unauthenticated = settings.agent_max_unauthenticated.max(wanted);
    settings.agent_max_unauthenticated_per_address =
        settings.agent_max_unauthenticated_per_address.max(wanted);
}

pub(crate) async fn admin(server: &tokio_postgres::Config, sql: &str) -> anyhow::Result<()> {
    let mut config = server.clone();
    config.dbname("postgres");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    let task = tokio::spawn(connection);
    client
        .batch_execute(sql)
        .await
        .with_context(|| sql.to_owned())?;
    drop(client);
    let _ = task.await;
    Ok(())
}

pub(crate) fn raise_file_limit(wanted: usize) {
    let wanted = u64::try_from(wanted).unwrap_or(u64::MAX);
    // Root (CI, containers) may raise the hard limit too; others get the soft limit raised to it.
    let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, wanted, wanted);
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < wanted => {
            println!("note: open-file limit is {got}, below the {wanted} this run wants")
        }
        Ok(_) => {}
        Err(e) => println!("note: cannot raise the open-file limit: {e}"),
    }
}

async fn measure(
    settings: &mut Settings,
    pool: Pool,
    pg_config: tokio_postgres::Config,
    options: BenchOptions,
) -> anyhow::Result<()> {
    let db_config = pg_config.clone();
    let key_dir = tempfile::tempdir()?;
    settings.key_dir = key_dir.path().to_path_buf();
    settings.listen = ([127, 0, 0, 1], 0).into();
    settings.agent_listen = ([127, 0, 0, 1], 0).into();
    settings.smtp = None;
    // Every simulated agent connects from 127.0.0.1, up to 100 handshakes at a time: with the
    // per-address cap on unauthenticated connections (16 by default: strangers behind one address)
    // the listener closed the rest before TLS, which the simulator saw as `tls handshake eof`.
    loopback_fleet_limits(settings, 100);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now();
    let origin = settings.public_origin.clone();
    let channel =
        crate::channel::server::start(settings, pool.clone(), pg_config, clock.clone()).await?;
    let mut app = crate::http::Application::build(settings.clone(), pool.clone(), clock.clone())?;
    app.listen_grant_events_on(db_config.clone());
    let base = format!("http://{}", app.local_addr());
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let client = ApiClient::new(&base, origin.as_str())?;
    println!(
        "firstkey bench: {} responders, {} s per throughput run, {} agents for latency, {} idle agents",
        options.responders,
        options.duration.as_secs(),
        options.latency_agents,
        options.idle_agents
    );

    // --- The world: municipality, keys, a home with a plan, a dispatcher, responders, a live grant.
    let (tenant, property, dispatcher, mut responders) =
        world(&pool, &client, settings, &origin, options.responders, now).await?;
    let c = pool.get().await.map_err(StoreError::from)?;
    let fire: Uuid = c
        .query_one(
            "SELECT id FROM agencies WHERE municipality_id = $1 AND kind = 'fire'",
            &[&tenant.id()],
        )
        .await?
        .get(0);
    let incident = client
        .post(
            "/api/v1/incidents",
            &json!({ "cad_number": "BENCH-1", "kind": "fire", "address": "1 Bench Road", "agency": fire }),
            Some(&dispatcher.cookie),
        )
        .await?;
    let incident = incident
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no incident id"))?
        .to_owned();
    // --- (d), (e): the home's reports (src/alarms/bench.rs).
    if options.alarms > 0 || options.battery_agents > 0 {
        let owner: Uuid = c
            .query_one(
                "SELECT owner_id FROM properties WHERE id = $1",
                &[&property],
            )
            .await?
            .get(0);
        let kek = crate::crypto::Kek::load_or_create(&settings.key_dir)?;
        let first = responders
            .first_mut()
            .ok_or_else(|| anyhow!("no responders"))?;
        crate::alarms::bench::run(
            crate::alarms::bench::HomeBench {
                pool: &pool,
                client: &client,
                base: &base,
                tenant,
                owner,
                fire,
                responder: (&first.cookie, &mut first.key),
                kek: &kek,
                clock: clock.as_ref(),
            },
            options.alarms,
            options.battery_agents,
        )
        .await?;
    }
    if options.home_only {
        channel.stop();
        handle.stop(true).await;
        let _ = server.await;
        return Ok(());
    }
    let ids: Vec<Uuid> = responders.iter().map(|r| r.id).collect();
    let grant = client
        .post(
            &format!("/api/v1/incidents/{incident}/grants"),
            &json!({ "property": property, "responders": ids, "minutes": 60, "justification": "benchmark" }),
            Some(&dispatcher.cookie),
        )
        .await?;
    let grant = grant
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no grant id: {grant}"))?
        .to_owned();

    if options.console_only {
        let incident_id = Uuid::parse_str(&incident).context("incident id")?;
        let measured = crate::bench_console::measure(
            &pool,
            &base,
            tenant,
            dispatcher.id,
            fire,
            incident_id,
            clock.now(),
        )
        .await;
        channel.stop();
        handle.stop(true).await;
        let _ = server.await;
        return measured;
    }

    // --- (a) push latency with agents connected.
    let ca = std::fs::read(settings.key_dir.join(crate::channel::tls::DEV_CA_FILE))?;
    let target = SimTarget::new(channel.local_addr(), "localhost", &ca)?;
    let mut fleet = Fleet::connect(
        &pool,
        tenant,
        property,
        &target,
        options.latency_agents,
        100,
        clock.as_ref(),
    )
    .await?;
    let locks: Vec<Uuid> = fleet.locks.iter().map(|l| l.id).collect();
    let bare = channel_bench::push_latency(
        &pool,
        tenant,
        &mut fleet,
        options.pushes.min(500),
        clock.as_ref(),
    )
    .await?;
    let first = responders
        .first_mut()
        .ok_or_else(|| anyhow!("no responders"))?;
    let mut samples = Vec::with_capacity(options.pushes);
    for i in 0..options.pushes {
        let lock = locks
            .get(i % locks.len().max(1))
            .copied()
            .ok_or_else(|| anyhow!("no locks"))?;
        // The challenge and the key's assertion come before the timed token request.
        let challenge = client
            .get(
                &format!("/api/v1/tokens/challenge?grant={grant}&lock={lock}"),
                Some(&first.cookie),
            )
            .await?;
        let assertion = first
            .key
            .assert(challenge.get("options").unwrap_or(&Value::Null))?;
        let started = Instant::now();
        client
            .post(
                "/api/v1/tokens",
                &json!({ "grant": grant, "lock": lock, "assertion": assertion }),
                Some(&first.cookie),
            )
            .await?;
        let arrived = fleet
            .next_delivery_for(lock, Duration::from_secs(10))
            .await
            .ok_or_else(|| anyhow!("token for lock {lock} never reached its agent"))?;
        samples.push(arrived.saturating_duration_since(started));
    }
    samples.sort();
    let pct = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((samples.len().saturating_sub(1) as f64) * q).round() as usize;
        samples.get(i).copied().unwrap_or_default()
    };
    let (p50, p99) = (pct(0.50), pct(0.99));
    println!();
    println!(
        "(a) push latency, token request → agent ack, {} requests, {} agents connected over TLS",
        samples.len(),
        fleet.connected()
    );
    println!(
        "    p50 {:>8.2} ms   p99 {:>8.2} ms   (target p99 < 100 ms)",
        ms(p50),
        ms(p99)
    );
    println!(
        "    baseline: inbox commit → agent ack alone, p50 {:.2} ms, p99 {:.2} ms; the token request adds {:.1}× at p50",
        ms(bare.p50),
        ms(bare.p99),
        ms(p50) / ms(bare.p50).max(0.001)
    );
    drop(fleet);

    // --- (b) issuance throughput vs a plain single-INSERT transaction rate.
    c.batch_execute("CREATE TABLE bench_raw (id uuid PRIMARY KEY, payload bytea NOT NULL)")
        .await?;
    drop(c);
    let raw = raw_insert_rate(&pool, options.responders, options.duration).await?;
    let issued = issuance_rate(
        &client,
        &mut responders,
        &grant,
        &locks,
        options.duration,
        Flow::OneRequest,
    )
    .await?;
    let three = issuance_rate(
        &client,
        &mut responders,
        &grant,
        &locks,
        options.duration,
        Flow::StepUpFirst,
    )
    .await?;
    println!();
    println!(
        "(b) token issuance, {} concurrent responders, each with a fresh WebAuthn assertion + issuing transaction",
        options.responders
    );
    route_breakdown(&client).await;
    println!(
        "    one request per token (challenge GET, nothing stored, + token request with its assertion):"
    );
    println!(
        "    {issued:>8.1} tokens/s   vs raw single-INSERT transactions {raw:>8.1}/s   ratio {:.1}% (target ≥ 10%, next 25%)",
        100.0 * issued / raw.max(0.001)
    );
    println!(
        "    before, step-up start + finish + token request: {three:>8.1} tokens/s   ratio {:.1}%; one request is {:.2}× that",
        100.0 * three / raw.max(0.001),
        issued / three.max(0.001)
    );
    if let Err(e) = crate::bench_sql::count_issuance(
        settings,
        &db_config,
        &mut responders,
        &grant,
        &locks,
        clock.clone(),
    )
    .await
    {
        println!("    (statements per issuance not counted: {e:#})");
    }

    // --- (d), (e) the dispatcher console: render time, live-state latency.
    let incident_id = Uuid::parse_str(&incident).context("incident id")?;
    crate::bench_console::measure(
        &pool,
        &base,
        tenant,
        dispatcher.id,
        fire,
        incident_id,
        clock.now(),
    )
    .await?;

    // --- (c) memory per idle connected agent: the agents live in a child process (its own
    // descriptor table), so this process's RSS growth is the server side alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = channel_bench::rss_bytes().unwrap_or(0);
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("bench-fleet")
        .args(["--database", &connection_string(&db_config)])
        .args(["--municipality", &tenant.id().to_string()])
        .args(["--property", &property.to_string()])
        .args(["--agent-addr", &channel.local_addr().to_string()])
        .arg("--ca")
        .arg(settings.key_dir.join(crate::channel::tls::DEV_CA_FILE))
        .args(["--agents", &options.idle_agents.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the agent fleet process")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("fleet process has no stdout"))?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let connected: usize = loop {
        let line = tokio::time::timeout(Duration::from_secs(600), lines.next_line())
            .await
            .context("fleet process timed out")??
            .ok_or_else(|| anyhow!("fleet process ended before connecting"))?;
        if let Some(n) = line.strip_prefix("connected ") {
            break n.trim().parse()?;
        }
    };
    // Let handshake buffers be freed and sessions settle into their idle wait.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = channel_bench::rss_bytes().unwrap_or(0);
    let per_agent =
        rss_after.saturating_sub(rss_before) / u64::try_from(connected.max(1)).unwrap_or(1);
    println!();
    println!("(c) idle agents over TLS: {connected} connected (simulated in a separate process)");
    println!(
        "    server RSS {} MiB → {} MiB: {:.1} KiB per idle agent connection (target ≤ 32 KiB)",
        rss_before / (1024 * 1024),
        rss_after / (1024 * 1024),
        f64::from(u32::try_from(per_agent).unwrap_or(u32::MAX)) / 1024.0
    );
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    channel.stop();
    // Stop the server (and with it the audit sealer), so nothing uses the pool after this.
    handle.stop(true).await;
    let _ = server.await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) async fn world(
    pool: &Pool,
    client: &ApiClient,
    settings: &Settings,
    origin: &crate::settings::PublicOrigin,
    responders: usize,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<(Tenant, Uuid, Staff, Vec<Staff>)> {
    let mut c = pool.get().await.map_err(StoreError::from)?;
    let slug = Slug::parse("bench-city")?;
    let (tenant, _) = store::tenancy::ensure_municipality(&c, &slug, "Bench City", now).await?;
    let fire =
        store::tenancy::ensure_agency(&c, tenant, AgencyKind::Fire, "Bench Fire", now).await?;
    crate::emergency::keys::generate(&mut c, tenant, &settings.key_dir, now)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let owner = store::people::ensure_user(
        &c,
        tenant,
        &Email::parse("owner@bench.example")?,
        "Owner",
        None,
        &[Role::Homeowner],
        now,
    )
    .await?;
    let property =
        store::properties::create_property(&c, tenant, owner.id, "1 Bench Road", now).await?;
    let plan: crate::plans::PlanInput = serde_json::from_value(json!({
        "agencies": { "fire": { "allowed": true, "incident_types": ["fire"] } },
        "max_grant_minutes": 60,
        "retention_days": 30
    }))?;
    store::properties::insert_plan(
        &c,
        tenant,
        property.id,
        owner.id,
        &plan,
        |_| Ok(store::properties::SealedPlan::default()),
        now,
    )
    .await?;
    // Staff: keys whose CA the municipality trusts, invited by a bootstrapped admin, enrolled over HTTP.
    let mut keys = Vec::new();
    let tx = c.transaction().await.map_err(StoreError::from)?;
    let (admin, _) = crate::auth::accounts::bootstrap_admin(
        &tx,
        tenant,
        &Email::parse("admin@bench.example")?,
        "Admin",
        now,
    )
    .await
    .map_err(|e| anyhow!("{e}"))?;
    let mut invitations = Vec::new();
    for i in 0..=responders {
        let key = SoftSecurityKey::new(origin.as_str())?;
        crate::auth::webauthn::add_attestation_ca(&tx, tenant, key.ca_pem(), None, now)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let role = if i == 0 {
            Role::Dispatcher
        } else {
            Role::Responder
        };
        let new = crate::auth::accounts::NewInvitation {
            role,
            agency_id: Some(fire.id),
            email: format!("{}{i}@bench.example", role.as_str()),
            display_name: format!("{} {i}", role.as_str()),
        };
        let (_, secret) = crate::auth::accounts::invite(&tx, tenant, admin.id, &new, origin, now)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        invitations.push(secret.expose().to_owned());
        keys.push(key);
    }
    tx.commit().await.map_err(StoreError::from)?;
    let mut staff = Vec::new();
    for (secret, mut key) in invitations.iter().zip(keys) {
        let cookie = client
            .enrol("/api/v1/invitations/accept", secret, &mut key)
            .await?;
        let me = client.get("/api/v1/me", Some(&cookie)).await?;
        let id = me
            .get("user_id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no user id"))?;
        staff.push(Staff { cookie, key, id });
    }
    let mut staff = staff.into_iter();
    let dispatcher = staff.next().ok_or_else(|| anyhow!("no dispatcher"))?;
    Ok((tenant, property.id, dispatcher, staff.collect()))
}

pub(crate) async fn raw_insert_rate(
    pool: &Pool,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut n = 0u64;
            let mut client = pool.get().await.map_err(StoreError::from)?;
            while Instant::now() < deadline {
                let tx = client.transaction().await?;
                tx.execute(
                    "INSERT INTO bench_raw (id, payload) VALUES ($1, $2)",
                    &[&Uuid::new_v4(), &vec![0u8; 200]],
                )
                .await?;
                tx.commit().await?;
                n += 1;
            }
            Ok::<u64, anyhow::Error>(n)
        });
    }
    let started = Instant::now();
    let mut total = 0u64;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    Ok(rate(total, started.elapsed()))
}

/// How a token is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// The challenge GET, then the token request carrying its own assertion (issue 14 §1).
    OneRequest,
    /// A step-up ceremony (start, finish), then the token request.
    StepUpFirst,
}

async fn issuance_rate(
    client: &ApiClient,
    responders: &mut [Staff],
    grant: &str,
    locks: &[Uuid],
    duration: Duration,
    flow: Flow,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let results = futures_util::future::join_all(responders.iter_mut().enumerate().map(
        |(i, r)| async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let lock = locks
                    .get((i + usize::try_from(n).unwrap_or(0) * 7) % locks.len().max(1))
                    .ok_or_else(|| anyhow!("no locks"))?;
                match flow {
                    Flow::OneRequest => {
                        client
                            .request_token(&r.cookie, &mut r.key, grant, &lock.to_string())
                            .await?;
                    }
                    Flow::StepUpFirst => {
                        client.step_up(&r.cookie, &mut r.key).await?;
                        client
                            .post(
                                "/api/v1/tokens",
                                &json!({ "grant": grant, "lock": lock }),
                                Some(&r.cookie),
                            )
                            .await?;
                    }
                }
                n += 1;
            }
            Ok::<u64, anyhow::Error>(n)
        },
    ))
    .await;
    let elapsed = started.elapsed();
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok(rate(total, elapsed))
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let count = count as f64;
    count / elapsed.as_secs_f64().max(0.001)
}

/// A `key=value` connection string for a config (passwords are not carried: the fleet process is a
/// local benchmark helper; use trust or a socket).
pub(crate) fn connection_string(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".to_owned(),
    };
    format!(
        "host={host} port={} user={} dbname={}",
        config.get_ports().first().copied().unwrap_or(5432),
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap_or("postgres")
    )
}

/// Where the fleet process connects.
#[derive(Debug, Clone)]
pub struct FleetTarget {
    /// PostgreSQL connection string of the bench database.
    pub database: String,
    /// The bench municipality.
    pub municipality: Uuid,
    /// The property the simulated locks are registered on.
    pub property: Uuid,
    /// The agent channel.
    pub agent_addr: std::net::SocketAddr,
    /// The channel's CA (PEM file).
    pub ca: std::path::PathBuf,
    /// How many agents.
    pub agents: usize,
}

/// The fleet process of `firstkey bench` (c): provisions and connects `agents` idle simulated
/// agents, prints `connected N`, and holds them until its standard input closes.
pub async fn fleet_process(target: FleetTarget) -> anyhow::Result<()> {
    raise_file_limit(target.agents.saturating_mul(2).saturating_add(1024));
    let config: tokio_postgres::Config = target.database.parse()?;
    let pool = store::pool(config, 4)?;
    let ca = std::fs::read(&target.ca)?;
    let sim = SimTarget::new(target.agent_addr, "localhost", &ca)?;
    let fleet = Fleet::connect(
        &pool,
        Tenant::assume(target.municipality),
        target.property,
        &sim,
        target.agents,
        64,
        &SystemClock,
    )
    .await?;
    println!("connected {}", fleet.connected());
    let mut stdin = tokio::io::stdin();
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut stdin, &mut sink).await;
    drop(fleet);
    Ok(())
}

/// Mean server-side latency of the routes one issuance uses, from the server's own `/metrics`.
async fn route_breakdown(client: &ApiClient) {
    let Ok((_, text, _)) = client
        .send(reqwest::Method::GET, "/metrics", None, None)
        .await
    else {
        return;
    };
    let text = text.as_str().unwrap_or_default().to_owned();
    for route in [
        "/api/v1/tokens/challenge",
        "/api/v1/auth/step-up/start",
        "/api/v1/auth/step-up/finish",
        "/api/v1/tokens",
    ] {
        let metric = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains(&format!("route=\"{route}\"")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let (sum, count) = (
            metric("firstkey_http_request_duration_seconds_sum"),
            metric("firstkey_http_request_duration_seconds_count"),
        );
        if count > 0.0 {
            println!(
                "    server time per request, {route}: {:.2} ms (mean over {count} requests)",
                1000.0 * sum / count
            );
        }
    }
}

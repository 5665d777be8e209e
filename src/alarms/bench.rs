//! `firstkey bench`, section (d)/(e), the home's reports:
//!
//! (d) alarm → live grant latency: a signed monitoring call (HMAC, idempotency key) for a home
//!     whose smoke rule grants the fire service entry, until the answer (incident, grant live,
//!     committed), and until a responder's token for that home's lock is minted; p50/p99 over N
//!     alarms, each for its own home (the same home within minutes would be a duplicate). Baseline:
//!     the CAD API's signed incident opening, same credential and path through authentication and
//!     idempotency, measured in the same run.
//! (e) battery reports: the server's write path for a lock's status report
//!     ([`crate::health::record`]) for N locks, one report each, a tenth of them with a changed
//!     level (the channel writes nothing at all for an unchanged report within its interval, so
//!     every report here is one that reached the database). Figures: this process's CPU seconds,
//!     rows written per report (from PostgreSQL's own counters), against a baseline of one plain
//!     `UPDATE locks SET last_seen_at` per report on the same locks.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use deadpool_postgres::Pool;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::channel::receipts::LockIdentity;
use crate::clock::Clock;
use crate::demo::client::ApiClient;
use crate::demo::softkey::SoftSecurityKey;
use crate::emergency::cad;
use crate::store::{StoreError, Tenant};

/// Who takes part: the bench world's parts this section uses.
pub struct HomeBench<'a> {
    /// The database.
    pub pool: &'a Pool,
    /// HTTP client of the running server.
    pub client: &'a ApiClient,
    /// Base URL of the server.
    pub base: &'a str,
    /// The municipality.
    pub tenant: Tenant,
    /// The homeowner whose homes get alarms.
    pub owner: Uuid,
    /// The fire agency (the rule's agency; the responder's agency).
    pub fire: Uuid,
    /// A fire responder's session and key (asks for tokens).
    pub responder: (&'a str, &'a mut SoftSecurityKey),
    /// The key-encryption key (for the monitoring credential).
    pub kek: &'a crate::crypto::Kek,
    /// The clock.
    pub clock: &'a dyn Clock,
}

fn pct(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((samples.len().saturating_sub(1) as f64) * q).round() as usize;
    samples.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_seconds() -> f64 {
    // /proc/self/stat fields 14 and 15 are utime and stime in clock ticks (100 per second on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

#[allow(clippy::too_many_arguments)]
async fn signed_post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    key_id: &str,
    secret: &str,
    idempotency_key: &str,
    body: &[u8],
    now: i64,
) -> anyhow::Result<(u16, Value)> {
    let ts = now.to_string();
    let signature = cad::sign(
        secret,
        &cad::string_to_sign("POST", path, &ts, idempotency_key, body),
    );
    let response = http
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .header(cad::KEY_ID_HEADER, key_id)
        .header(cad::TIMESTAMP_HEADER, ts)
        .header(cad::SIGNATURE_HEADER, signature)
        .header(cad::IDEMPOTENCY_HEADER, idempotency_key)
        .body(body.to_vec())
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// Runs (d) with `alarms` alarms and (e) with `battery_agents` locks, printing the figures.
pub async fn run(b: HomeBench<'_>, alarms: usize, battery_agents: usize) -> anyhow::Result<()> {
    let HomeBench {
        pool,
        client,
        base,
        tenant,
        owner,
        fire,
        responder: (cookie, key),
        kek,
        clock,
    } = b;
    let now = clock.now();
    let http = reqwest::Client::new();
    // --- Set-up, untimed: a monitoring credential, and per alarm a home with a plan admitting
    // fire, a smoke rule granting it 30 minutes, a linked account and a paired lock.
    let mut c = pool.get().await.map_err(StoreError::from)?;
    let tx = c.transaction().await.map_err(StoreError::from)?;
    let credential = cad::create_credential(&tx, kek, tenant, None, "Bench monitoring", now)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let plan: crate::plans::PlanInput = serde_json::from_value(json!({
        "agencies": { "fire": { "allowed": true, "incident_types": ["fire"] } },
        "max_grant_minutes": 60,
        "retention_days": 30
    }))?;
    let rules: super::AlarmRules = serde_json::from_value(json!({ "rules": [
        { "kind": "smoke", "action": "incident_and_grant", "agency": fire, "minutes": 30 }
    ]}))?;
    let mut homes = Vec::with_capacity(alarms);
    for i in 0..alarms {
        let home = crate::store::properties::create_property(
            &tx,
            tenant,
            owner,
            &format!("{i} Alarm Street"),
            now,
        )
        .await?;
        crate::store::properties::insert_plan(
            &tx,
            tenant,
            home.id,
            owner,
            &plan,
            |_| Ok(crate::store::properties::SealedPlan::default()),
            now,
        )
        .await?;
        super::set_rules(&tx, kek, tenant, owner, home.id, &rules, now)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        tx.execute(
            "INSERT INTO monitoring_accounts (id, municipality_id, property_id, key_id, account, created_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&Uuid::new_v4(), &tenant.id(), &home.id, &credential.key_id, &format!("ACCT-{i}"), &owner, &now],
        )
        .await?;
        let lock = Uuid::new_v4();
        tx.execute(
            "INSERT INTO locks (id, municipality_id, property_id, name, pairing_state, device_public_key, paired_at, created_at)
             VALUES ($1, $2, $3, 'Front door', 'paired', $4, $5, $5)",
            &[&lock, &tenant.id(), &home.id, &[lock.as_bytes().as_slice(), lock.as_bytes().as_slice()].concat(), &now],
        )
        .await?;
        homes.push(lock);
    }
    tx.commit().await.map_err(StoreError::from)?;
    drop(c);

    if alarms > 0 {
        alarm_latency(
            &http,
            base,
            client,
            cookie,
            key,
            clock,
            &credential,
            fire,
            &homes,
        )
        .await?;
    }
    if battery_agents > 0 {
        battery_cost(pool, tenant, clock, battery_agents).await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn alarm_latency(
    http: &reqwest::Client,
    base: &str,
    client: &ApiClient,
    cookie: &str,
    key: &mut SoftSecurityKey,
    clock: &dyn Clock,
    credential: &cad::NewCredential,
    agency_for_cad: Uuid,
    homes: &[Uuid],
) -> anyhow::Result<()> {
    let alarms = homes.len();
    // --- Baseline: signed CAD incident openings through the same authentication and idempotency.
    let baseline_n = alarms.clamp(1, 200);
    let mut baseline = Vec::with_capacity(baseline_n);
    for i in 0..baseline_n {
        let body = serde_json::to_vec(&json!({
            "cad_number": format!("BASE-{i}"), "kind": "fire", "address": "1 Base Road", "agency": agency_for_cad
        }))?;
        let started = Instant::now();
        let (status, answer) = signed_post(
            http,
            base,
            "/api/v1/cad/incidents",
            &credential.key_id,
            &credential.secret,
            &format!("base-{i}"),
            &body,
            clock.now().timestamp(),
        )
        .await?;
        if status != 201 {
            return Err(anyhow!("baseline CAD call: {status} {answer}"));
        }
        baseline.push(started.elapsed());
    }

    // --- (d) alarm → live grant, and → token minted.
    let mut to_grant = Vec::with_capacity(alarms);
    let mut to_token = Vec::with_capacity(alarms);
    for (i, lock) in homes.iter().enumerate() {
        if i % 200 == 0 {
            client.step_up(cookie, key).await?;
        }
        let body = serde_json::to_vec(
            &json!({ "account": format!("ACCT-{i}"), "kind": "smoke", "confirmed": true }),
        )?;
        let started = Instant::now();
        let (status, answer) = signed_post(
            http,
            base,
            "/api/v1/monitoring/alarms",
            &credential.key_id,
            &credential.secret,
            &format!("alarm-{i}"),
            &body,
            clock.now().timestamp(),
        )
        .await?;
        let granted = started.elapsed();
        let grant = answer
            .get("grant")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("alarm {i}: no grant ({status} {answer})"))?
            .to_owned();
        client
            .post(
                "/api/v1/tokens",
                &json!({ "grant": grant, "lock": lock }),
                Some(cookie),
            )
            .await?;
        to_token.push(started.elapsed());
        to_grant.push(granted);
    }
    let (b50, b99) = (pct(&mut baseline, 0.5), pct(&mut baseline, 0.99));
    let (g50, g99) = (pct(&mut to_grant, 0.5), pct(&mut to_grant, 0.99));
    let (t50, t99) = (pct(&mut to_token, 0.5), pct(&mut to_token, 0.99));
    println!();
    println!(
        "(d) alarm → entry, {} signed monitoring alarms, each for its own home (smoke rule: grant fire 30 min)",
        to_grant.len()
    );
    println!(
        "    API call → grant live (committed answer): p50 {:>7.2} ms   p99 {:>7.2} ms",
        ms(g50),
        ms(g99)
    );
    println!(
        "    API call → token minted for the lock:     p50 {:>7.2} ms   p99 {:>7.2} ms   (target p99 ≤ 100 ms)",
        ms(t50),
        ms(t99)
    );
    println!(
        "    baseline: signed CAD incident opening, p50 {:.2} ms, p99 {:.2} ms; alarm → grant is {:.1}× it at p50",
        ms(b50),
        ms(b99),
        ms(g50) / ms(b50).max(0.001)
    );
    Ok(())
}

async fn battery_cost(
    pool: &Pool,
    tenant: Tenant,
    clock: &dyn Clock,
    battery_agents: usize,
) -> anyhow::Result<()> {
    let now = clock.now();
    // --- (e) battery reports.
    let c = pool.get().await.map_err(StoreError::from)?;
    let home = c
        .query_one(
            "SELECT id FROM properties WHERE municipality_id = $1 ORDER BY created_at LIMIT 1",
            &[&tenant.id()],
        )
        .await?
        .get::<_, Uuid>(0);
    let mut locks = Vec::with_capacity(battery_agents);
    for chunk in 0..battery_agents.div_ceil(1000) {
        let n = (battery_agents - chunk * 1000).min(1000);
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        c.execute(
            "INSERT INTO locks (id, municipality_id, property_id, name, pairing_state, device_public_key, paired_at, created_at,
                 battery_percent, last_seen_at)
             SELECT id, $2, $3, 'Battery ' || id::text, 'paired', decode(md5(id::text) || md5(id::text), 'hex'), $4, $4, 80, $4
             FROM unnest($1::uuid[]) AS id",
            &[&ids, &tenant.id(), &home, &now],
        )
        .await?;
        locks.extend(ids);
    }
    let counters = || async {
        let row = c
            .query_one(
                "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0)::bigint FROM pg_stat_user_tables
                 WHERE relname IN ('locks', 'lock_battery_history')",
                &[],
            )
            .await?;
        Ok::<i64, tokio_postgres::Error>(row.get(0))
    };
    // Baseline: one plain UPDATE per report. (Statistics of the inserts above reach
    // pg_stat_user_tables within a second or so: let them, so they are not counted.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows_before = counters().await?;
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    for lock in &locks {
        let client = pool.get().await.map_err(StoreError::from)?;
        client
            .execute(
                "UPDATE locks SET last_seen_at = $2 WHERE id = $1",
                &[lock, &clock.now()],
            )
            .await?;
    }
    let base_wall = started.elapsed();
    let base_cpu = cpu_seconds() - cpu_before;
    // Backends report their statistics at most once a second when idle: let them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base_rows = counters().await? - rows_before;
    let rows_before = counters().await?;
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    for (i, lock) in locks.iter().enumerate() {
        let identity = LockIdentity {
            id: *lock,
            wire_id: lock.to_string(),
            tenant,
            property: home,
            name: "Battery".to_owned(),
            device_public_key: [0; 32],
        };
        let percent = if i % 10 == 0 { 79 } else { 80 };
        let report = crate::health::Report {
            battery_percent: Some(percent),
            battery_millivolts: Some(5800),
            bundle_version: 1,
            time_floor: u64::try_from(clock.now().timestamp()).unwrap_or(0),
        };
        crate::health::record(pool, &identity, &report, clock.now()).await?;
    }
    let wall = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = counters().await? - rows_before;
    #[allow(clippy::cast_precision_loss)]
    let n = locks.len().max(1) as f64;
    #[allow(clippy::cast_precision_loss)]
    let (rows_f, base_rows_f) = (rows as f64, base_rows as f64);
    println!();
    println!(
        "(e) battery reports from {} locks (one each, 1 in 10 with a new level), sequential",
        locks.len()
    );
    println!(
        "    server process CPU {:.2} s for the batch ({:.1} ms wall per report); at {} reports/minute that is {:.2} CPU s/min",
        cpu,
        ms(wall) / n,
        locks.len(),
        cpu
    );
    println!(
        "    rows written per report {:.2} (target ≤ 1 on average); baseline plain UPDATE: {:.2} rows, CPU {:.2} s, {:.1} ms wall per report → health::record costs {:.1}× its CPU, {:.1}× its wall time",
        rows_f / n,
        base_rows_f / n,
        base_cpu,
        ms(base_wall) / n,
        cpu / base_cpu.max(0.001),
        wall.as_secs_f64() / base_wall.as_secs_f64().max(1e-9)
    );
    println!(
        "    (PostgreSQL's own CPU is not in these figures; the channel skips the write entirely for an unchanged report within status_write_interval)"
    );
    Ok(())
}

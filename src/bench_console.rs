//! `firstkey bench` (d): the dispatcher console.
//!
//! - Server time to render the console (its queries and the template, as the page handler runs
//!   them) with 1,000 open incidents and 10,000 grants, p50/p99; the baseline is the same page with
//!   a filter that matches nothing (the same queries and template, no rows), timed in the same run.
//! - Live-state latency with 100 consoles subscribed over HTTP (`/dispatch/incidents/{id}/events`):
//!   from the commit of a transaction that changes a grant's state (its status, live <-> waiting
//!   for approval; a receipt's arrival notifies through a trigger of the same kind) until each
//!   console has the event, p50/p99 over every console and round; the baseline is that
//!   transaction's own round trip. Not an end-to-end receipt upload over the agent channel.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::Actor;
use crate::domain::Role;
use crate::store::{StoreError, Tenant};
use crate::web::dispatch::{self, Filter};

/// Incidents and grants the console is rendered over.
const INCIDENTS: i64 = 1000;
const GRANTS: i64 = 10_000;
/// Renders timed, and consoles subscribed.
const RENDERS: usize = 200;
const CONSOLES: usize = 100;
const ROUNDS: usize = 40;

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
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

/// Runs (d) against the running server at `base` over `pool`; `incident` is an open incident whose
/// grant is live, `dispatcher` a dispatcher of `agency`.
pub async fn measure(
    pool: &Pool,
    base: &str,
    tenant: Tenant,
    dispatcher: Uuid,
    agency: Uuid,
    incident: Uuid,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let client = pool.get().await.map_err(StoreError::from)?;
    let row = client
        .query_one(
            "SELECT property_id, plan_id, policy_set_hash FROM grants
             WHERE municipality_id = $1 AND incident_id = $2 LIMIT 1",
            &[&tenant.id(), &incident],
        )
        .await?;
    let (property, plan, hash): (Uuid, Uuid, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
    client
        .execute(
            "INSERT INTO incidents (id, municipality_id, agency_id, cad_number, kind, address, opened_by, opened_at)
             SELECT gen_random_uuid(), $1, $2, 'CON-' || n, 'fire', n || ' Console Street', $3,
                    $4::timestamptz - make_interval(secs => n::double precision)
             FROM generate_series(1, $5::bigint) n",
            &[&tenant.id(), &agency, &dispatcher, &now, &INCIDENTS],
        )
        .await?;
    client
        .execute(
            "INSERT INTO grants (id, municipality_id, incident_id, property_id, plan_id, granted_by,
                 justification, status, policy_set_hash, created_at, starts_at, ends_at)
             SELECT gen_random_uuid(), $1, i.id, $2, $3, $4, 'console benchmark',
                    CASE WHEN g % 3 = 0 THEN 'awaiting_approval' ELSE 'live' END, $5,
                    $6::timestamptz, $6::timestamptz, $6::timestamptz + interval '1 hour'
             FROM (SELECT id, row_number() OVER (ORDER BY cad_number) AS k FROM incidents
                   WHERE municipality_id = $1 AND cad_number LIKE 'CON-%') i
             JOIN generate_series(1, $7::bigint) g ON g % $8::bigint = i.k % $8::bigint",
            &[
                &tenant.id(),
                &property,
                &plan,
                &dispatcher,
                &hash,
                &now,
                &GRANTS,
                &INCIDENTS,
            ],
        )
        .await?;
    client
        .batch_execute("ANALYZE incidents; ANALYZE grants")
        .await?;
    let counts = client
        .query_one(
            "SELECT (SELECT count(*) FROM incidents WHERE municipality_id = $1 AND closed_at IS NULL),
                    (SELECT count(*) FROM grants WHERE municipality_id = $1)",
            &[&tenant.id()],
        )
        .await?;
    let (open, grants): (i64, i64) = (counts.get(0), counts.get(1));

    let actor = Actor {
        tenant,
        user_id: dispatcher,
        roles: vec![Role::Dispatcher],
        agency_id: Some(agency),
        session_id: Uuid::new_v4(),
        stepped_up_at: None,
        step_up_credential: None,
    };
    let time_renders = |filter: Filter| {
        let actor = actor.clone();
        async move {
            let mut samples = Vec::with_capacity(RENDERS);
            let client = pool.get().await.map_err(StoreError::from)?;
            let mut bytes = 0;
            for _ in 0..RENDERS {
                let started = Instant::now();
                let page = dispatch::render_console(&client, &actor, &filter)
                    .await
                    .map_err(|e| anyhow!("console render: {e}"))?;
                samples.push(started.elapsed());
                bytes = page.len();
            }
            anyhow::Ok((samples, bytes))
        }
    };
    // Warm both (plans, caches), then time.
    time_renders(Filter::default()).await?;
    let nothing = Filter {
        q: "no such incident".to_owned(),
        show: String::new(),
    };
    let (mut empty, _) = time_renders(nothing).await?;
    let (mut full, bytes) = time_renders(Filter::default()).await?;
    let (e50, e99) = (percentile(&mut empty, 0.5), percentile(&mut empty, 0.99));
    let (f50, f99) = (percentile(&mut full, 0.5), percentile(&mut full, 0.99));
    println!();
    println!(
        "(d) dispatcher console: server render with {open} open incidents and {grants} grants ({} KiB page), {RENDERS} renders",
        bytes / 1024
    );
    println!(
        "    p50 {:>8.2} ms   p99 {:>8.2} ms   (target p99 ≤ 20 ms)",
        ms(f50),
        ms(f99)
    );
    println!(
        "    baseline: the same page matching no incident, p50 {:.2} ms, p99 {:.2} ms; the rows cost {:.1}× at p99",
        ms(e50),
        ms(e99),
        ms(f99) / ms(e99).max(0.001)
    );

    // --- Live state: 100 consoles on the benchmark incident, each with a session of its own.
    let mut cookies = Vec::with_capacity(CONSOLES);
    {
        let mut c = pool.get().await.map_err(StoreError::from)?;
        let tx = c.transaction().await.map_err(StoreError::from)?;
        for _ in 0..CONSOLES {
            let (_, secret) =
                crate::auth::session::create(&tx, tenant, dispatcher, None, now).await?;
            cookies.push(format!(
                "{}={}",
                crate::auth::session::COOKIE,
                secret.expose()
            ));
        }
        tx.commit().await.map_err(StoreError::from)?;
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONSOLES)
        .build()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, cookie) in cookies.into_iter().enumerate() {
        let (http, tx) = (http.clone(), tx.clone());
        let url = format!("{base}/dispatch/incidents/{incident}/events");
        tasks.spawn(async move {
            let mut response = http.get(&url).header("Cookie", cookie).send().await?;
            anyhow::ensure!(
                response.status() == 200,
                "console {i}: {}",
                response.status()
            );
            while let Some(chunk) = response.chunk().await? {
                let at = Instant::now();
                let text = String::from_utf8_lossy(&chunk);
                for _ in text.matches("event: grants").collect::<Vec<_>>() {
                    let _ = tx.send((i, at));
                }
            }
            anyhow::Ok(())
        });
    }
    drop(tx);
    // Each console's first event is the current state.
    let mut ready = [false; CONSOLES];
    while ready.iter().any(|r| !r) {
        let (i, _) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .context("consoles connecting")?
            .ok_or_else(|| anyhow!("the consoles ended"))?;
        if let Some(r) = ready.get_mut(i) {
            *r = true;
        }
    }
    let grant: Uuid = client
        .query_one(
            "SELECT id FROM grants WHERE municipality_id = $1 AND incident_id = $2
             ORDER BY created_at, id LIMIT 1",
            &[&tenant.id(), &incident],
        )
        .await?
        .get(0);
    let mut latencies = Vec::with_capacity(CONSOLES * ROUNDS);
    let mut commits = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        // Live ↔ waiting for approval: a state change every round, through the grants trigger.
        let status = if round % 2 == 0 {
            "awaiting_approval"
        } else {
            "live"
        };
        let started = Instant::now();
        client
            .execute(
                "UPDATE grants SET status = $2 WHERE id = $1",
                &[&grant, &status],
            )
            .await?;
        commits.push(started.elapsed());
        let mut heard = [false; CONSOLES];
        while heard.iter().any(|h| !h) {
            let (i, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .context("a console missed a state change")?
                .ok_or_else(|| anyhow!("the consoles ended"))?;
            if let Some(h) = heard.get_mut(i)
                && !*h
            {
                *h = true;
                latencies.push(at.saturating_duration_since(started));
            }
        }
    }
    tasks.abort_all();
    client
        .execute("UPDATE grants SET status = 'live' WHERE id = $1", &[&grant])
        .await?;
    let (l50, l99) = (
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99),
    );
    let c50 = percentile(&mut commits, 0.5);
    println!();
    println!(
        "(e) live grant state: state-changing commit → SSE event at each of {CONSOLES} consoles, {ROUNDS} changes ({} events)",
        latencies.len()
    );
    println!(
        "    p50 {:>8.2} ms   p99 {:>8.2} ms   (target p99 ≤ 250 ms)",
        ms(l50),
        ms(l99)
    );
    println!(
        "    baseline: the state-changing transaction's own round trip, p50 {:.2} ms; the fan-out adds {:.1}× at p50",
        ms(c50),
        ms(l50) / ms(c50).max(0.001)
    );
    Ok(())
}

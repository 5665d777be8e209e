//! `firstkey bench --remote-open`: the homeowner's remote unlock, timed end to end on loopback
//! against a scratch database (created, migrated, dropped), with 1,000 simulated agents connected
//! over TLS (issue 11, "Benchmarks"; target p99 ≤ 100 ms).
//!
//! Each sample is one `POST /api/v1/locks/{id}/remote-open` by a homeowner who signed up, verified
//! their address and enrolled a passkey over HTTP, with a fresh step-up (renewed before it goes
//! stale): HTTP, session, Cedar, mint, audit, inbox, commit, `NOTIFY`, the channel session's
//! delivery, and at the simulated agent the decision the real agent makes (`sim::connect_deciding`:
//! the token verified offline against the trust bundle, scope `remote_open`), then its `Ack` and
//! signed receipt, which the server stores before it answers "opened". Figures:
//!
//! - request → the lock's open (the simulated agent's decision), p50/p99/max;
//! - request → the answer "opened" (the server has the lock's receipt);
//! - baseline, same run, same agents: a plain inbox entry's commit → the agent's receipt of it
//!   (the channel alone), p50/p99, and each figure as a ratio to it.
//!
//! Requests go one at a time to a different lock each (every lock opens once). Nothing is
//! asserted; the target is printed beside the figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::channel::inbox::{self, InboxMessage};
use crate::channel::sim::{self, Delivery, RemoteDecision, SimTarget};
use crate::clock::{Clock, SystemClock};
use crate::demo::client::ApiClient;
use crate::demo::softkey::SoftSecurityKey;
use crate::domain::Slug;
use crate::settings::Settings;
use crate::store::{self, StoreError};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct RemoteBenchOptions {
    /// Simulated agents connected (one lock each).
    pub agents: usize,
    /// Remote opens timed (at most one per agent).
    pub opens: usize,
}

/// Runs the measurement on a scratch database of `server` and prints the figures.
pub async fn run(
    settings: Settings,
    server: tokio_postgres::Config,
    options: RemoteBenchOptions,
) -> anyhow::Result<()> {
    crate::bench::raise_file_limit(options.agents.saturating_mul(2) + 4096);
    let name = format!("firstkey_bench_remote_{}", std::process::id());
    crate::bench::admin(&server, &format!("DROP DATABASE IF EXISTS {name}")).await?;
    crate::bench::admin(&server, &format!("CREATE DATABASE {name}")).await?;
    let result = async {
        let mut config = server.clone();
        config.dbname(&name);
        let pool = store::pool(config.clone(), 32)?;
        store::migrate(&pool).await?;
        let measured = measure(settings, pool.clone(), config, options).await;
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

/// The `per_mille`-th percentile of sorted samples (nearest rank).
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    let Some(max) = sorted.len().checked_sub(1) else {
        return Duration::ZERO;
    };
    let i = (max * per_mille.min(1000) + 500) / 1000;
    sorted.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `#secret` of the verification link mailed to `to` (the outbox holds it until sent).
async fn link_secret(pool: &deadpool_postgres::Pool, to: &str) -> anyhow::Result<String> {
    let client = pool.get().await.map_err(StoreError::from)?;
    let text: String = client
        .query_one(
            "SELECT body_text FROM notification_outbox WHERE recipient = $1
               AND kind = 'account.verify_email' ORDER BY created_at DESC LIMIT 1",
            &[&to],
        )
        .await
        .context("the sign-up mail")?
        .get(0);
    let (_, after) = text.split_once('#').ok_or_else(|| anyhow!("no link"))?;
    Ok(after
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect())
}

async fn measure(
    mut settings: Settings,
    pool: deadpool_postgres::Pool,
    pg_config: tokio_postgres::Config,
    options: RemoteBenchOptions,
) -> anyhow::Result<()> {
    let key_dir = tempfile::tempdir()?;
    settings.key_dir = key_dir.path().to_path_buf();
    settings.listen = ([127, 0, 0, 1], 0).into();
    settings.agent_listen = ([127, 0, 0, 1], 0).into();
    settings.smtp = None;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now();
    let origin = settings.public_origin.clone();
    let channel =
        crate::channel::server::start(&settings, pool.clone(), pg_config, clock.clone()).await?;
    let app = crate::http::Application::build(settings.clone(), pool.clone(), clock.clone())?;
    let base = format!("http://{}", app.local_addr());
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let http = ApiClient::new(&base, origin.as_str())?;

    // The municipality, its issuer key and a root-signed trust bundle the agents verify against.
    let mut c = pool.get().await.map_err(StoreError::from)?;
    let slug = Slug::parse("bench-city")?;
    let (tenant, _) = store::tenancy::ensure_municipality(&c, &slug, "Bench City", now).await?;
    crate::emergency::keys::generate(&mut c, tenant, &settings.key_dir, now)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let root_path = key_dir.path().join("root.pk8");
    crate::emergency::keys::root_generate(&root_path).map_err(|e| anyhow!("{e}"))?;
    let root = crate::emergency::keys::load_pair(&root_path).map_err(|e| anyhow!("{e}"))?;
    let public: [u8; 32] = ring::signature::KeyPair::public_key(&root)
        .as_ref()
        .try_into()
        .map_err(|_| anyhow!("root key"))?;
    let built = crate::emergency::keys::bundle(&mut c, tenant, &root, "localhost", now)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let bundle = Arc::new(
        firstkey_token::TrustBundle::verify(&built.bytes, &firstkey_token::RootPublicKey(public))
            .map_err(|e| anyhow!("trust bundle: {e:?}"))?,
    );
    drop(c);

    // The homeowner, as any: sign up, verify by mail, enrol a passkey, register the home.
    let email = "owner@bench.example";
    http.post(
        "/api/v1/accounts/sign-up",
        &json!({ "municipality": slug.as_str(), "email": email, "display_name": "Owner" }),
        None,
    )
    .await?;
    let secret = link_secret(&pool, email).await?;
    let mut key = SoftSecurityKey::new(origin.as_str())?;
    let cookie = http
        .enrol("/api/v1/accounts/verify", &secret, &mut key)
        .await?;
    let property = http
        .post(
            "/api/v1/properties",
            &json!({ "address": "1 Bench Road" }),
            Some(&cookie),
        )
        .await?;
    let property: Uuid = property
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no property id"))?;

    // The agents: paired locks of that home, each a deciding simulated agent over TLS.
    let locks = {
        let c = pool.get().await.map_err(StoreError::from)?;
        sim::provision(&c, tenant, property, options.agents, now).await?
    };
    let ca = std::fs::read(key_dir.path().join(crate::channel::tls::DEV_CA_FILE))?;
    let target = SimTarget::new(channel.local_addr(), "localhost", &ca)?;
    let (deliveries_tx, mut deliveries) = mpsc::unbounded_channel::<Delivery>();
    let (decisions_tx, mut decisions) = mpsc::unbounded_channel::<RemoteDecision>();
    let ids: Vec<Uuid> = locks.iter().map(|l| l.id).collect();
    let mut connections = Vec::with_capacity(locks.len());
    let started = Instant::now();
    let mut pending = locks.into_iter();
    loop {
        // Fewer handshakes at once than the channel admits per address (16 by default).
        let chunk: Vec<_> = pending.by_ref().take(8).collect();
        if chunk.is_empty() {
            break;
        }
        let attempts = chunk.into_iter().map(|lock| {
            sim::connect_deciding(
                &target,
                lock,
                bundle.clone(),
                clock.clone(),
                deliveries_tx.clone(),
                decisions_tx.clone(),
            )
        });
        for connection in futures_util::future::join_all(attempts).await {
            connections.push(connection?);
        }
    }
    println!(
        "firstkey bench --remote-open: {} agents connected in {:.1} s",
        connections.len(),
        started.elapsed().as_secs_f64()
    );
    // Pairing queued each lock's keypad secret: let those arrive before timing anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while deliveries.try_recv().is_ok() {}

    let opens = options.opens.min(ids.len());
    let mut to_open = Vec::with_capacity(opens);
    let mut to_answer = Vec::with_capacity(opens);
    let mut stepped = Instant::now();
    http.step_up(&cookie, &mut key).await?;
    for lock in ids.iter().take(opens) {
        // A step-up is fresh for 5 minutes; renew it well before, outside the timed part.
        if stepped.elapsed() > Duration::from_secs(120) {
            http.step_up(&cookie, &mut key).await?;
            stepped = Instant::now();
        }
        let t0 = Instant::now();
        let answer = http
            .post(
                &format!("/api/v1/locks/{lock}/remote-open"),
                &json!({ "seconds": 5 }),
                Some(&cookie),
            )
            .await?;
        let answered = t0.elapsed();
        if answer.get("outcome").and_then(Value::as_str) != Some("opened") {
            bail!("remote open of {lock} did not open: {answer}");
        }
        let decided = loop {
            let d = tokio::time::timeout(Duration::from_secs(5), decisions.recv())
                .await
                .context("the agent's decision")?
                .ok_or_else(|| anyhow!("agents gone"))?;
            if d.lock == *lock {
                break d;
            }
        };
        if !decided.opened {
            bail!("the agent refused: {}", decided.reason);
        }
        to_open.push(decided.at.saturating_duration_since(t0));
        to_answer.push(answered);
    }

    // Baseline: a plain inbox entry (a revocation of nothing) committed → received by the agent.
    while deliveries.try_recv().is_ok() {}
    let mut baseline = Vec::with_capacity(opens);
    for (i, lock) in ids.iter().take(opens).enumerate() {
        let mut c = pool.get().await.map_err(StoreError::from)?;
        let tx = c.transaction().await.map_err(StoreError::from)?;
        let mut hash = [0u8; 32];
        for (h, b) in hash
            .iter_mut()
            .zip(u64::try_from(i).unwrap_or(0).to_be_bytes())
        {
            *h = b;
        }
        inbox::push(
            &tx,
            tenant,
            *lock,
            &InboxMessage::Revocation {
                token_hash: hash,
                expires_at: u64::try_from(clock.now().timestamp()).unwrap_or(0) + 60,
            },
            clock.now(),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        let committed = Instant::now();
        let got = loop {
            let d = tokio::time::timeout(Duration::from_secs(5), deliveries.recv())
                .await
                .context("the agent's delivery")?
                .ok_or_else(|| anyhow!("agents gone"))?;
            if d.lock == *lock {
                break d;
            }
        };
        baseline.push(got.at.saturating_duration_since(committed));
    }

    for v in [&mut to_open, &mut to_answer, &mut baseline] {
        v.sort_unstable();
    }
    let base50 = percentile(&baseline, 500);
    let base99 = percentile(&baseline, 990);
    let ratio = |d: Duration, b: Duration| {
        if b.is_zero() {
            f64::NAN
        } else {
            d.as_secs_f64() / b.as_secs_f64()
        }
    };
    println!(
        "remote open, {} samples, {} agents connected ({} still connected at the end):",
        to_open.len(),
        ids.len(),
        connections.iter().filter(|c| c.is_connected()).count()
    );
    for (what, v) in [
        ("request → lock opens (agent verified the token)", &to_open),
        ("request → answer \"opened\" (receipt stored)", &to_answer),
    ] {
        let (p50, p99) = (percentile(v, 500), percentile(v, 990));
        println!(
            "  {what}: p50 {:.2} ms ({:.1}× baseline), p99 {:.2} ms ({:.1}× baseline), max {:.2} ms   target p99 ≤ 100 ms",
            ms(p50),
            ratio(p50, base50),
            ms(p99),
            ratio(p99, base99),
            ms(v.last().copied().unwrap_or_default()),
        );
    }
    println!(
        "  baseline, inbox commit → agent received: p50 {:.2} ms, p99 {:.2} ms (1.0×)",
        ms(base50),
        ms(base99)
    );
    drop(connections);
    handle.stop(true).await;
    let _ = server.await;
    channel.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 500), Duration::from_millis(51));
        assert_eq!(percentile(&v, 990), Duration::from_millis(99));
        assert_eq!(percentile(&v, 0), Duration::from_millis(1));
        assert_eq!(percentile(&v, 1000), Duration::from_millis(100));
        assert_eq!(percentile(&[], 990), Duration::ZERO);
    }
}

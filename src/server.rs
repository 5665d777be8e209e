//! Process-level orchestration shared by the CLI commands: open the database (configured or embedded
//! default), migrate, and run the HTTP application.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use secrecy::ExposeSecret;

use crate::clock::{Clock, SystemClock};
use crate::http::Application;
use crate::settings::Settings;
use crate::store::{self, StoreError, embedded};

/// An open database: the pool, what it is, and the private cluster (if any) kept alive with it.
pub struct Database {
    /// Connection pool.
    pub pool: Pool,
    /// How to connect, for connections outside the pool (the agent channel's `LISTEN`).
    pub config: tokio_postgres::Config,
    /// One line for the operator (never contains a password).
    pub description: String,
    /// Stops the private cluster when dropped.
    _cluster: Option<embedded::PrivateCluster>,
}

/// Opens the configured database, or the embedded default when none is configured.
pub async fn open_database(settings: &Settings) -> anyhow::Result<Database> {
    let (config, description, cluster) = match &settings.database_url {
        Some(url) => {
            let config: tokio_postgres::Config = url
                .expose_secret()
                .parse()
                .context("setting `database_url` is invalid")?;
            let description = embedded::describe(&config);
            (config, description, None)
        }
        None => {
            let resolved = embedded::resolve(&settings.embedded_pg_dir).await?;
            (resolved.config, resolved.description, resolved.cluster)
        }
    };
    let pool = store::pool(config.clone(), settings.db_pool_size)?;
    Ok(Database {
        pool,
        config,
        description,
        _cluster: cluster,
    })
}

/// Migrates, retrying while the database is unreachable so a replica started before its database
/// comes up by itself. Gives up after `patience`.
pub async fn migrate_with_patience(pool: &Pool, patience: Duration) -> Result<usize, StoreError> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match store::migrate(pool).await {
            Err(StoreError::Unavailable(e)) if started.elapsed() < patience => {
                tracing::warn!(error = %e, retry_in = ?delay, "database unavailable; retrying migrations");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// `firstkey serve` (and the serving half of `demo`): migrate, bind, run until stopped.
pub async fn serve(
    settings: Settings,
    database: Database,
    on_ready: impl FnOnce(&Application),
) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mail_worker = spawn_mail_worker(&settings, &database.pool, clock.clone())?;
    let channel = crate::channel::server::start(
        &settings,
        database.pool.clone(),
        database.config.clone(),
        clock.clone(),
    )
    .await?;
    let app = Application::build(settings, database.pool.clone(), clock)?;
    tracing::info!(address = %app.local_addr(), scheme = app.scheme(), database = %database.description, "listening");
    if let Some(address) = app.metrics_addr() {
        tracing::info!(%address, "metrics listening (plain HTTP, /metrics only)");
    }
    on_ready(&app);
    app.run_until_stopped().await?;
    channel.stop();
    if let Some(worker) = mail_worker {
        worker.abort();
    }
    tracing::info!("stopped");
    drop(database);
    Ok(())
}

/// Starts the outbox delivery worker when an SMTP relay is configured; without one, mail waits in
/// the outbox (nothing is lost) until a server with a relay runs.
pub fn spawn_mail_worker(
    settings: &Settings,
    pool: &Pool,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(smtp) = &settings.smtp else {
        tracing::warn!("no smtp_relay configured: notifications wait in the outbox");
        return Ok(None);
    };
    let mailer = crate::notify::Mailer::new(smtp).context("setting `smtp_relay`")?;
    Ok(Some(tokio::spawn(crate::notify::run_worker(
        pool.clone(),
        mailer,
        clock,
        Duration::from_millis(500),
    ))))
}

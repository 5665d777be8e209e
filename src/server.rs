//! Process-level orchestration shared by the CLI commands: open the database (configured or embedded
//! default), migrate, and run the HTTP application.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use deadpool_postgres::{Pool, PoolError};
use secrecy::ExposeSecret;

use crate::clock::{Clock, SystemClock};
use crate::http::Application;
use crate::settings::{Settings, SettingsError};
use crate::store::{self, embedded};

/// An open database: the pool, what it is, and the private cluster (if any) kept alive with it.
pub struct Database {
    /// Connection pool.
    pub pool: Pool,
    /// How to connect, for connections outside the pool (the agent channel's `LISTEN`).
    pub config: tokio_postgres::Config,
    /// One line for the operator (never contains a password).
    pub description: String,
    /// Where it is, for error messages: host and port, database, role (never a password).
    pub target: String,
    /// Whether it came from the `database_url` setting (else the embedded default).
    pub configured: bool,
    /// Stops the private cluster when dropped.
    _cluster: Option<embedded::PrivateCluster>,
}

/// Opens the configured database, or the embedded default when none is configured.
pub async fn open_database(settings: &Settings) -> anyhow::Result<Database> {
    let (config, description, cluster) = match &settings.database_url {
        Some(url) => {
            let config: tokio_postgres::Config =
                url.expose_secret()
                    .parse()
                    .map_err(|e| SettingsError::Invalid {
                        setting: "database_url".to_owned(),
                        reason: format!("not a PostgreSQL connection string ({e})"),
                    })?;
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
        target: embedded::target(&config),
        config,
        description,
        configured: settings.database_url.is_some(),
        _cluster: cluster,
    })
}

/// Why a connection to PostgreSQL failed, as far as waiting is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFault {
    /// Waiting will not help: the database or role does not exist, the password is wrong, the
    /// connection string is unusable, the role may not connect.
    Permanent(String),
    /// The server may be starting, restarting or overloaded: a refused or timed-out connection,
    /// "the database system is starting up", too many connections.
    Transient(String),
}

/// Sorts a connection error into [`ConnectFault`], with the server's message as the reason.
pub fn classify_connect_error(e: &tokio_postgres::Error) -> ConnectFault {
    use tokio_postgres::error::SqlState;
    match e.as_db_error() {
        Some(db) => {
            let reason = db.message().to_owned();
            let code = db.code();
            if *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || code.code().starts_with("08")
            {
                ConnectFault::Transient(reason)
            } else {
                // 28000 (no such role, not allowed), 28P01 (password), 3D000 (no such database),
                // 42501 (no CONNECT privilege), …: an operator has to change something.
                ConnectFault::Permanent(reason)
            }
        }
        None => {
            let reason = e.to_string();
            if reason.starts_with("invalid configuration") {
                ConnectFault::Permanent(reason)
            } else {
                ConnectFault::Transient(reason)
            }
        }
    }
}

/// Waits until a first connection succeeds, retrying transient faults for up to `patience` (so a
/// replica started before its database comes up by itself). A permanent fault ends the wait at
/// once with one line naming host and port, database and role; it counts as a bad `database_url`
/// (exit code 2) when that setting was given.
pub async fn wait_for_database(database: &Database, patience: Duration) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        let fault = match database.pool.get().await {
            Ok(_) => return Ok(()),
            Err(PoolError::Backend(e)) => classify_connect_error(&e),
            Err(PoolError::Timeout(_)) => ConnectFault::Transient("no answer in time".to_owned()),
            Err(e) => ConnectFault::Transient(e.to_string()),
        };
        match fault {
            ConnectFault::Permanent(reason) if database.configured => {
                return Err(SettingsError::Invalid {
                    setting: "database_url".to_owned(),
                    reason: format!("{}: {reason}", database.target),
                }
                .into());
            }
            ConnectFault::Permanent(reason) => {
                return Err(anyhow!("{}: {reason}", database.target));
            }
            ConnectFault::Transient(reason) if started.elapsed() < patience => {
                tracing::warn!(database = %database.target, error = %reason, retry_in = ?delay, "database unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            ConnectFault::Transient(reason) => {
                return Err(anyhow!(
                    "{} did not answer within {} s: {reason}",
                    database.target,
                    patience.as_secs()
                ));
            }
        }
    }
}

/// Waits for the database ([`wait_for_database`]), then applies pending migrations.
pub async fn migrate_with_patience(
    database: &Database,
    patience: Duration,
) -> anyhow::Result<usize> {
    wait_for_database(database, patience).await?;
    Ok(store::migrate(&database.pool).await?)
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
    let mut app = Application::build(settings, database.pool.clone(), clock)?;
    app.listen_grant_events_on(database.config.clone());
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

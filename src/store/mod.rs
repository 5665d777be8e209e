//! Storage: the PostgreSQL pool, migrations, readiness, and the repositories of each aggregate.
//!
//! Every repository function that touches tenant-owned rows takes a [`Tenant`] and filters by it in SQL;
//! SQL lives beside the function that runs it and is always parameterised. This module knows nothing
//! of HTTP.

pub mod embedded;
pub mod people;
pub mod plan_history;
pub mod properties;
pub mod registrations;
pub mod tenancy;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

pub use tenancy::Tenant;

/// The migrations in `sql/`, compiled in.
mod embedded_migrations {
    #![allow(missing_docs)]
    refinery::embed_migrations!("sql");
}
use embedded_migrations::migrations;

/// A fault of the storage layer. Core code maps it; clients never see its text.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had from the pool (database down, pool exhausted).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A query failed.
    #[error("database query failed")]
    Query(#[from] tokio_postgres::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The requested row does not exist in this tenant's scope.
    #[error("not found")]
    NotFound,
    /// A uniqueness or reference constraint refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// How long a request waits for a pooled connection before the database counts as unavailable.
const POOL_WAIT: Duration = Duration::from_secs(2);

/// Builds the connection pool. Connections are opened lazily, so this succeeds while the database is
/// down, and the pool recovers by itself when it returns.
pub fn pool(config: tokio_postgres::Config, max_size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .recycle_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// Advisory lock key that serialises migrations between replicas starting at once.
const MIGRATION_LOCK: i64 = 0x6669_7273_746b_6579; // "firstkey"

/// Applies pending migrations. Safe to run from several replicas at once; a second run is a no-op.
/// Returns the number of migrations applied by this call.
pub async fn migrate(pool: &Pool) -> Result<usize, StoreError> {
    migrate_through(pool, refinery::Target::Latest).await
}

/// Applies the pending migrations up to and including `version` only (tests of a migration that
/// moves data arrange the data the version before it left).
pub async fn migrate_to(pool: &Pool, version: u32) -> Result<usize, StoreError> {
    migrate_through(pool, refinery::Target::Version(version)).await
}

async fn migrate_through(pool: &Pool, target: refinery::Target) -> Result<usize, StoreError> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let client_ref: &mut tokio_postgres::Client = &mut client;
    let outcome = migrations::runner()
        .set_grouped(true)
        .set_target(target)
        .run_async(client_ref)
        .await
        .map(|report| report.applied_migrations().len())
        .map_err(|e| StoreError::Migration(e.to_string()));
    // Unlock even when the run failed; the session ends with the connection anyway.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    outcome
}

/// The newest migration version compiled into this binary.
pub fn latest_migration() -> i32 {
    migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i32::try_from(m.version()).unwrap_or(i32::MAX))
        .max()
        .unwrap_or(0)
}

/// Number of embedded migrations (versions may have gaps: each team owns its own numbers).
pub fn migration_count() -> usize {
    migrations::runner().get_migrations().len()
}

/// A fingerprint of the migrations compiled into this binary (versions, names, checksums), so
/// tooling can tell which schema a database built by this binary has.
pub fn migrations_fingerprint() -> String {
    let mut text = String::new();
    for m in migrations::runner().get_migrations() {
        text.push_str(&format!("{}:{}:{};", m.version(), m.name(), m.checksum()));
    }
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

/// Why the store is not ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Reachable and migrated to this binary's schema.
    Ready,
    /// The database could not be reached.
    Unreachable,
    /// Reachable, but the schema is behind (or ahead of) this binary.
    SchemaMismatch {
        /// Newest applied migration, if any.
        applied: Option<i32>,
        /// Newest migration this binary carries.
        expected: i32,
    },
}

/// Checks that the database answers and its schema is this binary's.
pub async fn readiness(pool: &Pool) -> Readiness {
    let Ok(client) = pool.get().await else {
        return Readiness::Unreachable;
    };
    let applied = match client
        .query_opt("SELECT max(version) FROM refinery_schema_history", &[])
        .await
    {
        Ok(row) => row.and_then(|r| r.get::<_, Option<i32>>(0)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
        Err(_) => return Readiness::Unreachable,
    };
    let expected = latest_migration();
    if applied == Some(expected) {
        Readiness::Ready
    } else {
        Readiness::SchemaMismatch { applied, expected }
    }
}

/// Whether `query` returns at least one row. The one way to ask "is there one?": it wraps the query
/// in `SELECT EXISTS (…)`, so any number of matching rows is a plain yes (`query_opt` would fail on
/// the second row).
pub async fn exists(
    client: &impl deadpool_postgres::GenericClient,
    query: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<bool, StoreError> {
    let row = client
        .query_one(&format!("SELECT EXISTS ({query})"), params)
        .await?;
    Ok(row.get(0))
}

/// Maps a write error to [`StoreError::Conflict`] when a constraint refused it.
pub(crate) fn conflict_or_query(e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::FOREIGN_KEY_VIOLATION => {
            let what = e
                .as_db_error()
                .and_then(|d| d.constraint())
                .unwrap_or("constraint")
                .to_owned();
            StoreError::Conflict(what)
        }
        _ => StoreError::Query(e),
    }
}

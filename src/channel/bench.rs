//! Benchmark hooks for `firstkey bench` (issue 5): push latency with many agents connected, and
//! memory per idle connected agent. Simulated agents ([`super::sim`]) connect over real TLS to a
//! running channel listener; figures are returned, not asserted.
//!
//! When the simulated agents run in the same process as the listener (the simple way), the RSS
//! growth counts both ends of every connection; the per-agent figure is then an upper bound for
//! the server side alone.

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::inbox::{self, InboxMessage};
use super::sim::{self, SimConnection, SimError, SimLock, SimTarget};
use crate::clock::Clock;
use crate::store::{StoreError, Tenant};

/// Why a benchmark run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A simulated agent failed.
    #[error(transparent)]
    Agent(#[from] SimError),
    /// A pushed entry did not reach its agent in time.
    #[error("entry {seq} for lock {lock} not delivered within {timeout:?}")]
    Lost {
        /// The lock.
        lock: Uuid,
        /// The entry.
        seq: i64,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Connected simulated agents and where their deliveries arrive.
pub struct Fleet {
    /// The locks, in connection order.
    pub locks: Vec<SimLock>,
    connections: Vec<SimConnection>,
    deliveries: mpsc::UnboundedReceiver<sim::Delivery>,
    sender: mpsc::UnboundedSender<sim::Delivery>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("agents", &self.locks.len())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Creates `n` paired locks on `property` and connects one simulated agent for each,
    /// `concurrency` handshakes at a time.
    pub async fn connect(
        pool: &Pool,
        tenant: Tenant,
        property: Uuid,
        target: &SimTarget,
        n: usize,
        concurrency: usize,
        clock: &dyn Clock,
    ) -> Result<Self, BenchError> {
        let locks = Self::provision(pool, tenant, property, n, clock).await?;
        Self::connect_locks(locks, target, concurrency).await
    }

    /// Creates `n` paired locks on `property` (no connection yet).
    pub async fn provision(
        pool: &Pool,
        tenant: Tenant,
        property: Uuid,
        n: usize,
        clock: &dyn Clock,
    ) -> Result<Vec<SimLock>, BenchError> {
        let client = pool.get().await.map_err(StoreError::from)?;
        Ok(sim::provision(&client, tenant, property, n, clock.now()).await?)
    }

    /// Connects one simulated agent per lock, `concurrency` handshakes at a time.
    pub async fn connect_locks(
        locks: Vec<SimLock>,
        target: &SimTarget,
        concurrency: usize,
    ) -> Result<Self, BenchError> {
        Self::connect_spread(locks, std::slice::from_ref(target), concurrency).await
    }

    /// Connects one simulated agent per lock, the i-th to `targets[i % len]` (replicas),
    /// `concurrency` handshakes at a time.
    pub async fn connect_spread(
        locks: Vec<SimLock>,
        targets: &[SimTarget],
        concurrency: usize,
    ) -> Result<Self, BenchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut fleet = Self {
            locks: Vec::new(),
            connections: Vec::new(),
            deliveries: rx,
            sender: tx,
        };
        fleet.connect_more(locks, targets, concurrency).await?;
        Ok(fleet)
    }

    /// Connects more agents to the fleet, continuing the round robin over `targets`.
    pub async fn connect_more(
        &mut self,
        locks: Vec<SimLock>,
        targets: &[SimTarget],
        concurrency: usize,
    ) -> Result<(), BenchError> {
        if targets.is_empty() {
            return Ok(());
        }
        self.connections.reserve(locks.len());
        for chunk in locks.chunks(concurrency.max(1)) {
            let first = self.connections.len();
            let attempts = chunk.iter().enumerate().filter_map(|(i, lock)| {
                let target = targets.get((first + i) % targets.len())?;
                Some(sim::connect(target, lock, 0, self.sender.clone()))
            });
            for connection in futures_util::future::join_all(attempts).await {
                self.connections.push(connection?);
            }
        }
        self.locks.extend(locks);
        Ok(())
    }

    /// Every delivery that arrived so far, in arrival order.
    pub fn drain_deliveries(&mut self) -> Vec<sim::Delivery> {
        let mut out = Vec::new();
        while let Ok(d) = self.deliveries.try_recv() {
            out.push(d);
        }
        out
    }

    /// Number of agents still connected.
    /// Waits for the next delivery to `lock` (others are discarded); when it arrived, or `None` on
    /// timeout.
    pub async fn next_delivery_for(&mut self, lock: Uuid, timeout: Duration) -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.deliveries.recv()).await {
                Ok(Some(d)) if d.lock == lock => return Some(d.at),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Connected agents.
    pub fn connected(&self) -> usize {
        self.connections.iter().filter(|c| c.is_connected()).count()
    }
}

/// Push latency figures.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Entries pushed.
    pub samples: usize,
    /// Median, from the start of the pushing transaction to the agent receiving the entry.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Worst.
    pub max: Duration,
}

/// Pushes `pushes` entries one after another, round-robin over the fleet's locks, each in its own
/// transaction through `pool`, and measures how long each takes to reach its agent.
pub async fn push_latency(
    pool: &Pool,
    tenant: Tenant,
    fleet: &mut Fleet,
    pushes: usize,
    clock: &dyn Clock,
) -> Result<Latency, BenchError> {
    let timeout = Duration::from_secs(10);
    let mut samples = Vec::with_capacity(pushes);
    for i in 0..pushes {
        let Some(lock) = fleet.locks.get(i % fleet.locks.len().max(1)).map(|l| l.id) else {
            break;
        };
        let started = Instant::now();
        let seq = {
            let mut client = pool.get().await.map_err(StoreError::from)?;
            let tx = client.transaction().await.map_err(StoreError::from)?;
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&u64::try_from(i).unwrap_or(0).to_be_bytes());
            let seq = inbox::push(
                &tx,
                tenant,
                lock,
                &InboxMessage::Revocation {
                    token_hash: hash,
                    expires_at: 4_000_000_000,
                },
                clock.now(),
            )
            .await?;
            tx.commit().await.map_err(StoreError::from)?;
            seq
        };
        let wanted = u64::try_from(seq).unwrap_or(0);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, fleet.deliveries.recv()).await {
                Ok(Some(d)) if d.lock == lock && d.seq == wanted => {
                    samples.push(d.at.saturating_duration_since(started));
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Err(BenchError::Lost { lock, seq, timeout }),
            }
        }
    }
    samples.sort();
    let pick = |q: f64| {
        let last = samples.len().saturating_sub(1);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((last as f64) * q).round() as usize;
        samples.get(index).copied().unwrap_or_default()
    };
    Ok(Latency {
        samples: samples.len(),
        p50: pick(0.50),
        p99: pick(0.99),
        max: samples.last().copied().unwrap_or_default(),
    })
}

/// Resident set size of this process, in bytes (Linux; `None` elsewhere).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(4096))
}

/// Memory figures for idle agents.
#[derive(Debug, Clone, Copy)]
pub struct IdleMemory {
    /// Agents connected and idle.
    pub agents: usize,
    /// RSS before connecting them, bytes.
    pub rss_before: u64,
    /// RSS with all of them connected and idle, bytes.
    pub rss_after: u64,
}

impl IdleMemory {
    /// RSS growth per agent, bytes.
    pub fn per_agent(&self) -> u64 {
        self.rss_after
            .saturating_sub(self.rss_before)
            .checked_div(u64::try_from(self.agents).unwrap_or(0))
            .unwrap_or(0)
    }
}

/// Connects `n` idle agents and measures this process's RSS growth (see the module note on what
/// it includes). The fleet is returned so the caller decides when they hang up.
pub async fn idle_memory(
    pool: &Pool,
    tenant: Tenant,
    property: Uuid,
    target: &SimTarget,
    n: usize,
    clock: &dyn Clock,
) -> Result<(IdleMemory, Fleet), BenchError> {
    let locks = Fleet::provision(pool, tenant, property, n, clock).await?;
    let rss_before = rss_bytes().unwrap_or(0);
    let fleet = Fleet::connect_locks(locks, target, 64).await?;
    // Let handshakes' transient buffers be freed and sessions settle into their idle wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_bytes().unwrap_or(0);
    Ok((
        IdleMemory {
            agents: fleet.connected(),
            rss_before,
            rss_after,
        },
        fleet,
    ))
}

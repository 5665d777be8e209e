//! Waking the sessions of a lock on this replica, and the one `LISTEN` connection per replica that
//! turns other replicas' `NOTIFY`s into such wake-ups.
//!
//! A wake-up carries no data: a woken session reads the lock's inbox from the database after what it
//! already sent. So a spurious wake-up costs one query, and a missed one is repaired by waking every
//! session: [`listen`] does that each time its connection is (re)established, because notifications
//! sent while it was down are gone. [`tokio::sync::Notify`] keeps a permit when nobody is waiting, so
//! a wake-up that arrives while a session is busy is not lost either.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use super::inbox::NOTIFY_CHANNEL;

/// One registered session: its registration id and what wakes it.
type Session = (u64, Arc<Notify>);

/// The sessions on this replica, by lock.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<Uuid, Vec<Session>>>,
    next_id: AtomicU64,
}

/// A session's registration; dropping it unregisters the session.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    lock: Uuid,
    id: u64,
    notify: Arc<Notify>,
}

impl Registration {
    /// Completes when the session has been woken since it last waited.
    pub async fn woken(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        crate::metrics::count(|m| m.agents_connected.dec());
        if let Ok(mut map) = self.registry.sessions.lock()
            && let Some(list) = map.get_mut(&self.lock)
        {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.lock);
            }
        }
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a session of `lock`.
    pub fn register(self: &Arc<Self>, lock: Uuid) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        if let Ok(mut map) = self.sessions.lock() {
            map.entry(lock).or_default().push((id, notify.clone()));
        }
        crate::metrics::count(|m| m.agents_connected.inc());
        Registration {
            registry: self.clone(),
            lock,
            id,
            notify,
        }
    }

    /// Wakes every session of `lock` on this replica; returns how many there were.
    pub fn wake(&self, lock: Uuid) -> usize {
        let Ok(map) = self.sessions.lock() else {
            return 0;
        };
        map.get(&lock).map_or(0, |list| {
            for (_, n) in list {
                n.notify_one();
            }
            list.len()
        })
    }

    /// Wakes every session on this replica.
    pub fn wake_all(&self) -> usize {
        let Ok(map) = self.sessions.lock() else {
            return 0;
        };
        let mut count = 0usize;
        for list in map.values() {
            for (_, n) in list {
                n.notify_one();
                count = count.saturating_add(1);
            }
        }
        count
    }

    /// Number of sessions registered.
    pub fn len(&self) -> usize {
        self.sessions
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Delays between attempts to (re)establish the `LISTEN` connection: doubling from `base` up to
/// `max` while attempts fail, and back to `base` as soon as listening succeeded, so that a second
/// outage is retried as promptly as the first.
#[derive(Debug, Clone)]
pub struct ListenBackoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl ListenBackoff {
    /// 100 ms doubling to 5 s.
    pub fn new() -> Self {
        Self::with(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// `base` doubling to `max`.
    pub fn with(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            next: base,
        }
    }

    /// The delay before the next attempt, after a failure or a lost connection.
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    /// Listening (re)started: the next outage starts again from `base`.
    pub fn listening(&mut self) {
        self.next = self.base;
    }
}

impl Default for ListenBackoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps one `LISTEN firstkey_inbox` connection to `config` forever, waking the sessions of each
/// notified lock. After every (re)connection it wakes all sessions, since notifications sent while it
/// was down were lost. `ready` is notified each time listening (re)starts.
pub async fn listen(config: tokio_postgres::Config, registry: Arc<Registry>, ready: Arc<Notify>) {
    let mut backoff = ListenBackoff::new();
    loop {
        match listen_once(&config, &registry, &ready, &mut backoff).await {
            Ok(()) => tracing::warn!("agent channel LISTEN connection closed; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, "agent channel LISTEN connection failed")
            }
        }
        let delay = backoff.delay();
        tracing::debug!(retry_in = ?delay, "agent channel LISTEN reconnect");
        tokio::time::sleep(delay).await;
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    registry: &Registry,
    ready: &Notify,
    backoff: &mut ListenBackoff,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {NOTIFY_CHANNEL}");
    let listening = client.batch_execute(&statement);
    tokio::pin!(listening);
    // The connection must be polled for the LISTEN itself to complete.
    loop {
        tokio::select! {
            done = &mut listening => { done?; break; }
            message = messages.next() => match message {
                Some(Ok(m)) => dispatch(registry, m),
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
    backoff.listening();
    let woken = registry.wake_all();
    tracing::info!(
        sessions = woken,
        "agent channel listening for inbox notifications"
    );
    ready.notify_waiters();
    while let Some(message) = messages.next().await {
        dispatch(registry, message?);
    }
    Ok(())
}

fn dispatch(registry: &Registry, message: AsyncMessage) {
    if let AsyncMessage::Notification(n) = message
        && n.channel() == NOTIFY_CHANNEL
    {
        match Uuid::parse_str(n.payload()) {
            Ok(lock) => {
                registry.wake(lock);
            }
            Err(_) => tracing::warn!("inbox notification with a payload that is not a lock id"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_backoff_doubles_to_its_cap_and_restarts_after_listening() {
        let ms = Duration::from_millis;
        let mut b = ListenBackoff::with(ms(100), ms(500));
        let first: Vec<_> = (0..5).map(|_| b.delay()).collect();
        assert_eq!(first, vec![ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.listening();
        assert_eq!(b.delay(), ms(100));
    }

    #[tokio::test]
    async fn wake_reaches_registered_sessions_and_keeps_a_permit() {
        let registry = Registry::new();
        let lock = Uuid::new_v4();
        let a = registry.register(lock);
        let b = registry.register(lock);
        let other = registry.register(Uuid::new_v4());
        assert_eq!(registry.wake(lock), 2);
        // The permit was stored: both complete without a second wake-up.
        a.woken().await;
        b.woken().await;
        assert_eq!(registry.wake_all(), 3);
        other.woken().await;
        drop(a);
        assert_eq!(registry.wake(lock), 1);
        drop(b);
        assert_eq!(registry.wake(lock), 0);
        assert_eq!(registry.len(), 1);
    }
}

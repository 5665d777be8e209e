//! The live state of grants, as the dispatcher console shows it, and the one `LISTEN` connection per
//! replica that tells consoles when it changed.
//!
//! A grant's state is derived from what is stored (the grant, its newest token, that token's receipt),
//! so a reload shows exactly what the live page shows. Every transaction that changes one of those
//! rows notifies `firstkey_grant_state` with `'<municipality> <incident>'` (triggers of migration
//! V18), so the change reaches every replica's consoles however it happened (a dispatcher here, a
//! responder on another replica, a lock's receipt on a third).
//!
//! [`GrantEvents`] holds one `LISTEN` connection per replica and fans each notification out to the
//! consoles subscribed on this replica (a broadcast channel; a console that falls behind refreshes
//! once). Subscriptions are bounded per session ([`MAX_PER_SESSION`]: a new one ends the session's
//! oldest, which is usually a page the browser has left but whose connection the server has not
//! yet seen close) and per replica ([`MAX_SUBSCRIBERS`]: beyond it, refused); a notification
//! carries no data, so a spurious one costs one query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use super::EmergencyError;
use crate::channel::wake::ListenBackoff;
use crate::store::Tenant;

/// The notification channel of grant-state changes.
pub const NOTIFY_CHANNEL: &str = "firstkey_grant_state";
/// Most live-state streams one session may hold open at once.
pub const MAX_PER_SESSION: usize = 4;
/// Most live-state streams one replica serves at once.
pub const MAX_SUBSCRIBERS: usize = 2000;
/// Notifications buffered per subscriber before it is told it lagged (it then refreshes).
const BUFFER: usize = 256;

/// Where a grant stands, in the order a successful entry passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// The plan asks the homeowner's live consent first; no answer yet.
    WaitingForConsent,
    /// The homeowner refused: the grant never went live.
    Refused,
    /// The plan asks for a second dispatcher's approval, not given yet.
    WaitingForApproval,
    /// Responders may ask for tokens; none is outstanding.
    Live,
    /// A token was minted for a lock.
    TokenIssued,
    /// A session of the lock was sent the token.
    Pushed,
    /// The lock acknowledged the token.
    Acknowledged,
    /// The lock opened the door with the token.
    DoorOpened,
    /// The lock refused the token at the door.
    DoorDenied,
    /// Revoked, expired, or its incident closed.
    Ended,
}

impl GrantState {
    /// The state in the console's words.
    pub fn words(self) -> &'static str {
        match self {
            Self::WaitingForConsent => "waiting for the homeowner",
            Self::Refused => "refused by the homeowner",
            Self::WaitingForApproval => "waiting for approval",
            Self::Live => "live",
            Self::TokenIssued => "token issued",
            Self::Pushed => "pushed to the lock",
            Self::Acknowledged => "acknowledged by the lock",
            Self::DoorOpened => "door opened",
            Self::DoorDenied => "door denied",
            Self::Ended => "ended",
        }
    }

    /// The state's code, as the stream's JSON names it.
    pub fn code(self) -> &'static str {
        match self {
            Self::WaitingForConsent => "waiting_for_consent",
            Self::Refused => "refused",
            Self::WaitingForApproval => "waiting_for_approval",
            Self::Live => "live",
            Self::TokenIssued => "token_issued",
            Self::Pushed => "pushed",
            Self::Acknowledged => "acknowledged",
            Self::DoorOpened => "door_opened",
            Self::DoorDenied => "door_denied",
            Self::Ended => "ended",
        }
    }

    /// The badge style of the state (a CSS class of `portal.css`).
    pub fn badge(self) -> &'static str {
        match self {
            Self::WaitingForApproval | Self::WaitingForConsent => "waiting",
            Self::DoorDenied | Self::Refused => "bad",
            Self::Ended => "muted",
            _ => "ok",
        }
    }

    /// Derives the state from a grant's status and window, its newest token and that token's receipt.
    fn derive(
        status: &str,
        ends_at: DateTime<Utc>,
        token: Option<(&str, bool)>,
        receipt: Option<&str>,
        now: DateTime<Utc>,
    ) -> Self {
        match status {
            "awaiting_consent" => return Self::WaitingForConsent,
            "refused" => return Self::Refused,
            "awaiting_approval" => return Self::WaitingForApproval,
            "live" if now < ends_at => {}
            _ => return Self::Ended,
        }
        match (token, receipt) {
            (_, Some("allow")) | (Some(("used", _)), _) => Self::DoorOpened,
            (_, Some(_)) => Self::DoorDenied,
            (Some(("delivered", _)), None) => Self::Acknowledged,
            (Some(("issued", true)), None) => Self::Pushed,
            (Some(("issued", false)), None) => Self::TokenIssued,
            _ => Self::Live,
        }
    }
}

/// One grant's live state, as the console's event carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantStatus {
    /// The grant.
    pub grant: Uuid,
    /// Its state.
    pub state: GrantState,
    /// The state in words.
    pub words: &'static str,
    /// The badge style.
    pub badge: &'static str,
    /// Where the homeowner's live consent stands, in words, for a grant that asked for it
    /// ("asking the homeowner (until …)", "the homeowner approved", "no answer from the homeowner:
    /// …").
    pub consent: Option<String>,
}

/// The live state of every grant of an incident of `tenant`, oldest grant first.
pub async fn states_of_incident(
    client: &impl GenericClient,
    tenant: Tenant,
    incident: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<GrantStatus>, EmergencyError> {
    let rows = client
        .query(
            "SELECT g.id, g.status, g.ends_at, t.status, t.pushed_at IS NOT NULL, r.decision,
                    c.status, c.fallback, c.expires_at
             FROM grants g
             LEFT JOIN grant_consents c ON c.municipality_id = g.municipality_id AND c.grant_id = g.id
             LEFT JOIN LATERAL (
                 SELECT t.status, t.pushed_at, t.lock_id, t.token_hash FROM issued_tokens t
                 WHERE t.municipality_id = g.municipality_id AND t.grant_id = g.id
                 ORDER BY t.issued_at DESC, t.cti LIMIT 1) t ON true
             LEFT JOIN LATERAL (
                 SELECT r.decision FROM receipts r
                 WHERE r.lock_id = t.lock_id AND r.token_hash = t.token_hash
                 ORDER BY r.seq DESC LIMIT 1) r ON true
             WHERE g.municipality_id = $1 AND g.incident_id = $2
             ORDER BY g.created_at, g.id",
            &[&tenant.id(), &incident],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let token_status: Option<String> = r.get(3);
            let pushed: Option<bool> = r.get(4);
            let decision: Option<String> = r.get(5);
            let state = GrantState::derive(
                r.get::<_, &str>(1),
                r.get(2),
                token_status
                    .as_deref()
                    .map(|s| (s, pushed.unwrap_or(false))),
                decision.as_deref(),
                now,
            );
            let consent = match (
                r.get::<_, Option<&str>>(6),
                r.get::<_, Option<&str>>(7),
                r.get::<_, Option<DateTime<Utc>>>(8),
            ) {
                (Some(status), Some(fallback), Some(until)) => Some(super::consent::words(
                    super::consent::ConsentState::parse(status),
                    crate::plans::ConsentFallback::parse(fallback)
                        .unwrap_or(crate::plans::ConsentFallback::SecondDispatcher),
                    until,
                )),
                _ => None,
            };
            GrantStatus {
                grant: r.get(0),
                state,
                words: state.words(),
                badge: state.badge(),
                consent,
            }
        })
        .collect())
}

/// What a subscriber hears: a change to one incident, or "anything may have changed" (after the
/// `LISTEN` connection was re-established, or when the subscriber lagged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The grants of this incident of this municipality changed.
    Incident {
        /// Municipality.
        tenant: Uuid,
        /// Incident.
        incident: Uuid,
    },
    /// Refresh everything.
    Everything,
    /// The subscription was ended to make room for a newer one of its session: stop.
    Evicted,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// This replica serves [`MAX_SUBSCRIBERS`] streams.
    #[error("too many live views open on this server")]
    ReplicaFull,
}

/// A session's subscriptions, oldest first: (id, what ends it).
type Views = Vec<(u64, Arc<tokio::sync::Notify>)>;

/// The fan-out of grant-state notifications on this replica.
#[derive(Debug)]
pub struct GrantEvents {
    sender: broadcast::Sender<Change>,
    /// Per session, its subscriptions oldest first: (id, what ends it).
    sessions: Mutex<HashMap<Uuid, Views>>,
    next_id: std::sync::atomic::AtomicU64,
    listening: Mutex<Option<tokio::task::JoinHandle<()>>>,
    max_per_session: usize,
    max_total: usize,
}

/// A console's subscription; dropping it frees its place.
#[derive(Debug)]
pub struct Subscription {
    events: Arc<GrantEvents>,
    session: Uuid,
    id: u64,
    evicted: Arc<tokio::sync::Notify>,
    receiver: broadcast::Receiver<Change>,
}

impl Subscription {
    /// The next change that concerns `incident` of `tenant` (or everything).
    pub async fn next_for(&mut self, tenant: Tenant, incident: Uuid) -> Change {
        loop {
            let received = tokio::select! {
                () = self.evicted.notified() => return Change::Evicted,
                r = self.receiver.recv() => r,
            };
            match received {
                Ok(Change::Incident {
                    tenant: t,
                    incident: i,
                }) if t == tenant.id() && i == incident => {
                    return Change::Incident {
                        tenant: t,
                        incident: i,
                    };
                }
                Ok(Change::Incident { .. }) => {}
                Ok(Change::Everything) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Change::Everything;
                }
                Ok(Change::Evicted) => {}
                // The sender lives as long as `events`, which this subscription holds.
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut map) = self.events.sessions.lock()
            && let Some(list) = map.get_mut(&self.session)
        {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.session);
            }
        }
    }
}

impl GrantEvents {
    /// A fan-out with the default bounds and no `LISTEN` connection yet.
    pub fn new() -> Arc<Self> {
        Self::with_limits(MAX_PER_SESSION, MAX_SUBSCRIBERS)
    }

    /// A fan-out with explicit bounds (tests, benchmarks).
    pub fn with_limits(max_per_session: usize, max_total: usize) -> Arc<Self> {
        let (sender, _) = broadcast::channel(BUFFER);
        Arc::new(Self {
            sender,
            sessions: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
            listening: Mutex::new(None),
            max_per_session,
            max_total,
        })
    }

    /// Subscribes a console of `session`: at the session's bound its oldest subscription ends
    /// ([`Change::Evicted`]); at the replica's bound the new one is refused.
    pub fn subscribe(self: &Arc<Self>, session: Uuid) -> Result<Subscription, SubscribeError> {
        let mut map = self
            .sessions
            .lock()
            .map_err(|_| SubscribeError::ReplicaFull)?;
        let list = map.entry(session).or_default();
        while list.len() >= self.max_per_session.max(1) {
            let (_, evicted) = list.remove(0);
            evicted.notify_one();
        }
        // Counted after the session's own evictions: a session replacing its views never fills
        // the replica.
        let total: usize = map.values().map(Vec::len).sum();
        let list = map.entry(session).or_default();
        if total >= self.max_total {
            if list.is_empty() {
                map.remove(&session);
            }
            return Err(SubscribeError::ReplicaFull);
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let evicted = Arc::new(tokio::sync::Notify::new());
        list.push((id, evicted.clone()));
        Ok(Subscription {
            events: self.clone(),
            session,
            id,
            evicted,
            receiver: self.sender.subscribe(),
        })
    }

    /// Streams open on this replica.
    pub fn subscribers(&self) -> usize {
        self.sessions
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Publishes a change to this replica's subscribers (what the `LISTEN` connection does).
    pub fn publish(&self, change: Change) {
        // No subscriber is not an error.
        let _ = self.sender.send(change);
    }

    /// Starts this replica's one `LISTEN` connection to `config`, unless it runs already. Resolves
    /// once listening started (or after five seconds without it; it keeps trying).
    pub async fn listen(self: &Arc<Self>, config: tokio_postgres::Config) {
        let ready = Arc::new(tokio::sync::Notify::new());
        {
            let Ok(mut slot) = self.listening.lock() else {
                return;
            };
            if slot.as_ref().is_some_and(|h| !h.is_finished()) {
                return;
            }
            let events = self.clone();
            let ready = ready.clone();
            *slot = Some(tokio::spawn(async move {
                events.listen_forever(config, ready).await;
            }));
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), ready.notified()).await;
    }

    /// Stops the `LISTEN` connection.
    pub fn stop(&self) {
        if let Ok(mut slot) = self.listening.lock()
            && let Some(handle) = slot.take()
        {
            handle.abort();
        }
    }

    async fn listen_forever(
        &self,
        config: tokio_postgres::Config,
        ready: Arc<tokio::sync::Notify>,
    ) {
        let mut backoff = ListenBackoff::new();
        loop {
            match self.listen_once(&config, &ready, &mut backoff).await {
                Ok(()) => tracing::warn!("grant-state LISTEN connection closed; reconnecting"),
                Err(e) => tracing::warn!(error = %e, "grant-state LISTEN connection failed"),
            }
            tokio::time::sleep(backoff.delay()).await;
        }
    }

    async fn listen_once(
        &self,
        config: &tokio_postgres::Config,
        ready: &tokio::sync::Notify,
        backoff: &mut ListenBackoff,
    ) -> Result<(), tokio_postgres::Error> {
        let (client, mut connection) = config.connect(NoTls).await?;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let statement = format!("LISTEN {NOTIFY_CHANNEL}");
        let listening = client.batch_execute(&statement);
        tokio::pin!(listening);
        loop {
            tokio::select! {
                done = &mut listening => { done?; break; }
                message = messages.next() => match message {
                    Some(Ok(m)) => self.dispatch(&m),
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                },
            }
        }
        backoff.listening();
        // Whatever was notified while the connection was down is lost: everyone refreshes.
        self.publish(Change::Everything);
        ready.notify_waiters();
        tracing::info!("listening for grant-state notifications");
        while let Some(message) = messages.next().await {
            self.dispatch(&message?);
        }
        Ok(())
    }

    fn dispatch(&self, message: &AsyncMessage) {
        if let AsyncMessage::Notification(n) = message
            && n.channel() == NOTIFY_CHANNEL
        {
            match parse_payload(n.payload()) {
                Some(change) => self.publish(change),
                None => tracing::warn!("grant-state notification with an unexpected payload"),
            }
        }
    }
}

impl Drop for GrantEvents {
    fn drop(&mut self) {
        self.stop();
    }
}

fn parse_payload(payload: &str) -> Option<Change> {
    let (tenant, incident) = payload.split_once(' ')?;
    Some(Change::Incident {
        tenant: Uuid::parse_str(tenant).ok()?,
        incident: Uuid::parse_str(incident).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_the_stored_facts() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let later = now + chrono::Duration::minutes(5);
        let d = |status, token, receipt| GrantState::derive(status, later, token, receipt, now);
        assert_eq!(
            d("awaiting_approval", None, None),
            GrantState::WaitingForApproval
        );
        assert_eq!(
            d("awaiting_consent", None, None),
            GrantState::WaitingForConsent
        );
        assert_eq!(d("refused", None, None), GrantState::Refused);
        assert_eq!(d("live", None, None), GrantState::Live);
        assert_eq!(
            d("live", Some(("issued", false)), None),
            GrantState::TokenIssued
        );
        assert_eq!(d("live", Some(("issued", true)), None), GrantState::Pushed);
        assert_eq!(
            d("live", Some(("delivered", true)), None),
            GrantState::Acknowledged
        );
        assert_eq!(
            d("live", Some(("used", true)), Some("allow")),
            GrantState::DoorOpened
        );
        assert_eq!(
            d("live", Some(("delivered", true)), Some("deny")),
            GrantState::DoorDenied
        );
        assert_eq!(d("live", Some(("revoked", true)), None), GrantState::Live);
        assert_eq!(d("revoked", Some(("used", true)), None), GrantState::Ended);
        // Past its window a live grant has ended, whatever its row says yet.
        assert_eq!(
            GrantState::derive("live", now, None, None, now),
            GrantState::Ended
        );
    }

    #[test]
    fn codes_are_the_json_names() {
        use GrantState::*;
        for s in [
            WaitingForConsent,
            Refused,
            WaitingForApproval,
            Live,
            TokenIssued,
            Pushed,
            Acknowledged,
            DoorOpened,
            DoorDenied,
            Ended,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.code());
        }
    }

    #[test]
    fn payloads_are_parsed_strictly() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(
            parse_payload(&format!("{a} {b}")),
            Some(Change::Incident {
                tenant: a,
                incident: b
            })
        );
        for bad in ["", "x y", &a.to_string(), &format!("{a}  {b}")] {
            assert_eq!(parse_payload(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn subscriptions_are_bounded_and_filtered() {
        let events = GrantEvents::with_limits(2, 3);
        let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
        let mut oldest = events.subscribe(s1).unwrap();
        let mut a = events.subscribe(s1).unwrap();
        // A third view of the session ends its oldest, and is admitted.
        let b = events.subscribe(s1).unwrap();
        let tenant0 = Tenant::assume(Uuid::new_v4());
        assert_eq!(
            oldest.next_for(tenant0, Uuid::new_v4()).await,
            Change::Evicted
        );
        drop(oldest);
        assert_eq!(events.subscribers(), 2);
        let _c = events.subscribe(s2).unwrap();
        assert_eq!(
            events.subscribe(Uuid::new_v4()).unwrap_err(),
            SubscribeError::ReplicaFull
        );
        assert_eq!(events.subscribers(), 3);
        drop(b);
        assert_eq!(events.subscribers(), 2);
        let _d = events.subscribe(Uuid::new_v4()).unwrap();

        let tenant = Tenant::assume(Uuid::new_v4());
        let (mine, other) = (Uuid::new_v4(), Uuid::new_v4());
        events.publish(Change::Incident {
            tenant: tenant.id(),
            incident: other,
        });
        events.publish(Change::Incident {
            tenant: Uuid::new_v4(),
            incident: mine,
        });
        events.publish(Change::Incident {
            tenant: tenant.id(),
            incident: mine,
        });
        assert_eq!(
            a.next_for(tenant, mine).await,
            Change::Incident {
                tenant: tenant.id(),
                incident: mine
            }
        );
        events.publish(Change::Everything);
        assert_eq!(a.next_for(tenant, mine).await, Change::Everything);
    }
}

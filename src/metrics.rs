//! Domain metrics: what the core counts as it works (tokens issued, receipts stored by decision,
//! refused receipt batches, pairing failures, mail sent and failed, policy decisions, agents
//! connected to this replica), in one process-wide registry that `/metrics` renders beside the HTTP
//! families (`http::metrics`), plus the gauges read from the database at scrape time
//! ([`DbGauges`]: inbox backlog, outbox depth, audit entries pending sealing, each with its oldest
//! entry's age).
//!
//! Counters are per process (per replica); Prometheus sums them across replicas. They are process
//! globals, as a Prometheus default registry is, because the code that counts (channel sessions,
//! the outbox worker, the policy engine) runs outside any request and needs no handle to count.
//!
//! Every label value is from a closed set, fixed in this module or by a `&'static str` enum of the
//! core (the policy action, a batch refusal reason); nothing an outsider sends becomes a label.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_postgres::Pool;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Why the server refuses a receipt batch (`channel::receipts`): the `reason` label's values.
pub const RECEIPT_REJECTIONS: [&str; 5] = [
    "malformed",
    "bad_signature",
    "wrong_lock",
    "fork",
    "broken_chain",
];

/// The domain metric families of this process.
pub struct Domain {
    registry: Registry,
    /// Agent channel sessions authenticated and registered on this replica.
    pub agents_connected: IntGauge,
    /// Override tokens minted (committed).
    pub tokens_issued: IntCounter,
    /// Receipts (tap decisions) stored, by `decision` (`allow`, `deny`).
    pub receipts_stored: IntCounterVec,
    /// Receipt batches refused, by `reason` (`malformed`, `bad_signature`, `wrong_lock`, `fork`,
    /// `broken_chain`).
    pub receipt_batches_rejected: IntCounterVec,
    /// Pairing handshakes refused: wrong device key for the code, or the attempt limit reached.
    pub pairing_failures: IntCounter,
    /// Mails handed to the SMTP relay.
    pub mail_sent: IntCounter,
    /// Mail delivery attempts that failed (each is retried later).
    pub mail_send_failures: IntCounter,
    /// Policy decisions, by `action` (the Cedar action) and `decision` (`allow`, `deny`).
    pub policy_decisions: IntCounterVec,
}

impl Domain {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("firstkey".to_owned()), None)?;
        let agents_connected = IntGauge::new(
            "agents_connected",
            "Lock agents with an authenticated channel session on this replica",
        )?;
        let tokens_issued = IntCounter::new("tokens_issued_total", "Override tokens minted")?;
        let receipts_stored = IntCounterVec::new(
            Opts::new(
                "receipts_stored_total",
                "Signed tap receipts stored, by the lock's decision",
            ),
            &["decision"],
        )?;
        let receipt_batches_rejected = IntCounterVec::new(
            Opts::new(
                "receipt_batches_rejected_total",
                "Receipt batches refused and not stored, by reason",
            ),
            &["reason"],
        )?;
        let pairing_failures = IntCounter::new(
            "pairing_failures_total",
            "Pairing handshakes refused (wrong code or attempt limit reached)",
        )?;
        let mail_sent = IntCounter::new("mail_sent_total", "Mails handed to the SMTP relay")?;
        let mail_send_failures = IntCounter::new(
            "mail_send_failures_total",
            "Mail delivery attempts that failed (retried later)",
        )?;
        let policy_decisions = IntCounterVec::new(
            Opts::new(
                "policy_decisions_total",
                "Authorization decisions of the policy set, by action and decision",
            ),
            &["action", "decision"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Always 1; the labels name the build"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Every series of the closed label sets exists from the start (at 0), so `rate()` and
        // alerts see the first event rather than a series appearing.
        for decision in ["allow", "deny"] {
            receipts_stored.with_label_values(&[decision]);
            for action in crate::policy::Action::ALL {
                policy_decisions.with_label_values(&[action.as_str(), decision]);
            }
        }
        for reason in RECEIPT_REJECTIONS {
            receipt_batches_rejected.with_label_values(&[reason]);
        }
        registry.register(Box::new(agents_connected.clone()))?;
        registry.register(Box::new(tokens_issued.clone()))?;
        registry.register(Box::new(receipts_stored.clone()))?;
        registry.register(Box::new(receipt_batches_rejected.clone()))?;
        registry.register(Box::new(pairing_failures.clone()))?;
        registry.register(Box::new(mail_sent.clone()))?;
        registry.register(Box::new(mail_send_failures.clone()))?;
        registry.register(Box::new(policy_decisions.clone()))?;
        registry.register(Box::new(build_info))?;
        Ok(Self {
            registry,
            agents_connected,
            tokens_issued,
            receipts_stored,
            receipt_batches_rejected,
            pairing_failures,
            mail_sent,
            mail_send_failures,
            policy_decisions,
        })
    }

    /// The families, for rendering.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }
}

/// The process's domain metrics; `None` only if the families could not be registered (they are
/// fixed here, so that is a programming error that a test would catch), in which case nothing is
/// counted rather than anything failing.
pub fn domain() -> Option<&'static Domain> {
    static DOMAIN: LazyLock<Option<Domain>> = LazyLock::new(|| match Domain::new() {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::error!(error = %e, "domain metrics could not be registered");
            None
        }
    });
    DOMAIN.as_ref()
}

/// Runs `f` on the domain metrics when they exist.
pub fn count(f: impl FnOnce(&Domain)) {
    if let Some(d) = domain() {
        f(d);
    }
}

/// Longest a scrape waits for its database gauges; a slow database leaves them at their last
/// value and sets `firstkey_db_gauges_up` to 0 instead of holding the scrape.
pub const DB_GAUGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Gauges computed from the database when `/metrics` is scraped, with cheap queries that each use
/// a partial index of pending rows (or the inbox's primary key per lock).
#[derive(Clone)]
pub struct DbGauges {
    up: IntGauge,
    inbox_backlog: IntGauge,
    inbox_oldest: IntGauge,
    outbox_depth: IntGauge,
    outbox_oldest: IntGauge,
    outbox_failing: IntGauge,
    audit_pending: IntGauge,
    audit_lag: IntGauge,
}

impl DbGauges {
    /// Registers the gauges in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(Self {
            up: gauge(
                "db_gauges_up",
                "1 if the last scrape read the database gauges, 0 if the database failed or was too slow",
            )?,
            inbox_backlog: gauge(
                "inbox_backlog",
                "Lock inbox entries not yet acknowledged by their lock (all locks)",
            )?,
            inbox_oldest: gauge(
                "inbox_oldest_unacked_age_seconds",
                "Age of the oldest lock inbox entry not yet acknowledged; 0 when none",
            )?,
            outbox_depth: gauge("outbox_depth", "Mails waiting in the outbox")?,
            outbox_oldest: gauge(
                "outbox_oldest_age_seconds",
                "Age of the oldest mail waiting in the outbox; 0 when none",
            )?,
            outbox_failing: gauge(
                "outbox_failing",
                "Mails waiting whose last delivery attempt failed",
            )?,
            audit_pending: gauge(
                "audit_pending_entries",
                "Audit entries recorded but not yet sealed into the chain",
            )?,
            audit_lag: gauge(
                "audit_sealing_lag_seconds",
                "Age of the oldest audit entry waiting to be sealed; 0 when none",
            )?,
        })
    }

    /// Reads the gauges from the database, within [`DB_GAUGE_TIMEOUT`].
    pub async fn refresh(&self, pool: &Pool) {
        let ok = tokio::time::timeout(DB_GAUGE_TIMEOUT, self.read(pool))
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match ok {
            Ok(()) => self.up.set(1),
            Err(reason) => {
                tracing::warn!(%reason, "metrics: database gauges not read");
                self.up.set(0);
            }
        }
    }

    async fn read(&self, pool: &Pool) -> Result<(), crate::store::StoreError> {
        let client = pool.get().await?;
        let row = client
            .query_one(
                "SELECT
                   (SELECT count(*) FROM audit_entries WHERE seq IS NULL),
                   (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(recorded_at)), 0)::bigint
                      FROM audit_entries WHERE seq IS NULL),
                   (SELECT count(*) FROM notification_outbox WHERE sent_at IS NULL),
                   (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::bigint
                      FROM notification_outbox WHERE sent_at IS NULL),
                   (SELECT count(*) FROM notification_outbox
                      WHERE sent_at IS NULL AND last_error IS NOT NULL),
                   (SELECT COALESCE(sum(l.inbox_next_seq - 1 - l.inbox_acked_seq), 0)::bigint
                      FROM locks l WHERE l.pairing_state = 'paired'),
                   (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(i.created_at)), 0)::bigint
                      FROM locks l JOIN lock_inbox i
                        ON i.lock_id = l.id AND i.seq = l.inbox_acked_seq + 1
                      WHERE l.pairing_state = 'paired' AND l.inbox_acked_seq + 1 < l.inbox_next_seq)",
                &[],
            )
            .await?;
        let age = |i: usize| row.get::<_, i64>(i).max(0);
        self.audit_pending.set(row.get(0));
        self.audit_lag.set(age(1));
        self.outbox_depth.set(row.get(2));
        self.outbox_oldest.set(age(3));
        self.outbox_failing.set(row.get(4));
        self.inbox_backlog.set(row.get::<_, i64>(5).max(0));
        self.inbox_oldest.set(age(6));
        Ok(())
    }
}

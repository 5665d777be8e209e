//! E-mail notifications through a durable outbox.
//!
//! Code that causes a notification calls [`enqueue`] inside its own transaction, so the mail exists
//! if and only if the event committed. A worker ([`run_worker`]) delivers due mail over SMTP with
//! lettre, retrying with exponential backoff; during an SMTP outage mail waits in the table, and after
//! it everything is delivered once (`dedupe_key` makes a second enqueue of the same event a no-op,
//! and a row is claimed with `FOR UPDATE SKIP LOCKED` so two replicas never send the same row).
//!
//! Bodies carry one-time links (invitations, e-mail verification), so a body lives only as long as
//! delivery needs it: the transaction that marks a mail sent also drops its body (kept: recipient,
//! subject, kind, times, for the delivery record; the schema refuses a sent row with a body).

pub mod sink;

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::clock::Clock;
use crate::domain::Email;
use crate::settings::SmtpSettings;
use crate::store::{StoreError, Tenant};

/// A mail to send.
#[derive(Debug, Clone)]
pub struct Mail {
    /// Identity of the event for this recipient; enqueuing the same key twice sends once.
    pub dedupe_key: String,
    /// Kind of notification (`grant.created`, `account.verify_email`, …), for filtering and metrics.
    pub kind: &'static str,
    /// Recipient.
    pub to: Email,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body.
    pub html: String,
}

/// Writes `mail` to the outbox inside the caller's transaction. Returns false when the same
/// `dedupe_key` was already enqueued.
pub async fn enqueue(
    tx: &impl GenericClient,
    tenant: Tenant,
    mail: &Mail,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let inserted = tx
        .execute(
            "INSERT INTO notification_outbox (id, municipality_id, dedupe_key, kind, recipient, subject, body_text,
                 body_html, created_at, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
             ON CONFLICT (dedupe_key) DO NOTHING",
            &[
                &Uuid::new_v4(),
                &tenant.id(),
                &mail.dedupe_key,
                &mail.kind,
                &mail.to.as_str(),
                &mail.subject,
                &mail.text,
                &mail.html,
                &now,
            ],
        )
        .await
        .map_err(crate::store::conflict_or_query)?;
    Ok(inserted == 1)
}

/// Escapes text for inclusion in the HTML body.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A delivery fault.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The outbox could not be read or updated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The SMTP relay setting could not be used.
    #[error("smtp relay: {0}")]
    Relay(String),
}

/// Sends over SMTP.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// Builds the transport from settings (no connection is made yet).
    pub fn new(settings: &SmtpSettings) -> Result<Self, DeliveryError> {
        let transport =
            AsyncSmtpTransport::<Tokio1Executor>::from_url(settings.relay.expose_secret())
                .map_err(|e| DeliveryError::Relay(e.to_string()))?
                .timeout(Some(Duration::from_secs(10)))
                .build();
        let from = settings
            .from
            .parse::<Mailbox>()
            .map_err(|e| DeliveryError::Relay(format!("smtp_from: {e}")))?;
        Ok(Self { transport, from })
    }

    async fn send(&self, to: &str, subject: &str, text: &str, html: &str) -> Result<(), String> {
        let to = to
            .parse::<Mailbox>()
            .map_err(|e| format!("recipient: {e}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .multipart(MultiPart::alternative_plain_html(
                text.to_owned(),
                html.to_owned(),
            ))
            .map_err(|e| format!("message: {e}"))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Backoff after the `attempts`-th failure: 5 s doubling, at most 10 minutes.
fn backoff(attempts: i32) -> chrono::Duration {
    let exponent = u32::try_from(attempts.clamp(0, 7)).unwrap_or(7);
    chrono::Duration::seconds(5i64.saturating_mul(2i64.saturating_pow(exponent)).min(600))
}

/// Delivers up to `batch` due mails; returns how many were sent.
pub async fn deliver_due(
    pool: &Pool,
    mailer: &Mailer,
    now: DateTime<Utc>,
    batch: i64,
) -> Result<usize, DeliveryError> {
    let mut sent = 0;
    for _ in 0..batch {
        let mut client = pool.get().await.map_err(StoreError::from)?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        let Some(row) = tx
            .query_opt(
                "SELECT id, recipient, subject, body_text, body_html, attempts FROM notification_outbox
                 WHERE sent_at IS NULL AND next_attempt_at <= $1
                 ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                &[&now],
            )
            .await
            .map_err(StoreError::from)?
        else {
            break;
        };
        let id: Uuid = row.get(0);
        let attempts: i32 = row.get(5);
        let text: Option<String> = row.get(3);
        let html: Option<String> = row.get(4);
        let result = mailer
            .send(
                row.get(1),
                row.get(2),
                text.as_deref().unwrap_or_default(),
                html.as_deref().unwrap_or_default(),
            )
            .await;
        match result {
            Ok(()) => {
                // The body (and the link secret in it) goes with the delivery.
                tx.execute(
                    "UPDATE notification_outbox SET sent_at = $2, attempts = attempts + 1, last_error = NULL,
                         body_text = NULL, body_html = NULL
                     WHERE id = $1",
                    &[&id, &now],
                )
                .await
                .map_err(StoreError::from)?;
                crate::metrics::count(|m| m.mail_sent.inc());
                sent += 1;
            }
            Err(e) => {
                tracing::warn!(mail = %id, attempts = attempts + 1, error = %e, "mail delivery failed; will retry");
                crate::metrics::count(|m| m.mail_send_failures.inc());
                tx.execute(
                    "UPDATE notification_outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3 WHERE id = $1",
                    &[&id, &e, &(now + backoff(attempts))],
                )
                .await
                .map_err(StoreError::from)?;
            }
        }
        tx.commit().await.map_err(StoreError::from)?;
    }
    Ok(sent)
}

/// Delivers due mail forever, polling every `interval`. Faults are logged and retried.
pub async fn run_worker(
    pool: Pool,
    mailer: Mailer,
    clock: std::sync::Arc<dyn Clock>,
    interval: Duration,
) {
    loop {
        match deliver_due(&pool, &mailer, clock.now(), 50).await {
            Ok(0) => tokio::time::sleep(interval).await,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "outbox delivery pass failed");
                tokio::time::sleep(interval).await;
            }
        }
    }
}

//! Emergency entry, server side: incidents ([`incidents`]), grants of entry ([`grants`]), override
//! tokens minted under them ([`tokens`]), the issuer keys and trust bundles that make tokens
//! verifiable at the door ([`keys`]), and the HMAC-signed, idempotent CAD integration ([`cad`]).
//!
//! Every state change here runs in one transaction with its audit entries, its mail (outbox) and the
//! messages it queues for locks (inbox), so an event, its record and its effects commit together or
//! not at all. HTTP lives in `http::dispatch` and `http::tokens`; this module knows nothing of it,
//! except that a policy denial arrives already shaped by `access::authorize` (which decides what a
//! refused caller may learn).

pub mod cad;
pub mod consent;
pub mod grants;
pub mod incidents;
pub mod keys;
pub mod live;
pub mod tokens;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::channel::inbox::{self, InboxMessage};
use crate::domain::Email;
use crate::error::CoreError;
use crate::notify::{self, Mail};
use crate::store::{StoreError, Tenant};

/// Why an emergency operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EmergencyError {
    /// The thing does not exist, or the caller may not learn that it does.
    #[error("not found")]
    NotFound,
    /// The caller's role does not allow this at all (the resource's existence is no secret).
    #[error("forbidden")]
    Forbidden,
    /// A machine caller's credentials or signature are missing, stale or wrong.
    #[error("unauthenticated")]
    Unauthenticated,
    /// The action needs a fresh WebAuthn assertion.
    #[error("step-up required")]
    StepUpRequired,
    /// The request is malformed; the text names the field and is safe to show.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The request conflicts with the current state; the text is safe to show.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The policy refused, and `access::authorize` has audited it and chosen the answer.
    #[error("policy denial")]
    Denied(#[source] CoreError),
    /// Issuer keys are missing or unusable.
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    /// The token crate refused to mint.
    #[error("minting failed: {0}")]
    Mint(firstkey_token::MintError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for EmergencyError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}

/// Unix seconds of `t` (times before 1970 become 0; none occur here).
pub fn unix_seconds(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp()).unwrap_or(0)
}

/// A notice about a property for its homeowner and contacts.
pub(crate) struct Notice<'a> {
    /// Outbox kind, e.g. `grant.created`.
    pub kind: &'static str,
    /// Identity of the event (with the kind and recipient, the outbox's once-only key).
    pub event: String,
    /// Subject line.
    pub subject: &'a str,
    /// Plain-text body (the HTML body is derived from it).
    pub text: &'a str,
}

/// Mails a property's homeowner and, where the current plan says so, its contacts, inside `tx`.
pub(crate) async fn notify_property(
    tx: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    notice: &Notice<'_>,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let (kind, event, subject, text) = (notice.kind, &notice.event, notice.subject, notice.text);
    let row = tx
        .query_opt(
            "SELECT u.email, ap.notifications, ap.contacts
             FROM properties p JOIN users u ON u.id = p.owner_id AND u.municipality_id = p.municipality_id
             LEFT JOIN LATERAL (SELECT notifications, contacts FROM access_plans
                                WHERE property_id = p.id ORDER BY version DESC LIMIT 1) ap ON true
             WHERE p.municipality_id = $1 AND p.id = $2",
            &[&tenant.id(), &property],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    let owner: String = row.get(0);
    let choices: Option<crate::plans::NotificationChoices> = row
        .get::<_, Option<serde_json::Value>>(1)
        .and_then(|v| serde_json::from_value(v).ok());
    let choices = choices.unwrap_or_default();
    let mut recipients = Vec::new();
    if choices.homeowner {
        recipients.push(owner);
    }
    if choices.contacts {
        let contacts: Vec<crate::plans::Contact> = row
            .get::<_, Option<serde_json::Value>>(2)
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        recipients.extend(contacts.into_iter().map(|c| c.email));
    }
    let mut sent = 0;
    for to in recipients {
        let Ok(to) = Email::parse(&to) else {
            continue;
        };
        let mail = Mail {
            dedupe_key: format!("{kind}:{event}:{}", to.as_str().to_ascii_lowercase()),
            kind,
            to,
            subject: subject.to_owned(),
            html: format!("<p>{}</p>", notify::html_escape(text).replace('\n', "<br>")),
            text: text.to_owned(),
        };
        if notify::enqueue(tx, tenant, &mail, now).await? {
            sent += 1;
        }
    }
    Ok(sent)
}

/// Marks every live token of `grant` revoked and queues a revocation for each one's lock, inside
/// `tx`. Returns how many were revoked.
pub(crate) async fn revoke_tokens_of_grant(
    tx: &impl GenericClient,
    tenant: Tenant,
    grant: Uuid,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let rows = tx
        .query(
            "UPDATE issued_tokens SET status = 'revoked', revoked_at = $3
             WHERE municipality_id = $1 AND grant_id = $2 AND status IN ('issued', 'delivered')
               AND expires_at > $3
             RETURNING lock_id, token_hash, expires_at",
            &[&tenant.id(), &grant, &now],
        )
        .await?;
    // The grant's keypad codes go with its tokens.
    crate::codes::revoke_of_grant(tx, tenant, grant, now).await?;
    queue_revocations(tx, tenant, &rows, now).await
}

/// Marks every live token minted for `responder` (under any grant) revoked and queues a revocation
/// for each one's lock, inside `tx`, as [`revoke_tokens_of_grant`] does. Returns how many were
/// revoked.
pub(crate) async fn revoke_tokens_of_responder(
    tx: &impl GenericClient,
    tenant: Tenant,
    responder: Uuid,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let rows = tx
        .query(
            "UPDATE issued_tokens SET status = 'revoked', revoked_at = $3
             WHERE municipality_id = $1 AND responder_id = $2 AND status IN ('issued', 'delivered')
               AND expires_at > $3
             RETURNING lock_id, token_hash, expires_at",
            &[&tenant.id(), &responder, &now],
        )
        .await?;
    queue_revocations(tx, tenant, &rows, now).await
}

/// Queues a revocation to each revoked token's lock (rows: lock id, token hash, expiry).
async fn queue_revocations(
    tx: &impl GenericClient,
    tenant: Tenant,
    rows: &[tokio_postgres::Row],
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    for row in rows {
        let lock: Uuid = row.get(0);
        let hash: Vec<u8> = row.get(1);
        let expires_at: DateTime<Utc> = row.get(2);
        let token_hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| StoreError::Conflict("stored token hash length".to_owned()))?;
        inbox::push(
            tx,
            tenant,
            lock,
            &InboxMessage::Revocation {
                token_hash,
                expires_at: unix_seconds(expires_at),
            },
            now,
        )
        .await?;
    }
    Ok(rows.len())
}

/// Marks every live token minted for trusted party `party` revoked and queues a revocation for
/// each one's lock, inside `tx`, as [`revoke_tokens_of_grant`] does. Returns how many were revoked.
pub(crate) async fn revoke_tokens_of_trusted_party(
    tx: &impl GenericClient,
    tenant: Tenant,
    party: Uuid,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let rows = tx
        .query(
            "UPDATE issued_tokens SET status = 'revoked', revoked_at = $3
             WHERE municipality_id = $1 AND trusted_party_id = $2 AND status IN ('issued', 'delivered')
               AND expires_at > $3
             RETURNING lock_id, token_hash, expires_at",
            &[&tenant.id(), &party, &now],
        )
        .await?;
    queue_revocations(tx, tenant, &rows, now).await
}

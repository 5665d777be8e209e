//! Pairing a lock with a home: the homeowner types the lock id and the code `firstkey-agent init`
//! printed; the server keeps a registration with only the SHA-256 of the code's normalised form
//! ([`register`]), and at the agent's first handshake pairs the lock with the registration whose
//! hash is that of the code derived from the key the agent proved it holds ([`at_handshake`]).
//! A registration reserves nothing: whoever else registered the same id (in any municipality)
//! without the code is closed when the lock pairs, and told so.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::json;
use uuid::Uuid;

use crate::audit::{self, Event, Outcome};
use crate::channel::inbox::{self, InboxMessage};
use crate::domain::{Email, ParseError};
use crate::notify::{self, Mail};
use crate::store::registrations::{self, Decided, LockRegistration, PairOutcome, RegisterError};
use crate::store::{StoreError, Tenant};

const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Normalises a typed code (Crockford base32: case-insensitive, `-` and spaces ignored, I/L read
/// as 1 and O as 0) to its 10 upper-case symbols.
pub fn normalise(typed: &str) -> Result<String, ParseError> {
    let bad = || ParseError {
        field: "pairing_code",
        reason: "10 characters as `firstkey-agent init` printed them".to_owned(),
    };
    let mut out = String::with_capacity(10);
    for c in typed.chars().filter(|c| *c != '-' && *c != ' ') {
        let c = match c.to_ascii_uppercase() {
            'I' | 'L' => '1',
            'O' => '0',
            other => other,
        };
        if !ALPHABET.contains(c) || out.len() >= 10 {
            return Err(bad());
        }
        out.push(c);
    }
    if out.len() == 10 { Ok(out) } else { Err(bad()) }
}

/// SHA-256 of a normalised code.
pub fn code_hash(normalised: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, normalised.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The homeowner `actor` registers `lock_id` as `name` on `property` with the code they typed
/// (normalised), audited `lock.register`, in the caller's transaction.
#[allow(clippy::too_many_arguments)]
pub async fn register(
    tx: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    actor: Uuid,
    lock_id: Uuid,
    name: &str,
    normalised_code: &str,
    now: DateTime<Utc>,
) -> Result<LockRegistration, RegisterError> {
    let hash = code_hash(normalised_code);
    let registration =
        registrations::register(tx, tenant, property, actor, lock_id, name, &hash, now).await?;
    audit::record(
        tx,
        tenant,
        &Event::new("lock.register", Outcome::Info)
            .actor(actor)
            .subject("lock", lock_id)
            .property(property)
            .details(json!({ "registration": registration.id })),
        now,
    )
    .await?;
    Ok(registration)
}

/// The homeowner `actor` cancels a waiting registration of `property`, audited
/// `lock.registration_cancel`, in the caller's transaction.
pub async fn cancel(
    tx: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    actor: Uuid,
    registration: Uuid,
    now: DateTime<Utc>,
) -> Result<LockRegistration, StoreError> {
    let cancelled = registrations::cancel(tx, tenant, property, registration, now).await?;
    audit::record(
        tx,
        tenant,
        &Event::new("lock.registration_cancel", Outcome::Info)
            .actor(actor)
            .subject("lock", cancelled.lock_id)
            .property(property)
            .details(json!({ "registration": cancelled.id })),
        now,
    )
    .await?;
    Ok(cancelled)
}

/// The lock a handshake paired: its municipality, home and name.
#[derive(Debug, Clone)]
pub struct PairedLock {
    /// Municipality of the registration it paired with.
    pub tenant: Tenant,
    /// Home.
    pub property: Uuid,
    /// Name.
    pub name: String,
}

/// At the first handshake of a lock that is not paired, once the agent proved `device_public_key`
/// and `lock_id` is the id derived from it: pairs it with the registration whose code the key
/// derives (see [`registrations::pair`]), in the caller's transaction. Every registration decided
/// is audited `lock.pair` in its own municipality (allow for the one paired, deny with the reason
/// for the others) and the owners of the closed ones are mailed; the paired lock gets its keypad
/// secret (when `keypad`) and the municipality's trust bundle if one was published while the
/// registration waited. `None`: not paired.
pub async fn at_handshake(
    tx: &impl GenericClient,
    lock_id: Uuid,
    device_public_key: &[u8; 32],
    keypad: bool,
    now: DateTime<Utc>,
) -> Result<Option<PairedLock>, StoreError> {
    let code =
        firstkey_agent::pairing::PairingCode::derive(device_public_key, &lock_id.to_string());
    let normalised = normalise(&code.display()).map_err(|e| StoreError::Conflict(e.to_string()))?;
    let (paired, closed) =
        match registrations::pair(tx, lock_id, device_public_key, &code_hash(&normalised), now)
            .await?
        {
            PairOutcome::NothingWaiting => return Ok(None),
            PairOutcome::Paired { paired, closed } => (Some(paired), closed),
            PairOutcome::NotPaired { closed } => (None, closed),
        };
    for d in &closed {
        crate::metrics::count(|m| m.pairing_failures.inc());
        record_decided(tx, lock_id, d, Outcome::Deny, now).await?;
        mail_closed(tx, lock_id, d, now).await?;
    }
    let Some(paired) = paired else {
        return Ok(None);
    };
    record_decided(tx, lock_id, &paired, Outcome::Allow, now).await?;
    if keypad {
        // The keypad code secret goes out with the first session (PROTOCOL.md, "Keypad codes"),
        // so codes work even if the lock is offline when one is issued.
        crate::codes::ensure_secret(tx, paired.tenant, lock_id, now).await?;
    }
    // A bundle published while the registration waited did not reach the lock (it had no inbox).
    let bundle = tx
        .query_opt(
            "SELECT bundle FROM trust_bundles WHERE municipality_id = $1 AND created_at > $2
             ORDER BY version DESC LIMIT 1",
            &[&paired.tenant.id(), &paired.created_at],
        )
        .await?;
    if let Some(bundle) = bundle {
        inbox::push(
            tx,
            paired.tenant,
            lock_id,
            &InboxMessage::TrustBundle(bundle.get(0)),
            now,
        )
        .await?;
    }
    Ok(Some(PairedLock {
        tenant: paired.tenant,
        property: paired.property,
        name: paired.name,
    }))
}

async fn record_decided(
    tx: &impl GenericClient,
    lock_id: Uuid,
    d: &Decided,
    outcome: Outcome,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    audit::record(
        tx,
        d.tenant,
        &Event::new("lock.pair", outcome)
            .subject("lock", lock_id)
            .property(d.property)
            .details(json!({ "registration": d.id, "state": d.state })),
        now,
    )
    .await?;
    Ok(())
}

/// Tells the owner of a registration the handshake closed why it closed.
async fn mail_closed(
    tx: &impl GenericClient,
    lock_id: Uuid,
    d: &Decided,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let email: Option<String> = tx
        .query_opt(
            "SELECT email FROM users WHERE municipality_id = $1 AND id = $2",
            &[&d.tenant.id(), &d.registered_by],
        )
        .await?
        .map(|r| r.get(0));
    let Some(to) = email.and_then(|e| Email::parse(&e).ok()) else {
        return Ok(());
    };
    let text = format!("{}\n\nLock id: {lock_id}", closed_words(d.state, &d.name));
    let mail = Mail {
        dedupe_key: format!("lock.registration_closed:{}", d.id),
        kind: "lock.registration_closed",
        to,
        subject: format!("Lock “{}” did not pair with your home", d.name),
        html: format!(
            "<p>{}</p>",
            notify::html_escape(&text).replace('\n', "<br>")
        ),
        text,
    };
    notify::enqueue(tx, d.tenant, &mail, now).await?;
    Ok(())
}

/// Why a registration closed, in the homeowner's words (page and mail).
pub fn closed_words(state: &str, name: &str) -> String {
    match state {
        "paired" => format!("“{name}” paired with this home."),
        "paired_elsewhere" => format!(
            "The lock you registered as “{name}” paired with another registration of its id, one \
             that had its pairing code. If the lock is yours, someone else has its code: reset the \
             lock (a new key, lock id and code) and add it again."
        ),
        "code_mismatch" => format!(
            "The lock you registered as “{name}” connected, but its pairing code is not the one \
             typed. Add it again with the code `firstkey-agent init` printed."
        ),
        "contested" => format!(
            "The pairing code of the lock you registered as “{name}” was entered for more than one \
             home, so it paired with none. If the lock is yours, someone else has its code: reset \
             the lock (a new key, lock id and code) and add it again."
        ),
        "cancelled" => format!("You cancelled the registration of “{name}”."),
        "expired" => format!(
            "The lock registered as “{name}” did not connect within 7 days. Add it again, or renew \
             a registration before it expires."
        ),
        _ => format!("“{name}” is waiting for the lock to connect."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_forms_normalise_alike() {
        assert_eq!(normalise("abcde-12345").unwrap(), "ABCDE12345");
        assert_eq!(normalise("OIL00 11100").unwrap(), "0110011100");
        assert!(normalise("ABCDE-1234").is_err());
        assert!(normalise("ABCDE-123456").is_err());
        assert!(normalise("ABCDE-1234U").is_err());
    }
}

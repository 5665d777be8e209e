//! Receipts uploaded by a lock: verified against its device key and chain, stored once, audited,
//! and turned into mail for the homeowner (a door opening; repeated denials).
//!
//! One batch is one transaction: every receipt of it is stored with its audit entry and mail, or
//! none is. Upload is idempotent: a receipt already stored with the same identity is skipped; a
//! different receipt at a stored sequence number is a fork, refused and never stored. This module
//! knows nothing of the wire; the session hands it the encoded receipts.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use firstkey_agent::protocol::tap::Outcome as TapOutcome;
use firstkey_agent::receipt::{VerifiedReceipt, verify_one};
use serde_json::json;
use uuid::Uuid;

use crate::audit::{self, Event, Outcome};
use crate::domain::Email;
use crate::notify::{self, Mail, html_escape};
use crate::store::{StoreError, Tenant, properties};

/// Denials at one lock within [`DENIAL_WINDOW_MINUTES`] that make a mail to the homeowner.
pub const DENIALS_FOR_MAIL: i64 = 3;
/// The window, in minutes of the lock's clock, over which denials are counted.
pub const DENIAL_WINDOW_MINUTES: i64 = 10;

/// An authenticated lock, as the channel knows it after the handshake.
#[derive(Debug, Clone)]
pub struct LockIdentity {
    /// The lock's id.
    pub id: Uuid,
    /// The lock id exactly as the agent wrote it (what its receipts carry).
    pub wire_id: String,
    /// The municipality the lock belongs to.
    pub tenant: Tenant,
    /// The property the lock is on.
    pub property: Uuid,
    /// The lock's name, e.g. "Front door".
    pub name: String,
    /// The paired device public key.
    pub device_public_key: [u8; 32],
}

/// What became of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Every receipt is stored (now or before); the server holds the chain up to `through`.
    Stored {
        /// Highest receipt sequence number held, contiguous from 1.
        through: u64,
    },
    /// The batch was refused and nothing of it stored.
    Rejected {
        /// Why: `malformed`, `bad_signature`, `wrong_lock`, `fork` or `broken_chain`.
        reason: &'static str,
        /// The sequence number concerned, when known.
        seq: Option<u64>,
    },
}

/// The last stored receipt of a lock: its sequence number (0 for none) and identity.
pub async fn head(client: &impl GenericClient, lock: Uuid) -> Result<(u64, [u8; 32]), StoreError> {
    let row = client
        .query_opt(
            "SELECT seq, receipt_hash FROM receipts WHERE lock_id = $1 ORDER BY seq DESC LIMIT 1",
            &[&lock],
        )
        .await?;
    Ok(match row {
        Some(r) => {
            let seq: i64 = r.get(0);
            let hash: Vec<u8> = r.get(1);
            (
                u64::try_from(seq).unwrap_or(0),
                <[u8; 32]>::try_from(hash.as_slice()).unwrap_or([0; 32]),
            )
        }
        None => (0, [0; 32]),
    })
}

/// Verifies and stores one uploaded batch, in one transaction. Its span carries the batch's size
/// and its outcome (`stored` or the rejection reason: closed sets).
#[tracing::instrument(
    name = "receipts.store",
    skip_all,
    fields(receipts = receipts.len(), outcome = tracing::field::Empty)
)]
pub async fn store_batch(
    pool: &Pool,
    lock: &LockIdentity,
    receipts: &[impl AsRef<[u8]>],
    now: DateTime<Utc>,
) -> Result<BatchOutcome, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Serialises uploads of one lock (a lingering old session and its successor).
    tx.execute("SELECT 1 FROM locks WHERE id = $1 FOR UPDATE", &[&lock.id])
        .await?;
    let (mut head_seq, mut head_hash) = head(&tx, lock.id).await?;
    let (mut allowed, mut denied) = (0u64, 0u64);
    for encoded in receipts {
        let verified = match verify_one(encoded.as_ref(), &lock.device_public_key) {
            Ok(v) => v,
            Err(firstkey_agent::receipt::ReceiptError::BadSignature { .. }) => {
                return Ok(rejected("bad_signature", None));
            }
            Err(_) => return Ok(rejected("malformed", None)),
        };
        let seq = verified.body.seq;
        if verified.body.lock_id != lock.wire_id {
            return Ok(rejected("wrong_lock", Some(seq)));
        }
        if seq == 0 {
            return Ok(rejected("malformed", Some(seq)));
        }
        if seq <= head_seq {
            let stored = tx
                .query_opt(
                    "SELECT receipt_hash FROM receipts WHERE lock_id = $1 AND seq = $2",
                    &[&lock.id, &to_i64(seq)?],
                )
                .await?;
            let same = stored.is_some_and(|r| r.get::<_, Vec<u8>>(0) == verified.hash);
            if same {
                continue;
            }
            return Ok(rejected("fork", Some(seq)));
        }
        if head_seq.checked_add(1) != Some(seq) || verified.body.prev.0 != head_hash {
            return Ok(rejected("broken_chain", Some(seq)));
        }
        let Some(decided_at) = i64::try_from(verified.body.time)
            .ok()
            .and_then(|t| DateTime::from_timestamp(t, 0))
        else {
            return Ok(rejected("malformed", Some(seq)));
        };
        store_one(&tx, lock, &verified, decided_at, now).await?;
        if verified.body.outcome == TapOutcome::Allow {
            allowed = allowed.saturating_add(1);
        } else {
            denied = denied.saturating_add(1);
        }
        head_seq = seq;
        head_hash = verified.hash;
    }
    tx.commit().await?;
    tracing::Span::current().record("outcome", "stored");
    crate::metrics::count(|m| {
        m.receipts_stored
            .with_label_values(&["allow"])
            .inc_by(allowed);
        m.receipts_stored
            .with_label_values(&["deny"])
            .inc_by(denied);
    });
    Ok(BatchOutcome::Stored { through: head_seq })
}

fn rejected(reason: &'static str, seq: Option<u64>) -> BatchOutcome {
    tracing::Span::current().record("outcome", reason);
    crate::metrics::count(|m| {
        m.receipt_batches_rejected
            .with_label_values(&[reason])
            .inc()
    });
    BatchOutcome::Rejected { reason, seq }
}

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Conflict("sequence number out of range".to_owned()))
}

/// What the server knows about the token a receipt names.
struct TokenContext {
    /// The incident (and its CAD number) of a responder's token; none for a trusted party's.
    incident: Option<Uuid>,
    cad_number: Option<String>,
    opened_by: String,
    /// The homeowner's own remote unlock.
    remote: bool,
}

async fn store_one(
    tx: &impl GenericClient,
    lock: &LockIdentity,
    receipt: &VerifiedReceipt,
    decided_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let body = &receipt.body;
    // The receipt's typed field, or the `door:` reason of a receipt written before it existed.
    let door_event = firstkey_agent::events::DoorEvent::of_receipt(body);
    let allowed = body.outcome == TapOutcome::Allow && door_event.is_none();
    let decision = match (door_event, allowed) {
        (Some(_), _) => "event",
        (None, true) => "allow",
        (None, false) => "deny",
    };
    let token_hash = body.token_hash.map(|h| h.0.to_vec());
    tx.execute(
        "INSERT INTO receipts (lock_id, seq, municipality_id, receipt, receipt_hash, prev_hash, decision, reason,
             token_hash, decided_at, received_at, door_event, door_event_seconds)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &lock.id,
            &to_i64(body.seq)?,
            &lock.tenant.id(),
            &receipt.encoded,
            &receipt.hash.to_vec(),
            &body.prev.0.to_vec(),
            &decision,
            &body.reason,
            &token_hash,
            &decided_at,
            &now,
            &door_event.map(firstkey_agent::events::DoorEvent::name),
            &door_event.and_then(|e| match e {
                firstkey_agent::events::DoorEvent::HeldOpen { seconds } => {
                    Some(i64::from(seconds))
                }
                _ => None,
            }),
        ],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;

    if let Some(door_event) = door_event {
        return door_event_recorded(tx, lock, body.seq, door_event, decided_at, now).await;
    }
    let context = match &token_hash {
        Some(hash) => token_context(tx, lock.id, hash).await?,
        None => None,
    };
    // A keypad decision names the code by its id: join it to whoever was given the code.
    let keypad = match body.token_id {
        Some(id) if crate::codes::is_keypad_reason(&body.reason) => {
            crate::codes::holder(tx, lock.id, &id.0).await?
        }
        _ => None,
    };
    if allowed && let Some(k) = &keypad {
        tx.execute(
            "UPDATE keypad_codes SET used_at = coalesce(used_at, $2) WHERE id = $1",
            &[&k.id, &decided_at],
        )
        .await?;
    }
    if allowed && let Some(hash) = &token_hash {
        tx.execute(
            "UPDATE issued_tokens SET status = 'used'
             WHERE lock_id = $1 AND token_hash = $2 AND status IN ('issued', 'delivered')",
            &[&lock.id, hash],
        )
        .await?;
    }

    let mut event = Event::new(
        "lock.receipt",
        if allowed {
            Outcome::Allow
        } else {
            Outcome::Deny
        },
    )
    .subject("lock", lock.id)
    .property(lock.property)
    .details(json!({
        "reason": body.reason,
        "seq": body.seq,
        "cti": body.token_id.map(|t| hex::encode(t.0)),
    }));
    if let Some(incident) = context.as_ref().and_then(|c| c.incident) {
        event = event.incident(incident);
    }
    if let Some(k) = &keypad {
        if let Some(incident) = k.incident {
            event = event.incident(incident);
        }
        event = event.details(json!({
            "reason": body.reason,
            "seq": body.seq,
            "cti": body.token_id.map(|t| hex::encode(t.0)),
            "keypad_code": k.id,
            "keypad_kind": k.kind,
            "grant": k.grant,
            "trusted_party": k.trusted_party,
        }));
    }
    audit::record(tx, lock.tenant, &event, now).await?;

    let when = decided_at.format("%Y-%m-%d %H:%M UTC").to_string();
    if allowed {
        let text = match (&context, &keypad) {
            (
                Some(TokenContext {
                    cad_number: Some(cad_number),
                    opened_by,
                    ..
                }),
                _,
            ) => format!(
                "{} opened by {opened_by} for incident {cad_number} at {when}.",
                lock.name
            ),
            (Some(TokenContext { remote: true, .. }), _) => format!(
                "{} opened remotely at {when}, as you asked from your account.",
                lock.name
            ),
            (Some(TokenContext { opened_by, .. }), _) => format!(
                "{} opened by {opened_by} (your trusted party) at {when}.",
                lock.name
            ),
            (None, Some(k)) => match &k.cad_number {
                Some(cad) => format!(
                    "{} opened at {when} with the one-time keypad code issued for incident {cad}.",
                    lock.name
                ),
                None => format!(
                    "{} opened at {when} with the keypad code of {} (your trusted party).",
                    lock.name,
                    k.trusted_label.as_deref().unwrap_or("a trusted party")
                ),
            },
            (None, None) => format!(
                "{} opened at {when} with a token firstkey has no record of. \
                 If you did not expect this, contact your municipality.",
                lock.name
            ),
        };
        let subject = format!("{} opened", lock.name);
        mail_household(tx, lock, "door.opened", body.seq, &subject, &text, now).await?;
    } else {
        let denials: i64 = tx
            .query_one(
                "SELECT count(*) FROM receipts WHERE lock_id = $1 AND decision = 'deny'
                   AND decided_at > $2::timestamptz - make_interval(mins => $3::int) AND decided_at <= $2::timestamptz",
                &[
                    &lock.id,
                    &decided_at,
                    &i32::try_from(DENIAL_WINDOW_MINUTES).unwrap_or(10),
                ],
            )
            .await?
            .get(0);
        if denials == DENIALS_FOR_MAIL {
            let keypad_note = if crate::codes::is_keypad_reason(&body.reason) {
                " Wrong codes were typed at its keypad; after five the keypad locks, for longer with \
                 every further wrong code."
            } else {
                ""
            };
            let text = format!(
                "{} refused {DENIALS_FOR_MAIL} attempts to open it within {DENIAL_WINDOW_MINUTES} minutes, \
                 the last at {when}. The door stayed locked.{keypad_note}",
                lock.name
            );
            let subject = format!("Repeated refused attempts at {}", lock.name);
            mail_household(tx, lock, "door.denials", body.seq, &subject, &text, now).await?;
        }
    }
    Ok(())
}

/// Audits a door event receipt and mails the household once (the mail's key is the receipt).
async fn door_event_recorded(
    tx: &impl GenericClient,
    lock: &LockIdentity,
    seq: u64,
    door_event: firstkey_agent::events::DoorEvent,
    decided_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    use firstkey_agent::events::DoorEvent;
    let seconds = match door_event {
        DoorEvent::HeldOpen { seconds } => Some(seconds),
        _ => None,
    };
    let event = Event::new("door.event", Outcome::Info)
        .subject("lock", lock.id)
        .property(lock.property)
        .details(
            json!({ "event": door_event.name(), "seq": seq, "seconds": seconds, "at": decided_at }),
        );
    audit::record(tx, lock.tenant, &event, now).await?;
    let when = decided_at.format("%Y-%m-%d %H:%M UTC");
    let (subject, text) = match door_event {
        DoorEvent::KeyOverride => (
            format!("{} opened with the physical key", lock.name),
            format!("{} was opened with the physical key at {when}.", lock.name),
        ),
        DoorEvent::Forced => (
            format!("{} was forced", lock.name),
            format!(
                "{} was forced open at {when}: the door opened without the lock releasing it.",
                lock.name
            ),
        ),
        DoorEvent::HeldOpen { seconds } => (
            format!("{} was left open", lock.name),
            format!("{} stood open for {seconds} seconds at {when}.", lock.name),
        ),
        DoorEvent::Jammed => (
            format!("{} is jammed", lock.name),
            format!(
                "The bolt of {} jammed at {when}. Responders may need the key box or a physical key.",
                lock.name
            ),
        ),
    };
    mail_household(tx, lock, "door.event", seq, &subject, &text, now).await
}

async fn token_context(
    tx: &impl GenericClient,
    lock: Uuid,
    token_hash: &Vec<u8>,
) -> Result<Option<TokenContext>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT g.incident_id, i.cad_number, coalesce(p.label, u.unit, g.unit, u.display_name),
                    t.remote_open
             FROM issued_tokens t
             LEFT JOIN grants g ON g.id = t.grant_id
             LEFT JOIN incidents i ON i.id = g.incident_id
             LEFT JOIN trusted_parties p ON p.id = t.trusted_party_id
             JOIN users u ON u.id = t.responder_id
             WHERE t.lock_id = $1 AND t.token_hash = $2",
            &[&lock, token_hash],
        )
        .await?;
    Ok(row.map(|r| TokenContext {
        incident: r.get(0),
        cad_number: r.get(1),
        opened_by: r.get(2),
        remote: r.get(3),
    }))
}

/// Mails the homeowner (and the plan's contacts, where the plan says so) about a lock event.
async fn mail_household(
    tx: &impl GenericClient,
    lock: &LockIdentity,
    kind: &'static str,
    seq: u64,
    subject: &str,
    text: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let owner: Option<String> = tx
        .query_opt(
            "SELECT u.email FROM properties p JOIN users u ON u.id = p.owner_id
             WHERE p.municipality_id = $1 AND p.id = $2",
            &[&lock.tenant.id(), &lock.property],
        )
        .await?
        .map(|r| r.get(0));
    let mut recipients = Vec::new();
    let (to_owner, contacts) = match properties::current_plan(tx, lock.tenant, lock.property).await
    {
        Ok(plan) => (
            plan.notifications.homeowner,
            if plan.notifications.contacts {
                plan.contacts
                    .as_array()
                    .map(|list| {
                        list.iter()
                            .filter_map(|c| c.get("email").and_then(|e| e.as_str()))
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                Vec::new()
            },
        ),
        Err(StoreError::NotFound) => (true, Vec::new()),
        Err(e) => return Err(e),
    };
    if to_owner && let Some(owner) = owner {
        recipients.push(owner);
    }
    recipients.extend(contacts);
    let html = format!("<p>{}</p>", html_escape(text));
    for recipient in recipients {
        let Ok(to) = Email::parse(&recipient) else {
            continue;
        };
        let mail = Mail {
            dedupe_key: format!("{kind}:{}:{seq}:{}", lock.id, to.as_str().to_lowercase()),
            kind,
            to,
            subject: subject.to_owned(),
            text: text.to_owned(),
            html: html.clone(),
        };
        notify::enqueue(tx, lock.tenant, &mail, now).await?;
    }
    Ok(())
}

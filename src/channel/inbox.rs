//! The per-lock inbox: tokens, revocations, trust bundles and keypad settings waiting for a lock,
//! in order.
//!
//! [`push`] runs inside the caller's transaction: the entry, its sequence number and the `NOTIFY`
//! that wakes the replica holding the lock's connection all commit together with the event that
//! caused them (PostgreSQL delivers a notification only when its transaction commits). Nothing is
//! lost if the server dies after the commit: the entry is in the table and is sent when the agent
//! next resumes.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::store::{StoreError, Tenant};

/// The `LISTEN` channel replicas use to wake each other; the payload is the lock id.
pub const NOTIFY_CHANNEL: &str = "firstkey_inbox";

/// What an inbox entry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxMessage {
    /// An override token (its COSE bytes), pre-staged on the lock.
    Token(Vec<u8>),
    /// Revoke the token with this hash until it expires (Unix seconds).
    Revocation {
        /// SHA-256 of the token.
        token_hash: [u8; 32],
        /// The token's expiry; the lock may forget the revocation after it.
        expires_at: u64,
    },
    /// A new trust bundle (its signed CBOR bytes).
    TrustBundle(Vec<u8>),
    /// The homeowner's remote unlock: a `remote_open` token the lock verifies and acts on at once.
    RemoteOpen {
        /// The token's COSE bytes.
        token: Vec<u8>,
        /// Seconds to hold the door open.
        hold_secs: u32,
    },
    /// The lock's keypad code secret of this generation. Only the generation is stored; the
    /// channel derives the secret from the data key when it sends the entry (`crate::codes`).
    KeypadSecret {
        /// Secret generation, from 1.
        generation: i32,
    },
    /// A trusted party's standing-code slot at the lock, or `None` to clear it (its codes stop
    /// working at once).
    KeypadStanding {
        /// Slot 0..=99.
        slot: u8,
        /// The slot's schedule.
        schedule: Option<firstkey_agent::keypad::StandingSchedule>,
    },
}

impl InboxMessage {
    fn kind(&self) -> &'static str {
        match self {
            Self::Token(_) => "token",
            Self::Revocation { .. } => "revocation",
            Self::TrustBundle(_) => "trust_bundle",
            Self::RemoteOpen { .. } => "remote_open",
            Self::KeypadSecret { .. } => "keypad_secret",
            Self::KeypadStanding { .. } => "keypad_standing",
        }
    }

    /// Stored form: the token or bundle bytes; for a revocation, hash ‖ u64be expiry; for a remote
    /// open, u32be hold ‖ token; for a standing slot, the slot byte, then (unless cleared) u64be
    /// epoch ‖ period ‖ overlap ‖ until.
    fn payload(&self) -> Vec<u8> {
        match self {
            Self::Token(bytes) | Self::TrustBundle(bytes) => bytes.clone(),
            Self::Revocation {
                token_hash,
                expires_at,
            } => {
                let mut out = token_hash.to_vec();
                out.extend_from_slice(&expires_at.to_be_bytes());
                out
            }
            Self::RemoteOpen { token, hold_secs } => {
                let mut out = hold_secs.to_be_bytes().to_vec();
                out.extend_from_slice(token);
                out
            }
            Self::KeypadSecret { generation } => generation.to_be_bytes().to_vec(),
            Self::KeypadStanding { slot, schedule } => {
                let mut out = vec![*slot];
                if let Some(s) = schedule {
                    for v in [s.epoch, s.period_secs, s.overlap_secs, s.until] {
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                }
                out
            }
        }
    }

    /// Parses a stored entry; `None` for a kind or payload this version does not know.
    pub fn from_stored(kind: &str, payload: &[u8]) -> Option<Self> {
        match kind {
            "token" => Some(Self::Token(payload.to_vec())),
            "trust_bundle" => Some(Self::TrustBundle(payload.to_vec())),
            "revocation" => {
                let (hash, expiry) = payload.split_at_checked(32)?;
                Some(Self::Revocation {
                    token_hash: hash.try_into().ok()?,
                    expires_at: u64::from_be_bytes(expiry.try_into().ok()?),
                })
            }
            "remote_open" => {
                let (hold, token) = payload.split_at_checked(4)?;
                Some(Self::RemoteOpen {
                    token: token.to_vec(),
                    hold_secs: u32::from_be_bytes(hold.try_into().ok()?),
                })
            }
            "keypad_secret" => Some(Self::KeypadSecret {
                generation: i32::from_be_bytes(payload.try_into().ok()?),
            }),
            "keypad_standing" => {
                let (slot, rest) = payload.split_first()?;
                let schedule = match rest.len() {
                    0 => None,
                    32 => {
                        let word = |i: usize| {
                            rest.get(i * 8..i * 8 + 8)
                                .and_then(|b| b.try_into().ok())
                                .map(u64::from_be_bytes)
                        };
                        Some(firstkey_agent::keypad::StandingSchedule {
                            epoch: word(0)?,
                            period_secs: word(1)?,
                            overlap_secs: word(2)?,
                            until: word(3)?,
                        })
                    }
                    _ => return None,
                };
                Some(Self::KeypadStanding {
                    slot: *slot,
                    schedule,
                })
            }
            _ => None,
        }
    }
}

/// Appends `message` to the lock's inbox and notifies every replica; returns its sequence number.
/// A lock of another tenant is `NotFound`. Its span names only the entry's kind (a closed set).
#[tracing::instrument(name = "inbox.push", skip_all, fields(kind = message.kind()))]
pub async fn push(
    tx: &impl GenericClient,
    tenant: Tenant,
    lock: Uuid,
    message: &InboxMessage,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let row = tx
        .query_opt(
            "UPDATE locks SET inbox_next_seq = inbox_next_seq + 1 WHERE municipality_id = $1 AND id = $2
             RETURNING inbox_next_seq - 1",
            &[&tenant.id(), &lock],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    let seq: i64 = row.get(0);
    tx.execute(
        "INSERT INTO lock_inbox (lock_id, seq, municipality_id, kind, payload, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&lock, &seq, &tenant.id(), &message.kind(), &message.payload(), &now],
    )
    .await?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&NOTIFY_CHANNEL, &lock.to_string()],
    )
    .await?;
    Ok(seq)
}

/// Entries of a lock after `after_seq`, oldest first, at most `limit`. The statement is prepared
/// once per pooled connection (a woken session's read is one round trip, not two: it is on the
/// path from commit to the lock).
pub async fn pending(
    client: &impl GenericClient,
    lock: Uuid,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<(i64, InboxMessage)>, StoreError> {
    let statement = client
        .prepare_cached(
            "SELECT seq, kind, payload FROM lock_inbox WHERE lock_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .await?;
    let rows = client
        .query(&statement, &[&lock, &after_seq, &limit])
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let kind: String = r.get(1);
            let payload: Vec<u8> = r.get(2);
            InboxMessage::from_stored(&kind, &payload).map(|m| (r.get(0), m))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standing_slot_survives_storage_and_nothing_else_parses_as_one() {
        let schedule = firstkey_agent::keypad::StandingSchedule {
            epoch: 1_800_000_000,
            period_secs: 7 * 86_400,
            overlap_secs: 86_400,
            until: 1_800_000_000 + 30 * 86_400,
        };
        for message in [
            InboxMessage::KeypadStanding {
                slot: 42,
                schedule: Some(schedule),
            },
            InboxMessage::KeypadStanding {
                slot: 7,
                schedule: None,
            },
        ] {
            let back = InboxMessage::from_stored(message.kind(), &message.payload());
            assert_eq!(back, Some(message));
        }
        assert_eq!(InboxMessage::from_stored("keypad_standing", &[]), None);
        assert_eq!(InboxMessage::from_stored("keypad_standing", &[1; 20]), None);
    }
}

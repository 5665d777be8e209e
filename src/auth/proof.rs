//! In-request proofs: the WebAuthn assertion a token request carries with it, over a challenge the
//! server handed out without storing anything (issue 14 §1: one HTTP request, one transaction per
//! token).
//!
//! A *token challenge* is 57 bytes: a version byte, the second it was issued (big-endian `i64`), 16
//! random bytes, and an HMAC-SHA256 over all of that and what the challenge is for — the session
//! that asked, its municipality and user, and the request it may authorise (a grant and a lock, or
//! a trusted party's standing access and a lock, [`Bound`]) — under a key derived from the data KEK
//! (`AuthKeys`), so every replica can check a challenge another one handed out. The server recomputes
//! the tag instead of reading a row: a forged challenge, one for another session, user, grant or
//! lock, and one older than [`CHALLENGE_LIFETIME`] are refused before any database work.
//!
//! The assertion itself is checked by webauthn-rs against the stored credential it names (origin,
//! RP id, user verification, signature, counter) with the challenge put into the ceremony state
//! ([`wa::Expected::Challenge`]). Single use does not rest on the signature counter (passkeys and
//! some security keys always report 0): the challenge's tag is inserted into
//! `used_token_challenges` (primary key) inside the issuing transaction, *before* the assertion is
//! verified, so a replayed request — a double submit included — is refused as a replay and never
//! reaches the counter check (which would suspend the key). Rows live as long as the challenge and
//! are swept afterwards (`prune`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;
use webauthn_rs::prelude::{PublicKeyCredential, Webauthn};

use super::client::AuthKeys;
use super::error::AuthError;
use super::session::Actor;
use super::webauthn::{self as wa, Claimant, CredentialKind, Purpose};
use crate::audit::{self, Event, Outcome};
use crate::store::StoreError;

/// How long a token challenge may be answered (a ceremony's lifetime).
pub const CHALLENGE_LIFETIME: Duration = wa::CEREMONY_LIFETIME;
/// How far in the future a challenge's issue time may lie (replicas' clocks differ a little).
const CLOCK_SKEW: Duration = Duration::seconds(60);

const VERSION: u8 = 1;
const ISSUED_LEN: usize = 8;
const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 32;
/// Length of a token challenge.
pub const CHALLENGE_LEN: usize = 1 + ISSUED_LEN + NONCE_LEN + TAG_LEN;

/// The request a token challenge may authorise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A responder's token for `lock` under `grant`.
    Grant {
        /// The grant.
        grant: Uuid,
        /// The lock.
        lock: Uuid,
    },
    /// A trusted party's token for `lock` under their standing access `party`.
    Trusted {
        /// The trusted party record.
        party: Uuid,
        /// The lock.
        lock: Uuid,
    },
}

/// What checks an in-request proof: the relying party and the server's keys.
#[derive(Clone, Copy)]
pub struct Proving<'a> {
    /// The relying party (`public_origin`).
    pub rp: &'a Webauthn,
    /// The identity core's keys (the challenge key among them).
    pub keys: &'a AuthKeys,
}

fn signed_input(actor: &Actor, bound: Bound, head: &[u8]) -> Vec<u8> {
    let (kind, subject, lock) = match bound {
        Bound::Grant { grant, lock } => (b"grant", grant, lock),
        Bound::Trusted { party, lock } => (b"trust", party, lock),
    };
    let mut input = Vec::with_capacity(24 + head.len() + 5 + 16 * 5);
    input.extend_from_slice(b"firstkey token challenge\0");
    input.extend_from_slice(head);
    input.extend_from_slice(actor.session_id.as_bytes());
    input.extend_from_slice(actor.tenant.id().as_bytes());
    input.extend_from_slice(actor.user_id.as_bytes());
    input.extend_from_slice(kind);
    input.extend_from_slice(subject.as_bytes());
    input.extend_from_slice(lock.as_bytes());
    input
}

/// A fresh challenge for `actor`'s session and `bound`, issued `now`.
pub fn challenge(
    keys: &AuthKeys,
    actor: &Actor,
    bound: Bound,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, StoreError> {
    let mut head = Vec::with_capacity(CHALLENGE_LEN);
    head.push(VERSION);
    head.extend_from_slice(&now.timestamp().to_be_bytes());
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| StoreError::Unavailable("system random number generator failed".to_owned()))?;
    head.extend_from_slice(&nonce);
    let tag = hmac::sign(keys.token_challenge(), &signed_input(actor, bound, &head));
    head.extend_from_slice(tag.as_ref());
    Ok(head)
}

/// Until when a challenge issued at `issued` may be answered.
pub fn expires_at(issued: DateTime<Utc>) -> DateTime<Utc> {
    issued + CHALLENGE_LIFETIME
}

/// A challenge that checked out: its tag (the single-use key) and until when it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The HMAC tag, unique per challenge.
    pub tag: [u8; TAG_LEN],
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// Checks `bytes` as a challenge of `actor`'s session for `bound` at `now`; the refusal is a reason
/// for the audit log: `challenge_malformed`, `challenge_not_ours` (forged, or another session's,
/// user's, grant's or lock's: the tag cannot tell which) or `challenge_expired`.
pub fn check(
    keys: &AuthKeys,
    actor: &Actor,
    bound: Bound,
    bytes: &[u8],
    now: DateTime<Utc>,
) -> Result<Checked, &'static str> {
    if bytes.len() != CHALLENGE_LEN || bytes.first() != Some(&VERSION) {
        return Err("challenge_malformed");
    }
    let (head, tag) = bytes.split_at(CHALLENGE_LEN - TAG_LEN);
    hmac::verify(
        keys.token_challenge(),
        &signed_input(actor, bound, head),
        tag,
    )
    .map_err(|_| "challenge_not_ours")?;
    let issued: [u8; ISSUED_LEN] = head
        .get(1..=ISSUED_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or("challenge_malformed")?;
    let issued =
        DateTime::from_timestamp(i64::from_be_bytes(issued), 0).ok_or("challenge_malformed")?;
    if issued > now + CLOCK_SKEW || now >= expires_at(issued) {
        return Err("challenge_expired");
    }
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(tag);
    Ok(Checked {
        tag: out,
        expires_at: expires_at(issued),
    })
}

/// The challenge an assertion answers, from its client data (`clientDataJSON.challenge`); what it
/// signed is checked later by webauthn-rs against the same bytes.
pub fn answered_challenge(response: &PublicKeyCredential) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct ClientData {
        challenge: String,
    }
    let data: ClientData = serde_json::from_slice(&response.response.client_data_json).ok()?;
    URL_SAFE_NO_PAD.decode(data.challenge).ok()
}

/// The WebAuthn request options for a token challenge, over `actor`'s active credentials (what a
/// browser passes to `navigator.credentials.get()`); no database write.
pub async fn request_options(
    client: &impl GenericClient,
    proving: Proving<'_>,
    actor: &Actor,
    bound: Bound,
    now: DateTime<Utc>,
) -> Result<(serde_json::Value, DateTime<Utc>), AuthError> {
    let kind = CredentialKind::for_roles(&actor.roles);
    let credentials = wa::active_credentials(client, actor.tenant, actor.user_id, kind).await?;
    let challenge = challenge(proving.keys, actor, bound, now)?;
    let (options, _) = wa::start_authentication_over(proving.rp, kind, &credentials, &challenge)?
        .ok_or(AuthError::AuthenticationFailed)?;
    Ok((options, expires_at(now)))
}

/// Verifies the assertion a token request for `bound` carries, inside the issuing transaction `tx`:
/// the challenge it answers must be this session's for `bound` and unexpired, must not have been
/// used (its use is recorded here, in `tx`), and the assertion must verify against the actor's
/// stored credential. Returns the credential's row id. Every refusal is audited in `tx`
/// (`auth.token_assertion`); the caller commits `tx` in that case too and mints nothing. A bad
/// challenge is [`AuthError::CeremonyInvalid`], a refused assertion
/// [`AuthError::AuthenticationFailed`].
pub async fn verify_in(
    tx: &impl GenericClient,
    proving: Proving<'_>,
    actor: &Actor,
    bound: Bound,
    response: &PublicKeyCredential,
    now: DateTime<Utc>,
) -> Result<Uuid, AuthError> {
    let refuse = |reason: &'static str| {
        Event::new(Purpose::Token.action(), Outcome::Deny)
            .actor(actor.user_id)
            .details(serde_json::json!({ "reason": reason }))
    };
    let checked = answered_challenge(response)
        .ok_or("challenge_malformed")
        .and_then(|c| check(proving.keys, actor, bound, &c, now).map(|ok| (c, ok)));
    let (challenge, checked) = match checked {
        Ok(ok) => ok,
        Err(reason) => {
            audit::record(tx, actor.tenant, &refuse(reason), now).await?;
            return Err(AuthError::CeremonyInvalid);
        }
    };
    let insert = tx
        .prepare_cached(
            "INSERT INTO used_token_challenges (tag, municipality_id, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (tag) DO NOTHING",
        )
        .await
        .map_err(StoreError::from)?;
    let first_use = tx
        .execute(
            &insert,
            &[
                &checked.tag.as_slice(),
                &actor.tenant.id(),
                &checked.expires_at,
            ],
        )
        .await
        .map_err(StoreError::from)?
        == 1;
    if !first_use {
        audit::record(tx, actor.tenant, &refuse("challenge_replayed"), now).await?;
        return Err(AuthError::CeremonyInvalid);
    }
    wa::verify_assertion(
        tx,
        proving.rp,
        Claimant {
            tenant: actor.tenant,
            user: actor.user_id,
            purpose: Purpose::Token,
        },
        wa::Expected::Challenge(&challenge),
        response,
        now,
    )
    .await
}

/// Deletes the used challenges that can no longer be answered anyway; returns how many.
pub async fn prune(client: &impl GenericClient, now: DateTime<Utc>) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "DELETE FROM used_token_challenges WHERE expires_at <= $1",
            &[&now],
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Kek;
    use crate::store::Tenant;

    fn actor() -> Actor {
        Actor {
            tenant: Tenant::assume(Uuid::from_u128(1)),
            user_id: Uuid::from_u128(2),
            roles: vec![crate::domain::Role::Responder],
            agency_id: None,
            session_id: Uuid::from_u128(3),
            stepped_up_at: None,
            step_up_credential: None,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000 + secs, 0).unwrap()
    }

    const BOUND: Bound = Bound::Grant {
        grant: Uuid::from_u128(10),
        lock: Uuid::from_u128(11),
    };

    #[test]
    fn a_challenge_checks_for_its_own_session_and_request_until_it_expires() {
        let keys = AuthKeys::derive(&Kek::from_bytes([7u8; 32]));
        let a = actor();
        let c = challenge(&keys, &a, BOUND, at(0)).unwrap();
        assert_eq!(c.len(), CHALLENGE_LEN);
        let ok = check(&keys, &a, BOUND, &c, at(299)).unwrap();
        assert_eq!(ok.expires_at, at(300));
        assert_eq!(
            check(&keys, &a, BOUND, &c, at(300)),
            Err("challenge_expired")
        );
        // Two challenges for the same request differ (their tags are the single-use keys).
        let d = challenge(&keys, &a, BOUND, at(0)).unwrap();
        assert_ne!(check(&keys, &a, BOUND, &d, at(1)).unwrap().tag, ok.tag);
    }

    #[test]
    fn another_session_user_lock_grant_key_or_a_flipped_bit_is_not_ours() {
        let keys = AuthKeys::derive(&Kek::from_bytes([7u8; 32]));
        let a = actor();
        let c = challenge(&keys, &a, BOUND, at(0)).unwrap();
        let mut other_session = a.clone();
        other_session.session_id = Uuid::from_u128(4);
        let mut other_user = a.clone();
        other_user.user_id = Uuid::from_u128(5);
        let not_ours = Err("challenge_not_ours");
        assert_eq!(check(&keys, &other_session, BOUND, &c, at(1)), not_ours);
        assert_eq!(check(&keys, &other_user, BOUND, &c, at(1)), not_ours);
        let other_lock = Bound::Grant {
            grant: Uuid::from_u128(10),
            lock: Uuid::from_u128(12),
        };
        let other_grant = Bound::Grant {
            grant: Uuid::from_u128(13),
            lock: Uuid::from_u128(11),
        };
        let trusted = Bound::Trusted {
            party: Uuid::from_u128(10),
            lock: Uuid::from_u128(11),
        };
        assert_eq!(check(&keys, &a, other_lock, &c, at(1)), not_ours);
        assert_eq!(check(&keys, &a, other_grant, &c, at(1)), not_ours);
        assert_eq!(check(&keys, &a, trusted, &c, at(1)), not_ours);
        let other_keys = AuthKeys::derive(&Kek::from_bytes([8u8; 32]));
        assert_eq!(check(&other_keys, &a, BOUND, &c, at(1)), not_ours);
        for i in 0..c.len() {
            let mut flipped = c.clone();
            flipped[i] ^= 1;
            assert!(
                check(&keys, &a, BOUND, &flipped, at(1)).is_err(),
                "bit of byte {i}"
            );
        }
        // A later issue time is refused by the tag, not believed.
        let mut moved = c.clone();
        moved[8] ^= 0x40;
        assert_eq!(check(&keys, &a, BOUND, &moved, at(1)), not_ours);
        assert_eq!(
            check(&keys, &a, BOUND, &c[..c.len() - 1], at(1)),
            Err("challenge_malformed")
        );
        assert_eq!(
            check(&keys, &a, BOUND, &[], at(1)),
            Err("challenge_malformed")
        );
    }
}

//! Signed, hash-chained receipts: the lock's record of every tap decision.
//!
//! A receipt is `SignedReceipt { body, signature }` in CBOR, where `body` is the CBOR encoding of
//! a [`ReceiptBody`] kept as the exact bytes that were signed, and `signature` is Ed25519 by the
//! device key over `"firstkey-receipt-v1" ‖ body`. A receipt's identity is
//! `SHA-256(body ‖ signature)`; each body carries its predecessor's identity in `prev` (32 zero
//! bytes for the first), and sequence numbers count up from 1 without gaps. [`verify_chain`]
//! checks a whole chain given the device public key. Receipts name the token by hash and `cti`,
//! never by subject or notes: the server joins them to its own records.

use serde::{Deserialize, Serialize};

use crate::protocol::tap::Outcome;
use crate::protocol::{Bytes, FrameError, decode, encode};

const RECEIPT_DOMAIN: &[u8] = b"firstkey-receipt-v1";

/// Receipt format version.
pub const RECEIPT_VERSION: u16 = 1;

/// The signed content of a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    /// [`RECEIPT_VERSION`].
    pub version: u16,
    /// The lock that decided.
    pub lock_id: String,
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The lock's clock when it decided (Unix seconds).
    pub time: u64,
    /// Identity of the previous receipt (zeros for the first).
    pub prev: Bytes<32>,
    /// What the presenter was told.
    pub outcome: Outcome,
    /// `ok` for an allow; otherwise the token crate's refusal code or an agent reason
    /// (`no_trust_bundle`, `actuator_failed`).
    pub reason: String,
    /// SHA-256 of the presented token's bytes, when a token was presented.
    pub token_hash: Option<Bytes<32>>,
    /// The token's `cti`, when the token verified (always on an allow).
    pub token_id: Option<Bytes<16>>,
    /// The token's `exp`, when the token verified; replay records may be pruned after it.
    pub expires_at: Option<u64>,
    /// What happened to the door, when the receipt records a door event rather than a decision
    /// (opened with the key, forced, held open, jammed). Absent otherwise, and absent from door
    /// events recorded before this field existed (their `reason` names the event with the `door:`
    /// prefix, which [`crate::events::DoorEvent::of_receipt`] still reads). Skipped when absent,
    /// so the encoding, and so the signature and hash, of every other receipt is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub door_event: Option<crate::events::DoorEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SignedReceiptWire {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// A receipt whose signature and place in a chain have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt {
    /// The decoded body.
    pub body: ReceiptBody,
    /// `SHA-256(body ‖ signature)`.
    pub hash: [u8; 32],
    /// The encoded receipt, as stored and uploaded.
    pub encoded: Vec<u8>,
}

/// Why a receipt or chain did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Not a well-formed receipt.
    #[error("receipt {index}: malformed")]
    Malformed {
        /// Position in the list checked (0-based).
        index: usize,
    },
    /// The device signature does not verify.
    #[error("receipt {index}: bad signature")]
    BadSignature {
        /// Position in the list checked (0-based).
        index: usize,
    },
    /// The sequence number does not follow its predecessor's.
    #[error("receipt {index}: sequence {found}, expected {expected}")]
    Sequence {
        /// Position in the list checked (0-based).
        index: usize,
        /// Expected sequence number.
        expected: u64,
        /// Sequence number found.
        found: u64,
    },
    /// `prev` is not the predecessor's identity.
    #[error("receipt {index}: broken hash link")]
    BrokenLink {
        /// Position in the list checked (0-based).
        index: usize,
    },
    /// The receipt is for another lock.
    #[error("receipt {index}: wrong lock")]
    WrongLock {
        /// Position in the list checked (0-based).
        index: usize,
    },
}

/// Where a chain (or a segment of one) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence number of the last receipt (0 before the first).
    pub seq: u64,
    /// Identity of the last receipt (zeros before the first).
    pub hash: [u8; 32],
}

impl ChainHead {
    /// The empty chain.
    pub const GENESIS: ChainHead = ChainHead {
        seq: 0,
        hash: [0; 32],
    };
}

/// Build and sign the next receipt after `head`. Returns the verified receipt (with its encoding).
pub fn sign_next(
    key: &ring::signature::Ed25519KeyPair,
    head: ChainHead,
    mut body: ReceiptBody,
) -> Result<VerifiedReceipt, FrameError> {
    body.version = RECEIPT_VERSION;
    body.seq = head.seq.checked_add(1).ok_or(FrameError::Encode)?;
    body.prev = Bytes(head.hash);
    let body_bytes = encode(&body)?;
    let signature = key.sign(&signed_message(&body_bytes)).as_ref().to_vec();
    let hash = identity(&body_bytes, &signature);
    let encoded = encode(&SignedReceiptWire {
        body: body_bytes,
        signature,
    })?;
    Ok(VerifiedReceipt {
        body,
        hash,
        encoded,
    })
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(RECEIPT_DOMAIN.len() + body.len());
    m.extend_from_slice(RECEIPT_DOMAIN);
    m.extend_from_slice(body);
    m
}

fn identity(body: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(body);
    ctx.update(signature);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Check one encoded receipt's signature; does not check its place in a chain.
pub fn verify_one(
    encoded: &[u8],
    device_public_key: &[u8],
) -> Result<VerifiedReceipt, ReceiptError> {
    verify_at(encoded, device_public_key, 0)
}

fn verify_at(
    encoded: &[u8],
    device_public_key: &[u8],
    index: usize,
) -> Result<VerifiedReceipt, ReceiptError> {
    let wire: SignedReceiptWire = decode(encoded).map_err(|_| ReceiptError::Malformed { index })?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, device_public_key)
        .verify(&signed_message(&wire.body), &wire.signature)
        .map_err(|_| ReceiptError::BadSignature { index })?;
    let body: ReceiptBody = decode(&wire.body).map_err(|_| ReceiptError::Malformed { index })?;
    Ok(VerifiedReceipt {
        body,
        hash: identity(&wire.body, &wire.signature),
        encoded: encoded.to_vec(),
    })
}

/// Decode a receipt this lock wrote itself, without checking its signature (the append-only
/// log's checksums already guard it); for fast recovery at start-up.
pub fn decode_own(encoded: &[u8]) -> Result<VerifiedReceipt, ReceiptError> {
    let wire: SignedReceiptWire =
        decode(encoded).map_err(|_| ReceiptError::Malformed { index: 0 })?;
    let body: ReceiptBody = decode(&wire.body).map_err(|_| ReceiptError::Malformed { index: 0 })?;
    Ok(VerifiedReceipt {
        body,
        hash: identity(&wire.body, &wire.signature),
        encoded: encoded.to_vec(),
    })
}

// The receipt log's records: the encoded receipt, and the time floor in force once the decision
// it records was made. Carrying the floor in the same record makes a tap decision one durable
// write (one fsync): the receipt, the token's use and the floor the token's `iat` raised survive a
// crash together or not at all. Record layout: CBOR array `[receipt: bstr, floor: uint]`. Logs
// written before this framing hold the bare receipt (a CBOR map, `0xa2`); such a record carries no
// floor.
#[derive(Serialize, Deserialize)]
struct LogRecordWire(#[serde(with = "serde_bytes")] Vec<u8>, u64);

/// The first byte of a CBOR array of two: a framed record (a bare receipt is a map, `0xa2`).
const LOG_RECORD_TAG: u8 = 0x82;

/// Frame `receipt` (an encoded receipt) with the floor in force after it, for the receipt log.
pub fn encode_log_record(receipt: &[u8], floor: u64) -> Result<Vec<u8>, FrameError> {
    encode(&LogRecordWire(receipt.to_vec(), floor))
}

/// Split a receipt-log record into the receipt and the floor it carries. Bare receipts (the
/// framing before the floor was carried) come back with `floor: None`.
pub fn decode_log_record(record: &[u8]) -> Result<(Vec<u8>, Option<u64>), ReceiptError> {
    if record.first() == Some(&LOG_RECORD_TAG) {
        let LogRecordWire(receipt, floor) =
            decode(record).map_err(|_| ReceiptError::Malformed { index: 0 })?;
        Ok((receipt, Some(floor)))
    } else {
        Ok((record.to_vec(), None))
    }
}

/// The receipt held by a receipt-log record (either framing); malformed records come back as
/// they are, for the receipt check to refuse.
pub fn log_record_receipt(record: &[u8]) -> Vec<u8> {
    decode_log_record(record).map_or_else(|_| record.to_vec(), |(r, _)| r)
}

/// Verify a chain segment that follows `start`: every signature, every sequence number and hash
/// link, and that every receipt is for `lock_id`. Returns the new head.
pub fn verify_chain<'a>(
    receipts: impl IntoIterator<Item = &'a [u8]>,
    device_public_key: &[u8],
    lock_id: &str,
    start: ChainHead,
) -> Result<ChainHead, ReceiptError> {
    let mut head = start;
    for (index, encoded) in receipts.into_iter().enumerate() {
        let r = verify_at(encoded, device_public_key, index)?;
        let expected = head.seq.saturating_add(1);
        if r.body.seq != expected {
            return Err(ReceiptError::Sequence {
                index,
                expected,
                found: r.body.seq,
            });
        }
        if r.body.prev.0 != head.hash {
            return Err(ReceiptError::BrokenLink { index });
        }
        if r.body.lock_id != lock_id {
            return Err(ReceiptError::WrongLock { index });
        }
        head = ChainHead {
            seq: r.body.seq,
            hash: r.hash,
        };
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    fn key() -> ring::signature::Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pk8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        ring::signature::Ed25519KeyPair::from_pkcs8(pk8.as_ref()).unwrap()
    }

    fn body(outcome: Outcome, reason: &str) -> ReceiptBody {
        ReceiptBody {
            version: 0,
            lock_id: "door".into(),
            seq: 0,
            time: 1000,
            prev: Bytes([0; 32]),
            outcome,
            reason: reason.into(),
            token_hash: Some(Bytes([1; 32])),
            token_id: None,
            expires_at: None,
            door_event: None,
        }
    }

    fn chain(k: &ring::signature::Ed25519KeyPair, n: usize) -> Vec<Vec<u8>> {
        let mut head = ChainHead::GENESIS;
        let mut out = Vec::new();
        for i in 0..n {
            let o = if i % 2 == 0 {
                Outcome::Allow
            } else {
                Outcome::Deny
            };
            let r = sign_next(k, head, body(o, "ok")).unwrap();
            head = ChainHead {
                seq: r.body.seq,
                hash: r.hash,
            };
            out.push(r.encoded);
        }
        out
    }

    #[test]
    fn chain_verifies_and_tampering_is_caught() {
        let k = key();
        let pk = k.public_key().as_ref().to_vec();
        let c = chain(&k, 5);
        let head =
            verify_chain(c.iter().map(Vec::as_slice), &pk, "door", ChainHead::GENESIS).unwrap();
        assert_eq!(head.seq, 5);

        // Drop one: sequence gap.
        let mut gap = c.clone();
        gap.remove(2);
        assert!(matches!(
            verify_chain(
                gap.iter().map(Vec::as_slice),
                &pk,
                "door",
                ChainHead::GENESIS
            ),
            Err(ReceiptError::Sequence { index: 2, .. })
        ));
        // Flip a byte anywhere: signature or decoding fails.
        for pos in 0..c[3].len() {
            let mut t = c.clone();
            t[3][pos] ^= 0x01;
            assert!(
                verify_chain(t.iter().map(Vec::as_slice), &pk, "door", ChainHead::GENESIS).is_err()
            );
        }
        // Another lock's key or id.
        let other = key();
        assert!(
            verify_chain(
                c.iter().map(Vec::as_slice),
                other.public_key().as_ref(),
                "door",
                ChainHead::GENESIS
            )
            .is_err()
        );
        assert!(matches!(
            verify_chain(c.iter().map(Vec::as_slice), &pk, "back", ChainHead::GENESIS),
            Err(ReceiptError::WrongLock { index: 0 })
        ));
        // A segment verifies from its predecessor's head.
        let first = verify_chain(
            c[..2].iter().map(Vec::as_slice),
            &pk,
            "door",
            ChainHead::GENESIS,
        )
        .unwrap();
        assert_eq!(
            verify_chain(c[2..].iter().map(Vec::as_slice), &pk, "door", first).unwrap(),
            head
        );
    }

    #[test]
    fn a_re_signed_fork_is_caught_by_the_link() {
        let k = key();
        let pk = k.public_key().as_ref().to_vec();
        let mut c = chain(&k, 3);
        // Re-sign receipt 2 with different content: it is validly signed but receipt 3 no longer
        // links to it.
        let head1 = verify_chain(
            c[..1].iter().map(Vec::as_slice),
            &pk,
            "door",
            ChainHead::GENESIS,
        )
        .unwrap();
        c[1] = sign_next(&k, head1, body(Outcome::Allow, "forged"))
            .unwrap()
            .encoded;
        assert!(matches!(
            verify_chain(c.iter().map(Vec::as_slice), &pk, "door", ChainHead::GENESIS),
            Err(ReceiptError::BrokenLink { index: 2 })
        ));
    }
}

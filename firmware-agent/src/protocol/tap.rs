//! The tap exchange: what a responder's device and the lock say at the door.
//!
//! ```text
//! lock      → presenter  Challenge { version, lock_id, challenge[32] }
//! presenter → lock       Present   { token, proof }
//! lock      → presenter  Decision  { outcome, ack }
//! ```
//! The presenter learns allow or deny and nothing else: the reason stays in the lock's receipt,
//! which goes to the server. What it does get is a [`TapAck`] signed by the lock's device key,
//! binding its own challenge to the sequence number and hash of that receipt, so the responder can
//! later find the decision in the audit log.

use serde::{Deserialize, Serialize};

use super::{Bytes, FrameError, decode, encode};

/// Hard cap on a tap frame's payload: a token is at most 1 KiB, a WebAuthn assertion a few hundred
/// bytes.
pub const MAX_TAP_FRAME: usize = 4096;

/// Domain separation for [`TapAck`] signatures.
const TAP_ACK_DOMAIN: &[u8] = b"firstkey-tap-ack-v1";

/// The lock's two messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockMessage {
    /// Opens the exchange with a fresh random challenge.
    Challenge {
        /// [`super::PROTOCOL_VERSION`].
        version: u16,
        /// The lock's id (the token's `aud`), signed over in the proof of possession.
        lock_id: String,
        /// 32 fresh random bytes.
        challenge: Bytes<32>,
    },
    /// Ends the exchange.
    Decision {
        /// Allow or deny; nothing more.
        outcome: Outcome,
        /// The lock's signed acknowledgement of the receipt it wrote.
        ack: TapAck,
    },
    /// The keypad is locked after repeated wrong codes: no decision, no receipt.
    KeypadLocked {
        /// Seconds until it takes entries again.
        retry_after: u64,
    },
}

/// The presenter's one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenterMessage {
    /// A token and the proof that the presenter holds the key named in its `cnf` claim.
    Present {
        /// The COSE_Sign1 override token, as minted.
        #[serde(with = "serde_bytes")]
        token: Vec<u8>,
        /// The token crate's encoded proof of possession (`firstkey_token::Proof::to_cbor`) over
        /// `firstkey_token::pop_message(challenge, lock id, token hash)`; absent for a token
        /// without `cnf`.
        proof: Option<serde_bytes::ByteBuf>,
    },
    /// A code typed at the lock's keypad (`crate::keypad`): digits, spaces and dashes; the lock
    /// reads at most `keypad::MAX_ENTRY_CHARS` characters. The challenge is not used.
    Keypad {
        /// What was typed.
        code: String,
    },
}

/// The only thing a presenter learns about a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The door opens.
    Allow,
    /// The door stays shut.
    Deny,
}

/// The lock's signed statement "I answered your challenge with this outcome and wrote it down as
/// receipt `seq` with hash `receipt_hash`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapAck {
    /// Receipt sequence number in the lock's chain.
    pub seq: u64,
    /// SHA-256 identity of the receipt (see `receipt` module).
    pub receipt_hash: Bytes<32>,
    /// Ed25519 signature by the device key over [`TapAck::signed_bytes`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl TapAck {
    /// The bytes the device key signs: domain ‖ challenge ‖ lock id length (u16 BE) ‖ lock id ‖
    /// seq (u64 BE) ‖ receipt hash ‖ outcome (1 allow, 0 deny).
    pub fn signed_bytes(
        challenge: &[u8; 32],
        lock_id: &str,
        seq: u64,
        receipt_hash: &[u8; 32],
        outcome: Outcome,
    ) -> Vec<u8> {
        let id = lock_id.as_bytes();
        let mut m = Vec::with_capacity(TAP_ACK_DOMAIN.len() + 32 + 2 + id.len() + 8 + 32 + 1);
        m.extend_from_slice(TAP_ACK_DOMAIN);
        m.extend_from_slice(challenge);
        m.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_be_bytes());
        m.extend_from_slice(id);
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(receipt_hash);
        m.push(match outcome {
            Outcome::Allow => 1,
            Outcome::Deny => 0,
        });
        m
    }

    /// Check the ack against the device public key, for the challenge this presenter received.
    pub fn verify(
        &self,
        device_public_key: &[u8],
        challenge: &[u8; 32],
        lock_id: &str,
        outcome: Outcome,
    ) -> bool {
        let msg = Self::signed_bytes(challenge, lock_id, self.seq, &self.receipt_hash.0, outcome);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, device_public_key)
            .verify(&msg, &self.signature)
            .is_ok()
    }
}

/// Decode a lock message from a frame payload.
pub fn decode_lock_message(payload: &[u8]) -> Result<LockMessage, FrameError> {
    decode(payload)
}

/// Decode a presenter message from a frame payload.
pub fn decode_presenter_message(payload: &[u8]) -> Result<PresenterMessage, FrameError> {
    decode(payload)
}

/// Encode a lock message as a frame payload.
pub fn encode_lock_message(msg: &LockMessage) -> Result<Vec<u8>, FrameError> {
    encode(msg)
}

/// Encode a presenter message as a frame payload.
pub fn encode_presenter_message(msg: &PresenterMessage) -> Result<Vec<u8>, FrameError> {
    encode(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let present = PresenterMessage::Present {
            token: vec![1, 2, 3],
            proof: Some(serde_bytes::ByteBuf::from(vec![4; 70])),
        };
        let bytes = encode_presenter_message(&present).unwrap();
        assert_eq!(decode_presenter_message(&bytes).unwrap(), present);
        let ch = LockMessage::Challenge {
            version: 1,
            lock_id: "l".into(),
            challenge: Bytes([9; 32]),
        };
        let bytes = encode_lock_message(&ch).unwrap();
        assert_eq!(decode_lock_message(&bytes).unwrap(), ch);
    }

    #[test]
    fn trailing_bytes_and_wrong_lengths_are_malformed() {
        let ch = LockMessage::Challenge {
            version: 1,
            lock_id: "l".into(),
            challenge: Bytes([9; 32]),
        };
        let mut bytes = encode_lock_message(&ch).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode_lock_message(&bytes),
            Err(FrameError::Malformed)
        ));
        // 31-byte challenge.
        #[derive(Serialize)]
        enum Fake {
            Challenge {
                version: u16,
                lock_id: String,
                #[serde(with = "serde_bytes")]
                challenge: Vec<u8>,
            },
        }
        let fake = encode(&Fake::Challenge {
            version: 1,
            lock_id: "l".into(),
            challenge: vec![0; 31],
        })
        .unwrap();
        assert!(matches!(
            decode_lock_message(&fake),
            Err(FrameError::Malformed)
        ));
        assert!(decode_presenter_message(&[0xff]).is_err());
        assert!(decode_presenter_message(&[]).is_err());
    }
}

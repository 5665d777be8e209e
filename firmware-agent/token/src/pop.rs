//! Proof of possession at the door: the presenter proves it holds the key named in the token's
//! `cnf` claim by signing a message bound to a fresh lock challenge, this lock and this token.
//!
//! # The PoP message
//!
//! [`pop_message`] is, byte for byte (96 to 160 bytes):
//!
//! ```text
//! "firstkey-pop-v1" 0x00      16 bytes, domain separation
//! challenge                   32 bytes, fresh random from the lock
//! len(lock id)                 1 byte  (1..=64)
//! lock id                      len bytes, ASCII
//! token hash                  32 bytes, SHA-256 of the token bytes
//! ```
//!
//! # Proofs
//!
//! - Ed25519 `cnf` key: an Ed25519 signature over the PoP message.
//! - P-256 `cnf` key, as a FIDO2 security key holds it: a WebAuthn-style assertion. The client
//!   data JSON has `"type":"webauthn.get"` and `"challenge"` = base64url (no padding) of
//!   SHA-256(PoP message). The authenticator signs `authenticatorData ‖ SHA-256(clientDataJSON)`
//!   with ECDSA P-256 / SHA-256 (ASN.1 DER signature). The lock checks the type, the challenge,
//!   the relying party (`rpIdHash` = SHA-256 of the trust bundle's `rp_id`), the user-present
//!   flag, and the signature. The signature counter is not checked: a lock sees too few of a
//!   key's assertions for it to mean anything.
//!
//! The client data is parsed with `serde_json` (alloc only, no std): JSON has enough traps
//! (escapes, nesting, duplicate keys) that a tested parser beats a hand-written one, and its
//! derived deserializer refuses duplicate `type`/`challenge` members.
//!
//! # Wire form of a [`Proof`]
//!
//! Canonical CBOR: `[0, signature: bstr .size 64]` for Ed25519, or
//! `[1, authenticatorData: bstr, clientDataJSON: bstr, signature: bstr]` for WebAuthn.

use alloc::vec::Vec;

use crate::claims::{ConfirmationKey, LockId};
use crate::refusal::Refusal;
use crate::token::TokenHash;

/// Domain separation prefix of the PoP message.
pub const POP_CONTEXT: &[u8; 16] = b"firstkey-pop-v1\0";

/// WebAuthn authenticator data flag: user present.
pub const FLAG_USER_PRESENT: u8 = 0x01;

/// WebAuthn authenticator data flag: user verified.
pub const FLAG_USER_VERIFIED: u8 = 0x04;

/// A fresh random challenge the lock sends to the presenter for each tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Challenge(pub [u8; 32]);

impl Challenge {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A proof of possession of a `cnf` key, as sent by the presenter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proof {
    /// An Ed25519 signature over [`pop_message`].
    Ed25519 {
        /// The 64-byte signature.
        signature: [u8; 64],
    },
    /// A WebAuthn-style assertion by a P-256 key.
    WebAuthn {
        /// authenticatorData: `rpIdHash(32) ‖ flags(1) ‖ signCount(4) ‖ extensions…`.
        authenticator_data: Vec<u8>,
        /// The client data JSON, exactly as signed.
        client_data_json: Vec<u8>,
        /// ECDSA P-256 / SHA-256 signature, ASN.1 DER.
        signature: Vec<u8>,
    },
}

/// What the presenter sent with the token at the door.
#[derive(Clone, Copy, Debug)]
pub struct Presentation<'a> {
    /// The challenge this lock sent for this tap.
    pub challenge: &'a Challenge,
    /// The encoded proof ([`Proof::to_cbor`]), if the presenter sent one. Decoded during
    /// verification, at the proof-of-possession step, so a malformed proof is refused in order.
    pub proof: Option<&'a [u8]>,
}

/// The message a presenter signs: `"firstkey-pop-v1\0" ‖ challenge ‖ len(lock id) ‖ lock id ‖ token hash`.
pub fn pop_message(challenge: &Challenge, lock_id: &LockId, token_hash: &TokenHash) -> Vec<u8> {
    let _ = (challenge, lock_id, token_hash);
    todo!()
}

impl Proof {
    /// The canonical CBOR wire form.
    pub fn to_cbor(&self) -> Vec<u8> {
        todo!()
    }

    /// Decodes the wire form; [`Refusal::ProofMalformed`] for anything else.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, Refusal> {
        let _ = bytes;
        todo!()
    }

    /// Signs `message` (normally [`pop_message`]) with an Ed25519 key.
    #[cfg(feature = "issuer")]
    pub fn sign_ed25519(key: &ring::signature::Ed25519KeyPair, message: &[u8]) -> Self {
        let _ = (key, message);
        todo!()
    }
}

/// Checks `proof` against `key` for `message`, with `rp_id` the relying party of WebAuthn keys.
pub(crate) fn check_proof(
    key: &ConfirmationKey,
    proof: &Proof,
    message: &[u8],
    rp_id: &str,
) -> Result<(), Refusal> {
    let _ = (key, proof, message, rp_id);
    todo!()
}

/// A software stand-in for a FIDO2 security key holding a P-256 credential: produces WebAuthn-style
/// assertions over a PoP message. For tests, the demo and the agent's `tap` client.
#[cfg(feature = "issuer")]
pub struct SoftwareAuthenticator {
    key: ring::signature::EcdsaKeyPair,
    rp_id: alloc::string::String,
}

#[cfg(feature = "issuer")]
impl SoftwareAuthenticator {
    /// Generates a new P-256 key, returned as PKCS#8 bytes (to store and pass to [`Self::from_pkcs8`]).
    pub fn generate_pkcs8(
        rng: &dyn ring::rand::SecureRandom,
    ) -> Result<Vec<u8>, crate::token::MintError> {
        let _ = rng;
        todo!()
    }

    /// Loads a P-256 key from PKCS#8 bytes, for relying party `rp_id`.
    pub fn from_pkcs8(
        pkcs8: &[u8],
        rp_id: &str,
        rng: &dyn ring::rand::SecureRandom,
    ) -> Result<Self, crate::token::MintError> {
        let _ = (pkcs8, rp_id, rng);
        todo!()
    }

    /// The `cnf` key to put in tokens for this authenticator.
    pub fn confirmation_key(&self) -> ConfirmationKey {
        todo!()
    }

    /// Signs a WebAuthn-style assertion over `message` (normally [`pop_message`]) with the given
    /// authenticator data `flags` (normally [`FLAG_USER_PRESENT`]).
    pub fn assert(
        &self,
        message: &[u8],
        flags: u8,
        rng: &dyn ring::rand::SecureRandom,
    ) -> Result<Proof, crate::token::MintError> {
        let _ = (message, flags, rng, &self.key, &self.rp_id);
        todo!()
    }
}

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

use alloc::string::String;
use alloc::vec::Vec;

use ring::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};
use serde::Deserialize;

use crate::cbor;
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
    let id = lock_id.as_str().as_bytes();
    let mut out = Vec::with_capacity(
        POP_CONTEXT
            .len()
            .saturating_add(65)
            .saturating_add(id.len()),
    );
    out.extend_from_slice(POP_CONTEXT);
    out.extend_from_slice(challenge.as_bytes());
    // LockId::parse caps the length at 64 bytes, so it always fits in one byte.
    out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(id);
    out.extend_from_slice(token_hash.as_bytes());
    out
}

/// Largest encoded proof accepted, in bytes.
pub const MAX_PROOF_LEN: usize = 2048;

const PROOF_ED25519: u64 = 0;
const PROOF_WEBAUTHN: u64 = 1;

impl Proof {
    /// The canonical CBOR wire form.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Proof::Ed25519 { signature } => {
                cbor::push_head(&mut out, 4, 2);
                cbor::push_head(&mut out, 0, PROOF_ED25519);
                push_bstr(&mut out, signature);
            }
            Proof::WebAuthn {
                authenticator_data,
                client_data_json,
                signature,
            } => {
                cbor::push_head(&mut out, 4, 4);
                cbor::push_head(&mut out, 0, PROOF_WEBAUTHN);
                push_bstr(&mut out, authenticator_data);
                push_bstr(&mut out, client_data_json);
                push_bstr(&mut out, signature);
            }
        }
        out
    }

    /// Decodes the wire form; [`Refusal::ProofMalformed`] for anything else (including a
    /// non-canonical encoding or more than [`MAX_PROOF_LEN`] bytes).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, Refusal> {
        Self::decode(bytes).ok_or(Refusal::ProofMalformed)
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_PROOF_LEN {
            return None;
        }
        cbor::check_canonical(bytes).ok()?;
        match cbor::head(bytes)? {
            (4, 2, rest) => match cbor::head(rest)? {
                (0, PROOF_ED25519, rest) => {
                    let (signature, _) = cbor::bstr(rest)?;
                    Some(Proof::Ed25519 {
                        signature: signature.try_into().ok()?,
                    })
                }
                _ => None,
            },
            (4, 4, rest) => match cbor::head(rest)? {
                (0, PROOF_WEBAUTHN, rest) => {
                    let (authenticator_data, rest) = cbor::bstr(rest)?;
                    let (client_data_json, rest) = cbor::bstr(rest)?;
                    let (signature, _) = cbor::bstr(rest)?;
                    Some(Proof::WebAuthn {
                        authenticator_data: authenticator_data.to_vec(),
                        client_data_json: client_data_json.to_vec(),
                        signature: signature.to_vec(),
                    })
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Signs `message` (normally [`pop_message`]) with an Ed25519 key.
    #[cfg(feature = "issuer")]
    pub fn sign_ed25519(key: &ring::signature::Ed25519KeyPair, message: &[u8]) -> Self {
        let mut signature = [0u8; 64];
        signature.copy_from_slice(key.sign(message).as_ref());
        Proof::Ed25519 { signature }
    }
}

fn push_bstr(out: &mut Vec<u8>, bytes: &[u8]) {
    cbor::push_bstr_head(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// The members of the WebAuthn client data the lock checks; others (origin, crossOrigin, …) are
/// ignored. The derived deserializer refuses a duplicate `type` or `challenge`.
#[derive(Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
}

/// The `type` of a WebAuthn assertion's client data.
const WEBAUTHN_GET: &str = "webauthn.get";

/// Checks `proof` against `key` for `message`, with `rp_id` the relying party of WebAuthn keys.
pub(crate) fn check_proof(
    key: &ConfirmationKey,
    proof: &Proof,
    message: &[u8],
    rp_id: &str,
) -> Result<(), Refusal> {
    match (key, proof) {
        (ConfirmationKey::Ed25519(public_key), Proof::Ed25519 { signature }) => {
            UnparsedPublicKey::new(&ED25519, public_key)
                .verify(message, signature)
                .map_err(|_| Refusal::ProofInvalid)
        }
        (
            ConfirmationKey::P256(public_key),
            Proof::WebAuthn {
                authenticator_data,
                client_data_json,
                signature,
            },
        ) => {
            let client_data: ClientData =
                serde_json::from_slice(client_data_json).map_err(|_| Refusal::ProofClientData)?;
            if client_data.kind != WEBAUTHN_GET {
                return Err(Refusal::ProofClientData);
            }
            if client_data.challenge != webauthn_challenge(message) {
                return Err(Refusal::ProofChallengeMismatch);
            }
            let (rp_id_hash, rest) = authenticator_data
                .split_at_checked(32)
                .ok_or(Refusal::ProofMalformed)?;
            let (&flags, rest) = rest.split_first().ok_or(Refusal::ProofMalformed)?;
            if rest.len() < 4 {
                return Err(Refusal::ProofMalformed);
            }
            if rp_id_hash != sha256(rp_id.as_bytes()).as_slice() {
                return Err(Refusal::ProofWrongRelyingParty);
            }
            if flags & FLAG_USER_PRESENT == 0 {
                return Err(Refusal::ProofUserNotPresent);
            }
            let signed = webauthn_signed_data(authenticator_data, client_data_json);
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key)
                .verify(&signed, signature)
                .map_err(|_| Refusal::ProofInvalid)
        }
        _ => Err(Refusal::ProofKeyMismatch),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    crate::token::token_hash(bytes).0
}

/// `authenticatorData ‖ SHA-256(clientDataJSON)`: what a WebAuthn authenticator signs.
fn webauthn_signed_data(authenticator_data: &[u8], client_data_json: &[u8]) -> Vec<u8> {
    let mut signed = Vec::with_capacity(authenticator_data.len().saturating_add(32));
    signed.extend_from_slice(authenticator_data);
    signed.extend_from_slice(&sha256(client_data_json));
    signed
}

/// The client data `challenge` for a PoP message: base64url without padding of its SHA-256.
pub fn webauthn_challenge(message: &[u8]) -> String {
    base64url(&sha256(message))
}

/// base64url without padding (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let symbol = |index: u32| {
        let index = usize::try_from(index & 0x3f).unwrap_or(0);
        char::from(ALPHABET.get(index).copied().unwrap_or(b'A'))
    };
    let mut out = String::with_capacity(bytes.len().saturating_mul(4).div_ceil(3));
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(symbol(n >> 18));
        out.push(symbol(n >> 12));
        if chunk.len() > 1 {
            out.push(symbol(n >> 6));
        }
        if chunk.len() > 2 {
            out.push(symbol(n));
        }
    }
    out
}

/// A software stand-in for a FIDO2 security key holding a P-256 credential: produces WebAuthn-style
/// assertions over a PoP message. For tests, the demo and the agent's `tap` client.
#[cfg(feature = "issuer")]
pub struct SoftwareAuthenticator {
    key: ring::signature::EcdsaKeyPair,
    confirmation: ConfirmationKey,
    rp_id: String,
}

#[cfg(feature = "issuer")]
impl SoftwareAuthenticator {
    /// Generates a new P-256 key, returned as PKCS#8 bytes (to store and pass to [`Self::from_pkcs8`]).
    pub fn generate_pkcs8(
        rng: &dyn ring::rand::SecureRandom,
    ) -> Result<Vec<u8>, crate::token::MintError> {
        ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            rng,
        )
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|_| crate::token::MintError::Key)
    }

    /// Loads a P-256 key from PKCS#8 bytes, for relying party `rp_id`.
    pub fn from_pkcs8(
        pkcs8: &[u8],
        rp_id: &str,
        rng: &dyn ring::rand::SecureRandom,
    ) -> Result<Self, crate::token::MintError> {
        use ring::signature::KeyPair;

        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8,
            rng,
        )
        .map_err(|_| crate::token::MintError::Key)?;
        let confirmation = ConfirmationKey::p256_from_sec1(key.public_key().as_ref())
            .ok_or(crate::token::MintError::Key)?;
        Ok(Self {
            key,
            confirmation,
            rp_id: String::from(rp_id),
        })
    }

    /// The `cnf` key to put in tokens for this authenticator.
    pub fn confirmation_key(&self) -> ConfirmationKey {
        self.confirmation
    }

    /// Signs a WebAuthn-style assertion over `message` (normally [`pop_message`]) with the given
    /// authenticator data `flags` (normally [`FLAG_USER_PRESENT`]).
    pub fn assert(
        &self,
        message: &[u8],
        flags: u8,
        rng: &dyn ring::rand::SecureRandom,
    ) -> Result<Proof, crate::token::MintError> {
        #[derive(serde::Serialize)]
        struct ClientDataOut<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            challenge: &'a str,
            origin: &'a str,
            #[serde(rename = "crossOrigin")]
            cross_origin: bool,
        }
        let challenge = webauthn_challenge(message);
        let origin = alloc::format!("https://{}", self.rp_id);
        let client_data_json = serde_json::to_vec(&ClientDataOut {
            kind: WEBAUTHN_GET,
            challenge: &challenge,
            origin: &origin,
            cross_origin: false,
        })
        .map_err(|_| crate::token::MintError::Encoding)?;
        let mut authenticator_data = Vec::with_capacity(37);
        authenticator_data.extend_from_slice(&sha256(self.rp_id.as_bytes()));
        authenticator_data.push(flags);
        authenticator_data.extend_from_slice(&0u32.to_be_bytes());
        let signed = webauthn_signed_data(&authenticator_data, &client_data_json);
        let signature = self
            .key
            .sign(rng, &signed)
            .map_err(|_| crate::token::MintError::Key)?;
        Ok(Proof::WebAuthn {
            authenticator_data,
            client_data_json,
            signature: signature.as_ref().to_vec(),
        })
    }
}

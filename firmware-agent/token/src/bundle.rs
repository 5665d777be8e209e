//! The trust bundle: the versioned set of issuer keys a lock accepts tokens from, for one
//! municipality, signed by that municipality's root Ed25519 key.
//!
//! A lock is provisioned with the root public key and a first bundle. Key rotation ships a new
//! bundle with a higher version; [`TrustBundle::accept_update`] only moves forward and only for
//! the same issuer, so an old (or forged) bundle can never bring a retired key back. A lock that
//! stays offline through a rotation keeps working with the keys of the bundle it has.
//!
//! # Wire form
//!
//! A COSE_Sign1 (untagged) with protected header `{1: -8}` (EdDSA), an empty unprotected header,
//! external AAD `"firstkey-trust-bundle-v1"` (so a bundle signature can never pass as a token
//! signature or the reverse), and as payload the canonical CBOR map
//!
//! ```text
//! { 1: issuer tstr, 2: version uint, 3: rp_id tstr, 4: [ [kid bstr, ed25519 key bstr .size 32], ... ] }
//! ```
//!
//! with keys sorted by kid, no duplicates, at least one key. Small-order Ed25519 keys (the
//! identity, the zero point and friends) are refused: under such a key, a "signature" with
//! R = identity and S = 0 verifies for a large fraction of all messages.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::claims::KeyId;

/// Largest trust bundle accepted, in bytes.
pub const MAX_BUNDLE_LEN: usize = 8192;

/// External AAD of bundle signatures (domain separation from tokens).
pub const BUNDLE_AAD: &[u8] = b"firstkey-trust-bundle-v1";

/// The municipality's root Ed25519 public key, provisioned into the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RootPublicKey(pub [u8; 32]);

/// One issuer signing key in a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerKey {
    /// The `kid` tokens signed with this key carry.
    pub kid: KeyId,
    /// The Ed25519 public key.
    pub public_key: [u8; 32],
}

/// The signed content of a trust bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleContents {
    /// The municipality's short id; tokens' `iss` must equal it.
    pub issuer: String,
    /// Monotonic version; a lock only accepts a strictly higher one.
    pub version: u64,
    /// The WebAuthn relying party id responders' security keys are registered under (its
    /// SHA-256 is the `rpIdHash` a P-256 proof must carry).
    pub rp_id: String,
    /// The issuer keys, any order on input; stored sorted by kid.
    pub keys: Vec<IssuerKey>,
}

/// Why a trust bundle was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BundleError {
    /// Longer than [`MAX_BUNDLE_LEN`].
    Oversize,
    /// Not a canonical bundle structure (any CBOR or COSE defect, wrong content, no keys,
    /// duplicate or unsorted kids).
    Malformed,
    /// A key is a small-order Ed25519 point.
    WeakKey,
    /// The root signature does not verify.
    BadSignature,
    /// An update for another issuer than the current bundle's.
    WrongIssuer,
    /// An update whose version is not strictly higher than the current one.
    NotNewer,
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BundleError::Oversize => "trust bundle too large",
            BundleError::Malformed => "trust bundle malformed",
            BundleError::WeakKey => "trust bundle holds a small-order key",
            BundleError::BadSignature => "trust bundle root signature invalid",
            BundleError::WrongIssuer => "trust bundle for another issuer",
            BundleError::NotNewer => "trust bundle not newer than the current one",
        })
    }
}

impl core::error::Error for BundleError {}

/// A trust bundle whose root signature has been verified. Only [`TrustBundle::verify`] and
/// [`TrustBundle::accept_update`] make one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    contents: BundleContents,
    bytes: Vec<u8>,
}

impl TrustBundle {
    /// Verifies bundle bytes against the municipality's root key.
    pub fn verify(bytes: &[u8], root: &RootPublicKey) -> Result<Self, BundleError> {
        let _ = (bytes, root);
        todo!()
    }

    /// Accepts `bytes` as the successor of `self`: valid root signature, same issuer, strictly
    /// higher version. On error the caller keeps `self`.
    pub fn accept_update(&self, bytes: &[u8], root: &RootPublicKey) -> Result<Self, BundleError> {
        let _ = (bytes, root);
        todo!()
    }

    /// The verified content.
    pub fn contents(&self) -> &BundleContents {
        &self.contents
    }

    /// The issuer (municipality) tokens must name.
    pub fn issuer(&self) -> &str {
        &self.contents.issuer
    }

    /// The bundle version.
    pub fn version(&self) -> u64 {
        self.contents.version
    }

    /// The WebAuthn relying party id.
    pub fn rp_id(&self) -> &str {
        &self.contents.rp_id
    }

    /// The Ed25519 public key for `kid`, if the bundle has it.
    pub fn key(&self, kid: &[u8]) -> Option<&[u8; 32]> {
        let _ = kid;
        todo!()
    }

    /// The signed bytes, for the agent to persist (re-verify them with [`TrustBundle::verify`] on load).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Mints a signed trust bundle (server side). Refuses empty, duplicate-kid or small-order keys.
#[cfg(feature = "issuer")]
pub fn mint_bundle(
    contents: &BundleContents,
    root: &ring::signature::Ed25519KeyPair,
) -> Result<Vec<u8>, crate::token::MintError> {
    let _ = (contents, root);
    todo!()
}

//! The firstkey override token: the one definition of the wire format that the server (which mints)
//! and the lock agent (which verifies offline) share.
//!
//! An override token is a COSE_Sign1 (RFC 9052) over CWT claims (RFC 8392), signed with Ed25519
//! (`ring`). Everything here is sans-io: no clock (`now` is a parameter, unix seconds), no
//! randomness except where a caller passes an RNG, no storage. The lock's durable state enters
//! through the [`LockView`] trait, which the agent backs with its store.
//!
//! Layout:
//! - [`claims`]: the claims a token carries ([`Claims`], [`ConfirmationKey`], the id newtypes)
//!   and their CBOR labels.
//! - [`token`]: [`UnverifiedToken`] → [`VerifiedToken`], [`token_hash`], [`mint`] (feature
//!   `issuer`) and the verifier, which runs the RFC 9200 §5.10.1.1 order.
//! - [`refusal`]: the closed [`Decision`] told to the presenter and the closed [`Refusal`] kept
//!   for the local log.
//! - [`pop`]: proof of possession at the door ([`Challenge`], [`Proof`], [`pop_message`]) for
//!   Ed25519 keys and for P-256 keys held by a FIDO2 security key (WebAuthn assertion).
//! - [`bundle`]: the [`TrustBundle`] of issuer keys, signed by the municipality's root key, and
//!   its forward-only update rule.
//! - [`revocation`]: the [`RevocationList`] of token hashes, pruned after expiry.
//! - [`lock`]: the [`LockView`] trait and [`VerifyOptions`].
//!
//! Determinism: minted bytes follow RFC 8949 §4.2.1 core deterministic encoding, and the verifier
//! refuses any other encoding of the same data, so SHA-256 of the bytes ([`token_hash`]) is a
//! stable identity for revocation lists and audit records.
//!
//! The crate is `no_std` + `alloc` without the default `std` feature.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod bundle;
mod cbor;
pub mod claims;
mod cose;
pub mod lock;
pub mod pop;
pub mod refusal;
pub mod revocation;
pub mod token;

pub use bundle::{BundleContents, BundleError, IssuerKey, RootPublicKey, TrustBundle};
pub use claims::{Claims, ConfirmationKey, GrantId, KeyId, LockId, Scope, TokenId};
pub use lock::{LockView, VerifyOptions};
pub use pop::{Challenge, Presentation, Proof, pop_message};
pub use refusal::{Decision, Refusal};
pub use revocation::RevocationList;
pub use token::{TokenHash, UnverifiedToken, VerifiedToken, token_hash, verify};

#[cfg(feature = "issuer")]
pub use bundle::mint_bundle;
#[cfg(feature = "issuer")]
pub use pop::SoftwareAuthenticator;
#[cfg(feature = "issuer")]
pub use token::{MintError, mint};

/// Largest token the verifier will look at, in bytes. Anything longer is refused before parsing.
pub const MAX_TOKEN_LEN: usize = 1024;

//! The trust bundle: the versioned set of issuer keys a lock accepts tokens from, for one
//! municipality, signed by that municipality's root Ed25519 key.
//!
//! A lock is provisioned with the root public key and a first bundle. Key rotation ships a new
//! bundle with a higher version; [`TrustBundle::accept_update`] only moves forward and only for
//! the same issuer, so an old (or forged) bundle can never bring a retired key back. A lock that
//! stays offline through a rotation keeps working with the keys of the bundle it has.
//!
//! The one exception to "same issuer" is a rename the root signed: a bundle may carry a
//! `former_issuer`, and it may succeed a bundle whose issuer is that former name. This is how a
//! municipality moves from its slug (`demo-city`, in every token) to a short issuer id (`7`):
//! tokens get shorter, and a lock that has the renaming bundle accepts tokens naming either the
//! issuer or the former issuer, so tokens minted before its update still open. Locks whose
//! firmware predates the field refuse the renaming bundle as malformed and keep their bundle; the
//! server goes on minting their tokens under the old name (it knows each lock's bundle version).
//!
//! # Wire form
//!
//! A COSE_Sign1 (untagged) with protected header `{1: -8}` (EdDSA), an empty unprotected header,
//! external AAD `"firstkey-trust-bundle-v1"` (so a bundle signature can never pass as a token
//! signature or the reverse), and as payload the canonical CBOR map
//!
//! ```text
//! { 1: issuer tstr, 2: version uint, 3: rp_id tstr, 4: [ [kid bstr, ed25519 key bstr .size 32], ... ],
//!   ? 5: former_issuer tstr }
//! ```
//!
//! with keys sorted by kid, no duplicates, at least one key. Small-order Ed25519 keys (the
//! identity, the zero point and friends) are refused: under such a key, a "signature" with
//! R = identity and S = 0 verifies for a large fraction of all messages.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ciborium::value::Value;
use coset::{CborSerializable, Header, HeaderBuilder, iana};
use ring::signature::{ED25519, UnparsedPublicKey};

use crate::claims::KeyId;
use crate::cose;
use crate::refusal::Refusal;

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
    /// The name this issuer had before a rename (the municipality's slug before it got a short
    /// issuer id): tokens naming it are accepted too, and this bundle may succeed one issued
    /// under that name.
    pub former_issuer: Option<String>,
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
        let sign1 = cose::split(bytes, MAX_BUNDLE_LEN).map_err(|refusal| match refusal {
            Refusal::Oversize => BundleError::Oversize,
            _ => BundleError::Malformed,
        })?;
        let header = Header::from_slice(sign1.protected).map_err(|_| BundleError::Malformed)?;
        if header
            != HeaderBuilder::new()
                .algorithm(iana::Algorithm::EdDSA)
                .build()
        {
            return Err(BundleError::Malformed);
        }
        let tbs = cose::to_be_signed(sign1.protected, BUNDLE_AAD, sign1.payload);
        UnparsedPublicKey::new(&ED25519, &root.0)
            .verify(&tbs, sign1.signature)
            .map_err(|_| BundleError::BadSignature)?;
        let contents = decode_contents(sign1.payload)?;
        Ok(Self {
            contents,
            bytes: bytes.to_vec(),
        })
    }

    /// Accepts `bytes` as the successor of `self`: valid root signature, same issuer, strictly
    /// higher version. On error the caller keeps `self`.
    pub fn accept_update(&self, bytes: &[u8], root: &RootPublicKey) -> Result<Self, BundleError> {
        let next = Self::verify(bytes, root)?;
        let renamed = next.contents.former_issuer.as_deref() == Some(self.issuer());
        if next.contents.issuer != self.contents.issuer && !renamed {
            return Err(BundleError::WrongIssuer);
        }
        if next.contents.version <= self.contents.version {
            return Err(BundleError::NotNewer);
        }
        Ok(next)
    }

    /// The verified content.
    pub fn contents(&self) -> &BundleContents {
        &self.contents
    }

    /// The issuer (municipality) tokens must name.
    pub fn issuer(&self) -> &str {
        &self.contents.issuer
    }

    /// Whether a token's `iss` names this bundle's issuer (or its former name).
    pub fn names_issuer(&self, iss: &str) -> bool {
        iss == self.contents.issuer || self.contents.former_issuer.as_deref() == Some(iss)
    }

    /// The issuer's name before a rename, if this bundle carries one.
    pub fn former_issuer(&self) -> Option<&str> {
        self.contents.former_issuer.as_deref()
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
        // Keys are sorted by kid (checked at decode), and bundles are small: a linear scan of a
        // handful of entries is as fast as a binary search and simpler.
        self.contents
            .keys
            .iter()
            .find(|k| k.kid.as_bytes() == kid)
            .map(|k| &k.public_key)
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
    let mut sorted = contents.clone();
    sorted.keys.sort_by(|a, b| a.kid.cmp(&b.kid));
    if !contents_valid(&sorted) || sorted.keys.iter().any(|k| is_small_order(&k.public_key)) {
        return Err(crate::token::MintError::InvalidBundle);
    }
    let keys = sorted
        .keys
        .iter()
        .map(|k| {
            Value::Array(alloc::vec![
                Value::Bytes(k.kid.as_bytes().to_vec()),
                Value::Bytes(k.public_key.to_vec()),
            ])
        })
        .collect();
    let mut entries = alloc::vec![
        (Value::from(1), Value::Text(sorted.issuer.clone())),
        (Value::from(2), Value::from(sorted.version)),
        (Value::from(3), Value::Text(sorted.rp_id.clone())),
        (Value::from(4), Value::Array(keys)),
    ];
    if let Some(former) = &sorted.former_issuer {
        entries.push((Value::from(5), Value::Text(former.clone())));
    }
    let payload = Value::Map(entries);
    let mut payload_bytes = Vec::new();
    ciborium::into_writer(&payload, &mut payload_bytes)
        .map_err(|_| crate::token::MintError::Encoding)?;
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .build();
    let bytes = cose::sign(protected, payload_bytes, BUNDLE_AAD, root)?;
    if bytes.len() > MAX_BUNDLE_LEN {
        return Err(crate::token::MintError::Oversize);
    }
    // Self-check: hand out only what every lock accepts, decoding to what was asked for.
    let root_public = ring::signature::KeyPair::public_key(root)
        .as_ref()
        .try_into()
        .map_err(|_| crate::token::MintError::Key)?;
    match TrustBundle::verify(&bytes, &RootPublicKey(root_public)) {
        Ok(bundle) if bundle.contents == sorted => Ok(bytes),
        _ => Err(crate::token::MintError::Encoding),
    }
}

/// The Ed25519 encodings of points of small order (order 1, 2, 4 or 8), compared with the sign
/// bit of x masked off, as in libsodium's `ge25519_has_small_order`. Includes the non-canonical
/// encodings p, p + 1 of y = 0, 1.
const SMALL_ORDER: [[u8; 32]; 7] = [
    // y = 0 (order 4)
    [0; 32],
    // y = 1: the identity (order 1)
    [
        0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0,
    ],
    // order 8
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    // order 8
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    // y = p - 1 (order 2)
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // y = p (non-canonical 0, order 4)
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // y = p + 1 (non-canonical 1, order 1)
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// Whether an Ed25519 public key encodes a point of small order (a "weak" key under which
/// forged signatures verify for many messages).
pub(crate) fn is_small_order(key: &[u8; 32]) -> bool {
    let mut masked = *key;
    masked[31] &= 0x7f;
    SMALL_ORDER.contains(&masked)
}

/// Text fields of a bundle: non-empty, at most 64 bytes.
fn bundle_text_ok(text: &str) -> bool {
    !text.is_empty() && text.len() <= crate::claims::MAX_TEXT_LEN
}

/// Content rules shared by minting and decoding (keys must already be sorted).
fn contents_valid(contents: &BundleContents) -> bool {
    let sorted_unique = contents
        .keys
        .windows(2)
        .all(|pair| matches!(pair, [a, b] if a.kid < b.kid));
    let former_ok = contents
        .former_issuer
        .as_deref()
        .is_none_or(|former| bundle_text_ok(former) && former != contents.issuer);
    bundle_text_ok(&contents.issuer)
        && former_ok
        && bundle_text_ok(&contents.rp_id)
        && !contents.keys.is_empty()
        && sorted_unique
}

/// Decodes the (canonical, already checked) bundle payload.
fn decode_contents(payload: &[u8]) -> Result<BundleContents, BundleError> {
    let value: Value = ciborium::from_reader(payload).map_err(|_| BundleError::Malformed)?;
    let contents = contents_from_value(value).ok_or(BundleError::Malformed)?;
    if contents.keys.iter().any(|k| is_small_order(&k.public_key)) {
        return Err(BundleError::WeakKey);
    }
    if !contents_valid(&contents) {
        return Err(BundleError::Malformed);
    }
    Ok(contents)
}

fn contents_from_value(value: Value) -> Option<BundleContents> {
    let Value::Map(entries) = value else {
        return None;
    };
    // Four entries, or five with the former issuer (labels in order: the map is canonical).
    let mut entries = entries.into_iter();
    let mut take = |want: i64| -> Option<Value> {
        let (label, value) = entries.next()?;
        matches!(label, Value::Integer(i) if i64::try_from(i).ok() == Some(want)).then_some(value)
    };
    let (issuer, version, rp_id, keys) = (take(1)?, take(2)?, take(3)?, take(4)?);
    let former_issuer = match entries.next() {
        None => None,
        Some((Value::Integer(label), Value::Text(former)))
            if i64::try_from(label).ok() == Some(5) =>
        {
            Some(former)
        }
        Some(_) => return None,
    };
    if entries.next().is_some() {
        return None;
    }
    let (Value::Text(issuer), Value::Integer(version), Value::Text(rp_id), Value::Array(keys)) =
        (issuer, version, rp_id, keys)
    else {
        return None;
    };
    let keys = keys
        .into_iter()
        .map(|entry| {
            let Value::Array(pair) = entry else {
                return None;
            };
            let [Value::Bytes(kid), Value::Bytes(public_key)]: [Value; 2] = pair.try_into().ok()?
            else {
                return None;
            };
            Some(IssuerKey {
                kid: KeyId::parse(&kid)?,
                public_key: public_key.try_into().ok()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(BundleContents {
        issuer,
        version: u64::try_from(version).ok()?,
        rp_id,
        keys,
        former_issuer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evidence that the blocklist is right and that it matters: under each canonical entry,
    /// the "signature" R = identity, S = 0 verifies in `ring` for some messages (whenever the
    /// point's order divides the challenge scalar), i.e. these keys let anyone forge.
    #[test]
    fn small_order_keys_admit_forgeries_in_ring() {
        let mut forged_signature = [0u8; 64];
        forged_signature[0] = 1; // R = identity (y = 1), S = 0
        for key in SMALL_ORDER.iter().take(5) {
            let forgeries = (0u32..128)
                .filter(|i| {
                    UnparsedPublicKey::new(&ED25519, key)
                        .verify(&i.to_be_bytes(), &forged_signature)
                        .is_ok()
                })
                .count();
            assert!(forgeries > 0, "{key:02x?}");
            assert!(is_small_order(key));
            let mut signed_x = *key;
            signed_x[31] |= 0x80;
            assert!(is_small_order(&signed_x));
        }
    }

    #[test]
    fn ordinary_keys_are_not_small_order() {
        let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
        let public: [u8; 32] = ring::signature::KeyPair::public_key(&key)
            .as_ref()
            .try_into()
            .unwrap();
        assert!(!is_small_order(&public));
    }
}

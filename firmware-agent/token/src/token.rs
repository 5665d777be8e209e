//! The override token itself: parsing into an [`UnverifiedToken`], verification into a
//! [`VerifiedToken`], its identity ([`token_hash`]) and, with the `issuer` feature, [`mint`].
//!
//! # Wire form
//!
//! An untagged COSE_Sign1 `[protected: bstr, unprotected: {}, payload: bstr, signature: bstr .size 64]`
//! with protected header exactly `{1: -8 (EdDSA), 4: kid}`, an empty unprotected header, the CWT
//! claims map of [`crate::claims`] as payload, and an Ed25519 signature over the COSE
//! `Signature1` structure with empty external AAD. All of it, including the nested header and
//! claims, in RFC 8949 §4.2.1 core deterministic encoding, at most [`crate::MAX_TOKEN_LEN`] bytes.
//!
//! # Verification order (RFC 9200 §5.10.1.1)
//!
//! parse (size, CBOR well-formed and canonical, COSE structure, headers, claims) → `kid` is in the
//! trust bundle → signature → `iss` → `aud` is this lock → time (floor, then `nbf`, `iat`, `exp`,
//! each with skew) → revocation list → replay / use count → proof of possession. The first failure is the
//! [`Refusal`].

use alloc::vec::Vec;
use core::fmt;

use ciborium::value::Value;
use coset::AsCborValue;
use coset::cwt::ClaimsSet;
use ring::signature::{ED25519, UnparsedPublicKey};

use crate::MAX_TOKEN_LEN;
use crate::bundle::TrustBundle;
use crate::claims::{Claims, CompressedP256, KeyId};
use crate::cose;
use crate::lock::{LockView, VerifyOptions};
use crate::pop::{self, Presentation, Proof, pop_message};
use crate::refusal::Refusal;

#[cfg(feature = "issuer")]
use coset::{HeaderBuilder, iana};

/// SHA-256 of a token's bytes: its identity in revocation lists, receipts and the audit log.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({self})")
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// SHA-256 of the token bytes.
pub fn token_hash(bytes: &[u8]) -> TokenHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    TokenHash(out)
}

/// A token that parsed (canonical, well-formed, supported headers, typed claims) but whose
/// signature and claims have not been checked. Nothing in it may be trusted; it has no claims
/// accessor on purpose.
#[derive(Clone, Debug)]
pub struct UnverifiedToken {
    hash: TokenHash,
    kid: KeyId,
    claims: Claims,
    /// A compressed P-256 `cnf` (then `claims.confirmation` is `None`), decompressed at the
    /// proof-of-possession step.
    compressed_cnf: Option<CompressedP256>,
    to_be_signed: Vec<u8>,
    signature: Option<[u8; 64]>,
}

/// A token whose signature, issuer, audience, time window, revocation status, use count and
/// proof of possession all checked out at the `now` it was verified. Only [`verify`] and
/// [`UnverifiedToken::verify`] make one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    hash: TokenHash,
    kid: KeyId,
    claims: Claims,
}

impl UnverifiedToken {
    /// Parses token bytes. Refuses (in this order) oversize input, malformed CBOR, trailing
    /// bytes, indefinite lengths, duplicate map keys, non-canonical encoding, a non-empty
    /// unprotected header, an algorithm other than EdDSA, critical or unexpected headers, and
    /// invalid claims.
    pub fn parse(bytes: &[u8]) -> Result<Self, Refusal> {
        let sign1 = cose::split(bytes, MAX_TOKEN_LEN)?;
        let kid = parse_protected(sign1.protected)?;
        let (claims, compressed_cnf) =
            ciborium::de::from_reader::<ciborium::value::Value, _>(sign1.payload)
                .ok()
                .and_then(|mut value| {
                    crate::claims::expand_ids(&mut value);
                    ClaimsSet::from_cbor_value(value).ok()
                })
                .and_then(Claims::from_claims_set)
                .ok_or(Refusal::InvalidClaims)?;
        // A wrong-length signature cannot verify; refuse it as a bad signature, in order.
        let signature = <[u8; 64]>::try_from(sign1.signature).ok();
        Ok(Self {
            hash: token_hash(bytes),
            kid,
            claims,
            compressed_cnf,
            to_be_signed: cose::to_be_signed(sign1.protected, &[], sign1.payload),
            signature,
        })
    }

    /// The token's hash (usable for logging a refused token).
    pub fn hash(&self) -> &TokenHash {
        &self.hash
    }

    /// The claims with a compressed `cnf` decompressed; `None` if that point is off the curve.
    #[cfg(feature = "issuer")]
    fn resolved_claims(&self) -> Option<Claims> {
        let mut claims = self.claims.clone();
        if let Some(compressed) = &self.compressed_cnf {
            claims.confirmation = Some(compressed.decompress()?);
        }
        Some(claims)
    }

    /// Runs the rest of the verification (trust, time, lock state, proof of possession).
    pub fn verify(
        self,
        trust: &TrustBundle,
        lock: &(impl LockView + ?Sized),
        presentation: &Presentation<'_>,
        now: u64,
        options: &VerifyOptions,
    ) -> Result<VerifiedToken, Refusal> {
        // kid → signature
        let key = trust.key(self.kid.as_bytes()).ok_or(Refusal::UnknownKey)?;
        let signature = self.signature.ok_or(Refusal::BadSignature)?;
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&self.to_be_signed, &signature)
            .map_err(|_| Refusal::BadSignature)?;
        let mut claims = self.claims;
        // iss → aud
        if !trust.names_issuer(&claims.issuer) {
            return Err(Refusal::WrongIssuer);
        }
        if &claims.audience != lock.lock_id() {
            return Err(Refusal::WrongLock);
        }
        // time: floor first, so a clock set back cannot revive anything
        if now < lock.time_floor() {
            return Err(Refusal::ClockBehindFloor);
        }
        if now < claims.not_before.saturating_sub(options.skew_secs) {
            return Err(Refusal::NotYetValid);
        }
        if claims.issued_at > now.saturating_add(options.skew_secs) {
            return Err(Refusal::IssuedInFuture);
        }
        if now >= claims.expires_at.saturating_add(options.skew_secs) {
            return Err(Refusal::Expired);
        }
        // revocation → replay / use count
        if lock.is_revoked(&self.hash) {
            return Err(Refusal::Revoked);
        }
        if lock.uses(&claims.token_id) >= claims.max_uses {
            return Err(if claims.max_uses == 1 {
                Refusal::Replayed
            } else {
                Refusal::UsesExhausted
            });
        }
        // proof of possession
        if claims.confirmation.is_some() || self.compressed_cnf.is_some() {
            let proof = Proof::from_cbor(presentation.proof.ok_or(Refusal::ProofMissing)?)?;
            // A compressed P-256 point becomes the key only here, where its proof is checked
            // (the ECDSA verification dwarfs it); off the curve, only a broken issuer could have
            // signed it.
            let cnf = match (claims.confirmation, &self.compressed_cnf) {
                (Some(cnf), _) => cnf,
                (None, Some(compressed)) => {
                    compressed.decompress().ok_or(Refusal::InvalidClaims)?
                }
                (None, None) => return Err(Refusal::NoConfirmationKey),
            };
            let message = pop_message(presentation.challenge, lock.lock_id(), &self.hash);
            pop::check_proof(&cnf, &proof, &message, trust.rp_id())?;
            claims.confirmation = Some(cnf);
        } else if options.require_proof_of_possession {
            return Err(Refusal::NoConfirmationKey);
        }
        Ok(VerifiedToken {
            hash: self.hash,
            kid: self.kid,
            claims,
        })
    }
}

/// Checks the protected header is exactly `{1: -8, 4: kid}` and returns the kid.
///
/// Decoded as plain CBOR values rather than a coset `Header`: coset cannot represent an
/// unregistered label inside `crit`, and that is exactly the case that must be refused precisely.
fn parse_protected(protected: &[u8]) -> Result<KeyId, Refusal> {
    const ALG: i128 = 1;
    const CRIT: i128 = 2;
    const KID: i128 = 4;
    const EDDSA: i128 = -8;

    let Ok(Value::Map(entries)) = ciborium::from_reader::<Value, _>(protected) else {
        return Err(Refusal::Malformed);
    };
    let label = |value: &Value| match value {
        Value::Integer(i) => Some(i128::from(*i)),
        _ => None,
    };
    let find = |wanted: i128| {
        entries
            .iter()
            .find(|(k, _)| label(k) == Some(wanted))
            .map(|(_, v)| v)
    };
    match find(ALG) {
        Some(Value::Integer(alg)) if i128::from(*alg) == EDDSA => {}
        _ => return Err(Refusal::AlgorithmNotEdDsa),
    }
    if find(CRIT).is_some() {
        return Err(Refusal::UnknownCriticalHeader);
    }
    if entries
        .iter()
        .any(|(k, _)| !matches!(label(k), Some(ALG | KID)))
    {
        return Err(Refusal::UnexpectedHeader);
    }
    match find(KID) {
        Some(Value::Bytes(kid)) => KeyId::parse(kid).ok_or(Refusal::UnexpectedHeader),
        _ => Err(Refusal::UnexpectedHeader),
    }
}

impl VerifiedToken {
    /// The verified claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// SHA-256 of the token bytes.
    pub fn hash(&self) -> &TokenHash {
        &self.hash
    }

    /// The issuer key that signed it.
    pub fn key_id(&self) -> &KeyId {
        &self.kid
    }
}

/// Parses and verifies token bytes in one go; see [`UnverifiedToken::parse`] and
/// [`UnverifiedToken::verify`].
pub fn verify(
    bytes: &[u8],
    trust: &TrustBundle,
    lock: &(impl LockView + ?Sized),
    presentation: &Presentation<'_>,
    now: u64,
    options: &VerifyOptions,
) -> Result<VerifiedToken, Refusal> {
    UnverifiedToken::parse(bytes)?.verify(trust, lock, presentation, now, options)
}

/// Why minting (a token, a bundle or a proof) failed.
#[cfg(feature = "issuer")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MintError {
    /// A claim is out of range: empty or over-long text, `exp` not after `nbf`, `max_uses` zero,
    /// a time beyond `i64::MAX`, a small-order Ed25519 `cnf` key.
    InvalidClaims,
    /// Bundle content is invalid: no keys, duplicate kids, small-order key, bad issuer or rp id.
    InvalidBundle,
    /// The encoded result would exceed its size limit.
    Oversize,
    /// CBOR encoding failed (should not happen; reported rather than panicking).
    Encoding,
    /// A key could not be generated or loaded, or signing failed.
    Key,
}

#[cfg(feature = "issuer")]
impl fmt::Display for MintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MintError::InvalidClaims => "invalid claims",
            MintError::InvalidBundle => "invalid trust bundle content",
            MintError::Oversize => "encoded result too large",
            MintError::Encoding => "CBOR encoding failed",
            MintError::Key => "key generation, loading or signing failed",
        })
    }
}

#[cfg(feature = "issuer")]
impl core::error::Error for MintError {}

/// Mints an override token: canonical COSE_Sign1 over `claims`, signed by `key` with `kid`.
#[cfg(feature = "issuer")]
pub fn mint(
    claims: &Claims,
    kid: &KeyId,
    key: &ring::signature::Ed25519KeyPair,
) -> Result<Vec<u8>, MintError> {
    let set = claims.to_claims_set().ok_or(MintError::InvalidClaims)?;
    let mut value = set.to_cbor_value().map_err(|_| MintError::Encoding)?;
    crate::claims::compact_ids(&mut value);
    let mut payload = Vec::new();
    ciborium::ser::into_writer(&value, &mut payload).map_err(|_| MintError::Encoding)?;
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .key_id(kid.as_bytes().to_vec())
        .build();
    let bytes = cose::sign(protected, payload, &[], key)?;
    if bytes.len() > MAX_TOKEN_LEN {
        return Err(MintError::Oversize);
    }
    // Only hand out what every verifier accepts: canonical, and parsing back to the same claims
    // (a P-256 `cnf` decompressed, so a point off the curve is refused here).
    match UnverifiedToken::parse(&bytes) {
        Ok(parsed) if parsed.resolved_claims().as_ref() == Some(claims) => Ok(bytes),
        _ => Err(MintError::Encoding),
    }
}

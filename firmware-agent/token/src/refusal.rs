//! What the verifier says: a two-valued [`Decision`] for the presenter and a closed [`Refusal`]
//! with the precise reason for the lock's own log and signed receipts.
//!
//! The presenter must never learn the reason (it would turn the lock into an oracle for forging
//! tokens); the agent maps any `Err(Refusal)` to [`Decision::Deny`] on the wire and writes
//! [`Refusal::code`] into its receipt.

use core::fmt;

/// What the presenter is told. Nothing more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The door opens.
    Allow,
    /// The door stays shut.
    Deny,
}

impl<T> From<&Result<T, Refusal>> for Decision {
    fn from(result: &Result<T, Refusal>) -> Self {
        match result {
            Ok(_) => Decision::Allow,
            Err(_) => Decision::Deny,
        }
    }
}

/// Why a token was refused, in the order the verifier checks (RFC 9200 §5.10.1.1).
///
/// For the local log and receipts only; never tell the presenter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    // --- parse ---
    /// The input is longer than [`crate::MAX_TOKEN_LEN`] bytes.
    Oversize,
    /// Bytes follow the end of the CBOR item.
    TrailingBytes,
    /// An indefinite-length string, array or map (forbidden by deterministic encoding).
    IndefiniteLength,
    /// A map holds the same key twice.
    DuplicateMapKey,
    /// Well-formed CBOR that is not in RFC 8949 §4.2.1 core deterministic form (an integer or
    /// length not in its shortest form, or map keys out of order).
    NonCanonical,
    /// Not well-formed CBOR, or not the COSE_Sign1 structure (truncated item, wrong types, a tag,
    /// a float or simple value, invalid UTF-8, nesting too deep).
    Malformed,
    /// The unprotected header is not empty (tokens are hashed, so nothing may be unprotected).
    UnprotectedHeader,
    /// The protected header's `alg` is missing or is not EdDSA (-8).
    AlgorithmNotEdDsa,
    /// The protected header has a `crit` parameter; this lock understands no critical extension.
    UnknownCriticalHeader,
    /// The protected header has a parameter other than `alg` and `kid`, or no `kid`.
    UnexpectedHeader,
    /// The claims are missing, of the wrong type, out of range, unknown, or inconsistent
    /// (e.g. `exp` not after `nbf`, `max_uses` zero, unknown scope, weak `cnf` key).
    InvalidClaims,
    // --- trust ---
    /// The `kid` names no key in the lock's trust bundle.
    UnknownKey,
    /// The Ed25519 signature does not verify under the named key.
    BadSignature,
    /// `iss` is not the trust bundle's issuer.
    WrongIssuer,
    /// `aud` is not this lock.
    WrongLock,
    // --- time ---
    /// `now` is below the lock's monotonic time floor: the clock was set back.
    ClockBehindFloor,
    /// `now` is before `nbf` minus the skew allowance.
    NotYetValid,
    /// `iat` is after `now` plus the skew allowance: the token claims to be minted in the lock's
    /// future (a wrong lock clock or a wrong issuer clock; either way `now` cannot be trusted).
    IssuedInFuture,
    /// `now` is at or after `exp` plus the skew allowance.
    Expired,
    // --- lock state ---
    /// The token's hash is on the revocation list.
    Revoked,
    /// The token is single-use and its `cti` was already used.
    Replayed,
    /// The token allows several uses and all of them are spent.
    UsesExhausted,
    // --- proof of possession ---
    /// The token has no `cnf` and this lock requires proof of possession.
    NoConfirmationKey,
    /// The token has a `cnf` but no proof was presented.
    ProofMissing,
    /// The proof is not a well-formed proof structure.
    ProofMalformed,
    /// The proof's kind does not match the `cnf` key (e.g. an Ed25519 signature for a P-256 key).
    ProofKeyMismatch,
    /// The WebAuthn client data is not a `webauthn.get` assertion or is malformed.
    ProofClientData,
    /// The WebAuthn client data's challenge is not the one derived from this lock's challenge,
    /// this lock and this token.
    ProofChallengeMismatch,
    /// The WebAuthn authenticator data is for another relying party.
    ProofWrongRelyingParty,
    /// The WebAuthn authenticator data does not have the user-present (UP) flag.
    ProofUserNotPresent,
    /// The proof signature does not verify (wrong key, wrong challenge, wrong lock, wrong token).
    ProofInvalid,
}

impl Refusal {
    /// A stable snake_case code for logs and receipts.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Oversize => "oversize",
            Refusal::TrailingBytes => "trailing_bytes",
            Refusal::IndefiniteLength => "indefinite_length",
            Refusal::DuplicateMapKey => "duplicate_map_key",
            Refusal::NonCanonical => "non_canonical",
            Refusal::Malformed => "malformed",
            Refusal::UnprotectedHeader => "unprotected_header",
            Refusal::AlgorithmNotEdDsa => "algorithm_not_eddsa",
            Refusal::UnknownCriticalHeader => "unknown_critical_header",
            Refusal::UnexpectedHeader => "unexpected_header",
            Refusal::InvalidClaims => "invalid_claims",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::WrongIssuer => "wrong_issuer",
            Refusal::WrongLock => "wrong_lock",
            Refusal::ClockBehindFloor => "clock_behind_floor",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::IssuedInFuture => "issued_in_future",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
            Refusal::Replayed => "replayed",
            Refusal::UsesExhausted => "uses_exhausted",
            Refusal::NoConfirmationKey => "no_confirmation_key",
            Refusal::ProofMissing => "proof_missing",
            Refusal::ProofMalformed => "proof_malformed",
            Refusal::ProofKeyMismatch => "proof_key_mismatch",
            Refusal::ProofClientData => "proof_client_data",
            Refusal::ProofChallengeMismatch => "proof_challenge_mismatch",
            Refusal::ProofWrongRelyingParty => "proof_wrong_relying_party",
            Refusal::ProofUserNotPresent => "proof_user_not_present",
            Refusal::ProofInvalid => "proof_invalid",
        }
    }

    /// Every refusal, in verification order (for tests and for mapping stored codes back).
    pub const ALL: [Refusal; 31] = [
        Refusal::Oversize,
        Refusal::TrailingBytes,
        Refusal::IndefiniteLength,
        Refusal::DuplicateMapKey,
        Refusal::NonCanonical,
        Refusal::Malformed,
        Refusal::UnprotectedHeader,
        Refusal::AlgorithmNotEdDsa,
        Refusal::UnknownCriticalHeader,
        Refusal::UnexpectedHeader,
        Refusal::InvalidClaims,
        Refusal::UnknownKey,
        Refusal::BadSignature,
        Refusal::WrongIssuer,
        Refusal::WrongLock,
        Refusal::ClockBehindFloor,
        Refusal::NotYetValid,
        Refusal::IssuedInFuture,
        Refusal::Expired,
        Refusal::Revoked,
        Refusal::Replayed,
        Refusal::UsesExhausted,
        Refusal::NoConfirmationKey,
        Refusal::ProofMissing,
        Refusal::ProofMalformed,
        Refusal::ProofKeyMismatch,
        Refusal::ProofClientData,
        Refusal::ProofChallengeMismatch,
        Refusal::ProofWrongRelyingParty,
        Refusal::ProofUserNotPresent,
        Refusal::ProofInvalid,
    ];

    /// The refusal with this [`Refusal::code`], if any.
    pub fn from_code(code: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl core::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(Refusal::from_code(r.code()), Some(*r));
            for other in &Refusal::ALL[i + 1..] {
                assert_ne!(r.code(), other.code());
            }
        }
        assert_eq!(Refusal::from_code("nope"), None);
    }

    #[test]
    fn decision_hides_the_reason() {
        let denied: Result<(), Refusal> = Err(Refusal::Revoked);
        assert_eq!(Decision::from(&denied), Decision::Deny);
        assert_eq!(Decision::from(&Ok::<(), Refusal>(())), Decision::Allow);
    }
}

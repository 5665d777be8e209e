//! The claims an override token carries, the typed identifiers inside them, and their CBOR labels.
//!
//! This module owns the mapping between [`Claims`] and the CWT claims map. It does not sign or
//! verify anything (see [`crate::token`]) and knows nothing of the lock's state.
//!
//! # Claim labels
//!
//! | label | name | CBOR type | field |
//! | --- | --- | --- | --- |
//! | 1 | `iss` (RFC 8392) | tstr | [`Claims::issuer`]: the municipality's short id |
//! | 2 | `sub` (RFC 8392) | tstr / bstr .size 16 | [`Claims::subject`]: the responder (or unit) |
//! | 3 | `aud` (RFC 8392) | tstr / bstr .size 16 | [`Claims::audience`]: the one lock this token opens |
//! | 4 | `exp` (RFC 8392) | uint | [`Claims::expires_at`] |
//! | 5 | `nbf` (RFC 8392) | uint | [`Claims::not_before`] |
//! | 6 | `iat` (RFC 8392) | uint | [`Claims::issued_at`] |
//! | 7 | `cti` (RFC 8392) | bstr .size 16 | [`Claims::token_id`] |
//! | 8 | `cnf` (RFC 8747) | `{ 1: COSE_Key }` | [`Claims::confirmation`], optional |
//! | 9 | `scope` (RFC 9200 §5.10) | tstr | [`Claims::scope`] |
//! | -65537 | `firstkey` (private use) | `[incident: tstr, grant: bstr .size 16, max_uses: uint]` | [`Claims::incident`], [`Claims::grant`], [`Claims::max_uses`] |
//!
//! `scope` uses the registered ACE label rather than a private one: it means exactly what RFC 9200
//! says. The firstkey-specific claims sit together in one array under a single label from the
//! IANA "private use" range (< -65536), which costs 6 bytes instead of squatting on the short
//! labels that are reserved for standards action.
//!
//! A `sub` or `aud` that is a UUID in canonical text (lower-case hex, 8-4-4-4-12) is encoded as
//! its 16 bytes (17 bytes on the wire instead of 38) and decoded back to the same text, so the
//! lock still prints it as the server shows it; any other text stays a tstr.
//!
//! The `cnf` COSE_Key is either `{1: 1 (OKP), -1: 6 (Ed25519), -2: x}` or
//! `{1: 2 (EC2), -1: 1 (P-256), -2: x, -3: y}`, where `y` is the sign bit (`false`/`true`, RFC
//! 9053 §7.1.1: the compressed point, 33 bytes less, as minted) or the 32 bytes of y (accepted);
//! no other parameter is allowed.
//!
//! Unknown claims are refused rather than ignored: a claim the lock does not understand might
//! have been meant to restrict access, and ignoring it would widen access.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ciborium::value::Value;

/// Longest text claim (issuer, subject, incident) in bytes.
pub const MAX_TEXT_LEN: usize = 64;

/// Longest lock id in bytes.
pub const MAX_LOCK_ID_LEN: usize = 64;

/// Longest issuer key id in bytes.
pub const MAX_KEY_ID_LEN: usize = 16;

/// CWT claim label of the firstkey private claim array.
pub const FIRSTKEY_CLAIM: i64 = -65537;

/// The identity of a lock: the `aud` of every token meant for it.
///
/// 1 to 64 bytes of `A-Z a-z 0-9 - _ .`. Keep it short: it is in every token. A 22-character
/// base64url rendering of 128 random bits (or a 32-character hex uuid) is a good choice.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockId(String);

impl LockId {
    /// Parses a lock id, returning `None` if it is empty, longer than 64 bytes, or contains a
    /// character outside `A-Z a-z 0-9 - _ .`.
    pub fn parse(text: &str) -> Option<Self> {
        let valid = !text.is_empty()
            && text.len() <= MAX_LOCK_ID_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        valid.then(|| Self(String::from(text)))
    }

    /// The lock id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockId({})", self.0)
    }
}

impl fmt::Display for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The token id (`cti`): 16 random bytes chosen by the issuer. Replay records are keyed by it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId(pub [u8; 16]);

impl TokenId {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// The grant the token was minted under (the server's grant uuid, as 16 bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantId(pub [u8; 16]);

impl GrantId {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GrantId({self})")
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// The id of an issuer signing key (COSE `kid`): 1 to 16 opaque bytes, unique within a bundle.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(Vec<u8>);

impl KeyId {
    /// Parses a key id, returning `None` unless it is 1 to 16 bytes long.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        (!bytes.is_empty() && bytes.len() <= MAX_KEY_ID_LEN).then(|| Self(bytes.to_vec()))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyId(")?;
        write_hex(f, &self.0)?;
        f.write_str(")")
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// What the token allows at the door (`scope` claim). Closed: an unknown scope is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Unlock for the lock's configured hold time. Encoded as the text `"open"`.
    Open,
    /// A homeowner's remote unlock, delivered over the lock's authenticated channel, never
    /// presented at the tap. Encoded as the text `"remote_open"`.
    RemoteOpen,
}

impl Scope {
    /// The text this scope is encoded as.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Open => "open",
            Scope::RemoteOpen => "remote_open",
        }
    }

    /// Parses the encoded text; `None` for any scope this lock does not know.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "open" => Some(Scope::Open),
            "remote_open" => Some(Scope::RemoteOpen),
            _ => None,
        }
    }
}

/// The key a presenter must prove possession of at the door (RFC 8747 `cnf`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfirmationKey {
    /// An Ed25519 public key (32 bytes, RFC 8032 encoding). Proof: an Ed25519 signature over
    /// [`crate::pop_message`].
    Ed25519([u8; 32]),
    /// A P-256 public key as a FIDO2 security key holds it: uncompressed SEC1 point
    /// `0x04 ‖ x ‖ y` (65 bytes). Proof: a WebAuthn-style assertion (see [`crate::pop`]).
    P256([u8; 65]),
}

impl ConfirmationKey {
    /// A P-256 key from its uncompressed SEC1 encoding (`0x04 ‖ x ‖ y`); `None` if the
    /// length or prefix is wrong. (Whether the point is on the curve is checked by `ring` at
    /// proof time; an off-curve key simply never verifies.)
    pub fn p256_from_sec1(bytes: &[u8]) -> Option<Self> {
        let point: [u8; 65] = bytes.try_into().ok()?;
        (point.first() == Some(&0x04)).then_some(ConfirmationKey::P256(point))
    }
}

impl fmt::Debug for ConfirmationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfirmationKey::Ed25519(k) => {
                f.write_str("Ed25519(")?;
                write_hex(f, k)?;
            }
            ConfirmationKey::P256(k) => {
                f.write_str("P256(")?;
                write_hex(f, k)?;
            }
        }
        f.write_str(")")
    }
}

/// The claims of an override token.
///
/// On the issuer side, fill it in and pass it to [`crate::mint`]; on the lock side, only a
/// [`crate::VerifiedToken`] hands one out. Text fields are 1 to 64 bytes; every field is
/// mandatory except [`Claims::confirmation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// `iss`: the municipality's short id; must equal the trust bundle's issuer.
    pub issuer: String,
    /// `sub`: the responder (or unit) the token was minted for.
    pub subject: String,
    /// `aud`: the one lock this token opens.
    pub audience: LockId,
    /// `exp`: unix seconds; the token is refused at or after this instant (plus skew).
    pub expires_at: u64,
    /// `nbf`: unix seconds; the token is refused before this instant (minus skew).
    pub not_before: u64,
    /// `iat`: unix seconds when the server minted the token (informational).
    pub issued_at: u64,
    /// `cti`: the token id; replay records are keyed by it.
    pub token_id: TokenId,
    /// `scope`: what the token allows.
    pub scope: Scope,
    /// The dispatch incident (CAD number), e.g. `25-04711`.
    pub incident: String,
    /// The grant the token was minted under.
    pub grant: GrantId,
    /// How many times the lock may open for this token (at least 1).
    pub max_uses: u32,
    /// `cnf`: the presenter's key; when present, a valid proof of possession is required.
    pub confirmation: Option<ConfirmationKey>,
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// Whether a text claim is within bounds.
fn text_ok(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_TEXT_LEN
}

impl Claims {
    /// Whether the claims are internally consistent and within bounds (the rules both minting
    /// and parsing enforce).
    pub(crate) fn is_valid(&self) -> bool {
        let times_fit = [self.expires_at, self.not_before, self.issued_at]
            .iter()
            .all(|t| i64::try_from(*t).is_ok());
        let cnf_ok = match &self.confirmation {
            Some(ConfirmationKey::Ed25519(key)) => !crate::bundle::is_small_order(key),
            Some(ConfirmationKey::P256(point)) => point.first() == Some(&0x04),
            None => true,
        };
        text_ok(&self.issuer)
            && text_ok(&self.subject)
            && text_ok(&self.incident)
            && self.expires_at > self.not_before
            && self.max_uses >= 1
            && times_fit
            && cnf_ok
    }

    /// The CWT claims set, in canonical label order (coset writes the registered claims 1..=7
    /// in order, then `rest` as given: 8, 9, -65537).
    #[cfg(feature = "issuer")]
    pub(crate) fn to_claims_set(&self) -> Option<coset::cwt::ClaimsSet> {
        use coset::cwt::{ClaimName, ClaimsSet, Timestamp};
        use coset::iana::CwtClaimName;

        if !self.is_valid() {
            return None;
        }
        let seconds = |t: u64| i64::try_from(t).ok().map(Timestamp::WholeSeconds);
        let mut rest = Vec::with_capacity(3);
        if let Some(cnf) = &self.confirmation {
            rest.push((
                ClaimName::Assigned(CwtClaimName::Cnf),
                Value::Map(alloc::vec![(Value::from(1), cose_key(cnf))]),
            ));
        }
        rest.push((
            ClaimName::Assigned(CwtClaimName::Scope),
            Value::Text(String::from(self.scope.as_str())),
        ));
        rest.push((
            ClaimName::PrivateUse(FIRSTKEY_CLAIM),
            Value::Array(alloc::vec![
                Value::Text(self.incident.clone()),
                Value::Bytes(self.grant.0.to_vec()),
                Value::from(self.max_uses),
            ]),
        ));
        Some(ClaimsSet {
            issuer: Some(self.issuer.clone()),
            subject: Some(self.subject.clone()),
            audience: Some(String::from(self.audience.as_str())),
            expiration_time: Some(seconds(self.expires_at)?),
            not_before: Some(seconds(self.not_before)?),
            issued_at: Some(seconds(self.issued_at)?),
            cwt_id: Some(self.token_id.0.to_vec()),
            rest,
        })
    }

    /// Typed claims from a decoded claims set; `None` if anything is missing, unknown, of the
    /// wrong type or out of bounds. A compressed P-256 `cnf` is returned beside the claims (whose
    /// `confirmation` is then `None`) and decompressed only when a proof is checked: the tap pays for it with the ECDSA verification anyway, and a
    /// token's verification up to that step does not.
    pub(crate) fn from_claims_set(
        set: coset::cwt::ClaimsSet,
    ) -> Option<(Self, Option<CompressedP256>)> {
        use coset::cwt::{ClaimName, Timestamp};
        use coset::iana::CwtClaimName;

        let seconds = |t: Option<Timestamp>| match t {
            Some(Timestamp::WholeSeconds(s)) => u64::try_from(s).ok(),
            _ => None,
        };
        let mut confirmation = None;
        let mut compressed = None;
        let mut scope = None;
        let mut private = None;
        for (name, value) in set.rest {
            match name {
                ClaimName::Assigned(CwtClaimName::Cnf) => match parse_cnf(value)? {
                    ParsedCnf::Key(key) => confirmation = Some(key),
                    ParsedCnf::Compressed(point) => compressed = Some(point),
                },
                ClaimName::Assigned(CwtClaimName::Scope) => match value {
                    Value::Text(text) => scope = Some(Scope::parse(&text)?),
                    _ => return None,
                },
                ClaimName::PrivateUse(FIRSTKEY_CLAIM) => private = Some(parse_private(value)?),
                _ => return None,
            }
        }
        let (incident, grant, max_uses) = private?;
        let claims = Claims {
            issuer: set.issuer?,
            subject: set.subject?,
            audience: LockId::parse(&set.audience?)?,
            expires_at: seconds(set.expiration_time)?,
            not_before: seconds(set.not_before)?,
            issued_at: seconds(set.issued_at)?,
            token_id: TokenId(set.cwt_id?.try_into().ok()?),
            scope: scope?,
            incident,
            grant,
            max_uses,
            confirmation,
        };
        claims.is_valid().then_some((claims, compressed))
    }
}

/// A P-256 `cnf` point as it travels: x and the sign of y (RFC 9053 §7.1.1), not yet checked to
/// be on the curve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CompressedP256 {
    x: [u8; 32],
    y_odd: bool,
}

impl CompressedP256 {
    /// The key, or `None` if x is not on P-256 (only an issuer's bug could sign such a token:
    /// minting refuses it).
    pub(crate) fn decompress(&self) -> Option<ConfirmationKey> {
        decompress_p256(&self.x, self.y_odd).map(ConfirmationKey::P256)
    }
}

/// A parsed `cnf`: a key ready for use, or a compressed P-256 point.
enum ParsedCnf {
    Key(ConfirmationKey),
    Compressed(CompressedP256),
}

/// Claim labels whose UUID text travels as 16 bytes: `sub` (2) and `aud` (3).
const COMPACT_ID_LABELS: [i64; 2] = [2, 3];

/// The 16 bytes of a UUID in its canonical text form (lower-case hex, hyphens at 8-4-4-4-12);
/// `None` for any other text.
#[cfg(feature = "issuer")]
fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let b = text.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibbles = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 8 | 13 | 18 | 23));
    for slot in &mut out {
        let mut byte = 0u8;
        for _ in 0..2 {
            let (_, c) = nibbles.next()?;
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            byte = (byte << 4) | v;
        }
        *slot = byte;
    }
    let hyphens = [8usize, 13, 18, 23]
        .iter()
        .all(|&i| b.get(i) == Some(&b'-'));
    hyphens.then_some(out)
}

fn uuid_text(bytes: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        for nibble in [byte >> 4, byte & 0x0f] {
            out.push(char::from(
                HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    out
}

/// On the wire, `sub` and `aud` that are UUIDs in canonical text travel as `bstr .size 16` (18
/// bytes instead of 37): the lock prints them back as the same text. Applied to the claims map
/// before it is encoded.
#[cfg(feature = "issuer")]
pub(crate) fn compact_ids(map: &mut Value) {
    if let Value::Map(entries) = map {
        for (k, v) in entries.iter_mut() {
            let compact = int(k).is_some_and(|l| COMPACT_ID_LABELS.contains(&l));
            if let (true, Value::Text(t)) = (compact, &*v)
                && let Some(bytes) = uuid_bytes(t)
            {
                *v = Value::Bytes(bytes.to_vec());
            }
        }
    }
}

/// The inverse of [`compact_ids`], applied to a decoded claims map: a 16-byte `sub` or `aud`
/// becomes its canonical UUID text. Any other byte string there is left for the claims check to
/// refuse.
pub(crate) fn expand_ids(map: &mut Value) {
    if let Value::Map(entries) = map {
        for (k, v) in entries.iter_mut() {
            let compact = int(k).is_some_and(|l| COMPACT_ID_LABELS.contains(&l));
            if let (true, Value::Bytes(b)) = (compact, &*v)
                && let Ok(bytes) = <[u8; 16]>::try_from(b.as_slice())
            {
                *v = Value::Text(uuid_text(&bytes));
            }
        }
    }
}

/// COSE_Key labels and values used in `cnf`.
const KTY: i64 = 1;
const KTY_OKP: i64 = 1;
const KTY_EC2: i64 = 2;
const CRV: i64 = -1;
const CRV_P256: i64 = 1;
const CRV_ED25519: i64 = 6;
const X: i64 = -2;
const Y: i64 = -3;

/// The COSE_Key of a confirmation key, labels in canonical order (1, -1, -2, -3).
#[cfg(feature = "issuer")]
fn cose_key(key: &ConfirmationKey) -> Value {
    match key {
        ConfirmationKey::Ed25519(x) => Value::Map(alloc::vec![
            (Value::from(KTY), Value::from(KTY_OKP)),
            (Value::from(CRV), Value::from(CRV_ED25519)),
            (Value::from(X), Value::Bytes(x.to_vec())),
        ]),
        ConfirmationKey::P256(point) => Value::Map(alloc::vec![
            (Value::from(KTY), Value::from(KTY_EC2)),
            (Value::from(CRV), Value::from(CRV_P256)),
            (
                Value::from(X),
                Value::Bytes(point.get(1..33).unwrap_or_default().to_vec())
            ),
            // Compressed (RFC 9053 §7.1.1): the sign bit of y instead of its 32 bytes.
            (
                Value::from(Y),
                Value::Bool(point.get(64).is_some_and(|b| b & 1 == 1))
            ),
        ]),
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Integer(i) => i64::try_from(*i).ok(),
        _ => None,
    }
}

fn bytes32(value: Value) -> Option<[u8; 32]> {
    match value {
        Value::Bytes(b) => b.try_into().ok(),
        _ => None,
    }
}

/// The uncompressed SEC1 point for `x` and the sign of y; `None` if `x` is not on P-256.
fn decompress_p256(x: &[u8; 32], y_odd: bool) -> Option<[u8; 65]> {
    use p256::elliptic_curve::sec1::{FromSec1Point, ToSec1Point};
    let mut compressed = [0u8; 33];
    let (tag, rest) = compressed.split_first_mut()?;
    *tag = if y_odd { 0x03 } else { 0x02 };
    rest.copy_from_slice(x);
    let encoded = p256::Sec1Point::from_bytes(compressed).ok()?;
    let affine: Option<p256::AffinePoint> =
        p256::AffinePoint::from_sec1_point(&encoded).into_option();
    let full = affine?.to_sec1_point(false);
    <[u8; 65]>::try_from(full.as_bytes()).ok()
}

/// Parses `{1: COSE_Key}`. The canonical checker already ran, so labels are unique and sorted;
/// here each position must hold exactly the expected label.
fn parse_cnf(value: Value) -> Option<ParsedCnf> {
    let Value::Map(outer) = value else {
        return None;
    };
    let [(label, key)]: [(Value, Value); 1] = outer.try_into().ok()?;
    if int(&label)? != 1 {
        return None;
    }
    let Value::Map(params) = key else {
        return None;
    };
    let mut params = params.into_iter();
    let mut next = |expected: i64| -> Option<Value> {
        let (label, value) = params.next()?;
        (int(&label)? == expected).then_some(value)
    };
    let kty = int(&next(KTY)?)?;
    let crv = int(&next(CRV)?)?;
    let key = match (kty, crv) {
        (KTY_OKP, CRV_ED25519) => ParsedCnf::Key(ConfirmationKey::Ed25519(bytes32(next(X)?)?)),
        (KTY_EC2, CRV_P256) => {
            let x = bytes32(next(X)?)?;
            match next(Y)? {
                Value::Bool(y_odd) => ParsedCnf::Compressed(CompressedP256 { x, y_odd }),
                y => {
                    let y = bytes32(y)?;
                    let mut point = [0u8; 65];
                    point[0] = 0x04;
                    point[1..33].copy_from_slice(&x);
                    point[33..].copy_from_slice(&y);
                    ParsedCnf::Key(ConfirmationKey::P256(point))
                }
            }
        }
        _ => return None,
    };
    params.next().is_none().then_some(key)
}

/// Parses `[incident, grant, max_uses]`.
fn parse_private(value: Value) -> Option<(String, GrantId, u32)> {
    let Value::Array(items) = value else {
        return None;
    };
    let [incident, grant, max_uses]: [Value; 3] = items.try_into().ok()?;
    let Value::Text(incident) = incident else {
        return None;
    };
    let Value::Bytes(grant) = grant else {
        return None;
    };
    let max_uses = u32::try_from(int(&max_uses)?).ok()?;
    Some((incident, GrantId(grant.try_into().ok()?), max_uses))
}

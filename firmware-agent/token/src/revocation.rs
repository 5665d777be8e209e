//! The lock's revocation list: token hashes with the expiry of the token they revoke.
//!
//! An entry is only needed while its token could still pass the time check, so
//! [`RevocationList::prune`] drops entries once `now` is past `exp + skew`. That is safe even
//! if the clock is later set back, because the lock's monotonic time floor refuses every token
//! then. Persistence is the agent's job: [`RevocationList::to_cbor`] and
//! [`RevocationList::from_cbor`] give it canonical bytes to store.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::cbor;
use crate::token::TokenHash;

/// Largest encoded revocation list [`RevocationList::from_cbor`] accepts (about 25 000 entries).
pub const MAX_REVOCATION_LIST_LEN: usize = 1 << 20;

/// Revoked token hashes, each with the `exp` of the token it revokes (unix seconds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationList {
    entries: BTreeMap<TokenHash, u64>,
}

/// The stored bytes are not a revocation list this crate wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevocationListDecodeError;

impl core::fmt::Display for RevocationListDecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("not a canonical revocation list")
    }
}

impl core::error::Error for RevocationListDecodeError {}

impl RevocationList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Revokes a token until `expires_at` (the token's `exp`). Revoking twice keeps the later expiry.
    pub fn insert(&mut self, token_hash: TokenHash, expires_at: u64) {
        let entry = self.entries.entry(token_hash).or_insert(expires_at);
        *entry = (*entry).max(expires_at);
    }

    /// Whether the token with this hash is revoked.
    pub fn contains(&self, token_hash: &TokenHash) -> bool {
        self.entries.contains_key(token_hash)
    }

    /// Drops every entry whose token can no longer pass the time check (`now > exp + skew`),
    /// returning how many were dropped.
    pub fn prune(&mut self, now: u64, skew_secs: u64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, exp| exp.saturating_add(skew_secs) >= now);
        before.saturating_sub(self.entries.len())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in hash order: `(token hash, expiry)`.
    pub fn iter(&self) -> impl Iterator<Item = (&TokenHash, u64)> {
        self.entries.iter().map(|(h, e)| (h, *e))
    }

    /// Canonical CBOR: an array of `[hash: bstr .size 32, exp: uint]`, sorted by hash.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len().saturating_mul(45).saturating_add(9));
        cbor::push_head(
            &mut out,
            4,
            u64::try_from(self.entries.len()).unwrap_or(u64::MAX),
        );
        for (hash, expires_at) in &self.entries {
            cbor::push_head(&mut out, 4, 2);
            cbor::push_bstr_head(&mut out, 32);
            out.extend_from_slice(hash.as_bytes());
            cbor::push_head(&mut out, 0, *expires_at);
        }
        out
    }

    /// Decodes what [`RevocationList::to_cbor`] wrote; refuses anything else (non-canonical,
    /// unsorted or duplicate entries, trailing bytes, more than [`MAX_REVOCATION_LIST_LEN`] bytes).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, RevocationListDecodeError> {
        Self::decode(bytes).ok_or(RevocationListDecodeError)
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_REVOCATION_LIST_LEN {
            return None;
        }
        cbor::check_canonical(bytes).ok()?;
        let (4, count, mut rest) = cbor::head(bytes)? else {
            return None;
        };
        let mut entries = BTreeMap::new();
        let mut previous: Option<TokenHash> = None;
        for _ in 0..count {
            let (4, 2, after) = cbor::head(rest)? else {
                return None;
            };
            let (hash, after) = cbor::bstr(after)?;
            let hash = TokenHash(hash.try_into().ok()?);
            let (0, expires_at, after) = cbor::head(after)? else {
                return None;
            };
            // Strictly increasing: sorted and free of duplicates, as `to_cbor` writes it.
            if previous.is_some_and(|p| p >= hash) {
                return None;
            }
            previous = Some(hash);
            entries.insert(hash, expires_at);
            rest = after;
        }
        Some(Self { entries })
    }
}

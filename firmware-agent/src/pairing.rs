//! The pairing code a homeowner types on the server to bind a lock's device key to their property.
//!
//! `code = Crockford-base32(first 50 bits of SHA-256("firstkey-pairing-v1" ‖ u16 BE len(lock id) ‖
//! lock id ‖ device public key))`, shown as `XXXXX-XXXXX`. The agent prints it once, at `init`.
//! The server never receives the code from the agent: it recomputes it from the public key the
//! agent proves possession of during the channel handshake and compares it with what the
//! homeowner typed. This module is shared by both sides; the code is never logged.

use std::fmt;

const DOMAIN: &[u8] = b"firstkey-pairing-v1";
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Number of base32 symbols in a code.
pub const CODE_LEN: usize = 10;

/// A pairing code. `Debug` is redacted so it cannot leak through logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode([u8; CODE_LEN]);

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingCode(<redacted>)")
    }
}

/// Why a typed pairing code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PairingCodeError {
    /// After removing separators the code does not have exactly ten symbols.
    #[error("a pairing code has 10 characters")]
    Length,
    /// A character outside Crockford base32.
    #[error("a pairing code uses only digits and the letters A-Z except I, L, O, U")]
    Character,
}

impl PairingCode {
    /// Derive the code for a device public key (32-byte Ed25519) and lock id.
    pub fn derive(device_public_key: &[u8], lock_id: &str) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(DOMAIN);
        let id = lock_id.as_bytes();
        let id_len = u16::try_from(id.len()).unwrap_or(u16::MAX);
        ctx.update(&id_len.to_be_bytes());
        ctx.update(id);
        ctx.update(device_public_key);
        let digest = ctx.finish();
        let mut bits: u64 = 0;
        for b in digest.as_ref().iter().take(8) {
            bits = (bits << 8) | u64::from(*b);
        }
        let mut out = [0u8; CODE_LEN];
        for (i, slot) in out.iter_mut().enumerate() {
            // Symbol i takes bits 63-5i .. 59-5i: the top 50 bits in order.
            let shift = 59 - 5 * i;
            let idx = usize::try_from((bits >> shift) & 0x1f).unwrap_or(0);
            *slot = ALPHABET.get(idx).copied().unwrap_or(b'0');
        }
        Self(out)
    }

    /// Parse what a person typed: case-insensitive, hyphens and spaces ignored, `I`/`L` read as
    /// `1` and `O` as `0` (Crockford's rules).
    pub fn parse(typed: &str) -> Result<Self, PairingCodeError> {
        let mut out = [0u8; CODE_LEN];
        let mut n = 0usize;
        for c in typed.chars() {
            if c == '-' || c == ' ' {
                continue;
            }
            let c = match c.to_ascii_uppercase() {
                'I' | 'L' => '1',
                'O' => '0',
                other => other,
            };
            let byte = u8::try_from(c).map_err(|_| PairingCodeError::Character)?;
            if !ALPHABET.contains(&byte) {
                return Err(PairingCodeError::Character);
            }
            let slot = out.get_mut(n).ok_or(PairingCodeError::Length)?;
            *slot = byte;
            n += 1;
        }
        if n != CODE_LEN {
            return Err(PairingCodeError::Length);
        }
        Ok(Self(out))
    }

    /// The code as shown to people, `XXXXX-XXXXX`. Print it; never log it.
    pub fn display(&self) -> String {
        let (a, b) = self.0.split_at(CODE_LEN / 2);
        format!(
            "{}-{}",
            String::from_utf8_lossy(a),
            String::from_utf8_lossy(b)
        )
    }

    /// Constant-time comparison with another code.
    pub fn matches(&self, other: &Self) -> bool {
        ring_ct_eq(&self.0, &other.0)
    }
}

const LOCK_ID_DOMAIN: &[u8] = b"firstkey-lock-id-v1";

/// The lock id derived from a device public key: the first 16 bytes of
/// `SHA-256("firstkey-lock-id-v1" ‖ device public key)` as an RFC 9562 version-8 UUID (lower-case
/// hex with hyphens). `firstkey-agent init` uses it unless told otherwise, and the server pairs a
/// lock only under the id derived from the key it proved: nobody can pair their own key under
/// someone else's lock id.
pub fn derived_lock_id(device_public_key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(LOCK_ID_DOMAIN);
    ctx.update(device_public_key);
    let digest = ctx.finish();
    let mut out = String::with_capacity(36);
    for (i, d) in digest.as_ref().iter().take(16).enumerate() {
        // Version 8 (custom) in byte 6, the RFC 9562 variant in byte 8.
        let byte = match i {
            6 => (d & 0x0f) | 0x80,
            8 => (d & 0x3f) | 0x80,
            _ => *d,
        };
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&hex::encode([byte]));
    }
    out
}

fn ring_ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_is_stable_and_bound_to_key_and_lock() {
        let k = [7u8; 32];
        let a = PairingCode::derive(&k, "front-door");
        assert_eq!(a, PairingCode::derive(&k, "front-door"));
        assert_ne!(a, PairingCode::derive(&[8u8; 32], "front-door"));
        assert_ne!(a, PairingCode::derive(&k, "back-door"));
        let shown = a.display();
        assert_eq!(shown.len(), 11);
        assert_eq!(shown.chars().nth(5), Some('-'));
        assert!(format!("{a:?}").contains("redacted"));
    }

    #[test]
    fn derived_lock_ids_are_uuids_bound_to_the_key() {
        let a = derived_lock_id(&[7u8; 32]);
        assert_eq!(a, derived_lock_id(&[7u8; 32]));
        assert_ne!(a, derived_lock_id(&[8u8; 32]));
        assert_eq!(a.len(), 36);
        assert_eq!(a.chars().nth(14), Some('8'), "version 8: {a}");
        assert!(matches!(a.chars().nth(19), Some('8' | '9' | 'a' | 'b')));
        assert!(firstkey_token::LockId::parse(&a).is_some());
    }

    #[test]
    fn parse_accepts_human_variants() {
        let k = [1u8; 32];
        let code = PairingCode::derive(&k, "lock-1");
        let shown = code.display();
        assert!(PairingCode::parse(&shown).unwrap().matches(&code));
        let sloppy = shown
            .to_lowercase()
            .replace('-', " ")
            .replace('0', "o")
            .replace('1', "l");
        assert!(PairingCode::parse(&sloppy).unwrap().matches(&code));
        assert_eq!(
            PairingCode::parse("ABCDE-FGHJ"),
            Err(PairingCodeError::Length)
        );
        assert_eq!(
            PairingCode::parse("ABCDE-FGHJKM"),
            Err(PairingCodeError::Length)
        );
        assert_eq!(
            PairingCode::parse("ABCDE-FGHJU"),
            Err(PairingCodeError::Character)
        );
        assert_eq!(
            PairingCode::parse("ABCDE-FGHJ\u{e9}"),
            Err(PairingCodeError::Character)
        );
    }
}

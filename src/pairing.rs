//! What the server keeps of a lock's pairing code: the homeowner types the code `firstkey-agent
//! init` printed; the server stores only the SHA-256 of its normalised form, and at the agent's first
//! handshake compares it with the hash of the code derived from the key the agent proved it holds.

use crate::domain::ParseError;

const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Normalises a typed code (Crockford base32: case-insensitive, `-` and spaces ignored, I/L read
/// as 1 and O as 0) to its 10 upper-case symbols.
pub fn normalise(typed: &str) -> Result<String, ParseError> {
    let bad = || ParseError {
        field: "pairing_code",
        reason: "10 characters as `firstkey-agent init` printed them".to_owned(),
    };
    let mut out = String::with_capacity(10);
    for c in typed.chars().filter(|c| *c != '-' && *c != ' ') {
        let c = match c.to_ascii_uppercase() {
            'I' | 'L' => '1',
            'O' => '0',
            other => other,
        };
        if !ALPHABET.contains(c) || out.len() >= 10 {
            return Err(bad());
        }
        out.push(c);
    }
    if out.len() == 10 { Ok(out) } else { Err(bad()) }
}

/// SHA-256 of a normalised code.
pub fn code_hash(normalised: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, normalised.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_forms_normalise_alike() {
        assert_eq!(normalise("abcde-12345").unwrap(), "ABCDE12345");
        assert_eq!(normalise("OIL00 11100").unwrap(), "0110011100");
        assert!(normalise("ABCDE-1234").is_err());
        assert!(normalise("ABCDE-123456").is_err());
        assert!(normalise("ABCDE-1234U").is_err());
    }
}

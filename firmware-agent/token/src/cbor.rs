//! A strict checker for RFC 8949 §4.2.1 core deterministic CBOR, run on untrusted bytes before
//! any decoder sees them. It does not build values; it only walks the encoding, without
//! allocating, so each defect gets its own precise reason.
//!
//! Accepted: unsigned and negative integers, `false` and `true`, byte and text strings (UTF-8 checked), arrays and
//! maps, all with definite lengths in their shortest form, map keys strictly increasing in
//! bytewise order of their encodings. Refused: indefinite lengths, duplicate keys, any tag, float
//! or simple value other than `false`/`true` (none of the firstkey formats uses them), nesting deeper than [`MAX_DEPTH`].

use crate::refusal::Refusal;

/// Deepest nesting of arrays and maps accepted.
pub(crate) const MAX_DEPTH: usize = 8;

/// A defect in the encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Truncated, reserved additional info, tag, float, simple value, bad UTF-8, too deep.
    Malformed,
    /// Indefinite-length item (or a stray break).
    Indefinite,
    /// Integer or length not in shortest form, or map keys out of order.
    NonCanonical,
    /// Two equal map keys.
    DuplicateKey,
    /// Bytes after the single top-level item.
    Trailing,
}

impl Fault {
    /// The token refusal for this fault.
    pub(crate) fn refusal(self) -> Refusal {
        match self {
            Fault::Malformed => Refusal::Malformed,
            Fault::Indefinite => Refusal::IndefiniteLength,
            Fault::NonCanonical => Refusal::NonCanonical,
            Fault::DuplicateKey => Refusal::DuplicateMapKey,
            Fault::Trailing => Refusal::TrailingBytes,
        }
    }
}

/// Checks that `bytes` is exactly one item in core deterministic encoding.
pub(crate) fn check_canonical(bytes: &[u8]) -> Result<(), Fault> {
    let rest = item(bytes, 0)?;
    if rest.is_empty() {
        Ok(())
    } else {
        Err(Fault::Trailing)
    }
}

/// Splits one head off the front of `input`: `(major type, argument, rest)`. For input that
/// [`check_canonical`] accepted; returns `None` on anything unexpected rather than panicking.
pub(crate) fn head(input: &[u8]) -> Option<(u8, u64, &[u8])> {
    let (&initial, rest) = input.split_first()?;
    let (arg, rest) = argument(initial & 0x1f, rest).ok()?;
    Some((initial >> 5, arg, rest))
}

/// Splits a byte string off the front of `input`: `(content, rest)`.
pub(crate) fn bstr(input: &[u8]) -> Option<(&[u8], &[u8])> {
    match head(input)? {
        (2, len, rest) => rest.split_at_checked(usize::try_from(len).ok()?),
        _ => None,
    }
}

/// Appends the head of a byte string of `len` bytes to `out`, in shortest form.
pub(crate) fn push_bstr_head(out: &mut alloc::vec::Vec<u8>, len: usize) {
    push_head(out, 2, u64::try_from(len).unwrap_or(u64::MAX));
}

/// Appends a head in shortest form.
pub(crate) fn push_head(out: &mut alloc::vec::Vec<u8>, major: u8, arg: u64) {
    let major = major << 5;
    if let Ok(small) = u8::try_from(arg)
        && small < 24
    {
        out.push(major | small);
    } else if let Ok(b) = u8::try_from(arg) {
        out.extend_from_slice(&[major | 24, b]);
    } else if let Ok(b) = u16::try_from(arg) {
        out.push(major | 25);
        out.extend_from_slice(&b.to_be_bytes());
    } else if let Ok(b) = u32::try_from(arg) {
        out.push(major | 26);
        out.extend_from_slice(&b.to_be_bytes());
    } else {
        out.push(major | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

/// Splits one item off the front of `input`, returning the rest.
fn item(input: &[u8], depth: usize) -> Result<&[u8], Fault> {
    if depth > MAX_DEPTH {
        return Err(Fault::Malformed);
    }
    let (&initial, rest) = input.split_first().ok_or(Fault::Malformed)?;
    let major = initial >> 5;
    let info = initial & 0x1f;
    if info == 31 {
        return Err(if matches!(major, 2..=5 | 7) {
            Fault::Indefinite
        } else {
            Fault::Malformed
        });
    }
    if major == 7 && matches!(info, 20 | 21) {
        // `false` / `true`: the sign of a compressed P-256 `cnf` point (RFC 9053 §7.1.1).
        return Ok(rest);
    }
    if major == 6 || major == 7 {
        // Tags, floats and other simple values: none belongs in a firstkey structure.
        return Err(Fault::Malformed);
    }
    let (arg, rest) = argument(info, rest)?;
    match major {
        0 | 1 => Ok(rest),
        2 | 3 => {
            let len = usize::try_from(arg).map_err(|_| Fault::Malformed)?;
            let (content, rest) = rest.split_at_checked(len).ok_or(Fault::Malformed)?;
            if major == 3 && core::str::from_utf8(content).is_err() {
                return Err(Fault::Malformed);
            }
            Ok(rest)
        }
        4 => {
            let mut rest = rest;
            for _ in 0..arg {
                rest = item(rest, depth.saturating_add(1))?;
            }
            Ok(rest)
        }
        _ => {
            // major 5: map
            let mut rest = rest;
            let mut previous: Option<&[u8]> = None;
            for _ in 0..arg {
                let after_key = item(rest, depth.saturating_add(1))?;
                let key_len = rest.len().saturating_sub(after_key.len());
                let key = rest.get(..key_len).ok_or(Fault::Malformed)?;
                if let Some(previous) = previous {
                    match previous.cmp(key) {
                        core::cmp::Ordering::Less => {}
                        core::cmp::Ordering::Equal => return Err(Fault::DuplicateKey),
                        core::cmp::Ordering::Greater => return Err(Fault::NonCanonical),
                    }
                }
                previous = Some(key);
                rest = item(after_key, depth.saturating_add(1))?;
            }
            Ok(rest)
        }
    }
}

/// Reads the argument of a head with additional info `info`, insisting on the shortest form.
fn argument(info: u8, rest: &[u8]) -> Result<(u64, &[u8]), Fault> {
    let (width, minimum) = match info {
        0..=23 => return Ok((u64::from(info), rest)),
        24 => (1, 24),
        25 => (2, 0x100),
        26 => (4, 0x1_0000),
        27 => (8, 0x1_0000_0000),
        _ => return Err(Fault::Malformed),
    };
    let (raw, rest) = rest.split_at_checked(width).ok_or(Fault::Malformed)?;
    let value = raw.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if value < minimum {
        return Err(Fault::NonCanonical);
    }
    Ok((value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_canonical_items() {
        for ok in [
            &[0x00][..],
            &[0x17],
            &[0x18, 0x18],
            &[0x19, 0x01, 0x00],
            &[0x20],
            &[0x43, 1, 2, 3],
            &[0x62, b'h', b'i'],
            &[0x82, 0x01, 0x02],
            &[0xa2, 0x01, 0x00, 0x20, 0x00],
            &[0xa0],
        ] {
            assert_eq!(check_canonical(ok), Ok(()), "{ok:02x?}");
        }
    }

    #[test]
    fn refuses_each_defect_precisely() {
        let cases: [(&[u8], Fault); 14] = [
            (&[], Fault::Malformed),
            (&[0x18], Fault::Malformed),
            (&[0x18, 0x17], Fault::NonCanonical),
            (&[0x19, 0x00, 0xff], Fault::NonCanonical),
            (&[0x1a, 0x00, 0x00, 0xff, 0xff], Fault::NonCanonical),
            (&[0x5f, 0x41, 0x00, 0xff], Fault::Indefinite),
            (&[0x9f, 0xff], Fault::Indefinite),
            (&[0xbf, 0xff], Fault::Indefinite),
            (&[0xa2, 0x01, 0x00, 0x01, 0x00], Fault::DuplicateKey),
            (&[0xa2, 0x20, 0x00, 0x01, 0x00], Fault::NonCanonical),
            (&[0x01, 0x00], Fault::Trailing),
            (&[0xc1, 0x00], Fault::Malformed),
            (&[0xf9, 0x00, 0x00], Fault::Malformed),
            (&[0x62, 0xff, 0xfe], Fault::Malformed),
        ];
        for (bytes, fault) in cases {
            assert_eq!(check_canonical(bytes), Err(fault), "{bytes:02x?}");
        }
    }

    #[test]
    fn refuses_deep_nesting() {
        let deep = [0x81u8; 20];
        assert_eq!(check_canonical(&deep), Err(Fault::Malformed));
    }
}

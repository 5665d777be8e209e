//! The COSE_Sign1 envelope shared by tokens and trust bundles: splitting untrusted bytes into
//! their parts (after the canonical check) and building the `Signature1` structure that is signed.
//!
//! Splitting is done on the raw, already-checked bytes rather than through a decoder, so the
//! nested protected header and payload can be checked for canonical form *before* anything
//! decodes them, and so verification never copies or decodes the envelope twice.

use alloc::vec::Vec;

use crate::cbor::{self, Fault};
use crate::refusal::Refusal;

/// The parts of a COSE_Sign1, borrowed from the input.
pub(crate) struct Sign1<'a> {
    /// The protected header's serialized bytes (content of the bstr).
    pub(crate) protected: &'a [u8],
    /// The payload bytes (content of the bstr).
    pub(crate) payload: &'a [u8],
    /// The signature bytes.
    pub(crate) signature: &'a [u8],
}

/// Checks `bytes` is a canonical, untagged COSE_Sign1 with an empty unprotected header and
/// canonical nested header and payload, and splits it. `max_len` bounds the input.
pub(crate) fn split(bytes: &[u8], max_len: usize) -> Result<Sign1<'_>, Refusal> {
    if bytes.len() > max_len {
        return Err(Refusal::Oversize);
    }
    cbor::check_canonical(bytes).map_err(Fault::refusal)?;
    let rest = match cbor::head(bytes) {
        Some((4, 4, rest)) => rest,
        _ => return Err(Refusal::Malformed),
    };
    let (protected, rest) = cbor::bstr(rest).ok_or(Refusal::Malformed)?;
    let rest = match cbor::head(rest) {
        Some((5, 0, rest)) => rest,
        Some((5, _, _)) => return Err(Refusal::UnprotectedHeader),
        _ => return Err(Refusal::Malformed),
    };
    let (payload, rest) = cbor::bstr(rest).ok_or(Refusal::Malformed)?;
    let (signature, _) = cbor::bstr(rest).ok_or(Refusal::Malformed)?;
    cbor::check_canonical(protected).map_err(Fault::refusal)?;
    cbor::check_canonical(payload).map_err(Fault::refusal)?;
    Ok(Sign1 {
        protected,
        payload,
        signature,
    })
}

/// The COSE `Sig_structure` for a COSE_Sign1: `["Signature1", protected, external_aad, payload]`.
pub(crate) fn to_be_signed(protected: &[u8], aad: &[u8], payload: &[u8]) -> Vec<u8> {
    const CONTEXT: &[u8] = b"\x84\x6aSignature1";
    let mut out = Vec::with_capacity(
        CONTEXT
            .len()
            .saturating_add(protected.len())
            .saturating_add(aad.len())
            .saturating_add(payload.len())
            .saturating_add(9),
    );
    out.extend_from_slice(CONTEXT);
    for part in [protected, aad, payload] {
        cbor::push_bstr_head(&mut out, part.len());
        out.extend_from_slice(part);
    }
    out
}

/// Signs and serializes a COSE_Sign1 with coset (issuer side).
#[cfg(feature = "issuer")]
pub(crate) fn sign(
    protected: coset::Header,
    payload: Vec<u8>,
    aad: &[u8],
    key: &ring::signature::Ed25519KeyPair,
) -> Result<Vec<u8>, crate::token::MintError> {
    use coset::{CborSerializable, CoseSign1Builder};

    CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .create_signature(aad, |tbs| key.sign(tbs).as_ref().to_vec())
        .build()
        .to_vec()
        .map_err(|_| crate::token::MintError::Encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sig_structure_matches_coset() {
        use coset::{CoseSign1Builder, HeaderBuilder, iana};

        let header = HeaderBuilder::new()
            .algorithm(iana::Algorithm::EdDSA)
            .key_id(b"k1".to_vec())
            .build();
        let payload = alloc::vec![7u8; 300];
        let sign1 = CoseSign1Builder::new()
            .protected(header)
            .payload(payload.clone())
            .build();
        let expected = sign1.tbs_data(b"aad");
        let protected = coset::CborSerializable::to_vec(sign1.protected.header).unwrap();
        assert_eq!(to_be_signed(&protected, b"aad", &payload), expected);
    }
}

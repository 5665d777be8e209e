//! A software FIDO2 security key for the demo and the tests: packed attestation from its own CA,
//! user verification, and a P-256 credential key (ring) that also answers the lock's
//! proof-of-possession challenge — the same key a responder uses to sign in is the one the token's
//! `cnf` names and the one that proves possession at the door.
//!
//! It is a stand-in for hardware; the server admits it only after its CA is added to the
//! municipality's attestation list, exactly as a real key maker's CA would be.

// Indexing a `serde_json::Value` by key yields `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// AAGUID the soft key reports.
pub const AAGUID: [u8; 16] = *b"firstkey-softkey";
const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
const FLAG_AT: u8 = 0x40;

/// A fault of the soft key (malformed ceremony options, or a crypto failure).
#[derive(Debug, thiserror::Error)]
#[error("soft security key: {0}")]
pub struct SoftKeyError(String);

fn err(what: impl std::fmt::Display) -> SoftKeyError {
    SoftKeyError(what.to_string())
}

/// A software security key with one credential.
pub struct SoftSecurityKey {
    ca_pem: String,
    leaf_der: Vec<u8>,
    leaf_key: EcdsaKeyPair,
    credential_pk8: Vec<u8>,
    credential_key: EcdsaKeyPair,
    credential_id: Vec<u8>,
    counter: u32,
    origin: String,
}

impl std::fmt::Debug for SoftSecurityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SoftSecurityKey(..)")
    }
}

impl SoftSecurityKey {
    /// A new key whose client data claims `origin` (the server's public origin).
    pub fn new(origin: &str) -> Result<Self, SoftKeyError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, KeyPair as RcKeyPair,
            KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
        };
        let rng = SystemRandom::new();
        let ca_key = RcKeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        // A CA name of its own: attestation lists look CAs up by name.
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!(
                "firstkey soft security key CA {}",
                uuid::Uuid::new_v4().simple()
            ),
        );
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).map_err(err)?;
        let leaf_rc = RcKeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        // Packed attestation certificates need C, O, OU = "Authenticator Attestation", CN.
        params.distinguished_name.push(DnType::CountryName, "AQ");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "firstkey demo");
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "Authenticator Attestation");
        params
            .distinguished_name
            .push(DnType::CommonName, "firstkey soft security key");
        params.is_ca = IsCa::ExplicitNoCa;
        let leaf = params.signed_by(&leaf_rc, &ca, &ca_key).map_err(err)?;
        let leaf_key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &leaf_rc.serialize_der(),
            &rng,
        )
        .map_err(err)?;
        let credential_pk8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(err)?
            .as_ref()
            .to_vec();
        let credential_key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &credential_pk8, &rng)
                .map_err(err)?;
        let mut credential_id = uuid::Uuid::new_v4().as_bytes().to_vec();
        credential_id.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        Ok(Self {
            ca_pem: ca.pem(),
            leaf_der: leaf.der().to_vec(),
            leaf_key,
            credential_pk8,
            credential_key,
            credential_id,
            counter: 0,
            origin: origin.to_owned(),
        })
    }

    /// PEM of the attestation CA, for the municipality's list.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The credential's private key (PKCS#8) — what `firstkey-agent tap --key` uses at the door.
    /// Secret: write it only to a 0600 file.
    pub fn credential_pkcs8(&self) -> &[u8] {
        &self.credential_pk8
    }

    fn client_data(&self, kind: &str, options: &Value) -> Result<Vec<u8>, SoftKeyError> {
        let challenge = options["publicKey"]["challenge"]
            .as_str()
            .ok_or_else(|| err("options without publicKey.challenge"))?;
        serde_json::to_vec(&json!({
            "type": kind,
            "challenge": challenge,
            "origin": self.origin,
            "crossOrigin": false,
        }))
        .map_err(err)
    }

    fn rp_id_hash(options: &Value, path: &[&str]) -> Result<Vec<u8>, SoftKeyError> {
        let mut node = &options["publicKey"];
        for p in path {
            node = &node[*p];
        }
        let rp_id = node
            .as_str()
            .ok_or_else(|| err("options without a relying-party id"))?;
        Ok(digest(&SHA256, rp_id.as_bytes()).as_ref().to_vec())
    }

    /// Answers a registration ceremony (`navigator.credentials.create`) with packed attestation.
    pub fn register(&mut self, options: &Value) -> Result<Value, SoftKeyError> {
        self.register_with_flags(options, 0)
    }

    /// [`Self::register`] with extra authenticator-data flags (e.g. backup-eligible `0x08` and
    /// backed-up `0x10`, as a synced passkey would set), attested all the same — for tests that
    /// check the server refuses what the flags say.
    pub fn register_with_flags(
        &mut self,
        options: &Value,
        extra_flags: u8,
    ) -> Result<Value, SoftKeyError> {
        let rng = SystemRandom::new();
        let client_data = self.client_data("webauthn.create", options)?;
        let point = self.credential_key.public_key().as_ref();
        let (x, y) = (
            point.get(1..33).ok_or_else(|| err("key"))?,
            point.get(33..65).ok_or_else(|| err("key"))?,
        );
        let mut cose = Vec::new();
        cbor::map(&mut cose, 5);
        for (k, v) in [(1i64, 2i64), (3, -7), (-1, 1)] {
            cbor::int(&mut cose, k);
            cbor::int(&mut cose, v);
        }
        cbor::int(&mut cose, -2);
        cbor::bytes(&mut cose, x);
        cbor::int(&mut cose, -3);
        cbor::bytes(&mut cose, y);

        let mut auth_data = Self::rp_id_hash(options, &["rp", "id"])?;
        auth_data.push(FLAG_UP | FLAG_UV | FLAG_AT | extra_flags);
        auth_data.extend_from_slice(&self.counter.to_be_bytes());
        auth_data.extend_from_slice(&AAGUID);
        let id_len = u16::try_from(self.credential_id.len()).map_err(err)?;
        auth_data.extend_from_slice(&id_len.to_be_bytes());
        auth_data.extend_from_slice(&self.credential_id);
        auth_data.extend_from_slice(&cose);
        let mut signed = auth_data.clone();
        signed.extend_from_slice(digest(&SHA256, &client_data).as_ref());
        let signature = self.leaf_key.sign(&rng, &signed).map_err(err)?;

        let mut object = Vec::new();
        cbor::map(&mut object, 3);
        cbor::text(&mut object, "fmt");
        cbor::text(&mut object, "packed");
        cbor::text(&mut object, "attStmt");
        cbor::map(&mut object, 3);
        cbor::text(&mut object, "alg");
        cbor::int(&mut object, -7);
        cbor::text(&mut object, "sig");
        cbor::bytes(&mut object, signature.as_ref());
        cbor::text(&mut object, "x5c");
        cbor::array(&mut object, 1);
        cbor::bytes(&mut object, &self.leaf_der);
        cbor::text(&mut object, "authData");
        cbor::bytes(&mut object, &auth_data);
        let id = URL_SAFE_NO_PAD.encode(&self.credential_id);
        Ok(json!({
            "id": id,
            "rawId": id,
            "type": "public-key",
            "response": {
                "attestationObject": URL_SAFE_NO_PAD.encode(&object),
                "clientDataJSON": URL_SAFE_NO_PAD.encode(&client_data),
            },
            "extensions": {},
        }))
    }

    /// Answers an authentication ceremony (`navigator.credentials.get`), user verified.
    pub fn assert(&mut self, options: &Value) -> Result<Value, SoftKeyError> {
        let rng = SystemRandom::new();
        self.counter = self.counter.saturating_add(1);
        let client_data = self.client_data("webauthn.get", options)?;
        let mut auth_data = Self::rp_id_hash(options, &["rpId"])?;
        auth_data.push(FLAG_UP | FLAG_UV);
        auth_data.extend_from_slice(&self.counter.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend_from_slice(digest(&SHA256, &client_data).as_ref());
        let signature = self.credential_key.sign(&rng, &signed).map_err(err)?;
        let id = URL_SAFE_NO_PAD.encode(&self.credential_id);
        Ok(json!({
            "id": id,
            "rawId": id,
            "type": "public-key",
            "response": {
                "authenticatorData": URL_SAFE_NO_PAD.encode(&auth_data),
                "clientDataJSON": URL_SAFE_NO_PAD.encode(&client_data),
                "signature": URL_SAFE_NO_PAD.encode(signature.as_ref()),
                "userHandle": null,
            },
            "extensions": {},
        }))
    }
}

/// Just enough CBOR (RFC 8949, definite lengths) for COSE keys and attestation objects.
mod cbor {
    fn head(out: &mut Vec<u8>, major: u8, value: u64) {
        let major = major << 5;
        if let Ok(small) = u8::try_from(value) {
            if small < 24 {
                out.push(major | small);
            } else {
                out.extend_from_slice(&[major | 24, small]);
            }
        } else if let Ok(v) = u16::try_from(value) {
            out.push(major | 25);
            out.extend_from_slice(&v.to_be_bytes());
        } else if let Ok(v) = u32::try_from(value) {
            out.push(major | 26);
            out.extend_from_slice(&v.to_be_bytes());
        } else {
            out.push(major | 27);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
    pub fn int(out: &mut Vec<u8>, v: i64) {
        if v >= 0 {
            head(out, 0, v.unsigned_abs());
        } else {
            head(out, 1, (v.saturating_add(1)).unsigned_abs());
        }
    }
    pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        head(out, 2, u64::try_from(b.len()).unwrap_or(u64::MAX));
        out.extend_from_slice(b);
    }
    pub fn text(out: &mut Vec<u8>, s: &str) {
        head(out, 3, u64::try_from(s.len()).unwrap_or(u64::MAX));
        out.extend_from_slice(s.as_bytes());
    }
    pub fn array(out: &mut Vec<u8>, n: u64) {
        head(out, 4, n);
    }
    pub fn map(out: &mut Vec<u8>, n: u64) {
        head(out, 5, n);
    }
}

//! Attestation *key* pins, and the demo municipality's mode without attestation.
//!
//! Staff security keys must carry an attestation a municipality trusts. Most makers' attestations
//! chain to a CA (`webauthn::attestation_cas`). Some authenticators attest with a self-signed
//! certificate whose key is the same on every device of a batch, such as Chromium's virtual
//! authenticator, which test configurations use; a saved copy of such a certificate never verifies
//! as a CA (it is not one, and its bytes change with every registration), so a municipality may
//! instead pin the attestation key: the SHA-256 of the leaf certificate's SubjectPublicKeyInfo
//! (`firstkey admin trust-key`, audited `auth.attestation_key_pinned`).
//!
//! A demo municipality (`demo-city`, `demo-city-<n>`, made by `firstkey demo`) may be put in a mode
//! where staff keys need not carry a trusted attestation at all, so the person trying the demo can
//! enrol whatever key they have. No other municipality can be put in that mode: [`set_demo_mode`]
//! refuses, and a database constraint (migration V18) refuses it too.
//!
//! Either way every other registration check stays: the registration is verified by webauthn-rs
//! (origin, RP id, challenge, user verification, the attestation statement's own signature,
//! algorithms) with only the CA chain left out, and synced credentials are still refused by the
//! caller.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use webauthn_rs::prelude::{
    AttestedPasskeyRegistration, Credential, ParsedAttestationData, RegisterPublicKeyCredential,
    Webauthn, WebauthnError,
};

use super::error::AuthError;
use crate::audit::{self, Event, Outcome};
use crate::store::{StoreError, Tenant};

/// How a municipality admits staff keys beyond its CA list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttestationTrust {
    /// Pinned attestation keys (SHA-256 of the SubjectPublicKeyInfo).
    pub pins: Vec<[u8; 32]>,
    /// Demo mode: staff keys need not carry a trusted attestation.
    pub optional: bool,
    /// Some pin is marked test-only (a software authenticator such as Chromium's virtual one).
    pub test_pins: bool,
}

impl AttestationTrust {
    /// Whether anything beyond the CA list is admitted.
    pub fn admits_more(&self) -> bool {
        self.optional || !self.pins.is_empty()
    }

    /// Whether enrolments ask for credProtect without enforcing it: only a demo municipality, or
    /// one holding a test-only pin (Chromium's virtual authenticator cannot apply an enforced
    /// policy). A pin for a real batch key does not relax it.
    pub fn relaxes_cred_protect(&self) -> bool {
        self.optional || self.test_pins
    }
}

/// What admitted a key that the CA list did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Its attestation key is pinned (hex SHA-256 of the SPKI).
    Pinned(String),
    /// The municipality is a demo one in the mode without attestation.
    DemoMode,
}

impl Admitted {
    /// For the credential's `attestation_ca` column and the audit entry.
    pub fn summary(&self) -> String {
        match self {
            Self::Pinned(pin) => format!("pinned attestation key {pin}"),
            Self::DemoMode => "demo municipality: attestation not required".to_owned(),
        }
    }
}

/// Whether `slug` names a demo municipality.
pub fn is_demo_slug(slug: &str) -> bool {
    match slug.strip_prefix("demo-city") {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// Parses a pin: 64 hex digits (colons allowed between bytes, as `openssl` prints them).
pub fn parse_pin(text: &str) -> Result<[u8; 32], AuthError> {
    let hex_digits: String = text.trim().chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&hex_digits)
        .map_err(|_| AuthError::Invalid("spki_sha256: 64 hex digits".to_owned()))?;
    bytes
        .try_into()
        .map_err(|_| AuthError::Invalid("spki_sha256: 64 hex digits".to_owned()))
}

/// The municipality's pins and mode.
pub async fn trust(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<AttestationTrust, AuthError> {
    let optional: bool = client
        .query_opt(
            "SELECT staff_attestation_optional FROM municipalities WHERE id = $1",
            &[&tenant.id()],
        )
        .await
        .map_err(StoreError::from)?
        .ok_or(AuthError::NotFound)?
        .get(0);
    let rows = client
        .query(
            "SELECT spki_sha256, test_only FROM attestation_key_pins WHERE municipality_id = $1",
            &[&tenant.id()],
        )
        .await
        .map_err(StoreError::from)?;
    let test_pins = rows.iter().any(|r| r.get::<_, bool>(1));
    let pins = rows
        .iter()
        .filter_map(|r| r.get::<_, Vec<u8>>(0).try_into().ok())
        .collect();
    Ok(AttestationTrust {
        pins,
        optional,
        test_pins,
    })
}

/// How a pinned attestation key is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinUse {
    /// A real batch attestation key: credProtect stays enforced.
    Production,
    /// A software authenticator for tests (Chromium's virtual one): enrolments in this municipality
    /// ask for credProtect without enforcing it.
    TestOnly,
}

/// Pins an attestation key for the municipality (audited; by `actor` when an admin did it, none for
/// operator tooling). Pinning one already pinned changes nothing and returns `false`.
pub async fn pin_key(
    tx: &impl GenericClient,
    tenant: Tenant,
    pin: &[u8; 32],
    name: &str,
    used: PinUse,
    actor: Option<uuid::Uuid>,
    now: DateTime<Utc>,
) -> Result<bool, AuthError> {
    let name = crate::domain::Text::parse("name", name, 200)
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    let test_only = used == PinUse::TestOnly;
    let added = tx
        .execute(
            "INSERT INTO attestation_key_pins (municipality_id, spki_sha256, name, added_at, test_only)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[&tenant.id(), &pin.to_vec(), &name.as_str(), &now, &test_only],
        )
        .await
        .map_err(StoreError::from)?;
    if added == 1 {
        let mut event =
            Event::new("auth.attestation_key_pinned", Outcome::Info).details(serde_json::json!({
                "spki_sha256": hex::encode(pin),
                "name": name.as_str(),
                "test_only": test_only,
            }));
        if let Some(actor) = actor {
            event = event.actor(actor);
        }
        audit::record(tx, tenant, &event, now).await?;
    }
    Ok(added == 1)
}

/// Puts a demo municipality in (or out of) the mode where staff keys need not carry a trusted
/// attestation (audited). Any other municipality is refused.
pub async fn set_demo_mode(
    tx: &impl GenericClient,
    tenant: Tenant,
    on: bool,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    let slug: String = tx
        .query_opt(
            "SELECT slug FROM municipalities WHERE id = $1",
            &[&tenant.id()],
        )
        .await
        .map_err(StoreError::from)?
        .ok_or(AuthError::NotFound)?
        .get(0);
    if on && !is_demo_slug(&slug) {
        return Err(AuthError::Invalid(format!(
            "{slug} is not a demo municipality: only demo-city (and demo-city-<n>) may admit staff keys without a trusted attestation"
        )));
    }
    let changed = tx
        .execute(
            "UPDATE municipalities SET staff_attestation_optional = $2
             WHERE id = $1 AND staff_attestation_optional <> $2",
            &[&tenant.id(), &on],
        )
        .await
        .map_err(StoreError::from)?;
    if changed == 1 {
        let event = Event::new("auth.attestation_demo_mode", Outcome::Info)
            .details(serde_json::json!({ "on": on }));
        audit::record(tx, tenant, &event, now).await?;
    }
    Ok(())
}

/// The demo municipalities in the mode without attestation (slug, name), for the enrolment page.
pub async fn demo_mode_municipalities(
    client: &impl GenericClient,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(client
        .query(
            "SELECT slug, name FROM municipalities WHERE staff_attestation_optional ORDER BY slug",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// SHA-256 of the SubjectPublicKeyInfo of a DER certificate.
pub fn spki_sha256(der: &[u8]) -> Option<[u8; 32]> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    digest.as_ref().try_into().ok()
}

/// The DER bytes of the attestation's leaf certificate (its serialised form carries them, base64url).
fn leaf_der(data: &ParsedAttestationData) -> Option<Vec<u8>> {
    use base64::Engine;
    let value = serde_json::to_value(data).ok()?;
    let chain = value.get("Basic").or_else(|| value.get("AttCa"))?;
    let first = chain.as_array()?.first()?.as_str()?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first)
        .ok()
}

/// Verifies a security-key registration the CA list refused, as webauthn-rs does but without the CA
/// chain, and admits it when its attestation key is pinned or the municipality is in demo mode.
/// `Ok(None)`: nothing beyond the CA list admits it (the caller keeps the CA list's refusal).
pub fn finish_beyond_ca_list(
    rp: &Webauthn,
    response: &RegisterPublicKeyCredential,
    state: &AttestedPasskeyRegistration,
    trust: &AttestationTrust,
) -> Result<Option<(Credential, Admitted)>, WebauthnError> {
    if !trust.admits_more() {
        return Ok(None);
    }
    let origin = rp
        .get_allowed_origins()
        .first()
        .cloned()
        .ok_or(WebauthnError::Configuration)?;
    let rp_id = origin.host_str().ok_or(WebauthnError::Configuration)?;
    let core = webauthn_rs_core::WebauthnCore::new_unsafe_experts_only(
        "firstkey",
        rp_id,
        vec![origin.clone()],
        std::time::Duration::from_secs(300),
        None,
        None,
    );
    // The state of an attested-passkey registration is its core registration state plus the CA
    // list; only the former is needed without the chain.
    let rs = serde_json::to_value(state)
        .ok()
        .and_then(|v| v.get("rs").cloned())
        .and_then(|rs| serde_json::from_value(rs).ok())
        .ok_or(WebauthnError::Configuration)?;
    let credential = core.register_credential(response, &rs, None)?;
    let leaf = match &credential.attestation.data {
        ParsedAttestationData::Basic(_) | ParsedAttestationData::AttCa(_) => {
            leaf_der(&credential.attestation.data).and_then(|der| spki_sha256(&der))
        }
        _ => None,
    };
    if let Some(pin) = leaf.filter(|p| trust.pins.contains(p)) {
        return Ok(Some((credential, Admitted::Pinned(hex::encode(pin)))));
    }
    if trust.optional {
        return Ok(Some((credential, Admitted::DemoMode)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_demo_slugs_are_demo_slugs() {
        for ok in ["demo-city", "demo-city-2", "demo-city-17"] {
            assert!(is_demo_slug(ok), "{ok}");
        }
        for bad in [
            "springfield",
            "demo-city-",
            "demo-city-x",
            "demo-city2",
            "demo",
            "xdemo-city",
            "demo-city-2-3",
        ] {
            assert!(!is_demo_slug(bad), "{bad}");
        }
    }

    #[test]
    fn pins_are_64_hex_digits() {
        let pin = "c98993ec4f77b4997a081a5e5990c7cf6b0ceeb7b27bc7312a3cc351921531a9";
        assert_eq!(hex::encode(parse_pin(pin).unwrap()), pin);
        let colons = pin
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_pin(&colons).unwrap(), parse_pin(pin).unwrap());
        for bad in [
            "",
            "abc",
            &pin[..62],
            &format!("{pin}00"),
            &pin.replace('c', "g"),
        ] {
            assert!(parse_pin(bad).is_err(), "{bad}");
        }
    }
}

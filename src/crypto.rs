//! Envelope encryption for personal data at rest (responder notes): each value gets its own random
//! 256-bit data key; the value is sealed with AES-256-GCM under the data key, and the data key is
//! sealed under the key-encryption key (KEK) from configuration. Rotating the KEK re-wraps data keys
//! only; erasing a data key erases its value (crypto-shredding).
//!
//! The KEK comes from the `data_key` setting (base64 of 32 bytes) or, when that is unset, from
//! `<key_dir>/data.kek`, created with mode 0600 on first use.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretBox};

/// A sealing or opening failure. Deliberately without detail: it must not help an attacker.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// Ciphertext, wrapped key or associated data do not match (tampered, or a different KEK).
    #[error("cannot open sealed data")]
    Open,
    /// The key-encryption key could not be loaded.
    #[error("data key: {0}")]
    Key(String),
}

/// The key-encryption key. Never logged: `Debug` shows only its id.
pub struct Kek {
    key: SecretBox<[u8; 32]>,
    id: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

impl Kek {
    /// A KEK from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let id = hex::encode(digest.as_ref().get(..8).unwrap_or_default());
        Self {
            key: SecretBox::new(Box::new(bytes)),
            id,
        }
    }

    /// Parses base64 of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| CryptoError::Key("not base64".to_owned()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::Key("must be 32 bytes".to_owned()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// Loads `<dir>/data.kek`, creating it (0600, directory 0700) if missing.
    pub fn load_or_create(dir: &Path) -> Result<Self, CryptoError> {
        let path = dir.join("data.kek");
        if let Ok(text) = std::fs::read_to_string(&path) {
            return Self::from_base64(&text);
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| CryptoError::Key(format!("{}: {e}", dir.display())))?;
        set_mode(dir, 0o700)?;
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| CryptoError::Random)?;
        let tmp = dir.join("data.kek.tmp");
        std::fs::write(&tmp, STANDARD.encode(bytes))
            .map_err(|e| CryptoError::Key(e.to_string()))?;
        set_mode(&tmp, 0o600)?;
        std::fs::rename(&tmp, &path).map_err(|e| CryptoError::Key(e.to_string()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// Short identifier (first 8 bytes of the key's SHA-256, hex) stored beside wrapped keys.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// An HMAC-SHA256 key derived from the KEK for one purpose (HKDF-SHA256, RFC 5869, with
    /// `label` as the info). Every replica configured with the same KEK derives the same key, and
    /// a key derived for one label says nothing about the KEK or another label's key.
    pub fn derive_hmac_key(&self, label: &[u8]) -> ring::hmac::Key {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"firstkey kek derivation");
        let prk = salt.extract(self.key.expose_secret());
        let info = [label];
        match prk.expand(&info, ring::hmac::HMAC_SHA256) {
            Ok(okm) => ring::hmac::Key::from(okm),
            // Unreachable: HKDF-SHA256 can always produce 32 bytes. Fall back to a key that still
            // depends on the KEK and the label.
            Err(_) => {
                let fallback =
                    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.key.expose_secret());
                let tag = ring::hmac::sign(&fallback, label);
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, tag.as_ref())
            }
        }
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), CryptoError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| CryptoError::Key(e.to_string()))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<(), CryptoError> {
    Ok(())
}

/// A sealed value: nonce ‖ ciphertext ‖ tag, and its data key wrapped the same way under the KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The sealed value.
    pub ciphertext: Vec<u8>,
    /// The sealed data key.
    pub wrapped_key: Vec<u8>,
}

fn seal_with(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let key =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| CryptoError::Random)?);
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| CryptoError::Random)?;
    let mut buffer = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buffer,
    )
    .map_err(|_| CryptoError::Random)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buffer);
    Ok(out)
}

fn open_with(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN {
        return Err(CryptoError::Open);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| CryptoError::Open)?);
    let mut buffer = body.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut buffer)
        .map_err(|_| CryptoError::Open)?;
    Ok(plain.to_vec())
}

/// Seals `plaintext` under a fresh data key. `aad` binds the value to its place (e.g. the plan id),
/// so a ciphertext copied to another row does not open.
pub fn seal(kek: &Kek, aad: &[u8], plaintext: &[u8]) -> Result<Sealed, CryptoError> {
    let mut data_key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut data_key)
        .map_err(|_| CryptoError::Random)?;
    let ciphertext = seal_with(&data_key, aad, plaintext)?;
    let wrapped_key = seal_with(kek.key.expose_secret(), aad, &data_key)?;
    Ok(Sealed {
        ciphertext,
        wrapped_key,
    })
}

/// Opens a value sealed by [`seal`] with the same `aad`.
pub fn open(kek: &Kek, aad: &[u8], sealed: &Sealed) -> Result<Vec<u8>, CryptoError> {
    let data_key = open_with(kek.key.expose_secret(), aad, &sealed.wrapped_key)?;
    let data_key: [u8; 32] = data_key.try_into().map_err(|_| CryptoError::Open)?;
    open_with(&data_key, aad, &sealed.ciphertext)
}

/// A fresh random data key, returned only wrapped under the KEK (bound to `key_aad`): for values
/// that share one erasable key (the audit log's per-property data keys), sealed and opened with
/// [`seal_with_wrapped`] / [`open_with_wrapped`]. Destroying the wrapped key erases them all.
pub fn wrap_new_key(kek: &Kek, key_aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut data_key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut data_key)
        .map_err(|_| CryptoError::Random)?;
    seal_with(kek.key.expose_secret(), key_aad, &data_key)
}

fn unwrap_key(kek: &Kek, key_aad: &[u8], wrapped: &[u8]) -> Result<[u8; 32], CryptoError> {
    let data_key = open_with(kek.key.expose_secret(), key_aad, wrapped)?;
    data_key.try_into().map_err(|_| CryptoError::Open)
}

/// Seals `plaintext` (bound to `aad`) under the data key `wrapped` (from [`wrap_new_key`]).
pub fn seal_with_wrapped(
    kek: &Kek,
    key_aad: &[u8],
    wrapped: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    seal_with(&unwrap_key(kek, key_aad, wrapped)?, aad, plaintext)
}

/// Opens a value sealed by [`seal_with_wrapped`].
pub fn open_with_wrapped(
    kek: &Kek,
    key_aad: &[u8],
    wrapped: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    open_with(&unwrap_key(kek, key_aad, wrapped)?, aad, sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_tamper() {
        let kek = Kek::from_bytes([7u8; 32]);
        let sealed = seal(&kek, b"plan-1", b"dog in the yard").unwrap();
        assert_eq!(open(&kek, b"plan-1", &sealed).unwrap(), b"dog in the yard");
        assert!(
            open(&kek, b"plan-2", &sealed).is_err(),
            "bound to its place"
        );
        assert!(
            open(&Kek::from_bytes([8u8; 32]), b"plan-1", &sealed).is_err(),
            "other KEK"
        );
        let mut tampered = sealed.clone();
        if let Some(b) = tampered.ciphertext.last_mut() {
            *b ^= 1;
        }
        assert!(open(&kek, b"plan-1", &tampered).is_err());
        assert!(!sealed.ciphertext.windows(3).any(|w| w == b"dog"));
    }

    #[test]
    fn kek_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = Kek::load_or_create(dir.path()).unwrap();
        let b = Kek::load_or_create(dir.path()).unwrap();
        assert_eq!(a.id(), b.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("data.kek"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(Kek::from_base64("short").is_err());
    }
}

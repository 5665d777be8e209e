//! Issuer-side helpers for demos and tests: a throwaway municipality (root key, issuer keys, trust
//! bundles), responder keys, and token minting.
//!
//! In production the server mints tokens and bundles with its own keys; these helpers exist so
//! that `firstkey-agent init` → `run` → `tap` can be tried by hand (`firstkey-agent demo …`) and so
//! the agent's tests use the same code paths. Key material is written with mode 0600.

use std::path::Path;

use firstkey_token::{
    BundleContents, Claims, ConfirmationKey, GrantId, IssuerKey, KeyId, LockId, Scope,
    SoftwareAuthenticator, TokenId,
};
use ring::rand::SecureRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::durable;
use crate::tap_server::PresenterKey;

/// Errors of the demo helpers.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Minting failed in the token crate.
    #[error("mint: {0}")]
    Mint(firstkey_token::MintError),
    /// Key generation or loading failed.
    #[error("key: {0}")]
    Key(&'static str),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An argument is invalid.
    #[error("{0}")]
    Invalid(String),
}

impl From<firstkey_token::MintError> for DemoError {
    fn from(e: firstkey_token::MintError) -> Self {
        DemoError::Mint(e)
    }
}

/// A fresh Ed25519 key as PKCS#8.
pub fn new_ed25519_pkcs8() -> Result<Vec<u8>, DemoError> {
    let rng = ring::rand::SystemRandom::new();
    Ed25519KeyPair::generate_pkcs8(&rng)
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| DemoError::Key("Ed25519 key generation failed"))
}

/// A fresh P-256 key (as a FIDO2 security key would hold it) as PKCS#8.
pub fn new_p256_pkcs8() -> Result<Vec<u8>, DemoError> {
    let rng = ring::rand::SystemRandom::new();
    Ok(SoftwareAuthenticator::generate_pkcs8(&rng)?)
}

fn load_ed25519(pkcs8: &[u8]) -> Result<Ed25519KeyPair, DemoError> {
    Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| DemoError::Key("not an Ed25519 PKCS#8 key"))
}

/// The `cnf` key for a presenter key.
pub fn confirmation_key(key: &PresenterKey) -> ConfirmationKey {
    match key {
        PresenterKey::Ed25519(k) => {
            let mut pk = [0u8; 32];
            pk.copy_from_slice(k.public_key().as_ref());
            ConfirmationKey::Ed25519(pk)
        }
        PresenterKey::P256(a) => a.confirmation_key(),
    }
}

/// A throwaway municipality: root key and issuer keys.
pub struct Issuer {
    /// Issuer name (`iss`).
    pub name: String,
    /// WebAuthn relying party id for the bundle.
    pub rp_id: String,
    /// Root key PKCS#8.
    pub root_pkcs8: Vec<u8>,
    /// Issuer signing keys: (kid text, PKCS#8).
    pub keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("name", &self.name)
            .field("rp_id", &self.rp_id)
            .finish_non_exhaustive()
    }
}

/// What a token should say.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// The lock (`aud`).
    pub lock_id: String,
    /// `nbf`.
    pub not_before: u64,
    /// `exp`.
    pub expires_at: u64,
    /// Allowed uses.
    pub max_uses: u32,
    /// The presenter's key, if the token binds one.
    pub confirmation: Option<ConfirmationKey>,
}

impl Issuer {
    /// A new issuer with one key, kid `k1`.
    pub fn generate(name: &str, rp_id: &str) -> Result<Self, DemoError> {
        Ok(Self {
            name: name.into(),
            rp_id: rp_id.into(),
            root_pkcs8: new_ed25519_pkcs8()?,
            keys: vec![("k1".into(), new_ed25519_pkcs8()?)],
        })
    }

    /// Add a new issuer key (a rotation); returns its kid.
    pub fn add_key(&mut self) -> Result<String, DemoError> {
        let kid = format!("k{}", self.keys.len().saturating_add(1));
        self.keys.push((kid.clone(), new_ed25519_pkcs8()?));
        Ok(kid)
    }

    /// The root public key.
    pub fn root_public_key(&self) -> Result<[u8; 32], DemoError> {
        let k = load_ed25519(&self.root_pkcs8)?;
        let mut out = [0u8; 32];
        out.copy_from_slice(k.public_key().as_ref());
        Ok(out)
    }

    /// A signed bundle of version `version` holding the keys named in `kids`.
    pub fn bundle(&self, version: u64, kids: &[&str]) -> Result<Vec<u8>, DemoError> {
        let mut keys = Vec::new();
        for (kid, pk8) in &self.keys {
            if kids.contains(&kid.as_str()) {
                let k = load_ed25519(pk8)?;
                let mut public_key = [0u8; 32];
                public_key.copy_from_slice(k.public_key().as_ref());
                keys.push(IssuerKey {
                    kid: KeyId::parse(kid.as_bytes()).ok_or(DemoError::Key("bad kid"))?,
                    public_key,
                });
            }
        }
        let contents = BundleContents {
            former_issuer: None,
            issuer: self.name.clone(),
            version,
            rp_id: self.rp_id.clone(),
            keys,
        };
        Ok(firstkey_token::mint_bundle(
            &contents,
            &load_ed25519(&self.root_pkcs8)?,
        )?)
    }

    /// Mint a token with the key `kid`.
    pub fn mint(&self, kid: &str, spec: &TokenSpec) -> Result<Vec<u8>, DemoError> {
        self.mint_scoped(kid, spec, Scope::Open)
    }

    /// Mint a token with the key `kid` and the given scope.
    pub fn mint_scoped(
        &self,
        kid: &str,
        spec: &TokenSpec,
        scope: Scope,
    ) -> Result<Vec<u8>, DemoError> {
        let (_, pk8) = self
            .keys
            .iter()
            .find(|(k, _)| k == kid)
            .ok_or_else(|| DemoError::Invalid(format!("no issuer key {kid}")))?;
        let key = load_ed25519(pk8)?;
        let rng = ring::rand::SystemRandom::new();
        let mut cti = [0u8; 16];
        let mut grant = [0u8; 16];
        rng.fill(&mut cti)
            .and_then(|()| rng.fill(&mut grant))
            .map_err(|_| DemoError::Key("random number generator failed"))?;
        let claims = Claims {
            issuer: self.name.clone(),
            subject: "demo-responder".into(),
            audience: LockId::parse(&spec.lock_id)
                .ok_or_else(|| DemoError::Invalid("bad lock id".into()))?,
            expires_at: spec.expires_at,
            not_before: spec.not_before,
            issued_at: spec.not_before,
            token_id: TokenId(cti),
            scope,
            incident: "DEMO-0001".into(),
            grant: GrantId(grant),
            max_uses: spec.max_uses,
            confirmation: spec.confirmation,
        };
        Ok(firstkey_token::mint(
            &claims,
            &KeyId::parse(kid.as_bytes()).ok_or(DemoError::Key("bad kid"))?,
            &key,
        )?)
    }

    /// Write the issuer to `dir`: `root.pk8`, `root.pub` (hex), `<kid>.pk8`, `meta.json`.
    pub fn save(&self, dir: &Path) -> Result<(), DemoError> {
        std::fs::create_dir_all(dir)?;
        durable::write_atomic(&dir.join("root.pk8"), &self.root_pkcs8, 0o600)?;
        durable::write_atomic(
            &dir.join("root.pub"),
            format!("{}\n", hex::encode(self.root_public_key()?)).as_bytes(),
            0o644,
        )?;
        let mut kids = Vec::new();
        for (kid, pk8) in &self.keys {
            durable::write_atomic(&dir.join(format!("{kid}.pk8")), pk8, 0o600)?;
            kids.push(kid.clone());
        }
        let meta = serde_json::json!({ "issuer": self.name, "rp_id": self.rp_id, "kids": kids });
        durable::write_atomic(&dir.join("meta.json"), meta.to_string().as_bytes(), 0o644)?;
        Ok(())
    }

    /// Read an issuer written by [`Issuer::save`].
    pub fn load(dir: &Path) -> Result<Self, DemoError> {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json"))?)
                .map_err(|e| DemoError::Invalid(format!("meta.json: {e}")))?;
        let text = |k: &str| {
            meta.get(k)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| DemoError::Invalid(format!("meta.json: missing {k}")))
        };
        let mut keys = Vec::new();
        for kid in meta
            .get("kids")
            .and_then(|v| v.as_array())
            .ok_or_else(|| DemoError::Invalid("meta.json: missing kids".into()))?
        {
            let kid = kid
                .as_str()
                .ok_or_else(|| DemoError::Invalid("meta.json: bad kid".into()))?;
            keys.push((
                kid.to_owned(),
                std::fs::read(dir.join(format!("{kid}.pk8")))?,
            ));
        }
        Ok(Self {
            name: text("issuer")?,
            rp_id: text("rp_id")?,
            root_pkcs8: std::fs::read(dir.join("root.pk8"))?,
            keys,
        })
    }
}

//! Issuer signing keys and trust bundles.
//!
//! Private halves of issuer keys are Ed25519 PKCS#8 files in `<key_dir>/issuer/<kid>.pk8` (directory
//! 0700, files 0600); the database (`signing_keys`) holds only the kid and the public key. Nothing
//! here logs key material.
//!
//! Lifecycle: [`generate`] makes a municipality's first key; [`rotate`] adds a new key and schedules
//! the retirement of the previous ones after an overlap (`signing_keys.retired_at` in the future), so a
//! bundle built during the overlap still carries them and tokens they signed keep verifying; once
//! `retired_at` has passed, a key is neither used for minting nor put into bundles, and its private
//! file is deleted. [`bundle`] builds the next trust bundle, signs it with the municipality's offline
//! root key (handed in for this call only), stores it and queues it for every lock.
//!
//! This module does not mint tokens (see `tokens`), it only hands out the current signing key.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;
use firstkey_token::{BundleContents, IssuerKey, KeyId};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use uuid::Uuid;

use crate::audit::{self, Event, Outcome};
use crate::channel::inbox::{self, InboxMessage};
use crate::store::{StoreError, Tenant};

/// Sub-directory of `key_dir` holding issuer keys.
pub const ISSUER_DIR: &str = "issuer";

/// Default overlap during which a rotated-out key stays in bundles (and so keeps verifying).
pub const DEFAULT_OVERLAP: Duration = Duration::hours(24);

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file or directory of the key directory could not be read or written.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file does not hold a usable Ed25519 PKCS#8 key, or a root key does not match the
    /// municipality's pinned root.
    #[error("{0}")]
    BadKey(String),
    /// The operation does not fit the current state (e.g. a first key already exists).
    #[error("{0}")]
    Refused(String),
    /// The municipality has no usable issuer key (run `firstkey keys generate`).
    #[error("no active issuer key for this municipality")]
    NoActiveKey,
    /// The random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// The token crate refused to mint (a bundle or token).
    #[error("minting failed: {0}")]
    Mint(firstkey_token::MintError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for KeyError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}

/// A key the server signs tokens with: kid, and the loaded pair (never printed).
pub struct SigningKey {
    /// The kid, as stored and as the token's `kid` header.
    pub kid: String,
    /// The key pair.
    pub pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.kid)
    }
}

impl SigningKey {
    /// The kid as the token crate's type.
    pub fn key_id(&self) -> Result<KeyId, KeyError> {
        KeyId::parse(self.kid.as_bytes())
            .ok_or_else(|| KeyError::BadKey(format!("kid {} is not a token key id", self.kid)))
    }
}

/// What [`generate`] and [`rotate`] made.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The new key's kid.
    pub kid: String,
    /// Its public key.
    pub public_key: [u8; 32],
    /// Where its private half is.
    pub path: PathBuf,
    /// Keys whose retirement this scheduled, with the time.
    pub retiring: Vec<(String, DateTime<Utc>)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `<key_dir>/issuer`, created with mode 0700 if missing (the mode is enforced on every call).
pub fn issuer_dir(key_dir: &Path) -> Result<PathBuf, KeyError> {
    let dir = key_dir.join(ISSUER_DIR);
    make_private_dir(key_dir)?;
    make_private_dir(&dir)?;
    Ok(dir)
}

fn make_private_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    set_mode(dir, 0o700)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<(), KeyError> {
    Ok(())
}

/// Writes a new private file (mode 0600 from creation; refuses to overwrite) and syncs it.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    set_mode(path, 0o600)
}

/// Generates an Ed25519 key, returned as PKCS#8 bytes and the loaded pair.
fn new_pair(rng: &SystemRandom) -> Result<(Vec<u8>, Ed25519KeyPair), KeyError> {
    let pk8 = Ed25519KeyPair::generate_pkcs8(rng).map_err(|_| KeyError::Random)?;
    let pair = Ed25519KeyPair::from_pkcs8(pk8.as_ref())
        .map_err(|_| KeyError::BadKey("generated key does not load".to_owned()))?;
    Ok((pk8.as_ref().to_vec(), pair))
}

fn public_of(pair: &Ed25519KeyPair) -> Result<[u8; 32], KeyError> {
    pair.public_key()
        .as_ref()
        .try_into()
        .map_err(|_| KeyError::BadKey("unexpected public key length".to_owned()))
}

/// Loads an Ed25519 PKCS#8 key file.
pub fn load_pair(path: &Path) -> Result<Ed25519KeyPair, KeyError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    Ed25519KeyPair::from_pkcs8(&bytes)
        .map_err(|_| KeyError::BadKey(format!("{} is not an Ed25519 PKCS#8 key", path.display())))
}

/// A random kid: 16 hex characters (the token crate allows at most 16 bytes).
fn new_kid(rng: &SystemRandom) -> Result<String, KeyError> {
    let mut bytes = [0u8; 8];
    rng.fill(&mut bytes).map_err(|_| KeyError::Random)?;
    Ok(hex::encode(bytes))
}

fn key_path(dir: &Path, kid: &str) -> PathBuf {
    dir.join(format!("{kid}.pk8"))
}

async fn live_kids(
    client: &impl GenericClient,
    tenant: Tenant,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Option<DateTime<Utc>>)>, KeyError> {
    Ok(client
        .query(
            "SELECT kid, retired_at FROM signing_keys
             WHERE municipality_id = $1 AND (retired_at IS NULL OR retired_at > $2)
             ORDER BY created_at, kid",
            &[&tenant.id(), &now],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

async fn add_key(
    tx: &impl GenericClient,
    tenant: Tenant,
    key_dir: &Path,
    now: DateTime<Utc>,
) -> Result<NewKey, KeyError> {
    let rng = SystemRandom::new();
    let dir = issuer_dir(key_dir)?;
    let kid = new_kid(&rng)?;
    let (pk8, pair) = new_pair(&rng)?;
    let public_key = public_of(&pair)?;
    tx.execute(
        "INSERT INTO signing_keys (kid, municipality_id, public_key, created_at) VALUES ($1, $2, $3, $4)",
        &[&kid, &tenant.id(), &public_key.to_vec(), &now],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    let path = key_path(&dir, &kid);
    // The file is written before the row commits: a crash in between leaves an unused file, never a
    // row whose private half is missing.
    write_private_file(&path, &pk8)?;
    Ok(NewKey {
        kid,
        public_key,
        path,
        retiring: Vec::new(),
    })
}

/// Makes the municipality's first issuer key. Refuses when it already has a live key (use
/// [`rotate`]).
pub async fn generate(
    client: &mut deadpool_postgres::Client,
    tenant: Tenant,
    key_dir: &Path,
    now: DateTime<Utc>,
) -> Result<NewKey, KeyError> {
    let tx = client.transaction().await?;
    lock_keys(&tx, tenant).await?;
    if !live_kids(&tx, tenant, now).await?.is_empty() {
        return Err(KeyError::Refused(
            "this municipality already has an issuer key; use `firstkey keys rotate`".to_owned(),
        ));
    }
    let key = add_key(&tx, tenant, key_dir, now).await?;
    audit::record(
        &tx,
        tenant,
        &Event::new("keys.generate", Outcome::Info).details(serde_json::json!({ "kid": key.kid })),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(key)
}

/// Adds a new active key and schedules every other live key without a retirement date to retire at
/// `now + overlap`; private files of keys retired before `now` are deleted.
pub async fn rotate(
    client: &mut deadpool_postgres::Client,
    tenant: Tenant,
    key_dir: &Path,
    overlap: Duration,
    now: DateTime<Utc>,
) -> Result<NewKey, KeyError> {
    let tx = client.transaction().await?;
    lock_keys(&tx, tenant).await?;
    let retire_at = now + overlap;
    let retiring: Vec<(String, DateTime<Utc>)> = tx
        .query(
            "UPDATE signing_keys SET retired_at = $3
             WHERE municipality_id = $1 AND retired_at IS NULL AND created_at <= $2
             RETURNING kid, retired_at",
            &[&tenant.id(), &now, &retire_at],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut key = add_key(&tx, tenant, key_dir, now).await?;
    key.retiring = retiring;
    audit::record(
        &tx,
        tenant,
        &Event::new("keys.rotate", Outcome::Info).details(serde_json::json!({
            "kid": key.kid,
            "retiring": key.retiring.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            "retire_at": retire_at.to_rfc3339(),
        })),
        now,
    )
    .await?;
    tx.commit().await?;
    prune_retired(&*client, tenant, key_dir, now).await?;
    Ok(key)
}

/// Deletes the private files of the municipality's keys whose retirement has passed.
pub async fn prune_retired(
    client: &impl GenericClient,
    tenant: Tenant,
    key_dir: &Path,
    now: DateTime<Utc>,
) -> Result<usize, KeyError> {
    let dir = key_dir.join(ISSUER_DIR);
    let mut removed = 0;
    for row in client
        .query(
            "SELECT kid FROM signing_keys WHERE municipality_id = $1 AND retired_at <= $2",
            &[&tenant.id(), &now],
        )
        .await?
    {
        let kid: String = row.get(0);
        let path = key_path(&dir, &kid);
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
    }
    Ok(removed)
}

/// Serialises key changes of one municipality (transaction-scoped).
async fn lock_keys(tx: &impl GenericClient, tenant: Tenant) -> Result<(), KeyError> {
    tx.execute(
        "SELECT 1 FROM municipalities WHERE id = $1 FOR UPDATE",
        &[&tenant.id()],
    )
    .await?;
    Ok(())
}

/// The key new tokens are signed with: the newest key of the municipality that is not retired.
pub async fn current_signing_key(
    client: &impl GenericClient,
    tenant: Tenant,
    key_dir: &Path,
    now: DateTime<Utc>,
) -> Result<SigningKey, KeyError> {
    let row = client
        .query_opt(
            "SELECT kid, public_key FROM signing_keys
             WHERE municipality_id = $1 AND (retired_at IS NULL OR retired_at > $2)
             ORDER BY created_at DESC, kid DESC LIMIT 1",
            &[&tenant.id(), &now],
        )
        .await?
        .ok_or(KeyError::NoActiveKey)?;
    let kid: String = row.get(0);
    let stored: Vec<u8> = row.get(1);
    let pair = load_pair(&key_path(&key_dir.join(ISSUER_DIR), &kid))?;
    if pair.public_key().as_ref() != stored.as_slice() {
        return Err(KeyError::BadKey(format!(
            "the key file of kid {kid} does not match its public key in the database"
        )));
    }
    Ok(SigningKey { kid, pair })
}

/// What [`root_generate`] wrote.
#[derive(Debug, Clone)]
pub struct RootKey {
    /// The file.
    pub path: PathBuf,
    /// Its public key (what locks are provisioned with).
    pub public_key: [u8; 32],
}

/// Writes a new municipality root key (Ed25519 PKCS#8, mode 0600) to `out`, for development and demos:
/// a real root key is made and kept offline.
pub fn root_generate(out: &Path) -> Result<RootKey, KeyError> {
    let (pk8, pair) = new_pair(&SystemRandom::new())?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    write_private_file(out, &pk8)?;
    Ok(RootKey {
        path: out.to_path_buf(),
        public_key: public_of(&pair)?,
    })
}

/// What [`bundle`] made.
#[derive(Debug, Clone)]
pub struct BuiltBundle {
    /// The new version.
    pub version: u64,
    /// The signed bytes.
    pub bytes: Vec<u8>,
    /// Kids in it.
    pub kids: Vec<String>,
    /// How many lock inboxes it was queued for.
    pub locks: usize,
}

/// Builds, signs (with `root`), stores and queues for every lock the municipality's next trust
/// bundle: issuer = the municipality's short issuer id, rp id = `rp_id`, keys = every key not yet
/// retired at `now`. The first bundle pins the root's public key on the municipality; later ones
/// must use the same root. If earlier bundles named the slug (made before V26), the bundle names
/// the slug as former issuer: locks accept it as the successor of their slug bundle and go on
/// accepting tokens under either name; the first such bundle's version is recorded
/// (`issuer_id_since`), and tokens for a lock move to the short id once it reports that version
/// (see [`crate::emergency::tokens`]).
pub async fn bundle(
    client: &mut deadpool_postgres::Client,
    tenant: Tenant,
    root: &Ed25519KeyPair,
    rp_id: &str,
    now: DateTime<Utc>,
) -> Result<BuiltBundle, KeyError> {
    let tx = client.transaction().await?;
    lock_keys(&tx, tenant).await?;
    let row = tx
        .query_one(
            "SELECT slug, root_public_key, issuer_id, issuer_id_since FROM municipalities WHERE id = $1",
            &[&tenant.id()],
        )
        .await?;
    let slug: String = row.get(0);
    let pinned: Option<Vec<u8>> = row.get(1);
    let issuer_id: String = row.get(2);
    let issuer_id_since: Option<i64> = row.get(3);
    let root_public = public_of(root)?;
    match pinned {
        Some(p) if p.as_slice() != root_public.as_slice() => {
            return Err(KeyError::BadKey(
                "this root key is not the municipality's root key".to_owned(),
            ));
        }
        Some(_) => {}
        None => {
            tx.execute(
                "UPDATE municipalities SET root_public_key = $2 WHERE id = $1",
                &[&tenant.id(), &root_public.to_vec()],
            )
            .await?;
        }
    }
    let mut keys = Vec::new();
    let mut kids = Vec::new();
    for r in tx
        .query(
            "SELECT kid, public_key FROM signing_keys
             WHERE municipality_id = $1 AND (retired_at IS NULL OR retired_at > $2) ORDER BY kid",
            &[&tenant.id(), &now],
        )
        .await?
    {
        let kid: String = r.get(0);
        let public: Vec<u8> = r.get(1);
        keys.push(IssuerKey {
            kid: KeyId::parse(kid.as_bytes())
                .ok_or_else(|| KeyError::BadKey(format!("kid {kid} is too long")))?,
            public_key: public
                .try_into()
                .map_err(|_| KeyError::BadKey(format!("public key of {kid}")))?,
        });
        kids.push(kid);
    }
    if keys.is_empty() {
        return Err(KeyError::NoActiveKey);
    }
    let previous: Option<i64> = tx
        .query_one(
            "SELECT max(version) FROM trust_bundles WHERE municipality_id = $1",
            &[&tenant.id()],
        )
        .await?
        .get(0);
    let version = previous.unwrap_or(0).saturating_add(1);
    let since = match issuer_id_since {
        Some(since) => since,
        None => {
            tx.execute(
                "UPDATE municipalities SET issuer_id_since = $2 WHERE id = $1",
                &[&tenant.id(), &version],
            )
            .await?;
            version
        }
    };
    let contents = BundleContents {
        issuer: issuer_id,
        version: u64::try_from(version).map_err(|_| KeyError::Refused("version".to_owned()))?,
        rp_id: rp_id.to_owned(),
        keys,
        // Bundles before `since` named the slug: keep the rename in every later bundle, so a
        // lock that skipped none accepts it and tokens minted under the slug still open.
        former_issuer: (since > 1).then_some(slug),
    };
    let bytes = firstkey_token::mint_bundle(&contents, root).map_err(KeyError::Mint)?;
    tx.execute(
        "INSERT INTO trust_bundles (municipality_id, version, bundle, created_at) VALUES ($1, $2, $3, $4)",
        &[&tenant.id(), &version, &bytes, &now],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    let locks: Vec<Uuid> = tx
        .query(
            "SELECT id FROM locks WHERE municipality_id = $1 AND pairing_state <> 'retired' ORDER BY id",
            &[&tenant.id()],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let message = InboxMessage::TrustBundle(bytes.clone());
    for lock in &locks {
        inbox::push(&tx, tenant, *lock, &message, now).await?;
    }
    audit::record(
        &tx,
        tenant,
        &Event::new("keys.bundle", Outcome::Info).details(serde_json::json!({
            "version": version,
            "kids": kids,
            "locks": locks.len(),
        })),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(BuiltBundle {
        version: contents.version,
        bytes,
        kids,
        locks: locks.len(),
    })
}

/// The municipality's newest trust bundle, if any: (version, bytes).
pub async fn latest_bundle(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<Option<(i64, Vec<u8>)>, KeyError> {
    Ok(client
        .query_opt(
            "SELECT version, bundle FROM trust_bundles WHERE municipality_id = $1 ORDER BY version DESC LIMIT 1",
            &[&tenant.id()],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let issuer = issuer_dir(&keys).unwrap();
        let root = root_generate(&issuer.join("root.pk8")).unwrap();
        assert!(load_pair(&root.path).is_ok());
        assert!(root_generate(&root.path).is_err(), "never overwrites");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&keys), 0o700);
            assert_eq!(mode(&issuer), 0o700);
            assert_eq!(mode(&root.path), 0o600);
        }
        let kid = new_kid(&SystemRandom::new()).unwrap();
        assert_eq!(kid.len(), 16);
        assert!(KeyId::parse(kid.as_bytes()).is_some());
    }
}

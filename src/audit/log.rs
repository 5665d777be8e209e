//! A municipality's transparency log around its Merkle tree: the log's identity (origin), its log
//! keys, signed checkpoints, registered witnesses and their cosignatures.
//!
//! Log keys are Ed25519 PKCS#8 files in `<key_dir>/log/<municipality>-<key id>.pk8` (directory 0700,
//! files 0600), like issuer keys; the database holds only public halves. Every key not yet retired
//! signs each checkpoint, so after [`rotate_key`] checkpoints carry both signatures for the overlap
//! and verifiers holding either key keep working. The key name is the log's origin,
//! `<public origin without scheme>/log/<slug>`, fixed when the first key is made.
//!
//! Checkpoints are signed by the sealer task ([`checkpoint_due`]): whenever the tree has grown and
//! the last checkpoint is at least `every` old (at once for the first), under the sealing lock.
//! Signing a checkpoint is not itself an audit entry (it would grow the tree it signs).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use uuid::Uuid;

use super::note::{
    self, Checkpoint, Note, NoteError, SIG_COSIGNATURE_V1, SIG_ED25519, VerifierKey,
};
use super::tree::{self, TreeError};
use super::{Event, Outcome};
use crate::emergency::keys::{KeyError, write_private_file};
use crate::store::{StoreError, Tenant};

/// Sub-directory of `key_dir` holding log keys.
pub const LOG_DIR: &str = "log";

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A key file could not be made or used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The operation does not fit the current state.
    #[error("{0}")]
    Refused(String),
    /// A note, key or checkpoint is malformed or does not verify.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The tree could not be read.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for LogError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}

/// The origin of a municipality's log served at `public_origin` (e.g. `https://fk.example`).
pub fn origin_for(public_origin: &str, slug: &str) -> String {
    let host = public_origin
        .split_once("://")
        .map_or(public_origin, |(_, rest)| rest)
        .trim_end_matches('/');
    format!("{host}/log/{slug}")
}

/// A new log key.
#[derive(Debug, Clone)]
pub struct NewLogKey {
    /// Its verifier key (what auditors and witnesses are given).
    pub verifier: VerifierKey,
    /// Where its private half is.
    pub path: PathBuf,
    /// Keys whose retirement this scheduled.
    pub retiring: Vec<(String, DateTime<Utc>)>,
}

fn key_file(key_dir: &Path, tenant: Tenant, key_id: &str) -> PathBuf {
    key_dir
        .join(LOG_DIR)
        .join(format!("{}-{key_id}.pk8", tenant.id()))
}

fn log_dir(key_dir: &Path) -> Result<PathBuf, KeyError> {
    // The issuer directory helper makes `key_dir` private; the log directory likewise.
    crate::emergency::keys::issuer_dir(key_dir)?;
    let dir = key_dir.join(LOG_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| KeyError::Io {
        path: dir.clone(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| KeyError::Io {
                path: dir.clone(),
                source,
            },
        )?;
    }
    Ok(dir)
}

async fn add_key(
    tx: &impl GenericClient,
    tenant: Tenant,
    origin: &str,
    key_dir: &Path,
    now: DateTime<Utc>,
) -> Result<NewLogKey, LogError> {
    log_dir(key_dir)?;
    let pk8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Random)?;
    let pair = Ed25519KeyPair::from_pkcs8(pk8.as_ref())
        .map_err(|_| KeyError::BadKey("generated key does not load".to_owned()))?;
    let verifier = note::verifier_of(origin, SIG_ED25519, &pair)?;
    let key_id = hex::encode(verifier.id());
    tx.execute(
        "INSERT INTO audit_log_keys (municipality_id, key_id, public_key, created_at)
         VALUES ($1, $2, $3, $4)",
        &[
            &tenant.id(),
            &key_id,
            &pair.public_key().as_ref().to_vec(),
            &now,
        ],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    let path = key_file(key_dir, tenant, &key_id);
    // Written before the row commits: a crash in between leaves an unused file, never a row whose
    // private half is missing.
    write_private_file(&path, pk8.as_ref())?;
    Ok(NewLogKey {
        verifier,
        path,
        retiring: Vec::new(),
    })
}

async fn live_key_ids(
    client: &impl GenericClient,
    tenant: Tenant,
    now: DateTime<Utc>,
) -> Result<Vec<String>, LogError> {
    Ok(client
        .query(
            "SELECT key_id FROM audit_log_keys
             WHERE municipality_id = $1 AND (retired_at IS NULL OR retired_at > $2)
             ORDER BY created_at, key_id",
            &[&tenant.id(), &now],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Makes the municipality's first log key (and so fixes its origin). Refuses when it has one.
pub async fn generate_key(
    client: &mut deadpool_postgres::Client,
    tenant: Tenant,
    origin: &str,
    key_dir: &Path,
    now: DateTime<Utc>,
) -> Result<NewLogKey, LogError> {
    if !note::valid_name(origin) {
        return Err(LogError::Refused(format!(
            "{origin:?} cannot be a log origin (no spaces or '+')"
        )));
    }
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT 1 FROM municipalities WHERE id = $1 FOR UPDATE",
        &[&tenant.id()],
    )
    .await?;
    if !live_key_ids(&tx, tenant, now).await?.is_empty() {
        return Err(LogError::Refused(
            "this municipality already has a log key; use `firstkey keys log-rotate`".to_owned(),
        ));
    }
    tx.execute(
        "INSERT INTO audit_logs (municipality_id, origin, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (municipality_id) DO NOTHING",
        &[&tenant.id(), &origin, &now],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    let origin = self::origin(&tx, tenant)
        .await?
        .ok_or_else(|| LogError::Refused("log origin missing".to_owned()))?;
    let key = add_key(&tx, tenant, &origin, key_dir, now).await?;
    super::record(
        &tx,
        tenant,
        &Event::new("audit.log_key_generate", Outcome::Info).details(serde_json::json!({
            "key": key.verifier.to_string(),
        })),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(key)
}

/// Adds a new log key; the other live keys retire at `now + overlap` and sign until then.
pub async fn rotate_key(
    client: &mut deadpool_postgres::Client,
    tenant: Tenant,
    key_dir: &Path,
    overlap: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<NewLogKey, LogError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT 1 FROM municipalities WHERE id = $1 FOR UPDATE",
        &[&tenant.id()],
    )
    .await?;
    let origin = self::origin(&tx, tenant).await?.ok_or_else(|| {
        LogError::Refused("no log key yet; use `firstkey keys log-generate`".to_owned())
    })?;
    let retire_at = now + overlap;
    let retiring: Vec<(String, DateTime<Utc>)> = tx
        .query(
            "UPDATE audit_log_keys SET retired_at = $3
             WHERE municipality_id = $1 AND retired_at IS NULL AND created_at <= $2
             RETURNING key_id, retired_at",
            &[&tenant.id(), &now, &retire_at],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut key = add_key(&tx, tenant, &origin, key_dir, now).await?;
    key.retiring = retiring;
    super::record(
        &tx,
        tenant,
        &Event::new("audit.log_key_rotate", Outcome::Info).details(serde_json::json!({
            "key": key.verifier.to_string(),
            "retiring": key.retiring.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            "retire_at": retire_at.to_rfc3339(),
        })),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(key)
}

/// The log's origin, once it has a key.
pub async fn origin(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<Option<String>, StoreError> {
    Ok(client
        .query_opt(
            "SELECT origin FROM audit_logs WHERE municipality_id = $1",
            &[&tenant.id()],
        )
        .await?
        .map(|r| r.get(0)))
}

/// The verifier keys of the log's live keys.
pub async fn verifier_keys(
    client: &impl GenericClient,
    tenant: Tenant,
    now: DateTime<Utc>,
) -> Result<Vec<VerifierKey>, LogError> {
    let Some(origin) = origin(client, tenant).await? else {
        return Ok(Vec::new());
    };
    let rows = client
        .query(
            "SELECT public_key FROM audit_log_keys
             WHERE municipality_id = $1 AND (retired_at IS NULL OR retired_at > $2)
             ORDER BY created_at, key_id",
            &[&tenant.id(), &now],
        )
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let pk: Vec<u8> = row.get(0);
        let pk: [u8; 32] = pk
            .try_into()
            .map_err(|_| LogError::Refused("stored log key is not 32 bytes".to_owned()))?;
        out.push(VerifierKey::new(&origin, SIG_ED25519, pk)?);
    }
    Ok(out)
}

async fn signing_pairs(
    client: &impl GenericClient,
    tenant: Tenant,
    key_dir: &Path,
    now: DateTime<Utc>,
) -> Result<Vec<Ed25519KeyPair>, LogError> {
    let mut out = Vec::new();
    for key in verifier_keys(client, tenant, now).await? {
        let id = hex::encode(key.id());
        let pair = crate::emergency::keys::load_pair(&key_file(key_dir, tenant, &id))?;
        if pair.public_key().as_ref() != key.public_key() {
            return Err(KeyError::BadKey(format!(
                "the file of log key {id} does not match its public key in the database"
            ))
            .into());
        }
        out.push(pair);
    }
    Ok(out)
}

/// Signs a checkpoint of the current tree if it has grown since the last one and the last one is
/// at least `every` old. Returns the new checkpoint's size. Takes the sealing lock, so replicas
/// never sign two checkpoints of one size.
pub async fn sign_if_due(
    client: &mut deadpool_postgres::Client,
    tenant: Tenant,
    key_dir: &Path,
    every: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Option<u64>, LogError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(7001, hashtext($1::uuid::text))",
        &[&tenant.id()],
    )
    .await?;
    let Some(origin) = origin(&tx, tenant).await? else {
        return Ok(None);
    };
    let size = tree::size(&tx, tenant).await?;
    let last = tx
        .query_opt(
            "SELECT tree_size, signed_at FROM audit_checkpoints WHERE municipality_id = $1
             ORDER BY tree_size DESC LIMIT 1",
            &[&tenant.id()],
        )
        .await?;
    if let Some(row) = last {
        let last_size: i64 = row.get(0);
        let signed_at: DateTime<Utc> = row.get(1);
        let every = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX);
        if u64::try_from(last_size).unwrap_or(u64::MAX) >= size || signed_at + every > now {
            return Ok(None);
        }
    }
    if size == 0 {
        return Ok(None);
    }
    let pairs = signing_pairs(&tx, tenant, key_dir, now).await?;
    if pairs.is_empty() {
        return Ok(None);
    }
    let root = tree::root_at(&tx, tenant, size).await?;
    let checkpoint = Checkpoint { origin, size, root };
    let signed = sign_checkpoint(&checkpoint, &pairs)?;
    tx.execute(
        "INSERT INTO audit_checkpoints (municipality_id, tree_size, root_hash, note, signed_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &tenant.id(),
            &i64::try_from(size).unwrap_or(i64::MAX),
            &root.to_vec(),
            &signed,
            &now,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(size))
}

/// The signed note of `checkpoint` under every key in `pairs` (each named by the origin).
pub fn sign_checkpoint(
    checkpoint: &Checkpoint,
    pairs: &[Ed25519KeyPair],
) -> Result<String, NoteError> {
    let body = checkpoint.body();
    let signatures = pairs
        .iter()
        .map(|p| note::sign(&body, &checkpoint.origin, p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Note {
        text: body,
        signatures,
    }
    .encode())
}

/// Signs due checkpoints of every log (see [`sign_if_due`]); returns how many were signed.
pub async fn checkpoint_due(
    pool: &deadpool_postgres::Pool,
    key_dir: &Path,
    every: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<usize, LogError> {
    let mut client = pool.get().await.map_err(StoreError::from)?;
    let every_chrono = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX);
    // Cheap pre-check without the lock: logs whose tree outgrew their last checkpoint.
    let due: Vec<Uuid> = client
        .query(
            "SELECT l.municipality_id FROM audit_logs l
             LEFT JOIN LATERAL (SELECT tree_size, signed_at FROM audit_checkpoints c
                                WHERE c.municipality_id = l.municipality_id
                                ORDER BY tree_size DESC LIMIT 1) c ON true
             WHERE (c.signed_at IS NULL OR c.signed_at <= $1)
               AND EXISTS (SELECT 1 FROM audit_entries e WHERE e.municipality_id = l.municipality_id
                           AND e.seq >= coalesce(c.tree_size, 0))",
            &[&(now - every_chrono)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut signed = 0;
    for id in due {
        if sign_if_due(&mut client, Tenant::assume(id), key_dir, every, now)
            .await?
            .is_some()
        {
            signed += 1;
        }
    }
    Ok(signed)
}

/// A stored checkpoint, with the cosignatures received for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: [u8; 32],
    /// The signed note with the log's signatures followed by every stored cosignature.
    pub note: String,
    /// When the log signed it.
    pub signed_at: DateTime<Utc>,
    /// Witnesses that cosigned it, with the cosignature's time.
    pub witnesses: Vec<(String, DateTime<Utc>)>,
}

/// The newest checkpoint (`size` = `None`) or the one of `size`.
pub async fn checkpoint(
    client: &impl GenericClient,
    tenant: Tenant,
    size: Option<u64>,
) -> Result<Option<StoredCheckpoint>, StoreError> {
    let size = size.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
    let Some(row) = client
        .query_opt(
            "SELECT tree_size, root_hash, note, signed_at FROM audit_checkpoints
             WHERE municipality_id = $1 AND ($2::bigint IS NULL OR tree_size = $2)
             ORDER BY tree_size DESC LIMIT 1",
            &[&tenant.id(), &size],
        )
        .await?
    else {
        return Ok(None);
    };
    let tree_size: i64 = row.get(0);
    let root: Vec<u8> = row.get(1);
    let mut note: String = row.get(2);
    let mut witnesses = Vec::new();
    for c in client
        .query(
            "SELECT witness, line, cosigned_at FROM audit_cosignatures
             WHERE municipality_id = $1 AND tree_size = $2 ORDER BY received_at, witness",
            &[&tenant.id(), &tree_size],
        )
        .await?
    {
        let line: String = c.get(1);
        note.push_str(&line);
        witnesses.push((c.get(0), c.get(2)));
    }
    Ok(Some(StoredCheckpoint {
        size: u64::try_from(tree_size).unwrap_or(0),
        root: super::merkle::to_hash(&root),
        note,
        signed_at: row.get(3),
        witnesses,
    }))
}

/// Registers a witness whose cosignatures the log accepts (a type-0x04 verifier key).
pub async fn add_witness(
    client: &impl GenericClient,
    tenant: Tenant,
    key: &VerifierKey,
    now: DateTime<Utc>,
) -> Result<(), LogError> {
    if key.sig_type() != SIG_COSIGNATURE_V1 {
        return Err(LogError::Refused(
            "a witness key must be a cosignature/v1 key (type 0x04)".to_owned(),
        ));
    }
    client
        .execute(
            "INSERT INTO audit_witnesses (municipality_id, name, public_key, added_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (municipality_id, name) DO NOTHING",
            &[&tenant.id(), &key.name(), &key.public_key().to_vec(), &now],
        )
        .await
        .map_err(crate::store::conflict_or_query)?;
    Ok(())
}

async fn witnesses(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<Vec<VerifierKey>, LogError> {
    let mut out = Vec::new();
    for row in client
        .query(
            "SELECT name, public_key FROM audit_witnesses WHERE municipality_id = $1",
            &[&tenant.id()],
        )
        .await?
    {
        let name: String = row.get(0);
        let pk: Vec<u8> = row.get(1);
        if let Ok(pk) = <[u8; 32]>::try_from(pk) {
            out.push(VerifierKey::new(&name, SIG_COSIGNATURE_V1, pk)?);
        }
    }
    Ok(out)
}

/// Stores the valid cosignatures by registered witnesses in `posted` (a checkpoint note as the log
/// signed it, with cosignature lines). Returns the witnesses whose cosignature was accepted.
pub async fn add_cosignatures(
    client: &impl GenericClient,
    tenant: Tenant,
    posted: &str,
    now: DateTime<Utc>,
) -> Result<Vec<String>, LogError> {
    let posted = Note::parse(posted)?;
    let cp = Checkpoint::parse(&posted.text)?;
    let stored = checkpoint(client, tenant, Some(cp.size))
        .await?
        .ok_or_else(|| LogError::Refused("the log signed no checkpoint of this size".to_owned()))?;
    if !stored.note.starts_with(&posted.text) || stored.root != cp.root {
        return Err(LogError::Refused(
            "this is not the checkpoint the log signed".to_owned(),
        ));
    }
    let mut accepted = Vec::new();
    for w in witnesses(client, tenant).await? {
        let valid = posted.signatures.iter().find_map(|s| {
            (s.name == w.name() && s.key_id == w.id())
                .then(|| note::verify_cosignature(&posted.text, &w, &s.signature).map(|t| (s, t)))
                .flatten()
        });
        let Some((sig, time)) = valid else {
            continue;
        };
        let cosigned_at =
            DateTime::<Utc>::from_timestamp(i64::try_from(time).unwrap_or(0), 0).unwrap_or(now);
        client
            .execute(
                "INSERT INTO audit_cosignatures (municipality_id, tree_size, witness, line, cosigned_at, received_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (municipality_id, tree_size, witness) DO NOTHING",
                &[
                    &tenant.id(),
                    &i64::try_from(cp.size).unwrap_or(i64::MAX),
                    &w.name(),
                    &sig.line(),
                    &cosigned_at,
                    &now,
                ],
            )
            .await?;
        accepted.push(w.name().to_owned());
    }
    if accepted.is_empty() {
        return Err(LogError::Refused(
            "no valid cosignature by a registered witness".to_owned(),
        ));
    }
    Ok(accepted)
}

/// An export against the newest checkpoint: the whole log (`property` = `None`; complete, the
/// verifier recomputes the root) or the entries about one property, each with its inclusion proof.
/// `None` when the log has no checkpoint yet.
pub async fn export(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Option<Uuid>,
) -> Result<Option<super::verify::Export>, LogError> {
    use base64::Engine;
    let Some(cp) = checkpoint(client, tenant, None).await? else {
        return Ok(None);
    };
    let rows = super::leaf_data(client, tenant, 0, cp.size, property).await?;
    let mut entries = Vec::with_capacity(rows.len());
    for (entry, bytes) in rows {
        let index = u64::try_from(entry.seq).unwrap_or(0);
        let proof = if property.is_some() {
            tree::inclusion_proof(client, tenant, index, cp.size)
                .await?
                .iter()
                .map(|h| base64::engine::general_purpose::STANDARD.encode(h))
                .collect()
        } else {
            Vec::new()
        };
        entries.push(super::verify::ExportEntry {
            index,
            data: String::from_utf8(bytes)
                .map_err(|_| LogError::Refused("entry is not UTF-8".to_owned()))?,
            proof,
        });
    }
    Ok(Some(super::verify::Export {
        format: super::verify::EXPORT_FORMAT.to_owned(),
        checkpoint: cp.note,
        complete: property.is_none(),
        entries,
    }))
}

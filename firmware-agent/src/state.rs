//! The agent's state directory and everything it keeps there, written crash-safely.
//!
//! Layout of the state directory:
//!
//! | file | contents | written by |
//! | --- | --- | --- |
//! | `config.json` | lock id, root public key, server address, hold time | `init` |
//! | `device.pk8` (0600) | Ed25519 device key, PKCS#8 | `init` |
//! | `server-ca.pem` | CA certificate(s) that sign the server's TLS certificate | `init` |
//! | `floor` | monotonic time floor from the server's time, Unix seconds | when the server's time moves it |
//! | `receipts.log` | append-only log of signed receipts (the hash chain), each with the time floor after it | every decision |
//! | `replay.cbor` | replay records (`cti` → uses, expiry) folded out of compacted receipts | compaction |
//! | `channel.cbor` | last applied inbox seq, trust bundle, revocation list, pre-staged tokens | every inbox message |
//! | `uploaded` | highest receipt seq the server acknowledged | receipt acks |
//! | `actuator.log` | simulated door events | the simulated actuator |
//! | `malformed` | count, first and last time of malformed tap frames (JSON) | at most once a minute |
//! | `keypad.key` (0600) | the keypad code secret (32 bytes), from the channel | `KeypadSecret` |
//! | `keypad.cbor` | keypad failure count folded out of compacted receipts | compaction |
//! | `keypad_locked` | count, first and last time of entries refused while the keypad was locked (JSON) | at most once a minute |
//! | `halted` | why the agent stopped deciding (only while it has) | when it stops |
//! | `lock` | held with an exclusive file lock while a [`Store`] is open | |
//!
//! Crash-safety rules: small files are replaced atomically ([`durable::write_atomic`]); receipts
//! are appended and fsynced. An allow receipt *is* the durable replay record for its `cti`, so
//! recording the use and recording the receipt are one fsynced append, made before the door
//! opens and before the presenter is answered; the time floor a token's `iat` raises rides in the
//! same record, so a decision is one fsync. The floor in force is the higher of `floor` and the
//! last record's. Replay state is rebuilt at open from
//! `replay.cbor` plus every receipt newer than the snapshot; over-counting after a crash between
//! the two steps of compaction is impossible because the snapshot records which receipt it
//! covers.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use firstkey_token::{
    LockId, LockView, RevocationList, RootPublicKey, TokenHash, TokenId, TrustBundle,
};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::durable::{self, AppendLog};
use crate::keypad::{CodeSecret, Failures, KeypadView, StandingSchedule};
use crate::protocol::Bytes;
use crate::protocol::channel::InboxMessage;
use crate::receipt::{self, ChainHead, ReceiptBody, VerifiedReceipt};

/// Most pre-staged tokens kept; the oldest are dropped first.
const MAX_STAGED_TOKENS: usize = 64;

/// Receipts kept in `receipts.log` after upload before compaction drops them.
const COMPACT_AFTER: usize = 4096;

/// The malformed-frame tally is written at most once per this many seconds of the lock's clock
/// (and by the daemon's periodic flush), however many frames arrive.
pub const MALFORMED_WRITE_INTERVAL_SECS: u64 = 60;

const MALFORMED_FILE: &str = "malformed";
const KEYPAD_SECRET_FILE: &str = "keypad.key";
const KEYPAD_SNAPSHOT_FILE: &str = "keypad.cbor";
const KEYPAD_LOCKED_FILE: &str = "keypad_locked";

#[derive(Serialize, Deserialize)]
struct KeypadSnapshot {
    /// Receipts with seq ≤ this are folded into `failures`.
    covers_seq: u64,
    failures: Failures,
}

/// Malformed or oversize tap frames: accountability without a receipt (and an fsync) each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MalformedTally {
    /// Frames counted since the state directory was made.
    pub count: u64,
    /// Lock clock at the first one (0 if none).
    pub first: u64,
    /// Lock clock at the latest one (0 if none).
    pub last: u64,
}

/// Errors from the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file's contents are not what the agent wrote.
    #[error("{path}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Another agent process holds this state directory.
    #[error("state directory {0} is in use by another agent process")]
    Busy(PathBuf),
    /// `init` found an existing state directory.
    #[error("state directory {0} is already initialised")]
    AlreadyInitialised(PathBuf),
    /// A value given to `init` is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The agent has stopped deciding: its receipt log cannot take a record safely. Every tap is
    /// refused (no decision, the door stays shut) until an operator repairs the state.
    #[error("the agent has stopped deciding: {0}")]
    Halted(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, what: impl Into<String>) -> StateError {
    StateError::Corrupt {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Paths inside a state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// A state directory at `root` (not checked).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A file in it.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Default tap socket path.
    pub fn tap_socket(&self) -> PathBuf {
        self.file("tap.sock")
    }
}

/// Where the channel connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// `host:port` to connect to.
    pub address: String,
    /// The TLS server name to verify (and sign into the handshake).
    pub server_name: String,
}

/// Settings written by `init`, in `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// The lock id (token `aud`).
    pub lock_id: String,
    /// The municipality's root Ed25519 public key, hex.
    pub root_public_key: String,
    /// The server, if the lock has one (a lock without works offline only).
    pub server: Option<ServerConfig>,
    /// How long the door stays unlocked after an allow, in milliseconds.
    pub hold_ms: u64,
    /// Clock skew allowance for `nbf`/`exp`, in seconds.
    pub skew_secs: u64,
}

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitParams {
    /// Lock id; empty: the id derived from the new device key
    /// ([`crate::pairing::derived_lock_id`]), the only one the server pairs.
    pub lock_id: String,
    /// Root public key, 32 bytes.
    pub root_public_key: [u8; 32],
    /// Optional first trust bundle (verified against the root key).
    pub trust_bundle: Option<Vec<u8>>,
    /// Optional server.
    pub server: Option<ServerConfig>,
    /// Optional server CA certificate(s), PEM.
    pub server_ca_pem: Option<Vec<u8>>,
    /// Door hold time in milliseconds.
    pub hold_ms: u64,
    /// Clock skew allowance in seconds.
    pub skew_secs: u64,
}

/// Result of `init`: what to tell the installer.
#[derive(Debug, Clone)]
pub struct Initialised {
    /// The new device public key.
    pub device_public_key: [u8; 32],
    /// The lock id written to the config (derived from the key unless one was given).
    pub lock_id: String,
}

/// Create a state directory: device key, config, optional bundle and CA. Refuses to overwrite.
///
/// Atomic: everything is built in a temporary sibling directory (`.<name>.init`), each file and
/// the directory fsynced, then renamed into place and the parent fsynced. A killed `init` leaves
/// either no state directory or a whole one; a temporary directory left by a killed `init` is
/// removed by the next one and ignored by everything else. An existing empty directory (made by
/// a package or a mount) is replaced the same way.
pub fn init(dir: &StateDir, params: &InitParams) -> Result<Initialised, StateError> {
    let root = dir.root();
    if !params.lock_id.is_empty() && LockId::parse(&params.lock_id).is_none() {
        return Err(StateError::Invalid(
            "lock id: 1 to 64 characters of A-Z a-z 0-9 - _ .".into(),
        ));
    }
    let root_key = RootPublicKey(params.root_public_key);
    let bundle = match &params.trust_bundle {
        Some(bytes) => Some(
            TrustBundle::verify(bytes, &root_key)
                .map_err(|e| StateError::Invalid(format!("trust bundle: {e}")))?,
        ),
        None => None,
    };
    match std::fs::read_dir(root) {
        Ok(mut entries) => {
            if dir.file("config.json").exists() {
                return Err(StateError::AlreadyInitialised(root.to_path_buf()));
            }
            if entries.next().is_some() {
                return Err(StateError::Invalid(format!(
                    "{} exists and is not empty but holds no agent state (no config.json); \
                     remove it or choose another --state-dir",
                    root.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(root)(e)),
    }
    let name = root
        .file_name()
        .ok_or_else(|| StateError::Invalid(format!("{}: not a directory name", root.display())))?;
    let parent = parent_dir_of(root);
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".init");
    let tmp_root = parent.join(tmp_name);
    match std::fs::remove_dir_all(&tmp_root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp_root)(e)),
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp_root)
            .map_err(io_err(&tmp_root))?;
    }
    let tmp = StateDir::new(&tmp_root);
    let done = write_initial_state(&tmp, params, bundle)?;
    durable::sync_dir(&tmp_root).map_err(io_err(&tmp_root))?;
    std::fs::rename(&tmp_root, root).map_err(io_err(root))?;
    durable::sync_dir(&parent).map_err(io_err(&parent))?;
    Ok(done)
}

/// The files of a new state directory, written into `dir` (the temporary one).
fn write_initial_state(
    dir: &StateDir,
    params: &InitParams,
    bundle: Option<TrustBundle>,
) -> Result<Initialised, StateError> {
    let rng = ring::rand::SystemRandom::new();
    let pk8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| StateError::Invalid("could not generate the device key".into()))?;
    let key = Ed25519KeyPair::from_pkcs8(pk8.as_ref())
        .map_err(|_| StateError::Invalid("could not load the generated device key".into()))?;
    let device_key_path = dir.file("device.pk8");
    durable::write_atomic(&device_key_path, pk8.as_ref(), 0o600)
        .map_err(io_err(&device_key_path))?;
    if let Some(pem) = &params.server_ca_pem {
        let p = dir.file("server-ca.pem");
        durable::write_atomic(&p, pem, 0o644).map_err(io_err(&p))?;
    }
    let lock_id = if params.lock_id.is_empty() {
        crate::pairing::derived_lock_id(key.public_key().as_ref())
    } else {
        params.lock_id.clone()
    };
    let channel = ChannelState {
        last_seq: 0,
        bundle,
        revocations: RevocationList::new(),
        staged_tokens: Vec::new(),
        standing: BTreeMap::new(),
    };
    channel.persist(dir)?;
    let config = AgentConfig {
        lock_id: lock_id.clone(),
        root_public_key: hex::encode(params.root_public_key),
        server: params.server.clone(),
        hold_ms: params.hold_ms,
        skew_secs: params.skew_secs,
    };
    let json = serde_json::to_vec_pretty(&config)
        .map_err(|e| StateError::Invalid(format!("config: {e}")))?;
    let config_path = dir.file("config.json");
    durable::write_atomic(&config_path, &json, 0o644).map_err(io_err(&config_path))?;
    let mut device_public_key = [0u8; 32];
    device_public_key.copy_from_slice(key.public_key().as_ref());
    Ok(Initialised {
        device_public_key,
        lock_id,
    })
}

/// Channel-delivered state, replaced atomically as one file so that applying an inbox message
/// and recording its sequence number are one step.
#[derive(Debug, Clone)]
struct ChannelState {
    last_seq: u64,
    bundle: Option<TrustBundle>,
    revocations: RevocationList,
    staged_tokens: Vec<Vec<u8>>,
    standing: BTreeMap<u8, StandingSchedule>,
}

#[derive(Serialize, Deserialize)]
struct ChannelStateWire {
    last_seq: u64,
    bundle: Option<serde_bytes::ByteBuf>,
    #[serde(with = "serde_bytes")]
    revocations: Vec<u8>,
    staged_tokens: Vec<serde_bytes::ByteBuf>,
    #[serde(default)]
    standing: Vec<(u8, StandingSchedule)>,
}

impl ChannelState {
    fn load(dir: &StateDir, root: &RootPublicKey) -> Result<Self, StateError> {
        let path = dir.file("channel.cbor");
        let bytes = durable::read_optional(&path)
            .map_err(io_err(&path))?
            .ok_or_else(|| corrupt(&path, "missing"))?;
        let wire: ChannelStateWire =
            crate::protocol::decode(&bytes).map_err(|_| corrupt(&path, "not channel state"))?;
        let bundle = match wire.bundle {
            Some(b) => Some(
                TrustBundle::verify(&b, root)
                    .map_err(|e| corrupt(&path, format!("stored trust bundle: {e}")))?,
            ),
            None => None,
        };
        let revocations = RevocationList::from_cbor(&wire.revocations)
            .map_err(|e| corrupt(&path, format!("revocation list: {e}")))?;
        Ok(Self {
            last_seq: wire.last_seq,
            bundle,
            revocations,
            staged_tokens: wire
                .staged_tokens
                .into_iter()
                .map(|b| b.into_vec())
                .collect(),
            standing: wire.standing.into_iter().collect(),
        })
    }

    fn persist(&self, dir: &StateDir) -> Result<(), StateError> {
        let path = dir.file("channel.cbor");
        let wire = ChannelStateWire {
            last_seq: self.last_seq,
            bundle: self
                .bundle
                .as_ref()
                .map(|b| serde_bytes::ByteBuf::from(b.as_bytes().to_vec())),
            revocations: self.revocations.to_cbor(),
            staged_tokens: self
                .staged_tokens
                .iter()
                .map(|t| serde_bytes::ByteBuf::from(t.clone()))
                .collect(),
            standing: self.standing.iter().map(|(k, v)| (*k, *v)).collect(),
        };
        let bytes = crate::protocol::encode(&wire)
            .map_err(|_| corrupt(&path, "could not encode channel state"))?;
        durable::write_atomic(&path, &bytes, 0o600).map_err(io_err(&path))
    }
}

/// Uses recorded for one token id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayEntry {
    /// Times the door opened for it.
    pub uses: u32,
    /// The token's `exp`.
    pub expires_at: u64,
}

#[derive(Serialize, Deserialize)]
struct ReplaySnapshot {
    /// Receipts with seq ≤ this are folded into `entries`.
    covers_seq: u64,
    entries: Vec<(Bytes<16>, ReplayEntry)>,
}

/// What happened to an inbox message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Applied and recorded durably.
    Applied,
    /// Already applied earlier (seq not above the last applied); nothing changed.
    Duplicate,
    /// Recorded as handled but refused (e.g. a bundle that is not newer); the reason is for the log.
    Refused(String),
}

/// A snapshot of the agent's state for `status` and the channel's `Status` message.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Lock id.
    pub lock_id: String,
    /// Device public key, hex.
    pub device_public_key: String,
    /// Trust bundle version (0 for none).
    pub bundle_version: u64,
    /// Monotonic time floor (from trusted time only).
    pub time_floor: u64,
    /// Last applied inbox sequence number.
    pub inbox_seq: u64,
    /// Receipts in the chain head.
    pub receipt_seq: u64,
    /// Receipts acknowledged by the server.
    pub uploaded_through: u64,
    /// Receipts waiting for upload.
    pub pending_uploads: u64,
    /// Revocation list entries.
    pub revocations: usize,
    /// Replay records.
    pub replay_records: usize,
    /// Pre-staged tokens.
    pub staged_tokens: usize,
    /// Server address, if any.
    pub server: Option<String>,
    /// Why the agent has stopped deciding, if it has (every tap is then refused).
    pub halted: Option<String>,
    /// Malformed tap frames (as last written, for `peek_status`).
    pub malformed_frames: MalformedTally,
    /// Whether the lock has a keypad code secret.
    pub keypad_secret: bool,
    /// Standing-code slots configured.
    pub keypad_standing_slots: usize,
    /// Consecutive wrong keypad entries (0 in `peek_status`).
    pub keypad_failures: u32,
    /// Entries refused while the keypad was locked (as last written).
    pub keypad_locked_entries: MalformedTally,
}

/// The open state directory, held exclusively by one process.
pub struct Store {
    dir: StateDir,
    _lock: File,
    config: AgentConfig,
    lock_id: LockId,
    root: RootPublicKey,
    device_key: Ed25519KeyPair,
    device_public_key: [u8; 32],
    receipts: AppendLog,
    /// Seq of the first record in `receipts.log` minus one, and its `prev`.
    log_base: ChainHead,
    head: ChainHead,
    replay: BTreeMap<TokenId, ReplayEntry>,
    replay_covers: u64,
    floor: u64,
    channel: ChannelState,
    uploaded_through: u64,
    /// Why deciding stopped at open (a damaged receipt log that could not be repaired losslessly).
    halted: Option<String>,
    malformed: MalformedTally,
    /// Lock clock when the tally was last written in this process, if it was.
    malformed_written_at: Option<u64>,
    malformed_dirty: bool,
    /// Durable writes (appends and atomic replacements) made through this store.
    durable_writes: u64,
    keypad_secret: Option<CodeSecret>,
    keypad_failures: Failures,
    keypad_locked: MalformedTally,
    keypad_locked_written_at: Option<u64>,
    keypad_locked_dirty: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("lock_id", &self.lock_id)
            .field("head", &self.head.seq)
            .finish_non_exhaustive()
    }
}

/// Written (best effort: the disk may be full) when the agent stops deciding, so that `status`
/// can tell why while `run` holds the state; removed at the next healthy open.
const HALTED_FILE: &str = "halted";

fn record_halt(path: &Path, why: &str) {
    if let Err(e) = durable::write_atomic(path, why.as_bytes(), 0o600) {
        tracing::warn!(error = %e, "could not record why the agent stopped deciding");
    }
}

fn clear_halt(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => durable::sync_dir(&parent_dir_of(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn parent_dir_of(path: &Path) -> PathBuf {
    path.parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn read_u64_file(path: &Path) -> Result<u64, StateError> {
    match durable::read_optional(path).map_err(io_err(path))? {
        None => Ok(0),
        Some(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| corrupt(path, "not a number")),
    }
}

fn load_config(dir: &StateDir) -> Result<(AgentConfig, LockId, RootPublicKey), StateError> {
    let path = dir.file("config.json");
    let bytes = durable::read_optional(&path)
        .map_err(io_err(&path))?
        .ok_or_else(|| {
            StateError::Invalid(format!(
                "{} is not initialised (run `firstkey-agent init`)",
                dir.root().display()
            ))
        })?;
    let config: AgentConfig =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, e.to_string()))?;
    let lock_id = LockId::parse(&config.lock_id).ok_or_else(|| corrupt(&path, "bad lock id"))?;
    let root = hex::decode(&config.root_public_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .map(RootPublicKey)
        .ok_or_else(|| corrupt(&path, "bad root public key"))?;
    Ok((config, lock_id, root))
}

fn load_device_key(dir: &StateDir) -> Result<Ed25519KeyPair, StateError> {
    let path = dir.file("device.pk8");
    let pk8 = durable::read_optional(&path)
        .map_err(io_err(&path))?
        .ok_or_else(|| corrupt(&path, "missing"))?;
    Ed25519KeyPair::from_pkcs8(&pk8).map_err(|_| corrupt(&path, "not an Ed25519 PKCS#8 key"))
}

/// The records of `receipts.log` checked as one chain segment (sequence numbers, hash links, lock
/// id). Signatures are not re-checked: the log's checksums guard our own writes, and re-verifying
/// thousands of signatures at every start would slow recovery; [`receipt::verify_chain`] does the
/// full check for auditors and tests.
struct CheckedLog {
    /// Seq of the first record minus one, and its `prev`.
    base: ChainHead,
    /// Head of the longest well-linked prefix.
    head: ChainHead,
    /// Every record that decodes, linked or not (replay records are folded from all of them).
    decoded: Vec<VerifiedReceipt>,
    /// Where the chain breaks, if it does.
    broken: Option<String>,
    /// The highest time floor any record carries (0 if none does).
    floor: u64,
}

fn check_log(records: &[Vec<u8>], lock_id: &str) -> CheckedLog {
    let mut decoded = Vec::with_capacity(records.len());
    let mut broken = None;
    let mut floor = 0u64;
    for (i, r) in records.iter().enumerate() {
        match receipt::decode_log_record(r).and_then(|(r, f)| Ok((receipt::decode_own(&r)?, f))) {
            Ok((v, f)) => {
                floor = floor.max(f.unwrap_or(0));
                decoded.push(v);
            }
            Err(e) => {
                broken.get_or_insert_with(|| format!("record {i}: {e}"));
            }
        }
    }
    let base = match decoded.first() {
        Some(first) => ChainHead {
            seq: first.body.seq.saturating_sub(1),
            hash: first.body.prev.0,
        },
        None => ChainHead::GENESIS,
    };
    let mut head = base;
    let mut linked = broken.is_none();
    for r in &decoded {
        if !linked {
            break;
        }
        if r.body.seq != head.seq.saturating_add(1) || r.body.prev.0 != head.hash {
            broken = Some(format!("receipt chain broken at seq {}", r.body.seq));
            linked = false;
        } else if r.body.lock_id != lock_id {
            broken = Some(format!("receipt seq {} is for another lock", r.body.seq));
            linked = false;
        } else {
            head = ChainHead {
                seq: r.body.seq,
                hash: r.hash,
            };
        }
    }
    CheckedLog {
        base,
        head,
        decoded,
        broken,
        floor,
    }
}

impl Store {
    /// Open the state directory, taking its exclusive lock, recovering any torn receipt, and
    /// rebuilding replay state.
    ///
    /// A damaged receipt log never stops the agent from starting and never loses a readable
    /// record: if the readable receipts still form one whole chain (stray bytes between records),
    /// the log is rewritten without the stray bytes; otherwise the store opens *halted*: every
    /// readable receipt still counts for replay, and every tap is refused ([`StateError::Halted`]).
    pub fn open(dir: &StateDir) -> Result<Self, StateError> {
        Self::open_with(dir, None)
    }

    /// [`Store::open`] with the receipt log's file wrapped by `wrapper` (fault injection).
    pub fn open_with(
        dir: &StateDir,
        wrapper: Option<durable::LogFileWrapper>,
    ) -> Result<Self, StateError> {
        // First, so that a directory that is not (yet) a state directory gets no `lock` file.
        let (config, lock_id, root) = load_config(dir)?;
        let lock_path = dir.file("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StateError::Busy(dir.root().to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let device_key = load_device_key(dir)?;
        let mut device_public_key = [0u8; 32];
        device_public_key.copy_from_slice(device_key.public_key().as_ref());

        let log_path = dir.file("receipts.log");
        let (mut receipts, recovery) =
            AppendLog::open_with(&log_path, wrapper).map_err(io_err(&log_path))?;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                bytes = recovery.truncated_bytes,
                "receipt log had a torn tail from a crash; truncated"
            );
        }
        let mut checked = check_log(receipts.records(), lock_id.as_str());
        let mut halted = None;
        if let Some(why) = receipts.halted().map(str::to_owned) {
            match &checked.broken {
                None => {
                    // Stray bytes between whole records: every receipt is readable and the chain
                    // is complete, so dropping the stray bytes loses nothing.
                    let kept = receipts.records().to_vec();
                    receipts.rewrite(kept).map_err(io_err(&log_path))?;
                    tracing::warn!(
                        damage = %why,
                        "receipt log repaired: unreadable bytes removed, every receipt kept"
                    );
                    checked = check_log(receipts.records(), lock_id.as_str());
                }
                Some(broken) => halted = Some(format!("{why}; {broken}")),
            }
        } else if let Some(broken) = &checked.broken {
            halted = Some(format!("{}: {broken}", log_path.display()));
        }
        let CheckedLog {
            base: log_base,
            head,
            decoded: verified,
            floor: logged_floor,
            ..
        } = checked;

        let replay_path = dir.file("replay.cbor");
        let (mut replay, replay_covers) =
            match durable::read_optional(&replay_path).map_err(io_err(&replay_path))? {
                None => (BTreeMap::new(), 0),
                Some(bytes) => {
                    let snap: ReplaySnapshot = crate::protocol::decode(&bytes)
                        .map_err(|_| corrupt(&replay_path, "not a replay snapshot"))?;
                    let map = snap
                        .entries
                        .into_iter()
                        .map(|(id, e)| (TokenId(id.0), e))
                        .collect::<BTreeMap<_, _>>();
                    (map, snap.covers_seq)
                }
            };
        if replay_covers > head.seq {
            return Err(corrupt(
                &replay_path,
                "covers receipts the log does not have",
            ));
        }
        if log_base.seq > replay_covers {
            return Err(corrupt(
                &log_path,
                "receipts were compacted before their replay records were saved",
            ));
        }
        // Receipt times are the lock's own clock, which is not trusted time: they do not move
        // the floor. The floor a record carries is trusted time (a verified token's, taken in the
        // same write as the decision); the file holds the server's time from the channel.
        let floor = read_u64_file(&dir.file("floor"))?.max(logged_floor);
        for r in &verified {
            if r.body.seq > replay_covers {
                fold_use(&mut replay, &r.body);
            }
        }
        let keypad_path = dir.file(KEYPAD_SNAPSHOT_FILE);
        let (mut keypad_failures, keypad_covers) =
            match durable::read_optional(&keypad_path).map_err(io_err(&keypad_path))? {
                None => (Failures::default(), 0),
                Some(bytes) => {
                    let snap: KeypadSnapshot = crate::protocol::decode(&bytes)
                        .map_err(|_| corrupt(&keypad_path, "not a keypad snapshot"))?;
                    (snap.failures, snap.covers_seq)
                }
            };
        for r in &verified {
            if r.body.seq > keypad_covers {
                keypad_failures.fold(&r.body);
            }
        }
        let keypad_secret = read_keypad_secret(dir)?;
        let keypad_locked = read_tally(dir, KEYPAD_LOCKED_FILE)?;
        let channel = ChannelState::load(dir, &root)?;
        let uploaded_through = read_u64_file(&dir.file("uploaded"))?.min(head.seq);
        let malformed = read_malformed(dir)?;
        let halt_path = dir.file(HALTED_FILE);
        match &halted {
            Some(why) => {
                tracing::error!(reason = %why, "receipt log damaged; refusing every tap");
                record_halt(&halt_path, why);
            }
            None => clear_halt(&halt_path).map_err(io_err(&halt_path))?,
        }
        Ok(Self {
            dir: dir.clone(),
            _lock: lock,
            config,
            lock_id,
            root,
            device_key,
            device_public_key,
            receipts,
            log_base,
            head,
            replay,
            replay_covers,
            floor,
            channel,
            uploaded_through,
            halted,
            malformed,
            malformed_written_at: None,
            malformed_dirty: false,
            durable_writes: 0,
            keypad_secret,
            keypad_failures,
            keypad_locked,
            keypad_locked_written_at: None,
            keypad_locked_dirty: false,
        })
    }

    /// Count one malformed or oversize tap frame. Written at most once per
    /// [`MALFORMED_WRITE_INTERVAL_SECS`]; [`Store::flush_malformed`] writes the rest.
    pub fn note_malformed(&mut self, now: u64) -> Result<(), StateError> {
        if self.malformed.count == 0 {
            self.malformed.first = now;
        }
        self.malformed.count = self.malformed.count.saturating_add(1);
        self.malformed.last = now;
        self.malformed_dirty = true;
        let due = self
            .malformed_written_at
            .is_none_or(|t| now >= t.saturating_add(MALFORMED_WRITE_INTERVAL_SECS));
        if due {
            self.write_malformed(now)?;
        }
        Ok(())
    }

    /// Write the malformed-frame tally if it changed since it was last written (the daemon calls
    /// this once a minute and at shutdown).
    pub fn flush_malformed(&mut self, now: u64) -> Result<(), StateError> {
        if self.malformed_dirty {
            self.write_malformed(now)?;
        }
        Ok(())
    }

    fn write_malformed(&mut self, now: u64) -> Result<(), StateError> {
        let path = self.dir.file(MALFORMED_FILE);
        let json = serde_json::to_vec(&self.malformed)
            .map_err(|e| corrupt(&path, format!("could not encode: {e}")))?;
        self.malformed_written_at = Some(now);
        self.durable_writes = self.durable_writes.saturating_add(1);
        durable::write_atomic(&path, &json, 0o600).map_err(io_err(&path))?;
        self.malformed_dirty = false;
        Ok(())
    }

    /// Count one keypad entry refused while the keypad is locked: no receipt, and the tally is
    /// written at most once per [`MALFORMED_WRITE_INTERVAL_SECS`] however many entries arrive.
    pub fn note_keypad_locked(&mut self, now: u64) -> Result<(), StateError> {
        if self.keypad_locked.count == 0 {
            self.keypad_locked.first = now;
        }
        self.keypad_locked.count = self.keypad_locked.count.saturating_add(1);
        self.keypad_locked.last = now;
        self.keypad_locked_dirty = true;
        let due = self
            .keypad_locked_written_at
            .is_none_or(|t| now >= t.saturating_add(MALFORMED_WRITE_INTERVAL_SECS));
        if due {
            self.write_keypad_locked(now)?;
        }
        Ok(())
    }

    /// Write the locked-keypad tally if it changed since it was last written.
    pub fn flush_keypad_locked(&mut self, now: u64) -> Result<(), StateError> {
        if self.keypad_locked_dirty {
            self.write_keypad_locked(now)?;
        }
        Ok(())
    }

    fn write_keypad_locked(&mut self, now: u64) -> Result<(), StateError> {
        let path = self.dir.file(KEYPAD_LOCKED_FILE);
        let json = serde_json::to_vec(&self.keypad_locked)
            .map_err(|e| corrupt(&path, format!("could not encode: {e}")))?;
        self.keypad_locked_written_at = Some(now);
        self.durable_writes = self.durable_writes.saturating_add(1);
        durable::write_atomic(&path, &json, 0o600).map_err(io_err(&path))?;
        self.keypad_locked_dirty = false;
        Ok(())
    }

    /// Consecutive wrong keypad entries and when the last was.
    pub fn keypad_failures(&self) -> Failures {
        self.keypad_failures
    }

    /// What the keypad decision consults.
    pub fn keypad_view(&self) -> KeypadView<'_> {
        KeypadView {
            lock_id: self.lock_id.as_str(),
            secret: self.keypad_secret.as_ref(),
            standing: &self.channel.standing,
            floor: self.floor,
            skew: self.config.skew_secs,
        }
    }

    /// Times a code (by its id) opened the door, as far as the replay records reach.
    pub fn code_uses(&self, id: &[u8; 16]) -> u32 {
        self.replay.get(&TokenId(*id)).map_or(0, |e| e.uses)
    }

    /// Durable writes (fsynced appends and atomic replacements) made through this store since it
    /// was opened.
    pub fn durable_writes(&self) -> u64 {
        self.durable_writes
    }

    /// Why the agent has stopped deciding, if it has.
    pub fn halted(&self) -> Option<String> {
        self.halted
            .clone()
            .or_else(|| self.receipts.halted().map(str::to_owned))
    }

    /// The settings from `init`.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The state directory.
    pub fn dir(&self) -> &StateDir {
        &self.dir
    }

    /// This lock's id.
    pub fn lock_id(&self) -> &LockId {
        &self.lock_id
    }

    /// The device key (for signing handshakes and tap acks).
    pub fn device_key(&self) -> &Ed25519KeyPair {
        &self.device_key
    }

    /// The device public key.
    pub fn device_public_key(&self) -> &[u8; 32] {
        &self.device_public_key
    }

    /// The trust bundle in force, if any.
    pub fn trust_bundle(&self) -> Option<&TrustBundle> {
        self.channel.bundle.as_ref()
    }

    /// The receipt chain head.
    pub fn head(&self) -> ChainHead {
        self.head
    }

    /// The monotonic time floor.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Last applied inbox sequence number.
    pub fn inbox_seq(&self) -> u64 {
        self.channel.last_seq
    }

    /// Highest receipt seq the server has acknowledged.
    pub fn uploaded_through(&self) -> u64 {
        self.uploaded_through
    }

    /// Tokens pre-staged by the channel (informational).
    pub fn staged_tokens(&self) -> &[Vec<u8>] {
        &self.channel.staged_tokens
    }

    /// Raise the time floor to `trusted` if it is above it: a time the lock knows has passed
    /// because something it trusts says so (a verified token's `iat`/`nbf`, the server's time over
    /// the authenticated channel), never its own clock. Taken in memory at once, then persisted;
    /// if persisting fails the error is returned and a later raise writes it again.
    pub fn advance_floor(&mut self, trusted: u64) -> Result<bool, StateError> {
        if trusted <= self.floor {
            return Ok(false);
        }
        self.floor = trusted;
        self.durable_writes = self.durable_writes.saturating_add(1);
        let path = self.dir.file("floor");
        durable::write_atomic(&path, trusted.to_string().as_bytes(), 0o600)
            .map_err(io_err(&path))?;
        Ok(true)
    }

    /// Sign and durably append the next receipt; an allow receipt also records the token's use.
    /// When this returns `Ok`, the decision survives any crash.
    /// When it returns an error, no receipt was added and the log is as it was, or the store is
    /// now halted ([`Store::halted`]) and refuses every later receipt.
    pub fn append_receipt(&mut self, body: ReceiptBody) -> Result<VerifiedReceipt, StateError> {
        self.append_receipt_raising_floor(body, None)
    }

    /// [`Store::append_receipt`], raising the time floor to `trusted` (if above it) in the same
    /// durable write: the log record carries the floor in force after the decision, so a decision
    /// costs one fsync and a crash keeps the receipt and the raised floor together or neither.
    /// The floor moves (in memory too) only once the record is durable.
    pub fn append_receipt_raising_floor(
        &mut self,
        body: ReceiptBody,
        trusted: Option<u64>,
    ) -> Result<VerifiedReceipt, StateError> {
        if let Some(why) = self.halted() {
            return Err(StateError::Halted(why));
        }
        let path = self.dir.file("receipts.log");
        let r = receipt::sign_next(&self.device_key, self.head, body)
            .map_err(|_| corrupt(&path, "could not encode receipt"))?;
        let floor = self.floor.max(trusted.unwrap_or(0));
        let record = receipt::encode_log_record(&r.encoded, floor)
            .map_err(|_| corrupt(&path, "could not encode receipt"))?;
        self.durable_writes = self.durable_writes.saturating_add(1);
        if let Err(e) = self.receipts.append(&record) {
            if let Some(why) = self.receipts.halted() {
                tracing::error!(reason = %why, "receipt log halted; refusing every tap");
                record_halt(&self.dir.file(HALTED_FILE), why);
            }
            return Err(io_err(&path)(e));
        }
        self.head = ChainHead {
            seq: r.body.seq,
            hash: r.hash,
        };
        self.floor = floor;
        fold_use(&mut self.replay, &r.body);
        self.keypad_failures.fold(&r.body);
        Ok(r)
    }

    /// Receipts not yet acknowledged by the server, oldest first, at most `limit`, with seq > `after`.
    /// Only the well-linked part of the log is offered.
    pub fn pending_receipts(&self, after: u64, limit: usize) -> Vec<(u64, Vec<u8>)> {
        let limit = usize::try_from(
            self.head
                .seq
                .saturating_sub(after.max(self.uploaded_through)),
        )
        .unwrap_or(usize::MAX)
        .min(limit);
        let from = after.max(self.uploaded_through);
        let skip = usize::try_from(from.saturating_sub(self.log_base.seq)).unwrap_or(usize::MAX);
        self.receipts
            .records()
            .iter()
            .skip(skip)
            .take(limit)
            .zip(from.saturating_add(1)..)
            .map(|(r, seq)| (seq, receipt::log_record_receipt(r)))
            .collect()
    }

    /// Record that the server holds every receipt up to `through`.
    pub fn mark_uploaded(&mut self, through: u64) -> Result<(), StateError> {
        let through = through.min(self.head.seq);
        if through <= self.uploaded_through {
            return Ok(());
        }
        let path = self.dir.file("uploaded");
        self.durable_writes = self.durable_writes.saturating_add(1);
        durable::write_atomic(&path, through.to_string().as_bytes(), 0o600)
            .map_err(io_err(&path))?;
        self.uploaded_through = through;
        self.maybe_compact()?;
        Ok(())
    }

    /// Apply one inbox message durably. Messages at or below the last applied seq are duplicates.
    pub fn apply_inbox(&mut self, seq: u64, message: &InboxMessage) -> Result<Applied, StateError> {
        if seq <= self.channel.last_seq {
            return Ok(Applied::Duplicate);
        }
        let mut next = self.channel.clone();
        next.last_seq = seq;
        let outcome = match message {
            InboxMessage::Token { token } => {
                if token.len() > firstkey_token::MAX_TOKEN_LEN {
                    Applied::Refused("token too large".into())
                } else {
                    let hash = firstkey_token::token_hash(token);
                    if !next
                        .staged_tokens
                        .iter()
                        .any(|t| firstkey_token::token_hash(t) == hash)
                    {
                        next.staged_tokens.push(token.clone());
                    }
                    while next.staged_tokens.len() > MAX_STAGED_TOKENS {
                        next.staged_tokens.remove(0);
                    }
                    Applied::Applied
                }
            }
            InboxMessage::Revocation {
                token_hash,
                expires_at,
            } => {
                next.revocations
                    .insert(TokenHash(token_hash.0), *expires_at);
                let hash = TokenHash(token_hash.0);
                next.staged_tokens
                    .retain(|t| firstkey_token::token_hash(t) != hash);
                Applied::Applied
            }
            InboxMessage::TrustBundle { bundle } => {
                let result = match &next.bundle {
                    Some(current) => current.accept_update(bundle, &self.root),
                    None => TrustBundle::verify(bundle, &self.root),
                };
                match result {
                    Ok(b) => {
                        next.bundle = Some(b);
                        Applied::Applied
                    }
                    Err(e) => Applied::Refused(format!("trust bundle: {e}")),
                }
            }
            // Decided (receipt first) by `Door::remote_open` before it is applied here; applying
            // only records that the entry is done, so a redelivery is a duplicate.
            InboxMessage::RemoteOpen { .. } => Applied::Applied,
            InboxMessage::KeypadSecret { secret } => {
                // Its own 0600 file, like the device key; written before the inbox seq, so a
                // crash in between only makes the server send it again.
                let path = self.dir.file(KEYPAD_SECRET_FILE);
                self.durable_writes = self.durable_writes.saturating_add(1);
                durable::write_atomic(&path, &secret.0, 0o600).map_err(io_err(&path))?;
                self.keypad_secret = Some(secret.clone());
                Applied::Applied
            }
            InboxMessage::KeypadStanding { slot, schedule } => match schedule {
                _ if *slot >= crate::keypad::MAX_STANDING_SLOTS => {
                    Applied::Refused("standing slot out of range".into())
                }
                None => {
                    next.standing.remove(slot);
                    Applied::Applied
                }
                Some(s) if s.is_valid() => {
                    next.standing.insert(*slot, *s);
                    Applied::Applied
                }
                Some(_) => Applied::Refused("standing schedule out of range".into()),
            },
        };
        next.revocations.prune(self.floor, self.config.skew_secs);
        self.durable_writes = self.durable_writes.saturating_add(1);
        next.persist(&self.dir)?;
        self.channel = next;
        Ok(outcome)
    }

    /// A status snapshot.
    pub fn status(&self) -> Status {
        Status {
            lock_id: self.lock_id.to_string(),
            device_public_key: hex::encode(self.device_public_key),
            bundle_version: self.channel.bundle.as_ref().map_or(0, TrustBundle::version),
            time_floor: self.floor,
            inbox_seq: self.channel.last_seq,
            receipt_seq: self.head.seq,
            uploaded_through: self.uploaded_through,
            pending_uploads: self.head.seq.saturating_sub(self.uploaded_through),
            revocations: self.channel.revocations.len(),
            replay_records: self.replay.len(),
            staged_tokens: self.channel.staged_tokens.len(),
            server: self.config.server.as_ref().map(|s| s.address.clone()),
            halted: self.halted(),
            malformed_frames: self.malformed,
            keypad_secret: self.keypad_secret.is_some(),
            keypad_standing_slots: self.channel.standing.len(),
            keypad_failures: self.keypad_failures.count,
            keypad_locked_entries: self.keypad_locked,
        }
    }

    /// Drop uploaded receipts once there are many, after saving the replay records they hold.
    fn maybe_compact(&mut self) -> Result<(), StateError> {
        if self.halted().is_some() {
            return Ok(());
        }
        let uploaded_in_log = self.uploaded_through.saturating_sub(self.log_base.seq);
        if usize::try_from(uploaded_in_log).unwrap_or(usize::MAX) <= COMPACT_AFTER {
            return Ok(());
        }
        self.compact()
    }

    /// Save pruned replay records covering every receipt, then rewrite `receipts.log` keeping only
    /// receipts the server has not acknowledged (and always the last one, which anchors the chain).
    pub fn compact(&mut self) -> Result<(), StateError> {
        let skew = self.config.skew_secs;
        let floor = self.floor;
        self.replay
            .retain(|_, e| e.expires_at.saturating_add(skew) >= floor);
        let snap = ReplaySnapshot {
            covers_seq: self.head.seq,
            entries: self
                .replay
                .iter()
                .map(|(id, e)| (Bytes(id.0), *e))
                .collect(),
        };
        let replay_path = self.dir.file("replay.cbor");
        let bytes = crate::protocol::encode(&snap)
            .map_err(|_| corrupt(&replay_path, "could not encode replay snapshot"))?;
        durable::write_atomic(&replay_path, &bytes, 0o600).map_err(io_err(&replay_path))?;
        self.replay_covers = self.head.seq;
        let keypad_path = self.dir.file(KEYPAD_SNAPSHOT_FILE);
        let snap = KeypadSnapshot {
            covers_seq: self.head.seq,
            failures: self.keypad_failures,
        };
        let bytes = crate::protocol::encode(&snap)
            .map_err(|_| corrupt(&keypad_path, "could not encode keypad snapshot"))?;
        durable::write_atomic(&keypad_path, &bytes, 0o600).map_err(io_err(&keypad_path))?;

        let keep_from = self.uploaded_through.min(self.head.seq.saturating_sub(1));
        let skip = usize::try_from(keep_from.saturating_sub(self.log_base.seq)).unwrap_or(0);
        let kept: Vec<Vec<u8>> = self.receipts.records().iter().skip(skip).cloned().collect();
        let log_path = self.dir.file("receipts.log");
        let checked = check_log(&kept, self.lock_id.as_str());
        if let Some(broken) = checked.broken {
            return Err(corrupt(&log_path, broken));
        }
        self.receipts.rewrite(kept).map_err(io_err(&log_path))?;
        self.log_base = checked.base;
        Ok(())
    }

    /// Every receipt currently in `receipts.log`, without the log framing (for tests and
    /// diagnostics).
    pub fn receipts(&self) -> Vec<Vec<u8>> {
        self.receipts
            .records()
            .iter()
            .map(|r| receipt::log_record_receipt(r))
            .collect()
    }

    /// The verification policy from the config.
    pub fn verify_options(&self) -> firstkey_token::VerifyOptions {
        firstkey_token::VerifyOptions {
            skew_secs: self.config.skew_secs,
            ..firstkey_token::VerifyOptions::default()
        }
    }
}

fn fold_use(replay: &mut BTreeMap<TokenId, ReplayEntry>, body: &ReceiptBody) {
    if body.outcome != crate::protocol::tap::Outcome::Allow {
        return;
    }
    let Some(id) = body.token_id else { return };
    let e = replay.entry(TokenId(id.0)).or_insert(ReplayEntry {
        uses: 0,
        expires_at: 0,
    });
    e.uses = e.uses.saturating_add(1);
    e.expires_at = e.expires_at.max(body.expires_at.unwrap_or(u64::MAX));
}

impl LockView for Store {
    fn lock_id(&self) -> &LockId {
        &self.lock_id
    }

    fn time_floor(&self) -> u64 {
        self.floor
    }

    fn is_revoked(&self, token_hash: &TokenHash) -> bool {
        self.channel.revocations.contains(token_hash)
    }

    fn uses(&self, token_id: &TokenId) -> u32 {
        self.replay.get(token_id).map_or(0, |e| e.uses)
    }
}

impl crate::keypad::CodeLedger for Store {
    fn uses(&self, id: &[u8; 16]) -> u32 {
        self.code_uses(id)
    }

    fn is_revoked(&self, id: &[u8; 16]) -> bool {
        self.channel
            .revocations
            .contains(&TokenHash(crate::keypad::revocation_key(id)))
    }
}

/// Read a status snapshot without taking the lock (works while `run` holds it).
pub fn peek_status(dir: &StateDir) -> Result<Status, StateError> {
    let (config, lock_id, root) = load_config(dir)?;
    let key = load_device_key(dir)?;
    let log_path = dir.file("receipts.log");
    let bytes = durable::read_optional(&log_path)
        .map_err(io_err(&log_path))?
        .unwrap_or_default();
    let found = durable::inspect(&bytes);
    let records = found.records;
    let halted = match durable::read_optional(&dir.file(HALTED_FILE)) {
        Ok(Some(why)) => Some(String::from_utf8_lossy(&why).into_owned()),
        _ if !found.damage.is_empty() => Some(format!(
            "{}: unreadable bytes between or after its records",
            log_path.display()
        )),
        _ => None,
    };
    let last = records
        .last()
        .and_then(|r| receipt::decode_log_record(r).ok());
    let head_seq = last
        .as_ref()
        .and_then(|(r, _)| receipt::verify_one(r, key.public_key().as_ref()).ok())
        .map_or(0, |r| r.body.seq);
    // Floors in the log only grow, so the last record carries the highest.
    let logged_floor = last.and_then(|(_, f)| f).unwrap_or(0);
    let channel = ChannelState::load(dir, &root)?;
    let uploaded = read_u64_file(&dir.file("uploaded"))?.min(head_seq);
    Ok(Status {
        lock_id: lock_id.to_string(),
        device_public_key: hex::encode(key.public_key().as_ref()),
        bundle_version: channel.bundle.as_ref().map_or(0, TrustBundle::version),
        time_floor: read_u64_file(&dir.file("floor"))?.max(logged_floor),
        inbox_seq: channel.last_seq,
        receipt_seq: head_seq,
        uploaded_through: uploaded,
        pending_uploads: head_seq.saturating_sub(uploaded),
        revocations: channel.revocations.len(),
        replay_records: 0,
        staged_tokens: channel.staged_tokens.len(),
        server: config.server.map(|s| s.address),
        halted,
        malformed_frames: read_malformed(dir)?,
        keypad_secret: read_keypad_secret(dir)?.is_some(),
        keypad_standing_slots: channel.standing.len(),
        keypad_failures: 0,
        keypad_locked_entries: read_tally(dir, KEYPAD_LOCKED_FILE)?,
    })
}

fn read_tally(dir: &StateDir, name: &str) -> Result<MalformedTally, StateError> {
    let path = dir.file(name);
    match durable::read_optional(&path).map_err(io_err(&path))? {
        None => Ok(MalformedTally::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, e.to_string())),
    }
}

fn read_keypad_secret(dir: &StateDir) -> Result<Option<CodeSecret>, StateError> {
    let path = dir.file(KEYPAD_SECRET_FILE);
    match durable::read_optional(&path).map_err(io_err(&path))? {
        None => Ok(None),
        Some(bytes) => <[u8; 32]>::try_from(bytes.as_slice())
            .map(|b| Some(CodeSecret(b)))
            .map_err(|_| corrupt(&path, "not a 32-byte code secret")),
    }
}

fn read_malformed(dir: &StateDir) -> Result<MalformedTally, StateError> {
    let path = dir.file(MALFORMED_FILE);
    match durable::read_optional(&path).map_err(io_err(&path))? {
        None => Ok(MalformedTally::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, e.to_string())),
    }
}

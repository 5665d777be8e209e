//! The audit log: one immutable entry per access and decision, hash-chained per municipality.
//!
//! Each entry's canonical bytes (a fixed-order JSON object of its fields) are hashed as an RFC 9162
//! Merkle leaf, `SHA-256(0x00 ‖ bytes)`, and linked into a chain, `chain = SHA-256(prev_chain ‖ leaf)`,
//! starting from 32 zero bytes. The chain makes any rewrite of history detectable by [`verify_chain`];
//! the leaves are ready for the Merkle tree, checkpoints and proofs that auditors get later. The table
//! itself refuses UPDATE and DELETE, except the one-time sealing of a pending entry (see `sql/`).
//!
//! Two steps, as a Certificate Transparency log queues and then integrates:
//! - [`record`]: writers insert the entry *pending* inside their own transaction, so an action and
//!   its audit entry commit together or not at all. No lock: writers never wait for each other.
//! - [`seal`]: assigns positions and hashes to pending entries in insertion order, in batches, under
//!   a per-municipality lock. Every server runs a sealer ([`run_sealer`]); readers seal first.
//!
//! Never put a token, key, pairing code or responder note into an entry. What identifies a person
//! in clear (an address, a name) goes through [`record_personal`]: encrypted under an erasable
//! data key ([`personal`]), the leaf committing to the ciphertext, so erasure keeps every proof.
//! [`report`] answers auditors' questions for a period; [`subject`] is the data-subject export.

use chrono::{DateTime, SubsecRound, Utc};
use deadpool_postgres::GenericClient;
use ring::digest::{SHA256, digest};
use serde::Serialize;
use uuid::Uuid;

use crate::store::{StoreError, Tenant};

pub mod log;
pub mod merkle;
pub mod note;
pub mod personal;
pub mod report;
pub mod search;
pub mod subject;
pub mod tree;
pub mod verify;
pub mod witness;

/// How a decision came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
    /// Not a decision: a fact worth recording (sign-out, enrolment…).
    Info,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Info => "info",
        }
    }
}

/// An entry to append.
#[derive(Debug, Clone)]
pub struct Event {
    /// Who acted, when a signed-in user did.
    pub actor: Option<Uuid>,
    /// What happened, as `area.verb` (e.g. `auth.sign_in`, `plan.reveal_notes`).
    pub action: &'static str,
    /// The decision.
    pub outcome: Outcome,
    /// The kind and id of the thing acted on.
    pub subject: Option<(&'static str, Uuid)>,
    /// The property concerned, so homeowners can list every entry about their home.
    pub property: Option<Uuid>,
    /// The incident concerned.
    pub incident: Option<Uuid>,
    /// Hash of the policy set that decided, for policy decisions.
    pub policy_set_hash: Option<[u8; 32]>,
    /// Non-personal details (reasons, versions, counts). Keep values to strings, integers and bools.
    pub details: serde_json::Value,
}

impl Event {
    /// An event with only the required fields set.
    pub fn new(action: &'static str, outcome: Outcome) -> Self {
        Self {
            actor: None,
            action,
            outcome,
            subject: None,
            property: None,
            incident: None,
            policy_set_hash: None,
            details: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// Sets the actor.
    pub fn actor(mut self, actor: Uuid) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Sets the subject.
    pub fn subject(mut self, kind: &'static str, id: Uuid) -> Self {
        self.subject = Some((kind, id));
        self
    }

    /// Sets the property.
    pub fn property(mut self, id: Uuid) -> Self {
        self.property = Some(id);
        self
    }

    /// Sets the incident.
    pub fn incident(mut self, id: Uuid) -> Self {
        self.incident = Some(id);
        self
    }

    /// Sets the deciding policy set's hash.
    pub fn policy(mut self, hash: [u8; 32]) -> Self {
        self.policy_set_hash = Some(hash);
        self
    }

    /// Sets the details.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// The canonical form of an entry: field order is fixed, JSON object keys are sorted (serde_json's
/// default map is ordered), times are RFC 3339 with microseconds (PostgreSQL's precision).
#[derive(Serialize)]
struct Canonical<'a> {
    municipality: Uuid,
    seq: i64,
    recorded_at: String,
    actor: Option<Uuid>,
    action: &'a str,
    outcome: &'a str,
    subject_kind: Option<&'a str>,
    subject_id: Option<Uuid>,
    property: Option<Uuid>,
    incident: Option<Uuid>,
    policy_set_hash: Option<String>,
    details: serde_json::Value,
    /// Hex SHA-256 of the encrypted personal details (`personal::seal`), for entries that have
    /// them; absent otherwise, so entries without them hash as they always did.
    #[serde(skip_serializing_if = "Option::is_none")]
    personal: Option<String>,
    /// The data key the personal details are encrypted under.
    #[serde(skip_serializing_if = "Option::is_none")]
    data_key: Option<Uuid>,
}

/// The same JSON value with every object's keys in sorted order. Needed because serde_json's map
/// keeps insertion order when any crate in the build enables `preserve_order`, and PostgreSQL's
/// jsonb returns keys in its own order: hashing must not depend on either.
fn sorted(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                if let Some(v) = map.get(k) {
                    out.insert(k.clone(), sorted(v));
                }
            }
            serde_json::Value::Object(out)
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(sorted).collect())
        }
        other => other.clone(),
    }
}

/// The exact bytes an entry's leaf hash covers (the RFC 9162 leaf input).
fn canonical_bytes(canonical: &Canonical<'_>) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(canonical).map_err(|e| StoreError::Conflict(format!("audit entry: {e}")))
}

fn leaf_hash(canonical: &Canonical<'_>) -> Result<[u8; 32], StoreError> {
    Ok(merkle::leaf_hash(&canonical_bytes(canonical)?))
}

fn chain(prev: &[u8; 32], leaf: &[u8; 32]) -> [u8; 32] {
    let mut input = Vec::with_capacity(64);
    input.extend_from_slice(prev);
    input.extend_from_slice(leaf);
    to_array(digest(&SHA256, &input).as_ref())
}

fn to_array(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if bytes.len() == 32 {
        out.copy_from_slice(bytes);
    }
    out
}

/// Appends `event` to the tenant's log, inside the caller's transaction so the action and its entry
/// commit together or not at all. Returns the entry's row id; its position in the chain is assigned
/// by [`seal`].
///
/// Appending takes no lock: writers never wait for each other. The entry is *pending* until sealed;
/// sealing is ordered and serialised per municipality, and readers ([`entries`], [`verify_chain`])
/// seal before they read, so no reader ever sees a log that omits a committed entry.
pub async fn record(
    tx: &impl GenericClient,
    tenant: Tenant,
    event: &Event,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    insert(tx, tenant, event, None, now).await
}

/// Appends `event` with personal details (names, addresses, free text: anything that identifies a
/// person), encrypted under the data key of the event's property and month (see [`personal`]), so
/// erasing that key makes them unreadable while the entry's leaf, which commits to the ciphertext,
/// stays verifiable. The event must name a property.
pub async fn record_personal(
    tx: &impl GenericClient,
    tenant: Tenant,
    event: &Event,
    details: &serde_json::Value,
    kek: &crate::crypto::Kek,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let property = event
        .property
        .ok_or_else(|| StoreError::Conflict("personal audit details need a property".to_owned()))?;
    let sealed = personal::seal(tx, tenant, property, details, kek, now).await?;
    insert(tx, tenant, event, Some(sealed), now).await
}

async fn insert(
    tx: &impl GenericClient,
    tenant: Tenant,
    event: &Event,
    sealed: Option<personal::SealedDetails>,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let (private, key) = match sealed {
        Some(s) => (Some(s.ciphertext), Some(s.key)),
        None => (None, None),
    };
    let row = tx
        .query_one(
            "INSERT INTO audit_entries (municipality_id, recorded_at, actor_id, action, outcome, subject_kind,
                 subject_id, property_id, incident_id, policy_set_hash, public_details, private_details,
                 data_key_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             RETURNING id",
            &[
                &tenant.id(),
                &now.trunc_subsecs(6),
                &event.actor,
                &event.action,
                &event.outcome.as_str(),
                &event.subject.map(|(k, _)| k),
                &event.subject.map(|(_, id)| id),
                &event.property,
                &event.incident,
                &event.policy_set_hash.map(|h| h.to_vec()),
                &event.details,
                &private,
                &key,
            ],
        )
        .await
        .map_err(crate::store::conflict_or_query)?;
    Ok(row.get(0))
}

/// Most pending entries one sealing pass takes.
const SEAL_BATCH: i64 = 2000;

/// Seals the tenant's pending entries: assigns each the next position and its leaf and chain
/// hashes, in insertion order, under a per-municipality lock. Runs in the caller's transaction if
/// there is one, else in its own. Returns how many entries it sealed.
pub async fn seal(client: &impl GenericClient, tenant: Tenant) -> Result<u64, StoreError> {
    match client.batch_execute("SAVEPOINT firstkey_seal").await {
        Ok(()) => {
            let n = seal_batch(client, tenant).await?;
            client
                .batch_execute("RELEASE SAVEPOINT firstkey_seal")
                .await?;
            Ok(n)
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::NO_ACTIVE_SQL_TRANSACTION) => {
            client.batch_execute("BEGIN").await?;
            match seal_batch(client, tenant).await {
                Ok(n) => {
                    client.batch_execute("COMMIT").await?;
                    Ok(n)
                }
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        }
        Err(e) => Err(e.into()),
    }
}

async fn seal_batch(tx: &impl GenericClient, tenant: Tenant) -> Result<u64, StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(7001, hashtext($1::uuid::text))",
        &[&tenant.id()],
    )
    .await?;
    let last = tx
        .query_opt(
            "SELECT seq, chain_hash FROM audit_entries WHERE municipality_id = $1 AND seq IS NOT NULL
             ORDER BY seq DESC LIMIT 1",
            &[&tenant.id()],
        )
        .await?;
    let (mut seq, mut prev) = match last {
        Some(row) => {
            let seq: i64 = row.get(0);
            let prev: Vec<u8> = row.get(1);
            (seq.saturating_add(1), to_array(&prev))
        }
        None => (0, [0u8; 32]),
    };
    let pending = tx
        .query(
            &format!(
                "SELECT id, {ENTRY_COLUMNS} FROM audit_entries WHERE municipality_id = $1 AND seq IS NULL
                 ORDER BY id LIMIT $2 FOR UPDATE"
            ),
            &[&tenant.id(), &SEAL_BATCH],
        )
        .await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let first = u64::try_from(seq).unwrap_or(0);
    let (mut ids, mut seqs, mut leaves, mut chains) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in &pending {
        let id: i64 = row.get(0);
        let e = entry_fields(row, 1);
        let leaf = leaf_hash(&canonical_of(tenant, seq, &e))?;
        let next = chain(&prev, &leaf);
        ids.push(id);
        seqs.push(seq);
        leaves.push(leaf.to_vec());
        chains.push(next.to_vec());
        prev = next;
        seq = seq.saturating_add(1);
    }
    // The Merkle tree grows in the same transaction: a sealed leaf is never outside the tree.
    let mut frontier = tree::frontier(tx, tenant, first)
        .await
        .map_err(|e| match e {
            tree::TreeError::Store(e) => e,
            other => StoreError::Conflict(format!("audit tree: {other}")),
        })?;
    let leaf_hashes: Vec<merkle::Hash> = leaves.iter().map(|l| merkle::to_hash(l)).collect();
    tree::extend(tx, tenant, &mut frontier, &leaf_hashes).await?;
    tx.execute(
        "UPDATE audit_entries a SET seq = u.seq, leaf_hash = u.leaf, chain_hash = u.chain
         FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[]) AS u(id, seq, leaf, chain)
         WHERE a.id = u.id",
        &[&ids, &seqs, &leaves, &chains],
    )
    .await?;
    Ok(u64::try_from(ids.len()).unwrap_or(0))
}

/// Seals every municipality's pending entries.
pub async fn seal_all(pool: &deadpool_postgres::Pool) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    let tenants: Vec<Uuid> = client
        .query(
            "SELECT DISTINCT municipality_id FROM audit_entries WHERE seq IS NULL",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut sealed = 0;
    for t in tenants {
        sealed += seal(&client, Tenant::assume(t)).await?;
    }
    Ok(sealed)
}

/// How the sealer task signs checkpoints (see [`log::sign_if_due`]).
pub struct Checkpointing {
    /// Where log keys are.
    pub key_dir: std::path::PathBuf,
    /// Longest wait of a grown log for a new checkpoint.
    pub every: std::time::Duration,
    /// Time source.
    pub clock: std::sync::Arc<dyn crate::clock::Clock>,
}

/// Seals pending entries forever, every `interval`, and signs the checkpoints that are due; faults
/// are logged and retried.
pub async fn run_sealer(
    pool: deadpool_postgres::Pool,
    interval: std::time::Duration,
    checkpointing: Checkpointing,
) {
    loop {
        let sealed = match seal_all(&pool).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "sealing the audit log failed; will retry");
                0
            }
        };
        let now = checkpointing.clock.now();
        // Retention: erase the data keys whose time ran out (audited; the log stays verifiable).
        if let Err(e) = personal::erase_due(&pool, now).await {
            tracing::warn!(error = %e, "erasing expired audit data keys failed; will retry");
        }
        if let Err(e) =
            log::checkpoint_due(&pool, &checkpointing.key_dir, checkpointing.every, now).await
        {
            tracing::warn!(error = %e, "signing an audit checkpoint failed; will retry");
        }
        if sealed == 0 {
            tokio::time::sleep(interval).await;
        }
    }
}

/// One stored entry, as auditors see it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Entry {
    /// Position in the municipality's log, from 0.
    pub seq: i64,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// Who acted.
    pub actor: Option<Uuid>,
    /// What happened.
    pub action: String,
    /// The decision.
    pub outcome: String,
    /// Kind of the subject.
    pub subject_kind: Option<String>,
    /// Id of the subject.
    pub subject_id: Option<Uuid>,
    /// Property concerned.
    pub property: Option<Uuid>,
    /// Incident concerned.
    pub incident: Option<Uuid>,
    /// Hex SHA-256 of the deciding policy set.
    pub policy_set_hash: Option<String>,
    /// Non-personal details.
    pub details: serde_json::Value,
    /// Hex RFC 9162 leaf hash.
    pub leaf_hash: String,
    /// Hex chain hash after this entry.
    pub chain_hash: String,
    /// Hex SHA-256 of the entry's encrypted personal details, if it has any (read them with
    /// [`personal::open`]; unreadable once their data key is erased).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub personal: Option<String>,
    /// The data key those details are encrypted under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_key: Option<Uuid>,
}

const ENTRY_COLUMNS: &str =
    "seq, recorded_at, actor_id, action, outcome, subject_kind, subject_id, property_id,
     incident_id, policy_set_hash, public_details, leaf_hash, chain_hash, private_details, data_key_id";

fn entry_from_row(row: &tokio_postgres::Row) -> Entry {
    entry_fields(row, 0)
}

/// Reads the `ENTRY_COLUMNS` starting at column `at` (pending entries have no position or hashes yet:
/// `seq` reads as -1 and the hashes as empty).
fn entry_fields(row: &tokio_postgres::Row, at: usize) -> Entry {
    let col = |i: usize| at.saturating_add(i);
    let policy: Option<Vec<u8>> = row.get(col(9));
    let leaf: Option<Vec<u8>> = row.get(col(11));
    let chain_hash: Option<Vec<u8>> = row.get(col(12));
    let seq: Option<i64> = row.get(col(0));
    let private: Option<Vec<u8>> = row.get(col(13));
    Entry {
        seq: seq.unwrap_or(-1),
        recorded_at: row.get(col(1)),
        actor: row.get(col(2)),
        action: row.get(col(3)),
        outcome: row.get(col(4)),
        subject_kind: row.get(col(5)),
        subject_id: row.get(col(6)),
        property: row.get(col(7)),
        incident: row.get(col(8)),
        policy_set_hash: policy.map(hex::encode),
        details: row.get(col(10)),
        leaf_hash: leaf.map(hex::encode).unwrap_or_default(),
        chain_hash: chain_hash.map(hex::encode).unwrap_or_default(),
        personal: private.map(|c| hex::encode(digest(&SHA256, &c))),
        data_key: row.get(col(14)),
    }
}

/// An entry's canonical form at position `seq`.
fn canonical_of<'a>(tenant: Tenant, seq: i64, e: &'a Entry) -> Canonical<'a> {
    Canonical {
        municipality: tenant.id(),
        seq,
        recorded_at: e
            .recorded_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        actor: e.actor,
        action: &e.action,
        outcome: &e.outcome,
        subject_kind: e.subject_kind.as_deref(),
        subject_id: e.subject_id,
        property: e.property,
        incident: e.incident,
        policy_set_hash: e.policy_set_hash.clone(),
        details: sorted(&e.details),
        personal: e.personal.clone(),
        data_key: e.data_key,
    }
}

/// Entries of the tenant, optionally only those about one property, oldest first.
pub async fn entries(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Option<Uuid>,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Entry>, StoreError> {
    seal(client, tenant).await?;
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_entries
         WHERE municipality_id = $1 AND ($2::uuid IS NULL OR property_id = $2) AND seq > $3
         ORDER BY seq LIMIT $4"
    );
    let rows = client
        .query(
            &sql,
            &[&tenant.id(), &property, &after_seq, &limit.clamp(1, 1000)],
        )
        .await?;
    Ok(rows.iter().map(entry_from_row).collect())
}

/// Sealed entries about `property` before position `before`, newest first (the homeowner's
/// history, a page at a time).
pub async fn entries_before(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    before: i64,
    limit: i64,
) -> Result<Vec<Entry>, StoreError> {
    seal(client, tenant).await?;
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_entries
         WHERE municipality_id = $1 AND property_id = $2 AND seq IS NOT NULL AND seq < $3
         ORDER BY seq DESC LIMIT $4"
    );
    let rows = client
        .query(
            &sql,
            &[&tenant.id(), &property, &before, &limit.clamp(1, 1000)],
        )
        .await?;
    Ok(rows.iter().map(entry_from_row).collect())
}

/// What [`verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainCheck {
    /// Every entry recomputes to its stored leaf and chain hash; `entries` were checked.
    Intact {
        /// Number of entries.
        entries: u64,
        /// The chain head (hex), 64 zeros for an empty log.
        head: String,
    },
    /// The first entry whose recomputed hashes differ from the stored ones, or a gap in `seq`.
    Broken {
        /// Sequence number of the first bad entry.
        seq: i64,
    },
}

/// Seals what is pending, then recomputes every leaf and chain hash of the tenant's log.
pub async fn verify_chain(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<ChainCheck, StoreError> {
    seal(client, tenant).await?;
    verify_chain_after(client, tenant, 0, [0u8; 32]).await
}

/// Recomputes the leaf and chain hashes of the sealed entries from `seq = from` on, continuing the
/// chain from `prev`, the head after entry `from - 1` (32 zero bytes when `from` is 0). The
/// stored chain hash of entry `from - 1` must still be `prev`, or the check reports it broken: a
/// rewrite anywhere before `from` changes every later chain hash, so it cannot go unnoticed.
/// Does not seal first.
async fn verify_chain_after(
    client: &impl GenericClient,
    tenant: Tenant,
    from: i64,
    prev: [u8; 32],
) -> Result<ChainCheck, StoreError> {
    if from > 0 {
        let stored: Option<Vec<u8>> = client
            .query_opt(
                "SELECT chain_hash FROM audit_entries WHERE municipality_id = $1 AND seq = $2",
                &[&tenant.id(), &(from - 1)],
            )
            .await?
            .map(|r| r.get(0));
        if stored.as_deref() != Some(prev.as_slice()) {
            return Ok(ChainCheck::Broken { seq: from - 1 });
        }
    }
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_entries WHERE municipality_id = $1 AND seq >= $2 ORDER BY seq"
    );
    let rows = client.query(&sql, &[&tenant.id(), &from]).await?;
    let mut prev = prev;
    let mut expected_seq = from;
    for row in &rows {
        let e = entry_from_row(row);
        if e.seq != expected_seq {
            return Ok(ChainCheck::Broken { seq: expected_seq });
        }
        let leaf = leaf_hash(&canonical_of(tenant, e.seq, &e))?;
        let next = chain(&prev, &leaf);
        if hex::encode(leaf) != e.leaf_hash || hex::encode(next) != e.chain_hash {
            return Ok(ChainCheck::Broken { seq: e.seq });
        }
        prev = next;
        expected_seq = expected_seq.saturating_add(1);
    }
    Ok(ChainCheck::Intact {
        entries: u64::try_from(expected_seq).unwrap_or(u64::MAX),
        head: hex::encode(prev),
    })
}

/// How much of a chain check [`ChainCache::verify`] recomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainCoverage {
    /// Every entry, just now.
    Full,
    /// The entries sealed since a full recomputation `age` ago (the rest is vouched for by the
    /// unchanged chain hash where that one ended).
    Since {
        /// How long ago the last full recomputation was.
        age: std::time::Duration,
    },
}

/// A replica's memory of each municipality's last verified chain head, so that reading the audit
/// page recomputes only what was sealed since, and the whole chain at most every
/// [`ChainCache::FULL_EVERY`] (or when asked). A broken chain is never remembered.
#[derive(Debug, Default)]
pub struct ChainCache {
    verified: std::sync::Mutex<std::collections::HashMap<Uuid, Verified>>,
}

#[derive(Debug, Clone, Copy)]
struct Verified {
    entries: u64,
    head: [u8; 32],
    full_at: std::time::Instant,
}

impl ChainCache {
    /// How long a full recomputation vouches for the entries it covered.
    pub const FULL_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

    /// Seals what is pending and checks the tenant's chain: in full when `full` is asked, when
    /// nothing is remembered or the last full check is older than [`Self::FULL_EVERY`]; otherwise
    /// only the entries after the remembered head.
    pub async fn verify(
        &self,
        client: &impl GenericClient,
        tenant: Tenant,
        full: bool,
    ) -> Result<(ChainCheck, ChainCoverage), StoreError> {
        seal(client, tenant).await?;
        let now = std::time::Instant::now();
        let remembered = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&tenant.id())
            .copied()
            .filter(|v| !full && now.duration_since(v.full_at) < Self::FULL_EVERY);
        let (check, coverage, full_at) = match remembered {
            Some(v) => (
                verify_chain_after(
                    client,
                    tenant,
                    i64::try_from(v.entries).unwrap_or(i64::MAX),
                    v.head,
                )
                .await?,
                ChainCoverage::Since {
                    age: now.duration_since(v.full_at),
                },
                v.full_at,
            ),
            None => (
                verify_chain_after(client, tenant, 0, [0u8; 32]).await?,
                ChainCoverage::Full,
                now,
            ),
        };
        let mut verified = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &check {
            ChainCheck::Intact { entries, head } => {
                let mut bytes = [0u8; 32];
                if hex::decode_to_slice(head, &mut bytes).is_ok() {
                    verified.insert(
                        tenant.id(),
                        Verified {
                            entries: *entries,
                            head: bytes,
                            full_at,
                        },
                    );
                }
            }
            ChainCheck::Broken { .. } => {
                verified.remove(&tenant.id());
            }
        }
        Ok((check, coverage))
    }
}

/// Sealed entries `[start, end)` of the tenant's log with their leaf input (the canonical bytes
/// whose `SHA-256(0x00 ‖ bytes)` is the leaf hash), in order. Does not seal first: callers name a
/// range of a tree size they already have.
pub async fn leaf_data(
    client: &impl GenericClient,
    tenant: Tenant,
    start: u64,
    end: u64,
    property: Option<Uuid>,
) -> Result<Vec<(Entry, Vec<u8>)>, StoreError> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_entries
         WHERE municipality_id = $1 AND seq >= $2 AND seq < $3 AND ($4::uuid IS NULL OR property_id = $4)
         ORDER BY seq"
    );
    let rows = client
        .query(
            &sql,
            &[
                &tenant.id(),
                &i64::try_from(start).unwrap_or(i64::MAX),
                &i64::try_from(end).unwrap_or(i64::MAX),
                &property,
            ],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let e = entry_from_row(row);
        let bytes = canonical_bytes(&canonical_of(tenant, e.seq, &e))?;
        out.push((e, bytes));
    }
    Ok(out)
}

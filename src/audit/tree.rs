//! The stored Merkle tree of each municipality's log: full-subtree hashes in `audit_tree_nodes`
//! (level ≥ 1) and `audit_entries.leaf_hash` (level 0), written by the sealer as it seals leaves
//! ([`extend`]), read for roots, inclusion and consistency proofs and tlog-tiles.
//!
//! Appending costs O(1) amortised new rows per leaf (one on average) and one frontier read per
//! sealing batch; a proof reads at most 2·log₂(n) rows in one query. Nothing is ever recomputed.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;

use super::merkle::{self, Frontier, Hash, ProofError, Subtree};
use crate::store::{StoreError, Tenant};

/// Why a tree read failed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The index or sizes are not within the current tree (or a proof's sizes are out of order).
    #[error(transparent)]
    Range(#[from] ProofError),
    /// A hash the tree should hold is missing (a damaged store).
    #[error("the stored tree is missing a node")]
    Missing,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for TreeError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Number of sealed entries of the tenant's log (the current tree size).
pub async fn size(client: &impl GenericClient, tenant: Tenant) -> Result<u64, StoreError> {
    let row = client
        .query_one(
            "SELECT coalesce(max(seq) + 1, 0) FROM audit_entries WHERE municipality_id = $1",
            &[&tenant.id()],
        )
        .await?;
    let n: i64 = row.get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The stored hashes of `wanted` (those that exist).
pub async fn subtree_hashes(
    client: &impl GenericClient,
    tenant: Tenant,
    wanted: &[Subtree],
) -> Result<HashMap<Subtree, Hash>, StoreError> {
    let mut out = HashMap::with_capacity(wanted.len());
    let leaves: Vec<i64> = wanted
        .iter()
        .filter(|s| s.level == 0)
        .map(|s| to_i64(s.index))
        .collect();
    if !leaves.is_empty() {
        for row in client
            .query(
                "SELECT seq, leaf_hash FROM audit_entries WHERE municipality_id = $1 AND seq = ANY($2)",
                &[&tenant.id(), &leaves],
            )
            .await?
        {
            let seq: i64 = row.get(0);
            let hash: Vec<u8> = row.get(1);
            out.insert(
                Subtree {
                    level: 0,
                    index: u64::try_from(seq).unwrap_or(0),
                },
                merkle::to_hash(&hash),
            );
        }
    }
    let (levels, indexes): (Vec<i16>, Vec<i64>) = wanted
        .iter()
        .filter(|s| s.level > 0)
        .map(|s| (i16::from(s.level), to_i64(s.index)))
        .unzip();
    if !levels.is_empty() {
        for row in client
            .query(
                "SELECT n.level, n.idx, n.hash FROM audit_tree_nodes n
                 JOIN unnest($2::smallint[], $3::bigint[]) AS w(level, idx)
                   ON n.level = w.level AND n.idx = w.idx
                 WHERE n.municipality_id = $1",
                &[&tenant.id(), &levels, &indexes],
            )
            .await?
        {
            let level: i16 = row.get(0);
            let idx: i64 = row.get(1);
            let hash: Vec<u8> = row.get(2);
            out.insert(
                Subtree {
                    level: u8::try_from(level).unwrap_or(0),
                    index: u64::try_from(idx).unwrap_or(0),
                },
                merkle::to_hash(&hash),
            );
        }
    }
    Ok(out)
}

/// The frontier of the tree at `size` (read from the stored full subtrees).
pub async fn frontier(
    client: &impl GenericClient,
    tenant: Tenant,
    size: u64,
) -> Result<Frontier, TreeError> {
    let shape = merkle::frontier_of(size);
    let found = subtree_hashes(client, tenant, &shape).await?;
    let hashes: Option<Vec<Hash>> = shape.iter().map(|s| found.get(s).copied()).collect();
    let hashes = hashes.ok_or(TreeError::Missing)?;
    Frontier::from_subtrees(size, &hashes).ok_or(TreeError::Missing)
}

/// The root hash of the tree at `size` (≤ the current size).
pub async fn root_at(
    client: &impl GenericClient,
    tenant: Tenant,
    size: u64,
) -> Result<Hash, TreeError> {
    Ok(frontier(client, tenant, size).await?.root())
}

/// Appends `leaves` (the hashes of the entries just sealed at positions `frontier.size()…`) to the
/// tree: stores every full subtree they complete. Runs in the sealer's transaction.
pub(super) async fn extend(
    tx: &impl GenericClient,
    tenant: Tenant,
    frontier: &mut Frontier,
    leaves: &[Hash],
) -> Result<(), StoreError> {
    let (mut levels, mut indexes, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
    for leaf in leaves {
        for (subtree, hash) in frontier.push(*leaf) {
            levels.push(i16::from(subtree.level));
            indexes.push(to_i64(subtree.index));
            hashes.push(hash.to_vec());
        }
    }
    if !levels.is_empty() {
        tx.execute(
            "INSERT INTO audit_tree_nodes (municipality_id, level, idx, hash)
             SELECT $1, level, idx, hash FROM unnest($2::smallint[], $3::bigint[], $4::bytea[])
                 AS u(level, idx, hash)",
            &[&tenant.id(), &levels, &indexes, &hashes],
        )
        .await?;
    }
    Ok(())
}

async fn prove(
    client: &impl GenericClient,
    tenant: Tenant,
    ranges: &[(u64, u64)],
) -> Result<Vec<Hash>, TreeError> {
    let found = subtree_hashes(client, tenant, &merkle::subtrees_of(ranges)).await?;
    merkle::assemble(ranges, |s| found.get(&s).copied()).ok_or(TreeError::Missing)
}

/// The inclusion proof of leaf `index` in the tree of `size` (RFC 9162 §2.1.3.1).
pub async fn inclusion_proof(
    client: &impl GenericClient,
    tenant: Tenant,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, TreeError> {
    if size > self::size(client, tenant).await? {
        return Err(ProofError::OutOfRange.into());
    }
    prove(client, tenant, &merkle::inclusion_ranges(index, size)?).await
}

/// The consistency proof between tree sizes `first` and `second` (RFC 9162 §2.1.4.1).
pub async fn consistency_proof(
    client: &impl GenericClient,
    tenant: Tenant,
    first: u64,
    second: u64,
) -> Result<Vec<Hash>, TreeError> {
    if second > self::size(client, tenant).await? {
        return Err(ProofError::OutOfRange.into());
    }
    prove(client, tenant, &merkle::consistency_ranges(first, second)?).await
}

/// Hashes per full tile (C2SP tlog-tiles).
pub const TILE_WIDTH: u64 = 256;

/// The tlog-tiles tile `level`/`index` of `width` hashes (256 for a full tile): the full subtrees
/// at tree level `8·level`, indices `index·256 …`. `None` when the tree does not have them yet.
pub async fn tile(
    client: &impl GenericClient,
    tenant: Tenant,
    level: u8,
    index: u64,
    width: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    if level > 7 || width == 0 || width > TILE_WIDTH {
        return Ok(None);
    }
    let tree_level = level.saturating_mul(8);
    let Some(first) = index.checked_mul(TILE_WIDTH) else {
        return Ok(None);
    };
    let wanted: Vec<Subtree> = (first..first.saturating_add(width))
        .map(|i| Subtree {
            level: tree_level,
            index: i,
        })
        .collect();
    let found = subtree_hashes(client, tenant, &wanted).await?;
    let mut out = Vec::with_capacity(wanted.len().saturating_mul(32));
    for s in &wanted {
        match found.get(s) {
            Some(h) => out.extend_from_slice(h),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

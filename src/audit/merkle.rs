//! RFC 9162 §2.1 Merkle tree arithmetic, independent of storage: leaf and node hashing, the
//! incremental *frontier* the sealer extends, the shapes of inclusion and consistency proofs (which
//! full subtrees a proof is made of), and proof verification (§2.1.3.2, §2.1.4.2).
//!
//! Coordinates: a *full subtree* `(level, index)` is the perfect subtree over leaves
//! `[index·2^level, (index+1)·2^level)`; level 0 is a leaf hash. Every node an RFC 9162 proof needs
//! is the hash of a range `[start, end)` of the tree's recursive split, and every such range is a
//! short list of full subtrees (the binary digits of its width), so storage needs only full
//! subtrees, and they never change once written.

use ring::digest::{Context, SHA256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    to_hash(ring::digest::digest(&SHA256, b"").as_ref())
}

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    to_hash(ctx.finish().as_ref())
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    to_hash(ctx.finish().as_ref())
}

pub(crate) fn to_hash(bytes: &[u8]) -> Hash {
    let mut out = [0u8; 32];
    if bytes.len() == 32 {
        out.copy_from_slice(bytes);
    }
    out
}

/// A full subtree: `level` (0 = leaf) and `index` within the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subtree {
    /// Height above the leaves.
    pub level: u8,
    /// Position within the level.
    pub index: u64,
}

/// The full subtrees whose hashes make up the tree of `size` leaves, largest (leftmost) first: one
/// per set bit of `size`. Their right fold with [`node_hash`] is the root.
pub fn frontier_of(size: u64) -> Vec<Subtree> {
    range_subtrees(0, size)
}

/// The full subtrees covering `[start, end)`, left to right. For a range of the RFC 9162 split
/// (`start` a multiple of the largest power of two not above the width) these are exactly the
/// binary digits of the width, largest first.
pub fn range_subtrees(start: u64, end: u64) -> Vec<Subtree> {
    let mut out = Vec::new();
    let mut at = start;
    let width = end.saturating_sub(start);
    for level in (0..64u8).rev() {
        let span = 1u64 << level;
        if width & span != 0 {
            out.push(Subtree {
                level,
                index: at >> level,
            });
            at = at.saturating_add(span);
        }
    }
    out
}

/// The hash of a range from the hashes of its [`range_subtrees`], left to right: the smaller
/// subtrees on the right are combined first (RFC 9162's split puts the largest power of two left).
pub fn fold_range(hashes: &[Hash]) -> Option<Hash> {
    let mut iter = hashes.iter().rev();
    let mut acc = *iter.next()?;
    for left in iter {
        acc = node_hash(left, &acc);
    }
    Some(acc)
}

/// The right edge of a tree during appends: `hashes[level]` is the full subtree at that level that
/// is not yet part of a larger full subtree (present where the size has that bit set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Option<Hash>>,
}

impl Default for Frontier {
    fn default() -> Self {
        Self {
            size: 0,
            hashes: vec![None; 64],
        }
    }
}

impl Frontier {
    /// The frontier of a tree of `size` leaves from the hashes of [`frontier_of`]`(size)`, in that
    /// order; `None` when the count does not match.
    pub fn from_subtrees(size: u64, hashes: &[Hash]) -> Option<Self> {
        let shape = frontier_of(size);
        if shape.len() != hashes.len() {
            return None;
        }
        let mut levels = vec![None; 64];
        for (subtree, hash) in shape.iter().zip(hashes) {
            *levels.get_mut(usize::from(subtree.level))? = Some(*hash);
        }
        Some(Self {
            size,
            hashes: levels,
        })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf; returns the full subtrees of level ≥ 1 this completed, lowest first.
    pub fn push(&mut self, leaf: Hash) -> Vec<(Subtree, Hash)> {
        if self.hashes.len() < 64 {
            self.hashes.resize(64, None);
        }
        let mut made = Vec::new();
        let mut carry = leaf;
        let mut level = 0u8;
        while self.size & (1u64 << level) != 0 {
            let Some(left) = self
                .hashes
                .get_mut(usize::from(level))
                .and_then(Option::take)
            else {
                break;
            };
            carry = node_hash(&left, &carry);
            level = level.saturating_add(1);
            made.push((
                Subtree {
                    level,
                    index: self.size >> level,
                },
                carry,
            ));
        }
        if let Some(slot) = self.hashes.get_mut(usize::from(level)) {
            *slot = Some(carry);
        }
        self.size = self.size.saturating_add(1);
        made
    }

    /// The root hash (the empty-tree hash for size 0).
    pub fn root(&self) -> Hash {
        let mut acc: Option<Hash> = None;
        for hash in self.hashes.iter().flatten() {
            acc = Some(match acc {
                None => *hash,
                Some(right) => node_hash(hash, &right),
            });
        }
        acc.unwrap_or_else(empty_root)
    }
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    let mut k = 1u64;
    while k.saturating_mul(2) < n {
        k = k.saturating_mul(2);
    }
    k
}

/// Why a proof could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The index or sizes are outside the tree (index ≥ size, first > second, size 0).
    #[error("index or tree size out of range")]
    OutOfRange,
    /// The proof has the wrong number of hashes for the index and sizes.
    #[error("proof has the wrong length")]
    WrongLength,
    /// The proof's hashes do not lead to the expected root.
    #[error("proof does not match the root hash")]
    Mismatch,
}

/// The ranges `[start, end)` whose hashes are the inclusion proof of leaf `index` in a tree of
/// `size`, in proof order (RFC 9162 §2.1.3.1, deepest first).
pub fn inclusion_ranges(index: u64, size: u64) -> Result<Vec<(u64, u64)>, ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange);
    }
    let mut out = Vec::new();
    let (mut lo, mut hi, mut m) = (0u64, size, index);
    while hi - lo > 1 {
        let k = split(hi - lo);
        if m < k {
            out.push((lo + k, hi));
            hi = lo + k;
        } else {
            out.push((lo, lo + k));
            lo += k;
            m -= k;
        }
    }
    out.reverse();
    Ok(out)
}

/// The ranges whose hashes are the consistency proof from `first` to `second` leaves (RFC 9162
/// §2.1.4.1), in proof order. Empty when `first` is 0 or equals `second`.
pub fn consistency_ranges(first: u64, second: u64) -> Result<Vec<(u64, u64)>, ProofError> {
    if first > second {
        return Err(ProofError::OutOfRange);
    }
    if first == 0 || first == second {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[lo:hi], b), unrolled: the recursion only ever descends into one side.
    let mut out = Vec::new();
    let (mut lo, mut hi, mut m, mut whole) = (0u64, second, first, true);
    loop {
        if m == hi - lo {
            if !whole {
                out.push((lo, hi));
            }
            break;
        }
        let k = split(hi - lo);
        if m <= k {
            out.push((lo + k, hi));
            hi = lo + k;
        } else {
            out.push((lo, lo + k));
            lo += k;
            m -= k;
            whole = false;
        }
    }
    out.reverse();
    Ok(out)
}

/// Every full subtree that the given ranges are made of, each once.
pub fn subtrees_of(ranges: &[(u64, u64)]) -> Vec<Subtree> {
    let mut all: Vec<Subtree> = ranges
        .iter()
        .flat_map(|&(s, e)| range_subtrees(s, e))
        .collect();
    all.sort();
    all.dedup();
    all
}

/// Assembles a proof from its ranges and a lookup of full-subtree hashes.
pub fn assemble(
    ranges: &[(u64, u64)],
    lookup: impl Fn(Subtree) -> Option<Hash>,
) -> Option<Vec<Hash>> {
    ranges
        .iter()
        .map(|&(s, e)| {
            let parts: Option<Vec<Hash>> = range_subtrees(s, e).into_iter().map(&lookup).collect();
            fold_range(&parts?)
        })
        .collect()
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange);
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if &r == root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// Verifies a consistency proof between two tree heads (RFC 9162 §2.1.4.2). Equal sizes need an
/// empty proof and equal roots; a first size of 0 is consistent with anything (empty proof).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::OutOfRange);
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    if first == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<Hash> = proof.to_vec();
    // Step 2: if first is a power of two, prepend first_hash.
    if first.is_power_of_two() {
        path.insert(0, *first_root);
    }
    let Some((head, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if &fr == first_root && &sr == second_root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::needless_range_loop
)]
mod tests {
    use super::*;

    // An independent reference written straight from RFC 9162 §2.1.1–2.1.4 (recursive, over the
    // whole list of leaves), not sharing any code with the implementation above.
    fn sha(parts: &[&[u8]]) -> Hash {
        let mut ctx = Context::new(&SHA256);
        for p in parts {
            ctx.update(p);
        }
        to_hash(ctx.finish().as_ref())
    }
    fn k_of(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }
    fn mth(d: &[Vec<u8>]) -> Hash {
        match d.len() {
            0 => sha(&[]),
            1 => sha(&[&[0], &d[0]]),
            n => {
                let k = k_of(n);
                sha(&[&[1], &mth(&d[..k]), &mth(&d[k..])])
            }
        }
    }
    fn path(m: usize, d: &[Vec<u8>]) -> Vec<Hash> {
        let n = d.len();
        if n <= 1 {
            return vec![];
        }
        let k = k_of(n);
        if m < k {
            let mut p = path(m, &d[..k]);
            p.push(mth(&d[k..]));
            p
        } else {
            let mut p = path(m - k, &d[k..]);
            p.push(mth(&d[..k]));
            p
        }
    }
    fn subproof(m: usize, d: &[Vec<u8>], b: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if b { vec![] } else { vec![mth(d)] };
        }
        let k = k_of(n);
        if m <= k {
            let mut p = subproof(m, &d[..k], b);
            p.push(mth(&d[k..]));
            p
        } else {
            let mut p = subproof(m - k, &d[k..], false);
            p.push(mth(&d[..k]));
            p
        }
    }
    fn proof(m: usize, d: &[Vec<u8>]) -> Vec<Hash> {
        if m == 0 || m == d.len() {
            return vec![];
        }
        subproof(m, d, true)
    }

    fn data(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("entry {i}").into_bytes()).collect()
    }

    /// A tree built by the implementation: frontier for roots, a map of every full subtree.
    struct Built {
        frontiers: Vec<Frontier>,
        nodes: std::collections::HashMap<Subtree, Hash>,
    }
    fn build(d: &[Vec<u8>]) -> Built {
        let mut f = Frontier::default();
        let mut frontiers = vec![f.clone()];
        let mut nodes = std::collections::HashMap::new();
        for (i, e) in d.iter().enumerate() {
            let leaf = leaf_hash(e);
            nodes.insert(
                Subtree {
                    level: 0,
                    index: i as u64,
                },
                leaf,
            );
            for (s, h) in f.push(leaf) {
                nodes.insert(s, h);
            }
            frontiers.push(f.clone());
        }
        Built { frontiers, nodes }
    }
    fn unhex(s: &str) -> Hash {
        to_hash(&hex::decode(s).unwrap())
    }

    #[test]
    fn roots_match_the_published_rfc6962_vectors() {
        // The Certificate Transparency reference leaves and roots (transparency-dev/merkle).
        let leaves: Vec<Vec<u8>> = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|h| hex::decode(h).unwrap())
        .collect();
        let roots = [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let built = build(&leaves);
        for (n, root) in roots.iter().enumerate() {
            assert_eq!(built.frontiers[n].root(), unhex(root), "size {n}");
        }
        // Published inclusion proofs (leaf 0 and 5 of 8) and consistency proof 2 → 5.
        let lookup = |s: Subtree| built.nodes.get(&s).copied();
        let inc0 = assemble(&inclusion_ranges(0, 8).unwrap(), lookup).unwrap();
        assert_eq!(
            inc0,
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"
            ]
            .map(unhex)
        );
        let inc5 = assemble(&inclusion_ranges(5, 8).unwrap(), lookup).unwrap();
        assert_eq!(
            inc5,
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"
            ]
            .map(unhex)
        );
        let c25 = assemble(&consistency_ranges(2, 5).unwrap(), lookup).unwrap();
        assert_eq!(
            c25,
            [
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"
            ]
            .map(unhex)
        );
    }

    #[test]
    fn proofs_and_roots_agree_with_the_recursive_reference_for_every_size() {
        let d = data(70);
        let built = build(&d);
        let lookup = |s: Subtree| built.nodes.get(&s).copied();
        for n in 0..=d.len() {
            let root = built.frontiers[n].root();
            assert_eq!(root, mth(&d[..n]), "root {n}");
            for m in 0..n {
                let p = assemble(&inclusion_ranges(m as u64, n as u64).unwrap(), lookup).unwrap();
                assert_eq!(p, path(m, &d[..n]), "inclusion {m}/{n}");
                verify_inclusion(&leaf_hash(&d[m]), m as u64, n as u64, &p, &root).unwrap();
            }
            for m in 0..=n {
                let p = assemble(&consistency_ranges(m as u64, n as u64).unwrap(), lookup).unwrap();
                assert_eq!(p, proof(m, &d[..n]), "consistency {m}→{n}");
                let old = built.frontiers[m].root();
                verify_consistency(m as u64, n as u64, &old, &root, &p).unwrap();
            }
        }
    }

    #[test]
    fn every_mutation_of_a_proof_fails_verification() {
        let d = data(37);
        let built = build(&d);
        let lookup = |s: Subtree| built.nodes.get(&s).copied();
        for n in 1..=d.len() as u64 {
            let root = built.frontiers[n as usize].root();
            for m in 0..n {
                let leaf = leaf_hash(&d[m as usize]);
                let p = assemble(&inclusion_ranges(m, n).unwrap(), lookup).unwrap();
                for i in 0..p.len() {
                    for byte in [0usize, 13, 31] {
                        let mut bad = p.clone();
                        bad[i][byte] ^= 0x01;
                        assert!(verify_inclusion(&leaf, m, n, &bad, &root).is_err());
                    }
                    if i + 1 < p.len() && p[i] != p[i + 1] {
                        let mut swapped = p.clone();
                        swapped.swap(i, i + 1);
                        assert!(verify_inclusion(&leaf, m, n, &swapped, &root).is_err());
                    }
                }
                if !p.is_empty() {
                    assert!(verify_inclusion(&leaf, m, n, &p[..p.len() - 1], &root).is_err());
                }
                let mut longer = p.clone();
                longer.push([7; 32]);
                assert!(verify_inclusion(&leaf, m, n, &longer, &root).is_err());
                // Another index fails. (Another *size* may not: RFC 9162 proofs of some sizes
                // coincide, e.g. leaf 0 of 3 and of 4, which is why a verifier takes sizes only
                // from signed checkpoints.)
                if m + 1 < n {
                    assert!(verify_inclusion(&leaf, m + 1, n, &p, &root).is_err());
                }
                if m > 0 {
                    assert!(verify_inclusion(&leaf, m - 1, n, &p, &root).is_err());
                }
                assert!(verify_inclusion(&leaf, n, n, &p, &root).is_err());
            }
            for m in 1..n {
                let old = built.frontiers[m as usize].root();
                let p = assemble(&consistency_ranges(m, n).unwrap(), lookup).unwrap();
                for i in 0..p.len() {
                    let mut bad = p.clone();
                    bad[i][0] ^= 0x80;
                    assert!(verify_consistency(m, n, &old, &root, &bad).is_err());
                    if i + 1 < p.len() && p[i] != p[i + 1] {
                        let mut swapped = p.clone();
                        swapped.swap(i, i + 1);
                        assert!(verify_consistency(m, n, &old, &root, &swapped).is_err());
                    }
                }
                if !p.is_empty() {
                    assert!(verify_consistency(m, n, &old, &root, &p[..p.len() - 1]).is_err());
                }
                let mut longer = p.clone();
                longer.push([9; 32]);
                assert!(verify_consistency(m, n, &old, &root, &longer).is_err());
                let other = built.frontiers[(m - 1) as usize].root();
                assert!(verify_consistency(m, n, &other, &root, &p).is_err());
            }
        }
    }

    #[test]
    fn a_frontier_rebuilt_from_its_subtrees_continues_the_same_tree() {
        let d = data(45);
        let built = build(&d);
        for n in 0..d.len() {
            let hashes: Vec<Hash> = frontier_of(n as u64)
                .into_iter()
                .map(|s| built.nodes[&s])
                .collect();
            let mut f = Frontier::from_subtrees(n as u64, &hashes).unwrap();
            assert_eq!(f, built.frontiers[n]);
            f.push(leaf_hash(&d[n]));
            assert_eq!(f.root(), built.frontiers[n + 1].root());
        }
    }
}

//! The audit log as a transparency log: the Merkle tree the sealer keeps, signed checkpoints,
//! proofs over the JSON API and tlog-tiles, exports verified offline, and witnesses.
//!
//! Roots and proofs are checked against an independent RFC 9162 implementation written here, not
//! against the code under test.

use chrono::Utc;
use firstkey::audit::{self, Event, Outcome};
use firstkey::domain::Slug;
use firstkey::store::{Tenant, tenancy};
use ring::digest::{Context, SHA256};

use crate::helpers::{TestApp, spawn_app};

type Hash = [u8; 32];

fn sha(parts: &[&[u8]]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().try_into().unwrap()
}

/// RFC 9162 §2.1.1 MTH over leaf hashes, recursively.
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha(&[]),
        1 => leaves[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            sha(&[&[1], &mth(&leaves[..k]), &mth(&leaves[k..])])
        }
    }
}

async fn town(app: &TestApp, slug: &str) -> Tenant {
    let client = app.pool.get().await.unwrap();
    tenancy::ensure_municipality(&client, &Slug::parse(slug).unwrap(), slug, Utc::now())
        .await
        .unwrap()
        .0
}

/// Appends `n` entries (pending) and returns nothing; the caller seals.
async fn append(app: &TestApp, tenant: Tenant, n: usize, tag: &str) {
    let client = app.pool.get().await.unwrap();
    for i in 0..n {
        audit::record(
            &client,
            tenant,
            &Event::new("test.append", Outcome::Info)
                .details(serde_json::json!({ "tag": tag, "i": i })),
            Utc::now(),
        )
        .await
        .unwrap();
    }
}

/// Every stored leaf hash of the tenant, by position.
async fn stored_leaves(app: &TestApp, tenant: Tenant) -> Vec<Hash> {
    let client = app.pool.get().await.unwrap();
    audit::seal(&client, tenant).await.unwrap();
    client
        .query(
            "SELECT leaf_hash FROM audit_entries WHERE municipality_id = $1 ORDER BY seq",
            &[&tenant.id()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Vec<u8>>(0).try_into().unwrap())
        .collect()
}

#[tokio::test]
async fn the_sealer_keeps_an_rfc9162_tree_whose_roots_match_a_full_recomputation() {
    let app = spawn_app().await;
    let a = town(&app, "tree-a").await;
    let b = town(&app, "tree-b").await;
    // Batches of awkward sizes, interleaved between two municipalities, sealed one at a time.
    for (round, n) in [1usize, 2, 5, 1, 13, 40].into_iter().enumerate() {
        append(&app, a, n, &format!("a{round}")).await;
        append(&app, b, n + 1, &format!("b{round}")).await;
        let client = app.pool.get().await.unwrap();
        audit::seal(&client, a).await.unwrap();
        audit::seal(&client, b).await.unwrap();
    }
    for tenant in [a, b] {
        let leaves = stored_leaves(&app, tenant).await;
        let client = app.pool.get().await.unwrap();
        assert_eq!(
            audit::tree::size(&client, tenant).await.unwrap(),
            leaves.len() as u64
        );
        for n in 0..=leaves.len() {
            assert_eq!(
                audit::tree::root_at(&client, tenant, n as u64).await.unwrap(),
                mth(&leaves[..n]),
                "root of size {n}"
            );
        }
        // Only full subtrees are stored, about one per leaf, and never more than needed.
        let nodes: i64 = client
            .query_one(
                "SELECT count(*) FROM audit_tree_nodes WHERE municipality_id = $1",
                &[&tenant.id()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(nodes as usize, leaves.len() - leaves.len().count_ones() as usize);
    }
}

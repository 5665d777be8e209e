//! The audit log as a transparency log: the Merkle tree the sealer keeps, signed checkpoints,
//! proofs over the JSON API and tlog-tiles, exports verified offline, and witnesses.
//!
//! Roots and proofs are checked against an independent RFC 9162 implementation written here, not
//! against the code under test.

// Sizes in these tests are small; u64 → usize casts cannot truncate.
#![allow(clippy::cast_possible_truncation)]

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
                audit::tree::root_at(&client, tenant, n as u64)
                    .await
                    .unwrap(),
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
        assert_eq!(
            nodes as usize,
            leaves.len() - leaves.len().count_ones() as usize
        );
    }
}

// ---------------------------------------------------------------- checkpoints, proofs, tiles

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use firstkey::audit::log as auditlog;
use firstkey::audit::note::{self, VerifierKey};
use firstkey::audit::verify::{self, Export, Failure, Inconsistent};
use firstkey::domain::Role;
use reqwest::Method;

use crate::helpers::{As, admin_config, call, test_settings, user};

fn key_dir() -> std::path::PathBuf {
    test_settings(admin_config()).key_dir
}

/// RFC 9162 §2.1.3.1 PATH, recursively over leaf hashes.
fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
    if d.len() <= 1 {
        return vec![];
    }
    let mut k = 1;
    while k * 2 < d.len() {
        k *= 2;
    }
    let (mut p, sibling) = if m < k {
        (path(m, &d[..k]), mth(&d[k..]))
    } else {
        (path(m - k, &d[k..]), mth(&d[..k]))
    };
    p.push(sibling);
    p
}

/// RFC 9162 §2.1.4.1 PROOF, recursively.
fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    if m == d.len() {
        return if b { vec![] } else { vec![mth(d)] };
    }
    let mut k = 1;
    while k * 2 < d.len() {
        k *= 2;
    }
    let (mut p, sibling) = if m <= k {
        (subproof(m, &d[..k], b), mth(&d[k..]))
    } else {
        (subproof(m - k, &d[k..], false), mth(&d[..k]))
    };
    p.push(sibling);
    p
}

fn b64s(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| STANDARD.encode(h)).collect()
}

struct Log {
    app: TestApp,
    tenant: Tenant,
    slug: String,
    key: VerifierKey,
    auditor: As,
}

/// A municipality with a log key and `n` more entries, sealed, with a checkpoint of all of them.
async fn log_with(slug: &str, n: usize) -> Log {
    let app = spawn_app().await;
    let tenant = town(&app, slug).await;
    let mut client = app.pool.get().await.unwrap();
    let origin = auditlog::origin_for("http://localhost:8080", slug);
    let key = auditlog::generate_key(&mut client, tenant, &origin, &key_dir(), Utc::now())
        .await
        .unwrap()
        .verifier;
    drop(client);
    append(&app, tenant, n, "log").await;
    let auditor = user(
        &app,
        tenant,
        &format!("auditor@{slug}.example"),
        None,
        Role::Auditor,
        true,
    )
    .await;
    let log = Log {
        app,
        tenant,
        slug: slug.to_owned(),
        key,
        auditor,
    };
    checkpoint_now(&log).await;
    log
}

/// Seals and signs a checkpoint of everything now (as the sealer would once due); returns its note.
async fn checkpoint_now(log: &Log) -> note::VerifiedCheckpoint {
    let mut client = log.app.pool.get().await.unwrap();
    audit::seal(&client, log.tenant).await.unwrap();
    auditlog::sign_if_due(
        &mut client,
        log.tenant,
        &key_dir(),
        std::time::Duration::ZERO,
        Utc::now(),
    )
    .await
    .unwrap();
    let size = audit::tree::size(&client, log.tenant).await.unwrap();
    let text = log
        .app
        .get(&format!("/log/{}/checkpoint", log.slug))
        .await
        .text()
        .await
        .unwrap();
    let cp = note::verify_checkpoint(&text, &log.key).unwrap();
    assert_eq!(
        cp.size(),
        size,
        "the served checkpoint covers the whole sealed log"
    );
    cp
}

#[tokio::test]
async fn the_server_signs_c2sp_checkpoints_by_itself_and_serves_them() {
    let app = spawn_app().await;
    let tenant = town(&app, "cp-town").await;
    assert_eq!(
        app.get("/log/cp-town/checkpoint").await.status(),
        404,
        "no log key, no checkpoint"
    );
    append(&app, tenant, 5, "cp").await;
    let mut client = app.pool.get().await.unwrap();
    let origin = auditlog::origin_for("http://localhost:8080", "cp-town");
    let key = auditlog::generate_key(&mut client, tenant, &origin, &key_dir(), Utc::now())
        .await
        .unwrap()
        .verifier;
    // The sealer task signs the first checkpoint of a grown log at once; wait for it (generously).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let cp = loop {
        let response = app.get("/log/cp-town/checkpoint").await;
        if response.status() == 200 {
            assert_eq!(
                response.headers()["content-type"],
                "text/plain; charset=utf-8"
            );
            let cp = note::verify_checkpoint(&response.text().await.unwrap(), &key).unwrap();
            if cp.size() >= 6 {
                break cp;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint signed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(cp.origin(), "localhost:8080/log/cp-town");
    let leaves = stored_leaves(&app, tenant).await;
    assert_eq!(cp.root(), &mth(&leaves[..cp.size() as usize]));
    // The body is exactly the three tlog-checkpoint lines.
    assert_eq!(
        cp.body(),
        format!(
            "localhost:8080/log/cp-town\n{}\n{}\n",
            cp.size(),
            STANDARD.encode(cp.root())
        )
    );
    let (status, keys) = call(&app, Method::GET, "/api/v1/log/cp-town/keys", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(keys["keys"][0], key.to_string());
    let (status, json) = call(
        &app,
        Method::GET,
        "/api/v1/log/cp-town/checkpoint",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json["root_hash"], STANDARD.encode(cp.root()));
    // A second key by rotation: checkpoints carry both signatures during the overlap.
    let new = auditlog::rotate_key(
        &mut client,
        tenant,
        &key_dir(),
        chrono::Duration::hours(1),
        Utc::now(),
    )
    .await
    .unwrap()
    .verifier;
    audit::seal(&client, tenant).await.unwrap();
    auditlog::sign_if_due(
        &mut client,
        tenant,
        &key_dir(),
        std::time::Duration::ZERO,
        Utc::now(),
    )
    .await
    .unwrap();
    let text = app
        .get("/log/cp-town/checkpoint")
        .await
        .text()
        .await
        .unwrap();
    let by_old = note::verify_checkpoint(&text, &key).unwrap();
    let by_new = note::verify_checkpoint(&text, &new).unwrap();
    assert!(by_old.size() > cp.size());
    assert_eq!(by_old, by_new);
}

#[tokio::test]
async fn proofs_and_tiles_match_an_independent_rfc9162_implementation() {
    let log = log_with("proofs", 300).await;
    let cp = checkpoint_now(&log).await;
    let n = cp.size() as usize;
    let leaves = stored_leaves(&log.app, log.tenant).await;
    let leaves = &leaves[..n];
    assert_eq!(cp.root(), &mth(leaves));
    for m in [0usize, 1, 7, 128, 255, 256, 257, n - 1] {
        for size in [m + 1, n / 2 + 1, n] {
            if m >= size {
                continue;
            }
            let (status, body) = call(
                &log.app,
                Method::GET,
                &format!("/api/v1/log/proofs/proof/inclusion?index={m}&tree_size={size}"),
                None,
                None,
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let proof: Vec<String> = serde_json::from_value(body["proof"].clone()).unwrap();
            assert_eq!(
                proof,
                b64s(&path(m, &leaves[..size])),
                "inclusion {m}/{size}"
            );
        }
    }
    for (first, second) in [
        (1usize, n),
        (6, n),
        (256, n),
        (257, 300.min(n)),
        (n, n),
        (0, n),
    ] {
        let (status, body) = call(
            &log.app,
            Method::GET,
            &format!("/api/v1/log/proofs/proof/consistency?first={first}&second={second}"),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let proof: Vec<String> = serde_json::from_value(body["proof"].clone()).unwrap();
        let expected = if first == 0 || first == second {
            vec![]
        } else {
            subproof(first, &leaves[..second], true)
        };
        assert_eq!(proof, b64s(&expected), "consistency {first}→{second}");
    }
    // Beyond the tree: a clear 400, not a proof.
    let (status, _) = call(
        &log.app,
        Method::GET,
        &format!(
            "/api/v1/log/proofs/proof/inclusion?index=0&tree_size={}",
            n + 50
        ),
        None,
        None,
    )
    .await;
    assert_eq!(status, 400);
    // tlog-tiles: level 0 full and partial tiles are leaf hashes; level 1 holds the MTH of full tiles.
    let tile = |p: String| {
        let app = &log.app;
        async move {
            let r = app.get(&format!("/log/proofs/tile/{p}")).await;
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        }
    };
    let (status, full) = tile("0/000".into()).await;
    assert_eq!(status, 200);
    assert_eq!(full, leaves[..256].concat());
    let w = n - 256;
    let (status, partial) = tile(format!("0/001.p/{w}")).await;
    assert_eq!(status, 200);
    assert_eq!(partial, leaves[256..n].concat());
    assert_eq!(
        tile("1/000.p/1".into()).await.1,
        mth(&leaves[..256]).to_vec()
    );
    assert_eq!(
        tile("0/001".into()).await.0,
        404,
        "no full tile before 512 leaves"
    );
    assert_eq!(tile(format!("0/001.p/{}", w + 1)).await.0, 404);
    assert_eq!(tile("0/0001".into()).await.0, 404, "malformed index");
    // Entry bundles hold personal data: only audit readers get them, and they hash to the leaves.
    assert_eq!(tile("entries/000".into()).await.0, 401);
    let response = log
        .app
        .http
        .get(format!("{}/log/proofs/tile/entries/000", log.app.address))
        .header("cookie", &log.auditor.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bundle = response.bytes().await.unwrap();
    let mut at = 0;
    for (i, leaf) in leaves[..256].iter().enumerate() {
        let len = u16::from_be_bytes([bundle[at], bundle[at + 1]]) as usize;
        let data = &bundle[at + 2..at + 2 + len];
        assert_eq!(&sha(&[&[0], data]), leaf, "entry {i} of the bundle");
        at += 2 + len;
    }
    assert_eq!(at, bundle.len());
}

// ---------------------------------------------------------------- exports and `audit verify`

async fn export_of(log: &Log, query: &str, who: &As) -> String {
    let response = log
        .app
        .http
        .get(format!("{}/api/v1/audit/export{query}", log.app.address))
        .header("cookie", &who.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

fn failures(text: &str, key: &VerifierKey) -> Vec<Failure> {
    verify::verify_export(text, key, &[], 0).failures
}

fn edit(text: &str, change: impl FnOnce(&mut Export)) -> String {
    let mut export: Export = serde_json::from_str(text).unwrap();
    change(&mut export);
    serde_json::to_string(&export).unwrap()
}

/// Runs `firstkey audit verify` on `text`; returns the exit status and the output.
fn cli_verify(text: &str, key: &VerifierKey) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_firstkey"))
        .args(["audit", "verify"])
        .arg(&file)
        .args(["--log-key", &key.to_string()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn an_export_verifies_offline_and_every_tampering_is_caught() {
    let log = log_with("exports", 20).await;
    let full = export_of(&log, "", &log.auditor).await;
    let report = verify::verify_export(&full, &log.key, &[], 0);
    assert!(report.ok(), "{:?}", report.failures);
    let (ok, out) = cli_verify(&full, &log.key);
    assert!(ok, "{out}");
    assert!(out.contains("OK:"), "{out}");

    // Tampered entry: the root no longer matches.
    let tampered = edit(&full, |e| {
        e.entries[3].data = e.entries[3].data.replace("\"i\":2", "\"i\":9")
    });
    assert_ne!(tampered, full);
    assert_eq!(failures(&tampered, &log.key), vec![Failure::Root]);
    let (ok, out) = cli_verify(&tampered, &log.key);
    assert!(
        !ok && out.contains("FAILED: the entries do not hash to the checkpoint's root"),
        "{out}"
    );
    // Dropped entry.
    let dropped = edit(&full, |e| {
        e.entries.remove(5);
    });
    assert_eq!(
        failures(&dropped, &log.key),
        vec![Failure::Missing {
            from: 5,
            to: 6,
            size: 21
        }]
    );
    // Truncated log (the last entries left out).
    let truncated = edit(&full, |e| e.entries.truncate(10));
    assert!(matches!(
        failures(&truncated, &log.key)[..],
        [Failure::Missing { from: 10, .. }]
    ));
    // Reordered: two entries swap places (indexes kept increasing, data moved).
    let reordered = edit(&full, |e| {
        let a = e.entries[7].data.clone();
        e.entries[7].data = e.entries[8].data.clone();
        e.entries[8].data = a;
    });
    let f = failures(&reordered, &log.key);
    assert!(f.contains(&Failure::Root), "{f:?}");
    assert!(f.iter().any(|f| matches!(f, Failure::Entry { index: 7, reason } if reason.contains("says it is entry 8"))), "{f:?}");
    // Forged checkpoint signature: one byte of the log's signature flipped.
    let forged = edit(&full, |e| {
        let mut n = note::Note::parse(&e.checkpoint).unwrap();
        n.signatures[0].signature[10] ^= 1;
        e.checkpoint = n.encode();
    });
    assert!(matches!(
        failures(&forged, &log.key)[..],
        [Failure::Checkpoint(note::NoteError::BadSignature(_))]
    ));
    // A checkpoint re-signed with another key under the log's name; and the right export checked
    // with a wrong key: both refused.
    let other = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[3; 32]).unwrap();
    let other_key = note::verifier_of(log.key.name(), note::SIG_ED25519, &other).unwrap();
    assert!(matches!(
        failures(&full, &other_key)[..],
        [Failure::Checkpoint(note::NoteError::Unsigned(_))]
    ));
    let (ok, out) = cli_verify(&full, &other_key);
    assert!(
        !ok && out.contains("FAILED: checkpoint: no signature by"),
        "{out}"
    );

    // The homeowner's view: entries about one property, each with an inclusion proof.
    let subset = edit(&full, |e| {
        e.complete = false;
        e.entries.retain(|x| x.index % 4 == 1);
    });
    // Proofs come from the server's proof endpoint.
    let mut with_proofs: Export = serde_json::from_str(&subset).unwrap();
    let size = note::verify_checkpoint(&with_proofs.checkpoint, &log.key)
        .unwrap()
        .size();
    for entry in &mut with_proofs.entries {
        let (_, body) = call(
            &log.app,
            Method::GET,
            &format!(
                "/api/v1/log/exports/proof/inclusion?index={}&tree_size={size}",
                entry.index
            ),
            None,
            None,
        )
        .await;
        entry.proof = serde_json::from_value(body["proof"].clone()).unwrap();
    }
    let subset = serde_json::to_string(&with_proofs).unwrap();
    assert!(verify::verify_export(&subset, &log.key, &[], 0).ok());
    // Truncated proof, a flipped proof byte, a tampered entry: each reported for that entry.
    let cut = edit(&subset, |e| {
        e.entries[0].proof.pop();
    });
    assert!(matches!(
        &failures(&cut, &log.key)[..],
        [Failure::Entry { index: 1, .. }]
    ));
    let flipped = edit(&subset, |e| {
        let mut h = STANDARD.decode(&e.entries[1].proof[0]).unwrap();
        h[0] ^= 0x40;
        e.entries[1].proof[0] = STANDARD.encode(h);
    });
    assert!(matches!(
        &failures(&flipped, &log.key)[..],
        [Failure::Entry { index: 5, .. }]
    ));
    let changed = edit(&subset, |e| {
        e.entries[2].data = e.entries[2].data.replace("test.append", "test.appenx")
    });
    assert!(matches!(
        &failures(&changed, &log.key)[..],
        [Failure::Entry { index: 9, .. }]
    ));
    let unproven = edit(&subset, |e| e.entries[2].proof.clear());
    assert!(matches!(
        &failures(&unproven, &log.key)[..],
        [Failure::Entry { index: 9, .. }]
    ));
}

#[tokio::test]
async fn two_checkpoints_of_one_size_with_different_roots_are_a_fork() {
    let log = log_with("forks", 8).await;
    let real = checkpoint_now(&log).await;
    let pair = firstkey::emergency::keys::load_pair(&key_dir().join("log").join(format!(
        "{}-{}.pk8",
        log.tenant.id(),
        hex::encode(log.key.id())
    )))
    .unwrap();
    let forged = auditlog::sign_checkpoint(
        &note::Checkpoint {
            origin: real.origin().to_owned(),
            size: real.size(),
            root: [0xee; 32],
        },
        &[pair],
    )
    .unwrap();
    let forged = note::verify_checkpoint(&forged, &log.key).unwrap();
    assert_eq!(
        verify::check_consistent(&real, &forged, &[]),
        Err(Inconsistent::Fork { size: real.size() })
    );
    assert!(matches!(
        verify::check_consistent(&forged, &real, &[]),
        Err(Inconsistent::Fork { .. })
    ));
}

// ---------------------------------------------------------------- witnesses

fn witness_key(seed: u8) -> (ring::signature::Ed25519KeyPair, VerifierKey) {
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
    let key = note::verifier_of(
        &format!("witness{seed}.example/w"),
        note::SIG_COSIGNATURE_V1,
        &pair,
    )
    .unwrap();
    (pair, key)
}

#[tokio::test]
async fn a_witness_cosigns_a_growing_log_and_catches_a_rewritten_one() {
    let log = log_with("witnessed", 6).await;
    let (pair, wkey) = witness_key(5);
    {
        let client = log.app.pool.get().await.unwrap();
        auditlog::add_witness(&client, log.tenant, &wkey, Utc::now())
            .await
            .unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let witness = firstkey::audit::witness::Witness {
        server: log.app.address.clone(),
        municipality: "witnessed".into(),
        log_key: log.key.clone(),
        name: wkey.name().to_owned(),
        key: pair,
        state: state.path().join("state"),
    };
    let http = reqwest::Client::new();
    let now = || Utc::now().timestamp() as u64;
    let first = firstkey::audit::witness::round(&witness, &http, now())
        .await
        .unwrap();
    assert_eq!(first.previous, None);
    // The checkpoint now shows who witnessed it, verifiably.
    let text = log
        .app
        .get("/log/witnessed/checkpoint")
        .await
        .text()
        .await
        .unwrap();
    let cp = note::verify_checkpoint(&text, &log.key).unwrap();
    assert_eq!(cp.size(), first.size);
    assert_eq!(cp.cosigned_by(std::slice::from_ref(&wkey)).len(), 1);
    let (_, json) = call(
        &log.app,
        Method::GET,
        "/api/v1/log/witnessed/checkpoint",
        None,
        None,
    )
    .await;
    assert_eq!(json["witnesses"][0]["name"], wkey.name());
    // A cosignature by an unregistered witness is refused and not stored.
    let (stranger, skey) = witness_key(6);
    let line = note::cosign(cp.body(), skey.name(), &stranger, now())
        .unwrap()
        .line();
    let response = log
        .app
        .http
        .post(format!("{}/log/witnessed/cosignature", log.app.address))
        .body(format!("{}\n{line}", cp.body()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    // The log grows; the witness checks the consistency proof and cosigns again.
    append(&log.app, log.tenant, 11, "more").await;
    let grown = checkpoint_now(&log).await;
    let second = firstkey::audit::witness::round(&witness, &http, now())
        .await
        .unwrap();
    assert_eq!(
        (second.previous, second.size),
        (Some(first.size), grown.size())
    );

    // History is rewritten: the stored subtree over leaves 0..16 (inside what the witness saw, and
    // on the tree's right edge, so the sealer builds on it) changes, the log grows and signs a new
    // checkpoint over the rewritten tree. The witness refuses to cosign.
    {
        let client = log.app.pool.get().await.unwrap();
        client
            .batch_execute(&format!(
                "ALTER TABLE audit_tree_nodes DISABLE TRIGGER audit_tree_nodes_immutable;
                 UPDATE audit_tree_nodes SET hash = sha256(hash)
                  WHERE municipality_id = '{}' AND level = 4 AND idx = 0;
                 ALTER TABLE audit_tree_nodes ENABLE TRIGGER audit_tree_nodes_immutable;",
                log.tenant.id()
            ))
            .await
            .unwrap();
    }
    append(&log.app, log.tenant, 20, "after").await;
    checkpoint_now(&log).await;
    let refused = firstkey::audit::witness::round(&witness, &http, now()).await;
    assert!(
        matches!(
            refused,
            Err(firstkey::audit::witness::WitnessError::Inconsistent(
                Inconsistent::NotAppendOnly { .. }
            ))
        ),
        "{refused:?}"
    );
    // Its state still holds the last good checkpoint, and the CLI witness says the same.
    let kept = note::verify_checkpoint(&std::fs::read_to_string(&witness.state).unwrap(), &log.key)
        .unwrap();
    assert_eq!(kept.size(), grown.size());
    let key_file = state.path().join("w.pk8");
    std::fs::write(
        &key_file,
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_firstkey"))
        .args([
            "witness",
            "run",
            "--once",
            "--server",
            &log.app.address,
            "--municipality",
            "witnessed",
        ])
        .args(["--log-key", &log.key.to_string(), "--name", wkey.name()])
        .arg("--key")
        .arg(&key_file)
        .arg("--state")
        .arg(&witness.state)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not append-only"), "{stderr}");
}

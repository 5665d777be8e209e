//! Black-box tests of the lock agent: taps over the real Unix socket, the real `firstkey-agent`
//! binary under SIGKILL, a rolled-back clock, and the channel client against an in-test TLS
//! server that speaks PROTOCOL.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firstkey_agent::actuator::{DoorEvent, SimulatedActuator};
use firstkey_agent::clock::{Clock, ManualClock, SystemClock};
use firstkey_agent::daemon::{self, RunOptions, Running};
use firstkey_agent::demo::{self, Issuer, TokenSpec};
use firstkey_agent::pairing::PairingCode;
use firstkey_agent::protocol::channel::{
    AgentMessage, ErrorCode, InboxMessage, MAX_CHANNEL_FRAME, ServerMessage,
    decode_agent_message, encode_server_message, verify_hello,
};
use firstkey_agent::protocol::tap::{LockMessage, MAX_TAP_FRAME, Outcome};
use firstkey_agent::protocol::{Bytes, read_frame, write_frame};
use firstkey_agent::receipt::{self, ChainHead};
use firstkey_agent::state::{self, InitParams, ServerConfig, StateDir, Store};
use firstkey_agent::tap_server::{self, PresenterKey, TapAnswer};

const LOCK: &str = "front-door";
const RP: &str = "firstkey.example";

// ---------------------------------------------------------------------------------------------
// helpers

struct Lock {
    _tmp: tempfile::TempDir,
    state: StateDir,
    issuer: Issuer,
}

fn new_lock(bundle_kids: &[&str], server: Option<(&str, &str)>) -> Lock {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::new(tmp.path().join("state"));
    let mut issuer = Issuer::generate("demo-city", RP).unwrap();
    while issuer.keys.len() < 3 {
        issuer.add_key().unwrap();
    }
    let bundle = issuer.bundle(1, bundle_kids).unwrap();
    state::init(
        &state,
        &InitParams {
            lock_id: LOCK.into(),
            root_public_key: issuer.root_public_key().unwrap(),
            trust_bundle: Some(bundle),
            server: server.map(|(address, _)| ServerConfig {
                address: address.into(),
                server_name: "localhost".into(),
            }),
            server_ca_pem: server.map(|(_, pem)| pem.as_bytes().to_vec()),
            hold_ms: 10,
            skew_secs: 60,
        },
    )
    .unwrap();
    Lock {
        _tmp: tmp,
        state,
        issuer,
    }
}

fn ed25519_presenter() -> PresenterKey {
    PresenterKey::from_pkcs8(&demo::new_ed25519_pkcs8().unwrap(), RP).unwrap()
}

fn mint(issuer: &Issuer, kid: &str, now: u64, ttl: u64, key: &PresenterKey) -> Vec<u8> {
    issuer
        .mint(
            kid,
            &TokenSpec {
                lock_id: LOCK.into(),
                not_before: now.saturating_sub(5),
                expires_at: now + ttl,
                max_uses: 1,
                confirmation: Some(demo::confirmation_key(key)),
            },
        )
        .unwrap()
}

fn start_agent(lock: &Lock, clock: Arc<dyn Clock>) -> Running {
    daemon::start(
        &RunOptions {
            state_dir: lock.state.clone(),
            tap_socket: None,
            channel_timing: Some((
                Duration::from_millis(20),
                Duration::from_millis(200),
                Duration::from_secs(5),
            )),
        },
        clock,
        None,
    )
    .unwrap()
}

async fn tap(running: &Running, token: &[u8], key: &PresenterKey) -> TapAnswer {
    tap_server::tap(&running.tap_socket, token, Some(key))
        .await
        .unwrap()
}

fn device_public_key(running: &Running) -> [u8; 32] {
    *running.door.lock().unwrap().store().device_public_key()
}

/// Verify the whole receipt chain in the state dir and return the bodies.
fn chain_bodies(state: &StateDir, pubkey: &[u8]) -> Vec<receipt::ReceiptBody> {
    let bytes = std::fs::read(state.file("receipts.log")).unwrap_or_default();
    let records = firstkey_agent::durable::scan_records(&bytes);
    let head = receipt::verify_chain(
        records.iter().map(Vec::as_slice),
        pubkey,
        LOCK,
        ChainHead::GENESIS,
    )
    .unwrap();
    assert_eq!(head.seq as usize, records.len());
    records
        .iter()
        .map(|r| receipt::verify_one(r, pubkey).unwrap().body)
        .collect()
}

fn last_reason(running: &Running) -> String {
    let d = running.door.lock().unwrap();
    let s = d.store();
    let last = s.receipts().last().unwrap();
    receipt::verify_one(last, s.device_public_key())
        .unwrap()
        .body
        .reason
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// taps over the socket

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taps_over_the_socket_allow_once_and_deny_everything_else() {
    let lock = new_lock(&["k1"], None);
    let now = SystemClock.now();
    let running = start_agent(&lock, Arc::new(SystemClock));
    let pubkey = device_public_key(&running);

    // Ed25519 proof of possession: allowed once, then replayed.
    let ed = ed25519_presenter();
    let t1 = mint(&lock.issuer, "k1", now, 600, &ed);
    let a = tap(&running, &t1, &ed).await;
    assert_eq!(a.outcome, Outcome::Allow);
    assert!(a.ack.verify(&pubkey, &a.challenge, LOCK, Outcome::Allow));
    assert!(!a.ack.verify(&pubkey, &a.challenge, LOCK, Outcome::Deny));
    assert_eq!(tap(&running, &t1, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "replayed");

    // P-256 key answering like a FIDO2 security key.
    let p256 = PresenterKey::from_pkcs8(&demo::new_p256_pkcs8().unwrap(), RP).unwrap();
    let t2 = mint(&lock.issuer, "k1", now, 600, &p256);
    assert_eq!(tap(&running, &t2, &p256).await.outcome, Outcome::Allow);

    // A stolen token presented with someone else's key.
    let t3 = mint(&lock.issuer, "k1", now, 600, &ed);
    let thief = ed25519_presenter();
    assert_eq!(tap(&running, &t3, &thief).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "proof_invalid");
    // ... and with no proof at all.
    let bare = tap_server::tap(&running.tap_socket, &t3, None).await.unwrap();
    assert_eq!(bare.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "proof_missing");
    // The rightful holder still gets in: failed attempts do not spend the token.
    assert_eq!(tap(&running, &t3, &ed).await.outcome, Outcome::Allow);

    // A token for another lock, and one from a key not in the bundle.
    let other = lock
        .issuer
        .mint(
            "k1",
            &TokenSpec {
                lock_id: "back-door".into(),
                not_before: now,
                expires_at: now + 600,
                max_uses: 1,
                confirmation: Some(demo::confirmation_key(&ed)),
            },
        )
        .unwrap();
    assert_eq!(tap(&running, &other, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "wrong_lock");
    let t4 = mint(&lock.issuer, "k2", now, 600, &ed);
    assert_eq!(tap(&running, &t4, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "unknown_key");

    // Malformed and oversize frames: a deny with a receipt, and the agent keeps serving.
    for payload in [vec![0xff, 0x00, 0x13], vec![]] {
        let answer = raw_exchange(&running.tap_socket, &payload).await;
        assert_eq!(answer, Some(Outcome::Deny));
        assert_eq!(last_reason(&running), "malformed_frame");
    }
    let mut s = tokio::net::UnixStream::connect(&running.tap_socket).await.unwrap();
    read_frame(&mut s, MAX_TAP_FRAME).await.unwrap().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, &u32::MAX.to_be_bytes())
        .await
        .unwrap();
    let answer = read_frame(&mut s, MAX_TAP_FRAME).await.unwrap().unwrap();
    assert!(matches!(
        firstkey_agent::protocol::tap::decode_lock_message(&answer).unwrap(),
        LockMessage::Decision {
            outcome: Outcome::Deny,
            ..
        }
    ));
    let t5 = mint(&lock.issuer, "k1", now, 600, &ed);
    assert_eq!(tap(&running, &t5, &ed).await.outcome, Outcome::Allow);

    // Every decision is in the verified chain; the door opened exactly for the four allows.
    let bodies = chain_bodies(&lock.state, &pubkey);
    let allows: Vec<u64> = bodies
        .iter()
        .filter(|b| b.outcome == Outcome::Allow)
        .map(|b| b.seq)
        .collect();
    assert_eq!(allows.len(), 4);
    assert_eq!(bodies.len(), 12);
    let opens: Vec<u64> = SimulatedActuator::events(lock.state.root())
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            DoorEvent::Open { receipt_seq, .. } => Some(receipt_seq),
            DoorEvent::Close { .. } => None,
        })
        .collect();
    assert_eq!(opens, allows);
}

/// Send one raw payload after the challenge; return the outcome the lock answered.
async fn raw_exchange(socket: &Path, payload: &[u8]) -> Option<Outcome> {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    read_frame(&mut s, MAX_TAP_FRAME).await.unwrap().unwrap();
    write_frame(&mut s, payload, MAX_TAP_FRAME).await.unwrap();
    let answer = read_frame(&mut s, MAX_TAP_FRAME).await.unwrap()?;
    match firstkey_agent::protocol::tap::decode_lock_message(&answer).unwrap() {
        LockMessage::Decision { outcome, .. } => Some(outcome),
        LockMessage::Challenge { .. } => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presenter_who_hangs_up_leaves_no_receipt() {
    let lock = new_lock(&["k1"], None);
    let running = start_agent(&lock, Arc::new(SystemClock));
    {
        let mut s = tokio::net::UnixStream::connect(&running.tap_socket).await.unwrap();
        read_frame(&mut s, MAX_TAP_FRAME).await.unwrap().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(running.door.lock().unwrap().store().head().seq, 0);
}

// ---------------------------------------------------------------------------------------------
// clock rollback

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_set_back_never_revives_old_tokens() {
    let lock = new_lock(&["k1"], None);
    let t0 = 1_800_000_000;
    let clock = ManualClock::new(t0);
    let ed = ed25519_presenter();
    // Valid for 10 minutes from t0.
    let short = mint(&lock.issuer, "k1", t0, 600, &ed);
    {
        let running = start_agent(&lock, Arc::new(clock.clone()));
        // A day later the short token is expired.
        clock.set(t0 + 86_400);
        assert_eq!(tap(&running, &short, &ed).await.outcome, Outcome::Deny);
        assert_eq!(last_reason(&running), "expired");
        // Someone sets the clock back into the token's window: still refused.
        clock.set(t0 + 60);
        assert_eq!(tap(&running, &short, &ed).await.outcome, Outcome::Deny);
        assert_eq!(last_reason(&running), "clock_behind_floor");
        // A fresh token minted "now" by the rolled-back clock is refused too: the lock trusts
        // no time below its floor.
        let fresh = mint(&lock.issuer, "k1", t0 + 60, 600, &ed);
        assert_eq!(tap(&running, &fresh, &ed).await.outcome, Outcome::Deny);
        running.stop().await;
    }
    // The floor survives a restart: reopen with the clock still set back.
    let running = start_agent(&lock, Arc::new(clock.clone()));
    assert!(running.door.lock().unwrap().store().floor() >= t0 + 86_400);
    assert_eq!(tap(&running, &short, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "clock_behind_floor");
    // Once the clock is right again, tokens valid now work.
    clock.set(t0 + 86_500);
    let now_token = mint(&lock.issuer, "k1", t0 + 86_500, 600, &ed);
    assert_eq!(tap(&running, &now_token, &ed).await.outcome, Outcome::Allow);
}

// ---------------------------------------------------------------------------------------------
// crash safety under SIGKILL, with the real binary

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn sigkill_at_random_moments_never_lets_a_token_in_twice_nor_loses_a_receipt() {
    let rounds: u64 = std::env::var("FIRSTKEY_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed = SystemClock.now() ^ 0x9e37_79b9_7f4a_7c15;
    eprintln!("crash test seed {seed:#x}, {rounds} rounds");
    let mut rng = XorShift(seed | 1);
    let lock = new_lock(&["k1"], None);
    let bin = env!("CARGO_BIN_EXE_firstkey-agent");
    let socket = lock.state.tap_socket();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ed = ed25519_presenter();
    let now = SystemClock.now();

    let mut tokens: Vec<Vec<u8>> = Vec::new();
    let mut allow_answers: HashMap<usize, Vec<(u64, [u8; 32])>> = HashMap::new();
    let (mut taps, mut answered, mut allows, mut retries, mut kills, mut cut_short) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    for _round in 0..rounds {
        let mut child = std::process::Command::new(bin)
            .args(["run", "--state-dir"])
            .arg(lock.state.root())
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // SIGKILL from another thread at a random moment: one round in ten during start-up and
        // recovery, otherwise between taps or in the middle of one.
        let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let during_startup = rng.below(10) == 0;
        if !during_startup {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                assert!(Instant::now() < deadline, "agent did not come up");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let delay = Duration::from_millis(if during_startup {
            rng.below(20)
        } else {
            rng.below(150)
        });
        let killer = {
            let killed = killed.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                child.kill().unwrap();
                killed.store(true, std::sync::atomic::Ordering::SeqCst);
                child.wait().unwrap();
            })
        };
        while !killed.load(std::sync::atomic::Ordering::SeqCst) {
            let retry = !tokens.is_empty() && rng.below(100) < 30;
            let idx = if retry {
                rng.below(tokens.len() as u64) as usize
            } else {
                tokens.push(mint(&lock.issuer, "k1", now, 3600, &ed));
                tokens.len() - 1
            };
            let result = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    tap_server::tap(&socket, &tokens[idx], Some(&ed)),
                )
                .await
            });
            match result {
                Ok(Ok(a)) => {
                    taps += 1;
                    retries += u64::from(retry);
                    answered += 1;
                    if a.outcome == Outcome::Allow {
                        allows += 1;
                        allow_answers
                            .entry(idx)
                            .or_default()
                            .push((a.ack.seq, a.ack.receipt_hash.0));
                    }
                }
                // Not listening yet (starting up), or killed under us.
                Ok(Err(_)) | Err(_) => {
                    if killed.load(std::sync::atomic::Ordering::SeqCst) {
                        taps += 1;
                        retries += u64::from(retry);
                        cut_short += 1;
                    } else {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        killer.join().unwrap();
        kills += 1;
    }
    let elapsed = started.elapsed();

    // Recover the state as the next start would, and check everything.
    let store = Store::open(&lock.state).unwrap();
    let pubkey = *store.device_public_key();
    let records = store.receipts().to_vec();
    let head = receipt::verify_chain(
        records.iter().map(Vec::as_slice),
        &pubkey,
        LOCK,
        ChainHead::GENESIS,
    )
    .unwrap();
    let bodies: Vec<_> = records
        .iter()
        .map(|r| receipt::verify_one(r, &pubkey).unwrap())
        .collect();
    let hash_to_idx: HashMap<[u8; 32], usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (firstkey_token::token_hash(t).0, i))
        .collect();
    let mut allowed_tokens = HashSet::new();
    let mut allow_receipts = BTreeMap::new();
    for r in &bodies {
        if r.body.outcome == Outcome::Allow {
            let idx = hash_to_idx[&r.body.token_hash.unwrap().0];
            assert!(
                allowed_tokens.insert(idx),
                "token {idx} has two allow receipts"
            );
            allow_receipts.insert(r.body.seq, (r.hash, idx));
        }
    }
    for (idx, answers) in &allow_answers {
        assert_eq!(answers.len(), 1, "token {idx} was answered allow {} times", answers.len());
        let (seq, hash) = answers[0];
        assert_eq!(
            allow_receipts.get(&seq),
            Some(&(hash, *idx)),
            "the receipt for an answered allow is missing or different"
        );
    }
    let opens: Vec<u64> = SimulatedActuator::events(lock.state.root())
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            DoorEvent::Open { receipt_seq, .. } => Some(receipt_seq),
            DoorEvent::Close { .. } => None,
        })
        .collect();
    let distinct: HashSet<u64> = opens.iter().copied().collect();
    assert_eq!(distinct.len(), opens.len(), "the door opened twice for one receipt");
    for seq in &opens {
        assert!(allow_receipts.contains_key(seq), "door opened without an allow receipt");
    }
    for answers in allow_answers.values() {
        assert!(distinct.contains(&answers[0].0), "answered allow but the door never opened");
    }
    eprintln!(
        "crash test: {rounds} rounds, {kills} SIGKILLs ({cut_short} cut a tap short), {taps} taps \
         ({retries} retries of earlier tokens), {answered} answered, {allows} allowed, \
         {} receipts in the verified chain, {} door openings, {:.1}s",
        head.seq,
        opens.len(),
        elapsed.as_secs_f64()
    );
    // The test must be able to fail: it has to have exercised allows and replays.
    assert!(allows >= rounds / 10, "too few allows ({allows}) to mean anything");
    assert!(bodies.iter().any(|r| r.body.reason == "replayed"));
}

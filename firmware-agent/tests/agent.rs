//! Black-box tests of the lock agent: taps over the real Unix socket, the real `firstkey-agent`
//! binary under SIGKILL, a rolled-back clock, and the channel client against an in-test TLS
//! server that speaks PROTOCOL.md.

// Test code: a panic is how a test fails, and helpers outside #[test] fns are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firstkey_agent::actuator::{DoorEvent, SimulatedActuator};
use firstkey_agent::clock::{Clock, ManualClock, SystemClock};
use firstkey_agent::daemon::{self, RunOptions, Running};
use firstkey_agent::demo::{self, Issuer, TokenSpec};
use firstkey_agent::pairing::PairingCode;
use firstkey_agent::protocol::channel::{
    AgentMessage, ErrorCode, InboxMessage, MAX_CHANNEL_FRAME, ServerMessage, decode_agent_message,
    encode_server_message, verify_hello,
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
    new_lock_in(tempfile::tempdir().unwrap(), bundle_kids, server)
}

fn new_lock_in(tmp: tempfile::TempDir, bundle_kids: &[&str], server: Option<(&str, &str)>) -> Lock {
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
            door_panel: None,
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
    let records: Vec<Vec<u8>> = firstkey_agent::durable::scan_records(&bytes)
        .iter()
        .map(|r| receipt::log_record_receipt(r))
        .collect();
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
    let last = s.receipts().pop().unwrap();
    receipt::verify_one(&last, s.device_public_key())
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
    let bare = tap_server::tap(&running.tap_socket, &t3, None)
        .await
        .unwrap();
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

    // Malformed and oversize frames: no decision, no receipt, counted; the agent keeps serving.
    let head = running.door.lock().unwrap().store().head().seq;
    for payload in [vec![0xff, 0x00, 0x13], vec![]] {
        let answer = raw_exchange(&running.tap_socket, &payload).await;
        assert_eq!(answer, None);
    }
    let mut s = tokio::net::UnixStream::connect(&running.tap_socket)
        .await
        .unwrap();
    read_frame(&mut s, MAX_TAP_FRAME).await.unwrap().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, &u32::MAX.to_be_bytes())
        .await
        .unwrap();
    assert!(read_frame(&mut s, MAX_TAP_FRAME).await.unwrap().is_none());
    {
        let d = running.door.lock().unwrap();
        assert_eq!(
            d.store().head().seq,
            head,
            "a malformed frame wrote a receipt"
        );
        assert_eq!(d.store().status().malformed_frames.count, 3);
    }
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
    assert_eq!(bodies.len(), 9);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_tap_frames_write_no_receipt_and_a_bounded_tally() {
    let lock = new_lock_in(fast_tempdir(), &["k1"], None);
    let running = start_agent(&lock, Arc::new(SystemClock));
    let log_len = || {
        std::fs::metadata(lock.state.file("receipts.log"))
            .unwrap()
            .len()
    };
    let before = log_len();
    let writes_before = running.door.lock().unwrap().store().durable_writes();
    for i in 0..10_000u32 {
        let junk = i.to_be_bytes();
        assert_eq!(raw_exchange(&running.tap_socket, &junk).await, None);
    }
    let (writes, count, head) = {
        let d = running.door.lock().unwrap();
        let s = d.store();
        (
            s.durable_writes() - writes_before,
            s.status().malformed_frames.count,
            s.head().seq,
        )
    };
    eprintln!("10,000 malformed tap frames: {writes} durable writes, receipt log +0 bytes");
    assert_eq!(log_len(), before);
    assert_eq!(head, 0);
    assert_eq!(count, 10_000);
    // One write per minute of the lock's clock at most, plus the first.
    assert!(writes <= 3, "{writes} durable writes");
    running.stop().await;
    assert_eq!(
        state::peek_status(&lock.state)
            .unwrap()
            .malformed_frames
            .count,
        10_000
    );
}

/// Send one raw payload after the challenge; return the outcome the lock answered (`None`: it
/// closed without a decision).
async fn raw_exchange(socket: &Path, payload: &[u8]) -> Option<Outcome> {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    read_frame(&mut s, MAX_TAP_FRAME).await.unwrap().unwrap();
    write_frame(&mut s, payload, MAX_TAP_FRAME).await.unwrap();
    let answer = read_frame(&mut s, MAX_TAP_FRAME).await.unwrap()?;
    match firstkey_agent::protocol::tap::decode_lock_message(&answer).unwrap() {
        LockMessage::Decision { outcome, .. } => Some(outcome),
        LockMessage::Challenge { .. } | LockMessage::KeypadLocked { .. } => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presenter_who_hangs_up_leaves_no_receipt() {
    let lock = new_lock(&["k1"], None);
    let running = start_agent(&lock, Arc::new(SystemClock));
    {
        let mut s = tokio::net::UnixStream::connect(&running.tap_socket)
            .await
            .unwrap();
        read_frame(&mut s, MAX_TAP_FRAME).await.unwrap().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(running.door.lock().unwrap().store().head().seq, 0);
}

// ---------------------------------------------------------------------------------------------
// clock rollback

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_set_back_never_revives_spent_or_expired_tokens() {
    let lock = new_lock(&["k1"], None);
    let t0 = 1_800_000_000;
    let day = 86_400;
    let clock = ManualClock::new(t0);
    let ed = ed25519_presenter();
    let spent = mint(&lock.issuer, "k1", t0, 2 * day, &ed);
    // Valid for 10 minutes from t0, never used.
    let short = mint(&lock.issuer, "k1", t0, 600, &ed);
    {
        let running = start_agent(&lock, Arc::new(clock.clone()));
        assert_eq!(tap(&running, &spent, &ed).await.outcome, Outcome::Allow);
        // A day later a fresh token (minted a day later: trusted time) is used.
        clock.set(t0 + day);
        let later = mint(&lock.issuer, "k1", t0 + day, 600, &ed);
        assert_eq!(tap(&running, &later, &ed).await.outcome, Outcome::Allow);
        assert!(running.door.lock().unwrap().store().floor() >= t0 + day - 5);
        assert_eq!(tap(&running, &short, &ed).await.outcome, Outcome::Deny);
        assert_eq!(last_reason(&running), "expired");
        // Someone sets the clock back into the short token's window: refused, and the spent
        // token stays spent.
        clock.set(t0 + 60);
        assert_eq!(tap(&running, &short, &ed).await.outcome, Outcome::Deny);
        assert_eq!(last_reason(&running), "clock_behind_floor");
        assert_eq!(tap(&running, &spent, &ed).await.outcome, Outcome::Deny);
        running.stop().await;
    }
    // The floor and the replay records survive a restart with the clock still set back.
    let running = start_agent(&lock, Arc::new(clock.clone()));
    assert!(running.door.lock().unwrap().store().floor() >= t0 + day - 5);
    assert_eq!(tap(&running, &short, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "clock_behind_floor");
    assert_eq!(tap(&running, &spent, &ed).await.outcome, Outcome::Deny);
    // Once the clock is right again: the spent token is still spent, the short one expired,
    // tokens valid now work.
    clock.set(t0 + day + 100);
    assert_eq!(tap(&running, &spent, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "replayed");
    assert_eq!(tap(&running, &short, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "expired");
    let now_token = mint(&lock.issuer, "k1", t0 + day + 100, 600, &ed);
    assert_eq!(tap(&running, &now_token, &ed).await.outcome, Outcome::Allow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_that_jumped_days_ahead_does_not_lock_out_fresh_tokens() {
    let lock = new_lock(&["k1"], None);
    let t0 = 1_800_000_000;
    let clock = ManualClock::new(t0);
    let ed = ed25519_presenter();
    let spent = mint(&lock.issuer, "k1", t0, 600, &ed);
    let short = mint(&lock.issuer, "k1", t0, 600, &ed);
    {
        let running = start_agent(&lock, Arc::new(clock.clone()));
        assert_eq!(tap(&running, &spent, &ed).await.outcome, Outcome::Allow);
        // The RTC jumps two days ahead (a bad battery, a spoofed time source): tokens minted
        // now look expired, and a token minted "in two days" cannot exist.
        clock.set(t0 + 2 * 86_400);
        assert_eq!(tap(&running, &short, &ed).await.outcome, Outcome::Deny);
        assert_eq!(last_reason(&running), "expired");
        // The lock's own clock did not move the floor.
        assert!(running.door.lock().unwrap().store().floor() <= t0);
        running.stop().await;
    }
    // Back at real time (and after a restart): fresh tokens get in at once.
    clock.set(t0 + 120);
    let running = start_agent(&lock, Arc::new(clock.clone()));
    let fresh = mint(&lock.issuer, "k1", t0 + 120, 600, &ed);
    assert_eq!(tap(&running, &fresh, &ed).await.outcome, Outcome::Allow);
    let unused = mint(&lock.issuer, "k1", t0 + 100, 600, &ed);
    assert_eq!(tap(&running, &unused, &ed).await.outcome, Outcome::Allow);
    // ... and the spent one stays spent.
    assert_eq!(tap(&running, &spent, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_time_over_the_channel_raises_the_floor_and_the_local_clock_does_not() {
    let server = FakeServer::start().await;
    let t0 = 1_800_000_000;
    server.state().server_time = Some(t0 + 3600);
    let lock = new_lock(&["k1"], Some((&server.addr, &server.ca_pem)));
    let clock = ManualClock::new(t0 + 7 * 86_400);
    let ed = ed25519_presenter();
    let running = start_agent(&lock, Arc::new(clock.clone()));
    wait_until("the server's time applied", || {
        running.door.lock().unwrap().store().floor() == t0 + 3600 - 60
    })
    .await;
    // The clock set back below the server's time: refused.
    clock.set(t0);
    let old = mint(&lock.issuer, "k1", t0, 600, &ed);
    assert_eq!(tap(&running, &old, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "clock_behind_floor");
    clock.set(t0 + 3600);
    let fresh = mint(&lock.issuer, "k1", t0 + 3600, 600, &ed);
    assert_eq!(tap(&running, &fresh, &ed).await.outcome, Outcome::Allow);
    running.stop().await;
    // The fresh token's `iat` (its `nbf`, 5 s before) raised the floor further; it is durable.
    let store = reopen_store(&lock.state, None);
    assert_eq!(store.floor(), t0 + 3595);
}

/// The floor a token raises rides in its receipt's log record: a decision is one durable write,
/// the floor survives a restart with the receipt, and a crash that tears the record takes both
/// (the token is then unused and the floor where it was). Logs in the older framing (bare
/// receipts, floor in its own file only) still open.
#[test]
fn a_tap_is_one_durable_write_and_its_floor_lives_and_dies_with_its_receipt() {
    use firstkey_agent::door::Door;
    let lock = new_lock(&["k1"], None);
    let t0 = 1_800_000_000;
    let clock = ManualClock::new(t0 + 200);
    let ed = ed25519_presenter();
    let open_door = || {
        Door::new(
            Store::open(&lock.state).unwrap(),
            Box::new(SimulatedActuator::new(lock.state.root())),
            Arc::new(clock.clone()),
        )
    };
    let tap_door = |door: &mut Door, token: &[u8]| {
        let c = door.new_challenge().unwrap();
        let msg = tap_server::respond(&c.0, LOCK, token, Some(&ed)).unwrap();
        let d = door.decide(&c, msg).unwrap();
        d.outcome
    };
    let log = lock.state.file("receipts.log");

    let mut door = open_door();
    let first = mint(&lock.issuer, "k1", t0 + 100, 3600, &ed);
    let writes = door.store().durable_writes();
    assert_eq!(tap_door(&mut door, &first), Outcome::Allow);
    assert_eq!(
        door.store().durable_writes() - writes,
        1,
        "one durable write"
    );
    // `max(iat, nbf)` of the token: its `nbf`, 5 s before the minting time.
    assert_eq!(door.store().floor(), t0 + 95);
    assert!(
        !lock.state.file("floor").exists(),
        "the floor file was written"
    );
    drop(door);
    let mut door = open_door();
    assert_eq!(
        door.store().floor(),
        t0 + 95,
        "the floor survives a restart"
    );
    assert_eq!(state::peek_status(&lock.state).unwrap().time_floor, t0 + 95);
    assert_eq!(tap_door(&mut door, &first), Outcome::Deny);

    // A second token raises the floor; a crash tears its record: receipt and floor go together.
    let second = mint(&lock.issuer, "k1", t0 + 150, 3600, &ed);
    let before = std::fs::metadata(&log).unwrap().len();
    assert_eq!(tap_door(&mut door, &second), Outcome::Allow);
    assert_eq!(door.store().floor(), t0 + 145);
    drop(door);
    let after = std::fs::metadata(&log).unwrap().len();
    let torn = before + (after - before) / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(torn)
        .unwrap();
    let mut door = open_door();
    assert_eq!(door.store().head().seq, 2);
    assert_eq!(
        door.store().floor(),
        t0 + 95,
        "the torn record's floor is gone"
    );
    // Its use is gone with it (nothing happened): the token opens once, now.
    assert_eq!(tap_door(&mut door, &second), Outcome::Allow);
    assert_eq!(tap_door(&mut door, &second), Outcome::Deny);
    assert_eq!(door.store().floor(), t0 + 145);
    drop(door);

    // The older framing: bare receipts, the floor in its own file.
    let bare: Vec<Vec<u8>> = {
        let store = Store::open(&lock.state).unwrap();
        store.receipts()
    };
    let (mut raw, _) = firstkey_agent::durable::AppendLog::open(&log).unwrap();
    raw.rewrite(bare).unwrap();
    drop(raw);
    let store = Store::open(&lock.state).unwrap();
    assert_eq!(store.halted(), None);
    assert_eq!(store.head().seq, 4);
    assert_eq!(store.floor(), 0, "bare receipts carry no floor");
    drop(store);
    let mut door = open_door();
    assert_eq!(tap_door(&mut door, &first), Outcome::Deny);
    assert_eq!(tap_door(&mut door, &second), Outcome::Deny);
    assert_eq!(last_reason_of(&door), "replayed");
    let third = mint(&lock.issuer, "k1", t0 + 190, 3600, &ed);
    assert_eq!(tap_door(&mut door, &third), Outcome::Allow);
    assert_eq!(door.store().floor(), t0 + 185);
    drop(door);
    let pubkey = *Store::open(&lock.state).unwrap().device_public_key();
    assert_eq!(chain_bodies(&lock.state, &pubkey).len(), 7);
}

fn last_reason_of(door: &firstkey_agent::door::Door) -> String {
    let s = door.store();
    let last = s.receipts().pop().unwrap();
    receipt::verify_one(&last, s.device_public_key())
        .unwrap()
        .body
        .reason
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
    let lock = new_lock(&["k1"], None);
    crash_rounds(&lock, rounds, seed, None);
}

/// The SIGKILL crash test on a nearly full file system: before every round the disk is filled to
/// leave 0 to 3 pages free, so receipt appends, floor and tally writes and the door's log fail
/// with ENOSPC (often after a short write) between and during the kills.
#[test]
fn sigkill_on_a_nearly_full_disk_never_lets_a_token_in_twice_nor_loses_a_receipt() {
    let Some(fs) = SmallFs::mount("200k") else {
        return;
    };
    let rounds: u64 = std::env::var("FIRSTKEY_DISKFULL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seed = SystemClock.now() ^ 0x5151_d15c_f011;
    eprintln!("disk-full crash test seed {seed:#x}, {rounds} rounds");
    let lock = new_lock_in(tempfile::tempdir_in(fs.path()).unwrap(), &["k1"], None);
    crash_rounds(&lock, rounds, seed, Some(&fs));
}

/// Run the real binary `rounds` times, SIGKILLing it at random moments while tapping (new tokens
/// and retries of earlier ones), then check the recovered state. With `disk`, each round starts
/// with the disk nearly full.
fn crash_rounds(lock: &Lock, rounds: u64, seed: u64, disk: Option<&SmallFs>) {
    let mut rng = XorShift(seed | 1);
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
    let mut refused = 0u64;
    for _round in 0..rounds {
        if let Some(fs) = disk {
            fs.fill_leaving(rng.below(3 * 4096));
        }
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
                // Not listening yet (starting up), killed under us, or refused (disk full).
                Ok(Err(e)) => {
                    if killed.load(std::sync::atomic::Ordering::SeqCst) {
                        taps += 1;
                        retries += u64::from(retry);
                        cut_short += 1;
                    } else {
                        if matches!(e, tap_server::TapError::Protocol(_)) {
                            // The lock read the presentation and closed without a decision.
                            taps += 1;
                            refused += 1;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                Err(_) => {
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

    // Recover the state as the next start would, and check everything. Nothing was appended
    // after stray bytes (at most a torn tail).
    if let Some(fs) = disk {
        fs.unfill();
    }
    let bytes = std::fs::read(lock.state.file("receipts.log")).unwrap();
    let found = firstkey_agent::durable::inspect(&bytes);
    assert!(
        found.damage.is_empty(),
        "receipt log damaged: {:?}",
        found.damage
    );
    let store = reopen_store(&lock.state, None);
    assert_eq!(store.halted(), None);
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
        assert_eq!(
            answers.len(),
            1,
            "token {idx} was answered allow {} times",
            answers.len()
        );
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
    assert_eq!(
        distinct.len(),
        opens.len(),
        "the door opened twice for one receipt"
    );
    for seq in &opens {
        assert!(
            allow_receipts.contains_key(seq),
            "door opened without an allow receipt"
        );
    }
    for answers in allow_answers.values() {
        assert!(
            distinct.contains(&answers[0].0),
            "answered allow but the door never opened"
        );
    }
    eprintln!(
        "crash test{}: {rounds} rounds, {kills} SIGKILLs ({cut_short} cut a tap short), {taps} \
         taps ({retries} retries of earlier tokens), {answered} answered, {allows} allowed, \
         {refused} refused without a decision, 0 double allows, {} receipts in the verified \
         chain, {} door openings, {:.1}s",
        if disk.is_some() {
            " (nearly full disk)"
        } else {
            ""
        },
        head.seq,
        opens.len(),
        elapsed.as_secs_f64()
    );
    // The test must be able to fail: it has to have exercised allows and replays.
    assert!(
        allows >= rounds / 10,
        "too few allows ({allows}) to mean anything"
    );
    if disk.is_some() {
        assert!(
            refused > 0,
            "the disk never got full enough to refuse a tap"
        );
    }
    assert!(bodies.iter().any(|r| r.body.reason == "replayed"));
}

// ---------------------------------------------------------------------------------------------
// the channel, against an in-test TLS server speaking PROTOCOL.md

#[derive(Default)]
struct ServerState {
    /// The lock's inbox: (seq, message).
    inbox: Vec<(u64, InboxMessage)>,
    /// Highest seq the agent acknowledged.
    acked: u64,
    /// Every Ack seq received, in order.
    acks: Vec<u64>,
    /// `resume_after` of every Hello.
    hellos: Vec<u64>,
    /// Stored receipts by seq.
    receipts: BTreeMap<u64, Vec<u8>>,
    /// How many times each receipt seq arrived.
    receipt_deliveries: BTreeMap<u64, u32>,
    /// Battery reports.
    batteries: Vec<Option<u8>>,
    /// Handshakes refused.
    refused: u32,
    /// Misbehave on the next connection: send this (already acknowledged) message again first.
    resend_on_connect: Option<(u64, InboxMessage)>,
    /// Deliver the inbox only from this connection number on (1-based), to keep a lock "offline
    /// from the inbox" while it is connected.
    connections: u32,
    /// Send `Time { now }` after `Welcome`.
    server_time: Option<u64>,
}

struct FakeServer {
    addr: String,
    ca_pem: String,
    state: Arc<Mutex<ServerState>>,
    pushed: Arc<tokio::sync::Notify>,
    kick: tokio::sync::watch::Sender<u64>,
    accept_task: tokio::task::JoinHandle<()>,
    /// The pairing code the "homeowner" typed.
    expected_code: Arc<Mutex<Option<PairingCode>>>,
}

impl FakeServer {
    /// Listen on 127.0.0.1 with a fresh self-signed certificate for `localhost`.
    async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    async fn start_on(addr: &str) -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let ca_pem = certified.cert.pem();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(ServerState::default()));
        let pushed = Arc::new(tokio::sync::Notify::new());
        let (kick, kick_rx) = tokio::sync::watch::channel(0u64);
        let expected_code = Arc::new(Mutex::new(None));
        let accept_task = {
            let state = state.clone();
            let pushed = pushed.clone();
            let expected_code = expected_code.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let acceptor = acceptor.clone();
                    let state = state.clone();
                    let pushed = pushed.clone();
                    let kick_rx = kick_rx.clone();
                    let expected_code = expected_code.clone();
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            serve_agent(tls, state, pushed, kick_rx, expected_code).await;
                        }
                    });
                }
            })
        };
        Self {
            addr,
            ca_pem,
            state,
            pushed,
            kick,
            accept_task,
            expected_code,
        }
    }

    fn push(&self, message: InboxMessage) -> u64 {
        let mut s = self.state.lock().unwrap();
        // Gaps are allowed: sequence numbers count in tens here.
        let seq = s.inbox.last().map_or(10, |(q, _)| q + 10);
        s.inbox.push((seq, message));
        drop(s);
        self.pushed.notify_waiters();
        seq
    }

    /// Drop every open connection (the agent reconnects with backoff).
    fn disconnect_all(&self) {
        self.kick.send_modify(|k| *k += 1);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ServerState> {
        self.state.lock().unwrap()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.disconnect_all();
    }
}

async fn send_server<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, m: &ServerMessage) -> bool {
    write_frame(w, &encode_server_message(m).unwrap(), MAX_CHANNEL_FRAME)
        .await
        .is_ok()
}

/// The server side of one connection, as PROTOCOL.md describes it.
async fn serve_agent(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    state: Arc<Mutex<ServerState>>,
    pushed: Arc<tokio::sync::Notify>,
    mut kick: tokio::sync::watch::Receiver<u64>,
    expected_code: Arc<Mutex<Option<PairingCode>>>,
) {
    // Only kicks after this connection opened count.
    kick.borrow_and_update();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let nonce: [u8; 32] =
        std::array::from_fn(|i| (SystemClock.now() as u8).wrapping_add(i as u8 * 7));
    if !send_server(
        &mut wr,
        &ServerMessage::Challenge {
            version: 1,
            nonce: Bytes(nonce),
        },
    )
    .await
    {
        return;
    }
    let Ok(Some(hello)) = read_frame(&mut rd, MAX_CHANNEL_FRAME).await else {
        return;
    };
    let Ok(AgentMessage::Hello {
        lock_id,
        device_public_key,
        resume_after,
        signature,
        ..
    }) = decode_agent_message(&hello)
    else {
        return;
    };
    // Pairing: the code the homeowner typed must be the one derived from the key the agent proves.
    let code_ok = expected_code
        .lock()
        .unwrap()
        .as_ref()
        .is_none_or(|c| c.matches(&PairingCode::derive(&device_public_key.0, &lock_id)));
    if !code_ok
        || !verify_hello(
            &device_public_key.0,
            &nonce,
            &lock_id,
            "localhost",
            &signature,
        )
    {
        state.lock().unwrap().refused += 1;
        send_server(
            &mut wr,
            &ServerMessage::Error {
                code: ErrorCode::AuthenticationFailed,
            },
        )
        .await;
        return;
    }
    let receipts_through = {
        let mut s = state.lock().unwrap();
        s.hellos.push(resume_after);
        s.connections += 1;
        let mut through = 0;
        while s.receipts.contains_key(&(through + 1)) {
            through += 1;
        }
        through
    };
    if !send_server(&mut wr, &ServerMessage::Welcome { receipts_through }).await {
        return;
    }
    let server_time = state.lock().unwrap().server_time;
    if let Some(now) = server_time
        && !send_server(&mut wr, &ServerMessage::Time { now }).await
    {
        return;
    }
    let resend = state.lock().unwrap().resend_on_connect.take();
    if let Some((seq, message)) = resend
        && !send_server(&mut wr, &ServerMessage::Inbox { seq, message }).await
    {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let reader = tokio::spawn(async move {
        while let Ok(Some(frame)) = read_frame(&mut rd, MAX_CHANNEL_FRAME).await {
            if tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    let mut sent_through = resume_after;
    loop {
        // Registered before looking, so a push between the look and the wait is not missed.
        let notified = pushed.notified();
        // Deliver whatever is newer than what this connection has sent.
        let due: Vec<(u64, InboxMessage)> = state
            .lock()
            .unwrap()
            .inbox
            .iter()
            .filter(|(seq, _)| *seq > sent_through)
            .cloned()
            .collect();
        for (seq, message) in due {
            if !send_server(&mut wr, &ServerMessage::Inbox { seq, message }).await {
                reader.abort();
                return;
            }
            sent_through = seq;
        }
        tokio::select! {
            frame = rx.recv() => {
                let Some(frame) = frame else { break };
                let Ok(msg) = decode_agent_message(&frame) else { break };
                match msg {
                    AgentMessage::Ack { seq } => {
                        let mut s = state.lock().unwrap();
                        s.acks.push(seq);
                        s.acked = s.acked.max(seq);
                    }
                    AgentMessage::Receipts { receipts } => {
                        let through = {
                            let mut s = state.lock().unwrap();
                            for r in receipts {
                                let seq = receipt::decode_own(&r).unwrap().body.seq;
                                *s.receipt_deliveries.entry(seq).or_default() += 1;
                                s.receipts.insert(seq, r.into_vec());
                            }
                            let mut through = 0;
                            while s.receipts.contains_key(&(through + 1)) {
                                through += 1;
                            }
                            through
                        };
                        if !send_server(&mut wr, &ServerMessage::ReceiptsAck { through }).await {
                            break;
                        }
                    }
                    AgentMessage::Status { battery_percent, .. } => {
                        state.lock().unwrap().batteries.push(battery_percent);
                    }
                    AgentMessage::Ping => {
                        if !send_server(&mut wr, &ServerMessage::Pong).await {
                            break;
                        }
                    }
                    AgentMessage::Hello { .. } => break,
                    AgentMessage::Alarm { .. } => {}
                }
            }
            () = notified => {}
            _ = kick.changed() => break,
        }
    }
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_resumes_after_disconnect_applies_each_message_once_and_uploads_receipts_once() {
    let server = FakeServer::start().await;
    let lock = new_lock(&["k1"], Some((&server.addr, &server.ca_pem)));
    std::fs::write(lock.state.file("battery"), "87\n").unwrap();
    let now = SystemClock.now();
    let ed = ed25519_presenter();

    // Offline taps first: the server is up but we stop the lock from hearing about it by
    // letting it decide three taps before anything else is checked.
    let running = start_agent(&lock, Arc::new(SystemClock));
    let pubkey = device_public_key(&running);
    let spared = mint(&lock.issuer, "k1", now, 600, &ed);
    let doomed = mint(&lock.issuer, "k1", now, 600, &ed);
    for _ in 0..3 {
        let t = mint(&lock.issuer, "k1", now, 600, &ed);
        assert_eq!(tap(&running, &t, &ed).await.outcome, Outcome::Allow);
    }
    wait_until("three receipts uploaded", || {
        server.state().receipts.len() == 3
    })
    .await;

    // Inbox: a staged token, then a revocation.
    let s1 = server.push(InboxMessage::Token {
        token: spared.clone(),
    });
    let s2 = server.push(InboxMessage::Revocation {
        token_hash: Bytes(firstkey_token::token_hash(&doomed).0),
        expires_at: now + 600,
    });
    wait_until("both acked", || server.state().acked == s2).await;
    assert_eq!(running.door.lock().unwrap().store().inbox_seq(), s2);

    // Disconnect; taps go on meanwhile; the agent reconnects and resumes after s2.
    server.disconnect_all();
    assert_eq!(tap(&running, &doomed, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "revoked");
    wait_until("reconnected", || server.state().hellos.len() >= 2).await;
    assert_eq!(server.state().hellos[1], s2);

    // A misbehaving server re-sends seq s1 with different content (revoking `spared`): the
    // agent must not apply it, because it already applied s1.
    server.state().resend_on_connect = Some((
        s1,
        InboxMessage::Revocation {
            token_hash: Bytes(firstkey_token::token_hash(&spared).0),
            expires_at: now + 600,
        },
    ));
    server.disconnect_all();
    wait_until("third connection", || server.state().hellos.len() >= 3).await;
    let s3 = server.push(InboxMessage::Token {
        token: doomed.clone(),
    });
    wait_until("s3 acked", || server.state().acked == s3).await;
    assert_eq!(tap(&running, &spared, &ed).await.outcome, Outcome::Allow);

    // Every receipt arrived exactly once, and the server's copy verifies as one chain.
    wait_until("all receipts uploaded", || {
        server.state().receipts.len() as u64 == running.door.lock().unwrap().store().head().seq
    })
    .await;
    let st = server.state();
    assert!(
        st.receipt_deliveries.values().all(|n| *n == 1),
        "{:?}",
        st.receipt_deliveries
    );
    receipt::verify_chain(
        st.receipts.values().map(Vec::as_slice),
        &pubkey,
        LOCK,
        ChainHead::GENESIS,
    )
    .unwrap();
    assert_eq!(st.receipts.len(), 5);
    // Acks: each new message acked once; the re-sent s1 acked again without being applied.
    assert_eq!(st.acks, vec![s1, s2, s1, s3]);
    assert!(st.batteries.contains(&Some(87)));
    drop(st);
    // Only `doomed` was revoked; the staged tokens are the two the server sent.
    let d = running.door.lock().unwrap();
    assert_eq!(d.store().status().revocations, 1);
    assert_eq!(d.store().staged_tokens(), &[spared, doomed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_rotation_reaches_a_lock_that_was_offline() {
    // The lock's server address points at a port nothing listens on yet: it is offline.
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap().to_string();
    drop(probe);
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let lock = new_lock(&["k1"], Some((&addr, &certified.cert.pem())));
    let now = SystemClock.now();
    let ed = ed25519_presenter();
    let running = start_agent(&lock, Arc::new(SystemClock));

    // Offline through a rotation: tokens from k1 (still in its bundle) keep working; k2 is unknown.
    let k1 = mint(&lock.issuer, "k1", now, 600, &ed);
    assert_eq!(tap(&running, &k1, &ed).await.outcome, Outcome::Allow);
    let k2 = mint(&lock.issuer, "k2", now, 600, &ed);
    assert_eq!(tap(&running, &k2, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "unknown_key");

    // The server comes up on that address (with its own certificate: a new server CA is a
    // provisioning step, so restart the lock with it), holding v2 {k1,k2} then v3 {k2}.
    running.stop().await;
    let server = FakeServer::start_on(&addr).await;
    std::fs::write(lock.state.file("server-ca.pem"), &server.ca_pem).unwrap();
    let v2 = server.push(InboxMessage::TrustBundle {
        bundle: lock.issuer.bundle(2, &["k1", "k2"]).unwrap(),
    });
    let running = start_agent(&lock, Arc::new(SystemClock));
    wait_until("v2 applied", || server.state().acked == v2).await;
    assert_eq!(
        running
            .door
            .lock()
            .unwrap()
            .store()
            .trust_bundle()
            .unwrap()
            .version(),
        2
    );
    assert_eq!(tap(&running, &k2, &ed).await.outcome, Outcome::Allow);
    let k1b = mint(&lock.issuer, "k1", now, 600, &ed);
    let k1c = mint(&lock.issuer, "k1", now, 600, &ed);
    assert_eq!(tap(&running, &k1b, &ed).await.outcome, Outcome::Allow);

    // v3 retires k1; an old bundle (v1, validly signed) replayed afterwards cannot bring it back.
    let v3 = server.push(InboxMessage::TrustBundle {
        bundle: lock.issuer.bundle(3, &["k2"]).unwrap(),
    });
    let v1 = server.push(InboxMessage::TrustBundle {
        bundle: lock.issuer.bundle(1, &["k1"]).unwrap(),
    });
    // A bundle signed by another root is refused as well.
    let stranger = Issuer::generate("demo-city", RP).unwrap();
    let forged = server.push(InboxMessage::TrustBundle {
        bundle: stranger.bundle(9, &["k1"]).unwrap(),
    });
    wait_until("all bundles handled", || server.state().acked == forged).await;
    assert!(v1 > v3);
    assert_eq!(
        running
            .door
            .lock()
            .unwrap()
            .store()
            .trust_bundle()
            .unwrap()
            .version(),
        3
    );
    assert_eq!(tap(&running, &k1c, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "unknown_key");
    let k2b = mint(&lock.issuer, "k2", now, 600, &ed);
    assert_eq!(tap(&running, &k2b, &ed).await.outcome, Outcome::Allow);
    // The bundle survives a restart.
    running.stop().await;
    let store = reopen_store(&lock.state, None);
    assert_eq!(store.trust_bundle().unwrap().version(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_over_the_channel_denies_the_next_tap() {
    let server = FakeServer::start().await;
    let lock = new_lock(&["k1"], Some((&server.addr, &server.ca_pem)));
    let now = SystemClock.now();
    let ed = ed25519_presenter();
    let running = start_agent(&lock, Arc::new(SystemClock));
    let token = mint(&lock.issuer, "k1", now, 600, &ed);
    let seq = server.push(InboxMessage::Revocation {
        token_hash: Bytes(firstkey_token::token_hash(&token).0),
        expires_at: now + 600,
    });
    wait_until("revocation acked", || server.state().acked == seq).await;
    assert_eq!(tap(&running, &token, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "revoked");
    // The revocation is durable.
    running.stop().await;
    let running = start_agent(&lock, Arc::new(SystemClock));
    assert_eq!(tap(&running, &token, &ed).await.outcome, Outcome::Deny);
    assert_eq!(last_reason(&running), "revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_code_printed_by_init_lets_the_server_bind_the_device_key() {
    let server = FakeServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let issuer = Issuer::generate("demo-city", RP).unwrap();
    std::fs::write(
        tmp.path().join("bundle.cbor"),
        issuer.bundle(1, &["k1"]).unwrap(),
    )
    .unwrap();
    std::fs::write(tmp.path().join("ca.pem"), &server.ca_pem).unwrap();
    let state_dir = tmp.path().join("state");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_firstkey-agent"))
        .arg("init")
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["--lock-id", LOCK, "--root-public-key"])
        .arg(hex::encode(issuer.root_public_key().unwrap()))
        .arg("--trust-bundle")
        .arg(tmp.path().join("bundle.cbor"))
        .args([
            "--server",
            &server.addr,
            "--server-name",
            "localhost",
            "--server-ca",
        ])
        .arg(tmp.path().join("ca.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let typed = text
        .lines()
        .find_map(|l| l.strip_prefix("pairing code:"))
        .unwrap()
        .trim()
        .to_lowercase();
    // A wrong code is refused ...
    *server.expected_code.lock().unwrap() = Some(PairingCode::parse("00000-00000").unwrap());
    let lock = Lock {
        _tmp: tmp,
        state: StateDir::new(&state_dir),
        issuer,
    };
    let running = start_agent(&lock, Arc::new(SystemClock));
    wait_until("refused", || server.state().refused >= 1).await;
    assert!(server.state().hellos.is_empty());
    // ... the one the homeowner read off the lock (typed in lower case) is accepted.
    *server.expected_code.lock().unwrap() = Some(PairingCode::parse(&typed).unwrap());
    wait_until("paired", || !server.state().hellos.is_empty()).await;
    running.stop().await;
}

// ---------------------------------------------------------------------------------------------
// write failures: a fault-injecting receipt-log file, a real full file system

/// How the next receipt append fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The first `n` bytes land (a short write), then the write fails with ENOSPC.
    ShortThenError(usize),
    /// The first `n` bytes land and the same call reports an I/O error.
    LandThenError(usize),
    /// Every byte lands, then `fdatasync` fails.
    SyncFails,
}

#[derive(Debug, Default)]
struct FaultPlan {
    /// Armed fault for the next append (one-shot).
    fault: Option<Fault>,
    /// Bytes of the current append written so far.
    written: usize,
    /// Also fail the truncate that restores the log after the fault.
    truncate_fails: bool,
    /// A fault fired and its truncate has not run yet.
    fired: bool,
    /// Faults injected.
    injected: u64,
    /// The last fault fired after every byte of its append had landed.
    all_landed: bool,
}

/// A receipt-log file that fails as [`FaultPlan`] says, then behaves like the real file.
#[derive(Debug)]
struct FaultyFile {
    inner: std::fs::File,
    plan: Arc<Mutex<FaultPlan>>,
}

fn enospc() -> std::io::Error {
    std::io::Error::from_raw_os_error(28)
}

impl firstkey_agent::durable::LogFile for FaultyFile {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut p = self.plan.lock().unwrap();
        let (limit, error_in_same_call) = match p.fault {
            None | Some(Fault::SyncFails) => {
                drop(p);
                return std::io::Write::write(&mut self.inner, bytes);
            }
            Some(Fault::ShortThenError(n)) => (n, false),
            Some(Fault::LandThenError(n)) => (n, true),
        };
        let room = limit.saturating_sub(p.written);
        let n = room.min(bytes.len());
        if n > 0 {
            std::io::Write::write_all(&mut self.inner, &bytes[..n]).unwrap();
            p.written += n;
        }
        if n == bytes.len() && n > 0 && !error_in_same_call {
            return Ok(n);
        }
        if n > 0 && !error_in_same_call {
            return Ok(n); // short write; the next call fails
        }
        p.all_landed = n == bytes.len();
        p.fault = None;
        p.written = 0;
        p.fired = true;
        p.injected += 1;
        Err(if error_in_same_call {
            std::io::Error::other("injected I/O error")
        } else {
            enospc()
        })
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        let mut p = self.plan.lock().unwrap();
        if p.fault.is_some() {
            // Every byte of the append landed (a fault that fires mid-write never gets here).
            p.fault = None;
            p.written = 0;
            p.fired = true;
            p.injected += 1;
            p.all_landed = true;
            return Err(std::io::Error::other("injected fdatasync failure"));
        }
        drop(p);
        self.inner.sync_data()
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        let mut p = self.plan.lock().unwrap();
        if std::mem::take(&mut p.fired) && std::mem::take(&mut p.truncate_fails) {
            return Err(std::io::Error::other("injected truncate failure"));
        }
        drop(p);
        firstkey_agent::durable::LogFile::truncate(&mut self.inner, len)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.inner, buf, offset)
    }
}

fn faulty(plan: &Arc<Mutex<FaultPlan>>) -> firstkey_agent::durable::LogFileWrapper {
    let plan = plan.clone();
    Arc::new(move |inner| {
        Box::new(FaultyFile {
            inner,
            plan: plan.clone(),
        })
    })
}

/// Every fault at every byte offset of an append of about `framed_len` bytes (a few more, as
/// receipts grow by a byte when their seq needs a longer integer), with and without a failing
/// truncate.
fn every_fault(framed_len: usize) -> Vec<(Fault, bool)> {
    let mut all = Vec::new();
    for truncate_fails in [false, true] {
        for k in 0..framed_len + 4 {
            all.push((Fault::ShortThenError(k), truncate_fails));
            all.push((Fault::LandThenError(k), truncate_fails));
        }
        all.push((Fault::SyncFails, truncate_fails));
    }
    all
}

/// A temporary directory where fsync costs nothing (the fault tests check logic, not the disk).
fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

#[test]
fn a_failed_append_at_any_byte_restores_the_log_or_halts_it() {
    use firstkey_agent::durable::AppendLog;
    let tmp = fast_tempdir();
    let path = tmp.path().join("log");
    let record = vec![0xa5u8; 200];
    let framed_len = 12 + record.len();
    let plan = Arc::new(Mutex::new(FaultPlan::default()));
    let mut expected: Vec<Vec<u8>> = Vec::new();
    let faults = every_fault(framed_len);
    for (i, (fault, truncate_fails)) in faults.iter().enumerate() {
        let (mut log, rec) = AppendLog::open_with(&path, Some(faulty(&plan))).unwrap();
        assert!(rec.damage.is_empty(), "{fault:?}: reopened with damage");
        assert_eq!(log.records(), expected.as_slice(), "{fault:?}");
        let len_before = std::fs::metadata(&path).unwrap().len();
        {
            let mut p = plan.lock().unwrap();
            p.fault = Some(*fault);
            p.truncate_fails = *truncate_fails;
        }
        let result = log.append(&record);
        let fired = plan.lock().unwrap().fault.is_none();
        if !fired {
            // The fault lies beyond this append's last byte: it succeeded.
            plan.lock().unwrap().fault = None;
            assert!(result.is_ok());
            expected.push(record.clone());
            continue;
        }
        assert!(result.is_err(), "{fault:?}: append reported Ok");
        assert_eq!(log.records(), expected.as_slice());
        if *truncate_fails && plan.lock().unwrap().all_landed {
            // The whole record reached the file and could not be cut back: it is readable, so
            // the next open keeps it (never drops a readable record).
            expected.push(record.clone());
        }
        if *truncate_fails {
            // The end of the file is unknown: nothing more may be appended.
            assert!(log.halted().is_some(), "{fault:?}");
            assert!(log.append(&record).is_err());
        } else {
            assert!(log.halted().is_none(), "{fault:?}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len_before);
            // The next append lands right after the last good record.
            let tagged = format!("ok {i}").into_bytes();
            log.append(&tagged).unwrap();
            expected.push(tagged);
        }
        drop(log);
    }
    let (log, rec) = AppendLog::open(&path).unwrap();
    assert!(rec.damage.is_empty());
    assert_eq!(log.records(), expected.as_slice());
    eprintln!(
        "append faults: {} injected over {} byte offsets",
        plan.lock().unwrap().injected,
        framed_len + 1
    );
}

/// Door openings from the simulated actuator's log.
fn door_opens(state: &StateDir) -> Vec<u64> {
    SimulatedActuator::events(state.root())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| match e {
            DoorEvent::Open { receipt_seq, .. } => Some(receipt_seq),
            DoorEvent::Close { .. } => None,
        })
        .collect()
}

/// Opens a state directory that this process (or a killed agent) just closed. Another test's
/// fork may briefly hold a copy of the lock file's descriptor (from fork until its exec), so a
/// `Busy` open is retried for up to two seconds; any other error fails the test.
fn reopen_store(
    state: &StateDir,
    wrapper: Option<firstkey_agent::durable::LogFileWrapper>,
) -> Store {
    let mut tries = 0;
    loop {
        match Store::open_with(state, wrapper.clone()) {
            Err(state::StateError::Busy(_)) if tries < 200 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
}

/// Counts from a run of taps under faults.
#[derive(Debug, Default)]
struct FaultCounts {
    rounds: u64,
    taps: u64,
    allows: u64,
    refused: u64,
    restarts: u64,
    spent_unopened: u64,
    double_allows: u64,
}

/// Check a state directory after faults: the log reopens, the chain verifies, no token has two
/// allow receipts, the door opened only for allow receipts and at most once each, and every
/// allow the presenter heard is in the chain.
fn check_no_double_allow(state: &StateDir, answered_allow: &HashMap<[u8; 32], u32>) -> u64 {
    // Nothing was ever appended after stray bytes: the file is whole records, at most a torn tail.
    let bytes = std::fs::read(state.file("receipts.log")).unwrap();
    let found = firstkey_agent::durable::inspect(&bytes);
    assert!(
        found.damage.is_empty(),
        "receipt log damaged: {:?}",
        found.damage
    );
    let store = reopen_store(state, None);
    assert_eq!(store.halted(), None);
    let pubkey = *store.device_public_key();
    let records = store.receipts().to_vec();
    receipt::verify_chain(
        records.iter().map(Vec::as_slice),
        &pubkey,
        LOCK,
        ChainHead::GENESIS,
    )
    .unwrap();
    let mut allowed: HashMap<[u8; 32], u64> = HashMap::new();
    let mut allow_seqs = HashSet::new();
    let mut doubles = 0;
    for r in &records {
        let b = receipt::verify_one(r, &pubkey).unwrap().body;
        if b.outcome == Outcome::Allow {
            let n = allowed.entry(b.token_hash.unwrap().0).or_default();
            *n += 1;
            if *n > 1 {
                doubles += 1;
            }
            allow_seqs.insert(b.seq);
        }
    }
    for (hash, n) in answered_allow {
        if *n > 1 {
            doubles += 1;
        }
        assert!(
            allowed.contains_key(hash),
            "an answered allow has no receipt"
        );
    }
    let opens = door_opens(state);
    let distinct: HashSet<u64> = opens.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        opens.len(),
        "the door opened twice for one receipt"
    );
    assert!(
        opens.iter().all(|s| allow_seqs.contains(s)),
        "the door opened without an allow receipt"
    );
    doubles
}

#[test]
fn a_receipt_write_failing_at_any_byte_never_opens_the_door_nor_lets_a_token_in_twice() {
    let mut counts = FaultCounts::default();
    let framed_len = fault_rounds(&[], &mut counts);
    let faults = every_fault(framed_len);
    // A fresh lock every few dozen rounds keeps each restart's log scan short.
    for chunk in faults.chunks(64) {
        fault_rounds(chunk, &mut counts);
    }
    eprintln!(
        "receipt write faults at every byte of a {framed_len}-byte receipt (error or short \
         write, failing fdatasync, with and without a failing truncate): {counts:?}"
    );
    assert_eq!(counts.double_allows, 0);
    assert_eq!(counts.rounds as usize, faults.len());
}

/// Run one tap per fault in `faults` on a fresh lock (each fault hitting that tap's receipt
/// append), check everything, add to `total`; returns the framed size of an allow receipt.
fn fault_rounds(faults: &[(Fault, bool)], total: &mut FaultCounts) -> usize {
    use firstkey_agent::door::Door;
    let lock = new_lock_in(fast_tempdir(), &["k1"], None);
    let t0 = 1_800_000_000;
    let clock = ManualClock::new(t0);
    let ed = ed25519_presenter();
    let plan = Arc::new(Mutex::new(FaultPlan::default()));
    let open_door = |plan: &Arc<Mutex<FaultPlan>>| {
        let store = reopen_store(&lock.state, Some(faulty(plan)));
        Door::new(
            store,
            Box::new(SimulatedActuator::new(lock.state.root())),
            Arc::new(clock.clone()),
        )
    };
    let mut counts = FaultCounts::default();
    let mut answered_allow: HashMap<[u8; 32], u32> = HashMap::new();
    let tap_door = |door: &mut Door, token: &[u8]| {
        let c = door.new_challenge().unwrap();
        let msg = tap_server::respond(&c.0, LOCK, token, Some(&ed)).unwrap();
        door.decide(&c, msg).map(|d| d.outcome)
    };
    // Learn the framed size of an allow receipt from a clean one.
    let mut door = open_door(&plan);
    let first = mint(&lock.issuer, "k1", t0, 3600, &ed);
    let before = std::fs::metadata(lock.state.file("receipts.log"))
        .unwrap()
        .len();
    assert_eq!(tap_door(&mut door, &first).unwrap(), Outcome::Allow);
    *answered_allow
        .entry(firstkey_token::token_hash(&first).0)
        .or_default() += 1;
    let framed_len = (std::fs::metadata(lock.state.file("receipts.log"))
        .unwrap()
        .len()
        - before) as usize;
    let mut spent = vec![first];
    for &(fault, truncate_fails) in faults {
        counts.rounds += 1;
        let token = mint(&lock.issuer, "k1", t0, 3600, &ed);
        let hash = firstkey_token::token_hash(&token).0;
        {
            let mut p = plan.lock().unwrap();
            p.fault = Some(fault);
            p.truncate_fails = truncate_fails;
        }
        let opens_before = door_opens(&lock.state).len();
        counts.taps += 1;
        let result = tap_door(&mut door, &token);
        if plan.lock().unwrap().fault.take().is_some() {
            // The fault lies beyond this receipt's last byte: the tap was decided normally.
            assert_eq!(result.unwrap(), Outcome::Allow);
            counts.allows += 1;
            *answered_allow.entry(hash).or_default() += 1;
            spent.push(token);
            continue;
        }
        assert!(
            result.is_err(),
            "{fault:?}: a tap whose receipt failed was decided"
        );
        counts.refused += 1;
        assert_eq!(
            door_opens(&lock.state).len(),
            opens_before,
            "{fault:?}: door opened"
        );
        if truncate_fails {
            // Halted: every tap is refused, even one that would be a plain deny, and status says why.
            assert!(door.store().status().halted.is_some());
            counts.taps += 1;
            counts.refused += 1;
            assert!(matches!(
                tap_door(&mut door, &spent[0]),
                Err(state::StateError::Halted(_))
            ));
            let peek = state::peek_status(&lock.state).unwrap();
            assert!(peek.halted.is_some(), "status does not say why");
            // Restart: the torn tail is cut, the agent decides again.
            drop(door);
            counts.restarts += 1;
            door = open_door(&plan);
            assert_eq!(door.store().halted(), None);
        }
        let every_byte_landed = plan.lock().unwrap().all_landed;
        counts.taps += 1;
        let again = tap_door(&mut door, &token).unwrap();
        if truncate_fails && every_byte_landed {
            // The whole receipt reached the file though the write was reported failed, and it
            // could not be cut back: at the restart it is a readable record and is kept, so the
            // token counts as used although the door never opened. Safe side.
            assert_eq!(again, Outcome::Deny, "{fault:?}");
            counts.spent_unopened += 1;
        } else {
            // The token was never used: it gets in exactly once.
            assert_eq!(again, Outcome::Allow, "{fault:?}");
            counts.allows += 1;
            *answered_allow.entry(hash).or_default() += 1;
        }
        spent.push(token);
    }
    drop(door);
    // Across a restart, no spent token gets in.
    let mut door = open_door(&plan);
    for t in &spent {
        counts.taps += 1;
        assert_eq!(tap_door(&mut door, t).unwrap(), Outcome::Deny);
    }
    drop(door);
    counts.double_allows = check_no_double_allow(&lock.state, &answered_allow);
    assert_eq!(counts.double_allows, 0);
    assert_eq!(door_opens(&lock.state).len() as u64, counts.allows + 1);
    total.rounds += counts.rounds;
    total.taps += counts.taps + 1;
    total.allows += counts.allows + 1;
    total.refused += counts.refused;
    total.restarts += counts.restarts;
    total.spent_unopened += counts.spent_unopened;
    total.double_allows += counts.double_allows;
    framed_len
}

/// A small tmpfs mounted for one test (root only); unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mount a tmpfs of `size` (e.g. `200k`), or say why not and return `None`.
    fn mount(size: &str) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(1)
            != 0
        {
            eprintln!("skipped: not running as root, so no small tmpfs can be mounted");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => {
                eprintln!(
                    "skipped: mounting a {size} tmpfs failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill the file system completely with a filler file, then free `free` bytes of it.
    fn fill_leaving(&self, free: u64) {
        use std::io::Write;
        let filler = self.path().join("filler");
        let _ = std::fs::remove_file(&filler);
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(free)).unwrap();
    }

    fn unfill(&self) {
        let _ = std::fs::remove_file(self.path().join("filler"));
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_file_system_never_lets_a_token_in_twice_and_the_agent_recovers() {
    use firstkey_agent::door::Door;
    let Some(fs) = SmallFs::mount("200k") else {
        return;
    };
    let lock = new_lock_in(tempfile::tempdir_in(fs.path()).unwrap(), &["k1"], None);
    let t0 = 1_800_000_000;
    let clock = ManualClock::new(t0);
    let ed = ed25519_presenter();
    let open_door = || {
        Door::new(
            reopen_store(&lock.state, None),
            Box::new(SimulatedActuator::new(lock.state.root())),
            Arc::new(clock.clone()),
        )
    };
    let tap_door = |door: &mut Door, token: &[u8]| {
        let c = door.new_challenge().unwrap();
        let msg = tap_server::respond(&c.0, LOCK, token, Some(&ed)).unwrap();
        door.decide(&c, msg).map(|d| d.outcome)
    };
    let mut rng = XorShift(0x5eed_f00d);
    let mut counts = FaultCounts::default();
    let mut answered_allow: HashMap<[u8; 32], u32> = HashMap::new();
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    let mut door = open_door();
    // Rounds: leave a little free space (0 to 3 pages), tap until taps are refused, restart.
    for round in 0..12u64 {
        counts.rounds += 1;
        fs.fill_leaving(rng.below(3 * 4096));
        let mut refused_in_a_row = 0;
        while refused_in_a_row < 5 {
            let retry = !tokens.is_empty() && rng.below(100) < 30;
            let idx = if retry {
                rng.below(tokens.len() as u64) as usize
            } else {
                tokens.push(mint(&lock.issuer, "k1", t0, 86_400, &ed));
                tokens.len() - 1
            };
            counts.taps += 1;
            match tap_door(&mut door, &tokens[idx]) {
                Ok(Outcome::Allow) => {
                    counts.allows += 1;
                    refused_in_a_row = 0;
                    *answered_allow
                        .entry(firstkey_token::token_hash(&tokens[idx]).0)
                        .or_default() += 1;
                }
                Ok(Outcome::Deny) => refused_in_a_row = 0,
                Err(_) => {
                    counts.refused += 1;
                    refused_in_a_row += 1;
                }
            }
        }
        // Space comes back: the same agent decides again, without a restart.
        fs.unfill();
        let fresh = mint(&lock.issuer, "k1", t0, 86_400, &ed);
        counts.taps += 1;
        assert_eq!(
            tap_door(&mut door, &fresh).unwrap(),
            Outcome::Allow,
            "round {round}: no recovery after the disk had room again"
        );
        counts.allows += 1;
        *answered_allow
            .entry(firstkey_token::token_hash(&fresh).0)
            .or_default() += 1;
        tokens.push(fresh);
        if round % 3 == 2 {
            drop(door);
            let bytes = std::fs::read(lock.state.file("receipts.log")).unwrap();
            let found = firstkey_agent::durable::inspect(&bytes);
            assert!(
                found.damage.is_empty(),
                "receipt log damaged: {:?}",
                found.damage
            );
            counts.restarts += 1;
            door = open_door();
        }
    }
    // Every token once more after a restart: each already let in is refused.
    drop(door);
    let mut door = open_door();
    for t in &tokens {
        counts.taps += 1;
        if tap_door(&mut door, t).unwrap() == Outcome::Allow {
            *answered_allow
                .entry(firstkey_token::token_hash(t).0)
                .or_default() += 1;
            counts.allows += 1;
        }
    }
    drop(door);
    counts.double_allows = check_no_double_allow(&lock.state, &answered_allow);
    eprintln!("full file system (200 KiB tmpfs): {counts:?}");
    assert_eq!(counts.double_allows, 0);
    assert!(counts.refused > 0, "the disk never filled up");
}

// ---------------------------------------------------------------------------------------------
// init killed part-way

fn init_command(state_dir: &Path, issuer_dir: &Path, root_hex: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_firstkey-agent"));
    c.arg("init")
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--lock-id", LOCK, "--root-public-key", root_hex])
        .arg("--trust-bundle")
        .arg(issuer_dir.join("bundle.cbor"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c
}

fn agent_status(state_dir: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_firstkey-agent"))
        .arg("status")
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .unwrap()
}

#[test]
fn init_killed_at_any_moment_leaves_nothing_or_a_whole_state() {
    let tmp = tempfile::tempdir().unwrap();
    let issuer = Issuer::generate("demo-city", RP).unwrap();
    std::fs::write(
        tmp.path().join("bundle.cbor"),
        issuer.bundle(1, &["k1"]).unwrap(),
    )
    .unwrap();
    let root_hex = hex::encode(issuer.root_public_key().unwrap());
    // How long a whole init takes here, to spread the kills over it.
    let started = Instant::now();
    let out = init_command(&tmp.path().join("timing"), tmp.path(), &root_hex)
        .output()
        .unwrap();
    assert!(out.status.success());
    let full = started.elapsed().as_micros().max(1000) as u64;
    let rounds = 60;
    let mut rng = XorShift(0x1417_0b5e_55ed);
    let (mut nothing, mut whole) = (0, 0);
    for round in 0..rounds {
        let state = tmp.path().join(format!("s{round}"));
        let mut child = init_command(&state, tmp.path(), &root_hex).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(full + full / 4)));
        let _ = child.kill();
        let _ = child.wait();
        if state.exists() {
            // A whole state: status reads it and init refuses to overwrite it.
            let st = agent_status(&state);
            assert!(
                st.status.success(),
                "round {round}: a state directory status cannot read: {}",
                String::from_utf8_lossy(&st.stderr)
            );
            let again = init_command(&state, tmp.path(), &root_hex)
                .output()
                .unwrap();
            assert!(!again.status.success());
            assert!(
                String::from_utf8_lossy(&again.stderr).contains("already initialised"),
                "round {round}"
            );
            reopen_store(&StateDir::new(&state), None);
            whole += 1;
        } else {
            // Nothing: init starts afresh (and clears any temporary directory it left).
            let again = init_command(&state, tmp.path(), &root_hex)
                .output()
                .unwrap();
            assert!(
                again.status.success(),
                "round {round}: init after a killed init: {}",
                String::from_utf8_lossy(&again.stderr)
            );
            assert!(agent_status(&state).status.success());
            nothing += 1;
        }
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".init"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "round {round}: temporary directory left"
        );
    }
    eprintln!(
        "init under SIGKILL: {rounds} rounds (whole init {full} µs): {nothing} left nothing, \
         {whole} a whole state"
    );
}

// ---------------------------------------------------------------------------------------------
// the door panel: the tap exchange over local HTTP, for a browser

use firstkey_agent::door_panel::{self, ChallengeBody, DecisionBody};
use firstkey_token::pop::FLAG_USER_PRESENT;
use firstkey_token::{Proof, SoftwareAuthenticator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn start_panel_agent(lock: &Lock, clock: Arc<dyn Clock>) -> Running {
    daemon::start(
        &RunOptions {
            state_dir: lock.state.clone(),
            tap_socket: None,
            channel_timing: None,
            door_panel: Some("127.0.0.1:0".parse().unwrap()),
        },
        clock,
        None,
    )
    .unwrap()
}

/// Sends `raw` to the panel and reads the whole answer: (status, body).
async fn panel_raw(addr: std::net::SocketAddr, raw: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer")
        + 4;
    let head = String::from_utf8_lossy(&answer[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, answer[end..].to_vec())
}

fn panel_post_raw(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

async fn panel_post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, Vec<u8>) {
    panel_raw(addr, &panel_post_raw(addr, path, body.as_bytes())).await
}

async fn panel_challenge(addr: std::net::SocketAddr) -> ChallengeBody {
    let (status, body) = panel_post(addr, "/challenge", "{}").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn b64u(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64u(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

/// What a browser sends after its security key signed the lock's challenge `c` for `token`.
fn panel_presentation(
    c: &ChallengeBody,
    token: &[u8],
    key: &SoftwareAuthenticator,
    flags: u8,
) -> String {
    let challenge = firstkey_token::Challenge(unb64u(&c.challenge).try_into().unwrap());
    let lock = firstkey_token::LockId::parse(&c.lock_id).unwrap();
    let message =
        firstkey_token::pop_message(&challenge, &lock, &firstkey_token::token_hash(token));
    let Proof::WebAuthn {
        authenticator_data,
        client_data_json,
        signature,
    } = key
        .assert(&message, flags, &ring::rand::SystemRandom::new())
        .unwrap()
    else {
        unreachable!("a P-256 key answers with a WebAuthn assertion")
    };
    serde_json::json!({
        "id": c.id,
        "token": b64u(token),
        "authenticator_data": b64u(&authenticator_data),
        "client_data_json": b64u(&client_data_json),
        "signature": b64u(&signature),
    })
    .to_string()
}

fn security_key() -> (PresenterKey, SoftwareAuthenticator) {
    let pk8 = demo::new_p256_pkcs8().unwrap();
    let rng = ring::rand::SystemRandom::new();
    (
        PresenterKey::from_pkcs8(&pk8, RP).unwrap(),
        SoftwareAuthenticator::from_pkcs8(&pk8, RP, &rng).unwrap(),
    )
}

fn receipt_count(running: &Running) -> u64 {
    running.door.lock().unwrap().store().head().seq
}

fn malformed_count(running: &Running) -> u64 {
    running
        .door
        .lock()
        .unwrap()
        .store()
        .status()
        .malformed_frames
        .count
}

/// A browser at the panel gets the same decisions as a tap: allow once with a signed ack, then a
/// deny for the same token; a replayed request finds its challenge used (no decision, no receipt);
/// an assertion made for another challenge, another relying party or without user presence is
/// denied; an expired challenge gets no decision; a post from another origin is refused.
#[tokio::test]
async fn the_door_panel_decides_like_a_tap_and_refuses_replays() {
    let lock = new_lock(&["k1"], None);
    let t0 = 1_800_000_000;
    let clock = ManualClock::new(t0);
    let running = start_panel_agent(&lock, Arc::new(clock.clone()));
    let addr = running.door_panel.unwrap();
    let device = device_public_key(&running);
    let (presenter, key) = security_key();
    let token = mint(&lock.issuer, "k1", t0, 600, &presenter);

    let (status, page) = panel_raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains(LOCK) && page.contains(&format!("data-rp-id=\"{RP}\"")));
    assert!(!page.contains("<script>") && !page.contains(" style="));

    let c = panel_challenge(addr).await;
    assert_eq!((c.lock_id.as_str(), c.rp_id.as_str()), (LOCK, RP));
    let body = panel_presentation(&c, &token, &key, FLAG_USER_PRESENT);
    let (status, answer) = panel_post(addr, "/present", &body).await;
    assert_eq!(status, 200);
    let d: DecisionBody = serde_json::from_slice(&answer).unwrap();
    assert_eq!((d.outcome.as_str(), d.seq), ("allow", 1));
    let ack = firstkey_agent::protocol::tap::TapAck {
        seq: d.seq,
        receipt_hash: Bytes(hex::decode(&d.receipt_hash).unwrap().try_into().unwrap()),
        signature: hex::decode(&d.signature).unwrap(),
    };
    let challenge: [u8; 32] = unb64u(&c.challenge).try_into().unwrap();
    assert!(ack.verify(&device, &challenge, LOCK, Outcome::Allow));
    assert!(!ack.verify(&device, &challenge, LOCK, Outcome::Deny));

    // The very same request again: its challenge is spent, nothing is decided or written.
    let (status, _) = panel_post(addr, "/present", &body).await;
    assert_eq!(status, 409);
    assert_eq!(receipt_count(&running), 1);

    // The same token with a fresh challenge and a fresh assertion: the lock's replay record.
    let c2 = panel_challenge(addr).await;
    let (status, answer) = panel_post(
        addr,
        "/present",
        &panel_presentation(&c2, &token, &key, FLAG_USER_PRESENT),
    )
    .await;
    assert_eq!(status, 200);
    let d: DecisionBody = serde_json::from_slice(&answer).unwrap();
    assert_eq!((d.outcome.as_str(), d.seq), ("deny", 2));

    // A fresh token, but the assertion answers another challenge: the proof does not verify.
    let fresh = mint(&lock.issuer, "k1", t0, 600, &presenter);
    let (a, b) = (panel_challenge(addr).await, panel_challenge(addr).await);
    let mut crossed: serde_json::Value =
        serde_json::from_str(&panel_presentation(&a, &fresh, &key, FLAG_USER_PRESENT)).unwrap();
    crossed["id"] = serde_json::Value::String(b.id.clone());
    let (status, answer) = panel_post(addr, "/present", &crossed.to_string()).await;
    assert_eq!(status, 200);
    let d: DecisionBody = serde_json::from_slice(&answer).unwrap();
    assert_eq!(d.outcome, "deny");
    // No user presence; another relying party's key.
    let c = panel_challenge(addr).await;
    let (_, answer) = panel_post(addr, "/present", &panel_presentation(&c, &fresh, &key, 0)).await;
    assert_eq!(
        serde_json::from_slice::<DecisionBody>(&answer)
            .unwrap()
            .outcome,
        "deny"
    );
    let other_rp = SoftwareAuthenticator::from_pkcs8(
        &demo::new_p256_pkcs8().unwrap(),
        "evil.example",
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let c = panel_challenge(addr).await;
    let (_, answer) = panel_post(
        addr,
        "/present",
        &panel_presentation(&c, &fresh, &other_rp, FLAG_USER_PRESENT),
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<DecisionBody>(&answer)
            .unwrap()
            .outcome,
        "deny"
    );
    let reasons: Vec<String> = chain_bodies(&lock.state, &device)
        .into_iter()
        .map(|b| b.reason)
        .collect();
    assert_eq!(
        reasons,
        [
            "ok",
            "replayed",
            "proof_challenge_mismatch",
            "proof_user_not_present",
            "proof_wrong_relying_party"
        ]
    );

    // A challenge left open past its lifetime (by the lock's clock) decides nothing.
    let c = panel_challenge(addr).await;
    clock.advance(door_panel::CHALLENGE_TTL_SECS + 1);
    let (status, _) = panel_post(
        addr,
        "/present",
        &panel_presentation(&c, &fresh, &key, FLAG_USER_PRESENT),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(receipt_count(&running), 5);

    // Another web page cannot drive the panel from the responder's browser.
    let c = panel_challenge(addr).await;
    let forged = panel_presentation(&c, &fresh, &key, FLAG_USER_PRESENT);
    let raw = format!(
        "POST /present HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\n\
         Content-Length: {}\r\n\r\n{forged}",
        forged.len()
    );
    assert_eq!(panel_raw(addr, raw.as_bytes()).await.0, 403);
    let raw = format!("POST /challenge HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\n\r\n{{}}");
    assert_eq!(panel_raw(addr, raw.as_bytes()).await.0, 403);
    assert_eq!(receipt_count(&running), 5);
    running.stop().await;
}

/// What anyone in front of the panel can send costs bounded work and leaves no receipt: an oversize
/// body is refused before it is read, garbage is refused, both are counted like malformed tap
/// frames; an overlong head and non-HTTP bytes are refused; the requests served at once are capped
/// and the panel serves again once they are gone; open challenges are capped.
#[tokio::test]
async fn the_door_panel_bounds_what_a_visitor_can_send() {
    let lock = new_lock(&["k1"], None);
    let running = start_panel_agent(&lock, Arc::new(ManualClock::new(1_800_000_000)));
    let addr = running.door_panel.unwrap();

    // Declares 1 MiB and sends none of it: answered at once, nothing read, counted.
    let raw = format!(
        "POST /present HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nContent-Length: 1048576\r\n\r\n"
    );
    assert_eq!(panel_raw(addr, raw.as_bytes()).await.0, 413);
    assert_eq!(malformed_count(&running), 1);
    for garbage in [
        &b"not json"[..],
        b"{\"id\":\"x\"}",
        b"{\"id\":\"AAAAAAAAAAAAAAAAAAAAAA\",\"token\":\"!!\",\"authenticator_data\":\"\",\"client_data_json\":\"\",\"signature\":\"\"}",
        &[0xff; 300],
    ] {
        assert_eq!(
            panel_raw(addr, &panel_post_raw(addr, "/present", garbage)).await.0,
            400
        );
    }
    assert_eq!(malformed_count(&running), 5);
    assert_eq!(
        panel_raw(addr, b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n")
            .await
            .0,
        400
    );
    let long = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(panel_raw(addr, long.as_bytes()).await.0, 431);
    let chunked = format!(
        "POST /present HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    assert_eq!(panel_raw(addr, chunked.as_bytes()).await.0, 411);
    assert_eq!(receipt_count(&running), 0, "no receipt for any of it");

    // Silent connections hold every slot: the next request is told the lock is busy.
    let mut idle = Vec::new();
    for _ in 0..door_panel::MAX_CONNECTIONS {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let get = format!("GET /panel.css HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut busy = false;
    for _ in 0..1000 {
        if panel_raw(addr, get.as_bytes()).await.0 == 503 {
            busy = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(busy, "the panel never ran out of slots");
    drop(idle);
    let mut served = false;
    for _ in 0..1000 {
        if panel_raw(addr, get.as_bytes()).await.0 == 200 {
            served = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        served,
        "the panel did not serve again once the slots were free"
    );

    // Open challenges are capped: the oldest are dropped, the newest still answer.
    let first = panel_challenge(addr).await;
    let mut last = None;
    for _ in 0..door_panel::MAX_PENDING {
        last = Some(panel_challenge(addr).await);
    }
    let (presenter, key) = security_key();
    let token = mint(&lock.issuer, "k1", 1_800_000_000, 600, &presenter);
    let (status, _) = panel_post(
        addr,
        "/present",
        &panel_presentation(&first, &token, &key, FLAG_USER_PRESENT),
    )
    .await;
    assert_eq!(status, 409, "the oldest challenge was dropped");
    let (status, answer) = panel_post(
        addr,
        "/present",
        &panel_presentation(&last.unwrap(), &token, &key, FLAG_USER_PRESENT),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<DecisionBody>(&answer)
            .unwrap()
            .outcome,
        "allow"
    );
    running.stop().await;
}

// ---------------------------------------------------------------------------------------------
// keypad codes (issue 11 §2; PROTOCOL.md "Keypad codes")

mod keypad_codes {
    use super::*;
    use firstkey_agent::keypad::{
        self, CodeSecret, EntryAnswer, StandingSchedule, code_id, incident_code, incident_window,
        revocation_key, standing_code,
    };

    /// Not on a slot boundary, so windows start before "now".
    const T: u64 = 1_800_000_123;
    const WRONG: &str = "000 000 000 000 000";

    async fn enter(running: &Running, code: &str) -> EntryAnswer {
        keypad::enter(&running.tap_socket, code).await.unwrap()
    }

    fn outcome(a: &EntryAnswer) -> Option<Outcome> {
        match a {
            EntryAnswer::Decided { outcome, .. } => Some(*outcome),
            EntryAnswer::Locked(_) => None,
        }
    }

    fn give_secret(running: &Running, secret: &CodeSecret) {
        let mut d = running.door.lock().unwrap();
        let seq = d.store().inbox_seq() + 1;
        d.store_mut()
            .apply_inbox(
                seq,
                &InboxMessage::KeypadSecret {
                    secret: secret.clone(),
                },
            )
            .unwrap();
    }

    fn receipt_count(running: &Running) -> u64 {
        running.door.lock().unwrap().store().head().seq
    }

    async fn cli(socket: &Path, code: &str) -> (i32, String) {
        let socket = socket.to_path_buf();
        let code = code.to_string();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_firstkey-agent"))
                .args(["keypad", "--code", &code, "--socket"])
                .arg(&socket)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_incident_code_opens_once_in_its_window_with_the_channel_killed_and_nowhere_else() {
        let server = FakeServer::start().await;
        let lock = new_lock(&["k1"], Some((&server.addr, &server.ca_pem)));
        let clock = ManualClock::new(T);
        let running = start_agent(&lock, Arc::new(clock.clone()));
        let pubkey = device_public_key(&running);
        // The secret arrives over the authenticated channel, as does a revocation of one code
        // (its grant was revoked).
        let secret = CodeSecret([42; 32]);
        let window = incident_window(T, T + 1800).unwrap();
        assert_eq!(window.1 - window.0, 1800);
        let (revoked, revoked_spec) = incident_code(&secret, LOCK, window, 4).unwrap();
        server.push(InboxMessage::KeypadSecret {
            secret: secret.clone(),
        });
        let last = server.push(InboxMessage::Revocation {
            token_hash: Bytes(revocation_key(&code_id(&secret, LOCK, &revoked_spec))),
            expires_at: revoked_spec.not_after,
        });
        wait_until("secret and revocation applied", || {
            server.state().acked == last
        })
        .await;
        // Then the channel dies for good: everything below is offline.
        drop(server);
        assert!(std::fs::metadata(lock.state.file("keypad.key")).is_ok());

        let (code, spec) = incident_code(&secret, LOCK, window, 0).unwrap();
        let (late, _) = incident_code(&secret, LOCK, window, 1).unwrap();
        let (unused, _) = incident_code(&secret, LOCK, window, 2).unwrap();
        let (elsewhere, _) = incident_code(&secret, "back-door", window, 3).unwrap();

        // Read over the radio with spaces; opens once.
        assert_eq!(
            outcome(&enter(&running, &code.display()).await),
            Some(Outcome::Allow)
        );
        assert_eq!(last_reason(&running), "keypad_ok");
        assert_eq!(
            outcome(&enter(&running, &code.digits()).await),
            Some(Outcome::Deny)
        );
        assert_eq!(last_reason(&running), "keypad_replayed");
        // Another lock's code, a revoked code: refused.
        assert_eq!(
            outcome(&enter(&running, &elsewhere.display()).await),
            Some(Outcome::Deny)
        );
        assert_eq!(last_reason(&running), "keypad_invalid");
        assert_eq!(
            outcome(&enter(&running, &revoked.display()).await),
            Some(Outcome::Deny)
        );
        assert_eq!(last_reason(&running), "keypad_revoked");
        // The last second of the window, still offline: the simulator's keypad command opens.
        clock.set(spec.not_after - 1);
        let (rc, stdout) = cli(&running.tap_socket, &late.display()).await;
        assert_eq!(rc, 0, "{stdout}");
        assert!(stdout.starts_with("allow"), "{stdout}");
        // After the window (and its skew): refused, as expired.
        clock.set(spec.not_after + 61);
        let (rc, _) = cli(&running.tap_socket, &unused.display()).await;
        assert_eq!(rc, 2);
        assert_eq!(last_reason(&running), "keypad_expired");

        // The chain holds every decision; the door opened exactly twice; the code ids are the
        // server's join key, and no receipt holds the digits.
        let bodies = chain_bodies(&lock.state, &pubkey);
        let reasons: Vec<&str> = bodies.iter().map(|b| b.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "keypad_ok",
                "keypad_replayed",
                "keypad_invalid",
                "keypad_revoked",
                "keypad_ok",
                "keypad_expired"
            ]
        );
        assert_eq!(
            bodies[0].token_id,
            Some(Bytes(code_id(&secret, LOCK, &spec)))
        );
        assert_eq!(bodies[2].token_id, None);
        assert!(bodies.iter().all(|b| b.token_hash.is_none()));
        let log = std::fs::read(lock.state.file("receipts.log")).unwrap();
        for c in [&code, &late, &unused, &elsewhere] {
            let digits = c.digits().into_bytes();
            assert!(!log.windows(digits.len()).any(|w| w == digits.as_slice()));
        }
        assert_eq!(door_opens(&lock.state).len(), 2);
        running.stop().await;
    }

    /// The door panel's keypad form goes through the same keypad decision as the tap socket's
    /// `Keypad` message: the incident code opens once, then is refused as replayed; a wrong code
    /// is refused; a body that is not a form with one code gets no decision and no receipt (only
    /// the malformed tally); a post from another origin is refused before the door; after five
    /// wrong codes the panel says the keypad is locked and writes no receipt, and a socket entry
    /// finds it locked too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_door_panel_keypad_decides_as_the_keypad_does() {
        let lock = new_lock(&["k1"], None);
        let clock = ManualClock::new(T);
        let running = start_panel_agent(&lock, Arc::new(clock.clone()));
        let addr = running.door_panel.unwrap();
        let secret = CodeSecret([11; 32]);
        give_secret(&running, &secret);
        let window = incident_window(T, T + 1800).unwrap();
        let (code, spec) = incident_code(&secret, LOCK, window, 0).unwrap();
        let form = |code: &str| format!("code={}", code.replace(' ', "+"));
        let post = |body: String| async move {
            let mut raw = format!(
                "POST /keypad HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            raw.extend_from_slice(body.as_bytes());
            let (status, page) = panel_raw(addr, &raw).await;
            (status, String::from_utf8(page).unwrap())
        };

        // The panel page offers the keypad form.
        let (status, page) = panel_raw(
            addr,
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status, 200);
        let page = String::from_utf8(page).unwrap();
        assert!(page.contains(r#"action="/keypad""#) && page.contains(r#"name="code""#));

        let (status, page) = post(form(&code.display())).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains(r#"data-outcome="allow""#), "{page}");
        assert_eq!(last_reason(&running), "keypad_ok");
        let (status, page) = post(form(&code.digits())).await;
        assert_eq!(status, 200);
        assert!(page.contains(r#"data-outcome="deny""#), "{page}");
        assert_eq!(last_reason(&running), "keypad_replayed");
        assert_eq!(receipt_count(&running), 2);

        // Not a keypad form: no decision, no receipt, counted.
        let before = malformed_count(&running);
        for body in ["", "other=1", "code=1&code=2", "code=%zz"] {
            let (status, _) = post(body.to_owned()).await;
            assert_eq!(status, 400, "{body:?}");
        }
        assert_eq!(receipt_count(&running), 2);
        assert_eq!(malformed_count(&running), before + 4);
        // Another origin cannot drive the keypad from a browser.
        let mut raw = format!(
            "POST /keypad HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\n\
             Content-Length: {}\r\n\r\n",
            form(WRONG).len()
        )
        .into_bytes();
        raw.extend_from_slice(form(WRONG).as_bytes());
        assert_eq!(panel_raw(addr, &raw).await.0, 403);
        assert_eq!(receipt_count(&running), 2);

        // Wrong codes: the same lockout as the keypad (the replay was the first failure).
        for _ in 1..keypad::FREE_TRIES {
            let (status, page) = post(form(WRONG)).await;
            assert_eq!(status, 200);
            assert!(page.contains(r#"data-outcome="deny""#));
        }
        assert_eq!(last_reason(&running), "keypad_invalid");
        assert_eq!(receipt_count(&running), 6);
        let (fresh, _) = incident_code(&secret, LOCK, window, 1).unwrap();
        let (status, page) = post(form(&fresh.display())).await;
        assert_eq!(status, 429, "{page}");
        assert!(page.contains(r#"data-outcome="locked""#) && page.contains("60 seconds"));
        assert_eq!(receipt_count(&running), 6);
        assert!(matches!(
            enter(&running, &fresh.display()).await,
            EntryAnswer::Locked(_)
        ));
        // Once the lockout is over the fresh code opens, through the panel.
        clock.advance(61);
        let (_, page) = post(form(&fresh.display())).await;
        assert!(page.contains(r#"data-outcome="allow""#), "{page}");
        assert_eq!(door_opens(&lock.state).len(), 2);
        assert!(spec.not_after > T);
        running.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_codes_lock_the_keypad_with_doubling_delays_and_a_flood_writes_no_receipts() {
        let lock = new_lock(&["k1"], None);
        let clock = ManualClock::new(T);
        let running = start_agent(&lock, Arc::new(clock.clone()));
        let secret = CodeSecret([7; 32]);
        give_secret(&running, &secret);
        let window = incident_window(T, T + 7200).unwrap();
        let (good, _) = incident_code(&secret, LOCK, window, 0).unwrap();

        for _ in 0..keypad::FREE_TRIES {
            assert_eq!(outcome(&enter(&running, WRONG).await), Some(Outcome::Deny));
        }
        assert_eq!(receipt_count(&running), 5);
        // Locked: even the right code waits, and gets no decision and no receipt.
        assert_eq!(
            enter(&running, &good.display()).await,
            EntryAnswer::Locked(60)
        );
        let (rc, stdout) = cli(&running.tap_socket, &good.display()).await;
        assert_eq!(rc, 3, "{stdout}");
        // The lockout survives a restart (it is folded from the receipts).
        running.stop().await;
        let running = start_agent(&lock, Arc::new(clock.clone()));
        assert_eq!(enter(&running, WRONG).await, EntryAnswer::Locked(60));

        // A flood of 10,000 entries while locked: no receipt, a bounded number of writes.
        let log_len = || {
            std::fs::metadata(lock.state.file("receipts.log"))
                .unwrap()
                .len()
        };
        let before = log_len();
        {
            let mut d = running.door.lock().unwrap();
            let writes = d.store().durable_writes();
            let challenge = d.new_challenge().unwrap();
            for i in 0..10_000u32 {
                if i % 200 == 199 {
                    clock.advance(1); // 50 s of the lock's clock in all
                }
                let a = keypad::decide(&mut d, &challenge, WRONG).unwrap();
                assert!(matches!(a, keypad::KeypadAnswer::Locked { .. }));
            }
            d.tick().unwrap();
            let spent = d.store().durable_writes() - writes;
            assert!(spent <= 3, "{spent} durable writes for 10,000 entries");
            assert_eq!(d.store().head().seq, 5);
            assert!(d.store().status().keypad_locked_entries.count >= 10_000);
        }
        assert_eq!(log_len(), before, "a flood grew the receipt log");

        // After the lockout one more try; a wrong one doubles the delay.
        clock.set(T + 60);
        assert_eq!(outcome(&enter(&running, WRONG).await), Some(Outcome::Deny));
        assert_eq!(enter(&running, WRONG).await, EntryAnswer::Locked(120));
        clock.advance(120);
        // The right code after the delay opens, and the count starts again.
        assert_eq!(
            outcome(&enter(&running, &good.display()).await),
            Some(Outcome::Allow)
        );
        assert_eq!(
            running.door.lock().unwrap().store().keypad_failures().count,
            0
        );

        // A guesser trying every 10 s for a whole day gets at most 5 + 6 + 24 + 1 decisions
        // (and receipts): 5 free tries, the doubling delays to 1 h, then one an hour.
        let start = receipt_count(&running);
        {
            let mut d = running.door.lock().unwrap();
            let challenge = d.new_challenge().unwrap();
            for _ in 0..8_640 {
                let _ = keypad::decide(&mut d, &challenge, WRONG).unwrap();
                clock.advance(10);
            }
        }
        let per_day = receipt_count(&running) - start;
        assert!((30..=36).contains(&per_day), "{per_day} receipts in a day");
        running.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn standing_codes_rotate_and_the_old_one_stops_after_the_overlap() {
        let lock = new_lock(&["k1"], None);
        let clock = ManualClock::new(T);
        let running = start_agent(&lock, Arc::new(clock.clone()));
        let secret = CodeSecret([9; 32]);
        give_secret(&running, &secret);
        let day = 86_400;
        let schedule = StandingSchedule {
            epoch: T,
            period_secs: 7 * day,
            overlap_secs: day,
            until: T + 28 * day,
        };
        let standing = |slot, schedule| {
            let mut d = running.door.lock().unwrap();
            let seq = d.store().inbox_seq() + 1;
            d.store_mut()
                .apply_inbox(seq, &InboxMessage::KeypadStanding { slot, schedule })
                .unwrap()
        };
        assert_eq!(standing(12, Some(schedule)), state::Applied::Applied);
        assert!(matches!(
            standing(100, Some(schedule)),
            state::Applied::Refused(_)
        ));
        let (week0, _) = standing_code(&secret, LOCK, 12, &schedule, 0).unwrap();
        let (week1, _) = standing_code(&secret, LOCK, 12, &schedule, 1).unwrap();
        let (other_slot, _) = standing_code(&secret, LOCK, 13, &schedule, 0).unwrap();
        assert_ne!(week0.digits(), week1.digits());

        clock.set(T + day);
        for _ in 0..2 {
            assert_eq!(
                outcome(&enter(&running, &week0.display()).await),
                Some(Outcome::Allow),
                "a standing code works more than once in its period"
            );
        }
        assert_eq!(
            outcome(&enter(&running, &week1.display()).await),
            Some(Outcome::Deny)
        );
        assert_eq!(
            outcome(&enter(&running, &other_slot.display()).await),
            Some(Outcome::Deny)
        );
        // Rotated: in the overlap both work …
        clock.set(T + 7 * day + 3600);
        assert_eq!(
            outcome(&enter(&running, &week0.display()).await),
            Some(Outcome::Allow)
        );
        assert_eq!(
            outcome(&enter(&running, &week1.display()).await),
            Some(Outcome::Allow)
        );
        // … after it only the new one.
        clock.set(T + 8 * day + 3600);
        assert_eq!(
            outcome(&enter(&running, &week0.display()).await),
            Some(Outcome::Deny)
        );
        assert_eq!(last_reason(&running), "keypad_expired");
        assert_eq!(
            outcome(&enter(&running, &week1.display()).await),
            Some(Outcome::Allow)
        );
        // The slot removed (the trusted party revoked): refused at once; survives a restart.
        assert_eq!(standing(12, None), state::Applied::Applied);
        running.stop().await;
        let running = start_agent(&lock, Arc::new(clock.clone()));
        assert_eq!(
            outcome(&enter(&running, &week1.display()).await),
            Some(Outcome::Deny)
        );
        assert_eq!(last_reason(&running), "keypad_invalid");
        running.stop().await;
    }
}

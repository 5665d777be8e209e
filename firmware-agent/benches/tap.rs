//! Tap-decision benchmark: what durability costs on top of token verification.
//!
//! `cargo bench -p firstkey-agent --bench tap` measures, on a real state directory (created by
//! `state::init` under cargo's target tmp dir, so on the build disk rather than a tmpfs):
//!
//! 1. `verify_p256_webauthn`: `firstkey_token::verify` alone — a token with a P-256 `cnf` and a
//!    WebAuthn-style proof from a [`SoftwareAuthenticator`], checked against the lock's own
//!    [`Store`] (trust bundle, revocations, replay records, floor) exactly as `Door::decide` calls
//!    it, but with nothing written.
//! 2. `decide_allow_new_second`: the full decision, `Door::decide`, for a fresh token minted a
//!    second after the previous one (as nearly every real token is): verify, sign and
//!    fsync-append the receipt that is also the replay record and carries the time floor raised to
//!    the token's `iat` (trusted time) — one durable write, checked —, open the door (an actuator
//!    that only counts), sign the ack.
//! 3. `decide_allow_same_second`: the same with the floor already at the token's `iat` (the
//!    baseline of before the floor rode in the receipt record: one fsync then, three otherwise).
//! 4. `decide_deny_replayed`: the full decision for a token already used: the verify that refuses
//!    it as replayed, and the deny receipt (also fsynced); a deny never moves the floor.
//!
//! Minting, challenges and the presenter's proofs are prepared outside the measured time
//! (`iter_custom`, each decision timed on its own). Every decision is checked (allow/deny, reason,
//! chain length). At the end a summary prints the median per decision and the ratio of each full
//! decision to verify alone.

// Benchmark code: a failed unwrap is a broken benchmark, reported loudly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::hint::black_box;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::Criterion;
use firstkey_agent::actuator::{Actuator, OpenRequest};
use firstkey_agent::clock::{Clock, ManualClock, SystemClock};
use firstkey_agent::demo::{self, Issuer, TokenSpec};
use firstkey_agent::door::{Door, REASON_OK};
use firstkey_agent::protocol::tap::{Outcome, PresenterMessage};
use firstkey_agent::receipt;
use firstkey_agent::state::{self, InitParams, StateDir, Store};
use firstkey_agent::tap_server::{self, PresenterKey};
use firstkey_token::pop::FLAG_USER_PRESENT;
use firstkey_token::{
    Challenge, LockId, Presentation, SoftwareAuthenticator, pop_message, token_hash, verify,
};

const LOCK: &str = "front-door";
const RP: &str = "firstkey.example";
/// Token lifetime: long enough that the bench's one-second clock steps never expire a token.
const TTL: u64 = 30 * 24 * 3600;

/// The door hardware reduced to a counter, so the figures are the decision's own cost (the
/// simulated actuator would add an fsynced append to `actuator.log` and a relock thread).
struct CountingActuator(Arc<AtomicU64>);

impl Actuator for CountingActuator {
    fn open(&mut self, _: OpenRequest) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

struct Rig {
    _tmp: tempfile::TempDir,
    issuer: Issuer,
    presenter: PresenterKey,
    clock: ManualClock,
    door: Door,
    opens: Arc<AtomicU64>,
}

impl Rig {
    fn new() -> Self {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        let issuer = Issuer::generate("mun-042", RP).unwrap();
        state::init(
            &dir,
            &InitParams {
                lock_id: LOCK.into(),
                root_public_key: issuer.root_public_key().unwrap(),
                trust_bundle: Some(issuer.bundle(1, &["k1"]).unwrap()),
                server: None,
                server_ca_pem: None,
                hold_ms: 3000,
                skew_secs: 60,
            },
        )
        .unwrap();
        let rng = ring::rand::SystemRandom::new();
        let authenticator =
            SoftwareAuthenticator::from_pkcs8(&demo::new_p256_pkcs8().unwrap(), RP, &rng).unwrap();
        let clock = ManualClock::new(SystemClock.now());
        let opens = Arc::new(AtomicU64::new(0));
        let door = Door::new(
            Store::open(&dir).unwrap(),
            Box::new(CountingActuator(opens.clone())),
            Arc::new(clock.clone()),
        );
        Self {
            _tmp: tmp,
            issuer,
            presenter: PresenterKey::P256(Box::new(authenticator)),
            clock,
            door,
            opens,
        }
    }

    fn authenticator(&self) -> &SoftwareAuthenticator {
        match &self.presenter {
            PresenterKey::P256(a) => a,
            PresenterKey::Ed25519(_) => unreachable!("the rig's presenter is P-256"),
        }
    }

    /// A fresh single-use token for this lock, bound to the presenter's P-256 key.
    fn mint(&self) -> Vec<u8> {
        let now = self.clock.now();
        self.issuer
            .mint(
                "k1",
                &TokenSpec {
                    lock_id: LOCK.into(),
                    not_before: now.saturating_sub(5),
                    expires_at: now + TTL,
                    max_uses: 1,
                    confirmation: Some(self.authenticator().confirmation_key()),
                },
            )
            .unwrap()
    }

    /// The lock's challenge and the presenter's answer to it (the presenter's side, unmeasured).
    fn present(&self, token: &[u8]) -> (Challenge, PresenterMessage) {
        let challenge = self.door.new_challenge().unwrap();
        let msg = tap_server::respond(&challenge.0, LOCK, token, Some(&self.presenter)).unwrap();
        (challenge, msg)
    }

    fn last_reason(&self) -> String {
        let store = self.door.store();
        let last = store.receipts().pop().unwrap();
        receipt::verify_one(&last, store.device_public_key())
            .unwrap()
            .body
            .reason
    }

    /// Decide every prepared tap, one clock step of `step` seconds before each; the summed
    /// measured time, each decision's time pushed to `times`.
    fn decide_all(
        &mut self,
        prepared: Vec<(Challenge, PresenterMessage)>,
        step: u64,
        expect: Outcome,
        times: &mut Vec<f64>,
    ) -> Duration {
        let mut total = Duration::ZERO;
        for (challenge, msg) in prepared {
            self.clock.advance(step);
            let start = Instant::now();
            let decision = self.door.decide(&challenge, msg).unwrap();
            let elapsed = start.elapsed();
            assert_eq!(decision.outcome, expect);
            black_box(decision);
            total += elapsed;
            times.push(elapsed.as_nanos() as f64);
        }
        total
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn main() {
    let mut rig = Rig::new();
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();

    let (mut t_verify, mut t_allow, mut t_allow_same, mut t_replay) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());

    // (1) verify alone: the call Door::decide makes, against the same store, writing nothing.
    let token = rig.mint();
    let token_len = token.len();
    let challenge = rig.door.new_challenge().unwrap();
    let lock_id = LockId::parse(LOCK).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let proof = rig
        .authenticator()
        .assert(
            &pop_message(&challenge, &lock_id, &token_hash(&token)),
            FLAG_USER_PRESENT,
            &rng,
        )
        .unwrap()
        .to_cbor();
    let proof_len = proof.len();
    {
        let store = rig.door.store();
        let bundle = store.trust_bundle().unwrap();
        let options = store.verify_options();
        let presentation = Presentation {
            challenge: &challenge,
            proof: Some(&proof),
        };
        let now = rig.clock.now();
        assert!(verify(&token, bundle, store, &presentation, now, &options).is_ok());
        c.bench_function("verify_p256_webauthn", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let verdict = verify(
                        black_box(&token),
                        bundle,
                        store,
                        &presentation,
                        now,
                        &options,
                    );
                    let elapsed = start.elapsed();
                    assert!(verdict.is_ok());
                    total += elapsed;
                    t_verify.push(elapsed.as_nanos() as f64);
                }
                total
            });
        });
    }

    // (2) full decision, allow, floor raised durably by this tap's token (its `iat`).
    let mut allows = 0u64;
    c.bench_function("decide_allow_new_second", |b| {
        b.iter_custom(|iters| {
            let prepared: Vec<_> = (0..iters)
                .map(|_| {
                    rig.clock.advance(1);
                    rig.present(&rig.mint())
                })
                .collect::<Vec<_>>();
            allows += iters;
            let writes = rig.door.store().durable_writes();
            let floor = rig.door.store().floor();
            let total = rig.decide_all(prepared, 0, Outcome::Allow, &mut t_allow);
            assert_eq!(
                rig.door.store().durable_writes() - writes,
                iters,
                "one durable write per decision"
            );
            assert!(
                rig.door.store().floor() > floor || iters == 0,
                "the floor moved"
            );
            total
        });
    });
    assert_eq!(rig.last_reason(), REASON_OK);

    // (3) full decision, allow, floor already at now: the receipt append is the only write.
    c.bench_function("decide_allow_same_second", |b| {
        b.iter_custom(|iters| {
            rig.clock.advance(1);
            // Trusted time at the tokens' `iat` already: no floor write during the batch.
            let now = rig.clock.now();
            rig.door.store_mut().advance_floor(now - 5).unwrap();
            let prepared: Vec<_> = (0..iters)
                .map(|_| rig.present(&rig.mint()))
                .collect::<Vec<_>>();
            allows += iters;
            let floor = rig.door.store().floor();
            let total = rig.decide_all(prepared, 0, Outcome::Allow, &mut t_allow_same);
            assert_eq!(rig.door.store().floor(), floor, "no floor write expected");
            total
        });
    });

    // (4) full decision, deny: a token already used once (its allow receipt is its replay record).
    let spent = rig.mint();
    let (ch, msg) = rig.present(&spent);
    assert_eq!(rig.door.decide(&ch, msg).unwrap().outcome, Outcome::Allow);
    allows += 1;
    c.bench_function("decide_deny_replayed", |b| {
        b.iter_custom(|iters| {
            let prepared: Vec<_> = (0..iters).map(|_| rig.present(&spent)).collect::<Vec<_>>();
            rig.decide_all(prepared, 1, Outcome::Deny, &mut t_replay)
        });
    });
    c.final_summary();

    // Every decision is on the chain; the door opened exactly once per allow.
    let decisions = t_allow.len() + t_allow_same.len() + t_replay.len() + 1;
    assert_eq!(rig.door.store().head().seq as usize, decisions);
    assert_eq!(rig.opens.load(Ordering::Relaxed), allows);
    if !t_replay.is_empty() {
        assert_eq!(rig.last_reason(), "replayed");
    }

    let us =
        |v: Option<f64>| v.map_or_else(|| "     n/a".into(), |ns| format!("{:>8.1}", ns / 1e3));
    let verify_ns = median(&mut t_verify);
    let allow_ns = median(&mut t_allow);
    let allow_same_ns = median(&mut t_allow_same);
    let replay_ns = median(&mut t_replay);
    let ratio = |full: Option<f64>| match (full, verify_ns) {
        (Some(f), Some(v)) => format!("{:>6.1}x verify", f / v),
        _ => "   n/a".into(),
    };
    println!();
    println!(
        "firstkey tap decision (median per decision; token {token_len} B with P-256 cnf, \
         WebAuthn proof {proof_len} B; state dir on {})",
        env!("CARGO_TARGET_TMPDIR")
    );
    println!(
        "  verify alone (P-256 WebAuthn PoP)                     {} us   n={}",
        us(verify_ns),
        t_verify.len()
    );
    println!(
        "  decide allow, floor raised (1 fsync: log record)     {} us   {}   n={}",
        us(allow_ns),
        ratio(allow_ns),
        t_allow.len()
    );
    println!(
        "  decide allow, floor current (1 fsync: log record)    {} us   {}   n={}",
        us(allow_same_ns),
        ratio(allow_same_ns),
        t_allow_same.len()
    );
    println!(
        "  decide deny, replayed (1 fsync: log record)          {} us   {}   n={}",
        us(replay_ns),
        ratio(replay_ns),
        t_replay.len()
    );
    if let (Some(f), Some(v)) = (allow_ns, verify_ns) {
        println!(
            "summary: full tap decision / verify alone = {:.1}x (target <= 4x; {:.1} us of the \
             {:.1} us is durability, signing and bookkeeping)",
            f / v,
            (f - v) / 1e3,
            f / 1e3
        );
    }
    println!();
}

//! Keypad decision against the tap decision, in the same run on the same state directory.
//!
//! `cargo bench -p firstkey-agent --bench keypad` times, interleaved (tap, keypad, tap, …) so
//! both see the same disk and cache conditions:
//!
//! - `tap allow`: `Door::decide` for a fresh P-256/WebAuthn-bound token (verify, fsynced receipt
//!   that is the replay record, actuator, signed ack) — the baseline;
//! - `keypad allow`: `keypad::decide` for a fresh incident code (header → one HMAC → window →
//!   replay record → fsynced receipt → actuator → signed ack);
//! - `keypad wrong`: a wrong code (deny receipt, fsynced), with the lockout counter held below
//!   the limit so every entry is a decision;
//! - `keypad verify alone` and `tap verify alone`: the checks without any write.
//!
//! The clock stays at one second (no floor writes after the first tap), so each full decision
//! costs exactly one receipt append; the order of the three kinds rotates every round. Figures: medians, and each as a ratio to the tap decision measured here.

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
use std::time::Instant;

use firstkey_agent::actuator::{Actuator, OpenRequest};
use firstkey_agent::clock::{Clock, ManualClock, SystemClock};
use firstkey_agent::demo::{self, Issuer, TokenSpec};
use firstkey_agent::door::Door;
use firstkey_agent::keypad::{
    self, CodeSecret, FnLedger, INCIDENT_MINUTES, KeypadAnswer, SLOT_SECS, incident_code,
};
use firstkey_agent::protocol::channel::InboxMessage;
use firstkey_agent::protocol::tap::Outcome;
use firstkey_agent::state::{self, InitParams, StateDir, Store};
use firstkey_agent::tap_server::{self, PresenterKey};
use firstkey_token::{Presentation, SoftwareAuthenticator, verify};

const LOCK: &str = "front-door";
const RP: &str = "firstkey.example";
const ROUNDS: usize = 300;

struct NoDoor;

impl Actuator for NoDoor {
    fn open(&mut self, _: OpenRequest) -> io::Result<()> {
        Ok(())
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
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
    let confirmation = authenticator.confirmation_key();
    let presenter = PresenterKey::P256(Box::new(authenticator));
    let now = SystemClock.now();
    let clock = ManualClock::new(now);
    let mut door = Door::new(
        Store::open(&dir).unwrap(),
        Box::new(NoDoor),
        Arc::new(clock.clone()),
    );
    let secret = CodeSecret([0x5a; 32]);
    door.store_mut()
        .apply_inbox(
            1,
            &InboxMessage::KeypadSecret {
                secret: secret.clone(),
            },
        )
        .unwrap();
    door.store_mut().advance_floor(now - 5).unwrap();

    // Every incident code valid now: each length, each start slot whose window covers now, each
    // index digit.
    let slot_now = now - now % SLOT_SECS;
    let mut codes = Vec::new();
    for minutes in INCIDENT_MINUTES {
        let mut start = slot_now;
        while start + minutes * 60 > now && codes.len() < 2 * ROUNDS + 20 {
            for index in 0..10 {
                codes.push(
                    incident_code(&secret, LOCK, (start, start + minutes * 60), index)
                        .unwrap()
                        .0
                        .digits(),
                );
            }
            start -= SLOT_SECS;
        }
    }
    assert!(codes.len() >= ROUNDS + 10, "{} codes", codes.len());
    let mint = || {
        issuer
            .mint(
                "k1",
                &TokenSpec {
                    lock_id: LOCK.into(),
                    not_before: now - 5,
                    expires_at: now + 3600,
                    max_uses: 1,
                    confirmation: Some(confirmation),
                },
            )
            .unwrap()
    };

    // Verify alone, both kinds, nothing written.
    let (mut t_tap_verify, mut t_kp_verify) = (Vec::new(), Vec::new());
    let token = mint();
    let challenge = door.new_challenge().unwrap();
    let firstkey_agent::protocol::tap::PresenterMessage::Present { proof, .. } =
        tap_server::respond(&challenge.0, LOCK, &token, Some(&presenter)).unwrap()
    else {
        unreachable!()
    };
    let proof = proof.unwrap().into_vec();
    let unused = FnLedger(|_: &[u8; 16]| 0, |_: &[u8; 16]| false);
    for _ in 0..ROUNDS {
        let store = door.store();
        let presentation = Presentation {
            challenge: &challenge,
            proof: Some(&proof),
        };
        let options = store.verify_options();
        let bundle = store.trust_bundle().unwrap();
        let start = Instant::now();
        let v = verify(
            black_box(&token),
            bundle,
            store,
            &presentation,
            now,
            &options,
        );
        t_tap_verify.push(start.elapsed().as_nanos() as f64);
        assert!(v.is_ok());
        let view = store.keypad_view();
        let start = Instant::now();
        let v = keypad::verify(&view, black_box(&codes[0]), now, &unused);
        t_kp_verify.push(start.elapsed().as_nanos() as f64);
        assert!(v.allows());
    }

    // Full decisions, interleaved.
    let (mut t_tap, mut t_kp, mut t_wrong) = (Vec::new(), Vec::new(), Vec::new());
    // The order alternates each round, so neither kind always pays for the fsync after a pause.
    for (round, code) in codes.iter().take(ROUNDS).enumerate() {
        for step in 0..3 {
            match (step + round) % 3 {
                0 => {
                    let token = mint();
                    let challenge = door.new_challenge().unwrap();
                    let msg =
                        tap_server::respond(&challenge.0, LOCK, &token, Some(&presenter)).unwrap();
                    let start = Instant::now();
                    let d = door.decide(&challenge, msg).unwrap();
                    t_tap.push(start.elapsed().as_nanos() as f64);
                    assert_eq!(d.outcome, Outcome::Allow);
                }
                1 => {
                    let challenge = door.new_challenge().unwrap();
                    let start = Instant::now();
                    let d = keypad::decide(&mut door, &challenge, code).unwrap();
                    t_kp.push(start.elapsed().as_nanos() as f64);
                    assert!(
                        matches!(&d, KeypadAnswer::Decided(d) if d.outcome == Outcome::Allow),
                        "{d:?}"
                    );
                }
                _ => {
                    // Wrong code; a keypad allow resets the count, so wrong entries stay below
                    // the lockout.
                    if door.store().keypad_failures().count + 1 < keypad::FREE_TRIES {
                        let challenge = door.new_challenge().unwrap();
                        let start = Instant::now();
                        let d =
                            keypad::decide(&mut door, &challenge, "999 999 999 999 999").unwrap();
                        t_wrong.push(start.elapsed().as_nanos() as f64);
                        assert!(
                            matches!(&d, KeypadAnswer::Decided(d) if d.outcome == Outcome::Deny)
                        );
                    }
                }
            }
        }
    }
    assert_eq!(
        door.store().head().seq as usize,
        t_tap.len() + t_kp.len() + t_wrong.len()
    );

    let tap = median(&mut t_tap);
    let row = |name: &str, v: &mut Vec<f64>| {
        let m = median(v);
        println!(
            "  {name:<34} {:>9.1} us   {:>7.4}x tap decision   n={}",
            m / 1e3,
            m / tap,
            v.len()
        );
    };
    println!(
        "firstkey keypad decision vs tap decision (median; state dir on {})",
        env!("CARGO_TARGET_TMPDIR")
    );
    row("tap decision (P-256 PoP, 1 fsync)", &mut t_tap.clone());
    row("keypad decision, allow (1 fsync)", &mut t_kp);
    row("keypad decision, wrong (1 fsync)", &mut t_wrong);
    row("tap verify alone", &mut t_tap_verify);
    row("keypad verify alone", &mut t_kp_verify);
}

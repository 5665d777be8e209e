//! Fuzz target: untrusted keypad input into the lock's keypad parser and decision.
//!
//! The bytes are a tap frame payload (the `Keypad { code }` presenter message travels in one)
//! and, as text, the entry itself. Must never panic; an entry is accepted only if it is one of
//! the fixture's real codes (exactly its digits, with spaces or dashes), and whatever parses
//! re-encodes to the same digits.
#![no_main]

use std::collections::BTreeMap;

use firstkey_agent::keypad::{
    CodeSecret, FnLedger, KeypadView, StandingSchedule, incident_code, parse_code, standing_code,
    verify,
};
use firstkey_agent::protocol::tap::{PresenterMessage, decode_presenter_message};
use libfuzzer_sys::fuzz_target;

const LOCK: &str = "front-door";
const NOW: u64 = 1_800_000_123;
const SECRET: CodeSecret = CodeSecret([0x42; 32]);
const SCHEDULE: StandingSchedule = StandingSchedule {
    epoch: NOW - 3 * 86_400,
    period_secs: 7 * 86_400,
    overlap_secs: 86_400,
    until: NOW + 60 * 86_400,
};

fn check_entry(entry: &str) {
    let standing = BTreeMap::from([(7u8, SCHEDULE)]);
    let view = KeypadView {
        lock_id: LOCK,
        secret: Some(&SECRET),
        standing: &standing,
        floor: 0,
        skew: 60,
    };
    let ledger = FnLedger(|_: &[u8; 16]| 0, |_: &[u8; 16]| false);
    let verdict = verify(&view, entry, NOW, &ledger);
    if let Ok(code) = parse_code(entry) {
        assert_eq!(parse_code(&code.digits()).ok(), Some(code.clone()));
        assert_eq!(parse_code(&code.display()).ok(), Some(code.clone()));
        if verdict.allows() {
            let start = NOW - NOW % 300;
            let real = incident_code(&SECRET, LOCK, (start, start + 1800), 0).unwrap().0;
            let standing = standing_code(&SECRET, LOCK, 7, &SCHEDULE, 0).unwrap().0;
            assert!(code == real || code == standing, "accepted a code nobody issued");
        }
    } else {
        assert!(!verdict.allows());
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(PresenterMessage::Keypad { code }) = decode_presenter_message(data) {
        check_entry(&code);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_entry(text);
    }
});

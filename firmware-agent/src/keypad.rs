//! Offline keypad codes: derivation (shared with the server), parsing, and the lock's decision.
//!
//! A code is 15 digits, `H K S S I` + 11 MAC digits (`PROTOCOL.md`, "Keypad codes"):
//!
//! - the 4 header digits say which window and index the code claims, so the lock tries exactly
//!   one candidate per entry (no search that would multiply a guesser's odds);
//! - the 11 MAC digits are HMAC-SHA256 under the lock's code secret over the lock id, the kind,
//!   the window and the index, truncated to 64 bits and reduced mod 10¹¹.
//!
//! Incident codes are single use (the allow receipt, carrying the code's id, is the replay record
//! as for tokens); standing codes may be used any number of times inside their period. A wrong
//! code costs a growing delay: after [`FREE_TRIES`] consecutive failures the keypad is locked for
//! 60 s, doubling with every further failure up to [`LOCKOUT_MAX_SECS`]. Entries while locked get
//! no decision and no receipt; they are tallied like malformed tap frames (bounded writes).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use firstkey_token::Challenge;
use ring::hmac;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

use crate::door::{Door, TapDecision};
use crate::protocol::Bytes;
use crate::protocol::tap::{
    LockMessage, MAX_TAP_FRAME, Outcome, PresenterMessage, TapAck, decode_lock_message,
    encode_presenter_message,
};
use crate::protocol::{PROTOCOL_VERSION, read_frame, write_frame};
use crate::receipt::ReceiptBody;
use crate::state::{StateError, Store};
use crate::tap_server::TapError;

/// Digits in a code.
pub const CODE_DIGITS: usize = 15;
/// Header digits (kind/duration, two slot digits, index).
pub const HEADER_DIGITS: usize = 4;
/// Digits of the truncated MAC.
pub const MAC_DIGITS: u32 = 11;
const MAC_MODULUS: u64 = 100_000_000_000;
/// Longest keypad entry the lock reads (digits plus spaces and dashes).
pub const MAX_ENTRY_CHARS: usize = 64;

/// Incident windows start on a boundary of this many seconds.
pub const SLOT_SECS: u64 = 300;
/// Incident window lengths in minutes, by the first header digit (0..=7).
pub const INCIDENT_MINUTES: [u64; 8] = [10, 15, 20, 30, 45, 60, 90, 120];
/// First header digit of a standing code.
pub const STANDING_DIGIT: u8 = 8;
/// Most standing-code slots on a lock (two slot digits).
pub const MAX_STANDING_SLOTS: u8 = 100;

/// Consecutive wrong entries before the keypad starts locking.
pub const FREE_TRIES: u32 = 5;
/// First lockout.
pub const LOCKOUT_BASE_SECS: u64 = 60;
/// Longest lockout.
pub const LOCKOUT_MAX_SECS: u64 = 3600;

/// Receipt reasons of keypad decisions (all start with `keypad_`).
pub const REASON_KEYPAD_OK: &str = "keypad_ok";
/// The entry is not a code of this lock (wrong digits, wrong MAC, unknown slot).
pub const REASON_KEYPAD_INVALID: &str = "keypad_invalid";
/// A real code of this lock, past its window.
pub const REASON_KEYPAD_EXPIRED: &str = "keypad_expired";
/// A real code of this lock, before its window.
pub const REASON_KEYPAD_NOT_YET_VALID: &str = "keypad_not_yet_valid";
/// A real incident code that already opened the door.
pub const REASON_KEYPAD_REPLAYED: &str = "keypad_replayed";
/// The lock has no code secret yet.
pub const REASON_KEYPAD_NO_SECRET: &str = "keypad_no_secret";
/// The lock's clock is below its trusted time floor.
pub const REASON_KEYPAD_CLOCK_BEHIND: &str = "keypad_clock_behind_floor";

const MAC_DOMAIN: &[u8] = b"firstkey-keypad-v1";
const ID_DOMAIN: &[u8] = b"firstkey-keypad-id-v1";

/// A real incident code revoked over the channel (its grant was revoked).
pub const REASON_KEYPAD_REVOKED: &str = "keypad_revoked";

/// A lock's 32-byte code secret. Never printed: its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct CodeSecret(pub [u8; 32]);

impl std::fmt::Debug for CodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeSecret(<redacted>)")
    }
}

impl Serialize for CodeSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Bytes(self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for CodeSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Bytes::<32>::deserialize(d).map(|b| Self(b.0))
    }
}

/// Incident (single use) or standing (a trusted party's code for one period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CodeKind {
    /// One-time code under a grant.
    Incident,
    /// A trusted party's code for one rotation period.
    Standing,
}

impl CodeKind {
    fn byte(self) -> u8 {
        match self {
            CodeKind::Incident => 1,
            CodeKind::Standing => 2,
        }
    }
}

/// What a code stands for: the MAC covers all of it (and the lock id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CodeSpec {
    /// Incident or standing.
    pub kind: CodeKind,
    /// First second of the window (Unix s).
    pub not_before: u64,
    /// First second after the window (Unix s).
    pub not_after: u64,
    /// Incident: the index digit (0..=9); standing: the slot (0..=99).
    pub index: u32,
}

/// A lock's standing-code schedule for one slot (one trusted party), from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandingSchedule {
    /// Start of period 0 (Unix s).
    pub epoch: u64,
    /// Rotation period in seconds (≥ 1 hour).
    pub period_secs: u64,
    /// How long a period's code keeps working into the next period (< the period).
    pub overlap_secs: u64,
    /// No standing code of this slot works at or after this time.
    pub until: u64,
}

impl StandingSchedule {
    /// Whether the schedule is usable (the lock refuses others when they arrive).
    pub fn is_valid(&self) -> bool {
        self.period_secs >= 3600 && self.overlap_secs < self.period_secs && self.until > self.epoch
    }

    /// The window of period `k`.
    pub fn window(&self, k: u64) -> Option<(u64, u64)> {
        let start = self.epoch.checked_add(k.checked_mul(self.period_secs)?)?;
        let end = start
            .checked_add(self.period_secs)?
            .checked_add(self.overlap_secs)?
            .min(self.until);
        (start < end).then_some((start, end))
    }

    /// The period that contains `t` (without the overlap), if `t` is at or after the epoch.
    pub fn period_at(&self, t: u64) -> Option<u64> {
        t.checked_sub(self.epoch)
            .map(|d| d / self.period_secs.max(1))
    }
}

/// A code as digits (exactly [`CODE_DIGITS`], each 0..=9).
#[derive(Clone, PartialEq, Eq)]
pub struct Code(pub [u8; CODE_DIGITS]);

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Code(<redacted>)")
    }
}

impl Code {
    /// The digits in groups of three, as read over a radio: `123 456 789 012 345`.
    pub fn display(&self) -> String {
        let mut out = String::with_capacity(CODE_DIGITS + 4);
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 && i % 3 == 0 {
                out.push(' ');
            }
            out.push(char::from(b'0' + d));
        }
        out
    }

    /// The digits without separators.
    pub fn digits(&self) -> String {
        self.0.iter().map(|d| char::from(b'0' + d)).collect()
    }

    fn header(&self) -> [u8; HEADER_DIGITS] {
        [self.0[0], self.0[1], self.0[2], self.0[3]]
    }

    fn mac_digits(&self) -> [u8; MAC_DIGITS as usize] {
        let mut m = [0u8; MAC_DIGITS as usize];
        m.copy_from_slice(&self.0[HEADER_DIGITS..]);
        m
    }
}

/// Why a keypad entry is not a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Longer than [`MAX_ENTRY_CHARS`].
    #[error("entry too long")]
    TooLong,
    /// A character other than a digit, a space or a dash.
    #[error("not a digit")]
    NotADigit,
    /// Not exactly [`CODE_DIGITS`] digits.
    #[error("wrong number of digits")]
    WrongLength,
}

/// Parse a keypad entry: digits, with spaces and dashes ignored.
pub fn parse_code(entry: &str) -> Result<Code, ParseError> {
    if entry.len() > MAX_ENTRY_CHARS {
        return Err(ParseError::TooLong);
    }
    let mut out = [0u8; CODE_DIGITS];
    let mut n = 0usize;
    for b in entry.bytes() {
        match b {
            b'0'..=b'9' => {
                let slot = out.get_mut(n).ok_or(ParseError::WrongLength)?;
                *slot = b - b'0';
                n += 1;
            }
            b' ' | b'-' => {}
            _ => return Err(ParseError::NotADigit),
        }
    }
    if n != CODE_DIGITS {
        return Err(ParseError::WrongLength);
    }
    Ok(Code(out))
}

fn signed_fields(domain: &[u8], lock_id: &str, spec: &CodeSpec) -> Vec<u8> {
    let id = lock_id.as_bytes();
    let mut m = Vec::with_capacity(domain.len() + 2 + id.len() + 1 + 8 + 8 + 4);
    m.extend_from_slice(domain);
    m.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_be_bytes());
    m.extend_from_slice(id);
    m.push(spec.kind.byte());
    m.extend_from_slice(&spec.not_before.to_be_bytes());
    m.extend_from_slice(&spec.not_after.to_be_bytes());
    m.extend_from_slice(&spec.index.to_be_bytes());
    m
}

fn mac_value(secret: &CodeSecret, lock_id: &str, spec: &CodeSpec) -> u64 {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret.0);
    let tag = hmac::sign(&key, &signed_fields(MAC_DOMAIN, lock_id, spec));
    let mut first = [0u8; 8];
    for (d, s) in first.iter_mut().zip(tag.as_ref()) {
        *d = *s;
    }
    u64::from_be_bytes(first) % MAC_MODULUS
}

fn mac_digits(secret: &CodeSecret, lock_id: &str, spec: &CodeSpec) -> [u8; MAC_DIGITS as usize] {
    let mut v = mac_value(secret, lock_id, spec);
    let mut out = [0u8; MAC_DIGITS as usize];
    for d in out.iter_mut().rev() {
        *d = u8::try_from(v % 10).unwrap_or(0);
        v /= 10;
    }
    out
}

/// The code's id: what receipts and the server's records name it by (never the digits). Only
/// the holder of the secret can link an id to a code.
pub fn code_id(secret: &CodeSecret, lock_id: &str, spec: &CodeSpec) -> [u8; 16] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret.0);
    let tag = hmac::sign(&key, &signed_fields(ID_DOMAIN, lock_id, spec));
    let mut id = [0u8; 16];
    for (d, s) in id.iter_mut().zip(tag.as_ref()) {
        *d = *s;
    }
    id
}

/// The key a code is revoked under in the lock's revocation list (the channel's `Revocation`
/// message carries it as `token_hash`): SHA-256 of a domain and the code's id, so it cannot
/// collide with a token's hash.
pub fn revocation_key(id: &[u8; 16]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"firstkey-keypad-revocation-v1");
    ctx.update(id);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Why a code cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The window is shorter than the shortest incident window, or the start is not on a slot.
    #[error("no incident window fits")]
    NoWindow,
    /// The index or slot is out of range.
    #[error("index out of range")]
    Index,
    /// The standing period does not exist in the schedule.
    #[error("no such standing period")]
    Period,
}

/// The incident window the server issues at `now` ending no later than `until`: it starts on
/// the slot boundary at or before `now` and is the longest allowed length that ends by `until`.
pub fn incident_window(now: u64, until: u64) -> Result<(u64, u64), IssueError> {
    let start = now - now % SLOT_SECS;
    INCIDENT_MINUTES
        .iter()
        .rev()
        .map(|m| start + m * 60)
        .find(|end| *end <= until && *end > now)
        .map(|end| (start, end))
        .ok_or(IssueError::NoWindow)
}

/// The incident code for window `(start, end)` and index digit `index` (0..=9).
pub fn incident_code(
    secret: &CodeSecret,
    lock_id: &str,
    (start, end): (u64, u64),
    index: u32,
) -> Result<(Code, CodeSpec), IssueError> {
    if index > 9 {
        return Err(IssueError::Index);
    }
    let minutes = end.checked_sub(start).ok_or(IssueError::NoWindow)? / 60;
    let dur = INCIDENT_MINUTES
        .iter()
        .position(|m| *m == minutes && start + m * 60 == end)
        .ok_or(IssueError::NoWindow)?;
    if start % SLOT_SECS != 0 {
        return Err(IssueError::NoWindow);
    }
    let slot = (start / SLOT_SECS) % 100;
    let spec = CodeSpec {
        kind: CodeKind::Incident,
        not_before: start,
        not_after: end,
        index,
    };
    let header = [
        u8::try_from(dur).unwrap_or(0),
        u8::try_from(slot / 10).unwrap_or(0),
        u8::try_from(slot % 10).unwrap_or(0),
        u8::try_from(index).unwrap_or(0),
    ];
    Ok((assemble(header, mac_digits(secret, lock_id, &spec)), spec))
}

/// The standing code of `slot` for period `k` of `schedule`.
pub fn standing_code(
    secret: &CodeSecret,
    lock_id: &str,
    slot: u8,
    schedule: &StandingSchedule,
    k: u64,
) -> Result<(Code, CodeSpec), IssueError> {
    if slot >= MAX_STANDING_SLOTS {
        return Err(IssueError::Index);
    }
    let (start, end) = schedule.window(k).ok_or(IssueError::Period)?;
    let spec = CodeSpec {
        kind: CodeKind::Standing,
        not_before: start,
        not_after: end,
        index: u32::from(slot),
    };
    let header = [
        STANDING_DIGIT,
        slot / 10,
        slot % 10,
        u8::try_from(k % 10).unwrap_or(0),
    ];
    Ok((assemble(header, mac_digits(secret, lock_id, &spec)), spec))
}

fn assemble(header: [u8; HEADER_DIGITS], mac: [u8; MAC_DIGITS as usize]) -> Code {
    let mut d = [0u8; CODE_DIGITS];
    d[..HEADER_DIGITS].copy_from_slice(&header);
    d[HEADER_DIGITS..].copy_from_slice(&mac);
    Code(d)
}

/// The one spec a code's header claims at the lock's time `now` (with `skew`), or `None` if
/// the header names nothing (unknown kind or slot).
pub fn claimed_spec(
    code: &Code,
    now: u64,
    skew: u64,
    standing: &BTreeMap<u8, StandingSchedule>,
) -> Option<CodeSpec> {
    let [h, s1, s2, i] = code.header();
    let slot = u64::from(s1) * 10 + u64::from(s2);
    let at = now.saturating_add(skew);
    if let Some(minutes) = INCIDENT_MINUTES.get(usize::from(h)) {
        // The latest slot boundary at or before now + skew whose number ends in `slot`.
        let base = at / SLOT_SECS;
        let back = (base + 100 - slot) % 100;
        let start = base.checked_sub(back)? * SLOT_SECS;
        return Some(CodeSpec {
            kind: CodeKind::Incident,
            not_before: start,
            not_after: start + minutes * 60,
            index: u32::from(i),
        });
    }
    if h == STANDING_DIGIT {
        let slot = u8::try_from(slot).ok()?;
        let schedule = standing.get(&slot)?;
        // The latest period at or before now + skew whose number ends in `i`.
        let base = schedule.period_at(at)?;
        let back = (base + 10 - u64::from(i)) % 10;
        let k = base.checked_sub(back)?;
        let (start, end) = schedule.window(k)?;
        return Some(CodeSpec {
            kind: CodeKind::Standing,
            not_before: start,
            not_after: end,
            index: u32::from(slot),
        });
    }
    None
}

/// Whether `code` is the code of `spec` for this lock (constant-time comparison of the MAC).
pub fn mac_matches(secret: &CodeSecret, lock_id: &str, spec: &CodeSpec, code: &Code) -> bool {
    let want = mac_digits(secret, lock_id, spec);
    let got = code.mac_digits();
    let mut diff = 0u8;
    for (a, b) in want.iter().zip(got.iter()) {
        diff |= a ^ b;
    }
    diff == 0
}

/// What the lock decides about a code at `now` (sans-io: no store, no clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Receipt reason.
    pub reason: &'static str,
    /// The code's id and window end, when the entry is a real code of this lock.
    pub code: Option<([u8; 16], u64)>,
}

impl Verdict {
    /// Whether the door opens.
    pub fn allows(&self) -> bool {
        self.reason == REASON_KEYPAD_OK
    }
}

/// Everything the lock consults to decide a code.
#[derive(Debug)]
pub struct KeypadView<'a> {
    /// This lock's id.
    pub lock_id: &'a str,
    /// The code secret, if delivered.
    pub secret: Option<&'a CodeSecret>,
    /// Standing schedules by slot.
    pub standing: &'a BTreeMap<u8, StandingSchedule>,
    /// The trusted time floor.
    pub floor: u64,
    /// Clock skew allowance.
    pub skew: u64,
}

/// What the lock remembers about codes it has seen: uses and revocations.
pub trait CodeLedger {
    /// Times the code with this id opened the door.
    fn uses(&self, id: &[u8; 16]) -> u32;
    /// Whether the code with this id is revoked.
    fn is_revoked(&self, id: &[u8; 16]) -> bool;
}

/// A ledger from two closures (tests, tools).
#[derive(Debug)]
pub struct FnLedger<U, R>(pub U, pub R);

impl<U: Fn(&[u8; 16]) -> u32, R: Fn(&[u8; 16]) -> bool> CodeLedger for FnLedger<U, R> {
    fn uses(&self, id: &[u8; 16]) -> u32 {
        (self.0)(id)
    }
    fn is_revoked(&self, id: &[u8; 16]) -> bool {
        (self.1)(id)
    }
}

/// Decide one entry: parse → secret → floor → header → MAC → window → revoked → replay
/// (incident only).
pub fn verify(view: &KeypadView<'_>, entry: &str, now: u64, ledger: &impl CodeLedger) -> Verdict {
    let deny = |reason| Verdict { reason, code: None };
    let Ok(code) = parse_code(entry) else {
        return deny(REASON_KEYPAD_INVALID);
    };
    let Some(secret) = view.secret else {
        return deny(REASON_KEYPAD_NO_SECRET);
    };
    if now < view.floor {
        return deny(REASON_KEYPAD_CLOCK_BEHIND);
    }
    let Some(spec) = claimed_spec(&code, now, view.skew, view.standing) else {
        return deny(REASON_KEYPAD_INVALID);
    };
    if !mac_matches(secret, view.lock_id, &spec, &code) {
        return deny(REASON_KEYPAD_INVALID);
    }
    let id = code_id(secret, view.lock_id, &spec);
    let known = |reason| Verdict {
        reason,
        code: Some((id, spec.not_after)),
    };
    if now.saturating_add(view.skew) < spec.not_before {
        return known(REASON_KEYPAD_NOT_YET_VALID);
    }
    if now >= spec.not_after.saturating_add(view.skew) {
        return known(REASON_KEYPAD_EXPIRED);
    }
    if ledger.is_revoked(&id) {
        return known(REASON_KEYPAD_REVOKED);
    }
    if spec.kind == CodeKind::Incident && ledger.uses(&id) > 0 {
        return known(REASON_KEYPAD_REPLAYED);
    }
    known(REASON_KEYPAD_OK)
}

/// Seconds the keypad stays locked after `failures` consecutive wrong entries.
pub fn lockout_secs(failures: u32) -> u64 {
    match failures.checked_sub(FREE_TRIES) {
        None => 0,
        // 60 s · 2^6 is past the cap already; shifting further would wrap.
        Some(extra) if extra >= 6 => LOCKOUT_MAX_SECS,
        Some(extra) => (LOCKOUT_BASE_SECS << extra).min(LOCKOUT_MAX_SECS),
    }
}

/// Consecutive keypad failures since the last keypad allow (folded from receipts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// Wrong entries in a row.
    pub count: u32,
    /// Lock clock at the last one.
    pub last: u64,
}

impl Failures {
    /// Fold one receipt in.
    pub fn fold(&mut self, body: &ReceiptBody) {
        if !body.reason.starts_with("keypad_") {
            return;
        }
        if body.outcome == Outcome::Allow {
            *self = Failures::default();
        } else {
            self.count = self.count.saturating_add(1);
            self.last = body.time;
        }
    }

    /// Seconds until the keypad takes entries again at `now` (0: it does).
    pub fn locked_for(&self, now: u64) -> u64 {
        let until = self.last.saturating_add(lockout_secs(self.count));
        until.saturating_sub(now)
    }
}

/// The lock's answer to a keypad entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeypadAnswer {
    /// Decided, with a receipt.
    Decided(TapDecision),
    /// The keypad is locked: no decision, no receipt.
    Locked {
        /// Seconds until it takes entries again.
        retry_after: u64,
    },
}

/// Decide a keypad entry at the door: lockout → verify → durable receipt → open → answer.
pub fn decide(
    door: &mut Door,
    challenge: &Challenge,
    entry: &str,
) -> Result<KeypadAnswer, StateError> {
    if let Some(why) = door.store().halted() {
        return Err(StateError::Halted(why));
    }
    let now = door.clock().now();
    let locked = door.store().keypad_failures().locked_for(now);
    if locked > 0 {
        door.store_mut().note_keypad_locked(now)?;
        return Ok(KeypadAnswer::Locked {
            retry_after: locked,
        });
    }
    let store: &Store = door.store();
    let verdict = verify(&store.keypad_view(), entry, now, store);
    let mut body = ReceiptBody {
        version: 0,
        lock_id: store.lock_id().to_string(),
        seq: 0,
        time: now,
        prev: Bytes([0; 32]),
        outcome: if verdict.allows() {
            Outcome::Allow
        } else {
            Outcome::Deny
        },
        reason: verdict.reason.into(),
        token_hash: None,
        token_id: verdict.code.map(|(id, _)| Bytes(id)),
        expires_at: verdict.code.map(|(_, end)| end),
        door_event: None,
    };
    // Durable before the door moves: for an incident code this is its replay record.
    let mut receipt = door.store_mut().append_receipt(body.clone())?;
    tracing::info!(
        receipt_seq = receipt.body.seq,
        outcome = ?receipt.body.outcome,
        reason = %receipt.body.reason,
        "keypad entry decided"
    );
    if receipt.body.outcome == Outcome::Allow
        && let Err(e) = door.actuate(receipt.body.seq)
    {
        tracing::error!(error = %e, "actuator failed; recording a deny");
        body.outcome = Outcome::Deny;
        body.reason = crate::door::REASON_ACTUATOR_FAILED.into();
        body.token_id = None;
        receipt = door.store_mut().append_receipt(body)?;
    }
    Ok(KeypadAnswer::Decided(door.acknowledge(challenge, &receipt)))
}

/// What the keypad user learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryAnswer {
    /// Allow or deny, with the lock's signed ack of its receipt.
    Decided {
        /// Allow or deny.
        outcome: Outcome,
        /// The signed ack.
        ack: TapAck,
    },
    /// The keypad is locked for this many seconds.
    Locked(u64),
}

/// Play the keypad: send `entry` to the lock's tap socket and return its answer.
pub async fn enter(socket: &Path, entry: &str) -> Result<EntryAnswer, TapError> {
    let mut stream = UnixStream::connect(socket).await?;
    let first = read_frame(&mut stream, MAX_TAP_FRAME)
        .await?
        .ok_or(TapError::Protocol("lock closed before its challenge"))?;
    match decode_lock_message(&first)? {
        LockMessage::Challenge { version, .. } if version == PROTOCOL_VERSION => {}
        _ => return Err(TapError::Protocol("lock did not start with a challenge")),
    }
    let msg = PresenterMessage::Keypad {
        code: entry.to_string(),
    };
    write_frame(&mut stream, &encode_presenter_message(&msg)?, MAX_TAP_FRAME).await?;
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        read_frame(&mut stream, MAX_TAP_FRAME),
    )
    .await
    .map_err(|_| TapError::Protocol("lock did not answer"))??
    .ok_or(TapError::Protocol("lock closed without a decision"))?;
    match decode_lock_message(&answer)? {
        LockMessage::Decision { outcome, ack } => Ok(EntryAnswer::Decided { outcome, ack }),
        LockMessage::KeypadLocked { retry_after } => Ok(EntryAnswer::Locked(retry_after)),
        LockMessage::Challenge { .. } => Err(TapError::Protocol("lock sent a second challenge")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = "front-door";
    const T0: u64 = 1_800_000_000;

    fn used(n: u32) -> impl CodeLedger {
        FnLedger(move |_: &[u8; 16]| n, |_: &[u8; 16]| false)
    }

    fn secret(b: u8) -> CodeSecret {
        CodeSecret([b; 32])
    }

    fn view<'a>(s: &'a CodeSecret, standing: &'a BTreeMap<u8, StandingSchedule>) -> KeypadView<'a> {
        KeypadView {
            lock_id: LOCK,
            secret: Some(s),
            standing,
            floor: 0,
            skew: 60,
        }
    }

    #[test]
    fn parse_accepts_groups_and_refuses_everything_else() {
        assert!(parse_code("123 456 789 012 345").is_ok());
        assert!(parse_code("123-456-789-012-345").is_ok());
        assert_eq!(parse_code("12345678"), Err(ParseError::WrongLength));
        assert_eq!(parse_code("1234567890123456"), Err(ParseError::WrongLength));
        assert_eq!(parse_code("12345678901234a"), Err(ParseError::NotADigit));
        assert_eq!(parse_code("１２３"), Err(ParseError::NotADigit));
        assert_eq!(parse_code(&" ".repeat(65)), Err(ParseError::TooLong));
    }

    #[test]
    fn incident_window_is_capped_and_on_a_slot() {
        // 30 minutes asked, grant ends in 2 hours: a 30-minute window from the slot start.
        let now = T0 + 123;
        let start = now - now % SLOT_SECS;
        assert_eq!(
            incident_window(now, start + 1800),
            Ok((start, start + 1800))
        );
        // The grant ends in 12 minutes: the 10-minute window (ends after now, before the end).
        assert_eq!(incident_window(now, start + 720), Ok((start, start + 600)));
        assert_eq!(incident_window(now, now + 60), Err(IssueError::NoWindow));
    }

    #[test]
    fn a_code_opens_exactly_in_its_window_once() {
        let s = secret(1);
        let none = BTreeMap::new();
        let w = incident_window(T0, T0 + 1800).unwrap();
        let (code, spec) = incident_code(&s, LOCK, w, 3).unwrap();
        let digits = code.display();
        let v = verify(&view(&s, &none), &digits, T0 + 10, &used(0));
        assert!(v.allows(), "{v:?}");
        assert_eq!(v.code.unwrap().0, code_id(&s, LOCK, &spec));
        let again = verify(&view(&s, &none), &digits, T0 + 20, &used(1));
        assert_eq!(again.reason, REASON_KEYPAD_REPLAYED);
        let late = verify(&view(&s, &none), &digits, spec.not_after + 61, &used(0));
        assert_eq!(late.reason, REASON_KEYPAD_EXPIRED);
        // Another lock, another secret.
        let other = KeypadView {
            lock_id: "back-door",
            ..view(&s, &none)
        };
        assert_eq!(
            verify(&other, &digits, T0 + 10, &used(0)).reason,
            REASON_KEYPAD_INVALID
        );
        let s2 = secret(2);
        assert_eq!(
            verify(&view(&s2, &none), &digits, T0 + 10, &used(0)).reason,
            REASON_KEYPAD_INVALID
        );
        // Eight and a half hours later the slot digits name a later window: not this code.
        let far = verify(
            &view(&s, &none),
            &digits,
            T0 + 100 * SLOT_SECS + 10,
            &used(0),
        );
        assert_eq!(far.reason, REASON_KEYPAD_INVALID);
    }

    #[test]
    fn standing_codes_rotate_with_an_overlap() {
        let s = secret(5);
        let sched = StandingSchedule {
            epoch: T0,
            period_secs: 7 * 86_400,
            overlap_secs: 86_400,
            until: T0 + 90 * 86_400,
        };
        let standing = BTreeMap::from([(7u8, sched)]);
        let (c0, _) = standing_code(&s, LOCK, 7, &sched, 0).unwrap();
        let (c1, _) = standing_code(&s, LOCK, 7, &sched, 1).unwrap();
        let v = view(&s, &standing);
        let day = 86_400;
        assert!(
            verify(&v, &c0.digits(), T0 + day, &used(5)).allows(),
            "reusable"
        );
        // In period 1's first day both work; after the overlap only the new one.
        assert!(verify(&v, &c0.digits(), T0 + 7 * day + 100, &used(0)).allows());
        assert!(verify(&v, &c1.digits(), T0 + 7 * day + 100, &used(0)).allows());
        assert_eq!(
            verify(&v, &c0.digits(), T0 + 8 * day + 100, &used(0)).reason,
            REASON_KEYPAD_EXPIRED
        );
        assert!(verify(&v, &c1.digits(), T0 + 8 * day + 100, &used(0)).allows());
        // The slot removed: refused.
        let empty = BTreeMap::new();
        assert_eq!(
            verify(&view(&s, &empty), &c1.digits(), T0 + 8 * day, &used(0)).reason,
            REASON_KEYPAD_INVALID
        );
        // Past `until`: nothing.
        assert!(!verify(&v, &c1.digits(), T0 + 91 * day, &used(0)).allows());
    }

    #[test]
    fn lockout_doubles_and_caps() {
        assert_eq!(lockout_secs(4), 0);
        assert_eq!(lockout_secs(5), 60);
        assert_eq!(lockout_secs(6), 120);
        assert_eq!(lockout_secs(10), 1920);
        assert_eq!(lockout_secs(11), 3600);
        assert_eq!(lockout_secs(u32::MAX), 3600);
        // Never shorter after one more failure, never past the cap (no wrap-around).
        for f in 5..200 {
            assert!(lockout_secs(f + 1) >= lockout_secs(f), "{f}");
            assert!(lockout_secs(f) <= LOCKOUT_MAX_SECS);
        }
    }

    #[test]
    fn secrets_and_codes_never_print() {
        let s = secret(9);
        assert_eq!(format!("{s:?}"), "CodeSecret(<redacted>)");
        let (code, _) =
            incident_code(&s, LOCK, incident_window(T0, T0 + 1800).unwrap(), 0).unwrap();
        assert!(!format!("{code:?}").contains(&code.digits()[4..]));
    }

    proptest::proptest! {
        /// A code verifies for exactly its lock, window and index.
        #[test]
        fn a_code_verifies_for_exactly_its_lock_window_and_index(
            key in proptest::array::uniform32(0u8..),
            start_slot in 5_000_000u64..7_000_000,
            dur in 0usize..8,
            index in 0u32..10,
            other_index in 0u32..10,
            other_dur in 0usize..8,
            lock_suffix in 0u8..4,
            offset in 0u64..7200,
        ) {
            let s = CodeSecret(key);
            let none = BTreeMap::new();
            let lock = format!("lock-{lock_suffix}");
            let start = start_slot * SLOT_SECS;
            let end = start + INCIDENT_MINUTES[dur] * 60;
            let (code, spec) = incident_code(&s, &lock, (start, end), index).unwrap();
            let v = KeypadView { lock_id: &lock, secret: Some(&s), standing: &none, floor: 0, skew: 0 };
            let now = start + offset;
            let verdict = verify(&v, &code.digits(), now, &used(0));
            proptest::prop_assert_eq!(verdict.allows(), now < end);
            proptest::prop_assert_eq!(verdict.code.map(|c| c.0), Some(code_id(&s, &lock, &spec)));
            // Other lock: never.
            let other_lock = format!("lock-{}", lock_suffix + 4);
            let v2 = KeypadView { lock_id: &other_lock, ..v };
            proptest::prop_assert!(!verify(&v2, &code.digits(), now, &used(0)).allows());
            // Another index or window of the same lock is another code.
            if other_index != index || other_dur != dur {
                let end2 = start + INCIDENT_MINUTES[other_dur] * 60;
                let (c2, _) = incident_code(&s, &lock, (start, end2), other_index).unwrap();
                proptest::prop_assert_ne!(c2.digits(), code.digits());
            }
            // Any single changed digit is refused.
            let mut tampered = code.0;
            let pos = usize::try_from(offset % 15).unwrap();
            tampered[pos] = (tampered[pos] + 1) % 10;
            proptest::prop_assert!(!verify(&v, &Code(tampered).digits(), now, &used(0)).allows());
        }
    }
}

//! The tap decision: challenge, verify, record, actuate, answer, in that order.
//!
//! [`Door`] owns the [`Store`], the [`Actuator`] and the [`Clock`]. It is synchronous and does
//! blocking fsyncs; the socket server in [`crate::tap_server`] runs it on a blocking thread.
//! Ordering for crash safety: the receipt (which is also the replay record) is fsynced and read
//! back before the door opens, carrying the time floor an allow's `iat` raises (one fsync for
//! both); the presenter is answered last. If the receipt cannot be made durable, the decision is an error: the door stays
//! shut and the presenter gets no answer; if the receipt log cannot even be restored, the store is
//! halted and every later tap is refused the same way.

use std::sync::Arc;
use std::time::Duration;

use firstkey_token::{Challenge, Presentation, Refusal, Scope};
use ring::rand::SecureRandom;

use crate::actuator::{Actuator, OpenRequest};
use crate::clock::Clock;
use crate::protocol::Bytes;
use crate::protocol::tap::{Outcome, PresenterMessage, TapAck};
use crate::receipt::ReceiptBody;
use crate::state::{StateError, Store};

/// Receipt reason for an allow.
pub const REASON_OK: &str = "ok";
/// Receipt reason when the lock has no trust bundle yet.
pub const REASON_NO_TRUST_BUNDLE: &str = "no_trust_bundle";
/// Receipt reason for a deny written after an allow whose actuator failed.
pub const REASON_ACTUATOR_FAILED: &str = "actuator_failed";
/// Receipt reason for a valid token presented where its scope does not apply: a remote-open token
/// at the tap, or a tap token delivered as a remote open.
pub const REASON_WRONG_SCOPE: &str = "wrong_scope";
/// Longest hold a remote open may ask for, in seconds (longer requests are cut to it).
pub const MAX_REMOTE_HOLD_SECS: u32 = 120;

/// The outcome of one tap, as sent to the presenter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapDecision {
    /// Allow or deny.
    pub outcome: Outcome,
    /// The signed acknowledgement of the receipt.
    pub ack: TapAck,
}

/// The lock: state, door hardware and clock.
pub struct Door {
    store: Store,
    actuator: Box<dyn Actuator>,
    clock: Arc<dyn Clock>,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Door {
    /// A door over an open store.
    pub fn new(store: Store, actuator: Box<dyn Actuator>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            actuator,
            clock,
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// The store (read access).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store (write access, for the channel).
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// A fresh random challenge for a new tap.
    pub fn new_challenge(&self) -> Result<Challenge, StateError> {
        let mut c = [0u8; 32];
        self.rng
            .fill(&mut c)
            .map_err(|_| StateError::Invalid("system random number generator failed".into()))?;
        Ok(Challenge(c))
    }

    /// Count a malformed or oversize tap frame. It gets no decision and no receipt (anyone at the
    /// door could otherwise make the lock fsync without limit); the tally (count, first and last
    /// time) is written at most once a minute.
    pub fn note_malformed(&mut self) -> Result<(), StateError> {
        let now = self.clock.now();
        self.store.note_malformed(now)
    }

    /// Periodic housekeeping (the daemon calls it once a minute and at shutdown): write the
    /// malformed-frame tally if it changed.
    pub fn tick(&mut self) -> Result<(), StateError> {
        let now = self.clock.now();
        self.store.flush_malformed(now)?;
        self.store.flush_keypad_locked(now)
    }

    /// Decide one tap on the presenter's decoded message.
    pub fn decide(
        &mut self,
        challenge: &Challenge,
        presented: PresenterMessage,
    ) -> Result<TapDecision, StateError> {
        // A lock that cannot record a receipt safely decides nothing: the door stays shut.
        if let Some(why) = self.store.halted() {
            return Err(StateError::Halted(why));
        }
        let now = self.clock.now();
        let mut body = ReceiptBody {
            version: 0,
            lock_id: self.store.lock_id().to_string(),
            seq: 0,
            time: now,
            prev: Bytes([0; 32]),
            outcome: Outcome::Deny,
            reason: String::new(),
            token_hash: None,
            token_id: None,
            expires_at: None,
            door_event: None,
        };
        let mut trusted_time = None;
        match presented {
            PresenterMessage::Present { token, proof } => {
                body.token_hash = Some(Bytes(firstkey_token::token_hash(&token).0));
                match self.store.trust_bundle() {
                    None => body.reason = REASON_NO_TRUST_BUNDLE.into(),
                    Some(bundle) => {
                        let presentation = Presentation {
                            challenge,
                            proof: proof.as_deref().map(|p| p.as_slice()),
                        };
                        let options = self.store.verify_options();
                        let verdict: Result<_, Refusal> = firstkey_token::verify(
                            &token,
                            bundle,
                            &self.store,
                            &presentation,
                            now,
                            &options,
                        );
                        match verdict {
                            Ok(verified) if verified.claims().scope != Scope::Open => {
                                body.reason = REASON_WRONG_SCOPE.into();
                                body.token_id = Some(Bytes(verified.claims().token_id.0));
                            }
                            Ok(verified) => {
                                let claims = verified.claims();
                                // The issuer vouches that its clock had reached `iat` and `nbf`;
                                // never past our own `now`, so the next tap is not refused.
                                trusted_time =
                                    Some(claims.issued_at.max(claims.not_before).min(now));
                                body.outcome = Outcome::Allow;
                                body.reason = REASON_OK.into();
                                body.token_id = Some(Bytes(claims.token_id.0));
                                body.expires_at = Some(claims.expires_at);
                            }
                            Err(refusal) => body.reason = refusal.code().into(),
                        }
                    }
                }
            }
            PresenterMessage::Keypad { .. } => {
                return Err(StateError::Invalid(
                    "keypad entries are decided by keypad::decide".into(),
                ));
            }
        }
        let hold = Duration::from_millis(self.store.config().hold_ms);
        let receipt = self.record_and_open(body, trusted_time, hold)?;
        let outcome = receipt.body.outcome;
        let signed = TapAck::signed_bytes(
            &challenge.0,
            self.store.lock_id().as_str(),
            receipt.body.seq,
            &receipt.hash,
            outcome,
        );
        let signature = self.store.device_key().sign(&signed).as_ref().to_vec();
        Ok(TapDecision {
            outcome,
            ack: TapAck {
                seq: receipt.body.seq,
                receipt_hash: Bytes(receipt.hash),
                signature,
            },
        })
    }

    /// Decide a homeowner's remote open, delivered over the authenticated channel: the token is
    /// verified offline as any token (signature, audience, window, revocations, replay), without a
    /// proof of possession (no one is at the door), and must have the `remote_open` scope. The
    /// receipt is durable before the door opens for `hold_secs` (at most
    /// [`MAX_REMOTE_HOLD_SECS`]). Returns the outcome and the receipt's sequence number.
    pub fn remote_open(
        &mut self,
        token: &[u8],
        hold_secs: u32,
    ) -> Result<(Outcome, u64), StateError> {
        if let Some(why) = self.store.halted() {
            return Err(StateError::Halted(why));
        }
        let now = self.clock.now();
        let mut body = ReceiptBody {
            version: 0,
            lock_id: self.store.lock_id().to_string(),
            seq: 0,
            time: now,
            prev: Bytes([0; 32]),
            outcome: Outcome::Deny,
            reason: String::new(),
            token_hash: Some(Bytes(firstkey_token::token_hash(token).0)),
            token_id: None,
            expires_at: None,
            door_event: None,
        };
        let mut trusted_time = None;
        match self.store.trust_bundle() {
            None => body.reason = REASON_NO_TRUST_BUNDLE.into(),
            Some(bundle) => {
                let options = firstkey_token::VerifyOptions {
                    require_proof_of_possession: false,
                    ..self.store.verify_options()
                };
                let challenge = Challenge([0; 32]);
                let presentation = Presentation {
                    challenge: &challenge,
                    proof: None,
                };
                match firstkey_token::verify(
                    token,
                    bundle,
                    &self.store,
                    &presentation,
                    now,
                    &options,
                ) {
                    Ok(verified) if verified.claims().scope != Scope::RemoteOpen => {
                        body.reason = REASON_WRONG_SCOPE.into();
                        body.token_id = Some(Bytes(verified.claims().token_id.0));
                    }
                    Ok(verified) => {
                        let claims = verified.claims();
                        trusted_time = Some(claims.issued_at.max(claims.not_before).min(now));
                        body.outcome = Outcome::Allow;
                        body.reason = REASON_OK.into();
                        body.token_id = Some(Bytes(claims.token_id.0));
                        body.expires_at = Some(claims.expires_at);
                    }
                    Err(refusal) => body.reason = refusal.code().into(),
                }
            }
        }
        let hold = Duration::from_secs(u64::from(hold_secs.clamp(1, MAX_REMOTE_HOLD_SECS)));
        let receipt = self.record_and_open(body, trusted_time, hold)?;
        Ok((receipt.body.outcome, receipt.body.seq))
    }

    /// Makes the decision's receipt durable, raises the time floor, and opens the door on an
    /// allow (recording a deny when the actuator fails).
    fn record_and_open(
        &mut self,
        mut body: ReceiptBody,
        trusted_time: Option<u64>,
        hold: Duration,
    ) -> Result<crate::receipt::VerifiedReceipt, StateError> {
        // Durable before the door moves and before the presenter hears anything.
        // The floor the token's `iat` raises rides in the same record: one fsync.
        let mut receipt = self
            .store
            .append_receipt_raising_floor(body.clone(), trusted_time)?;
        tracing::info!(
            receipt_seq = receipt.body.seq,
            outcome = ?receipt.body.outcome,
            reason = %receipt.body.reason,
            "door decided"
        );
        if receipt.body.outcome == Outcome::Allow
            && let Err(e) = self.actuator.open(OpenRequest {
                receipt_seq: receipt.body.seq,
                hold,
            })
        {
            tracing::error!(error = %e, "actuator failed; recording a deny");
            body.outcome = Outcome::Deny;
            body.reason = REASON_ACTUATOR_FAILED.into();
            receipt = self.store.append_receipt(body)?;
        }
        Ok(receipt)
    }

    /// Open the door for the decision recorded as receipt `seq` (the keypad uses it).
    pub(crate) fn actuate(&mut self, seq: u64) -> std::io::Result<()> {
        let hold = Duration::from_millis(self.store.config().hold_ms);
        self.actuator.open(OpenRequest {
            receipt_seq: seq,
            hold,
        })
    }

    /// The signed answer for a decision recorded as `receipt`.
    pub(crate) fn acknowledge(
        &self,
        challenge: &Challenge,
        receipt: &crate::receipt::VerifiedReceipt,
    ) -> TapDecision {
        let outcome = receipt.body.outcome;
        let signed = TapAck::signed_bytes(
            &challenge.0,
            self.store.lock_id().as_str(),
            receipt.body.seq,
            &receipt.hash,
            outcome,
        );
        let signature = self.store.device_key().sign(&signed).as_ref().to_vec();
        TapDecision {
            outcome,
            ack: TapAck {
                seq: receipt.body.seq,
                receipt_hash: Bytes(receipt.hash),
                signature,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuator::SimulatedActuator;
    use crate::clock::ManualClock;
    use crate::demo::{self, Issuer, TokenSpec};
    use crate::protocol::channel::InboxMessage;
    use crate::state::{self, Applied, InitParams, StateDir};
    use crate::tap_server::{PresenterKey, respond};

    const T0: u64 = 1_800_000_000;

    struct Rig {
        _tmp: tempfile::TempDir,
        dir: StateDir,
        issuer: Issuer,
        key: PresenterKey,
        clock: ManualClock,
    }

    fn rig() -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("s"));
        let issuer = Issuer::generate("city", "rp.example").unwrap();
        state::init(
            &dir,
            &InitParams {
                lock_id: "door".into(),
                root_public_key: issuer.root_public_key().unwrap(),
                trust_bundle: Some(issuer.bundle(1, &["k1"]).unwrap()),
                server: None,
                server_ca_pem: None,
                hold_ms: 1,
                skew_secs: 60,
            },
        )
        .unwrap();
        let key =
            PresenterKey::from_pkcs8(&demo::new_ed25519_pkcs8().unwrap(), "rp.example").unwrap();
        Rig {
            _tmp: tmp,
            dir,
            issuer,
            key,
            clock: ManualClock::new(T0),
        }
    }

    impl Rig {
        fn door(&self) -> Door {
            Door::new(
                Store::open(&self.dir).unwrap(),
                Box::new(SimulatedActuator::new(self.dir.root())),
                Arc::new(self.clock.clone()),
            )
        }
        fn token(&self, ttl: u64) -> Vec<u8> {
            let now = self.clock.now();
            self.issuer
                .mint(
                    "k1",
                    &TokenSpec {
                        lock_id: "door".into(),
                        not_before: now,
                        expires_at: now + ttl,
                        max_uses: 1,
                        confirmation: Some(demo::confirmation_key(&self.key)),
                    },
                )
                .unwrap()
        }
        fn tap(&self, door: &mut Door, token: &[u8]) -> Outcome {
            let c = door.new_challenge().unwrap();
            let msg = respond(&c.0, "door", token, Some(&self.key)).unwrap();
            door.decide(&c, msg).unwrap().outcome
        }
    }

    impl Rig {
        fn remote_token(&self, ttl: u64, bound: bool) -> Vec<u8> {
            let now = self.clock.now();
            self.issuer
                .mint_scoped(
                    "k1",
                    &TokenSpec {
                        lock_id: "door".into(),
                        not_before: now,
                        expires_at: now + ttl,
                        max_uses: 1,
                        confirmation: bound.then(|| demo::confirmation_key(&self.key)),
                    },
                    Scope::RemoteOpen,
                )
                .unwrap()
        }
    }

    fn last_reason(door: &Door) -> String {
        let receipts = door.store().receipts();
        let last = receipts.last().unwrap();
        crate::receipt::decode_own(last).unwrap().body.reason
    }

    #[test]
    fn a_remote_open_opens_once_and_its_replay_is_refused() {
        let r = rig();
        let mut door = r.door();
        let token = r.remote_token(30, false);
        assert_eq!(door.remote_open(&token, 5).unwrap().0, Outcome::Allow);
        assert_eq!(last_reason(&door), REASON_OK);
        let (again, seq) = door.remote_open(&token, 5).unwrap();
        assert_eq!(again, Outcome::Deny);
        assert_eq!(seq, 2);
        assert_eq!(last_reason(&door), "replayed");
    }

    #[test]
    fn scopes_keep_tap_and_remote_open_apart() {
        let r = rig();
        let mut door = r.door();
        // A remote-open token at the tap, even one bound to the presenter's key: refused.
        let remote = r.remote_token(30, true);
        assert_eq!(r.tap(&mut door, &remote), Outcome::Deny);
        assert_eq!(last_reason(&door), REASON_WRONG_SCOPE);
        // A tap token sent as a remote open: refused (its `cnf` asks for a proof no one gives
        // over the channel), and it still opens at the tap afterwards.
        let tap = r.token(30);
        assert_eq!(door.remote_open(&tap, 5).unwrap().0, Outcome::Deny);
        assert_eq!(last_reason(&door), "proof_missing");
        assert_eq!(r.tap(&mut door, &tap), Outcome::Allow);
        // Even an `open` token without `cnf` is no remote open: the scope decides.
        let now = r.clock.now();
        let bearer = r
            .issuer
            .mint(
                "k1",
                &TokenSpec {
                    lock_id: "door".into(),
                    not_before: now,
                    expires_at: now + 30,
                    max_uses: 1,
                    confirmation: None,
                },
            )
            .unwrap();
        assert_eq!(door.remote_open(&bearer, 5).unwrap().0, Outcome::Deny);
        assert_eq!(last_reason(&door), REASON_WRONG_SCOPE);
        // An expired remote open, and one for another lock: refused.
        let late = r.remote_token(10, false);
        r.clock.advance(100);
        assert_eq!(door.remote_open(&late, 5).unwrap().0, Outcome::Deny);
        assert_eq!(last_reason(&door), "expired");
        let now = r.clock.now();
        let other = r
            .issuer
            .mint_scoped(
                "k1",
                &TokenSpec {
                    lock_id: "other-door".into(),
                    not_before: now,
                    expires_at: now + 30,
                    max_uses: 1,
                    confirmation: None,
                },
                Scope::RemoteOpen,
            )
            .unwrap();
        assert_eq!(door.remote_open(&other, 5).unwrap().0, Outcome::Deny);
        assert_eq!(last_reason(&door), "wrong_lock");
    }

    #[test]
    fn a_second_store_on_the_same_directory_is_refused() {
        let r = rig();
        let _door = r.door();
        assert!(matches!(Store::open(&r.dir), Err(StateError::Busy(_))));
    }

    #[test]
    fn compaction_keeps_replay_records_pending_receipts_and_the_chain() {
        let r = rig();
        let mut door = r.door();
        let used: Vec<Vec<u8>> = (0..6).map(|_| r.token(600)).collect();
        for t in &used {
            assert_eq!(r.tap(&mut door, t), Outcome::Allow);
        }
        door.store_mut().mark_uploaded(4).unwrap();
        door.store_mut().compact().unwrap();
        // Receipts 1-4 (acknowledged) are gone from the log; 5 links to 4 by hash.
        assert_eq!(door.store().receipts().len(), 2);
        assert_eq!(
            door.store()
                .pending_receipts(0, 10)
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            vec![5, 6]
        );
        drop(door);
        let mut door = r.door();
        assert_eq!(door.store().head().seq, 6);
        for t in &used {
            assert_eq!(
                r.tap(&mut door, t),
                Outcome::Deny,
                "replay after compaction"
            );
        }
        let fresh = r.token(600);
        assert_eq!(r.tap(&mut door, &fresh), Outcome::Allow);
        // Replay records of expired tokens are pruned once the floor passes exp + skew, and
        // those tokens stay refused (as expired).
        r.clock.advance(10_000);
        // Trusted time (here: the server's, over the channel) moves the floor past the expiries.
        door.store_mut().advance_floor(T0 + 10_000).unwrap();
        let through = door.store().head().seq;
        door.store_mut().mark_uploaded(through).unwrap();
        door.store_mut().compact().unwrap();
        assert_eq!(door.store().status().replay_records, 0);
        assert_eq!(r.tap(&mut door, &fresh), Outcome::Deny);
        let seqs: Vec<u64> = door
            .store()
            .receipts()
            .iter()
            .map(|e| crate::receipt::decode_own(e).unwrap().body.seq)
            .collect();
        assert_eq!(seqs, vec![through, through + 1]);
    }

    #[test]
    fn inbox_messages_apply_once_and_bad_bundles_are_refused_but_consumed() {
        let r = rig();
        let mut door = r.door();
        let token = r.token(600);
        let hash = Bytes(firstkey_token::token_hash(&token).0);
        let s = door.store_mut();
        let revoke = InboxMessage::Revocation {
            token_hash: hash,
            expires_at: T0 + 600,
        };
        assert_eq!(s.apply_inbox(5, &revoke).unwrap(), Applied::Applied);
        assert_eq!(s.apply_inbox(5, &revoke).unwrap(), Applied::Duplicate);
        assert_eq!(s.apply_inbox(3, &revoke).unwrap(), Applied::Duplicate);
        let old = InboxMessage::TrustBundle {
            bundle: r.issuer.bundle(1, &["k1"]).unwrap(),
        };
        assert!(matches!(
            s.apply_inbox(6, &old).unwrap(),
            Applied::Refused(_)
        ));
        assert_eq!(s.inbox_seq(), 6);
        assert_eq!(r.tap(&mut door, &token), Outcome::Deny);
        drop(door);
        let door = r.door();
        assert_eq!(door.store().inbox_seq(), 6);
        assert_eq!(door.store().status().revocations, 1);
    }

    #[test]
    fn ten_thousand_malformed_frames_cost_a_bounded_number_of_writes_and_no_receipt() {
        let r = rig();
        let mut door = r.door();
        let log_len = || std::fs::metadata(r.dir.file("receipts.log")).unwrap().len();
        let before = log_len();
        let writes = door.store().durable_writes();
        // 10,000 frames over 100 s of the lock's clock.
        for i in 0..10_000u64 {
            if i % 100 == 0 && i > 0 {
                r.clock.advance(1);
            }
            door.note_malformed().unwrap();
        }
        door.tick().unwrap();
        let spent = door.store().durable_writes() - writes;
        assert!(
            spent <= 3,
            "{spent} durable writes for 10,000 malformed frames"
        );
        assert_eq!(log_len(), before, "malformed frames grew the receipt log");
        assert_eq!(door.store().head().seq, 0);
        // The tally is kept, and survives a restart.
        drop(door);
        let door = r.door();
        let tally = door.store().status().malformed_frames;
        assert_eq!(tally.count, 10_000);
        assert_eq!((tally.first, tally.last), (T0, T0 + 99));
        assert_eq!(
            state::peek_status(&r.dir).unwrap().malformed_frames.count,
            10_000
        );
    }
}

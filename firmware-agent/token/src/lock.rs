//! The lock's side of verification: the state the verifier reads ([`LockView`]) and the lock's
//! policy knobs ([`VerifyOptions`]).
//!
//! This crate never writes lock state. After an `Ok` verdict the agent must durably record the use
//! of the token's `cti` (and raise its time floor) *before* it drives the actuator, so a power cut
//! can never make a used token usable again.

use crate::claims::{LockId, TokenId};
use crate::token::TokenHash;

/// Read-only view of the lock's durable state, implemented by the agent over its store.
pub trait LockView {
    /// This lock's id; a token's `aud` must equal it.
    fn lock_id(&self) -> &LockId;

    /// The monotonic time floor (unix seconds): the latest `now` the lock has ever trusted.
    /// A `now` below it means the clock was set back, and every token is refused.
    fn time_floor(&self) -> u64;

    /// Whether this token hash is on the lock's revocation list.
    fn is_revoked(&self, token_hash: &TokenHash) -> bool;

    /// How many times the lock has already opened for this token id.
    fn uses(&self, token_id: &TokenId) -> u32;
}

/// The lock's verification policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Clock skew allowance in seconds, applied to both `nbf` and `exp`.
    pub skew_secs: u64,
    /// Refuse tokens without a `cnf` key (bearer tokens). Default `true`: a stolen token alone
    /// must never open the door.
    pub require_proof_of_possession: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            skew_secs: 60,
            require_proof_of_possession: true,
        }
    }
}

//! The tap interface on a local Unix socket, and the presenter's side of it.
//!
//! The socket stands in for NFC: one connection is one tap. The lock speaks first with a fresh
//! challenge, reads one [`PresenterMessage`] (capped at [`MAX_TAP_FRAME`] bytes, with a timeout),
//! decides with [`Door::decide`] and answers with the outcome and its signed ack. A malformed or
//! oversize frame gets no decision and no receipt: it is counted ([`Door::note_malformed`], written
//! at most once a minute) and the connection closed; a presenter that hangs up or times out before
//! presenting anything gets no decision and leaves no receipt.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firstkey_token::{Challenge, LockId, Proof, SoftwareAuthenticator, pop_message, token_hash};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::door::{Door, TapDecision};
use crate::keypad::KeypadAnswer;
use crate::protocol::tap::{
    LockMessage, MAX_TAP_FRAME, Outcome, PresenterMessage, TapAck, decode_lock_message,
    decode_presenter_message, encode_lock_message, encode_presenter_message,
};
use crate::protocol::{Bytes, FrameError, PROTOCOL_VERSION, read_frame, write_frame};

/// How long the lock waits for the presenter's message.
pub const PRESENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the tap interface.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Framing or decoding failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The lock's state failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The door mutex was poisoned by a panic elsewhere.
    #[error("door state poisoned")]
    Poisoned,
    /// The blocking decision task failed.
    #[error("decision task failed")]
    Join,
    /// The peer broke the exchange.
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// A socket operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The presenter's key could not be loaded or used.
    #[error("presenter key: {0}")]
    Key(String),
}

/// Accept taps forever on `listener`. `decided` is notified after every decision (the channel
/// uses it to upload receipts promptly).
pub async fn serve(listener: UnixListener, door: Arc<Mutex<Door>>, decided: Arc<Notify>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let door = door.clone();
                let decided = decided.clone();
                tokio::spawn(async move {
                    match handle(stream, door).await {
                        Ok(true) => decided.notify_one(),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "tap failed"),
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "tap socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Run one tap exchange; returns whether a decision was made.
async fn handle(mut stream: UnixStream, door: Arc<Mutex<Door>>) -> Result<bool, TapError> {
    let (challenge, lock_id) = {
        let d = door.lock().map_err(|_| TapError::Poisoned)?;
        (d.new_challenge()?, d.store().lock_id().to_string())
    };
    let hello = encode_lock_message(&LockMessage::Challenge {
        version: PROTOCOL_VERSION,
        lock_id,
        challenge: Bytes(challenge.0),
    })?;
    write_frame(&mut stream, &hello, MAX_TAP_FRAME).await?;
    let presented =
        match tokio::time::timeout(PRESENT_TIMEOUT, read_frame(&mut stream, MAX_TAP_FRAME)).await {
            Err(_) => {
                tracing::info!("presenter timed out; no decision");
                return Ok(false);
            }
            Ok(Ok(None)) | Ok(Err(FrameError::Truncated)) => {
                tracing::info!("presenter hung up; no decision");
                return Ok(false);
            }
            Ok(Ok(Some(payload))) => decode_presenter_message(&payload),
            Ok(Err(e @ FrameError::TooLarge { .. })) | Ok(Err(e @ FrameError::Malformed)) => Err(e),
            Ok(Err(e)) => return Err(e.into()),
        };
    let presented = match presented {
        Ok(message) => message,
        Err(_) => {
            // No decision, no receipt: counted (bounded writes) and the connection closed.
            tracing::info!("malformed tap frame; no decision");
            note_malformed_blocking(door).await?;
            return Ok(false);
        }
    };
    let answer = match presented {
        PresenterMessage::Keypad { code } => match keypad_blocking(door, challenge, code).await? {
            KeypadAnswer::Decided(decision) => LockMessage::Decision {
                outcome: decision.outcome,
                ack: decision.ack,
            },
            KeypadAnswer::Locked { retry_after } => {
                // No decision and no receipt; the presenter hears when to try again.
                let answer = encode_lock_message(&LockMessage::KeypadLocked { retry_after })?;
                let _ = write_frame(&mut stream, &answer, MAX_TAP_FRAME).await;
                return Ok(false);
            }
        },
        presented => {
            let decision = decide_blocking(door, challenge, presented).await?;
            LockMessage::Decision {
                outcome: decision.outcome,
                ack: decision.ack,
            }
        }
    };
    let answer = encode_lock_message(&answer)?;
    // The decision is durable; a presenter gone by now changes nothing.
    if let Err(e) = write_frame(&mut stream, &answer, MAX_TAP_FRAME).await {
        tracing::info!(error = %e, "presenter left before the answer");
    }
    Ok(true)
}

pub(crate) async fn note_malformed_blocking(door: Arc<Mutex<Door>>) -> Result<(), TapError> {
    tokio::task::spawn_blocking(move || {
        let mut d = door.lock().map_err(|_| TapError::Poisoned)?;
        d.note_malformed().map_err(TapError::from)
    })
    .await
    .map_err(|_| TapError::Join)?
}

pub(crate) async fn keypad_blocking(
    door: Arc<Mutex<Door>>,
    challenge: Challenge,
    code: String,
) -> Result<KeypadAnswer, TapError> {
    tokio::task::spawn_blocking(move || {
        let mut d = door.lock().map_err(|_| TapError::Poisoned)?;
        crate::keypad::decide(&mut d, &challenge, &code).map_err(TapError::from)
    })
    .await
    .map_err(|_| TapError::Join)?
}

pub(crate) async fn decide_blocking(
    door: Arc<Mutex<Door>>,
    challenge: Challenge,
    presented: PresenterMessage,
) -> Result<TapDecision, TapError> {
    tokio::task::spawn_blocking(move || {
        let mut d = door.lock().map_err(|_| TapError::Poisoned)?;
        d.decide(&challenge, presented).map_err(TapError::from)
    })
    .await
    .map_err(|_| TapError::Join)?
}

/// The key a presenter proves possession of.
pub enum PresenterKey {
    /// An Ed25519 key.
    Ed25519(ring::signature::Ed25519KeyPair),
    /// A P-256 key answering like a FIDO2 security key for relying party `rp_id`.
    P256(Box<SoftwareAuthenticator>),
}

impl std::fmt::Debug for PresenterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PresenterKey::Ed25519(_) => "PresenterKey::Ed25519(<secret>)",
            PresenterKey::P256(_) => "PresenterKey::P256(<secret>)",
        })
    }
}

impl PresenterKey {
    /// Load a PKCS#8 key: Ed25519 if it is one, else P-256 for WebAuthn relying party `rp_id`.
    pub fn from_pkcs8(pkcs8: &[u8], rp_id: &str) -> Result<Self, TapError> {
        if let Ok(k) = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8) {
            return Ok(PresenterKey::Ed25519(k));
        }
        let rng = ring::rand::SystemRandom::new();
        SoftwareAuthenticator::from_pkcs8(pkcs8, rp_id, &rng)
            .map(|a| PresenterKey::P256(Box::new(a)))
            .map_err(|_| TapError::Key("neither an Ed25519 nor a P-256 PKCS#8 key".into()))
    }

    /// The proof over `message` (the token crate's PoP message), encoded.
    pub fn prove(&self, message: &[u8]) -> Result<Vec<u8>, TapError> {
        let proof = match self {
            PresenterKey::Ed25519(k) => Proof::sign_ed25519(k, message),
            PresenterKey::P256(a) => {
                let rng = ring::rand::SystemRandom::new();
                a.assert(message, firstkey_token::pop::FLAG_USER_PRESENT, &rng)
                    .map_err(|e| TapError::Key(e.to_string()))?
            }
        };
        Ok(proof.to_cbor())
    }
}

/// What the presenter learned from a tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapAnswer {
    /// Allow or deny.
    pub outcome: Outcome,
    /// The lock's signed ack.
    pub ack: TapAck,
    /// The challenge the lock sent (to check `ack` with the device public key).
    pub challenge: [u8; 32],
    /// The lock id the lock announced.
    pub lock_id: String,
}

/// Build the presenter's message for a challenge (sans-io). `key` is `None` for a token without
/// `cnf`.
pub fn respond(
    challenge: &[u8; 32],
    lock_id: &str,
    token: &[u8],
    key: Option<&PresenterKey>,
) -> Result<PresenterMessage, TapError> {
    let proof = match key {
        None => None,
        Some(k) => {
            let lock =
                LockId::parse(lock_id).ok_or(TapError::Protocol("lock sent an invalid lock id"))?;
            let msg = pop_message(&Challenge(*challenge), &lock, &token_hash(token));
            Some(serde_bytes::ByteBuf::from(k.prove(&msg)?))
        }
    };
    Ok(PresenterMessage::Present {
        token: token.to_vec(),
        proof,
    })
}

/// Play the responder's device: connect to the lock's tap socket, answer its challenge with
/// `token` and a proof by `key`, and return the lock's answer.
pub async fn tap(
    socket: &Path,
    token: &[u8],
    key: Option<&PresenterKey>,
) -> Result<TapAnswer, TapError> {
    let mut stream = UnixStream::connect(socket).await?;
    let first = read_frame(&mut stream, MAX_TAP_FRAME)
        .await?
        .ok_or(TapError::Protocol("lock closed before its challenge"))?;
    let LockMessage::Challenge {
        version,
        lock_id,
        challenge,
    } = decode_lock_message(&first)?
    else {
        return Err(TapError::Protocol("lock did not start with a challenge"));
    };
    if version != PROTOCOL_VERSION {
        return Err(TapError::Protocol("unsupported protocol version"));
    }
    let msg = respond(&challenge.0, &lock_id, token, key)?;
    write_frame(&mut stream, &encode_presenter_message(&msg)?, MAX_TAP_FRAME).await?;
    let answer = read_frame(&mut stream, MAX_TAP_FRAME)
        .await?
        .ok_or(TapError::Protocol("lock closed without a decision"))?;
    match decode_lock_message(&answer)? {
        LockMessage::Decision { outcome, ack } => Ok(TapAnswer {
            outcome,
            ack,
            challenge: challenge.0,
            lock_id,
        }),
        LockMessage::Challenge { .. } => Err(TapError::Protocol("lock sent a second challenge")),
        LockMessage::KeypadLocked { .. } => {
            Err(TapError::Protocol("lock answered a tap as a keypad"))
        }
    }
}

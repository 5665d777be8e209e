//! The agent channel: frames exchanged over TLS between a lock agent and any server replica.
//!
//! ```text
//! server → agent  ServerMessage::Challenge { version, nonce[32] }
//! agent  → server AgentMessage::Hello { version, lock_id, device_public_key, resume_after, signature }
//! server → agent  ServerMessage::Welcome { receipts_through }      (or Error, then close)
//! then, in any interleaving:
//! server → agent  Inbox { seq, message }        agent → server  Ack { seq }
//! agent  → server Receipts { receipts }         server → agent  ReceiptsAck { through }
//! agent  → server Status { battery_percent, … } agent → server  Ping / server → agent Pong
//! server → agent  Time { now }                  (after Welcome and after every Pong)
//! ```
//! See `PROTOCOL.md` for the sequence and idempotency rules.

use serde::{Deserialize, Serialize};

use super::{Bytes, FrameError, decode, encode};

/// Hard cap on a channel frame's payload (a receipt batch or a trust bundle fits easily).
pub const MAX_CHANNEL_FRAME: usize = 256 * 1024;

/// Cap on the first frame from an agent, `Hello`, which the server reads before the peer has
/// proved anything: a `Hello` with a 64-character lock id is about 250 bytes.
pub const MAX_HELLO_FRAME: usize = 512;

/// Most receipts an agent puts in one `Receipts` frame.
pub const MAX_RECEIPTS_PER_FRAME: usize = 64;

/// Domain separation for the handshake signature.
const AUTH_DOMAIN: &[u8] = b"firstkey-agent-auth-v1";

/// Messages from the server to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// First frame on every connection: a fresh nonce the agent must sign.
    Challenge {
        /// [`super::PROTOCOL_VERSION`].
        version: u16,
        /// 32 fresh random bytes.
        nonce: Bytes<32>,
    },
    /// The agent is authenticated; `receipts_through` is the highest receipt sequence number the
    /// server already holds for this lock (0 for none), so the agent can skip those.
    Welcome {
        /// Highest stored receipt sequence number.
        receipts_through: u64,
    },
    /// One inbox message, in strictly increasing `seq` order (gaps allowed).
    Inbox {
        /// Per-lock inbox sequence number.
        seq: u64,
        /// What to apply.
        message: InboxMessage,
    },
    /// Receipts up to and including `through` are stored durably on the server.
    ReceiptsAck {
        /// Highest receipt sequence number stored, contiguous from the first.
        through: u64,
    },
    /// Answer to [`AgentMessage::Ping`].
    Pong,
    /// The server's clock (Unix seconds), sent after `Welcome` and after every `Pong`. Trusted
    /// time for the lock: it raises the lock's time floor (minus the skew allowance), which the
    /// lock's own clock never does.
    Time {
        /// Seconds since the Unix epoch on the server.
        now: u64,
    },
    /// The server is closing the connection for this reason.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
    },
}

/// What the server can deliver to a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InboxMessage {
    /// An override token minted for this lock (pre-staged; informational, not needed to tap).
    Token {
        /// COSE_Sign1 bytes as minted.
        #[serde(with = "serde_bytes")]
        token: Vec<u8>,
    },
    /// Revoke the token whose SHA-256 is `token_hash` until `expires_at` (its `exp`).
    Revocation {
        /// SHA-256 of the token's bytes.
        token_hash: Bytes<32>,
        /// The token's expiry (Unix seconds); the entry may be pruned after it.
        expires_at: u64,
    },
    /// A signed trust bundle; applied only if newer than the current one and root-signed.
    TrustBundle {
        /// The bundle's bytes as the token crate encodes them.
        #[serde(with = "serde_bytes")]
        bundle: Vec<u8>,
    },
    /// The homeowner's remote unlock: a `remote_open`-scoped token the lock verifies offline as
    /// any token (no proof of possession), then opens for `hold_secs` (PROTOCOL.md, "Remote open").
    RemoteOpen {
        /// COSE_Sign1 bytes as minted.
        #[serde(with = "serde_bytes")]
        token: Vec<u8>,
        /// How long to hold the door open, in seconds (the lock caps it).
        hold_secs: u32,
    },
    /// The lock's keypad code secret (`crate::keypad`); replaces any earlier one. Its `Debug` is
    /// redacted.
    KeypadSecret {
        /// 32 secret bytes.
        secret: crate::keypad::CodeSecret,
    },
    /// The standing-code schedule of one slot (a trusted party), or `None` to remove the slot.
    KeypadStanding {
        /// Slot 0..=99.
        slot: u8,
        /// The schedule.
        schedule: Option<crate::keypad::StandingSchedule>,
    },
}

/// Why the server closes a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The agent speaks a protocol version the server does not.
    UnsupportedVersion,
    /// Bad handshake signature, unknown lock, or a public key that is not this lock's paired key.
    AuthenticationFailed,
    /// A frame could not be decoded or arrived out of turn.
    Malformed,
    /// A receipt failed verification, or conflicts with a stored receipt of the same sequence.
    ReceiptRejected,
    /// The server failed; retry later.
    Internal,
}

/// Messages from an agent to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// The agent's answer to [`ServerMessage::Challenge`].
    Hello {
        /// [`super::PROTOCOL_VERSION`].
        version: u16,
        /// The lock's id.
        lock_id: String,
        /// The 32-byte Ed25519 device public key.
        device_public_key: Bytes<32>,
        /// Deliver inbox messages with `seq` greater than this (the last one applied).
        resume_after: u64,
        /// Ed25519 signature over [`auth_signed_bytes`].
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    /// The inbox message `seq` (and every earlier one) is applied durably.
    Ack {
        /// Inbox sequence number.
        seq: u64,
    },
    /// Signed receipts in sequence order, each as stored in the lock's chain.
    Receipts {
        /// Encoded signed receipts (see the `receipt` module), at most [`MAX_RECEIPTS_PER_FRAME`].
        receipts: Vec<serde_bytes::ByteBuf>,
    },
    /// Health report.
    Status {
        /// Battery charge in percent, if the lock knows it.
        battery_percent: Option<u8>,
        /// Version of the trust bundle in force (0 for none).
        bundle_version: u64,
        /// The lock's monotonic time floor (Unix seconds).
        time_floor: u64,
        /// Battery voltage in millivolts, where the hardware can tell (absent from older agents).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        battery_millivolts: Option<u32>,
    },
    /// Keep-alive; the server answers [`ServerMessage::Pong`].
    Ping,
    /// A detector connected to the lock went off (smoke, CO, a medical pendant, intrusion).
    Alarm {
        /// What went off.
        kind: DetectorKind,
        /// The detector's name as configured on the lock (`Kitchen`), at most 100 bytes.
        detector: Option<String>,
        /// The alarm's random 16-byte id, given when the detector reported it: the same alarm
        /// offered again (at any time) is acted on once. Absent from older agents.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Bytes<16>>,
    },
}

/// The kinds of detector a lock can report an alarm from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DetectorKind {
    /// Smoke detector.
    Smoke,
    /// Carbon monoxide detector.
    CarbonMonoxide,
    /// Medical alert pendant or fall detector.
    Medical,
    /// Intrusion sensor.
    Intrusion,
}

/// The bytes the device key signs in [`AgentMessage::Hello`]: domain ‖ nonce ‖ u16 BE length ‖
/// lock id ‖ u16 BE length ‖ server name. Binding the server name stops a signature made for one
/// server from being relayed to another.
pub fn auth_signed_bytes(nonce: &[u8; 32], lock_id: &str, server_name: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUTH_DOMAIN.len() + 32 + 4 + lock_id.len() + server_name.len());
    m.extend_from_slice(AUTH_DOMAIN);
    m.extend_from_slice(nonce);
    for part in [lock_id.as_bytes(), server_name.as_bytes()] {
        m.extend_from_slice(&u16::try_from(part.len()).unwrap_or(u16::MAX).to_be_bytes());
        m.extend_from_slice(part);
    }
    m
}

/// Server side: check a `Hello` signature against the nonce it sent and its own name.
pub fn verify_hello(
    device_public_key: &[u8; 32],
    nonce: &[u8; 32],
    lock_id: &str,
    server_name: &str,
    signature: &[u8],
) -> bool {
    let msg = auth_signed_bytes(nonce, lock_id, server_name);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, device_public_key)
        .verify(&msg, signature)
        .is_ok()
}

/// Decode a server message.
pub fn decode_server_message(payload: &[u8]) -> Result<ServerMessage, FrameError> {
    decode(payload)
}

/// Decode an agent message.
pub fn decode_agent_message(payload: &[u8]) -> Result<AgentMessage, FrameError> {
    decode(payload)
}

/// Encode a server message.
pub fn encode_server_message(msg: &ServerMessage) -> Result<Vec<u8>, FrameError> {
    encode(msg)
}

/// Encode an agent message.
pub fn encode_agent_message(msg: &AgentMessage) -> Result<Vec<u8>, FrameError> {
    encode(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_hello_fits_the_hello_cap() {
        let hello = AgentMessage::Hello {
            version: u16::MAX,
            lock_id: "x".repeat(64),
            device_public_key: Bytes([0xff; 32]),
            resume_after: u64::MAX,
            signature: vec![0xff; 64],
        };
        let len = encode_agent_message(&hello).unwrap().len();
        assert!(len <= MAX_HELLO_FRAME, "{len}");
    }

    #[test]
    fn round_trip_and_auth() {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pk8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pk8.as_ref()).unwrap();
        let pubkey: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
        let nonce = [3u8; 32];
        let sig = kp.sign(&auth_signed_bytes(&nonce, "lock", "srv"));
        let hello = AgentMessage::Hello {
            version: 1,
            lock_id: "lock".into(),
            device_public_key: Bytes(pubkey),
            resume_after: 5,
            signature: sig.as_ref().to_vec(),
        };
        let bytes = encode_agent_message(&hello).unwrap();
        assert_eq!(decode_agent_message(&bytes).unwrap(), hello);
        assert!(verify_hello(&pubkey, &nonce, "lock", "srv", sig.as_ref()));
        assert!(!verify_hello(
            &pubkey,
            &nonce,
            "lock",
            "other",
            sig.as_ref()
        ));
        assert!(!verify_hello(
            &pubkey,
            &[4; 32],
            "lock",
            "srv",
            sig.as_ref()
        ));
        let inbox = ServerMessage::Inbox {
            seq: 9,
            message: InboxMessage::Revocation {
                token_hash: Bytes([1; 32]),
                expires_at: 100,
            },
        };
        let bytes = encode_server_message(&inbox).unwrap();
        assert_eq!(decode_server_message(&bytes).unwrap(), inbox);
    }
}

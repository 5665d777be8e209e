//! What the lock's own hardware reports besides taps: door events from the actuator and door
//! sensor (opened with the mechanical key, forced, held open too long, jammed) and alarms from
//! detectors wired to the lock (smoke, CO, a medical pendant, intrusion).
//!
//! In the simulator the hardware is the `firstkey-agent event …` and `firstkey-agent alarm …`
//! commands: each drops one small JSON file into the state directory's `events/` spool (written
//! atomically, named by time so they sort in order). The running agent takes them in order:
//!
//! - a **door event** becomes a signed receipt in the same chain as tap decisions, so it cannot be
//!   dropped or reordered unnoticed, and uploads with them (offline: later, in order). The event
//!   is the receipt's typed `door_event` field; its `outcome` is `Deny` (nobody was let in by the
//!   lock) and its `reason` still names the event as receipts did before the field existed
//!   (`door:key_override`, `door:forced`, `door:held_open:<seconds>`, `door:jammed`), for servers
//!   of the previous release. [`DoorEvent::of_receipt`] reads both;
//! - an **alarm** moves to the `alarms/` outbox, which the channel sends as
//!   `AgentMessage::Alarm` frames when connected and empties as each frame is written. Each alarm
//!   carries the random 16-byte id it was given when the detector reported it, so an alarm sent
//!   again (the agent stopped between writing the frame and removing the file) is recognised by
//!   the server as the same alarm, however late.
//!
//! The spool is bounded ([`MAX_SPOOLED`]): hardware that floods it is refused at the source.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::door::Door;
use crate::protocol::Bytes;
use crate::protocol::channel::DetectorKind;
use crate::protocol::tap::Outcome;
use crate::receipt::{ReceiptBody, VerifiedReceipt};
use crate::state::{StateDir, StateError};

/// Prefix of the receipt reason of a door event.
pub const DOOR_REASON_PREFIX: &str = "door:";

/// Most files waiting in the spool or the alarm outbox.
pub const MAX_SPOOLED: usize = 256;

/// Longest detector name carried, bytes.
pub const MAX_DETECTOR_LEN: usize = 100;

/// Something the actuator or the door sensor noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DoorEvent {
    /// Opened with the mechanical key (the electronics were bypassed).
    KeyOverride,
    /// Opened without the lock releasing it.
    Forced,
    /// Left open longer than allowed.
    HeldOpen {
        /// How long it stood open, seconds.
        seconds: u32,
    },
    /// The bolt did not move when driven.
    Jammed,
}

impl DoorEvent {
    /// The receipt reason recording this event.
    pub fn reason(self) -> String {
        match self {
            Self::KeyOverride => "door:key_override".to_owned(),
            Self::Forced => "door:forced".to_owned(),
            Self::HeldOpen { seconds } => format!("door:held_open:{seconds}"),
            Self::Jammed => "door:jammed".to_owned(),
        }
    }

    /// The event a receipt reason records, if it records one.
    pub fn from_reason(reason: &str) -> Option<Self> {
        let rest = reason.strip_prefix(DOOR_REASON_PREFIX)?;
        match rest {
            "key_override" => Some(Self::KeyOverride),
            "forced" => Some(Self::Forced),
            "jammed" => Some(Self::Jammed),
            _ => rest
                .strip_prefix("held_open:")
                .and_then(|s| s.parse().ok())
                .map(|seconds| Self::HeldOpen { seconds }),
        }
    }

    /// The door event a receipt records: its typed `door_event` field, or, for a receipt written
    /// before that field existed, a `door:` reason on a receipt without a token. A receipt with a
    /// token is never a door event.
    pub fn of_receipt(body: &ReceiptBody) -> Option<Self> {
        if body.token_hash.is_some() {
            return None;
        }
        body.door_event.or_else(|| Self::from_reason(&body.reason))
    }

    /// The event's name in the simulator's command line and in audit entries.
    pub fn name(self) -> &'static str {
        match self {
            Self::KeyOverride => "key_override",
            Self::Forced => "forced",
            Self::HeldOpen { .. } => "held_open",
            Self::Jammed => "jammed",
        }
    }
}

/// One report from the lock's hardware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HardwareEvent {
    /// A door event (becomes a receipt).
    Door(DoorEvent),
    /// A detector alarm (goes to the server over the channel).
    Alarm {
        /// What went off.
        kind: DetectorKind,
        /// The detector's name.
        detector: Option<String>,
        /// The alarm's id (absent from files spooled by older agents).
        #[serde(default)]
        id: Option<Bytes<16>>,
    },
}

/// A new random alarm id.
pub fn new_alarm_id() -> Result<Bytes<16>, std::io::Error> {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| std::io::Error::other("no randomness for the alarm id"))?;
    Ok(Bytes(id))
}

/// An alarm waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAlarm {
    /// Its file (remove it once sent).
    pub path: PathBuf,
    /// What went off.
    pub kind: DetectorKind,
    /// The detector's name.
    pub detector: Option<String>,
    /// Its id (`None` for an alarm spooled by an older agent).
    pub id: Option<Bytes<16>>,
}

/// Why an event could not be submitted.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The spool holds [`MAX_SPOOLED`] files already.
    #[error("the event spool is full")]
    Full,
    /// The detector name is too long.
    #[error("detector name longer than {MAX_DETECTOR_LEN} bytes")]
    DetectorTooLong,
    /// The file system failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn spool(dir: &StateDir) -> PathBuf {
    dir.root().join("events")
}

fn outbox(dir: &StateDir) -> PathBuf {
    dir.root().join("alarms")
}

fn count(path: &Path) -> usize {
    std::fs::read_dir(path).map_or(0, |d| d.filter_map(Result::ok).count())
}

/// Writes `event` to the spool for the running agent (the simulator's hardware line). `now` is
/// the clock's reading; files are named `<now, µs-scaled>-<n>.json` with the first free `n`, so
/// events sort in submission order even within one second. A name is reserved with an exclusive
/// create, then filled by an atomic replacement; readers skip a reserved, still empty file.
pub fn submit(dir: &StateDir, event: &HardwareEvent, now: u64) -> Result<PathBuf, EventError> {
    if let HardwareEvent::Alarm {
        detector: Some(d), ..
    } = event
        && d.len() > MAX_DETECTOR_LEN
    {
        return Err(EventError::DetectorTooLong);
    }
    let spool = spool(dir);
    std::fs::create_dir_all(&spool)?;
    if count(&spool) >= MAX_SPOOLED {
        return Err(EventError::Full);
    }
    let bytes = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    for n in 0..MAX_SPOOLED {
        let path = spool.join(format!("{now:020}-{n:04}.json"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => {
                crate::durable::write_atomic(&path, &bytes, 0o600)?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(EventError::Full)
}

fn sorted_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.truncate(MAX_SPOOLED);
    files
}

/// Records a door event as the next receipt of the chain (durable when this returns `Ok`).
pub fn record_door_event(door: &mut Door, event: DoorEvent) -> Result<VerifiedReceipt, StateError> {
    let now = door.clock().now();
    let body = ReceiptBody {
        version: 0,
        lock_id: door.store().lock_id().to_string(),
        seq: 0,
        time: now,
        prev: Bytes([0; 32]),
        outcome: Outcome::Deny,
        reason: event.reason(),
        token_hash: None,
        token_id: None,
        expires_at: None,
        door_event: Some(event),
    };
    let receipt = door.store_mut().append_receipt(body)?;
    tracing::info!(
        receipt_seq = receipt.body.seq,
        event = event.name(),
        "door event recorded"
    );
    Ok(receipt)
}

/// Takes every spooled event in order: door events become receipts, alarms move to the outbox.
/// Returns whether anything new is waiting for the channel.
pub fn drain(door: &Arc<Mutex<Door>>, dir: &StateDir) -> bool {
    let mut news = false;
    for path in sorted_files(&spool(dir)) {
        // Reserved by `submit` and not yet filled: later, in order (stop here).
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            return news;
        }
        let event = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<HardwareEvent>(&b).ok());
        match event {
            None => tracing::warn!(file = %path.display(), "unreadable hardware event dropped"),
            Some(HardwareEvent::Door(ev)) => {
                let Ok(mut d) = door.lock() else {
                    return news;
                };
                if let Err(e) = record_door_event(&mut d, ev) {
                    // Left in the spool: recorded on a later pass, never lost.
                    tracing::error!(error = %e, "door event not recorded; will retry");
                    return news;
                }
                news = true;
            }
            Some(HardwareEvent::Alarm { .. }) => {
                let out = outbox(dir);
                let moved = std::fs::create_dir_all(&out).and_then(|()| {
                    let name = path.file_name().unwrap_or_default();
                    std::fs::rename(&path, out.join(name))
                });
                if let Err(e) = moved {
                    tracing::error!(error = %e, "alarm not queued; will retry");
                    return news;
                }
                news = true;
                continue;
            }
        }
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(error = %e, file = %path.display(), "spooled event not removed");
        }
    }
    news
}

/// Alarms waiting to be sent, oldest first, with their files (remove each once sent).
pub fn pending_alarms(dir: &StateDir) -> Vec<PendingAlarm> {
    sorted_files(&outbox(dir))
        .into_iter()
        .filter_map(|path| {
            let event = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<HardwareEvent>(&b).ok());
            match event {
                Some(HardwareEvent::Alarm { kind, detector, id }) => Some(PendingAlarm {
                    path,
                    kind,
                    detector,
                    id,
                }),
                _ => {
                    let _ = std::fs::remove_file(&path);
                    None
                }
            }
        })
        .collect()
}

/// Watches the spool every `poll` (the simulated hardware line), notifying `news` when a receipt
/// or an alarm is waiting for the channel.
pub async fn watch(door: Arc<Mutex<Door>>, dir: StateDir, news: Arc<Notify>, poll: Duration) {
    let mut every = tokio::time::interval(poll);
    loop {
        every.tick().await;
        // Nothing spooled (the usual case): do not touch the door at all.
        if count(&spool(&dir)) == 0 {
            continue;
        }
        let (d, s) = (door.clone(), dir.clone());
        if let Ok(true) = tokio::task::spawn_blocking(move || drain(&d, &s)).await {
            news.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn door_event_reasons_round_trip() {
        for ev in [
            DoorEvent::KeyOverride,
            DoorEvent::Forced,
            DoorEvent::HeldOpen { seconds: 45 },
            DoorEvent::Jammed,
        ] {
            assert_eq!(DoorEvent::from_reason(&ev.reason()), Some(ev));
        }
        assert_eq!(DoorEvent::from_reason("ok"), None);
        assert_eq!(DoorEvent::from_reason("door:held_open:x"), None);
        assert_eq!(DoorEvent::from_reason("door:unknown"), None);
    }

    fn body(reason: &str, door_event: Option<DoorEvent>, token: bool) -> ReceiptBody {
        ReceiptBody {
            version: 1,
            lock_id: "lock".to_owned(),
            seq: 1,
            time: 1,
            prev: Bytes([0; 32]),
            outcome: Outcome::Deny,
            reason: reason.to_owned(),
            token_hash: token.then_some(Bytes([1; 32])),
            token_id: None,
            expires_at: None,
            door_event,
        }
    }

    #[test]
    fn the_typed_field_names_the_event_and_old_receipts_still_read() {
        let held = DoorEvent::HeldOpen { seconds: 95 };
        // New receipts: the typed field decides, whatever the reason says.
        assert_eq!(
            DoorEvent::of_receipt(&body("door:held_open:95", Some(held), false)),
            Some(held)
        );
        assert_eq!(
            DoorEvent::of_receipt(&body("anything", Some(DoorEvent::Jammed), false)),
            Some(DoorEvent::Jammed)
        );
        // Receipts written before the field: the `door:` reason.
        assert_eq!(
            DoorEvent::of_receipt(&body("door:key_override", None, false)),
            Some(DoorEvent::KeyOverride)
        );
        // A receipt with a token is a decision, never a door event.
        assert_eq!(
            DoorEvent::of_receipt(&body("door:forced", Some(DoorEvent::Forced), true)),
            None
        );
        assert_eq!(DoorEvent::of_receipt(&body("expired", None, false)), None);
        // A body without the field encodes exactly as before (no key for it at all), and one with
        // it round-trips.
        let old = crate::protocol::encode(&body("door:forced", None, false)).unwrap();
        assert!(!old.windows(10).any(|w| w == b"door_event"));
        let new = body("door:forced", Some(DoorEvent::Forced), false);
        let bytes = crate::protocol::encode(&new).unwrap();
        assert_eq!(crate::protocol::decode::<ReceiptBody>(&bytes).unwrap(), new);
    }
}

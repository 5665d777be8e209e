//! The door hardware behind a trait, and a simulated door that writes what it did to a file.
//!
//! The agent calls [`Actuator::open`] only after the decision's receipt is durable. The simulated
//! actuator appends one line per event to `actuator.log` in the state directory and fsyncs it, so a
//! test can count exactly how many times the door opened, even across SIGKILL.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the door is being opened: ties an open to the receipt that authorised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRequest {
    /// Sequence number of the allow receipt.
    pub receipt_seq: u64,
    /// How long the door stays unlocked.
    pub hold: Duration,
}

/// Drives the lock's bolt.
pub trait Actuator: Send {
    /// Unlock the door for `req.hold`. Returns once the unlock is under way; relocking after the
    /// hold time is the actuator's job.
    fn open(&mut self, req: OpenRequest) -> io::Result<()>;
}

/// A door simulated by a log file: `OPEN seq=N hold_ms=M` then `CLOSE seq=N` after the hold.
#[derive(Debug, Clone)]
pub struct SimulatedActuator {
    log: PathBuf,
}

/// One line of the simulated actuator's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoorEvent {
    /// The door was unlocked for the allow receipt with this sequence number.
    Open {
        /// Receipt sequence number.
        receipt_seq: u64,
        /// Hold time in milliseconds.
        hold_ms: u64,
    },
    /// The door relocked after the hold.
    Close {
        /// Receipt sequence number.
        receipt_seq: u64,
    },
}

impl SimulatedActuator {
    /// File name of the log inside the state directory.
    pub const FILE_NAME: &'static str = "actuator.log";

    /// A simulated door logging to `state_dir/actuator.log`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            log: state_dir.join(Self::FILE_NAME),
        }
    }

    /// Read back every event recorded in `state_dir`'s actuator log (a torn last line is skipped).
    pub fn events(state_dir: &Path) -> io::Result<Vec<DoorEvent>> {
        let text = match std::fs::read_to_string(state_dir.join(Self::FILE_NAME)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        // Only whole lines count: a line cut short by a crash or a full disk has no newline yet.
        Ok(text
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
            .filter_map(parse_line)
            .collect())
    }
}

fn parse_line(line: &str) -> Option<DoorEvent> {
    let mut parts = line.split(' ');
    let kind = parts.next()?;
    let seq = parts.next()?.strip_prefix("seq=")?.parse().ok()?;
    match kind {
        "OPEN" => {
            let hold_ms = parts.next()?.strip_prefix("hold_ms=")?.parse().ok()?;
            Some(DoorEvent::Open {
                receipt_seq: seq,
                hold_ms,
            })
        }
        "CLOSE" => Some(DoorEvent::Close { receipt_seq: seq }),
        _ => None,
    }
}

/// Append one event line. It starts with a newline too, so that a line torn by a crash or a full
/// disk ends there and cannot swallow the next one (torn lines are ignored when reading).
fn append_line(path: &Path, line: &str) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let mut bytes = Vec::with_capacity(line.len().saturating_add(1));
    bytes.push(b'\n');
    bytes.extend_from_slice(line.as_bytes());
    f.write_all(&bytes)?;
    f.sync_data()
}

impl Actuator for SimulatedActuator {
    fn open(&mut self, req: OpenRequest) -> io::Result<()> {
        let hold_ms = u64::try_from(req.hold.as_millis()).unwrap_or(u64::MAX);
        append_line(
            &self.log,
            &format!("OPEN seq={} hold_ms={hold_ms}\n", req.receipt_seq),
        )?;
        tracing::info!(receipt_seq = req.receipt_seq, hold_ms, "door unlocked");
        let log = self.log.clone();
        let seq = req.receipt_seq;
        let hold = req.hold;
        std::thread::spawn(move || {
            std::thread::sleep(hold);
            match append_line(&log, &format!("CLOSE seq={seq}\n")) {
                Ok(()) => tracing::info!(receipt_seq = seq, "door relocked"),
                Err(e) => tracing::error!(error = %e, "could not record relock"),
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_open_and_close() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = SimulatedActuator::new(dir.path());
        a.open(OpenRequest {
            receipt_seq: 7,
            hold: Duration::from_millis(10),
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let ev = SimulatedActuator::events(dir.path()).unwrap();
        assert_eq!(
            ev,
            vec![
                DoorEvent::Open {
                    receipt_seq: 7,
                    hold_ms: 10
                },
                DoorEvent::Close { receipt_seq: 7 }
            ]
        );
    }

    #[test]
    fn torn_line_is_ignored() {
        assert_eq!(parse_line("OPEN seq=3 hold"), None);
        assert_eq!(parse_line("OPEN seq="), None);
    }

    #[test]
    fn a_torn_line_does_not_swallow_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SimulatedActuator::FILE_NAME);
        append_line(&path, "OPEN seq=1 hold_ms=10\n").unwrap();
        // A write cut short by a full disk, then the next event.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"\nOPEN seq=2 ho")
            .unwrap();
        append_line(&path, "OPEN seq=3 hold_ms=10\n").unwrap();
        append_line(&path, "CLOSE seq=").unwrap();
        let seqs: Vec<u64> = SimulatedActuator::events(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| match e {
                DoorEvent::Open { receipt_seq, .. } | DoorEvent::Close { receipt_seq } => {
                    receipt_seq
                }
            })
            .collect();
        assert_eq!(seqs, vec![1, 3]);
    }
}

//! The one verifier of the audit log, used by `firstkey audit verify`, the witness and the tests:
//! it needs no database and no network, only the log's public key. Tree sizes and root hashes come
//! only from a checkpoint whose signature verified ([`VerifiedCheckpoint`]); proofs are checked
//! against those, never against sizes a proof or an export claims.
//!
//! The export format ([`Export`]) is specified in `docs/audit-log.md`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::merkle::{self, Frontier, Hash, ProofError};
use super::note::{self, NoteError, VerifiedCheckpoint, VerifierKey};

/// The `format` of exports this verifier reads.
pub const EXPORT_FORMAT: &str = "firstkey-audit-export/v1";

/// An export of (part of) a municipality's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// Always `firstkey-audit-export/v1`.
    pub format: String,
    /// The signed checkpoint (C2SP signed note, with any cosignatures) the export is against.
    pub checkpoint: String,
    /// `true` when `entries` are the whole log up to the checkpoint's size, in order; the verifier
    /// then recomputes the root from them. `false` for a selection, each with an inclusion proof.
    pub complete: bool,
    /// The entries.
    pub entries: Vec<ExportEntry>,
}

/// One entry of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportEntry {
    /// Position in the log (the leaf index).
    pub index: u64,
    /// The entry's canonical JSON; the leaf hash is `SHA-256(0x00 ‖ UTF-8 bytes of this)`.
    pub data: String,
    /// Base64 inclusion proof of the leaf in the checkpoint's tree (RFC 9162 §2.1.3), deepest first.
    /// Required when the export is not complete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proof: Vec<String>,
}

/// One thing that did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The export is not readable as an export.
    #[error("export: {0}")]
    Format(String),
    /// The checkpoint is not signed by the log key given, or malformed.
    #[error("checkpoint: {0}")]
    Checkpoint(NoteError),
    /// An entry failed; the text says how.
    #[error("entry {index}: {reason}")]
    Entry {
        /// The entry's index as the export states it.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// A complete export lacks entries.
    #[error("entries {from}..{to} are missing (the checkpoint covers {size})")]
    Missing {
        /// First missing index.
        from: u64,
        /// One past the last missing index.
        to: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// The root recomputed from a complete export is not the signed root.
    #[error("the entries do not hash to the checkpoint's root: the log was rewritten or reordered")]
    Root,
    /// Fewer valid cosignatures by the given witnesses than required.
    #[error("{found} valid cosignature(s) by the given witnesses, {required} required")]
    Quorum {
        /// Valid cosignatures found.
        found: usize,
        /// Required.
        required: usize,
    },
}

/// What [`verify_export`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The verified checkpoint's origin, size and root (hex), when its signature verified.
    pub checkpoint: Option<(String, u64, String)>,
    /// Entries whose leaf (and proof, if any) verified.
    pub verified: u64,
    /// Witnesses with a valid cosignature, with their time.
    pub witnesses: Vec<(String, u64)>,
    /// Everything that failed; empty when the export verified.
    pub failures: Vec<Failure>,
}

impl Report {
    /// Whether everything verified.
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.checkpoint.is_some()
    }
}

fn decode_proof(proof: &[String]) -> Result<Vec<Hash>, String> {
    proof
        .iter()
        .map(|p| {
            STANDARD
                .decode(p)
                .ok()
                .and_then(|b| <Hash>::try_from(b).ok())
                .ok_or_else(|| "a proof hash is not base64 of 32 bytes".to_owned())
        })
        .collect()
}

fn entry_seq(data: &str) -> Result<(u64, Option<String>), String> {
    let value: serde_json::Value =
        serde_json::from_str(data).map_err(|e| format!("data is not JSON ({e})"))?;
    let seq = value
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| "data has no seq".to_owned())?;
    let municipality = value
        .get("municipality")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    Ok((seq, municipality))
}

/// Verifies an export against the log key, counting cosignatures by `witnesses` (at least `quorum`
/// must be valid). Reports every failure, not just the first.
pub fn verify_export(
    text: &str,
    log_key: &VerifierKey,
    witnesses: &[VerifierKey],
    quorum: usize,
) -> Report {
    let mut report = Report {
        checkpoint: None,
        verified: 0,
        witnesses: Vec::new(),
        failures: Vec::new(),
    };
    let export: Export = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) => {
            report.failures.push(Failure::Format(e.to_string()));
            return report;
        }
    };
    if export.format != EXPORT_FORMAT {
        report.failures.push(Failure::Format(format!(
            "format {:?} is not {EXPORT_FORMAT}",
            export.format
        )));
        return report;
    }
    let checkpoint = match note::verify_checkpoint(&export.checkpoint, log_key) {
        Ok(c) => c,
        Err(e) => {
            report.failures.push(Failure::Checkpoint(e));
            return report;
        }
    };
    report.checkpoint = Some((
        checkpoint.origin().to_owned(),
        checkpoint.size(),
        hex::encode(checkpoint.root()),
    ));
    report.witnesses = checkpoint.cosigned_by(witnesses);
    if report.witnesses.len() < quorum {
        report.failures.push(Failure::Quorum {
            found: report.witnesses.len(),
            required: quorum,
        });
    }
    let size = checkpoint.size();
    let mut frontier = Frontier::default();
    let mut previous: Option<u64> = None;
    let mut municipality: Option<String> = None;
    for entry in &export.entries {
        let fail = |reason: String| Failure::Entry {
            index: entry.index,
            reason,
        };
        if previous.is_some_and(|p| entry.index <= p) {
            report.failures.push(fail(
                "out of order or repeated (indexes must increase)".to_owned(),
            ));
        }
        previous = Some(entry.index);
        if entry.index >= size {
            report
                .failures
                .push(fail(format!("beyond the checkpoint's tree size {size}")));
            continue;
        }
        match entry_seq(&entry.data) {
            Ok((seq, m)) => {
                if seq != entry.index {
                    report.failures.push(fail(format!(
                        "its data says it is entry {seq}: moved or reordered"
                    )));
                }
                if let Some(m) = m {
                    match &municipality {
                        None => municipality = Some(m),
                        Some(first) if *first != m => report
                            .failures
                            .push(fail("belongs to another municipality's log".to_owned())),
                        Some(_) => {}
                    }
                }
            }
            Err(reason) => report.failures.push(fail(reason)),
        }
        let leaf = merkle::leaf_hash(entry.data.as_bytes());
        if export.complete {
            if entry.index == frontier.size() {
                frontier.push(leaf);
            }
        } else if entry.proof.is_empty() {
            report.failures.push(fail("no inclusion proof".to_owned()));
            continue;
        }
        if !entry.proof.is_empty() {
            match decode_proof(&entry.proof) {
                Err(reason) => {
                    report.failures.push(fail(reason));
                    continue;
                }
                Ok(proof) => {
                    if let Err(e) = merkle::verify_inclusion(
                        &leaf,
                        entry.index,
                        size,
                        &proof,
                        checkpoint.root(),
                    ) {
                        report.failures.push(fail(match e {
                            ProofError::Mismatch => {
                                "not in the checkpoint's tree: tampered or the proof is wrong"
                                    .to_owned()
                            }
                            other => format!("inclusion proof: {other}"),
                        }));
                        continue;
                    }
                }
            }
        }
        report.verified = report.verified.saturating_add(1);
    }
    if export.complete {
        let mut expected = 0u64;
        let mut gaps = Vec::new();
        for entry in &export.entries {
            if entry.index > expected {
                gaps.push((expected, entry.index));
            }
            expected = expected.max(entry.index.saturating_add(1));
        }
        if expected < size {
            gaps.push((expected, size));
        }
        for (from, to) in &gaps {
            report.failures.push(Failure::Missing {
                from: *from,
                to: *to,
                size,
            });
        }
        if gaps.is_empty() && frontier.size() == size && &frontier.root() != checkpoint.root() {
            report.failures.push(Failure::Root);
        }
    }
    if !report.failures.is_empty() {
        report.verified = 0;
    }
    report
}

/// Why two checkpoints of one log do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistent {
    /// Two signed checkpoints of the same size with different roots: the log forked.
    #[error("fork: two signed checkpoints of size {size} with different roots")]
    Fork {
        /// The size.
        size: u64,
    },
    /// The newer checkpoint is smaller: the log was rolled back (or is showing an old view).
    #[error("rollback: tree size went from {from} to {to}")]
    Rollback {
        /// The size seen before.
        from: u64,
        /// The size now.
        to: u64,
    },
    /// The consistency proof does not prove that the newer tree extends the older one.
    #[error("the log is not append-only between sizes {from} and {to}: {cause}")]
    NotAppendOnly {
        /// Older size.
        from: u64,
        /// Newer size.
        to: u64,
        /// The proof's failure.
        cause: ProofError,
    },
    /// Checkpoints of different logs.
    #[error("checkpoints of different logs ({0} and {1})")]
    OtherLog(String, String),
}

/// Checks that `new` extends `old` (both signed by the log), with the consistency proof between
/// their sizes (empty for equal sizes).
pub fn check_consistent(
    old: &VerifiedCheckpoint,
    new: &VerifiedCheckpoint,
    proof: &[Hash],
) -> Result<(), Inconsistent> {
    if old.origin() != new.origin() {
        return Err(Inconsistent::OtherLog(
            old.origin().to_owned(),
            new.origin().to_owned(),
        ));
    }
    if new.size() < old.size() {
        return Err(Inconsistent::Rollback {
            from: old.size(),
            to: new.size(),
        });
    }
    if new.size() == old.size() {
        return if new.root() == old.root() {
            Ok(())
        } else {
            Err(Inconsistent::Fork { size: new.size() })
        };
    }
    merkle::verify_consistency(old.size(), new.size(), old.root(), new.root(), proof).map_err(
        |cause| Inconsistent::NotAppendOnly {
            from: old.size(),
            to: new.size(),
            cause,
        },
    )
}

/// Decodes a list of base64 hashes (a proof as served).
pub fn decode_hashes(proof: &[String]) -> Result<Vec<Hash>, String> {
    decode_proof(proof)
}

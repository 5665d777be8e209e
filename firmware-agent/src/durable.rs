//! Crash-safe files: whole-file atomic replacement and an append-only record log.
//!
//! Everything the agent must not lose goes through this module. A power cut at any instant leaves
//! either the old or the new contents of a replaced file, and a log whose torn tail (a record cut
//! short by the crash) is dropped when the log is next opened. This module knows nothing about
//! what the bytes mean.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The largest record an [`AppendLog`] accepts, in bytes.
pub const MAX_RECORD_LEN: usize = 64 * 1024;

/// Bytes before each record's payload: a 4-byte little-endian length and an 8-byte checksum.
const HEADER_LEN: usize = 12;

/// Replace `path` with `contents` so that a crash leaves either the old file or the new one.
///
/// Writes a temporary file beside it with permission bits `mode`, fsyncs it, renames it over
/// `path`, then fsyncs the directory so the rename itself is durable.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    // A temporary file left by a crash may carry other permission bits; start afresh.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(&dir)
}

/// Read a whole file, or `None` if it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Fsync a directory so that entries created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_dir(path: &Path) -> io::Result<PathBuf> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Ok(PathBuf::from(".")),
        Some(p) => Ok(p.to_path_buf()),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no parent directory",
        )),
    }
}

/// An append-only log of length- and checksum-framed records, fsynced on every append.
///
/// Record layout: `len: u32 LE ‖ first 8 bytes of SHA-256(payload) ‖ payload`. Opening the log
/// scans it and truncates a torn tail. A damaged region longer than one maximal record is not a
/// torn write but corruption, and opening fails rather than silently dropping records.
#[derive(Debug)]
pub struct AppendLog {
    path: PathBuf,
    file: File,
    records: Vec<Vec<u8>>,
}

/// What [`AppendLog::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes dropped from a torn tail (0 when the log was clean).
    pub truncated_bytes: u64,
}

impl AppendLog {
    /// Open (creating if needed) the log at `path`, truncate any torn tail, and load its records.
    pub fn open(path: &Path) -> io::Result<(Self, Recovery)> {
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        if created {
            sync_dir(&parent_dir(path)?)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (records, valid_len) = scan(&bytes);
        let total = u64::try_from(bytes.len()).map_err(io::Error::other)?;
        let valid = u64::try_from(valid_len).map_err(io::Error::other)?;
        let truncated_bytes = total.saturating_sub(valid);
        if truncated_bytes > 0 {
            let max_torn = u64::try_from(HEADER_LEN + MAX_RECORD_LEN).map_err(io::Error::other)?;
            if truncated_bytes > max_torn {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: {truncated_bytes} unreadable bytes after offset {valid}; \
                         more than a torn write, refusing to truncate",
                        path.display()
                    ),
                ));
            }
            file.set_len(valid)?;
            file.sync_all()?;
        }
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
                records,
            },
            Recovery { truncated_bytes },
        ))
    }

    /// The records in order, as loaded at open plus those appended since.
    pub fn records(&self) -> &[Vec<u8>] {
        &self.records
    }

    /// Append one record and fsync it; when this returns `Ok`, the record survives a crash.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let framed = frame(payload)?;
        self.file.write_all(&framed)?;
        self.file.sync_data()?;
        self.records.push(payload.to_vec());
        Ok(())
    }

    /// Atomically replace the whole log with `records` (used for compaction).
    pub fn rewrite(&mut self, records: Vec<Vec<u8>>) -> io::Result<()> {
        let mut bytes = Vec::new();
        for r in &records {
            bytes.extend_from_slice(&frame(r)?);
        }
        write_atomic(&self.path, &bytes, 0o600)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        self.records = records;
        Ok(())
    }
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let digest = ring::digest::digest(&ring::digest::SHA256, payload);
    let mut out = [0u8; 8];
    for (o, d) in out.iter_mut().zip(digest.as_ref()) {
        *o = *d;
    }
    out
}

fn frame(payload: &[u8]) -> io::Result<Vec<u8>> {
    if payload.len() > MAX_RECORD_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "record larger than MAX_RECORD_LEN",
        ));
    }
    let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(payload));
    out.extend_from_slice(payload);
    Ok(out)
}

/// The records of a log file's bytes, without modifying anything (a torn tail is ignored).
pub fn scan_records(bytes: &[u8]) -> Vec<Vec<u8>> {
    scan(bytes).0
}

/// Parse records from the start of `bytes`; returns them and the length of the valid prefix.
fn scan(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut records = Vec::new();
    let mut pos = 0usize;
    while let Some(rest) = bytes.get(pos..) {
        let Some((header, body)) = rest.split_first_chunk::<HEADER_LEN>() else {
            break;
        };
        let (len_bytes, sum) = header.split_at(4);
        let Ok(len_arr) = <[u8; 4]>::try_from(len_bytes) else {
            break;
        };
        let Ok(len) = usize::try_from(u32::from_le_bytes(len_arr)) else {
            break;
        };
        if len > MAX_RECORD_LEN {
            break;
        }
        let Some(payload) = body.get(..len) else {
            break;
        };
        if checksum(payload).as_slice() != sum {
            break;
        }
        records.push(payload.to_vec());
        pos += HEADER_LEN + len;
    }
    (records, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let (mut log, rec) = AppendLog::open(&p).unwrap();
        assert_eq!(rec.truncated_bytes, 0);
        log.append(b"one").unwrap();
        log.append(b"").unwrap();
        log.append(b"three").unwrap();
        drop(log);
        let (log, rec) = AppendLog::open(&p).unwrap();
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(log.records(), &[b"one".to_vec(), vec![], b"three".to_vec()]);
    }

    #[test]
    fn every_torn_tail_is_truncated_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let (mut log, _) = AppendLog::open(&p).unwrap();
        log.append(b"first record").unwrap();
        log.append(b"second record").unwrap();
        drop(log);
        let full = fs::read(&p).unwrap();
        let first_len = HEADER_LEN + b"first record".len();
        for cut in first_len..full.len() {
            fs::write(&p, &full[..cut]).unwrap();
            let (mut log, rec) = AppendLog::open(&p).unwrap();
            assert_eq!(log.records(), &[b"first record".to_vec()], "cut at {cut}");
            assert_eq!(rec.truncated_bytes, u64::try_from(cut - first_len).unwrap());
            log.append(b"after").unwrap();
            drop(log);
            let (log, _) = AppendLog::open(&p).unwrap();
            assert_eq!(log.records().len(), 2);
        }
    }

    #[test]
    fn flipped_checksum_byte_drops_the_tail_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let (mut log, _) = AppendLog::open(&p).unwrap();
        log.append(b"a").unwrap();
        log.append(b"b").unwrap();
        drop(log);
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&p, &bytes).unwrap();
        let (log, rec) = AppendLog::open(&p).unwrap();
        assert_eq!(log.records(), &[b"a".to_vec()]);
        assert_eq!(rec.truncated_bytes, 13);
    }

    #[test]
    fn large_damage_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut bytes = frame(b"ok").unwrap();
        bytes.extend(std::iter::repeat_n(0xffu8, HEADER_LEN + MAX_RECORD_LEN + 1));
        fs::write(&p, &bytes).unwrap();
        assert!(AppendLog::open(&p).is_err());
        assert_eq!(fs::read(&p).unwrap().len(), bytes.len());
    }

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"old", 0o600).unwrap();
        write_atomic(&p, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.path().join("f.tmp").exists());
        assert_eq!(read_optional(&dir.path().join("missing")).unwrap(), None);
    }
}

//! Crash-safe files: whole-file atomic replacement and an append-only record log.
//!
//! Everything the agent must not lose goes through this module. A power cut at any instant leaves
//! either the old or the new contents of a replaced file, and a log whose torn tail (a record cut
//! short by the crash) is dropped when the log is next opened. A failed append (disk full, I/O
//! error, short write) cuts the log back to its last good record before reporting the error, or
//! halts the log if it cannot; opening never drops a readable record. This module knows nothing
//! about what the bytes mean.

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

/// The file operations an [`AppendLog`] needs. [`File`] is the real one; tests substitute a file
/// that fails (an error, or a short write) at a chosen byte, to check that a failed append never
/// leaves the log damaged.
pub trait LogFile: Send + std::fmt::Debug {
    /// Write some of `bytes` at the end of the file; returns how many were written (maybe fewer).
    fn append(&mut self, bytes: &[u8]) -> io::Result<usize>;
    /// Make every write so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cut the file to `len` bytes and make that durable (`ftruncate` + `fsync`).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Fill `buf` from the file at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl LogFile for File {
    fn append(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // Opened with O_APPEND: every write goes to the current end, also after a truncate.
        self.write(bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        self.sync_all()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// Wraps the log's real file (tests inject faults this way); called at open and after a rewrite.
pub type LogFileWrapper = std::sync::Arc<dyn Fn(File) -> Box<dyn LogFile> + Send + Sync>;

/// An append-only log of length- and checksum-framed records, fsynced on every append.
///
/// Record layout: `len: u32 LE ‖ first 8 bytes of SHA-256(payload) ‖ payload`.
///
/// Appends: a record counts only once it is written, fsynced and read back intact. A failed or
/// short append cuts the file back to its last good length (truncate + fsync) before it returns
/// the error, so nothing is ever appended after stray bytes. If even that fails, the log is
/// *halted* ([`AppendLog::halted`]): every later append is refused, because the file's end is
/// unknown.
///
/// Opening: every readable (length- and checksum-valid) record is kept, wherever it is. Unreadable
/// bytes after the last readable record, no longer than one maximal record, are a torn write (a
/// crash during an append) and are cut off. Anything else (unreadable bytes *between* readable
/// records, or a longer unreadable tail) is damage the append path cannot produce: the file is left
/// as it is, the readable records are loaded, and the log opens halted with a [`Damage`] report, so
/// the caller can decide whether a repair ([`AppendLog::rewrite`]) loses nothing.
pub struct AppendLog {
    path: PathBuf,
    file: Box<dyn LogFile>,
    wrapper: Option<LogFileWrapper>,
    records: Vec<Vec<u8>>,
    /// Bytes of the file that hold good records (where the next append starts).
    len: u64,
    halted: Option<String>,
}

impl std::fmt::Debug for AppendLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendLog")
            .field("path", &self.path)
            .field("records", &self.records.len())
            .field("len", &self.len)
            .field("halted", &self.halted)
            .finish_non_exhaustive()
    }
}

/// What [`AppendLog::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes dropped from a torn tail (0 when the log was clean).
    pub truncated_bytes: u64,
    /// Unreadable regions the log was opened despite (it is then halted); empty when clean.
    pub damage: Vec<Damage>,
}

/// An unreadable region of a log file that is not a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset where the unreadable bytes start.
    pub offset: u64,
    /// How many bytes are unreadable.
    pub len: u64,
    /// Readable records between this region and the next one (or the end).
    pub records_after: usize,
}

impl AppendLog {
    /// Open (creating if needed) the log at `path`, truncate a torn tail, and load its records.
    pub fn open(path: &Path) -> io::Result<(Self, Recovery)> {
        Self::open_with(path, None)
    }

    /// [`AppendLog::open`], with the file wrapped by `wrapper` (fault injection in tests).
    pub fn open_with(path: &Path, wrapper: Option<LogFileWrapper>) -> io::Result<(Self, Recovery)> {
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
        let found = inspect(&bytes);
        let end = to_u64(found.end)?;
        let mut truncated_bytes = 0;
        if found.torn_tail > 0 {
            // A torn write: the record being appended when the power went. Nothing readable
            // follows it, so cutting it loses nothing.
            file.set_len(end)?;
            file.sync_all()?;
            truncated_bytes = found.torn_tail;
        }
        let damage = found.damage;
        let halted = describe_damage(path, &damage);
        let file = match &wrapper {
            Some(w) => w(file),
            None => Box::new(file) as Box<dyn LogFile>,
        };
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
                wrapper,
                records: found.records,
                len: end,
                halted,
            },
            Recovery {
                truncated_bytes,
                damage,
            },
        ))
    }

    /// The records in order, as loaded at open plus those appended since.
    pub fn records(&self) -> &[Vec<u8>] {
        &self.records
    }

    /// Why appends are refused, if they are: the file was damaged at open, or a failed append
    /// could not be cut back.
    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }

    /// Append one record, fsync it and read it back. When this returns `Ok`, the record survives a
    /// crash and is readable. When it returns an error, the log is as before the call (the file
    /// was cut back to its last good length), or, if that failed too, the log is halted.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        if let Some(why) = &self.halted {
            return Err(io::Error::other(format!("receipt log halted: {why}")));
        }
        let framed = frame(payload)?;
        match self.write_checked(&framed) {
            Ok(()) => {
                self.len = self.len.saturating_add(to_u64(framed.len())?);
                self.records.push(payload.to_vec());
                Ok(())
            }
            Err(e) => {
                if let Err(t) = self.file.truncate(self.len) {
                    self.halted = Some(format!(
                        "{}: an append failed ({e}) and cutting the file back to {} bytes failed \
                         too ({t})",
                        self.path.display(),
                        self.len
                    ));
                }
                Err(e)
            }
        }
    }

    fn write_checked(&mut self, framed: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        while let Some(rest) = framed.get(done..).filter(|r| !r.is_empty()) {
            match self.file.append(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done = done.saturating_add(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.file.sync_data()?;
        let mut back = vec![0u8; framed.len()];
        self.file.read_exact_at(&mut back, self.len)?;
        if back != framed {
            return Err(io::Error::other("the appended record does not read back"));
        }
        Ok(())
    }

    /// Atomically replace the whole log with `records` (compaction, and repairing a damaged log);
    /// clears a halt, since the file is then exactly `records`.
    pub fn rewrite(&mut self, records: Vec<Vec<u8>>) -> io::Result<()> {
        let mut bytes = Vec::new();
        for r in &records {
            bytes.extend_from_slice(&frame(r)?);
        }
        write_atomic(&self.path, &bytes, 0o600)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        self.file = match &self.wrapper {
            Some(w) => w(file),
            None => Box::new(file),
        };
        self.len = to_u64(bytes.len())?;
        self.records = records;
        self.halted = None;
        Ok(())
    }
}

fn to_u64(n: usize) -> io::Result<u64> {
    u64::try_from(n).map_err(io::Error::other)
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

/// The readable records of a log file's bytes, without modifying anything.
pub fn scan_records(bytes: &[u8]) -> Vec<Vec<u8>> {
    scan(bytes).records
}

/// What a log file's bytes hold, judged as [`AppendLog::open`] judges them (nothing is modified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Every readable record, in file order.
    pub records: Vec<Vec<u8>>,
    /// End of the last readable record.
    pub end: usize,
    /// Length of a torn tail that opening would cut (0 if none, or if the file is damaged).
    pub torn_tail: u64,
    /// Unreadable regions that are not a torn tail.
    pub damage: Vec<Damage>,
}

/// Inspect a log file's bytes: readable records, torn tail, damage.
pub fn inspect(bytes: &[u8]) -> Inspection {
    let found = scan(bytes);
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let mut damage: Vec<Damage> = found
        .gaps
        .iter()
        .map(|(offset, len, records_after)| Damage {
            offset: as_u64(*offset),
            len: as_u64(*len),
            records_after: *records_after,
        })
        .collect();
    let tail = as_u64(bytes.len().saturating_sub(found.end));
    let mut torn_tail = 0;
    if tail > as_u64(HEADER_LEN + MAX_RECORD_LEN) {
        // Longer than any append: not a torn write.
        damage.push(Damage {
            offset: as_u64(found.end),
            len: tail,
            records_after: 0,
        });
    } else if damage.is_empty() {
        torn_tail = tail;
    }
    Inspection {
        records: found.records,
        end: found.end,
        torn_tail,
        damage,
    }
}

fn describe_damage(path: &Path, damage: &[Damage]) -> Option<String> {
    if damage.is_empty() {
        return None;
    }
    Some(format!(
        "{}: unreadable bytes between or after its records ({}); every readable record was kept \
         and the file left as it is",
        path.display(),
        damage
            .iter()
            .map(|d| format!("{} bytes at offset {}", d.len, d.offset))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// What a scan of a log file found.
struct Scan {
    /// Every readable record, in file order.
    records: Vec<Vec<u8>>,
    /// End of the last readable record.
    end: usize,
    /// Unreadable regions followed by readable records: (offset, length, records up to the next
    /// region).
    gaps: Vec<(usize, usize, usize)>,
}

/// The record framed at the start of `bytes`, and its framed length, if it is readable.
fn record_at(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let (header, body) = bytes.split_first_chunk::<HEADER_LEN>()?;
    let (len_bytes, sum) = header.split_at(4);
    let len = usize::try_from(u32::from_le_bytes(<[u8; 4]>::try_from(len_bytes).ok()?)).ok()?;
    if len > MAX_RECORD_LEN {
        return None;
    }
    let payload = body.get(..len)?;
    (checksum(payload).as_slice() == sum).then_some((payload, HEADER_LEN + len))
}

/// Parse every readable record. After an unreadable byte, look for the next readable record at
/// every later offset, so that no checksummed record is ever lost behind stray bytes (a false
/// match needs a 64-bit checksum to agree by chance).
fn scan(bytes: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut gaps: Vec<(usize, usize, usize)> = Vec::new();
    let mut pos = 0usize;
    let mut end = 0usize;
    while pos < bytes.len() {
        match bytes.get(pos..).and_then(record_at) {
            Some((payload, framed)) => {
                records.push(payload.to_vec());
                if let Some(gap) = gaps.last_mut() {
                    gap.2 = gap.2.saturating_add(1);
                }
                pos = pos.saturating_add(framed);
                end = pos;
            }
            None => {
                let next = (pos.saturating_add(1)..bytes.len())
                    .find(|&q| bytes.get(q..).and_then(record_at).is_some());
                match next {
                    Some(q) => {
                        gaps.push((pos, q.saturating_sub(pos), 0));
                        pos = q;
                    }
                    None => break,
                }
            }
        }
    }
    Scan { records, end, gaps }
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
    fn large_damage_is_kept_and_halts_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut bytes = frame(b"ok").unwrap();
        bytes.extend(std::iter::repeat_n(0xffu8, HEADER_LEN + MAX_RECORD_LEN + 1));
        fs::write(&p, &bytes).unwrap();
        let (mut log, rec) = AppendLog::open(&p).unwrap();
        assert_eq!(log.records(), &[b"ok".to_vec()]);
        assert_eq!(rec.damage.len(), 1);
        assert!(log.halted().is_some());
        assert!(log.append(b"more").is_err());
        assert_eq!(fs::read(&p).unwrap(), bytes);
    }

    #[test]
    fn records_after_stray_bytes_are_kept_and_the_log_halts_until_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        // The shape of the observed failure: a record cut short, later records appended after it.
        let mut bytes = frame(b"first").unwrap();
        let torn = frame(b"a record cut short by a full disk").unwrap();
        bytes.extend_from_slice(&torn[..torn.len() - 5]);
        bytes.extend_from_slice(&frame(b"second").unwrap());
        bytes.extend_from_slice(&frame(b"third").unwrap());
        fs::write(&p, &bytes).unwrap();
        let (mut log, rec) = AppendLog::open(&p).unwrap();
        assert_eq!(
            log.records(),
            &[b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
        );
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(
            rec.damage,
            vec![Damage {
                offset: u64::try_from(HEADER_LEN + 5).unwrap(),
                len: u64::try_from(torn.len() - 5).unwrap(),
                records_after: 2
            }]
        );
        assert!(log.halted().is_some());
        assert!(log.append(b"x").is_err());
        assert_eq!(fs::read(&p).unwrap(), bytes, "damage is never cut");
        let kept = log.records().to_vec();
        log.rewrite(kept).unwrap();
        assert!(log.halted().is_none());
        log.append(b"fourth").unwrap();
        drop(log);
        let (log, rec) = AppendLog::open(&p).unwrap();
        assert!(rec.damage.is_empty());
        assert_eq!(log.records().len(), 4);
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

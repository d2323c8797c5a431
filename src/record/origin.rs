//! Where a record came from: the file it was read from (identified by
//! device, inode and its first bytes, so a rotated or compressed file is
//! found again) and the byte position after it. Every stage carries this
//! with the record, so acknowledgements become checkpoints.

use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How many leading bytes of a file identify it across renames and gzip.
pub const FINGERPRINT_BYTES: usize = 1024;

/// How many leading bytes name a file in chunk identities (an audit event
/// carries its unique auditID within its first ~120 bytes).
pub const SOURCE_ID_BYTES: usize = 160;

/// One file being (or having been) read. Shared by the positions that point
/// into it.
#[derive(Debug)]
pub struct FileInfo {
    /// Path at the time it was opened.
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    /// Read through gzip; offsets are in decompressed bytes.
    pub gz: bool,
    /// The first bytes read, up to [`FINGERPRINT_BYTES`].
    head: Mutex<Vec<u8>>,
    /// Its length once it was rotated and read to the end (`u64::MAX`:
    /// still growing, or not read to the end).
    final_len: AtomicU64,
    /// [`FileInfo::source_id`], once the file has its first bytes.
    source_id: std::sync::OnceLock<String>,
}

impl FileInfo {
    pub fn new(path: PathBuf, dev: u64, ino: u64, gz: bool) -> Self {
        FileInfo {
            path,
            dev,
            ino,
            gz,
            head: Mutex::new(Vec::new()),
            final_len: AtomicU64::new(u64::MAX),
            source_id: std::sync::OnceLock::new(),
        }
    }

    /// The file was rotated and read to its end, which is `len`.
    pub fn set_final_len(&self, len: u64) {
        self.final_len.store(len, Ordering::Relaxed);
    }

    /// Its final length, once rotated and read to the end.
    pub fn final_len(&self) -> Option<u64> {
        Some(self.final_len.load(Ordering::Relaxed)).filter(|&l| l != u64::MAX)
    }

    /// Records bytes read at `offset` that fall within the fingerprint window.
    pub fn note_head(&self, offset: u64, data: &[u8]) {
        if offset as usize >= FINGERPRINT_BYTES {
            return;
        }
        // Bytes that continue what is known (they may overlap it).
        if let Ok(mut h) = self.head.lock()
            && offset <= h.len() as u64
            && let Some(new) = data.get(h.len() - offset as usize..)
        {
            let take = (FINGERPRINT_BYTES - h.len()).min(new.len());
            h.extend_from_slice(&new[..take]);
        }
    }

    /// The file's name in chunk identities: 32 hex digits of the SHA-256 of
    /// its first [`SOURCE_ID_BYTES`] (of fewer while it is shorter; fixed
    /// once it has them). The same after a rename or gzip.
    pub fn source_id(&self) -> String {
        if let Some(s) = self.source_id.get() {
            return s.clone();
        }
        let h = self.head_prefix(SOURCE_ID_BYTES);
        let id = hex::encode(&Sha256::digest(&h)[..16]);
        if h.len() == SOURCE_ID_BYTES {
            let _ = self.source_id.set(id.clone());
        }
        id
    }

    /// Up to `n` of the first bytes read.
    pub fn head_prefix(&self, n: usize) -> Vec<u8> {
        self.head
            .lock()
            .map(|h| h[..n.min(h.len())].to_vec())
            .unwrap_or_default()
    }

    /// Fingerprint of the first `min(upto, FINGERPRINT_BYTES)` bytes: (hex sha256, length).
    pub fn fingerprint(&self, upto: u64) -> (String, usize) {
        let h = self.head.lock().map(|h| h.clone()).unwrap_or_default();
        let n = (upto as usize).min(h.len());
        (fingerprint_of(&h[..n]), n)
    }
}

/// Hex sha256 of a file's leading bytes.
pub fn fingerprint_of(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A byte position in a file: everything before `offset` has been read.
#[derive(Debug, Clone)]
pub struct Position {
    pub file: Arc<FileInfo>,
    pub offset: u64,
}

/// A loss the source reports (a DATA GAP): `bytes` of `path` from `offset`
/// on (0: unknown) will not be forwarded, because `why`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub path: String,
    pub offset: u64,
    pub bytes: u64,
    pub why: String,
}

/// Gaps reported and not yet handed on (shared by the tail and its holder).
#[derive(Debug, Clone, Default)]
pub struct GapLog(Arc<Mutex<Vec<Gap>>>);

impl GapLog {
    pub fn push(&self, g: Gap) {
        if let Ok(mut v) = self.0.lock() {
            v.push(g);
        }
    }

    /// The gaps reported since the last call.
    pub fn take(&self) -> Vec<Gap> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

//! The source stage: follow the kube-apiserver audit log through rotation and
//! hand complete lines, each with the file position after it, to a sink.

pub mod checkpoint;
pub mod files;
pub mod spool;
pub mod tail;
pub mod webhook;

use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How many leading bytes of a file identify it across renames and gzip.
pub const FINGERPRINT_BYTES: usize = 1024;

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
}

impl FileInfo {
    pub fn new(path: PathBuf, dev: u64, ino: u64, gz: bool) -> Self {
        FileInfo {
            path,
            dev,
            ino,
            gz,
            head: Mutex::new(Vec::new()),
        }
    }

    /// Records bytes read at `offset` that fall within the fingerprint window.
    pub fn note_head(&self, offset: u64, data: &[u8]) {
        if offset as usize >= FINGERPRINT_BYTES {
            return;
        }
        if let Ok(mut h) = self.head.lock()
            && h.len() as u64 == offset
        {
            let take = (FINGERPRINT_BYTES - h.len()).min(data.len());
            h.extend_from_slice(&data[..take]);
        }
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

/// Why bytes of the log were passed over without becoming an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A line longer than `max_line_bytes`.
    Oversize,
    /// An empty or blank line: nothing to forward, but the position moves.
    Blank,
}

/// Returned by a sink when the pipeline is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// Receives what the tail reads, in file order.
pub trait LineSink {
    /// Reading begins (or resumes) at `offset` of `file`: the position to
    /// checkpoint before any line is read, so that a crash before the first
    /// ack still finds this file again after it rotates.
    fn start(&mut self, file: &Arc<FileInfo>, offset: u64) -> Result<(), Stopped>;
    /// One complete line (without its newline); `end` is the offset after it.
    fn line(&mut self, line: &[u8], file: &Arc<FileInfo>, end: u64) -> Result<(), Stopped>;
    /// Bytes skipped (e.g. an oversize line); the position moves past them.
    fn skipped(
        &mut self,
        why: Skip,
        bytes: u64,
        file: &Arc<FileInfo>,
        end: u64,
    ) -> Result<(), Stopped>;
    /// The reader caught up with the writer: a good moment to flush.
    fn idle(&mut self) -> Result<(), Stopped>;
}

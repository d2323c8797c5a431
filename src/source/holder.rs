//! Holds every file of the audit log that the tail has not read yet, by an
//! open descriptor, from the moment it is noticed (ARCHITECTURE.md
//! invariant 4), so that the writer's later steps cannot take unread bytes.
//!
//! kube-apiserver's writer, Go's lumberjack (see its `rotate` and
//! `millRunOnce`), renames `audit.log` to `audit-<UTC time>.log` and creates
//! a new `audit.log`; then, in the background, it gzips each plain backup
//! **directly** into `<backup>.gz` and removes the plain file once the copy
//! is done, and removes the oldest backups (by the time in their names)
//! beyond `MaxBackups` / `MaxAge`. A plain backup may vanish a moment after
//! the rotation that made it. So:
//! - every generation of the live file is opened as soon as it is seen
//!   (a rename, compression or deletion afterwards changes nothing for a
//!   descriptor);
//! - a rotated sibling not seen before is opened when listed; a `.gz` only
//!   once its plain origin is gone (the gzip copy is complete), and only if
//!   its decompressed leading bytes are not those of a file held, being
//!   read or read (then it is a copy);
//! - a file listed but gone before it could be opened, with no `.gz` copy,
//!   is a DATA GAP: logged with its name, size and an estimate of events,
//!   and counted (`gaps_total`, `gap_bytes_total`);
//! - holding deleted files costs disk space: `held_bytes` is bounded by
//!   `tail.max_held_bytes`; past it the oldest held file is released, with
//!   a DATA GAP report.
//!
//! A thread refreshes this every `poll_interval`, and at once when the
//! directory changes (inotify); the tail also refreshes before it takes
//! the next file.

use super::files::{self, Candidate};
use crate::ops::metrics::OutputMetrics;
use crate::record::origin::{FINGERPRINT_BYTES, FileInfo, Gap, GapLog};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, error, warn};

/// Leading bytes two files must share to be taken for the same file (a
/// renamed or compressed copy): an audit event's `auditID` ends within
/// its first ~120 bytes.
pub const MIN_SAME_HEAD: usize = 160;

/// A file held open until the tail reads it.
pub struct Held {
    /// As last listed (path, size).
    pub c: Candidate,
    pub f: File,
    /// Its first bytes (decompressed for `.gz`), up to [`FINGERPRINT_BYTES`].
    head: Vec<u8>,
}

/// What the tail reads, has read, and will read.
pub struct Holder {
    path: PathBuf,
    /// The file the tail reads (or finished last).
    reading: Option<Arc<FileInfo>>,
    /// Files the tail finished, newest last (a bounded memory of them).
    done: VecDeque<Arc<FileInfo>>,
    /// Files after `reading`, in rotation order.
    held: VecDeque<Held>,
    /// Decompressed heads of `.gz` siblings, by (dev, ino, size).
    gz_heads: HashMap<(u64, u64, u64), Vec<u8>>,
    max_held_bytes: u64,
    m: OutputMetrics,
    /// Where reported gaps go on to the outputs.
    gaps: GapLog,
}

/// Files the tail finished that are remembered (to tell copies of them).
const DONE_KEPT: usize = 64;

impl Holder {
    pub fn new(path: PathBuf, max_held_bytes: u64, m: OutputMetrics, gaps: GapLog) -> Self {
        Holder {
            path,
            reading: None,
            done: VecDeque::new(),
            held: VecDeque::new(),
            gz_heads: HashMap::new(),
            max_held_bytes,
            m,
            gaps,
        }
    }

    /// Starts the refresh thread: every `every`, and when `wake` fires. It
    /// ends with the last other reference to `h`, or on `stop`.
    pub fn spawn(
        h: &Arc<Mutex<Holder>>,
        every: Duration,
        wake: Receiver<()>,
        stop: Arc<AtomicBool>,
    ) {
        let weak = Arc::downgrade(h);
        let spawned = std::thread::Builder::new()
            .name("tail-holder".into())
            .spawn(move || {
                let every = every.max(Duration::from_millis(10));
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Some(h) = weak.upgrade() else { return };
                    if let Ok(mut g) = h.lock() {
                        g.refresh();
                    }
                    drop(h);
                    match wake.recv_timeout(every) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => std::thread::sleep(every),
                    }
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the rotated-file holder thread; rotated files are opened when the tail looks for them");
        }
    }

    /// The tail now reads `info` (taken from the held files, or opened).
    pub fn reading(&mut self, info: Arc<FileInfo>) {
        self.reading = Some(info);
    }

    /// The tail read `info` to its end.
    pub fn finished(&mut self, info: Arc<FileInfo>) {
        self.done.push_back(info);
        while self.done.len() > DONE_KEPT {
            self.done.pop_front();
        }
    }

    /// The next held file, in rotation order. It counts as being read from
    /// now on (a refresh before the tail calls [`Holder::reading`] must not
    /// hold it again).
    pub fn take(&mut self) -> Option<(Candidate, File)> {
        let h = self.held.pop_front()?;
        let info = FileInfo::new(h.c.path.clone(), h.c.dev, h.c.ino, h.c.gz);
        info.note_head(0, &h.head);
        self.reading = Some(Arc::new(info));
        self.update_gauges();
        Some((h.c, h.f))
    }

    /// Whether the tail has started (something to hold files after).
    pub fn started(&self) -> bool {
        self.reading.is_some()
    }

    /// Lists the directory and holds every file newer than the newest one
    /// known (being read, read, or held).
    pub fn refresh(&mut self) {
        let Some(reading) = self.reading.clone() else {
            return;
        };
        // Reading the live file, nothing held: nothing can follow it yet.
        if self.held.is_empty()
            && !reading.gz
            && files::live_id(&self.path) == Some((reading.dev, reading.ino))
        {
            self.update_gauges();
            return;
        }
        for h in self.held.iter_mut() {
            if h.head.len() < FINGERPRINT_BYTES && !h.c.gz {
                h.head = pread_head(&h.f);
            }
        }
        let cands = files::candidates(&self.path);
        let heads: Vec<Option<Vec<u8>>> = cands.iter().map(|c| self.head_of(c)).collect();
        let known: Vec<bool> = cands
            .iter()
            .zip(&heads)
            .map(|(c, h)| self.is_known(c, h.as_deref()))
            .collect();
        // Only files after the newest known one are new; when none is
        // listed any more, every file listed is newer (lumberjack removes
        // the oldest first).
        let from = known.iter().rposition(|&k| k).map_or(0, |i| i + 1);
        for (c, head) in cands[from..].iter().zip(&heads[from..]) {
            if c.gz && head.is_none() {
                continue; // its head cannot be read yet: look again next time
            }
            self.hold(c);
        }
        self.bound();
        self.update_gauges();
    }

    /// Leading bytes of a candidate: through the open descriptor for held
    /// or read files, decompressed (and cached) for `.gz`.
    fn head_of(&mut self, c: &Candidate) -> Option<Vec<u8>> {
        if !c.gz {
            return files::read_head(&c.path, false, FINGERPRINT_BYTES).ok();
        }
        let key = (c.dev, c.ino, c.len);
        if let Some(h) = self.gz_heads.get(&key) {
            return Some(h.clone());
        }
        let h = files::read_head(&c.path, true, FINGERPRINT_BYTES).ok()?;
        if self.gz_heads.len() > 256 {
            self.gz_heads.clear();
        }
        self.gz_heads.insert(key, h.clone());
        Some(h)
    }

    /// Is `c` a file being read, read, or held (the same file, or a renamed
    /// or compressed copy of it)?
    fn is_known(&self, c: &Candidate, head: Option<&[u8]>) -> bool {
        // Held and read files are open: their inodes cannot be reused.
        let copy_of = |known: &[u8]| head.is_some_and(|h| same_head(known, h));
        if let Some(r) = &self.reading
            && ((r.dev, r.ino, r.gz) == (c.dev, c.ino, c.gz)
                || copy_of(&r.head_prefix(FINGERPRINT_BYTES)))
        {
            return true;
        }
        if self
            .held
            .iter()
            .any(|h| (h.c.dev == c.dev && h.c.ino == c.ino && h.c.gz == c.gz) || copy_of(&h.head))
        {
            return true;
        }
        // A finished file's inode may have been reused: its head decides.
        self.done
            .iter()
            .any(|d| copy_of(&d.head_prefix(FINGERPRINT_BYTES)))
    }

    /// Opens and holds `c`; when it is gone, its `.gz` copy, else a gap.
    fn hold(&mut self, c: &Candidate) {
        match File::open(&c.path) {
            Ok(f) => {
                let Ok(meta) = f.metadata() else { return };
                if meta.dev() != c.dev || meta.ino() != c.ino {
                    return; // replaced since listed: next time
                }
                let head = if c.gz {
                    self.head_of(c).unwrap_or_default()
                } else {
                    pread_head(&f)
                };
                debug!(path = %c.path.display(), "holding a file until it is read");
                self.held.push_back(Held {
                    c: c.clone(),
                    f,
                    head,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Compressed and removed since listed: hold the copy.
                if !c.gz {
                    let gz = PathBuf::from(format!("{}.gz", c.path.display()));
                    if let Some(g) = files::candidate_at(&gz, true, false) {
                        let head = self.head_of(&g);
                        if head.is_some() && !self.is_known(&g, head.as_deref()) {
                            self.hold(&g);
                        }
                        return;
                    }
                }
                self.gap(&c.path, c.len, "deleted before it could be opened");
            }
            Err(e) => {
                self.m.read_errors.inc();
                warn!(path = %c.path.display(), error = %e, "cannot open a rotated file to hold it; retrying");
            }
        }
    }

    /// Past `max_held_bytes` of deleted held files, releases the oldest.
    fn bound(&mut self) {
        while self.deleted_bytes() > self.max_held_bytes && self.held.len() > 1 {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            let size = h.f.metadata().map(|m| m.len()).unwrap_or(h.c.len);
            self.gap(
                &h.c.path,
                size,
                "released unread: held deleted files exceeded tail.max_held_bytes",
            );
        }
    }

    fn deleted_bytes(&self) -> u64 {
        self.held
            .iter()
            .filter_map(|h| h.f.metadata().ok())
            .filter(|m| m.nlink() == 0)
            .map(|m| m.len())
            .sum()
    }

    fn update_gauges(&self) {
        self.m.held_files.set(self.held.len() as i64);
        self.m.held_bytes.set(self.deleted_bytes() as i64);
    }

    /// Reports `bytes` of `path` lost: logged once and counted.
    fn gap(&self, path: &Path, bytes: u64, why: &str) {
        report_gap(&self.m, &self.gaps, path, 0, bytes, why);
    }
}

/// A DATA GAP: `bytes` of `path` (0: unknown) from `offset` on will not be
/// forwarded. Logged with an estimate of the events (from the average line
/// read so far), counted in `gaps_total` and `gap_bytes_total`, and handed
/// on through `gaps` (the Forward output sends it to the receiver).
pub fn report_gap(
    m: &OutputMetrics,
    gaps: &GapLog,
    path: &Path,
    offset: u64,
    bytes: u64,
    why: &str,
) {
    gaps.push(Gap {
        path: path.display().to_string(),
        offset,
        bytes,
        why: why.to_string(),
    });
    m.gaps.inc();
    m.gap_bytes.inc_by(bytes);
    let (read, lines) = (m.bytes_read.get(), m.lines_read.get());
    let events = if lines > 0 && read > 0 {
        bytes.div_ceil((read / lines).max(1))
    } else {
        0
    };
    error!(
        path = %path.display(),
        offset,
        unread_bytes = bytes,
        estimated_events = events,
        "DATA GAP: {why}; its unread events will not be forwarded"
    );
}

/// Up to [`FINGERPRINT_BYTES`] leading bytes through the descriptor.
fn pread_head(f: &File) -> Vec<u8> {
    let mut h = vec![0; FINGERPRINT_BYTES];
    let n = f.read_at(&mut h, 0).unwrap_or(0);
    h.truncate(n);
    h
}

/// Two heads of the same file: equal over their common length, which is at
/// least [`MIN_SAME_HEAD`] bytes.
pub fn same_head(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    n >= MIN_SAME_HEAD && a[..n] == b[..n]
}

//! Follows the audit log: reads big blocks, splits lines with memchr, follows
//! rotation by file identity (device, inode and leading bytes), detects
//! truncation, and resumes from a checkpoint after a restart.

use super::checkpoint::{self, Checkpoint, Resume};
use super::files::{self, Candidate};
use super::holder::{self, Holder};
use super::{LineSink, Skip, Stopped};
use crate::ops::logging::RateLimit;
use crate::ops::metrics::OutputMetrics;
use crate::record::origin::{FINGERPRINT_BYTES, FileInfo, GapLog};
use notify::Watcher;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

/// Where a first start (no checkpoint) begins in the live file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The live file from its first byte.
    Beginning,
    /// The live file from its current end.
    End,
    /// Every rotated sibling still on disk, oldest first, then the live file.
    Oldest,
}

#[derive(Debug, Clone)]
pub struct TailConfig {
    pub path: PathBuf,
    pub read_buffer: usize,
    pub max_line_bytes: usize,
    pub poll_interval: Duration,
    pub start_at: StartAt,
    /// Stop at the end of the current file set instead of following it.
    pub oneshot: bool,
    /// Bound on the bytes of deleted files held open until read.
    pub max_held_bytes: u64,
}

/// How the tail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailEnd {
    /// `oneshot`: everything present was read.
    Caught,
    /// Asked to stop.
    Stopped,
}

/// Wakes the tail early (file events, shutdown).
#[derive(Clone, Debug)]
pub struct Waker(SyncSender<()>);

impl Waker {
    pub fn wake(&self) {
        let _ = self.0.try_send(());
    }
}

enum Reader {
    Plain(File),
    Gz(Box<flate2::read::MultiGzDecoder<File>>),
}

impl Reader {
    /// Bytes of the file after `offset`, if known (not for gzip streams).
    fn remaining(&self, offset: u64) -> Option<u64> {
        match self {
            Reader::Plain(f) => f.metadata().ok().map(|m| m.len().saturating_sub(offset)),
            Reader::Gz(_) => None,
        }
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Reader::Plain(f) => f.read(buf),
            Reader::Gz(g) => g.read(buf),
        }
    }
}

struct Open {
    rd: Reader,
    info: Arc<FileInfo>,
    /// Offset of the next byte `rd` returns.
    read_off: u64,
    /// Still the file at the configured path (may grow).
    live: bool,
}

/// The tail reader. Runs on its own thread; blocks in the sink when the
/// pipeline applies back-pressure.
pub struct Tail {
    cfg: TailConfig,
    m: OutputMetrics,
    stop: Arc<AtomicBool>,
    wake_rx: Receiver<()>,
    wake_tx: SyncSender<()>,
    _watcher: Option<notify::RecommendedWatcher>,
    cur: Option<Open>,
    /// The files after the one being read, held open as soon as they are
    /// seen ([`holder`]; ARCHITECTURE.md invariant 4).
    holder: Arc<Mutex<Holder>>,
    /// Gaps reported by the tail and the holder, handed to the sink.
    gaps: GapLog,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    scan: usize,
    /// File offset of `buf[0]`.
    buf_off: u64,
    /// Bytes of an oversize line discarded so far.
    skipping: Option<u64>,
    /// Reads since the buffer last grew for a long line.
    reads_since_grow: u32,
    warn_open: RateLimit,
    warn_read: RateLimit,
    warn_oversize: RateLimit,
}

/// A buffer grown for a long line is shrunk back after this many reads
/// without another long line,
const KEEP_GROWN_READS: u32 = 64;
/// or at once if it is more than this many read buffers.
const KEEP_GROWN_MAX: usize = 8;

impl Tail {
    pub fn new(cfg: TailConfig, m: OutputMetrics, stop: Arc<AtomicBool>) -> Self {
        let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel(1);
        let (hold_tx, hold_rx) = std::sync::mpsc::sync_channel(1);
        let watcher = watch(&cfg.path, vec![wake_tx.clone(), hold_tx]);
        let gaps = GapLog::default();
        let holder = Arc::new(Mutex::new(Holder::new(
            cfg.path.clone(),
            cfg.max_held_bytes,
            m.clone(),
            gaps.clone(),
        )));
        Holder::spawn(&holder, cfg.poll_interval, hold_rx, stop.clone());
        let size = cfg.read_buffer.max(4096);
        Tail {
            cfg,
            m,
            stop,
            wake_rx,
            wake_tx,
            _watcher: watcher,
            cur: None,
            holder,
            gaps,
            buf: vec![0; size],
            start: 0,
            end: 0,
            scan: 0,
            buf_off: 0,
            skipping: None,
            reads_since_grow: 0,
            warn_open: RateLimit::default(),
            warn_read: RateLimit::default(),
            warn_oversize: RateLimit::default(),
        }
    }

    pub fn waker(&self) -> Waker {
        Waker(self.wake_tx.clone())
    }

    fn wait(&self) {
        let _ = self.wake_rx.recv_timeout(self.cfg.poll_interval);
    }

    /// Reads until stopped (or, with `oneshot`, until caught up).
    pub fn run(
        &mut self,
        resume: Option<Checkpoint>,
        sink: &mut dyn LineSink,
    ) -> Result<TailEnd, Stopped> {
        // The starting point stays pending until it could be opened: a failed
        // open must not fall through to "the next file" and skip data.
        let mut pending = Some(resume);
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(TailEnd::Stopped);
            }
            if let Some(r) = pending.take() {
                if !self.begin(r.clone()) {
                    pending = Some(r);
                    self.pass_gaps(sink)?;
                    sink.idle()?;
                    self.wait();
                    continue;
                }
                if let Some(c) = &self.cur {
                    sink.start(&c.info, c.read_off)?;
                    self.pass_gaps(sink)?;
                }
            }
            if self.cur.is_none() {
                if !self.open_next() {
                    if self.cfg.oneshot {
                        return Ok(TailEnd::Caught);
                    }
                    self.pass_gaps(sink)?;
                    sink.idle()?;
                    self.wait();
                    continue;
                }
                // The new file's start is a position to checkpoint once
                // everything before it is acknowledged.
                if let Some(c) = &self.cur {
                    sink.start(&c.info, c.read_off)?;
                    self.pass_gaps(sink)?;
                }
            }
            match self.read_block() {
                Ok(0) => {
                    if self.at_eof(sink)? {
                        return Ok(TailEnd::Caught);
                    }
                }
                Ok(_) => self.split_lines(sink)?,
                Err(e) if self.cur.as_ref().is_some_and(|c| c.info.gz) && corrupt(&e) => {
                    // A listed `.gz` is complete (its plain origin is gone):
                    // this one is damaged. What it still held is lost.
                    self.m.read_errors.inc();
                    if let Some(c) = &self.cur {
                        holder::report_gap(
                            &self.m,
                            &self.gaps,
                            &c.info.path,
                            c.read_off,
                            0,
                            &format!(
                                "compressed file is corrupt after {} bytes ({e})",
                                c.read_off
                            ),
                        );
                    }
                    self.finish_file(sink)?;
                }
                Err(e) => {
                    self.m.read_errors.inc();
                    if let Some(n) = self.warn_read.allow() {
                        warn!(error = %e, suppressed = n, "reading the audit log failed; retrying");
                    }
                    self.pass_gaps(sink)?;
                    sink.idle()?;
                    self.wait();
                }
            }
        }
    }

    /// Chooses and opens the first file to read. False when that file could
    /// not be opened (retried later).
    fn begin(&mut self, resume: Option<Checkpoint>) -> bool {
        let cands = files::candidates(&self.cfg.path);
        match resume {
            Some(cp) => match checkpoint::resolve(&cp, &cands) {
                Resume::Found { candidate, offset } => {
                    let offset = if !candidate.gz && offset > candidate.len {
                        self.m.truncations.inc();
                        warn!(path = %candidate.path.display(), offset, len = candidate.len,
                            "checkpointed file is shorter than the checkpoint; reading it from the start");
                        0
                    } else {
                        offset
                    };
                    info!(path = %candidate.path.display(), offset, "resuming from checkpoint");
                    self.open(&candidate, offset)
                }
                Resume::Rewritten { candidate } => {
                    self.m.truncations.inc();
                    warn!(path = %candidate.path.display(), offset = cp.offset,
                        "audit log was truncated and rewritten in place (copytruncate) while the forwarder was down; \
                         reading it from the start (events written before the truncation and not yet forwarded are lost)");
                    self.open(&candidate, 0)
                }
                Resume::Gap { next } => {
                    if cp.complete {
                        info!(path = %cp.file.path.display(), offset = cp.offset,
                            "the checkpointed file was read to its end before it was deleted; continuing with the files after it");
                    } else {
                        holder::report_gap(
                            &self.m,
                            &self.gaps,
                            &cp.file.path,
                            cp.offset,
                            0,
                            &format!(
                                "the checkpointed file no longer exists (rotated away and deleted while the \
                             forwarder was down); what it held after offset {} (size unknown) is lost",
                                cp.offset
                            ),
                        );
                    }
                    match next {
                        Some(c) => self.open(&c, 0),
                        None => true,
                    }
                }
            },
            None => {
                let first = match self.cfg.start_at {
                    StartAt::Oldest => cands.first().map(|c| (c, 0)),
                    StartAt::Beginning => cands.iter().find(|c| c.live).map(|c| (c, 0)),
                    StartAt::End => cands.iter().find(|c| c.live).map(|c| (c, c.len)),
                };
                match first {
                    Some((c, off)) => self.open(c, off),
                    None => true,
                }
            }
        }
    }

    /// Opens the file that follows the one read last: the next held file
    /// (after a fresh look at the directory). Before anything was opened
    /// (no file existed when reading began), every file there now was
    /// written since: the oldest.
    fn open_next(&mut self) -> bool {
        let (started, next) = match self.holder.lock() {
            Ok(mut h) if h.started() => {
                h.refresh();
                (true, h.take())
            }
            _ => (false, None),
        };
        if let Some((c, f)) = next {
            return self.open_file(&c, Ok(f), 0);
        }
        if started {
            return false;
        }
        let cands = files::candidates(&self.cfg.path);
        if cands.is_empty()
            && let Some(n) = self.warn_open.allow()
        {
            match std::fs::metadata(&self.cfg.path) {
                Ok(_) => warn!(path = %self.cfg.path.display(), suppressed = n,
                    "audit log path is not a regular file (directory or FIFO?); waiting for a regular file"),
                Err(e) => {
                    warn!(path = %self.cfg.path.display(), error = %e, suppressed = n,
                    "audit log not found; waiting for it")
                }
            }
        }
        match cands.first() {
            Some(c) => self.open(c, 0),
            None => false,
        }
    }

    fn open(&mut self, c: &Candidate, offset: u64) -> bool {
        self.open_file(c, File::open(&c.path), offset)
    }

    fn open_file(&mut self, c: &Candidate, f: std::io::Result<File>, offset: u64) -> bool {
        let r = (|| -> std::io::Result<Open> {
            let mut f = f?;
            let meta = f.metadata()?;
            if meta.dev() != c.dev || meta.ino() != c.ino {
                // Rotated between listing and opening: list again.
                return Err(std::io::Error::other("file replaced while opening it"));
            }
            let info = Arc::new(FileInfo::new(c.path.clone(), meta.dev(), meta.ino(), c.gz));
            // Read the head now, so fingerprints cover bytes before `offset`
            // and copies of this file are recognised before it is read
            // (through this descriptor, so it is this file's head).
            if offset > 0 || !c.gz {
                let n = if c.gz {
                    FINGERPRINT_BYTES.min(offset as usize)
                } else {
                    FINGERPRINT_BYTES
                };
                let head = if c.gz {
                    // Through the descriptor (the path may be gone), without
                    // moving its offset.
                    let mut h = Vec::with_capacity(n);
                    flate2::read::MultiGzDecoder::new(PRead { f: &f, pos: 0 })
                        .take(n as u64)
                        .read_to_end(&mut h)?;
                    h
                } else {
                    let mut h = vec![0; n];
                    let got = std::os::unix::fs::FileExt::read_at(&f, &mut h, 0)?;
                    h.truncate(got);
                    h
                };
                info.note_head(0, &head);
            }
            let rd = if c.gz {
                let mut g = flate2::read::MultiGzDecoder::new(f);
                std::io::copy(&mut (&mut g).take(offset), &mut std::io::sink())?;
                Reader::Gz(Box::new(g))
            } else {
                f.seek(SeekFrom::Start(offset))?;
                Reader::Plain(f)
            };
            Ok(Open {
                rd,
                info,
                read_off: offset,
                live: c.live,
            })
        })();
        match r {
            Ok(o) => {
                debug!(path = %c.path.display(), offset, "opened");
                if let Ok(mut h) = self.holder.lock() {
                    h.reading(o.info.clone());
                }
                self.cur = Some(o);
                self.start = 0;
                self.end = 0;
                self.scan = 0;
                self.buf_off = offset;
                self.skipping = None;
                true
            }
            Err(e) => {
                self.m.read_errors.inc();
                if let Some(n) = self.warn_open.allow() {
                    warn!(path = %c.path.display(), error = %e, suppressed = n, "cannot open audit log file; retrying");
                }
                false
            }
        }
    }

    fn read_block(&mut self) -> std::io::Result<usize> {
        let Some(cur) = self.cur.as_mut() else {
            return Ok(0);
        };
        let base = self.cfg.read_buffer.max(4096);
        self.reads_since_grow = self.reads_since_grow.saturating_add(1);
        if self.buf.len() > base
            && self.end - self.start <= base / 2
            && (self.reads_since_grow > KEEP_GROWN_READS || self.buf.len() > KEEP_GROWN_MAX * base)
        {
            // Give back the memory a long line needed, keeping the partial
            // line that follows it (data keeps coming, so the buffer is
            // rarely empty). A moderately grown buffer is kept while long
            // lines keep coming: growing it again costs a zero-fill.
            let mut b = vec![0; base];
            b[..self.end - self.start].copy_from_slice(&self.buf[self.start..self.end]);
            self.buf = b;
            self.buf_off += self.start as u64;
            self.end -= self.start;
            self.scan -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.buf_off += self.start as u64;
                self.end -= self.start;
                self.scan -= self.start;
                self.start = 0;
            } else {
                // One partial line fills the buffer: grow it (a longer line
                // than max_line_bytes is discarded by split_lines first).
                // By one read buffer at a time: the Vec's capacity still
                // grows geometrically, but only what is read gets touched,
                // so a 50 MB line costs 50 MB, not the next power of two.
                // No bigger than what the file holds: the new part is
                // zero-filled, so what is not read would cost memory too.
                let step = match cur.rd.remaining(cur.read_off) {
                    Some(r) if r > 0 => (r as usize).min(base),
                    _ => base,
                };
                let target = (self.buf.len() + step)
                    .min(self.cfg.max_line_bytes.saturating_add(2))
                    .max(self.buf.len() + 4096);
                self.buf.resize(target, 0);
                self.reads_since_grow = 0;
            }
        }
        let n = cur.rd.read(&mut self.buf[self.end..])?;
        if n > 0 {
            cur.info
                .note_head(cur.read_off, &self.buf[self.end..self.end + n]);
            cur.read_off += n as u64;
            self.end += n;
            self.m.bytes_read.inc_by(n as u64);
        }
        Ok(n)
    }

    fn split_lines(&mut self, sink: &mut dyn LineSink) -> Result<(), Stopped> {
        let Some(info) = self.cur.as_ref().map(|c| c.info.clone()) else {
            return Ok(());
        };
        while let Some(k) = memchr::memchr(b'\n', &self.buf[self.scan..self.end]) {
            let nl = self.scan + k;
            let end_off = self.buf_off + nl as u64 + 1;
            if let Some(skipped) = self.skipping.take() {
                let total = skipped + (nl + 1 - self.start) as u64;
                self.oversize(sink, total, &info, end_off)?;
            } else {
                let mut line = &self.buf[self.start..nl];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                if line.len() > self.cfg.max_line_bytes {
                    self.oversize(sink, line.len() as u64 + 1, &info, end_off)?;
                } else if !line.iter().all(u8::is_ascii_whitespace) {
                    self.m.lines_read.inc();
                    sink.line(line, &info, end_off)?;
                } else {
                    sink.skipped(Skip::Blank, line.len() as u64 + 1, &info, end_off)?;
                }
            }
            self.start = nl + 1;
            self.scan = self.start;
        }
        self.scan = self.end;
        // A partial line longer than the limit: discard it as it arrives.
        // (+1: a line of exactly the limit may still end in "\r\n".)
        let partial = (self.end - self.start) as u64;
        if partial > self.cfg.max_line_bytes as u64 + 1 || (self.skipping.is_some() && partial > 0)
        {
            self.skipping = Some(self.skipping.unwrap_or(0) + partial);
            self.buf_off += self.end as u64;
            self.start = 0;
            self.end = 0;
            self.scan = 0;
        }
        Ok(())
    }

    fn oversize(
        &mut self,
        sink: &mut dyn LineSink,
        bytes: u64,
        info: &Arc<FileInfo>,
        end: u64,
    ) -> Result<(), Stopped> {
        self.m.lines_read.inc();
        if let Some(n) = self.warn_oversize.allow() {
            warn!(path = %info.path.display(), bytes, limit = self.cfg.max_line_bytes, end_offset = end, suppressed = n,
                "skipping a line longer than max_line_bytes");
        }
        sink.skipped(Skip::Oversize, bytes, info, end)
    }

    /// End of data for now. Returns true when a oneshot run is complete.
    /// Hands the gaps reported since the last call to the sink.
    fn pass_gaps(&self, sink: &mut dyn LineSink) -> Result<(), Stopped> {
        for g in self.gaps.take() {
            sink.gap(&g)?;
        }
        Ok(())
    }

    fn at_eof(&mut self, sink: &mut dyn LineSink) -> Result<bool, Stopped> {
        let Some(cur) = self.cur.as_mut() else {
            return Ok(false);
        };
        if cur.live {
            match std::fs::metadata(&self.cfg.path) {
                Ok(m) if m.dev() == cur.info.dev && m.ino() == cur.info.ino => {
                    if m.len() < cur.read_off || self.head_changed() {
                        self.truncated();
                        return Ok(false);
                    }
                    self.pass_gaps(sink)?;
                    sink.idle()?;
                    if self.cfg.oneshot {
                        if self.end > self.start || self.skipping.is_some() {
                            warn!(
                                bytes = self.end - self.start,
                                "oneshot: the last line has no newline yet; it was not forwarded"
                            );
                        }
                        return Ok(true);
                    }
                    self.wait();
                    Ok(false)
                }
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    // Not a rotation (EACCES, ESTALE, EIO...): keep the file.
                    self.m.read_errors.inc();
                    if let Some(n) = self.warn_read.allow() {
                        warn!(path = %self.cfg.path.display(), error = %e, suppressed = n,
                            "cannot stat the audit log; keeping the open file and retrying");
                    }
                    self.pass_gaps(sink)?;
                    sink.idle()?;
                    self.wait();
                    Ok(false)
                }
                _ => {
                    // Renamed, replaced or deleted: drain what is left from the
                    // open descriptor, then move on.
                    debug!(path = %cur.info.path.display(), "live file rotated");
                    self.m.rotations.inc();
                    cur.live = false;
                    Ok(false)
                }
            }
        } else {
            self.finish_file(sink)?;
            Ok(false)
        }
    }

    /// Did the first bytes of the open (plain) file change? Truncation that
    /// was followed by more writes than we had read is caught this way.
    fn head_changed(&self) -> bool {
        let Some(cur) = self.cur.as_ref() else {
            return false;
        };
        let Reader::Plain(f) = &cur.rd else {
            return false;
        };
        let known = cur.info.head_prefix(64);
        if known.is_empty() {
            return false;
        }
        let mut now = vec![0; known.len()];
        match std::os::unix::fs::FileExt::read_at(f, &mut now, 0) {
            Ok(n) => now[..n] != known[..n.min(known.len())] || n < known.len(),
            Err(_) => false,
        }
    }

    fn truncated(&mut self) {
        let Some(cur) = self.cur.as_mut() else { return };
        self.m.truncations.inc();
        warn!(path = %self.cfg.path.display(), offset = cur.read_off,
            "audit log was truncated in place (copytruncate); reading it from the start");
        let path = cur.info.path.clone();
        let (dev, ino) = (cur.info.dev, cur.info.ino);
        if let Reader::Plain(f) = &mut cur.rd {
            let _ = f.seek(SeekFrom::Start(0));
        }
        cur.info = Arc::new(FileInfo::new(path, dev, ino, false));
        cur.read_off = 0;
        self.start = 0;
        self.end = 0;
        self.scan = 0;
        self.buf_off = 0;
        self.skipping = None;
    }

    /// A rotated file was read to its end: an unterminated last line is final
    /// now and is passed on (the sink decides whether it is valid).
    fn finish_file(&mut self, sink: &mut dyn LineSink) -> Result<(), Stopped> {
        let Some(cur) = self.cur.take() else {
            return Ok(());
        };
        let end_off = self.buf_off + self.end as u64;
        if let Some(skipped) = self.skipping.take() {
            let total = skipped + (self.end - self.start) as u64;
            self.oversize(sink, total, &cur.info, end_off)?;
        } else if self.end > self.start {
            let line = &self.buf[self.start..self.end];
            if !line.iter().all(u8::is_ascii_whitespace) {
                warn!(path = %cur.info.path.display(), "rotated file ended without a final newline");
                self.m.lines_read.inc();
                sink.line(line, &cur.info, end_off)?;
            }
        }
        self.start = 0;
        self.end = 0;
        self.scan = 0;
        cur.info.set_final_len(end_off);
        debug!(path = %cur.info.path.display(), bytes = cur.read_off, "finished file");
        if let Ok(mut h) = self.holder.lock() {
            h.finished(cur.info.clone());
        }
        Ok(())
    }
}

/// Reads a file through `pread`, leaving the descriptor's offset alone.
struct PRead<'a> {
    f: &'a File,
    pos: u64,
}

impl Read for PRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(self.f, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A read error that means a gzip stream is damaged (not a passing I/O
/// error).
fn corrupt(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::InvalidInput
    )
}

/// inotify (or the platform's equivalent) on the log's directory; `None` and
/// a warning where it is unavailable, in which case polling alone is used.
fn watch(path: &std::path::Path, txs: Vec<SyncSender<()>>) -> Option<notify::RecommendedWatcher> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let r = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if super::files::is_change(&res) {
            for tx in &txs {
                let _ = tx.try_send(());
            }
        }
    })
    .and_then(|mut w| w.watch(dir, notify::RecursiveMode::NonRecursive).map(|_| w));
    match r {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "file notifications unavailable; polling only");
            None
        }
    }
}

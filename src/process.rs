//! The per-output processing stage, run on the tail's thread for each line:
//! decode + encode (one pass) → decision → batch → hand sealed chunks to the
//! connection task, blocking when it is full (back-pressure: the file is the
//! buffer).

use crate::config::OnInvalid;
use crate::filter::apply::{self, Outcome};
use crate::filter::policy::Policy;
use crate::forward::batch::{Batcher, Chunk};
use crate::forward::encode::Transcoder;
use crate::forward::protocol::{EventTime, write_str};
use crate::logging::RateLimit;
use crate::metrics::OutputMetrics;
use crate::source::{FileInfo, LineSink, Skip, Stopped};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::warn;

pub struct Processor {
    transcoder: Transcoder,
    rec: Vec<u8>,
    rewritten: Vec<u8>,
    policy: Option<Policy>,
    batcher: Batcher,
    tx: mpsc::Sender<Chunk>,
    on_invalid: OnInvalid,
    m: OutputMetrics,
    warn_invalid: RateLimit,
    warn_big: RateLimit,
    max_record: usize,
}

impl Processor {
    pub fn new(
        batcher: Batcher,
        policy: Option<Policy>,
        tx: mpsc::Sender<Chunk>,
        on_invalid: OnInvalid,
        m: OutputMetrics,
    ) -> Self {
        Processor {
            transcoder: Transcoder::default(),
            rec: Vec::with_capacity(16 * 1024),
            rewritten: Vec::with_capacity(16 * 1024),
            policy,
            batcher,
            tx,
            on_invalid,
            m,
            warn_invalid: RateLimit::default(),
            warn_big: RateLimit::default(),
            max_record: usize::MAX,
        }
    }

    /// Events whose encoded record is larger are dropped as oversize.
    pub fn with_max_record(mut self, bytes: usize) -> Self {
        self.max_record = bytes;
        self
    }

    fn flush(&mut self) -> Result<(), Stopped> {
        seal(&mut self.batcher, &self.tx, &self.m)
    }

    fn maybe_flush(&mut self) -> Result<(), Stopped> {
        if self.batcher.should_flush() {
            self.flush()
        } else {
            Ok(())
        }
    }
}

/// Seals the current batch and hands it to the connection task, blocking
/// while its queue is full.
fn seal(batcher: &mut Batcher, tx: &mpsc::Sender<Chunk>, m: &OutputMetrics) -> Result<(), Stopped> {
    if let Some(c) = batcher.take() {
        m.add_buffered(c.payload.len() as i64);
        tx.blocking_send(c).map_err(|_| Stopped)?;
    }
    Ok(())
}

impl LineSink for Processor {
    fn start(&mut self, file: &Arc<FileInfo>, offset: u64) -> Result<(), Stopped> {
        self.batcher.advance(file, offset);
        self.flush()
    }

    fn line(&mut self, line: &[u8], file: &Arc<FileInfo>, end: u64) -> Result<(), Stopped> {
        self.rec.clear();
        match self.transcoder.encode(line, &mut self.rec) {
            Ok(fields) => {
                let t = fields
                    .stage_timestamp
                    .as_deref()
                    .and_then(EventTime::parse_rfc3339)
                    .unwrap_or_else(EventTime::now);
                let outcome = match &self.policy {
                    Some(p) => apply::apply(
                        p,
                        &fields,
                        &self.transcoder.top,
                        &self.rec,
                        &mut self.rewritten,
                    ),
                    None => Outcome::Keep,
                };
                let record = match outcome {
                    Outcome::Drop => {
                        self.m.dropped("policy", 1);
                        self.batcher.advance(file, end);
                        return self.maybe_flush();
                    }
                    Outcome::Keep => &self.rec,
                    Outcome::Rewritten => &self.rewritten,
                };
                if record.len() > self.max_record {
                    self.m.dropped("oversize", 1);
                    if let Some(n) = self.warn_big.allow() {
                        warn!(path = %file.path.display(), end_offset = end, bytes = record.len(), limit = self.max_record,
                            suppressed = n, "dropping an event whose encoded size exceeds max_record_bytes");
                    }
                    self.batcher.advance(file, end);
                    return self.maybe_flush();
                }
                if self.batcher.would_overflow(record.len()) {
                    seal(&mut self.batcher, &self.tx, &self.m)?;
                }
                self.batcher.push(t, record);
            }
            Err(e) => {
                let reason = e.reason();
                self.m.invalid_line(reason);
                if let Some(n) = self.warn_invalid.allow() {
                    // Never the line itself: audit events carry secrets.
                    warn!(path = %file.path.display(), end_offset = end, bytes = line.len(), error = %e,
                        action = ?self.on_invalid, suppressed = n, "invalid audit log line");
                }
                match self.on_invalid {
                    OnInvalid::Drop => self.m.dropped(reason, 1),
                    OnInvalid::ForwardRaw => {
                        // {"log": <line, lossy UTF-8>, "error": <reason>}
                        self.rec.clear();
                        self.rec.push(0x82);
                        write_str(&mut self.rec, b"log");
                        let text = String::from_utf8_lossy(line);
                        // Keep the raw record under the size limit (U+FFFD
                        // triples invalid bytes).
                        let mut cut = text.len().min(self.max_record.saturating_sub(1024));
                        while !text.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        write_str(&mut self.rec, &text.as_bytes()[..cut]);
                        write_str(&mut self.rec, b"error");
                        write_str(&mut self.rec, e.to_string().as_bytes());
                        if self.batcher.would_overflow(self.rec.len()) {
                            self.flush()?;
                        }
                        self.batcher.push(EventTime::now(), &self.rec);
                    }
                }
            }
        }
        self.batcher.advance(file, end);
        self.maybe_flush()
    }

    fn skipped(
        &mut self,
        why: Skip,
        _bytes: u64,
        file: &Arc<FileInfo>,
        end: u64,
    ) -> Result<(), Stopped> {
        match why {
            Skip::Oversize => self.m.dropped("oversize", 1),
            Skip::Blank => {}
        }
        self.batcher.advance(file, end);
        self.maybe_flush()
    }

    fn idle(&mut self) -> Result<(), Stopped> {
        if self.batcher.is_dirty() {
            self.flush()?;
        }
        Ok(())
    }
}

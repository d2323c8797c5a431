//! The per-output processing stage, run on the tail's thread for each line:
//! decode + encode (one pass) → decision → batch → hand sealed chunks to the
//! connection task, blocking when it is full (back-pressure: the file is the
//! buffer).

use crate::config::OnInvalid;
use crate::filter::apply::{self, Outcome};
use crate::filter::chain::Chain;
use crate::filter::item::{Item, Pool, Positions};
use crate::filter::policy::Policy;
use crate::forward::batch::{Batcher, Chunk};
use crate::ops::logging::RateLimit;
use crate::ops::metrics::OutputMetrics;
use crate::record::buf::fresh_capacity;
use crate::record::encode::Transcoder;
use crate::record::json::record_json;
use crate::record::origin::FileInfo;
use crate::record::time::EventTime;
use crate::record::write::write_str;
use crate::source::{LineSink, Skip, Stopped};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::warn;

pub struct Processor {
    transcoder: Transcoder,
    rec: Vec<u8>,
    rewritten: Vec<u8>,
    /// Where `rewritten`'s top-level entries start, then its end.
    rewritten_top: Vec<u32>,
    policy: Option<Policy>,
    batcher: Batcher,
    tx: mpsc::Sender<Chunk>,
    on_invalid: OnInvalid,
    m: OutputMetrics,
    warn_invalid: RateLimit,
    warn_big: RateLimit,
    max_record: usize,
    /// DATA GAPs waiting to be sent to the receiver.
    gaps: Vec<crate::record::origin::Gap>,
    filters: Option<Filters>,
    /// Why the output must stop (a filter with `on_error = "stop"` failed).
    pub fatal: Option<String>,
}

/// Events waiting for the WASM filter chain, in file order. Positions
/// advance only after the batch ran, so a crash never commits an event
/// that was not forwarded.
struct Filters {
    chain: Chain,
    queue: Vec<Queued>,
    items: Vec<Item>,
    /// Buffers of emitted items, reused for the next batch.
    pool: Pool,
    bytes: usize,
    batch: usize,
}

enum Queued {
    /// The next entry of `items`.
    Event {
        time: EventTime,
        file: Arc<FileInfo>,
        end: u64,
    },
    /// Dropped by the policy: only the position moves.
    Skip { file: Arc<FileInfo>, end: u64 },
}

/// Records at least this big get a batch of their own without a copy.
const BIG_RECORD: usize = 1 << 20;

/// A filter batch also closes at this many bytes of events.
const FILTER_BATCH_BYTES: usize = 256 << 10;

/// Per-event buffers grown past this by a big event are freed, not kept:
/// memory between big events stays what normal events need.
const KEEP_BUFFER_MAX: usize = 1 << 20;

/// Frees `v` if a big event grew it past [`KEEP_BUFFER_MAX`].
fn free_if_big(v: &mut Vec<u8>) {
    if v.capacity() > KEEP_BUFFER_MAX {
        *v = Vec::new();
    }
}

/// Room for `n` bytes in the empty buffer `v`: from the filter pool when
/// there is one (its buffers come back there), else [`crate::record::buf::fresh_capacity`].
fn room(pool: Option<&mut Pool>, v: &mut Vec<u8>, n: usize) {
    match pool {
        Some(p) => p.fit(v, n),
        None => fresh_capacity(v, n),
    }
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
            rewritten_top: Vec::new(),
            policy,
            batcher,
            tx,
            on_invalid,
            m,
            warn_invalid: RateLimit::default(),
            warn_big: RateLimit::default(),
            max_record: usize::MAX,
            gaps: Vec::new(),
            filters: None,
            fatal: None,
        }
    }

    /// Runs `chain` on batches of `batch` events after the policy.
    pub fn with_filters(mut self, chain: Chain, batch: usize) -> Self {
        if !chain.is_empty() {
            self.transcoder.track_keys = true;
            self.filters = Some(Filters {
                chain,
                queue: Vec::new(),
                items: Vec::with_capacity(batch),
                pool: Pool::default(),
                bytes: 0,
                batch: batch.max(1),
            });
        }
        self
    }

    /// Runs the queued events through the filter chain and emits them.
    fn run_filters(&mut self) -> Result<(), Stopped> {
        let Some(fq) = self.filters.as_mut() else {
            return Ok(());
        };
        if fq.queue.is_empty() {
            return Ok(());
        }
        fq.chain.maybe_reload();
        if let Err(msg) = fq.chain.run(&mut fq.items) {
            self.fatal = Some(msg.to_string());
            return Err(Stopped);
        }
        let queue = std::mem::take(&mut fq.queue);
        let items = std::mem::take(&mut fq.items);
        fq.bytes = 0;
        let mut items = items.into_iter();
        for q in queue {
            match q {
                Queued::Skip { file, end } => {
                    self.batcher.advance(&file, end);
                    self.maybe_flush()?;
                }
                Queued::Event { time, file, end } => match items.next() {
                    Some(mut it) => {
                        if it.dropped {
                            self.batcher.advance(&file, end);
                            self.maybe_flush()?;
                        } else if it.rec.len() >= BIG_RECORD && it.rec.len() <= self.max_record {
                            let rec = std::mem::take(&mut it.rec);
                            self.emit_owned(time, rec, &file, end)?;
                        } else {
                            self.emit(time, &it.rec, &file, end)?;
                        }
                        if let Some(fq) = self.filters.as_mut() {
                            fq.pool.recycle(it);
                        }
                    }
                    None => {
                        self.batcher.advance(&file, end);
                        self.maybe_flush()?;
                    }
                },
            }
        }
        Ok(())
    }

    /// Batches one record (dropping it if it is over `max_record`).
    fn emit(
        &mut self,
        t: EventTime,
        record: &[u8],
        file: &Arc<FileInfo>,
        end: u64,
    ) -> Result<(), Stopped> {
        if record.len() > self.max_record {
            self.m.dropped("oversize", 1);
            if let Some(n) = self.warn_big.allow() {
                warn!(path = %file.path.display(), end_offset = end, bytes = record.len(), limit = self.max_record,
                    suppressed = n, "dropping an event whose encoded size exceeds max_record_bytes");
            }
        } else {
            if self.batcher.would_overflow(record.len()) {
                seal(&mut self.batcher, &self.tx, &self.m)?;
            }
            self.batcher.push(t, record);
        }
        self.batcher.advance(file, end);
        self.maybe_flush()
    }

    /// Sends a big record in a batch of its own, built in its buffer.
    fn emit_owned(
        &mut self,
        t: EventTime,
        record: Vec<u8>,
        file: &Arc<FileInfo>,
        end: u64,
    ) -> Result<(), Stopped> {
        if self.batcher.has_events() {
            seal(&mut self.batcher, &self.tx, &self.m)?;
        }
        self.batcher.push_owned(t, record);
        self.batcher.advance(file, end);
        self.maybe_flush()
    }

    /// Events whose encoded record is larger are dropped as oversize.
    pub fn with_max_record(mut self, bytes: usize) -> Self {
        self.max_record = bytes;
        self
    }

    fn flush(&mut self) -> Result<(), Stopped> {
        seal(&mut self.batcher, &self.tx, &self.m)
    }

    /// Sends the gaps waiting as chunks of their own, after what was read
    /// before them; they wait while nothing was read yet (no position).
    fn send_gaps(&mut self) -> Result<(), Stopped> {
        if self.gaps.is_empty() {
            return Ok(());
        }
        if !self.batcher.sends_identity() {
            self.gaps.clear();
            return Ok(());
        }
        self.run_filters()?;
        self.flush()?;
        while let Some(g) = self.gaps.first() {
            let Some(c) = self.batcher.gap_chunk(g) else {
                break;
            };
            self.gaps.remove(0);
            self.m.add_buffered(c.payload.len() as i64);
            self.tx.blocking_send(c).map_err(|_| Stopped)?;
        }
        Ok(())
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
        self.run_filters()?;
        // The previous file's events go in a chunk of their own: a chunk
        // names one source file (forward::protocol::identity).
        self.flush()?;
        self.batcher.advance(file, offset);
        self.flush()?;
        self.send_gaps()
    }

    fn line(&mut self, line: &[u8], file: &Arc<FileInfo>, end: u64) -> Result<(), Stopped> {
        free_if_big(&mut self.rec);
        free_if_big(&mut self.rewritten);
        self.rec.clear();
        // The record is about as long as the line (a little longer with
        // many floats): one allocation rather than a chain of regrowths
        // when the buffer came from the filter pool, with room to append
        // a few enrichment fields in place.
        let mut pool = self.filters.as_mut().map(|fq| &mut fq.pool);
        room(pool.as_deref_mut(), &mut self.rec, line.len() + 256);
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
                        &mut self.rewritten_top,
                        |v, n| room(pool, v, n),
                    ),
                    None => Outcome::Keep,
                };
                if let Some(fq) = self.filters.as_mut() {
                    match outcome {
                        Outcome::Drop => {
                            self.m.dropped("policy", 1);
                            fq.queue.push(Queued::Skip {
                                file: file.clone(),
                                end,
                            });
                        }
                        Outcome::Keep | Outcome::Rewritten => {
                            // The JSON text only if a filter reads it.
                            let needs = fq.chain.needs_json();
                            let (rec, json, top) = match outcome {
                                Outcome::Keep => {
                                    // Validated by the transcoder; this check is SIMD.
                                    let json = needs.then(|| {
                                        simdutf8::basic::from_utf8(line)
                                            .map(std::borrow::Cow::Borrowed)
                                            .unwrap_or_else(|_| String::from_utf8_lossy(line))
                                    });
                                    let top = Positions::Entries(&self.transcoder.top);
                                    (&mut self.rec, json, top)
                                }
                                _ => {
                                    let json = needs.then(|| {
                                        record_json(&self.rewritten).unwrap_or_default().into()
                                    });
                                    let top = Positions::Starts(&self.rewritten_top);
                                    (&mut self.rewritten, json, top)
                                }
                            };
                            fq.bytes += rec.len() + json.as_ref().map_or(0, |j| j.len());
                            // The fields' text from the record, if it is the
                            // transcoder's.
                            let spans =
                                matches!(outcome, Outcome::Keep).then_some(&self.transcoder.spans);
                            let keys = self.transcoder.track_keys.then_some(self.transcoder.keys);
                            let item =
                                fq.pool
                                    .item(rec, json.as_deref(), &fields, top, spans, keys);
                            fq.items.push(item);
                            fq.queue.push(Queued::Event {
                                time: t,
                                file: file.clone(),
                                end,
                            });
                        }
                    }
                    if fq.items.len() >= fq.batch
                        || fq.queue.len() >= 4 * fq.batch
                        || fq.bytes >= FILTER_BATCH_BYTES
                    {
                        self.run_filters()?;
                    }
                    return Ok(());
                }
                let record = match outcome {
                    Outcome::Drop => {
                        self.m.dropped("policy", 1);
                        self.batcher.advance(file, end);
                        return self.maybe_flush();
                    }
                    Outcome::Keep => std::mem::take(&mut self.rec),
                    Outcome::Rewritten => std::mem::take(&mut self.rewritten),
                };
                if record.len() >= BIG_RECORD && record.len() <= self.max_record {
                    // Not copied into the batch: its buffer becomes the batch.
                    return self.emit_owned(t, record, file, end);
                }
                let r = self.emit(t, &record, file, end);
                // Give the buffer back for reuse.
                match outcome {
                    Outcome::Rewritten => self.rewritten = record,
                    _ => self.rec = record,
                }
                return r;
            }
            Err(e) => {
                // Keep file order: what is queued for the filters goes first.
                self.run_filters()?;
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
        self.run_filters()?;
        match why {
            Skip::Oversize => self.m.dropped("oversize", 1),
            Skip::Blank => {}
        }
        self.batcher.advance(file, end);
        self.maybe_flush()
    }

    fn gap(&mut self, gap: &crate::record::origin::Gap) -> Result<(), Stopped> {
        self.gaps.push(gap.clone());
        self.send_gaps()
    }

    fn idle(&mut self) -> Result<(), Stopped> {
        self.run_filters()?;
        if let Some(fq) = self.filters.as_mut() {
            fq.chain.maybe_reload();
        }
        if self.batcher.is_dirty() {
            self.flush()?;
        }
        Ok(())
    }
}

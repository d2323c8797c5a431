//! Batches encoded records into PackedForward messages (spec §PackedForward
//! Mode, §CompressedPackedForward Mode), built in place: the entries are
//! appended straight after a bin32 header that is patched when the batch is
//! sealed, so a record is copied once on its way to the wire.

use crate::forward::protocol::identity;
use crate::record::origin::{FileInfo, Gap, Position};
use crate::record::time::EventTime;
use crate::record::write::write_str;
use base64::Engine;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One message ready for the wire, or (empty `payload`) a position marker for
/// lines that were all dropped, so the checkpoint still moves past them.
#[derive(Debug)]
pub struct Chunk {
    pub seq: u64,
    /// The `chunk` option value (spec §Option), sent as msgpack str.
    pub id: String,
    pub payload: Vec<u8>,
    pub events: u64,
    /// Position after the last line this chunk accounts for.
    pub end: Position,
    /// Timestamp of its last event (for the lag metric).
    pub last_time: Option<EventTime>,
}

#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub tag: String,
    pub max_events: usize,
    pub max_bytes: usize,
    pub flush_interval: Duration,
    /// gzip level for CompressedPackedForward, `None` for plain PackedForward.
    pub gzip: Option<u32>,
    /// Where the client gives sent chunks' buffers back.
    pub recycler: Recycler,
    /// Shared with the client: the chunks not yet acknowledged.
    pub pending: Pending,
    /// Send each chunk's source identity under this stream id
    /// ([`crate::forward::protocol::identity`]); `None`: not sent.
    pub stream: Option<String>,
}

/// The first event time of each sealed chunk not yet acknowledged, oldest
/// first: the age of the oldest unacknowledged event (`lag_seconds`),
/// whether or not anything was acknowledged yet. The batcher adds, the
/// client removes; bounded by the chunks buffered.
#[derive(Clone, Debug, Default)]
pub struct Pending(Arc<std::sync::Mutex<std::collections::VecDeque<(u64, EventTime)>>>);

impl Pending {
    fn sealed(&self, seq: u64, first: EventTime) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back((seq, first));
        }
    }

    /// Every chunk up to `seq` was acknowledged (or dropped).
    pub fn acked_through(&self, seq: u64) {
        if let Ok(mut q) = self.0.lock() {
            while q.front().is_some_and(|&(s, _)| s <= seq) {
                q.pop_front();
            }
        }
    }

    /// The time of the oldest event not yet acknowledged.
    pub fn oldest(&self) -> Option<EventTime> {
        self.0.lock().ok()?.front().map(|&(_, t)| t)
    }
}

/// Chunk buffers given back once acknowledged and reused for new batches,
/// so batch-sized buffers are allocated (mapped and faulted in, being above
/// the mmap threshold `main` sets) once rather than once per batch.
#[derive(Debug, Clone)]
pub struct Recycler {
    pool: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Only buffers of a capacity in this range are kept.
    min: usize,
    max: usize,
}

/// Buffers kept for reuse; more are freed.
const RECYCLE_KEEP: usize = 4;

impl Recycler {
    /// For batches of up to `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Recycler {
            pool: Arc::default(),
            min: max_bytes / 2,
            // A buffer that grew once (only what was written is resident).
            max: 2 * max_bytes + (64 << 10),
        }
    }

    /// Hands back a buffer no longer needed (kept if batch-sized).
    pub fn give(&self, mut buf: Vec<u8>) {
        if (self.min..=self.max).contains(&buf.capacity())
            && let Ok(mut p) = self.pool.lock()
            && p.len() < RECYCLE_KEEP
        {
            buf.clear();
            p.push(buf);
        }
    }

    fn take(&self) -> Option<Vec<u8>> {
        self.pool.lock().ok()?.pop()
    }
}

/// Builds one chunk at a time.
#[derive(Debug)]
pub struct Batcher {
    cfg: BatchConfig,
    buf: Vec<u8>,
    entries_start: usize,
    events: u64,
    first_at: Option<Instant>,
    end: Option<(Arc<FileInfo>, u64)>,
    seq: u64,
    last_size: usize,
    first_time: Option<EventTime>,
    last_time: Option<EventTime>,
    /// Calls of `should_flush`, to read the clock on a few of them.
    calls: u32,
    /// The end offset of each event in the batch (identity).
    ends: Vec<u64>,
    /// An event was pushed whose end offset the next `advance` gives.
    unmarked: bool,
    /// Where the previous chunk ended: this one's start.
    last: Option<(Arc<FileInfo>, u64)>,
}

impl Batcher {
    pub fn new(cfg: BatchConfig) -> Self {
        let mut b = Batcher {
            cfg,
            buf: Vec::new(),
            entries_start: 0,
            events: 0,
            first_at: None,
            end: None,
            seq: 0,
            last_size: 64 * 1024,
            first_time: None,
            last_time: None,
            calls: 0,
            ends: Vec::new(),
            unmarked: false,
            last: None,
        };
        b.reset();
        b
    }

    fn reset(&mut self) {
        // A busy output gets full-size buffers (a smaller one would be
        // reallocated when it fills up), a quiet one small ones.
        let want = if self.last_size >= self.cfg.max_bytes / 2 {
            self.cfg.max_bytes
        } else {
            self.last_size
        };
        self.buf = self
            .cfg
            .recycler
            .take()
            .unwrap_or_else(|| Vec::with_capacity(want + 1024));
        // [tag, bin32(entries), option]
        self.buf.push(0x93);
        write_str(&mut self.buf, self.cfg.tag.as_bytes());
        self.buf.extend_from_slice(&[0xc6, 0, 0, 0, 0]);
        self.entries_start = self.buf.len();
        self.events = 0;
        self.first_at = None;
    }

    /// Appends one entry `[time, record]` (spec §Entry).
    pub fn push(&mut self, time: EventTime, record: &[u8]) {
        if self.first_at.is_none() {
            self.first_at = Some(Instant::now());
        }
        self.first_time.get_or_insert(time);
        self.last_time = Some(time);
        self.buf.push(0x92);
        time.write(&mut self.buf);
        self.buf.extend_from_slice(record);
        self.events += 1;
        self.unmarked = true;
    }

    /// Any events in the batch?
    pub fn has_events(&self) -> bool {
        self.events > 0
    }

    /// Starts an empty batch with `record` as its only entry, in the
    /// record's own buffer: the message header is moved in front of it in
    /// place, so a big event is not copied (its peak memory stays at the
    /// line plus the record).
    pub fn push_owned(&mut self, time: EventTime, mut record: Vec<u8>) {
        debug_assert_eq!(self.events, 0, "push_owned needs an empty batch");
        let mut head = Vec::with_capacity(32 + self.cfg.tag.len());
        head.push(0x93);
        write_str(&mut head, self.cfg.tag.as_bytes());
        head.extend_from_slice(&[0xc6, 0, 0, 0, 0]);
        let entries_start = head.len();
        head.push(0x92);
        time.write(&mut head);
        record.splice(0..0, head);
        self.buf = record;
        self.entries_start = entries_start;
        self.events = 1;
        self.first_at = Some(Instant::now());
        self.first_time = Some(time);
        self.last_time = Some(time);
        self.ends.clear();
        self.unmarked = true;
    }

    /// Notes that the log has been consumed up to `end` in `file`.
    pub fn advance(&mut self, file: &Arc<FileInfo>, end: u64) {
        if self.unmarked {
            self.ends.push(end);
            self.unmarked = false;
        }
        match &mut self.end {
            Some((f, e)) if Arc::ptr_eq(f, file) => *e = end,
            slot => *slot = Some((file.clone(), end)),
        }
        if self.first_at.is_none() {
            self.first_at = Some(Instant::now());
        }
    }

    /// Would an entry with a record of `len` bytes push a non-empty batch
    /// over `max_bytes`? (Seal first, so a chunk exceeds the limit only when a
    /// single event does.)
    pub fn would_overflow(&self, len: usize) -> bool {
        self.events > 0 && self.buf.len() - self.entries_start + len + 11 > self.cfg.max_bytes
    }

    /// Full, or the oldest entry has waited `flush_interval`. The clock is
    /// read on every 32nd call only: a busy log calls this per line, and
    /// an idle one is flushed by the tail's idle callback anyway.
    pub fn should_flush(&mut self) -> bool {
        if self.events as usize >= self.cfg.max_events
            || self.buf.len() - self.entries_start >= self.cfg.max_bytes
        {
            return true;
        }
        self.calls = self.calls.wrapping_add(1);
        self.calls.is_multiple_of(32)
            && self
                .first_at
                .is_some_and(|t| t.elapsed() >= self.cfg.flush_interval)
    }

    /// Anything (events or a position) to hand on?
    pub fn is_dirty(&self) -> bool {
        self.end.is_some()
    }

    /// Are chunks sent with their source identity?
    pub fn sends_identity(&self) -> bool {
        self.cfg.stream.is_some()
    }

    /// A chunk that carries no event but the news of a DATA GAP to the
    /// receiver (`af_gap`, [`identity`]), positioned where the last chunk
    /// ended (so acknowledging it moves no checkpoint). `None` without a
    /// stream id, or before anything was read (call again later).
    pub fn gap_chunk(&mut self, gap: &Gap) -> Option<Chunk> {
        let stream = self.cfg.stream.clone()?;
        let (file, offset) = self.last.clone()?;
        self.seq += 1;
        let id = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let mut msg = Vec::with_capacity(256 + gap.path.len() + gap.why.len());
        msg.push(0x93);
        write_str(&mut msg, self.cfg.tag.as_bytes());
        let _ = rmp::encode::write_bin(&mut msg, &[]);
        let _ = rmp::encode::write_map_len(&mut msg, 4);
        write_str(&mut msg, b"size");
        let _ = rmp::encode::write_uint(&mut msg, 0);
        write_str(&mut msg, b"chunk");
        write_str(&mut msg, id.as_bytes());
        write_str(&mut msg, b"af_stream");
        write_str(&mut msg, stream.as_bytes());
        identity::write_gap(&mut msg, gap);
        Some(Chunk {
            seq: self.seq,
            id,
            payload: msg,
            events: 0,
            end: Position { file, offset },
            last_time: None,
        })
    }

    /// Seals the batch into a chunk.
    pub fn take(&mut self) -> Option<Chunk> {
        let (file, offset) = self.end.take()?;
        self.seq += 1;
        let start = match &self.last {
            Some((f, o)) if Arc::ptr_eq(f, &file) && *o <= offset => *o,
            _ => self.ends.first().copied().unwrap_or(offset).min(offset),
        };
        self.last = Some((file.clone(), offset));
        let end = Position { file, offset };
        if self.events == 0 {
            self.first_at = None;
            return Some(Chunk {
                seq: self.seq,
                id: String::new(),
                payload: Vec::new(),
                events: 0,
                end,
                last_time: None,
            });
        }
        let id = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let mut msg = std::mem::take(&mut self.buf);
        if let Some(level) = self.cfg.gzip {
            let mut z = Vec::with_capacity((msg.len() - self.entries_start) / 4 + 64);
            z.extend_from_slice(&msg[..self.entries_start]);
            let mut enc = flate2::write::GzEncoder::new(z, flate2::Compression::new(level));
            // Writing into a Vec cannot fail.
            let _ = enc.write_all(&msg[self.entries_start..]);
            self.cfg.recycler.give(std::mem::replace(
                &mut msg,
                enc.finish().unwrap_or_default(),
            ));
        }
        let len = (msg.len() - self.entries_start) as u32;
        msg[self.entries_start - 4..self.entries_start].copy_from_slice(&len.to_be_bytes());
        let mut n_opts = if self.cfg.gzip.is_some() { 3 } else { 2 };
        if self.cfg.stream.is_some() {
            n_opts += identity::KEYS;
        }
        let _ = rmp::encode::write_map_len(&mut msg, n_opts);
        write_str(&mut msg, b"size");
        let _ = rmp::encode::write_uint(&mut msg, self.events);
        write_str(&mut msg, b"chunk");
        write_str(&mut msg, id.as_bytes());
        if self.cfg.gzip.is_some() {
            write_str(&mut msg, b"compressed");
            write_str(&mut msg, b"gzip");
        }
        if let Some(stream) = &self.cfg.stream {
            let source = end.file.source_id();
            identity::write(&mut msg, stream, &source, start, end.offset, &self.ends);
        }
        self.ends.clear();
        let events = self.events;
        if let Some(t) = self.first_time.take() {
            self.cfg.pending.sealed(self.seq, t);
        }
        self.last_size = msg.len();
        self.reset();
        Some(Chunk {
            seq: self.seq,
            id,
            payload: msg,
            events,
            end,
            last_time: self.last_time.take(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::protocol::Options;
    use crate::record::reader::MsgReader;
    use std::io::Read;

    fn batcher(gzip: Option<u32>) -> Batcher {
        Batcher::new(BatchConfig {
            pending: Pending::default(),
            tag: "audit".into(),
            max_events: 3,
            max_bytes: 1 << 20,
            flush_interval: Duration::from_secs(3600),
            gzip,
            recycler: Recycler::new(1 << 20),
            stream: None,
        })
    }

    fn entries(chunk: &Chunk) -> (Vec<u8>, u64) {
        let mut r = MsgReader::new(&chunk.payload);
        assert_eq!(r.read_array_len().unwrap(), 3);
        assert_eq!(r.read_str_bytes().unwrap(), b"audit");
        assert_eq!(r.peek_marker().unwrap(), rmp::Marker::Bin32);
        let mut e = r.read_str_bytes().unwrap().to_vec();
        let o = Options::read(&mut r).unwrap();
        assert!(r.is_empty());
        assert_eq!(o.chunk.unwrap(), chunk.id.as_bytes());
        if o.compressed == Some(b"gzip") {
            let mut d = Vec::new();
            flate2::read::MultiGzDecoder::new(&e[..])
                .read_to_end(&mut d)
                .unwrap();
            e = d;
        }
        (e, o.size.unwrap())
    }

    #[test]
    fn an_owned_record_makes_the_same_message_as_a_copied_one() {
        for gz in [None, Some(1)] {
            let f = Arc::new(FileInfo::new("a".into(), 1, 1, false));
            let t = EventTime { secs: 7, nanos: 8 };
            let rec = b"\x81\xa1k\xa3big".to_vec();
            let (mut a, mut b) = (batcher(gz), batcher(gz));
            a.push(t, &rec);
            a.advance(&f, 10);
            b.push_owned(t, rec);
            b.advance(&f, 10);
            let (ca, cb) = (a.take().unwrap(), b.take().unwrap());
            assert_eq!(entries(&ca), entries(&cb));
            assert_eq!(cb.events, 1);
        }
    }

    /// Each chunk names its stream, its source file and the byte range it
    /// accounts for (dropped lines included), and lists its events' end
    /// offsets: the receiver's exactly-once check.
    #[test]
    fn chunks_carry_their_source_identity() {
        let mut b = batcher(None);
        b.cfg.stream = Some("0123456789abcdef0123456789abcdef".into());
        let f = Arc::new(FileInfo::new("a".into(), 1, 1, false));
        f.note_head(0, &[b'x'; 200]);
        let t = EventTime { secs: 1, nanos: 2 };
        b.advance(&f, 100); // where reading starts (a checkpoint)
        assert_eq!(b.take().unwrap().events, 0);
        b.push(t, b"\x80");
        b.advance(&f, 150);
        b.advance(&f, 170); // a line dropped by the policy
        b.push(t, b"\x80");
        b.advance(&f, 230);
        b.advance(&f, 260);
        let c = b.take().unwrap();
        let read = |c: &Chunk| {
            let mut r = MsgReader::new(&c.payload);
            r.read_array_len().unwrap();
            r.read_str_bytes().unwrap();
            r.read_str_bytes().unwrap();
            let o = Options::read(&mut r).unwrap();
            (
                o.identity.stream.to_vec(),
                o.identity.source.to_vec(),
                o.identity.start,
                o.identity.end,
                o.identity.events(),
                [149, 150, 229, 230].map(|w| o.identity.already_written(w).unwrap()),
            )
        };
        let (stream, source, start, end, n, written) = read(&c);
        assert_eq!(stream, b"0123456789abcdef0123456789abcdef");
        assert_eq!(source, f.source_id().as_bytes());
        assert_eq!((start, end, n), (100, 260, 2));
        assert_eq!(written, [0, 1, 1, 2]);
        // The next chunk starts where this one ended.
        b.push(t, b"\x80");
        b.advance(&f, 300);
        let (.., start, end, n, _) = read(&b.take().unwrap());
        assert_eq!((start, end, n), (260, 300, 1));
    }

    #[test]
    fn packed_forward_layout_plain_and_gzip() {
        for gz in [None, Some(1)] {
            let mut b = batcher(gz);
            let f = Arc::new(FileInfo::new("a".into(), 1, 1, false));
            let t = EventTime { secs: 1, nanos: 2 };
            b.push(t, b"\x81\xa1k\x01");
            b.advance(&f, 10);
            b.push(t, b"\x80");
            b.advance(&f, 20);
            assert!(!b.should_flush());
            let c = b.take().unwrap();
            assert_eq!(c.events, 2);
            assert_eq!(c.end.offset, 20);
            let (e, size) = entries(&c);
            assert_eq!(size, 2);
            let mut want = vec![0x92];
            t.write(&mut want);
            want.extend_from_slice(b"\x81\xa1k\x01\x92");
            t.write(&mut want);
            want.push(0x80);
            assert_eq!(e, want);
            assert!(b.take().is_none());
        }
    }

    #[test]
    fn dropped_lines_still_move_the_position() {
        let mut b = batcher(None);
        let f = Arc::new(FileInfo::new("a".into(), 1, 1, false));
        b.advance(&f, 99);
        let c = b.take().unwrap();
        assert!(c.payload.is_empty());
        assert_eq!(c.end.offset, 99);
    }

    #[test]
    fn chunk_ids_are_unique_str() {
        let mut b = batcher(None);
        let f = Arc::new(FileInfo::new("a".into(), 1, 1, false));
        let mut ids = std::collections::HashSet::new();
        for i in 0..100 {
            b.push(EventTime::default(), b"\x80");
            b.advance(&f, i);
            assert!(ids.insert(b.take().unwrap().id));
        }
    }

    #[test]
    fn acknowledged_buffers_are_reused_within_bounds() {
        let mut b = batcher(None);
        let r = b.cfg.recycler.clone();
        let f = Arc::new(FileInfo::new("a".into(), 1, 1, false));
        let t = EventTime { secs: 1, nanos: 2 };
        // Not batch-sized: freed, not kept.
        r.give(Vec::with_capacity(1024));
        r.give(Vec::with_capacity(8 << 20));
        assert!(r.pool.lock().unwrap().is_empty());
        let mut used = Vec::with_capacity(1 << 20);
        used.extend_from_slice(b"stale bytes");
        let ptr = used.as_ptr();
        r.give(used);
        // The batch being built took its buffer when the one before was
        // sealed; the one after it gets the given-back buffer, cleared.
        let mut chunks = Vec::new();
        for i in 0..2 {
            b.push(t, b"\x80");
            b.advance(&f, i);
            chunks.push(b.take().unwrap());
        }
        assert_eq!(chunks[1].payload.as_ptr(), ptr);
        assert_eq!(entries(&chunks[1]), entries(&chunks[0]));
        for _ in 0..10 {
            r.give(Vec::with_capacity(1 << 20));
        }
        assert_eq!(r.pool.lock().unwrap().len(), RECYCLE_KEEP);
    }
}

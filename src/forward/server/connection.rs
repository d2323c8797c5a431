//! One receiver connection: owns the framing of the byte stream into Forward
//! messages, their decoding, the write, and the ack.

use super::Shared;
use super::message::{self, MessageError};
use super::streams::Record;
use crate::forward::protocol::encode_ack;
use crate::forward::protocol::frame::{self, Frame, FrameError};
use crate::forward::protocol::identity;
use crate::transport::Stream;
use crate::transport::limits::{Held, MinRate};
use crate::transport::listen::Slot;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Message(#[from] MessageError),
    #[error("idle for {0:?}; closing")]
    Idle(Duration),
    #[error(
        "no complete message within receive.first_message_timeout ({0:?}) of connecting, unauthenticated"
    )]
    FirstMessage(Duration),
    #[error(
        "a message in progress arrived slower than receive.min_transfer_rate ({0} bytes/s over 10 s)"
    )]
    Slow(u64),
    #[error(
        "receive.memory_budget_bytes ({0} bytes) is held by other connections; closing this {1} one"
    )]
    Budget(usize, &'static str),
    #[error("connection closed in the middle of a message ({0} bytes pending)")]
    Truncated(usize),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing the output failed: {0}")]
    Output(std::io::Error),
    #[error("handshake: {0}")]
    Auth(#[from] crate::forward::auth::AuthError),
}

impl ConnError {
    pub fn reason(&self) -> &'static str {
        match self {
            ConnError::Frame(FrameError::TooLarge { .. }) => "frame_too_large",
            ConnError::Frame(FrameError::Reserved) => "malformed",
            ConnError::Message(m) => m.reason(),
            ConnError::Idle(_) => "idle_timeout",
            ConnError::FirstMessage(_) => "first_message_timeout",
            ConnError::Slow(_) => "slow_transfer",
            ConnError::Budget(..) => "memory_budget",
            ConnError::Truncated(_) => "truncated",
            ConnError::Io(_) => "io",
            ConnError::Output(_) => "output",
            ConnError::Auth(crate::forward::auth::AuthError::Rejected(_)) => "auth",
            ConnError::Auth(crate::forward::auth::AuthError::Budget) => "memory_budget",
            ConnError::Auth(_) => "handshake",
        }
    }
}

/// Keeps the JSON lines of `out` (one per record) whose `keep` is true.
fn keep_lines(out: &mut Vec<u8>, keep: &[bool]) {
    let mut kept = Vec::with_capacity(out.len());
    let mut at = 0;
    for &k in keep {
        let end = memchr::memchr(b'\n', &out[at..]).map_or(out.len(), |i| at + i + 1);
        if k {
            kept.extend_from_slice(&out[at..end]);
        }
        at = end;
    }
    kept.extend_from_slice(&out[at..]);
    *out = kept;
}

pub struct Connection {
    stream: Stream,
    peer: String,
    shared: Arc<Shared>,
    buf: Vec<u8>,
    start: usize,
    /// Where measuring the frame at `start` got to (resumed on each read).
    measurer: frame::Measurer,
    /// The JSON lines of one message, reused from message to message.
    out: Vec<u8>,
    /// This connection's slot (proven: not evicted for others).
    slot: Slot,
    /// What it holds of the memory budget: `buf`, `out`, decompression.
    held: Held,
    /// The message in progress must keep arriving.
    rate: MinRate,
    accepted: Instant,
}

/// A message's JSON buffer is kept for the next message up to this
/// capacity (room for the JSON of the client's default 1 MiB batches);
/// only the pages written count in RSS.
const KEEP_OUT_BYTES: usize = 4 << 20;

/// The read buffer is kept for the next message up to this capacity.
const KEEP_BUF_BYTES: usize = 4 << 20;

/// Bytes asked of the socket per read beyond what the frame needs.
const READ_BYTES: usize = 64 * 1024;

/// The same for a connection that has not proven itself yet.
const FIRST_READ_BYTES: usize = 1024;

/// How long an orderly close may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

impl Connection {
    pub fn new(stream: Stream, peer: String, shared: Arc<Shared>, slot: Slot) -> Self {
        let held = shared.budget.account();
        if slot.is_proven() {
            held.prove(); // a verified client certificate
        }
        let rate = MinRate::new(shared.cfg.min_transfer_rate, Duration::from_secs(10));
        Connection {
            stream,
            peer,
            shared,
            buf: Vec::new(),
            start: 0,
            measurer: frame::Measurer::default(),
            out: Vec::new(),
            slot,
            held,
            rate,
            accepted: Instant::now(),
        }
    }

    /// Serves until the peer closes. A protocol error ends this connection
    /// only. Every close but a broken connection's is orderly: TLS
    /// close_notify, then FIN (fluent-bit 5.1 logs an error without it).
    pub async fn run(mut self) -> Result<(), ConnError> {
        let r = self.serve().await;
        self.buf = Vec::new();
        self.out = Vec::new();
        self.held.force_set(0);
        self.publish();
        if !matches!(r, Err(ConnError::Io(_))) {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.stream.shutdown()).await;
        }
        r
    }

    /// Authenticated, or (with no authentication configured) one message
    /// decoded: no longer evicted, and the whole memory budget is open to it.
    fn prove(&self) {
        self.slot.prove();
        self.held.prove();
    }

    fn publish(&self) {
        let b = self.held.budget();
        self.shared.m.memory_held.set(b.used() as i64);
    }

    /// Charges `buf` and `out` as they are (memory already allocated).
    fn recharge(&self) {
        self.held
            .force_set(self.buf.capacity() + self.out.capacity());
        self.publish();
    }

    /// Grows the read buffer to `cap` bytes, charged to the budget first.
    /// An unproven connection that finds no room is closed; a proven one
    /// stops reading until memory is returned (at most `idle_timeout`).
    async fn room(&mut self, cap: usize) -> Result<(), ConnError> {
        if self.buf.capacity() >= cap {
            return Ok(());
        }
        let total = cap + self.out.capacity();
        if !self.held.try_set(total) {
            let limit = self.held.budget().limit();
            if !self.held.is_proven() {
                return Err(ConnError::Budget(limit, "unauthenticated"));
            }
            self.shared.m.rejected("memory_budget_wait");
            let until = Instant::now() + self.shared.cfg.idle_timeout;
            if !self.held.wait_set(total, until).await {
                return Err(ConnError::Budget(limit, "authenticated"));
            }
            // Not reading was this side's doing: a new rate window.
            self.rate.restart(Instant::now().into_std());
        }
        self.buf.reserve_exact(cap - self.buf.len());
        self.recharge();
        Ok(())
    }

    async fn serve(&mut self) -> Result<(), ConnError> {
        if let Some(sec) = self.shared.cfg.security.clone() {
            let t = self.shared.cfg.handshake_timeout;
            let held = Some(&self.held);
            crate::forward::auth::server(&mut self.stream, &sec, t, &mut self.buf, held).await?;
            self.prove();
            self.recharge();
        }
        loop {
            let seen = self.measurer.examined();
            let measured = self
                .measurer
                .feed(&self.buf[self.start..], self.shared.cfg.max_frame_bytes);
            (self.shared.m.frame_examined).inc_by(self.measurer.examined() - seen);
            let need = match measured? {
                Frame::Complete(n) => {
                    let (s, e) = (self.start, self.start + n);
                    self.start = e;
                    self.handle(s, e).await?;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                        self.rate.idle();
                        if self.buf.capacity() > KEEP_BUF_BYTES {
                            self.buf = Vec::new();
                        }
                        self.recharge();
                    }
                    continue;
                }
                Frame::Incomplete(n) => n,
            };
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            // Geometric growth (no quadratic copying), from a small first
            // read for a peer that has not proven itself (idle connections
            // hold almost nothing), bounded by the frame limit.
            let len = self.buf.len();
            let step = if self.slot.is_proven() {
                READ_BYTES
            } else {
                FIRST_READ_BYTES
            };
            let cap = need
                .max(len + step.max(len))
                .min(need.max(self.shared.cfg.max_frame_bytes + step));
            self.room(cap).await?;
            let n = self.read().await?;
            if n == 0 {
                if self.buf.is_empty() {
                    debug!(peer = %self.peer, "connection closed");
                    return Ok(());
                }
                return Err(ConnError::Truncated(self.buf.len()));
            }
            self.shared.m.bytes.inc_by(n as u64);
        }
    }

    /// One read, within the deadline that applies: the first message's
    /// (unproven), the transfer rate's (a message in progress), or idle.
    async fn read(&mut self) -> Result<usize, ConnError> {
        let cfg = &self.shared.cfg;
        let now = Instant::now();
        let pending = !self.buf.is_empty();
        let (mut deadline, mut why) = match self.rate.deadline().filter(|_| pending) {
            Some(d) => (Instant::from_std(d), ConnError::Slow(cfg.min_transfer_rate)),
            None => (now + cfg.idle_timeout, ConnError::Idle(cfg.idle_timeout)),
        };
        if !self.slot.is_proven() {
            let first = self.accepted + cfg.first_message_timeout;
            if first < deadline {
                (deadline, why) = (first, ConnError::FirstMessage(cfg.first_message_timeout));
            }
        }
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(why),
            Ok(r) => {
                let n = r?;
                self.rate.progress(n, Instant::now().into_std());
                Ok(n)
            }
        }
    }

    async fn handle(&mut self, s: usize, e: usize) -> Result<(), ConnError> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.reserve((e - s) * 2);
        let frame = &self.buf[s..e];
        let decoder = message::Decoder {
            max_decompressed: self.shared.cfg.max_decompressed_bytes,
            metadata_key: self.shared.cfg.metadata_key.as_deref(),
            tag_key: self.shared.cfg.tag_key.as_deref(),
            budget: Some(&self.held),
        };
        let decoded = decoder.decode(frame, &mut out);
        // Decompression was charged as it grew and is freed now; the JSON
        // is bounded by what was charged for the frame.
        self.held.force_set(self.buf.capacity() + out.capacity());
        let Some(d) = decoded? else {
            self.out = out;
            return Ok(()); // heartbeat
        };
        if !self.slot.is_proven() {
            self.prove();
        }
        self.shared.m.message(d.mode.as_str());
        let chunk = d.chunk.map(|c| c.to_vec());
        let events = d.events;
        // This program's source identity: drop what was written before,
        // whatever batch it came in (protocol::identity).
        // The record it makes and its events' end offsets (`None`:
        // malformed), owned: they outlive the frame across awaits.
        let ident = (d.identity.is_set() && d.identity.events() == events).then(|| {
            let rec = Record {
                stream: String::from_utf8_lossy(d.identity.stream).into_owned(),
                source: String::from_utf8_lossy(d.identity.source).into_owned(),
                start: d.identity.start,
                end: d.identity.end,
            };
            (rec, d.identity.event_ends())
        });
        // A loss the sender reported (af_gap), with its stream.
        let gap = d
            .identity
            .gap
            .and_then(identity::read_gap)
            .map(|g| (g, String::from_utf8_lossy(d.identity.stream).into_owned()));
        let dup = chunk.as_ref().is_some_and(|c| {
            self.shared
                .dedupe
                .lock()
                .map(|g| g.contains(c))
                .unwrap_or(false)
        });
        let mut _stream_lock = None;
        let mut skip = 0;
        if let (Some((rec, ends)), false) = (&ident, dup) {
            let streams = &self.shared.streams;
            _stream_lock = Some(streams.lock(&rec.stream).await);
            let written = streams.written(&rec.stream, &rec.source);
            let ends = ends.as_ref().ok_or(MessageError::Shape(
                "af_ends is not a list of LEB128 offsets",
            ))?;
            let keep: Vec<bool> = ends.iter().map(|&e| !written.has(e)).collect();
            skip = keep.iter().filter(|&&k| !k).count() as u64;
            if skip > 0 {
                keep_lines(&mut out, &keep);
                self.shared.m.duplicate_events.inc_by(skip);
                debug!(peer = %self.peer, events = skip, "events written before (same stream and source offsets): not written again");
            }
        }
        if let (Some((g, stream)), false) = (&gap, dup) {
            self.shared.m.sender_gaps.inc();
            warn!(peer = %self.peer, %stream, path = %g.path, offset = g.offset, bytes = g.bytes,
                "GAP reported by the sender: {}", g.why);
        }
        if dup {
            self.shared.m.dedupe_hits.inc();
            debug!(peer = %self.peer, "resent chunk already written; acking without writing");
        } else {
            let record = ident.map(|(rec, _)| rec);
            if !out.is_empty() || record.is_some() {
                let (r, back) = self.shared.writer.write_recorded(out, record).await;
                r.map_err(ConnError::Output)?;
                out = back;
                self.shared.m.events.inc_by(events - skip);
            }
            if let Some(c) = &chunk
                && let Ok(mut g) = self.shared.dedupe.lock()
            {
                g.insert(c);
            }
        }
        if out.capacity() <= KEEP_OUT_BYTES {
            self.out = out;
        }
        self.recharge();
        if let Some(c) = chunk {
            self.stream.write_all(&encode_ack(&c)).await?;
            self.stream.flush().await?;
            self.shared.m.acks.inc();
        }
        Ok(())
    }
}

//! Outputs beside Forward: [`s3`] (objects of JSON lines) and [`syslog`]
//! (RFC 5424 over TCP/TLS, or RELP). They take the chunks the Forward
//! batcher builds (one pipeline shape for every output: the policy, the
//! filters, the batcher and the checkpoint are the same), decode each back
//! to its events' JSON, and report a chunk done only once the destination
//! confirmed it: the store answered the upload, or RELP acknowledged every
//! message. [`Progress`] turns that into the watermark the checkpointer
//! commits (ARCHITECTURE.md invariant 1).

pub mod s3;
pub mod syslog;

use crate::forward::batch::{Chunk, Pending, Recycler};
use crate::forward::server::message::{self, MessageError};
use crate::ops::metrics::OutputMetrics;
use crate::record::origin::Position;
use crate::record::time::EventTime;
use tokio::sync::watch;

/// Cap on a chunk's decompressed size (the pipeline does not compress
/// chunks for sinks; this only bounds a bug).
const MAX_DECODED: usize = 1 << 32;

/// What is left of a chunk once its events were taken out: what its
/// completion must report.
#[derive(Debug)]
pub struct Done {
    seq: u64,
    end: Position,
    events: u64,
    held: usize,
    last_time: Option<EventTime>,
}

/// Where a chunk's events came from (its identity options): one file,
/// byte range `start..end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Span {
    pub source: String,
    pub start: u64,
    pub end: u64,
    /// A chunk that reports a DATA GAP, without events.
    pub gap: bool,
}

/// Publishes completed chunks, in order, as the watermark; keeps the
/// output's acknowledgement metrics and the lag bookkeeping.
pub struct Progress {
    m: OutputMetrics,
    pending: Pending,
    recycler: Recycler,
    watermark: watch::Sender<Option<Position>>,
}

impl Progress {
    pub fn new(
        m: OutputMetrics,
        pending: Pending,
        recycler: Recycler,
        watermark: watch::Sender<Option<Position>>,
    ) -> Self {
        Progress {
            m,
            pending,
            recycler,
            watermark,
        }
    }

    /// Takes a chunk's events out (into `out`, one JSON line each) and
    /// gives its buffer back to the batcher. `Err`: the chunk is not one
    /// of ours (a bug), its events are not in `out`.
    pub fn take(&self, c: Chunk, out: &mut Vec<u8>) -> (Done, Result<Span, MessageError>) {
        let mut span = Ok(Span::default());
        if !c.payload.is_empty() {
            span = message::decode(&c.payload, MAX_DECODED, out).map(|d| match d {
                Some(d) => Span {
                    source: String::from_utf8_lossy(d.identity.source).into_owned(),
                    start: d.identity.start,
                    end: d.identity.end,
                    gap: d.identity.gap.is_some(),
                },
                None => Span::default(),
            });
        }
        if let Err(e) = &span {
            // A bug, not input: say so loudly, and count the events as lost.
            self.m.dropped("undecodable", c.events);
            tracing::error!(error = %e, events = c.events, "internal: a chunk could not be decoded; its events are counted in events_dropped{{reason=\"undecodable\"}}");
        }
        let done = Done {
            seq: c.seq,
            end: c.end,
            events: c.events,
            held: c.payload.len(),
            last_time: c.last_time,
        };
        self.recycler.give(c.payload);
        (done, span)
    }

    /// The chunks, oldest first, are stored by the destination.
    pub fn done(&self, chunks: impl IntoIterator<Item = Done>) {
        let mut moved = None;
        for d in chunks {
            self.m.buffered_bytes.dec_by(d.held as i64);
            if let Some(t) = d.last_time {
                self.m.last_acked_ts.set(t.as_f64());
            }
            if d.events > 0 {
                self.m.chunks_acked.inc();
                self.m.events_acked.inc_by(d.events);
            }
            self.pending.acked_through(d.seq);
            moved = Some(d.end);
        }
        if let Some(p) = moved {
            let _ = self.watermark.send(Some(p));
        }
    }

    /// Chunks that will never be reported done (shutdown): their bytes
    /// leave the buffer metric.
    pub fn dropped(&self, chunks: impl IntoIterator<Item = Done>) {
        for d in chunks {
            self.m.buffered_bytes.dec_by(d.held as i64);
        }
    }
}

impl Done {
    pub fn events(&self) -> u64 {
        self.events
    }
    pub fn time(&self) -> Option<EventTime> {
        self.last_time
    }
}

/// The event's time for keys and syslog headers: its top-level
/// `stageTimestamp`, else `requestReceivedTimestamp`. Both come after
/// `requestObject`/`responseObject` in an audit event, so the last
/// occurrence is the top-level one (inside string values the quotes would
/// be escaped).
pub fn event_time(event: &[u8]) -> Option<EventTime> {
    for key in [
        &b"\"stageTimestamp\":\""[..],
        b"\"requestReceivedTimestamp\":\"",
    ] {
        if let Some(i) = memchr::memmem::rfind(event, key) {
            let rest = &event[i + key.len()..];
            if let Some(t) = memchr::memchr(b'"', rest)
                .and_then(|end| std::str::from_utf8(&rest[..end]).ok())
                .and_then(EventTime::parse_rfc3339)
            {
                return Some(t);
            }
        }
    }
    None
}

//! Prometheus metrics (prometheus-client). Handles to per-output series are
//! resolved once at start-up so the hot path only touches atomics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;

type FGauge = Gauge<f64, AtomicU64>;
type FGauges = Family<Labels, FGauge>;
use prometheus_client::registry::Registry;
use std::sync::Arc;

type Labels = Vec<(&'static str, String)>;
type Counters = Family<Labels, Counter>;
type Gauges = Family<Labels, Gauge>;

/// Every metric family of the process.
#[derive(Default)]
pub struct Metrics {
    registry: Registry,
    f: Families,
}

#[derive(Default, Clone)]
struct Families {
    lines_read: Counters,
    bytes_read: Counters,
    invalid_lines: Counters,
    events_dropped: Counters,
    events_sent: Counters,
    events_acked: Counters,
    chunks_sent: Counters,
    chunks_resent: Counters,
    chunks_acked: Counters,
    bytes_sent: Counters,
    buffered_bytes: Gauges,
    buffered_bytes_max: Gauges,
    chunks_in_flight: Gauges,
    connect_errors: Counters,
    reconnects: Counters,
    send_errors: Counters,
    objects_uploaded: Counters,
    objects_existing: Counters,
    checkpoint_writes: Counters,
    checkpoint_failures: Counters,
    rotations: Counters,
    truncations: Counters,
    gaps: Counters,
    gap_bytes: Counters,
    held_files: Gauges,
    held_bytes: Gauges,
    read_errors: Counters,
    connected: Gauges,
    tail_running: Gauges,
    lag_bytes: Gauges,
    lag_seconds: FGauges,
    last_acked_ts: FGauges,
    config_reloads: Counters,
    filter_events: Counters,
    filter_errors: Counters,
    filter_reloads: Counters,
    recv_connections: Counters,
    recv_connections_active: Gauges,
    recv_messages: Counters,
    recv_events: Counters,
    recv_acks: Counters,
    recv_rejected: Counters,
    recv_dedupe: Counters,
    recv_bytes: Counters,
    recv_memory_held: Gauges,
    recv_examined: Counters,
    recv_dup_events: Counters,
    recv_streams: Gauges,
    recv_open_holes: Gauges,
    recv_hole_age: Gauges,
    recv_gaps: Counters,
    recv_sender_gaps: Counters,
    webhook_requests: Counters,
    webhook_events: Counters,
    webhook_rejected: Counters,
    spool_bytes: Gauges,
    spool_files_deleted: Counters,
}

/// Handles for one output's series.
#[derive(Clone, Debug, Default)]
pub struct OutputMetrics {
    pub lines_read: Counter,
    pub bytes_read: Counter,
    pub events_sent: Counter,
    pub events_acked: Counter,
    pub chunks_sent: Counter,
    pub chunks_resent: Counter,
    pub chunks_acked: Counter,
    pub bytes_sent: Counter,
    /// S3: objects the store confirmed, and objects found already stored.
    pub objects_uploaded: Counter,
    pub objects_existing: Counter,
    pub buffered_bytes: Gauge,
    pub buffered_bytes_max: Gauge,
    pub chunks_in_flight: Gauge,
    pub checkpoint_writes: Counter,
    pub checkpoint_failures: Counter,
    pub rotations: Counter,
    pub truncations: Counter,
    pub gaps: Counter,
    /// Unread bytes of the files counted in `gaps` (where known).
    pub gap_bytes: Counter,
    /// Rotated files held open until read, and the bytes of those already
    /// deleted from disk (what holding costs).
    pub held_files: Gauge,
    pub held_bytes: Gauge,
    pub read_errors: Counter,
    /// 1 while a connection to the destination is up (local outputs: always).
    pub connected: Gauge,
    /// 1 while the tail thread runs.
    pub tail_running: Gauge,
    pub lag_bytes: Gauge,
    pub lag_seconds: FGauge,
    /// stageTimestamp of the last acknowledged event, Unix seconds.
    pub last_acked_ts: FGauge,
    /// Unix seconds since the destination is unreachable (0: connected).
    down_since: Arc<AtomicU64>,
    pub name: String,
    families: Option<Arc<FamiliesHandle>>,
}

#[derive(Debug)]
struct FamiliesHandle {
    invalid_lines: Counters,
    events_dropped: Counters,
    connect_errors: Counters,
    reconnects: Counters,
    send_errors: Counters,
    filter_events: Counters,
    filter_errors: Counters,
    filter_reloads: Counters,
}

impl OutputMetrics {
    fn labeled(
        &self,
        pick: impl Fn(&FamiliesHandle) -> &Counters,
        reason: &str,
    ) -> Option<Counter> {
        let f = self.families.as_ref()?;
        Some(
            pick(f)
                .get_or_create(&vec![
                    ("output", self.name.clone()),
                    ("reason", reason.to_string()),
                ])
                .clone(),
        )
    }
    /// An invalid line (counted whether it is forwarded raw or dropped).
    pub fn invalid_line(&self, reason: &str) {
        if let Some(c) = self.labeled(|f| &f.invalid_lines, reason) {
            c.inc();
        }
    }
    /// Events deliberately not forwarded, by reason.
    pub fn dropped(&self, reason: &str, n: u64) {
        if let Some(c) = self.labeled(|f| &f.events_dropped, reason) {
            c.inc_by(n);
        }
    }
    /// A request or message the destination refused or did not answer
    /// (S3 uploads, RELP responses), by reason.
    pub fn send_error(&self, reason: &str) {
        if let Some(c) = self.labeled(|f| &f.send_errors, reason) {
            c.inc();
        }
    }
    pub fn send_error_count(&self, reason: &str) -> u64 {
        self.labeled(|f| &f.send_errors, reason)
            .map(|c| c.get())
            .unwrap_or(0)
    }
    pub fn connect_error(&self, reason: &str) {
        if let Some(c) = self.labeled(|f| &f.connect_errors, reason) {
            c.inc();
        }
    }
    fn filter_series(
        &self,
        pick: impl Fn(&FamiliesHandle) -> &Counters,
        filter: &str,
        extra: Option<(&'static str, &str)>,
    ) -> Option<Counter> {
        let f = self.families.as_ref()?;
        let mut l = vec![
            ("output", self.name.clone()),
            ("filter", filter.to_string()),
        ];
        if let Some((k, v)) = extra {
            l.push((k, v.to_string()));
        }
        Some(pick(f).get_or_create(&l).clone())
    }
    pub fn filter_call(&self, filter: &str, events: u64) {
        if let Some(c) = self.filter_series(|f| &f.filter_events, filter, None) {
            c.inc_by(events);
        }
    }
    pub fn filter_error(&self, filter: &str, reason: &str) {
        if let Some(c) = self.filter_series(|f| &f.filter_errors, filter, Some(("reason", reason)))
        {
            c.inc();
        }
    }
    pub fn filter_reload(&self, filter: &str, result: &str) {
        if let Some(c) = self.filter_series(|f| &f.filter_reloads, filter, Some(("result", result)))
        {
            c.inc();
        }
    }
    pub fn reconnect(&self, reason: &str) {
        if let Some(c) = self.labeled(|f| &f.reconnects, reason) {
            c.inc();
        }
    }
    /// Value of `events_dropped{reason}` (for summaries).
    pub fn dropped_count(&self, reason: &str) -> u64 {
        self.labeled(|f| &f.events_dropped, reason)
            .map(|c| c.get())
            .unwrap_or(0)
    }
    /// Records whether the destination is reachable (for `/readyz`).
    pub fn set_connected(&self, up: bool) {
        use std::sync::atomic::Ordering;
        self.connected.set(up as i64);
        if up {
            self.down_since.store(0, Ordering::Relaxed);
        } else if self.down_since.load(Ordering::Relaxed) == 0 {
            let now = crate::record::time::EventTime::now().as_f64();
            self.down_since.store(now.to_bits(), Ordering::Relaxed);
        }
    }

    /// Unix seconds since the destination became unreachable; 0 when connected.
    pub fn down_since(&self) -> f64 {
        f64::from_bits(self.down_since.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Adds to the buffered-bytes gauge (atomically) and raises its
    /// high-water mark.
    pub fn add_buffered(&self, bytes: i64) {
        let now = self.buffered_bytes.inc_by(bytes) + bytes;
        if now > self.buffered_bytes_max.get() {
            self.buffered_bytes_max.set(now);
        }
    }
}

/// Handles for the receiver's series.
#[derive(Clone, Debug, Default)]
pub struct ReceiverMetrics {
    pub connections: Counter,
    pub connections_active: Gauge,
    pub events: Counter,
    pub acks: Counter,
    pub dedupe_hits: Counter,
    pub bytes: Counter,
    /// Bytes held for peers now (`receive.memory_budget_bytes` bounds it).
    pub memory_held: Gauge,
    /// Bytes the frame measurer examined (linear in bytes received however
    /// frames are split into reads).
    pub frame_examined: Counter,
    /// Events of resent chunks written before (by stream and source offset).
    pub duplicate_events: Counter,
    /// Sender streams known, open holes, the oldest one's age, gaps logged.
    pub streams: Gauge,
    pub open_holes: Gauge,
    pub oldest_hole_age: Gauge,
    pub gaps: Counter,
    /// DATA GAPs the senders reported (`af_gap`).
    pub sender_gaps: Counter,
    messages: Counters,
    rejected: Counters,
}

/// The series of `family` with one label.
fn one(family: &Counters, key: &'static str, value: &str) -> Counter {
    family
        .get_or_create(&vec![(key, value.to_string())])
        .clone()
}

impl ReceiverMetrics {
    pub fn message(&self, mode: &str) {
        one(&self.messages, "mode", mode).inc();
    }
    pub fn rejected(&self, reason: &str) {
        one(&self.rejected, "reason", reason).inc();
    }
    pub fn rejected_count(&self, reason: &str) -> u64 {
        one(&self.rejected, "reason", reason).get()
    }
}

/// Handles for the webhook source's series.
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    pub events: Counter,
    pub spool_bytes: Gauge,
    pub spool_files_deleted: Counter,
    requests: Counters,
    rejected: Counters,
}

impl WebhookMetrics {
    pub fn request(&self, code: u16) {
        one(&self.requests, "code", &code.to_string()).inc();
    }
    pub fn rejected(&self, reason: &str) {
        one(&self.rejected, "reason", reason).inc();
    }
    pub fn rejected_count(&self, reason: &str) -> u64 {
        one(&self.rejected, "reason", reason).get()
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let f = Families::default();
        let mut r = Registry::with_prefix("audit_forwarder");
        macro_rules! reg {
            ($($name:literal, $help:literal, $fam:ident;)*) => { $( r.register($name, $help, f.$fam.clone()); )* };
        }
        reg! {
            "lines_read", "Lines read from the audit log", lines_read;
            "bytes_read", "Bytes read from the audit log", bytes_read;
            "invalid_lines", "Lines that are not valid JSON objects, by reason", invalid_lines;
            "events_dropped", "Events deliberately not forwarded, by reason", events_dropped;
            "events_sent", "Events written to the wire (first sends)", events_sent;
            "events_acked", "Events acknowledged by the receiver", events_acked;
            "chunks_sent", "Chunks written to the wire (first sends)", chunks_sent;
            "chunks_resent", "Chunks written again after a reconnect", chunks_resent;
            "chunks_acked", "Chunks acknowledged by the receiver", chunks_acked;
            "bytes_sent", "Bytes written to the wire, after compression", bytes_sent;
            "buffered_bytes", "Bytes read but not yet acknowledged", buffered_bytes;
            "buffered_bytes_max", "High-water mark of buffered_bytes", buffered_bytes_max;
            "chunks_in_flight", "Chunks sent and waiting for their ack", chunks_in_flight;
            "connect_errors", "Failed connection attempts, by reason", connect_errors;
            "reconnects", "Connections closed and re-opened, by reason", reconnects;
            "send_errors", "S3 uploads and syslog messages that failed and will be retried, by reason", send_errors;
            "objects_uploaded", "S3 objects the store confirmed", objects_uploaded;
            "objects_existing", "S3 uploads that found their key already stored (same span): kept", objects_existing;
            "checkpoint_writes", "Checkpoints written", checkpoint_writes;
            "checkpoint_failures", "Checkpoint writes that failed", checkpoint_failures;
            "rotations", "Log rotations followed", rotations;
            "truncations", "Files found truncated (copytruncate)", truncations;
            "gaps", "Files that vanished, or were released, before they were fully read (each also logged as DATA GAP)", gaps;
            "gap_bytes", "Unread bytes of the files counted in gaps, where known", gap_bytes;
            "held_files", "Rotated files held open until they are read", held_files;
            "held_bytes", "Bytes of held files already deleted from disk (bounded by tail.max_held_bytes)", held_bytes;
            "read_errors", "Errors reading the audit log", read_errors;
            "connected", "1 while the output's destination is connected", connected;
            "tail_running", "1 while the output's tail reader runs", tail_running;
            "lag_bytes", "Bytes in the audit log files not yet acknowledged by the destination", lag_bytes;
            "lag_seconds", "Now minus the stageTimestamp of the last acknowledged event, while anything is unacknowledged; else 0", lag_seconds;
            "last_acked_event_timestamp_seconds", "stageTimestamp of the last acknowledged event", last_acked_ts;
            "config_reloads", "Configuration reloads, by result (ok, invalid)", config_reloads;
            "filter_events", "Events passed to a WASM filter", filter_events;
            "filter_errors", "WASM filter failures (trap, timeout, memory, verdict_count, invalid_verdict, instantiate)", filter_errors;
            "filter_reloads", "WASM filter file changes, by result (ok, rejected)", filter_reloads;
            "receiver_connections", "Connections accepted by the receiver", recv_connections;
            "receiver_connections_active", "Open receiver connections", recv_connections_active;
            "receiver_messages", "Forward messages received, by mode", recv_messages;
            "receiver_events", "Records written by the receiver", recv_events;
            "receiver_acks", "Acks sent by the receiver", recv_acks;
            "receiver_rejected_frames", "Frames or connections rejected, by reason", recv_rejected;
            "receiver_dedupe_hits", "Resent chunks recognised and not written twice", recv_dedupe;
            "receiver_bytes", "Bytes received", recv_bytes;
            "receiver_streams", "Sender streams (state directory and output) the receiver keeps a record of", recv_streams;
            "receiver_open_holes", "Source ranges not received although later ones were (a chunk lost on the way, not yet resent)", recv_open_holes;
            "receiver_oldest_hole_age_seconds", "Age of the oldest open hole", recv_hole_age;
            "receiver_gaps", "Holes open longer than receive.gap_timeout, each logged as a GAP", recv_gaps;
            "receiver_sender_gaps", "DATA GAPs reported by senders (files lost before they were read), each logged", recv_sender_gaps;
            "receiver_duplicate_events", "Events of resent chunks not written again: the same stream and source offsets were written before", recv_dup_events;
            "receiver_frame_bytes_examined", "Bytes the frame measurer examined to find message boundaries", recv_examined;
            "receiver_memory_held_bytes", "Bytes held for peers (partial frames, decompression, JSON) across connections", recv_memory_held;
            "webhook_requests", "Webhook requests answered, by HTTP status code", webhook_requests;
            "webhook_events", "Audit events accepted by the webhook and spooled", webhook_events;
            "webhook_rejected", "Webhook requests refused, by reason", webhook_rejected;
            "spool_bytes", "Bytes in the webhook spool not yet acknowledged by every output", spool_bytes;
            "spool_files_deleted", "Spool files deleted after every output acknowledged them", spool_files_deleted;
        }
        Arc::new(Metrics { registry: r, f })
    }

    /// Resolves the series of one output.
    pub fn output(&self, name: &str) -> OutputMetrics {
        let l = vec![("output", name.to_string())];
        let c = |f: &Counters| f.get_or_create(&l).clone();
        let g = |f: &Gauges| f.get_or_create(&l).clone();
        let f = &self.f;
        OutputMetrics {
            lines_read: c(&f.lines_read),
            bytes_read: c(&f.bytes_read),
            events_sent: c(&f.events_sent),
            events_acked: c(&f.events_acked),
            chunks_sent: c(&f.chunks_sent),
            chunks_resent: c(&f.chunks_resent),
            chunks_acked: c(&f.chunks_acked),
            bytes_sent: c(&f.bytes_sent),
            objects_uploaded: c(&f.objects_uploaded),
            objects_existing: c(&f.objects_existing),
            buffered_bytes: g(&f.buffered_bytes),
            buffered_bytes_max: g(&f.buffered_bytes_max),
            chunks_in_flight: g(&f.chunks_in_flight),
            checkpoint_writes: c(&f.checkpoint_writes),
            checkpoint_failures: c(&f.checkpoint_failures),
            rotations: c(&f.rotations),
            truncations: c(&f.truncations),
            gaps: c(&f.gaps),
            gap_bytes: c(&f.gap_bytes),
            held_files: g(&f.held_files),
            held_bytes: g(&f.held_bytes),
            read_errors: c(&f.read_errors),
            connected: g(&f.connected),
            tail_running: g(&f.tail_running),
            lag_bytes: g(&f.lag_bytes),
            lag_seconds: f.lag_seconds.get_or_create(&l).clone(),
            last_acked_ts: f.last_acked_ts.get_or_create(&l).clone(),
            down_since: Arc::new(AtomicU64::new(0)),
            name: name.to_string(),
            families: Some(Arc::new(FamiliesHandle {
                invalid_lines: f.invalid_lines.clone(),
                events_dropped: f.events_dropped.clone(),
                connect_errors: f.connect_errors.clone(),
                reconnects: f.reconnects.clone(),
                send_errors: f.send_errors.clone(),
                filter_events: f.filter_events.clone(),
                filter_errors: f.filter_errors.clone(),
                filter_reloads: f.filter_reloads.clone(),
            })),
        }
    }

    pub fn receiver(&self) -> ReceiverMetrics {
        let f = &self.f;
        ReceiverMetrics {
            connections: f.recv_connections.get_or_create(&vec![]).clone(),
            connections_active: f.recv_connections_active.get_or_create(&vec![]).clone(),
            events: f.recv_events.get_or_create(&vec![]).clone(),
            acks: f.recv_acks.get_or_create(&vec![]).clone(),
            dedupe_hits: f.recv_dedupe.get_or_create(&vec![]).clone(),
            bytes: f.recv_bytes.get_or_create(&vec![]).clone(),
            memory_held: f.recv_memory_held.get_or_create(&vec![]).clone(),
            frame_examined: f.recv_examined.get_or_create(&vec![]).clone(),
            duplicate_events: f.recv_dup_events.get_or_create(&vec![]).clone(),
            streams: f.recv_streams.get_or_create(&vec![]).clone(),
            open_holes: f.recv_open_holes.get_or_create(&vec![]).clone(),
            oldest_hole_age: f.recv_hole_age.get_or_create(&vec![]).clone(),
            gaps: f.recv_gaps.get_or_create(&vec![]).clone(),
            sender_gaps: f.recv_sender_gaps.get_or_create(&vec![]).clone(),
            messages: f.recv_messages.clone(),
            rejected: f.recv_rejected.clone(),
        }
    }

    pub fn webhook(&self) -> WebhookMetrics {
        let f = &self.f;
        WebhookMetrics {
            events: f.webhook_events.get_or_create(&vec![]).clone(),
            spool_bytes: f.spool_bytes.get_or_create(&vec![]).clone(),
            spool_files_deleted: f.spool_files_deleted.get_or_create(&vec![]).clone(),
            requests: f.webhook_requests.clone(),
            rejected: f.webhook_rejected.clone(),
        }
    }

    /// Counts a configuration reload by result (`ok`, `invalid`).
    pub fn config_reload(&self, result: &str) {
        self.f
            .config_reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    pub fn config_reload_count(&self, result: &str) -> u64 {
        self.f
            .config_reloads
            .get_or_create(&vec![("result", result.to_string())])
            .get()
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

//! The Forward client: one connection per output, several chunks in flight,
//! acks matched by chunk id (spec §Response), reconnect with exponential
//! backoff and jitter, unacknowledged chunks resent with the same chunk id.
//!
//! Publishes the *watermark*: the end position of the longest prefix of
//! chunks that were acknowledged (or carried no events). Only that position
//! may be checkpointed (ARCHITECTURE.md invariant 1).

use super::auth::AuthError;
use super::batch::Chunk;
use super::protocol::decode_ack;
use super::protocol::frame::{self, Frame};
use crate::ops::logging::RateLimit;
use crate::ops::metrics::OutputMetrics;
use crate::record::origin::Position;
use crate::transport::backoff::Backoff;
use crate::transport::proxy::ProxyError;
use crate::transport::tls::TlsError;
use crate::transport::{self, ConnectError, Stream};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How a session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// Everything sent and acknowledged, or shutting down.
    Done,
    /// Round-robin: on to the next server.
    Rebalance,
    /// The server closed the connection with nothing in flight (idle
    /// timeout, keepalive off).
    Closed,
}

/// How long an orderly close may take (TLS close_notify, FIN).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub host: String,
    pub port: u16,
    pub connect_timeout: Duration,
    pub ack_timeout: Duration,
    pub require_ack: bool,
    pub max_in_flight: usize,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Write JSON lines locally (stdout or a file) instead of forwarding.
    pub local: Option<crate::forward::server::Output>,
    /// More servers after `host:port`: standbys (failover) or peers
    /// (round-robin).
    pub servers: Vec<(String, u16)>,
    /// Round-robin: move to the next server after this long on one
    /// (between chunks, after their acks). `None`: failover.
    pub rebalance: Option<Duration>,
    /// TLS to the destination.
    pub tls: Option<crate::transport::tls::ClientTls>,
    /// Shared key (and user) for the handshake; `None`: no handshake.
    pub security: Option<crate::forward::auth::ClientSecurity>,
    /// Reach every server through this HTTP CONNECT proxy.
    pub proxy: Option<crate::transport::proxy::Proxy>,
    /// Acknowledged chunks' buffers go back to the batcher through this.
    pub recycler: super::batch::Recycler,
    /// The chunks not yet acknowledged (shared with the batcher).
    pub pending: super::batch::Pending,
}

impl ClientConfig {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("connection closed by the server")]
    Closed,
    #[error("i/o error: {0}")]
    Io(std::io::Error),
    /// With TLS 1.3 a rejected client certificate surfaces only at the first
    /// read, as an alert.
    #[error(
        "TLS: the server rejected this connection ({0}); check tls_cert_file/tls_key_file and the server's client CA"
    )]
    TlsAlert(String),
    #[error("no ack within {0:?}")]
    AckTimeout(Duration),
    #[error("the server accepted no bytes of a chunk for {0:?}")]
    WriteTimeout(Duration),
    #[error("invalid response from the server: {0}")]
    Protocol(String),
    #[error("handshake: {0}")]
    Auth(#[from] crate::forward::auth::AuthError),
    #[error(transparent)]
    Tls(TlsError),
}

impl From<std::io::Error> for SessionError {
    fn from(e: std::io::Error) -> Self {
        // An in-tunnel proxy answer surfaces through a read.
        if ProxyError::from_io(&e).is_some() {
            return match e.into_inner().map(|i| i.downcast::<ProxyError>()) {
                Some(Ok(p)) => SessionError::Proxy(*p),
                _ => SessionError::Closed,
            };
        }
        match crate::transport::tls::alert(&e) {
            Some(a) => SessionError::TlsAlert(a),
            None => SessionError::Io(e),
        }
    }
}

impl From<TlsError> for SessionError {
    fn from(e: TlsError) -> Self {
        match e {
            // The proxy answered inside the tunnel during the TLS handshake.
            TlsError::Handshake { error, .. } if ProxyError::from_io(&error).is_some() => {
                SessionError::from(error)
            }
            e => SessionError::Tls(e),
        }
    }
}

impl SessionError {
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Connect(e) => e.reason(),
            SessionError::Proxy(e) => e.reason(),
            SessionError::Closed => "closed",
            SessionError::Io(_) => "io",
            SessionError::AckTimeout(_) => "ack_timeout",
            SessionError::WriteTimeout(_) => "write_timeout",
            SessionError::Protocol(_) => "protocol",
            SessionError::Auth(AuthError::Rejected(_) | AuthError::BadServerDigest) => "auth",
            SessionError::Auth(_) => "handshake",
            SessionError::Tls(_) | SessionError::TlsAlert(_) => "tls",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Unsent,
    Sent(Instant),
    Acked,
}

struct Slot {
    chunk: Chunk,
    state: State,
}

pub struct Client {
    cfg: ClientConfig,
    m: OutputMetrics,
    rx: mpsc::Receiver<Chunk>,
    input_closed: bool,
    queue: VecDeque<Slot>,
    watermark: watch::Sender<Option<Position>>,
    shutdown: watch::Receiver<bool>,
    connected: watch::Sender<bool>,
    warn: RateLimit,
    /// Since when and after how many failed tries the destination is
    /// unreachable (`None` while connected).
    down: Option<(Instant, u32)>,
    ever_connected: bool,
    /// Index of the server in use (0: the primary).
    current: usize,
    /// Servers that failed recently, skipped until then.
    down_until: Vec<Option<Instant>>,
}

/// How the client ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEnd {
    /// Input closed and everything acknowledged.
    Drained,
    /// Shutdown requested; `unacked` chunks were still outstanding.
    Shutdown { unacked: usize },
}

impl Drop for Client {
    /// Chunks never acknowledged leave the buffer with the client (they are
    /// read again from the file after a restart or reload).
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(c) = self.rx.try_recv() {
            self.m.buffered_bytes.dec_by(c.payload.len() as i64);
        }
        for s in self.queue.drain(..) {
            self.m.buffered_bytes.dec_by(s.chunk.payload.len() as i64);
        }
    }
}

impl Client {
    pub fn new(
        cfg: ClientConfig,
        m: OutputMetrics,
        rx: mpsc::Receiver<Chunk>,
        watermark: watch::Sender<Option<Position>>,
        shutdown: watch::Receiver<bool>,
        connected: watch::Sender<bool>,
    ) -> Self {
        Client {
            cfg,
            m,
            rx,
            input_closed: false,
            queue: VecDeque::new(),
            watermark,
            shutdown,
            connected,
            warn: RateLimit::default(),
            down: None,
            ever_connected: false,
            current: 0,
            down_until: Vec::new(),
        }
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn unacked(&self) -> usize {
        self.queue
            .iter()
            .filter(|s| s.state != State::Acked)
            .count()
    }

    /// Runs until the input is closed and drained, or shutdown.
    pub async fn run(mut self) -> ClientEnd {
        self.m.set_connected(false);
        if let Some(out) = self.cfg.local.clone() {
            return self.run_local(out).await;
        }
        let mut backoff = Backoff::new(self.cfg.retry_min, self.cfg.retry_max);
        loop {
            if self.input_closed && self.queue.is_empty() {
                return ClientEnd::Drained;
            }
            if self.shutting_down() {
                return ClientEnd::Shutdown {
                    unacked: self.unacked(),
                };
            }
            let r = self.session(&mut backoff).await;
            let _ = self.connected.send(false);
            self.m.set_connected(false);
            match r {
                Ok(end) => {
                    // A session that ended with more to do is reconnected:
                    // count it (the server closed an idle connection, or
                    // round-robin moves on).
                    let drained = self.input_closed && self.queue.is_empty();
                    let more = !(drained || self.shutting_down());
                    match end {
                        SessionEnd::Closed if more => self.m.reconnect("closed_by_server"),
                        SessionEnd::Rebalance if more => self.m.reconnect("rebalance"),
                        _ => {}
                    }
                    continue;
                }
                Err(e) => {
                    let (since, tries) = self.down.get_or_insert((Instant::now(), 0));
                    *tries += 1;
                    let _ = since;
                    match &e {
                        SessionError::Connect(_) | SessionError::Proxy(_) => {
                            self.m.connect_error(e.reason())
                        }
                        _ => self.m.reconnect(e.reason()),
                    }
                    let wait = backoff.next_wait();
                    if let Some(n) = self.warn.allow() {
                        warn!(server = %self.server_addr(), error = %e, retry_in_ms = wait.as_millis() as u64,
                            unacked_chunks = self.unacked(), suppressed = n, "forward connection failed; will retry");
                    }
                    let mut sd = self.shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = crate::stopped(&mut sd) => {}
                    }
                }
            }
        }
    }

    /// Local destination: decode each chunk back to JSON lines, write and
    /// flush them, and count that as the acknowledgement.
    async fn run_local(mut self, out: crate::forward::server::Output) -> ClientEnd {
        let writer = match crate::forward::server::Writer::start(out, None) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot open the output");
                return ClientEnd::Shutdown { unacked: 0 };
            }
        };
        let mut sd = self.shutdown.clone();
        self.m.set_connected(true);
        let mut lines = Vec::new();
        loop {
            let c = tokio::select! {
                c = self.rx.recv() => c,
                _ = crate::stopped(&mut sd) => return ClientEnd::Shutdown { unacked: 0 },
            };
            let Some(c) = c else {
                return ClientEnd::Drained;
            };
            if !c.payload.is_empty() {
                lines.clear();
                lines.reserve(c.payload.len() * 2);
                if let Err(e) =
                    crate::forward::server::message::decode(&c.payload, usize::MAX, &mut lines)
                {
                    warn!(error = %e, "internal: cannot decode an own chunk");
                }
                let (r, back) = writer.write(std::mem::take(&mut lines)).await;
                if let Err(e) = r {
                    warn!(error = %e, "writing the output failed; stopping this output");
                    return ClientEnd::Shutdown { unacked: 1 };
                }
                lines = back;
                self.m.chunks_sent.inc();
                self.m.events_sent.inc_by(c.events);
                self.m.events_acked.inc_by(c.events);
            }
            self.queue.push_back(Slot {
                chunk: c,
                state: State::Acked,
            });
            self.advance();
        }
    }

    /// Every server: the primary, then the standbys (`servers`).
    fn servers(&self) -> Vec<(String, u16)> {
        let mut v = vec![(self.cfg.host.clone(), self.cfg.port)];
        v.extend(self.cfg.servers.iter().cloned());
        v
    }

    fn server_addr(&self) -> String {
        self.servers()
            .get(self.current)
            .map(|(h, p)| format!("{h}:{p}"))
            .unwrap_or_else(|| self.cfg.addr())
    }

    /// Connects to the first healthy server in configured order (failover,
    /// like fluentd's standby servers); a server that failed is skipped for
    /// `retry_max` unless every server failed.
    async fn connect(&mut self) -> Result<Stream, SessionError> {
        let servers = self.servers();
        self.down_until.resize(servers.len(), None);
        let now = Instant::now();
        // Failover: configured order. Round-robin: start after the server
        // used last. Healthy servers first either way (stable sort).
        let start = match self.cfg.rebalance {
            Some(_) => (self.current + 1) % servers.len(),
            None => 0,
        };
        let mut order: Vec<usize> = (0..servers.len())
            .map(|k| (start + k) % servers.len())
            .collect();
        order.sort_by_key(|&i| self.down_until[i].is_some_and(|t| t > now));
        let mut last = None;
        for i in order {
            let (host, port) = &servers[i];
            match self.connect_one(host, *port).await {
                Ok(s) => {
                    if i != self.current {
                        info!(server = %format!("{host}:{port}"), "using server");
                    }
                    self.down_until[i] = None;
                    self.current = i;
                    return Ok(s);
                }
                Err(e) => {
                    self.down_until[i] = Some(Instant::now() + self.cfg.retry_max);
                    if servers.len() > 1 {
                        self.m.connect_error(e.reason());
                        debug!(server = %format!("{host}:{port}"), error = %e, "server unavailable; trying the next one");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(SessionError::Closed))
    }

    async fn connect_one(&self, host: &str, port: u16) -> Result<Stream, SessionError> {
        let s: Stream = match &self.cfg.proxy {
            Some(p) => p.connect(host, port, self.cfg.connect_timeout).await?,
            None => Box::new(transport::tcp::connect(host, port, self.cfg.connect_timeout).await?),
        };
        match &self.cfg.tls {
            // Files are read on every connection: rotated certificates apply
            // to the next one.
            Some(t) => Ok(t.connect(host, s, self.cfg.connect_timeout).await?),
            None => Ok(s),
        }
    }

    /// One connection's life. `Ok` when there is nothing left to do.
    async fn session(&mut self, backoff: &mut Backoff) -> Result<SessionEnd, SessionError> {
        let mut sd = self.shutdown.clone();
        let mut stream = tokio::select! {
            s = self.connect() => s?,
            _ = crate::stopped(&mut sd) => return Ok(SessionEnd::Done),
        };
        let mut rbuf: Vec<u8> = Vec::with_capacity(4096);
        let mut keepalive = true;
        if let Some(sec) = &self.cfg.security {
            keepalive =
                crate::forward::auth::client(&mut stream, sec, self.cfg.connect_timeout, &mut rbuf)
                    .await?;
        }
        // keepalive false (spec §HELO): the server closes after each message.
        let max_in_flight = if keepalive { self.cfg.max_in_flight } else { 1 };
        match self.down.take() {
            Some((since, tries)) => info!(
                server = %self.server_addr(),
                down_for_ms = since.elapsed().as_millis() as u64,
                tries,
                "output connected again after failures"
            ),
            None if !self.ever_connected => info!(server = %self.server_addr(), "output connected"),
            None => debug!(server = %self.server_addr(), "connected"),
        }
        self.ever_connected = true;
        // The next failure is news: log it at once.
        self.warn = RateLimit::default();
        let _ = self.connected.send(true);
        self.m.set_connected(true);
        let mut acked_here = false;
        let rebalance_at = self
            .cfg
            .rebalance
            .filter(|_| !self.cfg.servers.is_empty())
            .map(|d| Instant::now() + d);
        let (mut rd, mut wr) = tokio::io::split(stream);
        // Everything not acknowledged goes again, in order, same chunk ids.
        let mut resent = 0;
        for i in 0..self.queue.len() {
            if self.queue[i].state != State::Acked && !self.queue[i].chunk.payload.is_empty() {
                resent += 1;
                self.m.chunks_resent.inc();
                self.write(&mut wr, i).await?;
            }
        }
        if resent > 0 {
            info!(server = %self.server_addr(), chunks = resent, "reconnected; resent unacknowledged chunks");
        }
        let end = loop {
            if self.input_closed && self.queue.is_empty() {
                let _ = wr.flush().await;
                break Ok(SessionEnd::Done);
            }
            if self.shutting_down() {
                if !self.input_closed {
                    // Stop taking new chunks; wait for acks of those in flight.
                    self.rx.close();
                    self.input_closed = true;
                    while let Ok(c) = self.rx.try_recv() {
                        self.m.buffered_bytes.dec_by(c.payload.len() as i64);
                    }
                    let m = self.m.clone();
                    self.queue.retain(|s| {
                        let keep = s.state != State::Unsent;
                        if !keep {
                            m.buffered_bytes.dec_by(s.chunk.payload.len() as i64);
                        }
                        keep
                    });
                }
                if self.unacked() == 0 {
                    break Ok(SessionEnd::Done);
                }
            }
            let in_flight = self
                .queue
                .iter()
                .filter(|s| matches!(s.state, State::Sent(_)))
                .count();
            self.m.chunks_in_flight.set(in_flight as i64);
            let deadline = self.queue.iter().find_map(|s| match s.state {
                State::Sent(d) => Some(d),
                _ => None,
            });
            // Count every slot, acked or not: acks out of order must not let
            // the queue grow past the memory bound.
            // Round-robin: after the interval, stop taking chunks; once the
            // in-flight ones are acked, end the session to move on.
            let rotating = acked_here && rebalance_at.is_some_and(|t| Instant::now() >= t);
            if rotating && in_flight == 0 {
                debug!(server = %self.server_addr(), "rebalancing to the next server");
                break Ok(SessionEnd::Rebalance);
            }
            let can_take = !rotating
                && !self.input_closed
                && in_flight < max_in_flight
                && self.queue.len() < max_in_flight;
            tokio::select! {
                biased;
                _ = crate::stopped(&mut sd), if !self.input_closed => {}
                n = rd.read_buf(&mut rbuf) => {
                    if n? == 0 {
                        // A close with nothing in flight after progress is
                        // normal (keepalive false, idle timeouts): reconnect.
                        let waiting = self.queue.iter().any(|s| matches!(s.state, State::Sent(_)));
                        if acked_here && !waiting { break Ok(SessionEnd::Closed) }
                        return Err(SessionError::Closed);
                    }
                    acked_here |= self.read_acks(&mut rbuf)?;
                    backoff.reset();
                }
                c = self.rx.recv(), if can_take => match c {
                    None => self.input_closed = true,
                    Some(c) => {
                        let empty = c.payload.is_empty();
                        self.queue.push_back(Slot { chunk: c, state: if empty { State::Acked } else { State::Unsent } });
                        if empty {
                            self.advance();
                        } else {
                            let i = self.queue.len() - 1;
                            self.m.chunks_sent.inc();
                            self.m.events_sent.inc_by(self.queue[i].chunk.events);
                            self.write(&mut wr, i).await?;
                        }
                    }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    return Err(SessionError::AckTimeout(self.cfg.ack_timeout));
                }
                _ = tokio::time::sleep_until(rebalance_at.unwrap_or_else(Instant::now)), if rebalance_at.is_some() && !rotating => {}
            }
        };
        // An orderly end: say so (TLS close_notify, then FIN), so a peer
        // such as fluent-bit 5.1 does not log an unexpected EOF.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, wr.shutdown()).await;
        end
    }

    async fn write<W: AsyncWriteExt + Unpin>(
        &mut self,
        wr: &mut W,
        i: usize,
    ) -> Result<(), SessionError> {
        let t = self.cfg.ack_timeout;
        let payload = &self.queue[i].chunk.payload;
        write_progressing(wr, payload, t).await?;
        self.m.bytes_sent.inc_by(payload.len() as u64);
        if self.cfg.require_ack {
            self.queue[i].state = State::Sent(Instant::now() + t);
        } else {
            self.queue[i].state = State::Acked;
            self.m.events_acked.inc_by(self.queue[i].chunk.events);
            self.advance();
        }
        Ok(())
    }

    /// Parses every complete response in `buf` (spec §Response). True when
    /// at least one ack was read.
    fn read_acks(&mut self, buf: &mut Vec<u8>) -> Result<bool, SessionError> {
        let mut used = 0;
        let mut any = false;
        loop {
            match frame::measure(&buf[used..], 64 * 1024) {
                Ok(Frame::Complete(n)) => {
                    let f = &buf[used..used + n];
                    match decode_ack(f) {
                        Ok(Some(id)) => {
                            let id = id.to_vec();
                            self.on_ack(&id);
                            any = true;
                        }
                        Ok(None) => debug!("response without ack ignored"),
                        Err(e) => return Err(SessionError::Protocol(e.to_string())),
                    }
                    used += n;
                }
                Ok(Frame::Incomplete(_)) => break,
                Err(e) => return Err(SessionError::Protocol(e.to_string())),
            }
        }
        buf.drain(..used);
        Ok(any)
    }

    fn on_ack(&mut self, id: &[u8]) {
        let slot = self
            .queue
            .iter_mut()
            .find(|s| matches!(s.state, State::Sent(_)) && s.chunk.id.as_bytes() == id);
        match slot {
            Some(s) => {
                s.state = State::Acked;
                self.m.chunks_acked.inc();
                self.m.events_acked.inc_by(s.chunk.events);
            }
            None => {
                debug!(chunk = %String::from_utf8_lossy(id), "ack for an unknown chunk ignored")
            }
        }
        self.advance();
    }

    /// Pops the acknowledged prefix and publishes its end as the watermark.
    fn advance(&mut self) {
        let mut moved = None;
        while self.queue.front().is_some_and(|s| s.state == State::Acked) {
            if let Some(s) = self.queue.pop_front() {
                self.m.buffered_bytes.dec_by(s.chunk.payload.len() as i64);
                if let Some(t) = s.chunk.last_time {
                    self.m.last_acked_ts.set(t.as_f64());
                }
                self.cfg.pending.acked_through(s.chunk.seq);
                moved = Some(s.chunk.end);
                self.cfg.recycler.give(s.chunk.payload);
            }
        }
        if let Some(p) = moved {
            let _ = self.watermark.send(Some(p));
        }
    }
}

/// Writes `payload` and flushes it ([`transport::write_progressing`]).
async fn write_progressing<W: AsyncWriteExt + Unpin>(
    wr: &mut W,
    payload: &[u8],
    t: Duration,
) -> Result<(), SessionError> {
    match transport::write_progressing(wr, payload, t).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(SessionError::WriteTimeout(t)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {

    /// A server that keeps taking bytes, slower than the timeout allows
    /// for the whole chunk, gets all of it; one that stops taking bytes
    /// fails the write after the timeout. (Paused clock: the reader's
    /// pacing and the timeouts are virtual time.)
    #[tokio::test(start_paused = true)]
    async fn a_slow_server_gets_the_chunk_a_stalled_one_times_out() {
        use tokio::io::AsyncReadExt;
        let payload = vec![7u8; 64 * 1024];
        let t = Duration::from_millis(100);
        // 4 KiB every 50 ms: the chunk takes ~800 ms, 8 times `t`.
        let (mut wr, mut rd) = tokio::io::duplex(4096);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let start = tokio::time::Instant::now();
        write_progressing(&mut wr, &payload, t).await.unwrap();
        assert!(start.elapsed() > 4 * t, "the write did take longer than t");
        drop(wr);
        assert_eq!(reader.await.unwrap(), payload);
        // Nobody reads: nothing is accepted once the pipe is full.
        let (mut wr, _rd) = tokio::io::duplex(4096);
        match write_progressing(&mut wr, &payload, t).await {
            Err(SessionError::WriteTimeout(d)) => assert_eq!(d, t),
            other => panic!("expected a write timeout, got {other:?}"),
        }
    }
    use super::*;

    fn in_tunnel() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            ProxyError::InTunnel {
                proxy: "unix:/k.sock".into(),
                target: "10.0.0.1:24224".into(),
                line: "HTTP/0.0 503 Service Unavailable".into(),
            },
        )
    }

    /// An in-tunnel proxy answer is a proxy error whether it arrives at a
    /// read of the Forward stream or inside the TLS handshake.
    #[test]
    fn in_tunnel_proxy_answers_are_proxy_errors() {
        for e in [
            SessionError::from(in_tunnel()),
            SessionError::from(TlsError::Handshake {
                peer: "receiver".into(),
                error: in_tunnel(),
            }),
        ] {
            assert!(
                matches!(e, SessionError::Proxy(ProxyError::InTunnel { .. })),
                "{e:?}"
            );
            assert_eq!(e.reason(), "proxy_refused");
            assert!(e.to_string().contains("HTTP/0.0 503"), "{e}");
        }
        let e = SessionError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(matches!(e, SessionError::Io(_)));
    }
}

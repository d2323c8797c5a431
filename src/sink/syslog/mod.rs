//! `type = "syslog"`: each event as one RFC 5424 message ([`rfc5424`])
//! whose MSG is the event's JSON, sent over
//!
//! - **`protocol = "relp"`** ([`relp`]): every message is acknowledged by
//!   the server (`rsp 200`); a chunk is done when all of its messages are,
//!   and only then may the checkpoint pass it. Messages not acknowledged
//!   when the session breaks are sent again on the next one (at least
//!   once: the server may have taken some whose response was lost).
//! - **`protocol = "tcp"`**: octet-counted framing (RFC 6587 §3.4.1), TLS
//!   with the output's `tls` (RFC 5425). There are no acknowledgements: a
//!   chunk counts as done once written to the socket, so what the kernel,
//!   the network or the collector's memory held when the connection broke
//!   is lost without a trace. README says so; use RELP when that matters.
//!
//! Connections go directly or through the output's HTTP CONNECT proxy, TLS
//! on top of either (the Forward client's transports). Backoff, metrics
//! and shutdown are as for Forward: on shutdown no new chunks are taken and
//! the messages in flight are waited for (`shutdown_timeout`).

pub mod relp;
pub mod rfc5424;
pub mod settings;

use super::{Done, Progress};
use crate::forward::batch::Chunk;
use crate::forward::client::ClientEnd;
use crate::ops::logging::RateLimit;
use crate::ops::metrics::OutputMetrics;
use crate::transport::backoff::Backoff;
use crate::transport::proxy::{Proxy, ProxyError};
use crate::transport::tls::{ClientTls, TlsError};
use crate::transport::{self, ConnectError, Stream};
use settings::SyslogSection;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Every problem of an `[outputs.syslog]` section, each as `key: problem`.
pub fn problems(s: &SyslogSection) -> Vec<String> {
    let mut errs = Vec::new();
    if let Err(e) = header(s) {
        errs.push(e);
    }
    if s.window == 0 {
        errs.push("window: must be > 0".into());
    }
    errs
}

pub fn header(s: &SyslogSection) -> Result<rfc5424::Header, String> {
    let host = s
        .hostname
        .clone()
        .unwrap_or_else(|| crate::forward::protocol::handshake::hostname("audit-forwarder"));
    rfc5424::Header::new(&s.facility, &s.severity, &host, &s.app_name, &s.msgid)
}

/// Where and how messages go.
#[derive(Debug, Clone)]
pub struct SyslogConfig {
    pub relp: bool,
    pub header: rfc5424::Header,
    pub window: usize,
    pub host: String,
    pub port: u16,
    pub tls: Option<ClientTls>,
    pub proxy: Option<Proxy>,
    pub connect_timeout: Duration,
    pub ack_timeout: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Chunks taken and not yet done.
    pub max_in_flight: usize,
}

impl SyslogConfig {
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("TLS: the server rejected this connection ({0})")]
    TlsAlert(String),
    #[error("i/o error: {0}")]
    Io(std::io::Error),
    #[error("connection closed by the server")]
    Closed,
    #[error("the server ended the RELP session (serverclose)")]
    ServerClose,
    #[error("no RELP response within {0:?}")]
    AckTimeout(Duration),
    #[error("the server accepted no bytes for {0:?}")]
    WriteTimeout(Duration),
    #[error("RELP {what} refused: {code} {text}")]
    Refused {
        what: &'static str,
        code: u16,
        text: String,
    },
    #[error(transparent)]
    Frame(#[from] relp::FrameError),
    #[error("RELP response {got} does not answer the oldest command in flight ({want})")]
    OutOfOrder { got: u32, want: u32 },
}

impl From<std::io::Error> for SyslogError {
    fn from(e: std::io::Error) -> Self {
        match transport::tls::alert(&e) {
            Some(a) => SyslogError::TlsAlert(a),
            None => SyslogError::Io(e),
        }
    }
}

impl SyslogError {
    pub fn reason(&self) -> String {
        match self {
            SyslogError::Connect(e) => e.reason().into(),
            SyslogError::Proxy(e) => e.reason().into(),
            SyslogError::Tls(_) | SyslogError::TlsAlert(_) => "tls".into(),
            SyslogError::Io(_) => "io".into(),
            SyslogError::Closed => "closed".into(),
            SyslogError::ServerClose => "serverclose".into(),
            SyslogError::AckTimeout(_) => "ack_timeout".into(),
            SyslogError::WriteTimeout(_) => "write_timeout".into(),
            SyslogError::Refused { code, .. } => format!("relp_{code}"),
            SyslogError::Frame(_) | SyslogError::OutOfOrder { .. } => "protocol".into(),
        }
    }

    fn connecting(&self) -> bool {
        matches!(
            self,
            SyslogError::Connect(_) | SyslogError::Proxy(_) | SyslogError::Tls(_)
        )
    }
}

/// One chunk's messages.
struct Slot {
    id: u64,
    done: Done,
    msgs: Vec<u8>,
    bounds: Vec<(usize, usize)>,
    /// Messages written in this session / acknowledged.
    sent: usize,
    acked: usize,
}

impl Slot {
    fn complete(&self) -> bool {
        self.acked == self.bounds.len()
    }
}

pub struct SyslogSink {
    cfg: SyslogConfig,
    m: OutputMetrics,
    rx: mpsc::Receiver<Chunk>,
    progress: Progress,
    shutdown: watch::Receiver<bool>,
    queue: VecDeque<Slot>,
    next_id: u64,
    input_closed: bool,
    warn: RateLimit,
    down: Option<(Instant, u32)>,
    ever_connected: bool,
    lines: Vec<u8>,
}

impl SyslogSink {
    pub fn new(
        cfg: SyslogConfig,
        m: OutputMetrics,
        rx: mpsc::Receiver<Chunk>,
        progress: Progress,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        SyslogSink {
            cfg,
            m,
            rx,
            progress,
            shutdown,
            queue: VecDeque::new(),
            next_id: 0,
            input_closed: false,
            warn: RateLimit::default(),
            down: None,
            ever_connected: false,
            lines: Vec::new(),
        }
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs until the input is drained, or shutdown.
    pub async fn run(mut self) -> ClientEnd {
        self.m.set_connected(false);
        let mut backoff = Backoff::new(self.cfg.retry_min, self.cfg.retry_max);
        loop {
            if self.input_closed && self.queue.is_empty() {
                return ClientEnd::Drained;
            }
            if self.shutting_down() && self.input_closed {
                return self.end_shutdown();
            }
            let r = self.session(&mut backoff).await;
            self.m.set_connected(false);
            if let Err(e) = r {
                self.down.get_or_insert((Instant::now(), 0)).1 += 1;
                if e.connecting() {
                    self.m.connect_error(&e.reason());
                } else {
                    self.m.reconnect(&e.reason());
                }
                if let SyslogError::Refused { .. } = e {
                    self.m.send_error(&e.reason());
                }
                let wait = backoff.next_wait();
                if let Some(n) = self.warn.allow() {
                    warn!(server = %self.cfg.addr(), error = %e, retry_in_ms = wait.as_millis() as u64,
                        unacked_chunks = self.queue.len(), suppressed = n, "syslog connection failed; will retry");
                }
                let mut sd = self.shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = crate::stopped(&mut sd) => {}
                }
                if self.shutting_down() {
                    self.stop_taking();
                }
            }
        }
    }

    /// Shutdown: what was not acknowledged is read again after a restart.
    fn end_shutdown(&mut self) -> ClientEnd {
        let unacked = self.queue.len();
        let left: Vec<Done> = self.queue.drain(..).map(|s| s.done).collect();
        self.progress.dropped(left);
        ClientEnd::Shutdown { unacked }
    }

    /// Takes no more chunks; those queued but not taken leave the buffer.
    fn stop_taking(&mut self) {
        if self.input_closed {
            return;
        }
        self.rx.close();
        self.input_closed = true;
        while let Ok(c) = self.rx.try_recv() {
            let (d, _) = self.progress.take(c, &mut self.lines);
            self.progress.dropped([d]);
        }
        self.lines.clear();
    }

    async fn connect(&self) -> Result<Stream, SyslogError> {
        let (host, port, t) = (&self.cfg.host, self.cfg.port, self.cfg.connect_timeout);
        let s: Stream = match &self.cfg.proxy {
            Some(p) => p.connect(host, port, t).await?,
            None => Box::new(transport::tcp::connect(host, port, t).await?),
        };
        match &self.cfg.tls {
            Some(tls) => Ok(tls.connect(host, s, t).await?),
            None => Ok(s),
        }
    }

    /// Formats a chunk's events as messages.
    fn slot(&mut self, c: Chunk) -> Slot {
        self.lines.clear();
        let (done, _) = self.progress.take(c, &mut self.lines);
        let mut msgs = Vec::with_capacity(self.lines.len() + self.lines.len() / 8);
        let mut bounds = Vec::new();
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &self.lines) {
            let line = &self.lines[start..nl];
            start = nl + 1;
            if !line.is_empty() {
                let a = msgs.len();
                self.cfg.header.write(&mut msgs, line);
                bounds.push((a, msgs.len()));
            }
        }
        self.next_id += 1;
        Slot {
            id: self.next_id,
            done,
            msgs,
            bounds,
            sent: 0,
            acked: 0,
        }
    }

    /// Reports the finished prefix of the queue.
    fn advance(&mut self) {
        let mut done = Vec::new();
        while self.queue.front().is_some_and(Slot::complete) {
            if let Some(s) = self.queue.pop_front() {
                done.push(s.done);
            }
        }
        if !done.is_empty() {
            self.progress.done(done);
        }
    }

    /// Opens a RELP session: `open`, answered `rsp 200`.
    async fn open<R, W>(
        &self,
        rd: &mut R,
        wr: &mut W,
        rbuf: &mut Vec<u8>,
    ) -> Result<(), SyslogError>
    where
        R: AsyncReadExt + Unpin,
        W: AsyncWriteExt + Unpin,
    {
        let t = self.cfg.connect_timeout;
        let mut w = Vec::new();
        relp::command(&mut w, 1, "open", &relp::open_offers());
        write_all(wr, &w, t).await?;
        let deadline = Instant::now() + t;
        loop {
            if let Some((reply, n)) = relp::parse(rbuf)? {
                rbuf.drain(..n);
                return match reply {
                    relp::Reply::Rsp {
                        txnr: 1, code: 200, ..
                    } => Ok(()),
                    relp::Reply::Rsp { code, text, .. } => Err(SyslogError::Refused {
                        what: "open",
                        code,
                        text,
                    }),
                    relp::Reply::ServerClose => Err(SyslogError::ServerClose),
                };
            }
            match tokio::time::timeout_at(deadline, rd.read_buf(rbuf)).await {
                Err(_) => return Err(SyslogError::AckTimeout(t)),
                Ok(r) => {
                    if r? == 0 {
                        return Err(SyslogError::Closed);
                    }
                }
            }
        }
    }

    /// One connection's life; `Ok` when there is nothing left to do.
    async fn session(&mut self, backoff: &mut Backoff) -> Result<(), SyslogError> {
        let mut sd = self.shutdown.clone();
        let stream = tokio::select! {
            s = self.connect() => s?,
            _ = crate::stopped(&mut sd) => { self.stop_taking(); return Ok(()) }
        };
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut rbuf: Vec<u8> = Vec::with_capacity(4096);
        let mut txnr = 1;
        if self.cfg.relp {
            self.open(&mut rd, &mut wr, &mut rbuf).await?;
            txnr = relp::next_txnr(txnr);
        }
        match self.down.take() {
            Some((since, tries)) => info!(server = %self.cfg.addr(),
                down_for_ms = since.elapsed().as_millis() as u64, tries, "syslog output connected again after failures"),
            None if !self.ever_connected => {
                info!(server = %self.cfg.addr(), relp = self.cfg.relp, "syslog output connected")
            }
            None => debug!(server = %self.cfg.addr(), "connected"),
        }
        self.ever_connected = true;
        self.warn = RateLimit::default();
        self.m.set_connected(true);
        // What was not acknowledged goes again, in order.
        let mut resent = 0;
        for s in self.queue.iter_mut() {
            if s.sent > s.acked {
                resent += s.sent - s.acked;
            }
            s.sent = s.acked;
        }
        if resent > 0 {
            self.m.chunks_resent.inc();
            info!(server = %self.cfg.addr(), messages = resent, "reconnected; resending unacknowledged messages");
        }
        // RELP commands in flight: (txnr, slot id, sent at).
        let mut inflight: VecDeque<(u32, u64, Instant)> = VecDeque::new();
        let mut w: Vec<u8> = Vec::new();
        loop {
            // Write what the window allows.
            w.clear();
            // Shutting down: only the messages in flight are waited for.
            // (Refilling only once half the window is free was tried: with
            // rsyslog it stalls on delayed ACKs, 40 ms per half window.)
            let sending = !self.shutting_down();
            for s in self.queue.iter_mut().filter(|_| sending) {
                while s.sent < s.bounds.len()
                    && (!self.cfg.relp || inflight.len() < self.cfg.window)
                {
                    let (a, b) = s.bounds[s.sent];
                    let msg = &s.msgs[a..b];
                    if self.cfg.relp {
                        relp::command(&mut w, txnr, "syslog", msg);
                        inflight.push_back((txnr, s.id, Instant::now()));
                        txnr = relp::next_txnr(txnr);
                    } else {
                        rfc5424::octet_counted(&mut w, msg);
                    }
                    s.sent += 1;
                }
            }
            if !w.is_empty() {
                write_all(&mut wr, &w, self.cfg.ack_timeout).await?;
                self.m.bytes_sent.inc_by(w.len() as u64);
                if !self.cfg.relp {
                    // Plain TCP: written is all there is.
                    for s in self.queue.iter_mut() {
                        s.acked = s.sent;
                    }
                    self.advance();
                }
            }
            if self.input_closed
                && (self.queue.is_empty() || inflight.is_empty() && self.shutting_down())
            {
                if self.cfg.relp {
                    let mut c = Vec::new();
                    relp::command(&mut c, txnr, "close", b"");
                    let _ = write_all(&mut wr, &c, Duration::from_secs(2)).await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), wr.shutdown()).await;
                return Ok(());
            }
            let can_take = !self.input_closed && self.queue.len() < self.cfg.max_in_flight;
            let deadline = inflight.front().map(|f| f.2 + self.cfg.ack_timeout);
            tokio::select! {
                biased;
                _ = crate::stopped(&mut sd), if !self.input_closed => self.stop_taking(),
                n = rd.read_buf(&mut rbuf) => {
                    if n? == 0 {
                        return Err(SyslogError::Closed);
                    }
                    while let Some((reply, used)) = relp::parse(&rbuf)? {
                        rbuf.drain(..used);
                        let relp::Reply::Rsp { txnr: got, code, text } = reply else {
                            return Err(SyslogError::ServerClose);
                        };
                        let Some(&(want, id, _)) = inflight.front() else {
                            return Err(SyslogError::OutOfOrder { got, want: 0 });
                        };
                        if got != want {
                            return Err(SyslogError::OutOfOrder { got, want });
                        }
                        if code != 200 {
                            return Err(SyslogError::Refused { what: "message", code, text });
                        }
                        inflight.pop_front();
                        let base = self.queue.front().map_or(0, |s| s.id);
                        if let Some(s) = self.queue.get_mut((id - base) as usize) {
                            s.acked += 1;
                        }
                    }
                    backoff.reset();
                    self.advance();
                }
                c = self.rx.recv(), if can_take => match c {
                    None => self.input_closed = true,
                    Some(c) => {
                        let s = self.slot(c);
                        self.m.chunks_sent.inc();
                        self.m.events_sent.inc_by(s.bounds.len() as u64);
                        self.queue.push_back(s);
                        self.advance();
                    }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    return Err(SyslogError::AckTimeout(self.cfg.ack_timeout));
                }
            }
        }
    }
}

async fn write_all<W: AsyncWriteExt + Unpin>(
    wr: &mut W,
    buf: &[u8],
    t: Duration,
) -> Result<(), SyslogError> {
    match transport::write_progressing(wr, buf, t).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(SyslogError::WriteTimeout(t)),
        Err(e) => Err(e.into()),
    }
}

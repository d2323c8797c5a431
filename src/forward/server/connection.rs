//! One receiver connection: owns the framing of the byte stream into Forward
//! messages, their decoding, the write, and the ack.

use super::Shared;
use super::message::{self, MessageError};
use crate::forward::protocol::encode_ack;
use crate::forward::protocol::frame::{self, Frame, FrameError};
use crate::transport::Stream;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Message(#[from] MessageError),
    #[error("idle for {0:?}; closing")]
    Idle(std::time::Duration),
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
            ConnError::Truncated(_) => "truncated",
            ConnError::Io(_) => "io",
            ConnError::Output(_) => "output",
            ConnError::Auth(crate::forward::auth::AuthError::Rejected(_)) => "auth",
            ConnError::Auth(_) => "handshake",
        }
    }
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
}

/// A message's JSON buffer is kept for the next message up to this
/// capacity (room for the JSON of the client's default 1 MiB batches);
/// only the pages written count in RSS.
const KEEP_OUT_BYTES: usize = 4 << 20;

/// How long an orderly close may take.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Connection {
    pub fn new(stream: Stream, peer: String, shared: Arc<Shared>) -> Self {
        Connection {
            stream,
            peer,
            shared,
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
            measurer: frame::Measurer::default(),
            out: Vec::new(),
        }
    }

    /// Serves until the peer closes. A protocol error ends this connection
    /// only. Every close but a broken connection's is orderly: TLS
    /// close_notify, then FIN (fluent-bit 5.1 logs an error without it).
    pub async fn run(mut self) -> Result<(), ConnError> {
        let r = self.serve().await;
        if !matches!(r, Err(ConnError::Io(_))) {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.stream.shutdown()).await;
        }
        r
    }

    async fn serve(&mut self) -> Result<(), ConnError> {
        if let Some(sec) = self.shared.cfg.security.clone() {
            let t = self
                .shared
                .cfg
                .idle_timeout
                .min(std::time::Duration::from_secs(30));
            crate::forward::auth::server(&mut self.stream, &sec, t, &mut self.buf).await?;
        }
        loop {
            let need = match self
                .measurer
                .feed(&self.buf[self.start..], self.shared.cfg.max_frame_bytes)?
            {
                Frame::Complete(n) => {
                    let (s, e) = (self.start, self.start + n);
                    self.start = e;
                    self.handle(s, e).await?;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    continue;
                }
                Frame::Incomplete(n) => n,
            };
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.buf
                .reserve(need.saturating_sub(self.buf.len()).max(64 * 1024));
            let idle = self.shared.cfg.idle_timeout;
            let n = match tokio::time::timeout(idle, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(ConnError::Idle(idle)),
                Ok(r) => r?,
            };
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

    async fn handle(&mut self, s: usize, e: usize) -> Result<(), ConnError> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.reserve((e - s) * 2);
        let frame = &self.buf[s..e];
        let decoder = message::Decoder {
            max_decompressed: self.shared.cfg.max_decompressed_bytes,
            metadata_key: self.shared.cfg.metadata_key.as_deref(),
            tag_key: self.shared.cfg.tag_key.as_deref(),
        };
        let Some(d) = decoder.decode(frame, &mut out)? else {
            self.out = out;
            return Ok(()); // heartbeat
        };
        self.shared.m.message(d.mode.as_str());
        let chunk = d.chunk.map(|c| c.to_vec());
        let events = d.events;
        let dup = chunk.as_ref().is_some_and(|c| {
            self.shared
                .dedupe
                .lock()
                .map(|g| g.contains(c))
                .unwrap_or(false)
        });
        if dup {
            self.shared.m.dedupe_hits.inc();
            debug!(peer = %self.peer, "resent chunk already written; acking without writing");
        } else if !out.is_empty() {
            let (r, back) = self.shared.writer.write(out).await;
            r.map_err(ConnError::Output)?;
            out = back;
            self.shared.m.events.inc_by(events);
            if let Some(c) = &chunk
                && let Ok(mut g) = self.shared.dedupe.lock()
            {
                g.insert(c);
            }
        }
        if out.capacity() <= KEEP_OUT_BYTES {
            self.out = out;
        }
        if let Some(c) = chunk {
            self.stream.write_all(&encode_ack(&c)).await?;
            self.stream.flush().await?;
            self.shared.m.acks.inc();
        }
        Ok(())
    }
}

//! Byte streams to a Forward server: plain TCP, or a tunnel through an HTTP
//! CONNECT proxy; TLS to the server wraps either (the same [`Stream`] type).
//! The servers' side: [`listen`], the one accept loop, and [`limits`], what
//! a server holds for peers it does not trust.

pub mod backoff;
pub mod limits;
pub mod listen;
pub mod proxy;
pub mod tcp;
pub mod tls;

use tokio::io::{AsyncRead, AsyncWrite};

/// Any bidirectional byte stream a Forward connection can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed transport stream.
pub type Stream = Box<dyn Io>;

/// Why a transport could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr}: timed out after {secs:.1}s")]
    Timeout { addr: String, secs: f64 },
    #[error("connecting to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
}

impl ConnectError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Timeout { .. } => "timeout",
            ConnectError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::ConnectionRefused => "refused",
                std::io::ErrorKind::NotFound => "resolve",
                _ => "io",
            },
        }
    }
}

/// Writes `buf` and flushes it; `Ok(false)` when the peer accepted no
/// bytes for `t`. A slow link that keeps taking bytes is not a dead one:
/// timing out the whole write instead made a 1 MB chunk over a lossy link
/// (10 % loss, 100 ms: ~30 KB/s) fail after `t` on every attempt and be
/// resent forever.
pub async fn write_progressing<W: tokio::io::AsyncWriteExt + Unpin>(
    wr: &mut W,
    buf: &[u8],
    t: std::time::Duration,
) -> std::io::Result<bool> {
    let mut off = 0;
    while off < buf.len() {
        match tokio::time::timeout(t, wr.write(&buf[off..])).await {
            Err(_) => return Ok(false),
            Ok(Ok(0)) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
            Ok(Ok(n)) => off += n,
            Ok(Err(e)) => return Err(e),
        }
    }
    // Flush: a TLS stream may hold records back until flushed.
    match tokio::time::timeout(t, wr.flush()).await {
        Err(_) => Ok(false),
        Ok(r) => r.map(|_| true),
    }
}

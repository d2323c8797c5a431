//! Byte streams to a Forward server: plain TCP, or a tunnel through an HTTP
//! CONNECT proxy; TLS to the server wraps either (the same [`Stream`] type).
//! The servers' side: [`listen`], the one accept loop, and [`limits`], what
//! a server holds for peers it does not trust.

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

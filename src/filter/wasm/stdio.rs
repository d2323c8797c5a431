//! A guest's stdout and stderr, written to the log line by line (bounded:
//! long lines are clipped, a burst is rate-limited).

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Longest line logged; the rest is dropped.
const MAX_LINE: usize = 4096;

/// At most `n` characters of `s`.
pub fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

struct Lines {
    filter: Arc<str>,
    stream: &'static str,
    buf: Vec<u8>,
    limit: crate::ops::logging::RateLimit,
}

impl Lines {
    fn write(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' {
                self.emit();
            } else if self.buf.len() < MAX_LINE {
                self.buf.push(b);
            }
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        if let Some(n) = self.limit.allow() {
            tracing::info!(
                filter = &*self.filter,
                stream = self.stream,
                suppressed = n,
                "{line}"
            );
        }
    }
}

/// The stdout or stderr of one filter instance.
#[derive(Clone)]
pub struct LogOutput(Arc<Mutex<Lines>>);

impl LogOutput {
    pub fn new(filter: Arc<str>, stream: &'static str) -> Self {
        LogOutput(Arc::new(Mutex::new(Lines {
            filter,
            stream,
            buf: Vec::new(),
            limit: crate::ops::logging::RateLimit::default(),
        })))
    }

    fn write(&self, data: &[u8]) {
        let mut g = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.write(data);
    }
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for LogOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogOutput {
    fn write(&mut self, buf: Bytes) -> Result<(), StreamError> {
        LogOutput::write(self, &buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogOutput {
    async fn ready(&mut self) {}
}

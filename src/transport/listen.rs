//! The one accept loop of every server this program runs (the Forward
//! receiver and the webhook source): connection limit, optional TLS with a
//! handshake deadline, and shutdown. What a connection then speaks is the
//! caller's `handle`.

use super::Stream;
use super::tls::ReloadingAcceptor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

/// What happens to a new connection when `max_connections` are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Accept it and close it at once (counted as `too_many_connections`).
    Refuse,
    /// Do not accept until one closes (it waits in the kernel's backlog).
    Wait,
}

/// What a server counts about its connections.
pub trait Observer: Send + Sync + 'static {
    /// A connection refused before its handler ran: `too_many_connections`
    /// or `tls` (handshake failed or timed out).
    fn refused(&self, reason: &'static str);
    /// A connection was accepted (before TLS).
    fn opened(&self) {}
    /// An accepted connection ended (after its handler, or a TLS failure).
    fn closed(&self) {}
    /// May a per-connection refusal be logged now? `Some(n)`: yes, `n`
    /// were held back since the last one (a flood of bad connections must
    /// not flood the log).
    fn allow_log(&self) -> Option<u64> {
        Some(0)
    }
}

/// A bound listener and how to accept on it.
pub struct Listener {
    /// The server's name in log lines (`receiver`, `webhook`).
    pub name: &'static str,
    /// The setting that sets the limit, for the refusal's log line.
    pub limit_key: &'static str,
    pub listener: TcpListener,
    pub tls: Option<Arc<ReloadingAcceptor>>,
    pub max_connections: usize,
    pub when_full: WhenFull,
    pub tls_timeout: Duration,
    /// Disable Nagle's algorithm on accepted sockets (acks are small).
    pub nodelay: bool,
}

/// Binds `addr`; an error names the setting `key` it came from.
pub async fn bind(key: &str, addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {key} = {addr:?}: {e}")))
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `shutdown` turns true; each connection (after TLS)
    /// runs `handle(stream, peer, shutdown)` in a task of its own.
    pub async fn serve<O, H, F>(self, obs: Arc<O>, mut shutdown: watch::Receiver<bool>, handle: H)
    where
        O: Observer,
        H: Fn(Stream, SocketAddr, watch::Receiver<bool>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        info!(listen = %self.local_addr().map(|a| a.to_string()).unwrap_or_default(), tls = self.tls.is_some(), "{} listening", self.name);
        let handle = Arc::new(handle);
        let limit = Arc::new(Semaphore::new(self.max_connections));
        loop {
            let waited = match self.when_full {
                WhenFull::Refuse => None,
                WhenFull::Wait => tokio::select! {
                    p = limit.clone().acquire_owned() => match p { Ok(p) => Some(p), Err(_) => return },
                    _ = crate::stopped(&mut shutdown) => return,
                },
            };
            let (sock, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "{}: accept failed", self.name);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = crate::stopped(&mut shutdown) => return,
            };
            let permit = match waited {
                Some(p) => p,
                None => match limit.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        obs.refused("too_many_connections");
                        if let Some(n) = obs.allow_log() {
                            warn!(%peer, max = self.max_connections, suppressed = n, "{}: connection refused: {} reached", self.name, self.limit_key);
                        }
                        drop(sock);
                        continue;
                    }
                },
            };
            if self.nodelay {
                let _ = sock.set_nodelay(true);
            }
            obs.opened();
            let (obs, handle, sd) = (obs.clone(), handle.clone(), shutdown.clone());
            let (name, timeout) = (self.name, self.tls_timeout);
            let acceptor = self.tls.as_ref().map(|a| a.acceptor());
            tokio::spawn(async move {
                let _permit = permit;
                let stream: Stream = match acceptor {
                    None => Box::new(sock),
                    Some(acc) => match tokio::time::timeout(timeout, acc.accept(sock)).await {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            obs.refused("tls");
                            if let Some(n) = obs.allow_log() {
                                warn!(%peer, error = %e, suppressed = n, "{name}: TLS handshake failed");
                            }
                            obs.closed();
                            return;
                        }
                        Err(_) => {
                            obs.refused("tls");
                            if let Some(n) = obs.allow_log() {
                                warn!(%peer, suppressed = n, "{name}: TLS handshake timed out");
                            }
                            obs.closed();
                            return;
                        }
                    },
                };
                debug!(%peer, "{name}: connection accepted");
                handle(stream, peer, sd).await;
                obs.closed();
            });
        }
    }
}

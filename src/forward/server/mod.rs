//! The receiver (`audit-forwarder receive`): accepts Forward connections and
//! writes each record as one JSON line, acking only after the line is written
//! and flushed.

pub mod connection;
pub mod dedupe;
pub mod message;
pub mod writer;

use crate::ops::metrics::ReceiverMetrics;
use connection::Connection;
use dedupe::Dedupe;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};
pub use writer::{Output, Writer};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: String,
    pub max_frame_bytes: usize,
    pub max_decompressed_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub dedupe_window: usize,
    pub output: Output,
    /// Require the handshake (spec §Handshake Messages).
    pub security: Option<crate::forward::auth::ServerSecurity>,
    /// TLS (optionally requiring client certificates).
    pub tls: Option<crate::transport::tls::ServerTls>,
}

/// Shared by every connection.
pub struct Shared {
    pub cfg: ServerConfig,
    pub writer: Writer,
    pub dedupe: Mutex<Dedupe>,
    pub m: ReceiverMetrics,
}

/// A bound receiver, ready to serve.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<crate::transport::tls::ReloadingAcceptor>>,
}

impl Server {
    pub async fn bind(cfg: ServerConfig, m: ReceiverMetrics) -> std::io::Result<Server> {
        let listener = TcpListener::bind(&cfg.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("binding receive.listen = {:?}: {e}", cfg.listen),
            )
        })?;
        let tls = match &cfg.tls {
            Some(t) => Some(Arc::new(
                crate::transport::tls::ReloadingAcceptor::new(t.clone())
                    .map_err(std::io::Error::other)?,
            )),
            None => None,
        };
        let writer = Writer::start(cfg.output.clone())?;
        let shared = Arc::new(Shared {
            dedupe: Mutex::new(Dedupe::new(cfg.dedupe_window)),
            cfg,
            writer,
            m,
        });
        Ok(Server {
            listener,
            shared,
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `shutdown` turns true.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        let limit = Arc::new(Semaphore::new(self.shared.cfg.max_connections));
        info!(listen = %self.local_addr().map(|a| a.to_string()).unwrap_or_default(), "receiver listening");
        loop {
            let (sock, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = crate::stopped(&mut shutdown) => break,
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                self.shared.m.rejected("too_many_connections");
                warn!(%peer, max = self.shared.cfg.max_connections, "connection refused: receive.max_connections reached");
                drop(sock);
                continue;
            };
            let _ = sock.set_nodelay(true);
            self.shared.m.connections.inc();
            let shared = self.shared.clone();
            let tls = self.tls.as_ref().map(|a| a.acceptor());
            tokio::spawn(async move {
                shared.m.connections_active.inc();
                debug!(%peer, "connection accepted");
                let stream: crate::transport::Stream = match tls {
                    None => Box::new(sock),
                    Some(acc) => {
                        match tokio::time::timeout(Duration::from_secs(30), acc.accept(sock)).await
                        {
                            Ok(Ok(s)) => Box::new(s),
                            Ok(Err(e)) => {
                                shared.m.rejected("tls");
                                warn!(%peer, error = %e, "TLS handshake failed");
                                shared.m.connections_active.dec();
                                return;
                            }
                            Err(_) => {
                                shared.m.rejected("tls");
                                warn!(%peer, "TLS handshake timed out");
                                shared.m.connections_active.dec();
                                return;
                            }
                        }
                    }
                };
                let r = Connection::new(stream, peer.to_string(), shared.clone())
                    .run()
                    .await;
                if let Err(e) = r {
                    shared.m.rejected(e.reason());
                    warn!(%peer, error = %e, "connection closed");
                }
                shared.m.connections_active.dec();
                drop(permit);
            });
        }
    }
}

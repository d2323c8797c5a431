//! The receiver (`audit-forwarder receive`): accepts Forward connections and
//! writes each record as one JSON line, acking only after the line is written
//! and flushed.

pub mod connection;
pub mod dedupe;
pub mod message;
pub mod streams;
pub mod writer;

use crate::ops::logging::RateLimit;
use crate::ops::metrics::ReceiverMetrics;
use crate::transport::limits::Budget;
use crate::transport::listen::{self, Listener, Observer};
use crate::transport::tls::ReloadingAcceptor;
use connection::Connection;
use dedupe::Dedupe;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::warn;
pub use writer::{Output, Writer};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: String,
    pub max_frame_bytes: usize,
    pub max_decompressed_bytes: usize,
    pub max_connections: usize,
    /// Connections from one source address.
    pub max_connections_per_address: usize,
    /// Everything held for peers, across connections (SECURITY.md).
    pub memory_budget_bytes: usize,
    /// TLS handshake, and the Forward handshake when a key is required.
    pub handshake_timeout: Duration,
    /// Accept to the first message, for a connection not authenticated.
    pub first_message_timeout: Duration,
    /// A message in progress must arrive at this many bytes/s (0: off).
    pub min_transfer_rate: u64,
    pub idle_timeout: Duration,
    pub dedupe_window: usize,
    /// Write each entry's Forward metadata under this key (`None`: drop).
    pub metadata_key: Option<String>,
    /// Write each record's Forward tag under this key (`None`: not written).
    pub tag_key: Option<String>,
    pub output: Output,
    /// Require the handshake (spec §Handshake Messages).
    pub security: Option<crate::forward::auth::ServerSecurity>,
    /// TLS (optionally requiring client certificates).
    pub tls: Option<crate::transport::tls::ServerTls>,
    /// Where the record of what was written per stream is kept across
    /// restarts (`None`: in memory only).
    pub state_dir: Option<std::path::PathBuf>,
    /// Holes open this long are logged as gaps.
    pub gap_timeout: Duration,
}

/// Shared by every connection.
pub struct Shared {
    pub cfg: ServerConfig,
    pub writer: Writer,
    pub dedupe: Mutex<Dedupe>,
    /// What was written per sender stream and source (exactly once).
    pub streams: Arc<streams::Streams>,
    /// Memory held for peers, across all connections.
    pub budget: Arc<Budget>,
    pub m: ReceiverMetrics,
    /// Per-connection errors: the first few of each 10 s in full, then a count.
    pub warn: Mutex<RateLimit>,
}

/// A bound receiver, ready to serve.
pub struct Server {
    listener: Listener,
    shared: Arc<Shared>,
}

/// The receiver's connection counts.
impl Observer for Shared {
    fn refused(&self, reason: &'static str) {
        self.m.rejected(reason);
    }
    fn opened(&self) {
        self.m.connections.inc();
        self.m.connections_active.inc();
    }
    fn closed(&self) {
        self.m.connections_active.dec();
    }
    fn allow_log(&self) -> Option<u64> {
        self.warn.lock().ok().and_then(|mut w| w.allow())
    }
}

impl Server {
    pub async fn bind(cfg: ServerConfig, m: ReceiverMetrics) -> std::io::Result<Server> {
        let listener = listen::bind("receive.listen", &cfg.listen).await?;
        let tls = match &cfg.tls {
            Some(t) => Some(Arc::new(
                ReloadingAcceptor::new(t.clone()).map_err(std::io::Error::other)?,
            )),
            None => None,
        };
        let streams = Arc::new(match &cfg.state_dir {
            Some(d) => streams::Streams::open(d).map_err(std::io::Error::other)?,
            None => streams::Streams::in_memory(),
        });
        let writer = Writer::start(cfg.output.clone(), Some(streams.clone()))?;
        let listener = Listener {
            name: "receiver",
            limit_key: "receive.max_connections",
            listener,
            tls_proves: cfg.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()),
            tls,
            max_connections: cfg.max_connections,
            max_per_address: cfg.max_connections_per_address,
            handshake_timeout: cfg.handshake_timeout,
            nodelay: true,
        };
        let shared = Arc::new(Shared {
            dedupe: Mutex::new(Dedupe::new(cfg.dedupe_window)),
            budget: Budget::new(cfg.memory_budget_bytes),
            streams,
            warn: Mutex::new(RateLimit::with_burst(10, Duration::from_secs(10))),
            cfg,
            writer,
            m,
        });
        Ok(Server { listener, shared })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `shutdown` turns true.
    pub async fn serve(self, shutdown: watch::Receiver<bool>) {
        tokio::spawn(watch_holes(self.shared.clone(), shutdown.clone()));
        let shared = self.shared.clone();
        self.listener
            .serve(self.shared, shutdown, move |a| {
                let shared = shared.clone();
                async move {
                    let peer = a.peer;
                    let r = Connection::new(a.stream, peer.to_string(), shared.clone(), a.slot)
                        .run()
                        .await;
                    if let Err(e) = r {
                        // Nothing of the failed message was written or
                        // acknowledged: the sender keeps it and retries.
                        shared.m.rejected(e.reason());
                        let allowed = shared.warn.lock().ok().and_then(|mut w| w.allow());
                        if let Some(suppressed) = allowed {
                            warn!(%peer, error = %e, reason = e.reason(), suppressed, "connection closed");
                        }
                    }
                }
            })
            .await
    }
}

/// Every few seconds: the streams' completeness in the metrics, and each
/// hole open longer than `gap_timeout` logged once as a GAP.
async fn watch_holes(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let rep = shared.streams.holes(shared.cfg.gap_timeout);
        let m = &shared.m;
        m.streams.set(rep.streams as i64);
        m.open_holes.set(rep.open as i64);
        m.oldest_hole_age.set(rep.oldest_age_secs as i64);
        for (stream, source, from, to, age) in rep.new_gaps {
            m.gaps.inc();
            warn!(%stream, %source, from, to, bytes = to - from, age_secs = age,
                "GAP: a source range of this stream was not received although later ones were; it stays counted until the sender resends it");
        }
        tokio::select! {
            _ = tokio::time::sleep(HOLE_CHECK) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

/// How often holes are checked.
const HOLE_CHECK: Duration = Duration::from_secs(2);

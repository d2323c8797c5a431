//! The one accept loop of every server this program runs (the Forward
//! receiver and the webhook source): connection slots, optional TLS with a
//! handshake deadline, and shutdown. What a connection then speaks is the
//! caller's `handle`.
//!
//! Slots: `max_connections` in all and `max_per_address` from one source
//! address. A connection that has not yet proven itself (authenticated, or
//! done one useful exchange where no authentication is configured) can be
//! *evicted*: when a new connection finds its group full, the oldest
//! unproven one in that group is closed to make room. Only when every
//! connection in the group has proven itself is the new one refused. Idle
//! or slow unauthenticated connections therefore cannot keep a real client
//! out, however many an attacker opens (SECURITY.md, "Limits").

use super::Stream;
use super::tls::ReloadingAcceptor;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

/// What a server counts about its connections.
pub trait Observer: Send + Sync + 'static {
    /// A connection refused or closed by the accept loop:
    /// `too_many_connections`, `too_many_from_address`, `evicted`, or `tls`
    /// (handshake failed or timed out).
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
    /// The TLS handshake verifies client certificates: a connection that
    /// completes it has proven itself.
    pub tls_proves: bool,
    pub max_connections: usize,
    pub max_per_address: usize,
    pub handshake_timeout: Duration,
    /// Disable Nagle's algorithm on accepted sockets (acks are small).
    pub nodelay: bool,
}

/// An accepted connection, handed to the server's handler.
pub struct Accepted {
    pub stream: Stream,
    pub peer: SocketAddr,
    pub shutdown: watch::Receiver<bool>,
    /// Its slot; [`Slot::prove`] protects it from eviction.
    pub slot: Slot,
}

/// Binds `addr`; an error names the setting `key` it came from.
pub async fn bind(key: &str, addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {key} = {addr:?}: {e}")))
}

#[derive(Default)]
struct Table {
    next: u64,
    /// Every open connection, by id (ids grow: lower is older).
    live: HashMap<u64, IpAddr>,
    per_address: HashMap<IpAddr, usize>,
    /// The unproven ones, oldest first, with their eviction signal.
    unproven: BTreeMap<u64, (IpAddr, oneshot::Sender<()>)>,
}

impl Table {
    fn release(&mut self, id: u64) {
        self.unproven.remove(&id);
        if let Some(a) = self.live.remove(&id)
            && let Some(n) = self.per_address.get_mut(&a)
        {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&a);
            }
        }
    }

    /// Closes the oldest unproven connection (from `from`, if given).
    fn evict(&mut self, from: Option<IpAddr>) -> bool {
        let victim = self
            .unproven
            .iter()
            .find(|(_, (a, _))| from.is_none_or(|f| *a == f))
            .map(|(id, _)| *id);
        let Some(id) = victim else { return false };
        if let Some((_, tx)) = self.unproven.remove(&id) {
            let _ = tx.send(());
        }
        self.release(id);
        true
    }
}

/// The connection slots of one server.
struct Slots {
    table: Mutex<Table>,
    max: usize,
    max_per_address: usize,
}

/// One connection's slot; freed when dropped.
pub struct Slot {
    id: u64,
    slots: Arc<Slots>,
    proven: AtomicBool,
}

impl Slot {
    /// The connection has proven itself: it is no longer evicted to make
    /// room for others.
    pub fn prove(&self) {
        if !self.proven.swap(true, Ordering::AcqRel)
            && let Ok(mut t) = self.slots.table.lock()
        {
            t.unproven.remove(&self.id);
        }
    }

    pub fn is_proven(&self) -> bool {
        self.proven.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut t) = self.slots.table.lock() {
            t.release(self.id);
        }
    }
}

impl Slots {
    /// A slot for a connection from `addr`, evicting an unproven connection
    /// if need be; `Err(reason)` when there is no room.
    fn admit(
        self: &Arc<Self>,
        addr: IpAddr,
    ) -> Result<(Slot, oneshot::Receiver<()>, bool), &'static str> {
        let mut t = self.table.lock().map_err(|_| "internal")?;
        let mut evicted = false;
        if t.per_address.get(&addr).copied().unwrap_or(0) >= self.max_per_address {
            if !t.evict(Some(addr)) {
                return Err("too_many_from_address");
            }
            evicted = true;
        }
        if t.live.len() >= self.max {
            if !t.evict(None) {
                return Err("too_many_connections");
            }
            evicted = true;
        }
        let id = t.next;
        t.next += 1;
        t.live.insert(id, addr);
        *t.per_address.entry(addr).or_default() += 1;
        let (tx, rx) = oneshot::channel();
        t.unproven.insert(id, (addr, tx));
        let slot = Slot {
            id,
            slots: self.clone(),
            proven: AtomicBool::new(false),
        };
        Ok((slot, rx, evicted))
    }
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `shutdown` turns true; each connection (after TLS)
    /// runs `handle` in a task of its own.
    pub async fn serve<O, H, F>(self, obs: Arc<O>, mut shutdown: watch::Receiver<bool>, handle: H)
    where
        O: Observer,
        H: Fn(Accepted) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        info!(listen = %self.local_addr().map(|a| a.to_string()).unwrap_or_default(), tls = self.tls.is_some(), "{} listening", self.name);
        let handle = Arc::new(handle);
        let slots = Arc::new(Slots {
            table: Mutex::new(Table::default()),
            max: self.max_connections.max(1),
            max_per_address: self.max_per_address.max(1),
        });
        loop {
            let (sock, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors, usually: back off briefly.
                        warn!(error = %e, "{}: accept failed", self.name);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = crate::stopped(&mut shutdown) => return,
            };
            let (slot, mut evicted, made_room) = match slots.admit(peer.ip()) {
                Ok(x) => x,
                Err(reason) => {
                    obs.refused(reason);
                    if let Some(n) = obs.allow_log() {
                        let key = if reason == "too_many_from_address" {
                            "the per-address limit"
                        } else {
                            self.limit_key
                        };
                        warn!(%peer, max = self.max_connections, max_per_address = self.max_per_address, suppressed = n,
                            "{}: connection refused: {key} reached and every connection is authenticated", self.name);
                    }
                    drop(sock);
                    continue;
                }
            };
            if made_room {
                obs.refused("evicted");
                if let Some(n) = obs.allow_log() {
                    warn!(%peer, suppressed = n, "{}: connection slots full: closed the oldest unauthenticated connection to admit a new one", self.name);
                }
            }
            if self.nodelay {
                let _ = sock.set_nodelay(true);
            }
            obs.opened();
            let (obs, handle, sd) = (obs.clone(), handle.clone(), shutdown.clone());
            let (name, timeout, proves) = (self.name, self.handshake_timeout, self.tls_proves);
            let acceptor = self.tls.as_ref().map(|a| a.acceptor());
            tokio::spawn(async move {
                let work = async {
                    let stream: Stream = match acceptor {
                        None => Box::new(sock),
                        Some(acc) => match tokio::time::timeout(timeout, acc.accept(sock)).await {
                            Ok(Ok(s)) => {
                                if proves {
                                    slot.prove();
                                }
                                Box::new(s)
                            }
                            Ok(Err(e)) => {
                                obs.refused("tls");
                                if let Some(n) = obs.allow_log() {
                                    warn!(%peer, error = %e, suppressed = n, "{name}: TLS handshake failed");
                                }
                                return;
                            }
                            Err(_) => {
                                obs.refused("tls");
                                if let Some(n) = obs.allow_log() {
                                    warn!(%peer, suppressed = n, "{name}: TLS handshake timed out after {timeout:?}");
                                }
                                return;
                            }
                        },
                    };
                    debug!(%peer, "{name}: connection accepted");
                    handle(Accepted {
                        stream,
                        peer,
                        shutdown: sd,
                        slot,
                    })
                    .await;
                };
                tokio::select! {
                    _ = work => {}
                    Ok(()) = &mut evicted => debug!(%peer, "{name}: evicted"),
                }
                obs.closed();
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max: usize, per: usize) -> Arc<Slots> {
        Arc::new(Slots {
            table: Mutex::new(Table::default()),
            max,
            max_per_address: per,
        })
    }

    #[test]
    fn the_oldest_unproven_connection_makes_room_and_proven_ones_stay() {
        let s = slots(2, 10);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let (s1, mut e1, _) = s.admit(a).unwrap();
        let (s2, mut e2, _) = s.admit(a).unwrap();
        s2.prove();
        let (s3, mut e3, made_room) = s.admit(a).unwrap();
        assert!(made_room);
        assert_eq!(e1.try_recv(), Ok(()), "the oldest unproven one goes");
        assert!(e2.try_recv().is_err());
        s3.prove();
        // Every one proven: refused.
        assert_eq!(s.admit(a).err(), Some("too_many_connections"));
        drop(s1); // already released by the eviction: no double count
        assert_eq!(s.admit(a).err(), Some("too_many_connections"));
        drop(s2);
        assert!(s.admit(a).is_ok());
        assert!(e3.try_recv().is_err());
    }

    #[test]
    fn one_address_is_capped_without_touching_others() {
        let s = slots(10, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let (_b1, mut eb, _) = s.admit(b).unwrap();
        let (x1, _, _) = s.admit(a).unwrap();
        let (x2, _, _) = s.admit(a).unwrap();
        x1.prove();
        x2.prove();
        assert_eq!(s.admit(a).err(), Some("too_many_from_address"));
        assert!(eb.try_recv().is_err(), "another address's connection stays");
        drop(x1);
        let again = s.admit(a);
        assert!(again.is_ok());
        let t = s.table.lock().unwrap();
        assert_eq!(t.live.len(), 3);
        assert_eq!(t.per_address[&a], 2);
    }
}

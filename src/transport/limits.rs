//! What a server holds on behalf of peers it does not trust: one memory
//! budget across all connections, and the minimum transfer rate of a frame
//! or body in progress (SECURITY.md, "Limits").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// One memory budget for everything a server holds on behalf of its peers
/// (partial frames, decompressed messages, request bodies) across all
/// connections. Connections that have not proven themselves
/// (authenticated, or with no authentication configured: one message
/// decoded) share at most half of it, so they cannot crowd out the
/// connections that have.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    unproven: AtomicUsize,
    peak: AtomicUsize,
    freed: Notify,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            unproven: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most ever held at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// A connection's account, empty and unproven.
    pub fn account(self: &Arc<Self>) -> Held {
        Held {
            budget: self.clone(),
            n: AtomicUsize::new(0),
            proven: AtomicBool::new(false),
        }
    }

    fn try_add(&self, n: usize, proven: bool) -> bool {
        if !proven {
            let share = self.limit / 2;
            let ok = self
                .unproven
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                    u.checked_add(n).filter(|&v| v <= share)
                })
                .is_ok();
            if !ok {
                return false;
            }
        }
        match self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&v| v <= self.limit)
            }) {
            Ok(before) => {
                self.peak.fetch_max(before + n, Ordering::Relaxed);
                true
            }
            Err(_) => {
                if !proven {
                    self.unproven.fetch_sub(n, Ordering::AcqRel);
                }
                false
            }
        }
    }

    /// Adds `n` even over the limit (memory already allocated).
    fn force_add(&self, n: usize, proven: bool) {
        if !proven {
            self.unproven.fetch_add(n, Ordering::AcqRel);
        }
        let before = self.used.fetch_add(n, Ordering::AcqRel);
        self.peak.fetch_max(before + n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize, proven: bool) {
        if n == 0 {
            return;
        }
        if !proven {
            self.unproven.fetch_sub(n, Ordering::AcqRel);
        }
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.freed.notify_waiters();
    }
}

/// What one connection holds of a [`Budget`]; returned when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    n: AtomicUsize,
    proven: AtomicBool,
}

impl Held {
    /// Bytes this connection holds.
    pub fn get(&self) -> usize {
        self.n.load(Ordering::Relaxed)
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    pub fn is_proven(&self) -> bool {
        self.proven.load(Ordering::Relaxed)
    }

    /// The connection has proven itself: what it holds (and will hold)
    /// counts against the whole budget, no longer against the unproven share.
    pub fn prove(&self) {
        if !self.proven.swap(true, Ordering::AcqRel) {
            self.budget.unproven.fetch_sub(self.get(), Ordering::AcqRel);
        }
    }

    /// Sets the holding to `total` bytes; growing fails (nothing changes)
    /// when the budget has no room for it.
    pub fn try_set(&self, total: usize) -> bool {
        let cur = self.get();
        if total > cur {
            if !self.budget.try_add(total - cur, self.is_proven()) {
                return false;
            }
        } else {
            self.budget.sub(cur - total, self.is_proven());
        }
        self.n.store(total, Ordering::Relaxed);
        true
    }

    /// Sets the holding to `total` bytes, over the budget if need be: for
    /// memory already allocated, whose size is bounded by memory that was
    /// charged before it (a decoded message's JSON).
    pub fn force_set(&self, total: usize) {
        let cur = self.get();
        if total > cur {
            self.budget.force_add(total - cur, self.is_proven());
        } else {
            self.budget.sub(cur - total, self.is_proven());
        }
        self.n.store(total, Ordering::Relaxed);
    }

    /// [`Held::try_set`], waiting for other connections to return memory
    /// until `deadline`; false if there was still no room then.
    pub async fn wait_set(&self, total: usize, deadline: tokio::time::Instant) -> bool {
        loop {
            let freed = self.budget.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_set(total) {
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return false;
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.sub(self.get(), self.is_proven());
    }
}

/// A frame or body in progress must arrive at `min_bytes_per_sec` or more,
/// measured over windows of `window` (so a slowloris client sending a byte
/// every few seconds is closed within one window), however long the whole
/// transfer takes.
#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    pub min_bytes_per_sec: u64,
    pub window: Duration,
    started: Option<Instant>,
    got: u64,
}

impl MinRate {
    pub fn new(min_bytes_per_sec: u64, window: Duration) -> MinRate {
        MinRate {
            min_bytes_per_sec,
            window,
            started: None,
            got: 0,
        }
    }

    /// Bytes a window must bring.
    fn quota(&self) -> u64 {
        self.min_bytes_per_sec
            .saturating_mul(self.window.as_secs().max(1))
    }

    /// A transfer starts (or goes on): counts `n` bytes; a window that met
    /// its quota starts a new one.
    pub fn progress(&mut self, n: usize, now: Instant) {
        self.started.get_or_insert(now);
        self.got += n as u64;
        if self.got >= self.quota() {
            self.started = Some(now);
            self.got = 0;
        }
    }

    /// This side stopped reading for a while: a new window from `now` if a
    /// transfer is in progress.
    pub fn restart(&mut self, now: Instant) {
        if self.started.is_some() {
            self.started = Some(now);
            self.got = 0;
        }
    }

    /// Nothing in progress any more.
    pub fn idle(&mut self) {
        self.started = None;
        self.got = 0;
    }

    /// When the current window ends without its quota (`None`: nothing in
    /// progress, or no minimum rate).
    pub fn deadline(&self) -> Option<Instant> {
        if self.min_bytes_per_sec == 0 {
            return None;
        }
        self.started.map(|s| s + self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unproven_connections_share_half_and_proven_ones_the_rest() {
        let b = Budget::new(100);
        let a = b.account();
        let c = b.account();
        assert!(a.try_set(40));
        assert!(!c.try_set(11), "unproven share is 50");
        assert!(c.try_set(10));
        let p = b.account();
        p.prove();
        assert!(p.try_set(50));
        assert!(!p.try_set(51), "the whole budget is 100");
        assert_eq!(b.used(), 100);
        // Proving moves a holding out of the unproven share.
        a.prove();
        let d = b.account();
        assert!(!d.try_set(1), "the budget is full");
        drop(p);
        assert!(d.try_set(40));
        assert_eq!(b.used(), 90);
        drop((a, c, d));
        assert_eq!(b.used(), 0);
        assert_eq!(b.unproven.load(Ordering::Relaxed), 0);
        assert_eq!(b.peak(), 100);
    }

    #[test]
    fn forced_holdings_count_and_shrinking_returns_them() {
        let b = Budget::new(10);
        let a = b.account();
        a.force_set(30);
        assert_eq!(b.used(), 30);
        let c = b.account();
        c.prove();
        assert!(!c.try_set(1));
        a.force_set(5);
        assert!(c.try_set(5));
        assert!(a.try_set(0));
        assert_eq!(b.used(), 5);
    }

    #[test]
    fn a_window_must_bring_its_quota() {
        let t0 = Instant::now();
        let mut r = MinRate::new(100, Duration::from_secs(10));
        assert_eq!(r.deadline(), None);
        r.progress(1, t0);
        assert_eq!(r.deadline(), Some(t0 + Duration::from_secs(10)));
        // A trickle does not move the deadline.
        r.progress(500, t0 + Duration::from_secs(5));
        assert_eq!(r.deadline(), Some(t0 + Duration::from_secs(10)));
        // The quota (1,000 bytes) reached: a new window from now.
        let t1 = t0 + Duration::from_secs(6);
        r.progress(499, t1);
        assert_eq!(r.deadline(), Some(t1 + Duration::from_secs(10)));
        r.idle();
        assert_eq!(r.deadline(), None);
        assert_eq!(MinRate::new(0, Duration::from_secs(1)).deadline(), None);
    }
}

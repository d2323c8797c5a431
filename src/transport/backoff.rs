//! Exponential backoff with jitter between reconnects and retries.

use std::time::Duration;

/// Doubles from `min` to `max`; each wait is drawn from [d/2, d] (never
/// below `min`), so many senders that failed together do not retry
/// together.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    cur: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, cur: min }
    }

    pub fn next_wait(&mut self) -> Duration {
        let d = self.cur;
        self.cur = (self.cur * 2).min(self.max);
        let jitter = rand::random::<f64>();
        self.min.max(d.mul_f64(0.5 + jitter / 2.0))
    }

    pub fn reset(&mut self) {
        self.cur = self.min;
    }
}

//! Remembers recently written chunk ids so a chunk resent after a lost ack
//! is acknowledged again but not written twice (ARCHITECTURE.md invariant 5).

use std::collections::{HashSet, VecDeque};

/// A bounded set of chunk ids, oldest evicted first.
#[derive(Debug)]
pub struct Dedupe {
    cap: usize,
    set: HashSet<Vec<u8>>,
    order: VecDeque<Vec<u8>>,
}

impl Dedupe {
    pub fn new(cap: usize) -> Self {
        Dedupe {
            cap,
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    pub fn contains(&self, id: &[u8]) -> bool {
        self.set.contains(id)
    }

    pub fn insert(&mut self, id: &[u8]) {
        if self.cap == 0 || self.set.contains(id) {
            return;
        }
        if self.order.len() >= self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_vec());
        self.order.push_back(id.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_window() {
        let mut d = Dedupe::new(2);
        d.insert(b"a");
        d.insert(b"b");
        assert!(d.contains(b"a"));
        d.insert(b"c");
        assert!(!d.contains(b"a"));
        assert!(d.contains(b"b") && d.contains(b"c"));
    }
}

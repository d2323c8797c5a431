//! One event on its way through an output's filters: its encoded record,
//! what the next filter sees of it ([`Seen`]), and the pool that recycles
//! their buffers between batches.

use super::wasm::{Event, Span};
use crate::record::encode::{FieldSpans, Fields, TopEntry};

/// One event on its way through the chain.
pub struct Item {
    /// The encoded record (what is forwarded).
    pub rec: Vec<u8>,
    /// What the next filter sees; `None` while it must be derived from `rec`.
    pub(super) seen: Option<Seen>,
    /// Where `rec`'s top-level entries start, then its end (from the
    /// transcoder), so `splice` need not parse it; empty when unknown.
    pub(super) top: Vec<u32>,
    /// The transcoder's [`key_bits`] of the record's top-level keys (of a
    /// superset, after the policy removed some); `None` when unknown.
    pub(super) keys: Option<u128>,
    pub dropped: bool,
}

impl Item {
    /// An event whose JSON text is `json` (the line, or the record as JSON
    /// after the policy stripped it) and whose fields are `f`.
    pub fn new(rec: Vec<u8>, json: &str, f: &Fields<'_>) -> Item {
        Item {
            rec,
            seen: Some(Seen::new(json, f)),
            top: Vec::new(),
            keys: None,
            dropped: false,
        }
    }
}

/// Where a record's top-level entries are, when the code that wrote it
/// knows: [`crate::record::splice::set_fields`] then need not parse it.
#[derive(Clone, Copy)]
pub enum Positions<'a> {
    Unknown,
    /// The transcoder's entries.
    Entries(&'a [TopEntry]),
    /// Where each entry starts, then the end (as the policy writes them).
    Starts(&'a [u32]),
}

/// Buffers of emitted items, kept for the next batch so that an event
/// costs no allocation on its way into the chain.
#[derive(Default)]
pub struct Pool {
    recs: Vec<Vec<u8>>,
    texts: Vec<String>,
    groups: Vec<Vec<(u32, u32)>>,
    tops: Vec<Vec<u32>>,
    /// Capacity of the buffers kept.
    held: usize,
}

/// Buffers larger than this are freed rather than kept,
const POOL_BUFFER_MAX: usize = 1 << 20;
/// and at most this many bytes of them are kept.
const POOL_BYTES: usize = 2 << 20;
/// At most this many buffers of each kind are kept.
const POOL_MAX: usize = 1024;

impl Pool {
    /// Makes the empty buffer `v` hold at least `n` bytes: the smallest
    /// pooled buffer that does, else a new one (as
    /// [`crate::record::buf::fresh_capacity`]). A buffer taken by size, not the
    /// last one given back: a big event's buffer waits for the next big
    /// event instead of being dropped for a small one, and its pages are not
    /// returned to the kernel and faulted in again.
    pub fn fit(&mut self, v: &mut Vec<u8>, n: usize) {
        debug_assert!(v.is_empty());
        if v.capacity() >= n {
            return;
        }
        // The last one first: events of a log are mostly of one size.
        let best = match self.recs.last() {
            Some(b) if b.capacity() >= n && b.capacity() <= 2 * n => Some(self.recs.len() - 1),
            _ => self
                .recs
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= n)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i),
        };
        match best {
            Some(i) => {
                let b = self.recs.swap_remove(i);
                self.held -= b.capacity();
                let old = std::mem::replace(v, b);
                if old.capacity() > 0 {
                    self.give(old);
                }
            }
            None => {
                // None fits: the smallest goes, so buffers smaller than
                // every recent event do not fill the pool for good.
                if let Some(i) = (0..self.recs.len()).min_by_key(|&i| self.recs[i].capacity()) {
                    self.held -= self.recs.swap_remove(i).capacity();
                }
                crate::record::buf::fresh_capacity(v, n)
            }
        }
    }

    fn give(&mut self, mut b: Vec<u8>) {
        // An empty buffer (its record became a batch) holds nothing.
        if b.capacity() > 0 && self.keeps(b.capacity(), self.recs.len()) {
            self.held += b.capacity();
            b.clear();
            self.recs.push(b);
        }
    }

    /// [`Item::new`] with `rec`'s buffer, which is left empty (the next
    /// event gets one by [`Pool::fit`]), and the text in a reused buffer. `top`:
    /// the transcoder's entries of `rec`, if it is unchanged since. `json`:
    /// `None` when no filter needs it ([`super::Chain::needs_json`]); then, given
    /// `spans` (the transcoder's, for this `rec`), the fields' text is not
    /// copied: the filter's batch takes it from the record.
    pub fn item(
        &mut self,
        rec: &mut Vec<u8>,
        json: Option<&str>,
        f: &Fields<'_>,
        top: Positions<'_>,
        spans: Option<&FieldSpans>,
        keys: Option<u128>,
    ) -> Item {
        let text = self.texts.pop().unwrap_or_default();
        let groups = self.groups.pop().unwrap_or_default();
        self.held -= text.capacity();
        let mut bounds = self.tops.pop().unwrap_or_default();
        bounds.clear();
        match top {
            Positions::Entries(t) if t.len() < 4096 => {
                bounds.extend(t.iter().map(|e| e.span.start as u32));
                bounds.push(t.last().map_or(0, |e| e.span.end as u32));
            }
            Positions::Starts(t) if t.len() <= 4096 => bounds.extend_from_slice(t),
            _ => {}
        }
        let seen = match spans {
            Some(sp) if json.is_none() => Seen::in_record(text, groups, sp),
            _ => Seen::build(text, groups, json, f),
        };
        Item {
            rec: std::mem::take(rec),
            seen: Some(seen),
            top: bounds,
            keys,
            dropped: false,
        }
    }

    fn keeps(&self, cap: usize, n: usize) -> bool {
        n < POOL_MAX && cap <= POOL_BUFFER_MAX && self.held + cap <= POOL_BYTES
    }

    /// Takes back the buffers of an item that has been emitted.
    pub fn recycle(&mut self, it: Item) {
        self.give(it.rec);
        if self.tops.len() < POOL_MAX && it.top.capacity() <= 4096 {
            self.tops.push(it.top);
        }
        if let Some(s) = it.seen {
            if self.keeps(s.text.capacity(), self.texts.len()) {
                self.held += s.text.capacity();
                self.texts.push(s.text);
            }
            if self.groups.len() < POOL_MAX && s.groups.capacity() <= 4096 {
                self.groups.push(s.groups);
            }
        }
    }
}

/// What a filter sees of one event, owned: the JSON text and the copied-out
/// fields in one buffer; [`Seen::append`] adds it to a call's batch.
pub(super) struct Seen {
    text: String,
    /// json, audit-id, verb, username, namespace, resource, subresource,
    /// name, api-group, stage, level, request-uri.
    spans: [(u32, u32); 12],
    groups: Vec<(u32, u32)>,
    /// Whether the JSON text is there (the first span).
    pub(super) json: bool,
    /// The spans are of the item's record (its str bodies), not of `text`.
    in_rec: bool,
}

impl Seen {
    pub(super) fn new(json: &str, f: &Fields<'_>) -> Seen {
        Seen::build(String::new(), Vec::new(), Some(json), f)
    }

    /// Like [`Seen::new`], writing into `text` and `groups` (pooled
    /// buffers, cleared first); without the JSON text if `json` is `None`.
    fn build(
        mut text: String,
        mut groups: Vec<(u32, u32)>,
        json: Option<&str>,
        f: &Fields<'_>,
    ) -> Seen {
        let has_json = json.is_some();
        let json = json.unwrap_or_default();
        let o = f.object_ref.as_ref();
        fn d<'b>(v: &'b Option<std::borrow::Cow<'_, str>>) -> &'b str {
            v.as_deref().unwrap_or_default()
        }
        let parts: [&str; 12] = [
            json,
            d(&f.audit_id),
            d(&f.verb),
            d(&f.username),
            o.map_or("", |o| &o.namespace),
            o.map_or("", |o| &o.resource),
            o.map_or("", |o| &o.subresource),
            o.map_or("", |o| &o.name),
            o.map_or("", |o| &o.api_group),
            d(&f.stage),
            d(&f.level),
            d(&f.request_uri),
        ];
        let len = parts.iter().map(|p| p.len()).sum::<usize>()
            + f.groups.iter().map(|g| g.len()).sum::<usize>();
        text.clear();
        text.reserve(len);
        let mut put = |p: &str| {
            let start = text.len() as u32;
            text.push_str(p);
            (start, text.len() as u32)
        };
        let spans = parts.map(&mut put);
        groups.clear();
        groups.extend(f.groups.iter().map(|g| put(g)));
        Seen {
            text,
            spans,
            groups,
            json: has_json,
            in_rec: false,
        }
    }

    /// Without JSON, the fields where the transcoder wrote them in the
    /// record (`text` and `groups` are pooled buffers).
    fn in_record(text: String, mut groups: Vec<(u32, u32)>, sp: &FieldSpans) -> Seen {
        groups.clear();
        groups.extend_from_slice(&sp.groups);
        Seen {
            text,
            spans: sp.slots,
            groups,
            json: false,
            in_rec: true,
        }
    }

    /// Appends the text (with the JSON if `json`) to a batch's `text` and
    /// the group names to its `groups`; returns the WIT event, whose spans
    /// point there.
    pub(super) fn append(
        &self,
        rec: &[u8],
        json: bool,
        text: &mut Vec<u8>,
        groups: &mut Vec<Span>,
    ) -> Event {
        let base = text.len() as u32;
        let g = Span {
            start: groups.len() as u32,
            len: self.groups.len() as u32,
        };
        let none = Span {
            start: base,
            len: 0,
        };
        // In the order of `spans`: json, audit-id, verb, username, ...
        let s: [Span; 12] = if self.in_rec {
            // Each field's bytes from the record (small strings).
            let mut put = |(a, b): (u32, u32)| {
                let start = text.len() as u32;
                text.extend_from_slice(rec.get(a as usize..b as usize).unwrap_or_default());
                Span {
                    start,
                    len: text.len() as u32 - start,
                }
            };
            groups.extend(self.groups.iter().map(|&p| put(p)));
            std::array::from_fn(|i| if i == 0 { none } else { put(self.spans[i]) })
        } else {
            // The JSON is the first part; without it the rest moves up.
            let from = if json { 0 } else { self.spans[0].1 };
            text.extend_from_slice(&self.text.as_bytes()[from as usize..]);
            let span = |(a, b): (u32, u32)| Span {
                start: (base + a).saturating_sub(from),
                len: b - a,
            };
            groups.extend(self.groups.iter().map(|&p| span(p)));
            std::array::from_fn(|i| {
                if i == 0 && !json {
                    none
                } else {
                    span(self.spans[i])
                }
            })
        };
        Event {
            json: s[0],
            audit_id: s[1],
            verb: s[2],
            username: s[3],
            groups: g,
            namespace: s[4],
            resource: s[5],
            subresource: s[6],
            name: s[7],
            api_group: s[8],
            stage: s[9],
            level: s[10],
            request_uri: s[11],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_moves_record_buffers_and_keeps_a_bounded_amount() {
        let mut pool = Pool::default();
        let f = Fields::default();
        let mut rec = Vec::with_capacity(4096);
        rec.push(0x80);
        let ptr = rec.as_ptr();
        let it = pool.item(&mut rec, Some("{}"), &f, Positions::Unknown, None, None);
        assert_eq!(it.rec.as_ptr(), ptr, "moved into the item, not copied");
        assert!(rec.is_empty());
        pool.recycle(it);
        pool.fit(&mut rec, 100);
        assert_eq!(rec.as_ptr(), ptr, "the recycled buffer comes back");
        let it = pool.item(&mut rec, Some("{}"), &f, Positions::Unknown, None, None);
        pool.recycle(it);
        // Big buffers are kept up to POOL_BYTES in all.
        for k in 0..10 {
            let mut r = Vec::with_capacity(POOL_BUFFER_MAX);
            r.push(k);
            let it = pool.item(&mut r, Some("{}"), &f, Positions::Unknown, None, None);
            pool.recycle(it);
        }
        let held: usize = pool.recs.iter().map(Vec::capacity).sum::<usize>()
            + pool.texts.iter().map(String::capacity).sum::<usize>();
        assert_eq!(held, pool.held);
        assert!(held <= POOL_BYTES, "{held}");
        assert!(pool.recs.iter().any(|r| r.capacity() == POOL_BUFFER_MAX));
    }

    /// Regression (page faults on every big event): buffers are handed out
    /// by size, so a big event gets the big buffer an earlier one left, not
    /// the last small one (which a fresh allocation would then replace).
    #[test]
    fn the_pool_hands_out_the_smallest_buffer_that_fits() {
        let mut pool = Pool::default();
        let f = Fields::default();
        let mut ptrs = Vec::new();
        for cap in [200 << 10, 4096, 50 << 10, 4096] {
            let mut r = Vec::with_capacity(cap);
            r.push(1);
            ptrs.push((cap, r.as_ptr()));
            let it = pool.item(&mut r, Some("{}"), &f, Positions::Unknown, None, None);
            pool.recycle(it);
        }
        let mut big = Vec::new();
        pool.fit(&mut big, 40 << 10);
        assert_eq!(big.as_ptr(), ptrs[2].1, "the 50 KiB buffer for 40 KiB");
        let mut bigger = Vec::new();
        pool.fit(&mut bigger, 100 << 10);
        assert_eq!(bigger.as_ptr(), ptrs[0].1, "the 200 KiB buffer for 100 KiB");
        let mut small = Vec::new();
        pool.fit(&mut small, 1000);
        assert_eq!(small.capacity(), 4096, "a 4 KiB one for 1000 bytes");
        let mut none = Vec::new();
        pool.fit(&mut none, 300 << 10);
        assert!(none.capacity() >= 300 << 10, "none fits: a new one");
        assert!(pool.recs.is_empty(), "and the smallest, too small, went");
        // Buffers left empty by a record that became its batch are not
        // kept (they would fill the pool's slots for good).
        pool.recycle(Item {
            rec: Vec::new(),
            seen: None,
            top: Vec::new(),
            keys: None,
            dropped: false,
        });
        assert!(pool.recs.is_empty());
    }
}

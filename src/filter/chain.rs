//! An output's chain of WebAssembly filters, run on batches of events after
//! the audit Policy. Each event travels as its encoded record (msgpack);
//! the JSON text and the extracted fields a filter sees are derived from
//! it only when an earlier filter changed it.
//!
//! A call passes the batch's text in one buffer, events as spans of it
//! (filters-wit/filter.wit, 0.2). Verdicts: `keep`; `drop`;
//! `replace(json)`: the JSON is encoded anew; `set-fields(i)`: the
//! result's field set `i` is encoded once per call and spliced into each
//! record's top-level map without re-encoding the rest.
//!
//! A failed call (trap, deadline, memory cap, wrong verdict count) and an
//! unusable verdict (invalid JSON) follow the filter's `on_error`: `keep`
//! (the default: audit data is never lost because a filter broke), `drop`,
//! or `stop` (the output stops; nothing after the last acknowledged event
//! is committed, so a restart resumes there). Each is logged and counted.

use super::wasm::{Batch, Event, LoadError, Row, Span, Spec, Verdict, WasmFilter};
use crate::forward::encode::{FieldSpans, Fields, TopEntry, Transcoder, key_bits};
use crate::forward::protocol::reader::{MsgReader, ReadError};
use crate::logging::RateLimit;
use crate::metrics::OutputMetrics;
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

/// What happens to a batch (or an event) when its filter fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Forward the events as they were before this filter.
    #[default]
    Keep,
    /// Drop them (counted, reason `filter_error`).
    Drop,
    /// Stop the output (the process exits non-zero after the acked part
    /// is checkpointed).
    Stop,
}

/// One event on its way through the chain.
pub struct Item {
    /// The encoded record (what is forwarded).
    pub rec: Vec<u8>,
    /// What the next filter sees; `None` while it must be derived from `rec`.
    seen: Option<Seen>,
    /// Where `rec`'s top-level entries start, then its end (from the
    /// transcoder), so `splice` need not parse it; empty when unknown.
    top: Vec<u32>,
    /// The transcoder's [`key_bits`] of the record's top-level keys (of a
    /// superset, after the policy removed some); `None` when unknown.
    keys: Option<u128>,
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
/// knows: [`set_fields`] then need not parse it.
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
    /// [`crate::process::fresh_capacity`]). A buffer taken by size, not the
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
                crate::process::fresh_capacity(v, n)
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
    /// `None` when no filter needs it ([`Chain::needs_json`]); then, given
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
struct Seen {
    text: String,
    /// json, audit-id, verb, username, namespace, resource, subresource,
    /// name, api-group, stage, level, request-uri.
    spans: [(u32, u32); 12],
    groups: Vec<(u32, u32)>,
    /// Whether the JSON text is there (the first span).
    json: bool,
    /// The spans are of the item's record (its str bodies), not of `text`.
    in_rec: bool,
}

impl Seen {
    fn new(json: &str, f: &Fields<'_>) -> Seen {
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
    fn append(&self, rec: &[u8], json: bool, text: &mut Vec<u8>, groups: &mut Vec<Span>) -> Event {
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

/// msgpack record → JSON text.
pub fn record_json(rec: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(rec.len() + rec.len() / 4);
    crate::forward::server::json::write_value(&mut MsgReader::new(rec), &mut out)
        .map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// The top-level entries of a msgpack map record: from `top` (where each
/// entry starts, then the end, as [`Item`] keeps them) when it fits the
/// record, else by parsing.
struct Entries<'a> {
    rec: &'a [u8],
    r: MsgReader<'a>,
    top: &'a [u32],
    /// Number of entries.
    n: usize,
    known: bool,
}

impl<'a> Entries<'a> {
    fn new(rec: &'a [u8], top: &'a [u32]) -> Result<Self, ReadError> {
        let mut r = MsgReader::new(rec);
        let n = r.read_map_len()? as usize;
        let known = top.len() == n + 1
            && top[0] as usize == r.pos()
            && top[n] as usize == rec.len()
            && top.windows(2).all(|w| w[0] <= w[1]);
        Ok(Entries {
            rec,
            r,
            top,
            n,
            known,
        })
    }

    /// Where the entries start.
    fn start(&self) -> usize {
        if self.known {
            self.top[0] as usize
        } else {
            self.r.pos()
        }
    }

    /// Entry `i` (in order, each once): its start, key and end.
    fn entry(&mut self, i: usize) -> Result<(usize, &'a [u8], usize), ReadError> {
        if self.known {
            let (start, end) = (self.top[i] as usize, self.top[i + 1] as usize);
            let entry = &self.rec[start..end];
            // A fixstr key (all of an audit event's) without the reader.
            let key = match entry.first() {
                Some(&h @ 0xa0..=0xbf) => entry.get(1..1 + (h & 0x1f) as usize),
                _ => None,
            };
            let key = match key {
                Some(k) => k,
                None => MsgReader::new(entry).read_str_bytes()?,
            };
            return Ok((start, key, end));
        }
        let start = self.r.pos();
        let key = self.r.read_str_bytes()?;
        self.r.skip_value()?;
        Ok((start, key, self.r.pos()))
    }
}

/// The index of the last field named `k` (later duplicates win).
fn last<K: AsRef<str>, V>(fields: &[(K, V)], k: &[u8]) -> Option<usize> {
    fields.iter().rposition(|(f, _)| f.as_ref().as_bytes() == k)
}

/// Sets top-level `fields` (key, encoded value) of the msgpack map `rec`.
/// When every key is new and the map's header has room for them (the
/// transcoder writes map16), they are appended to `rec` in place and the
/// count patched: enrichment copies nothing. Otherwise [`splice`] builds
/// the record in `scratch`, which is swapped in. `keys`: the
/// [`key_bits`] of `rec`'s keys, if known: when every field misses a bit
/// of them (and `top` fits), the keys are not scanned.
pub fn set_fields<K: AsRef<str>, V: AsRef<[u8]>>(
    rec: &mut Vec<u8>,
    top: &[u32],
    keys: Option<u128>,
    fields: &[(K, V)],
    scratch: &mut Vec<u8>,
) -> Result<(), ReadError> {
    let mut e = Entries::new(rec, top)?;
    let mut fresh = true;
    // Where the last entry ends: the record must end there too.
    let mut end = e.start();
    let absent = keys.is_some_and(|k| {
        fields.iter().all(|(f, _)| {
            let b = key_bits(f.as_ref().as_bytes());
            k & b != b
        })
    });
    if absent && e.known {
        end = top[e.n] as usize;
    } else {
        for i in 0..e.n {
            let (_, key, stop) = e.entry(i)?;
            end = stop;
            if last(fields, key).is_some() {
                fresh = false;
                break;
            }
        }
    }
    let n = e.n;
    let room = match rec.first() {
        Some(0x80..=0x8f) => 15,
        Some(0xde) => 0xffff,
        Some(0xdf) => u32::MAX as usize,
        _ => 0,
    };
    let new = (0..fields.len())
        .filter(|&i| last(fields, fields[i].0.as_ref().as_bytes()) == Some(i))
        .count();
    if fresh && end == rec.len() && n + new <= room {
        for (i, (k, v)) in fields.iter().enumerate() {
            if last(fields, k.as_ref().as_bytes()) == Some(i) {
                crate::forward::protocol::write_str(rec, k.as_ref().as_bytes());
                rec.extend_from_slice(v.as_ref());
            }
        }
        let count = n + new;
        match rec[0] {
            0x80..=0x8f => rec[0] = 0x80 | count as u8,
            0xde => rec[1..3].copy_from_slice(&(count as u16).to_be_bytes()),
            _ => rec[1..5].copy_from_slice(&(count as u32).to_be_bytes()),
        }
        return Ok(());
    }
    splice(rec, top, fields, scratch)?;
    std::mem::swap(rec, scratch);
    Ok(())
}

/// Sets top-level `fields` (key, encoded value) of the msgpack map `rec`
/// into `out`: existing keys get the new value in place, new keys are
/// appended; the other entries are copied byte for byte, runs of them at
/// once. Later duplicates win. `top`: as [`Item`] keeps it; ignored unless
/// it fits `rec`.
pub fn splice<K: AsRef<str>, V: AsRef<[u8]>>(
    rec: &[u8],
    top: &[u32],
    fields: &[(K, V)],
    out: &mut Vec<u8>,
) -> Result<(), ReadError> {
    let mut e = Entries::new(rec, top)?;
    let n = e.n;
    // One pass, no allocation for up to 64 fields. The header is map16
    // (map32 when needed) like the transcoder's, patched at the end.
    let mut small = [false; 64];
    let mut big = Vec::new();
    let found: &mut [bool] = if fields.len() <= small.len() {
        &mut small[..fields.len()]
    } else {
        big.resize(fields.len(), false);
        &mut big
    };
    out.clear();
    let wide = n + fields.len() > 0xffff;
    out.extend_from_slice(if wide {
        &[0xdf, 0, 0, 0, 0][..]
    } else {
        &[0xde, 0, 0][..]
    });
    let mut count = 0u32;
    // Start of the entries not yet copied (all unchanged).
    let mut pending = e.start();
    let mut end = pending;
    for i in 0..n {
        let (start, key, stop) = e.entry(i)?;
        end = stop;
        if let Some(j) = last(fields, key) {
            out.extend_from_slice(&rec[pending..start]);
            pending = stop;
            found[j] = true;
            crate::forward::protocol::write_str(out, key);
            out.extend_from_slice(fields[j].1.as_ref());
        }
        count += 1;
    }
    out.extend_from_slice(&rec[pending..end]);
    for (i, (k, v)) in fields.iter().enumerate() {
        // New keys, each at its last occurrence.
        if !found[i] && last(fields, k.as_ref().as_bytes()) == Some(i) {
            crate::forward::protocol::write_str(out, k.as_ref().as_bytes());
            out.extend_from_slice(v.as_ref());
            count += 1;
        }
    }
    if wide {
        out[1..5].copy_from_slice(&count.to_be_bytes());
    } else {
        out[1..3].copy_from_slice(&(count as u16).to_be_bytes());
    }
    Ok(())
}

struct Link {
    filter: WasmFilter,
    on_error: OnError,
}

/// The filters of one output, in order.
pub struct Chain {
    links: Vec<Link>,
    m: OutputMetrics,
    tc: Transcoder,
    scratch: Vec<u8>,
    warn: RateLimit,
    /// Reused output buffer of `splice`.
    spliced: Vec<u8>,
    /// Reused buffers of a call's batch.
    text: Vec<u8>,
    groups: Vec<Span>,
    events: Vec<Row>,
}

/// A result's field set with its values encoded (or why it is unusable).
type FieldSet = Result<Vec<(String, Vec<u8>)>, String>;

/// Batch text kept between calls; a larger one is freed after its call.
const KEEP_TEXT_MAX: usize = 1 << 20;

impl Chain {
    /// Loads every filter (compile or cache, instantiate, configure).
    pub fn load(specs: Vec<(Spec, OnError)>, m: OutputMetrics) -> Result<Chain, LoadError> {
        let mut links = Vec::new();
        for (spec, on_error) in specs {
            links.push(Link {
                filter: WasmFilter::load(spec)?,
                on_error,
            });
        }
        Ok(Chain {
            links,
            m,
            tc: Transcoder::default(),
            scratch: Vec::new(),
            warn: RateLimit::default(),
            spliced: Vec::new(),
            text: Vec::new(),
            groups: Vec::new(),
            events: Vec::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Whether a filter reads events' JSON text (else items need not
    /// carry it; [`Chain::run`] derives it if a reload changed that).
    pub fn needs_json(&self) -> bool {
        self.links.iter().any(|l| l.filter.needs_json())
    }

    /// Picks up changed filter files (a rejected version is logged and
    /// counted; the running one stays).
    pub fn maybe_reload(&mut self) {
        for l in &mut self.links {
            match l.filter.maybe_reload() {
                None => {}
                Some(Ok(())) => self.m.filter_reload(l.filter.name(), "ok"),
                Some(Err(e)) => {
                    self.m.filter_reload(l.filter.name(), "rejected");
                    error!(filter = %l.filter.name(), error = %e, "new filter version rejected; keeping the running one");
                }
            }
        }
    }

    /// Runs the chain over `items`. `Err` only when a filter with
    /// `on_error = "stop"` failed: the message says why.
    pub fn run(&mut self, items: &mut [Item]) -> Result<(), String> {
        for k in 0..self.links.len() {
            let live: Vec<usize> = (0..items.len()).filter(|&i| !items[i].dropped).collect();
            if live.is_empty() {
                return Ok(());
            }
            let json = self.links[k].filter.needs_json();
            for &i in &live {
                if items[i].seen.as_ref().is_none_or(|s| json && !s.json) {
                    items[i].seen = Some(self.derive(&items[i].rec));
                }
            }
            let name = self.links[k].filter.name().to_string();
            let on_error = self.links[k].on_error;
            self.m.filter_call(&name, live.len() as u64);
            // The batch: all text in one buffer, copied once more, straight
            // into the guest's memory.
            self.text.clear();
            self.groups.clear();
            self.events.clear();
            for it in live.iter().map(|&i| &items[i]) {
                let Some(s) = it.seen.as_ref() else { continue };
                let e = s.append(&it.rec, json, &mut self.text, &mut self.groups);
                self.events.push(Row(e));
            }
            let batch = Batch {
                text: &self.text,
                groups: &self.groups,
                events: &self.events,
            };
            let result = self.links[k].filter.call(batch);
            if self.text.capacity() > KEEP_TEXT_MAX {
                self.text = Vec::new();
            }
            match result {
                Err(e) => {
                    self.failed(&name, on_error, &e.to_string(), e.reason(), live.len())?;
                    for &i in &live {
                        self.fallback(on_error, &mut items[i]);
                    }
                }
                Ok(r) => {
                    let sets: Vec<FieldSet> =
                        r.field_sets.iter().map(|s| self.encode_set(s)).collect();
                    for (&i, v) in live.iter().zip(r.verdicts) {
                        self.apply(&name, on_error, &mut items[i], v, &sets)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Logs and counts a failure; `Err` when the output must stop.
    fn failed(
        &mut self,
        name: &str,
        on_error: OnError,
        msg: &str,
        reason: &str,
        events: usize,
    ) -> Result<(), String> {
        self.m.filter_error(name, reason);
        if on_error == OnError::Stop {
            error!(
                filter = name,
                reason,
                events,
                "filter failed with on_error = \"stop\": stopping the output: {msg}"
            );
            return Err(format!("filter {name}: {msg}"));
        }
        if let Some(n) = self.warn.allow() {
            warn!(filter = name, reason, events, on_error = ?on_error, suppressed = n, "filter failed: {msg}");
        }
        Ok(())
    }

    fn apply(
        &mut self,
        name: &str,
        on_error: OnError,
        it: &mut Item,
        v: Verdict,
        sets: &[FieldSet],
    ) -> Result<(), String> {
        match v {
            Verdict::Keep => {}
            Verdict::Drop => {
                it.dropped = true;
                self.m.dropped("filter", 1);
            }
            Verdict::Replace(json) => {
                self.scratch.clear();
                let parsed = self
                    .tc
                    .encode(json.as_bytes(), &mut self.scratch)
                    .map(|f| Seen::new(&json, &f))
                    .map_err(|e| e.to_string());
                match parsed {
                    Ok(new) => {
                        std::mem::swap(&mut it.rec, &mut self.scratch);
                        it.seen = Some(new);
                        it.top.clear();
                        it.keys = None;
                    }
                    Err(e) => self.bad_verdict(
                        name,
                        on_error,
                        it,
                        &format!("replace: not a JSON object: {e}"),
                    )?,
                }
            }
            Verdict::SetFields(ix) => {
                let set = match sets.get(ix as usize) {
                    Some(Ok(set)) => set,
                    Some(Err(e)) => return self.bad_verdict(name, on_error, it, e),
                    None => {
                        let msg =
                            format!("set-fields({ix}): the result has {} field sets", sets.len());
                        return self.bad_verdict(name, on_error, it, &msg);
                    }
                };
                match set_fields(&mut it.rec, &it.top, it.keys, set, &mut self.spliced) {
                    Ok(()) => {
                        it.top.clear();
                        it.keys = None;
                        // Derived again if another filter follows.
                        it.seen = None;
                    }
                    Err(e) => self.bad_verdict(name, on_error, it, &format!("set-fields: {e}"))?,
                }
            }
        }
        Ok(())
    }

    /// Encodes a field set's values (once per call, however many events
    /// name it).
    fn encode_set(&mut self, fields: &[super::wasm::Field]) -> FieldSet {
        fields
            .iter()
            .map(|f| match self.encode_value(&f.value) {
                Ok(v) => Ok((f.key.clone(), v)),
                Err(e) => Err(format!("set-fields: {}: invalid JSON value: {e}", f.key)),
            })
            .collect()
    }

    fn bad_verdict(
        &mut self,
        name: &str,
        on_error: OnError,
        it: &mut Item,
        msg: &str,
    ) -> Result<(), String> {
        self.failed(name, on_error, msg, "invalid_verdict", 1)?;
        self.fallback(on_error, it);
        Ok(())
    }

    /// An event whose filter failed (and `on_error` is not `stop`): drop
    /// it, or keep it as the filter saw it (it is still in `it`).
    fn fallback(&mut self, on_error: OnError, it: &mut Item) {
        if on_error == OnError::Drop {
            it.dropped = true;
            self.m.dropped("filter_error", 1);
        }
    }

    /// A JSON value → msgpack, through the transcoder (`{"v": value}`).
    fn encode_value(&mut self, json: &str) -> Result<Vec<u8>, String> {
        let wrapped = format!("{{\"v\":{json}}}");
        self.scratch.clear();
        self.tc
            .encode(wrapped.as_bytes(), &mut self.scratch)
            .map_err(|e| e.to_string())?;
        // A one-entry map: skip its header and the key; the rest is the value.
        let mut r = MsgReader::new(&self.scratch);
        match (r.read_map_len(), r.read_str_bytes()) {
            (Ok(1), Ok(b"v")) => Ok(self.scratch[r.pos()..].to_vec()),
            _ => Err("unexpected encoding".into()),
        }
    }

    /// The event a filter sees for a record changed by an earlier filter.
    fn derive(&mut self, rec: &[u8]) -> Seen {
        let json = record_json(rec).unwrap_or_else(|_| "{}".into());
        let mut tmp = Vec::new();
        match self.tc.encode(json.as_bytes(), &mut tmp) {
            Ok(f) => Seen::new(&json, &f),
            Err(_) => Seen::new(&json, &Fields::default()),
        }
    }
}

/// `filter test`: runs `lines` (JSON events) through the chain as one
/// batch and describes each outcome as a JSON object: `line` (1-based),
/// `auditID`, `result` (`keep`, `changed`, `drop`, `invalid`) and `event`
/// (what would be forwarded).
pub fn try_lines(
    chain: &mut Chain,
    first_line: usize,
    lines: &[Vec<u8>],
) -> Result<Vec<serde_json::Value>, String> {
    let mut tc = Transcoder::default();
    let mut items = Vec::new();
    let mut slots = Vec::new();
    for l in lines {
        let mut rec = Vec::new();
        match tc.encode(l, &mut rec) {
            Ok(f) => {
                let json = String::from_utf8_lossy(l);
                slots.push(Some((items.len(), rec.clone())));
                items.push(Item::new(rec, &json, &f));
            }
            Err(e) => {
                slots.push(None);
                tracing::warn!(line = first_line + slots.len() - 1, error = %e, "not a JSON object; skipped");
            }
        }
    }
    chain.run(&mut items)?;
    Ok(slots
        .into_iter()
        .enumerate()
        .map(|(k, slot)| {
            let line = first_line + k;
            let Some((i, before)) = slot else {
                return serde_json::json!({ "line": line, "result": "invalid" });
            };
            let it = &items[i];
            let ev: serde_json::Value = record_json(&it.rec)
                .ok()
                .and_then(|j| serde_json::from_str(&j).ok())
                .unwrap_or_default();
            let result = if it.dropped {
                "drop"
            } else if it.rec == before {
                "keep"
            } else {
                "changed"
            };
            serde_json::json!({
                "line": line,
                "auditID": ev.get("auditID").cloned().unwrap_or_default(),
                "result": result,
                "event": if it.dropped { serde_json::Value::Null } else { ev },
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(json: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Transcoder::default()
            .encode(json.as_bytes(), &mut out)
            .unwrap();
        out
    }

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

    /// Regression: the scratch buffer was not cleared between values, so a
    /// second value decoded as the first (and `replace` records were
    /// corrupt).
    #[test]
    fn consecutive_values_are_encoded_independently() {
        let mut c = Chain::load(vec![], OutputMetrics::default()).unwrap();
        let a = c.encode_value("\"shoot--a\"").unwrap();
        let b = c.encode_value("{\"x\":1}").unwrap();
        let mut out = Vec::new();
        splice(&enc("{}"), &[], &[("a", &a), ("b", &b)], &mut out).unwrap();
        assert_eq!(
            record_json(&out).unwrap(),
            r#"{"a":"shoot--a","b":{"x":1}}"#
        );
        assert!(c.encode_value("{nope").is_err());
    }

    #[test]
    fn splice_replaces_in_place_and_appends() {
        let rec = enc(r#"{"kind":"Event","verb":"get","user":{"username":"a"}}"#);
        let v = |j: &str| {
            let m = enc(&format!("{{\"v\":{j}}}"));
            let mut r = MsgReader::new(&m);
            r.read_map_len().unwrap();
            r.read_str_bytes().unwrap();
            m[r.pos()..].to_vec()
        };
        let mut out = Vec::new();
        splice(
            &rec,
            &[],
            &[
                ("verb", &v("\"list\"")),
                ("clusterID", &v("\"shoot--a\"")),
                ("n", &v("1")),
                ("n", &v("{\"x\":[1,2]}")),
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(
            record_json(&out).unwrap(),
            r#"{"kind":"Event","verb":"list","user":{"username":"a"},"clusterID":"shoot--a","n":{"x":[1,2]}}"#
        );
        assert!(splice::<&str, &[u8]>(b"\x01", &[], &[], &mut out).is_err());
    }

    /// `set_fields` gives what `splice` gives, for every map header (fixmap
    /// as the policy writes small maps, map16 as the transcoder does,
    /// map32), with and without entry positions; it appends in place (the
    /// scratch buffer stays unused) exactly when every key is new, the
    /// header has room and nothing trails the map.
    #[test]
    fn set_fields_appends_in_place_or_splices() {
        let one = [0x01u8];
        let sets: [&[(&str, &[u8])]; 5] = [
            &[],
            &[("clusterID", &one)],
            &[("clusterID", &one), ("x", &one), ("clusterID", &one)],
            &[("verb", &one)],
            &[("new", &one), ("kind", &one)],
        ];
        // (header, entries): 2 entries, or 14 under a fixmap (no room for 2 more).
        let recs = |n: usize| {
            let mut body = Vec::new();
            for i in 0..n {
                let k = if i == 0 {
                    "kind".to_string()
                } else if i == 1 {
                    "verb".into()
                } else {
                    format!("k{i}")
                };
                crate::forward::protocol::write_str(&mut body, k.as_bytes());
                body.push(0x07);
            }
            let mut fix = vec![0x80 | n as u8];
            fix.extend_from_slice(&body);
            let mut m16 = vec![0xde, 0, n as u8];
            m16.extend_from_slice(&body);
            let mut m32 = vec![0xdf, 0, 0, 0, n as u8];
            m32.extend_from_slice(&body);
            let mut trailing = m16.clone();
            trailing.push(0xc0);
            [(fix, true), (m16, true), (m32, true), (trailing, false)]
        };
        for n in [2, 14] {
            for (rec, clean) in recs(n) {
                let mut tops = vec![Vec::new()];
                if clean {
                    let mut r = MsgReader::new(&rec);
                    r.read_map_len().unwrap();
                    let mut t = Vec::new();
                    for _ in 0..n {
                        t.push(r.pos() as u32);
                        r.read_str_bytes().unwrap();
                        r.skip_value().unwrap();
                    }
                    t.push(rec.len() as u32);
                    tops.push(t);
                }
                for top in &tops {
                    for f in sets {
                        let mut want = Vec::new();
                        splice(&rec, top, f, &mut want).unwrap();
                        let (mut got, mut scratch) = (rec.clone(), Vec::new());
                        set_fields(&mut got, top, None, f, &mut scratch).unwrap();
                        assert_eq!(record_json(&got), record_json(&want), "{rec:x?} {f:?}");
                        // With the keys' bits known the result is the same.
                        let mut r = MsgReader::new(&rec);
                        let mut bits = 0;
                        for _ in 0..r.read_map_len().unwrap() {
                            bits |= key_bits(r.read_str_bytes().unwrap());
                            r.skip_value().unwrap();
                        }
                        let (mut fast, mut s2) = (rec.clone(), Vec::new());
                        set_fields(&mut fast, top, Some(bits), f, &mut s2).unwrap();
                        assert_eq!(fast, got, "{rec:x?} {f:?}");
                        let new = f.iter().filter(|(k, _)| *k != "verb" && *k != "kind");
                        let fresh = new.clone().count() == f.len();
                        let room = if rec[0] < 0x90 { 15 } else { 0xffff };
                        let distinct = f
                            .iter()
                            .map(|x| x.0)
                            .collect::<std::collections::HashSet<_>>()
                            .len();
                        let in_place = clean && fresh && n + distinct <= room;
                        assert_eq!(scratch.is_empty(), in_place, "{rec:x?} {f:?}");
                    }
                }
            }
        }
    }

    /// With the transcoder's entry positions `splice` skips parsing; the
    /// result is the same, and positions that do not fit are ignored.
    #[test]
    fn splice_with_known_entries_equals_splice_by_parsing() {
        let docs = [
            r#"{}"#,
            r#"{"a":1}"#,
            r#"{"kind":"Event","verb":"get","user":{"username":"a","groups":["x","y"]},"n":[1,{"b":null}],"verb":"list"}"#,
        ];
        let one = [0x01u8];
        let sets: [&[(&str, &[u8])]; 4] = [
            &[],
            &[("verb", &one)],
            &[("clusterID", &one), ("a", &one)],
            &[("kind", &one), ("n", &one), ("new", &one), ("kind", &one)],
        ];
        for d in docs {
            let mut rec = Vec::new();
            let mut tc = Transcoder::default();
            tc.encode(d.as_bytes(), &mut rec).unwrap();
            let mut top: Vec<u32> = tc.top.iter().map(|e| e.span.start as u32).collect();
            top.push(rec.len() as u32);
            for f in sets {
                let (mut want, mut got) = (Vec::new(), Vec::new());
                splice(&rec, &[], f, &mut want).unwrap();
                splice(&rec, &top, f, &mut got).unwrap();
                assert_eq!(got, want, "{d} {f:?}");
                let mut wrong = top.clone();
                wrong.reverse();
                splice(&rec, &wrong, f, &mut got).unwrap();
                assert_eq!(got, want, "wrong positions ignored");
            }
        }
    }

    #[test]
    fn splice_with_more_fields_than_the_fast_path_holds() {
        let rec = enc(r#"{"a":1,"k7":"old"}"#);
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let one = [0x01u8];
        let fields: Vec<(&str, &[u8])> = keys.iter().map(|k| (k.as_str(), &one[..])).collect();
        let mut out = Vec::new();
        splice(&rec, &[], &fields, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_str(&record_json(&out).unwrap()).unwrap();
        let m = v.as_object().unwrap();
        assert_eq!(m.len(), 101);
        assert_eq!(m["k7"], 1);
        assert_eq!(m["a"], 1);
        // "k7" stays where it was, the new keys follow in order.
        let order: Vec<&str> = m.keys().map(String::as_str).take(3).collect();
        assert_eq!(order, ["a", "k7", "k0"]);
    }
}

//! An output's chain of WebAssembly filters, run on batches of events after
//! the audit Policy. Each event travels as its encoded record (msgpack);
//! the JSON text and the extracted fields a filter sees are derived from
//! it only when an earlier filter changed it.
//!
//! Verdicts (filters-wit/filter.wit): `keep`; `drop`; `replace(json)`:
//! the JSON is encoded anew; `set-fields`: the fields are spliced into the
//! record's top-level map without re-encoding the rest.
//!
//! A failed call (trap, deadline, memory cap, wrong verdict count) and an
//! unusable verdict (invalid JSON) follow the filter's `on_error`: `keep`
//! (the default: audit data is never lost because a filter broke), `drop`,
//! or `stop` (the output stops; nothing after the last acknowledged event
//! is committed, so a restart resumes there). Each is logged and counted.

use super::wasm::{Event, LoadError, Spec, Verdict, WasmFilter};
use crate::forward::encode::{Fields, Transcoder};
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
    event: Option<Event>,
    pub dropped: bool,
}

impl Item {
    /// An event whose JSON text is `json` (the line, or the record as JSON
    /// after the policy stripped it) and whose fields are `f`.
    pub fn new(rec: Vec<u8>, json: String, f: &Fields<'_>) -> Item {
        Item {
            rec,
            event: Some(event(json, f)),
            dropped: false,
        }
    }
}

fn s(v: &Option<std::borrow::Cow<'_, str>>) -> String {
    v.as_deref().unwrap_or_default().to_string()
}

/// The WIT event for `json` with the fields the host extracted.
pub fn event(json: String, f: &Fields<'_>) -> Event {
    let o = f.object_ref.as_ref();
    let of = |pick: for<'b> fn(&'b crate::forward::encode::ObjectRef<'_>) -> &'b str| {
        o.map(|o| pick(o).to_string()).unwrap_or_default()
    };
    Event {
        json,
        audit_id: s(&f.audit_id),
        verb: s(&f.verb),
        username: s(&f.username),
        groups: f.groups.iter().map(|g| g.to_string()).collect(),
        namespace: of(|o| &o.namespace),
        resource: of(|o| &o.resource),
        subresource: of(|o| &o.subresource),
        name: of(|o| &o.name),
        api_group: of(|o| &o.api_group),
        stage: s(&f.stage),
        level: s(&f.level),
        request_uri: s(&f.request_uri),
    }
}

/// msgpack record → JSON text.
pub fn record_json(rec: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(rec.len() + rec.len() / 4);
    crate::forward::server::json::write_value(&mut MsgReader::new(rec), &mut out)
        .map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// Sets top-level `fields` (key, encoded value) of the msgpack map `rec`:
/// existing keys get the new value in place, new keys are appended; the
/// other entries are copied byte for byte. Later duplicates win.
pub fn splice(
    rec: &[u8],
    fields: &[(String, Vec<u8>)],
    out: &mut Vec<u8>,
) -> Result<(), ReadError> {
    let mut r = MsgReader::new(rec);
    let n = r.read_map_len()? as usize;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let start = r.pos();
        let key = r.read_str_bytes()?;
        r.skip_value()?;
        entries.push((key, start..r.pos()));
    }
    let last = |k: &[u8]| fields.iter().rposition(|(f, _)| f.as_bytes() == k);
    let mut added: Vec<usize> = (0..fields.len())
        .filter(|&i| last(fields[i].0.as_bytes()) == Some(i))
        .filter(|&i| !entries.iter().any(|(k, _)| *k == fields[i].0.as_bytes()))
        .collect();
    added.sort_unstable();
    out.clear();
    let _ = rmp::encode::write_map_len(out, (n + added.len()) as u32);
    for (k, span) in &entries {
        match last(k) {
            Some(i) => {
                crate::forward::protocol::write_str(out, k);
                out.extend_from_slice(&fields[i].1);
            }
            None => out.extend_from_slice(&rec[span.clone()]),
        }
    }
    for i in added {
        crate::forward::protocol::write_str(out, fields[i].0.as_bytes());
        out.extend_from_slice(&fields[i].1);
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
    /// Encoded `set-fields` values by their JSON text: enrichment sets the
    /// same few values on every event.
    values: std::collections::HashMap<String, Vec<u8>>,
}

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
            values: std::collections::HashMap::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
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
            let mut batch = Vec::with_capacity(live.len());
            for &i in &live {
                let ev = match items[i].event.take() {
                    Some(e) => e,
                    None => self.derive(&items[i].rec),
                };
                batch.push(ev);
            }
            let name = self.links[k].filter.name().to_string();
            let on_error = self.links[k].on_error;
            self.m.filter_call(&name, live.len() as u64);
            match self.links[k].filter.call(&batch) {
                Err(e) => {
                    self.failed(&name, on_error, &e.to_string(), e.reason(), live.len())?;
                    self.after_error(on_error, items, &live, batch);
                }
                Ok(verdicts) => {
                    for ((&i, v), ev) in live.iter().zip(verdicts).zip(batch) {
                        self.apply(&name, on_error, &mut items[i], v, ev)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whole batch failed: keep (restore what the filter saw) or drop.
    fn after_error(
        &mut self,
        on_error: OnError,
        items: &mut [Item],
        live: &[usize],
        batch: Vec<Event>,
    ) {
        for (&i, ev) in live.iter().zip(batch) {
            self.fallback(on_error, &mut items[i], ev);
        }
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
        ev: Event,
    ) -> Result<(), String> {
        match v {
            Verdict::Keep => it.event = Some(ev),
            Verdict::Drop => {
                it.dropped = true;
                self.m.dropped("filter", 1);
            }
            Verdict::Replace(json) => {
                self.scratch.clear();
                let parsed = self
                    .tc
                    .encode(json.as_bytes(), &mut self.scratch)
                    .map(|f| event(String::new(), &f))
                    .map_err(|e| e.to_string());
                match parsed {
                    Ok(mut new) => {
                        new.json = json;
                        std::mem::swap(&mut it.rec, &mut self.scratch);
                        it.event = Some(new);
                    }
                    Err(e) => self.bad_verdict(
                        name,
                        on_error,
                        it,
                        ev,
                        &format!("replace: not a JSON object: {e}"),
                    )?,
                }
            }
            Verdict::SetFields(fields) => {
                let mut enc = Vec::with_capacity(fields.len());
                for f in &fields {
                    match self.value(&f.value) {
                        Ok(v) => enc.push((f.key.clone(), v)),
                        Err(e) => {
                            return self.bad_verdict(
                                name,
                                on_error,
                                it,
                                ev,
                                &format!("set-fields: {}: invalid JSON value: {e}", f.key),
                            );
                        }
                    }
                }
                let mut out = Vec::with_capacity(it.rec.len() + 64);
                match splice(&it.rec, &enc, &mut out) {
                    Ok(()) => {
                        it.rec = out;
                        // Derived again if another filter follows.
                        it.event = None;
                    }
                    Err(e) => {
                        self.bad_verdict(name, on_error, it, ev, &format!("set-fields: {e}"))?
                    }
                }
            }
        }
        Ok(())
    }

    fn bad_verdict(
        &mut self,
        name: &str,
        on_error: OnError,
        it: &mut Item,
        ev: Event,
        msg: &str,
    ) -> Result<(), String> {
        self.failed(name, on_error, msg, "invalid_verdict", 1)?;
        self.fallback(on_error, it, ev);
        Ok(())
    }

    /// An event whose filter failed (and `on_error` is not `stop`): drop
    /// it, or keep it as the filter saw it.
    fn fallback(&mut self, on_error: OnError, it: &mut Item, ev: Event) {
        if on_error == OnError::Drop {
            it.dropped = true;
            self.m.dropped("filter_error", 1);
        } else {
            it.event = Some(ev);
        }
    }

    /// A JSON value → msgpack, remembered for the next events (bounded).
    fn value(&mut self, json: &str) -> Result<Vec<u8>, String> {
        if let Some(v) = self.values.get(json) {
            return Ok(v.clone());
        }
        let v = self.encode_value(json)?;
        if self.values.len() >= 256 {
            self.values.clear();
        }
        if json.len() <= 4096 {
            self.values.insert(json.to_string(), v.clone());
        }
        Ok(v)
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
    fn derive(&mut self, rec: &[u8]) -> Event {
        let json = record_json(rec).unwrap_or_else(|_| "{}".into());
        let mut tmp = Vec::new();
        let mut ev = match self.tc.encode(json.as_bytes(), &mut tmp) {
            Ok(f) => event(String::new(), &f),
            Err(_) => event(String::new(), &Fields::default()),
        };
        ev.json = json;
        ev
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
                let json = String::from_utf8_lossy(l).into_owned();
                slots.push(Some((items.len(), rec.clone())));
                items.push(Item::new(rec, json, &f));
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

    /// Regression: the scratch buffer was not cleared between values, so a
    /// second value decoded as the first (and `replace` records were
    /// corrupt).
    #[test]
    fn consecutive_values_are_encoded_independently() {
        let mut c = Chain::load(vec![], OutputMetrics::default()).unwrap();
        let a = c.value("\"shoot--a\"").unwrap();
        let b = c.value("{\"x\":1}").unwrap();
        let mut out = Vec::new();
        splice(&enc("{}"), &[("a".into(), a), ("b".into(), b)], &mut out).unwrap();
        assert_eq!(
            record_json(&out).unwrap(),
            r#"{"a":"shoot--a","b":{"x":1}}"#
        );
        assert!(c.value("{nope").is_err());
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
            &[
                ("verb".into(), v("\"list\"")),
                ("clusterID".into(), v("\"shoot--a\"")),
                ("n".into(), v("1")),
                ("n".into(), v("{\"x\":[1,2]}")),
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(
            record_json(&out).unwrap(),
            r#"{"kind":"Event","verb":"list","user":{"username":"a"},"clusterID":"shoot--a","n":{"x":[1,2]}}"#
        );
        assert!(splice(b"\x01", &[], &mut out).is_err());
    }
}

//! An output's chain of WebAssembly filters, run on batches of events after
//! the audit Policy. Each event travels as its encoded record (msgpack);
//! the JSON text and the extracted fields a filter sees are derived from
//! it only when an earlier filter changed it ([`super::item`]).
//!
//! A call passes the batch's text in one buffer, events as spans of it
//! (filters-wit/filter.wit, 0.2); the verdicts are applied by
//! [`super::verdict`], failures handled by [`super::on_error`].

use super::item::Item;
use super::on_error::{Failures, OnError, Stop};
use super::verdict::{FieldSet, Verdicts};
use super::wasm::{Batch, LoadError, Row, Span, Spec, WasmFilter};
use crate::ops::metrics::OutputMetrics;
use tracing::error;

struct Link {
    filter: WasmFilter,
    on_error: OnError,
}

/// The filters of one output, in order.
pub struct Chain {
    links: Vec<Link>,
    m: OutputMetrics,
    verdicts: Verdicts,
    /// Reused buffers of a call's batch.
    text: Vec<u8>,
    groups: Vec<Span>,
    events: Vec<Row>,
}

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
            verdicts: Verdicts::new(Failures::new(m.clone()), m.clone()),
            m,
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
    /// `on_error = "stop"` failed: it says which and why.
    pub fn run(&mut self, items: &mut [Item]) -> Result<(), Stop> {
        for k in 0..self.links.len() {
            let live: Vec<usize> = (0..items.len()).filter(|&i| !items[i].dropped).collect();
            if live.is_empty() {
                return Ok(());
            }
            let json = self.links[k].filter.needs_json();
            for &i in &live {
                if items[i].seen.as_ref().is_none_or(|s| json && !s.json) {
                    items[i].seen = Some(self.verdicts.derive(&items[i].rec));
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
                    let f = &mut self.verdicts.failures;
                    f.failed(&name, on_error, &e.to_string(), e.reason(), live.len())?;
                    for &i in &live {
                        f.fallback(on_error, &mut items[i]);
                    }
                }
                Ok(r) => {
                    let sets: Vec<FieldSet> = r
                        .field_sets
                        .iter()
                        .map(|s| self.verdicts.encode_set(s))
                        .collect();
                    for (&i, v) in live.iter().zip(r.verdicts) {
                        self.verdicts
                            .apply(&name, on_error, &mut items[i], v, &sets)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::json::record_json;
    use crate::record::splice::splice;

    use crate::record::encode::encoded as enc;

    /// Regression: the scratch buffer was not cleared between values, so a
    /// second value decoded as the first (and `replace` records were
    /// corrupt).
    #[test]
    fn consecutive_values_are_encoded_independently() {
        let mut c = Chain::load(vec![], OutputMetrics::default()).unwrap();
        let a = c.verdicts.encode_value("\"shoot--a\"").unwrap();
        let b = c.verdicts.encode_value("{\"x\":1}").unwrap();
        let mut out = Vec::new();
        splice(&enc("{}"), &[], &[("a", &a), ("b", &b)], &mut out).unwrap();
        assert_eq!(
            record_json(&out).unwrap(),
            r#"{"a":"shoot--a","b":{"x":1}}"#
        );
        assert!(c.verdicts.encode_value("{nope").is_err());
    }
}

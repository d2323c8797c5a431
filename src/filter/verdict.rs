//! Applying a filter's verdict to an event (filters-wit/filter.wit, 0.2):
//! `keep`; `drop`; `replace(json)`: the JSON is encoded anew;
//! `set-fields(i)`: the result's field set `i` is encoded once per call and
//! spliced into each record's top-level map without re-encoding the rest.
//! An unusable verdict (invalid JSON) follows the filter's `on_error`.

use super::item::{Item, Seen};
use super::on_error::{Failures, OnError, Stop};
use super::wasm::Verdict;
use crate::ops::metrics::OutputMetrics;
use crate::record::encode::{Fields, Transcoder};
use crate::record::json::record_json;
use crate::record::reader::MsgReader;
use crate::record::splice::set_fields;

/// A result's field set with its values encoded (or why it is unusable).
pub(super) type FieldSet = Result<Vec<(String, Vec<u8>)>, String>;

/// Applies verdicts, with the buffers they reuse.
pub(super) struct Verdicts {
    tc: Transcoder,
    scratch: Vec<u8>,
    /// Reused output buffer of `splice`.
    spliced: Vec<u8>,
    pub(super) failures: Failures,
    m: OutputMetrics,
}

impl Verdicts {
    pub(super) fn new(failures: Failures, m: OutputMetrics) -> Self {
        Verdicts {
            tc: Transcoder::default(),
            scratch: Vec::new(),
            spliced: Vec::new(),
            failures,
            m,
        }
    }

    pub(super) fn apply(
        &mut self,
        name: &str,
        on_error: OnError,
        it: &mut Item,
        v: Verdict,
        sets: &[FieldSet],
    ) -> Result<(), Stop> {
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
    pub(super) fn encode_set(&mut self, fields: &[super::wasm::Field]) -> FieldSet {
        fields
            .iter()
            .map(|f| match self.encode_value(&f.value) {
                Ok(v) => Ok((f.key.clone(), v)),
                Err(e) => Err(format!("set-fields: {}: invalid JSON value: {e}", f.key)),
            })
            .collect()
    }

    /// A JSON value → msgpack, through the transcoder (`{"v": value}`).
    pub(super) fn encode_value(&mut self, json: &str) -> Result<Vec<u8>, String> {
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
    pub(super) fn derive(&mut self, rec: &[u8]) -> Seen {
        let json = record_json(rec).unwrap_or_else(|_| "{}".into());
        let mut tmp = Vec::new();
        match self.tc.encode(json.as_bytes(), &mut tmp) {
            Ok(f) => Seen::new(&json, &f),
            Err(_) => Seen::new(&json, &Fields::default()),
        }
    }

    fn bad_verdict(
        &mut self,
        name: &str,
        on_error: OnError,
        it: &mut Item,
        msg: &str,
    ) -> Result<(), Stop> {
        self.failures
            .failed(name, on_error, msg, "invalid_verdict", 1)?;
        self.failures.fallback(on_error, it);
        Ok(())
    }
}

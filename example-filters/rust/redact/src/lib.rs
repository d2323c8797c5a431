//! Removes secret material from events about Secrets (or other resources):
//! `requestObject.data`, `responseObject.data`, and the same inside list
//! responses (`responseObject.items.*.data`), replacing the event.
//!
//! ```toml
//! [[outputs.filters]]
//! wasm = "/filters/redact.wasm"
//! config = { resources = ["secrets"], paths = ["requestObject.data", "responseObject.items.*.data"] }
//! ```
//! Defaults: resources `["secrets"]`; paths `data` and `stringData` under
//! `requestObject`, `responseObject` and `responseObject.items.*`. Events of
//! other resources are kept without being parsed.

wit_bindgen::generate!({ path: "../../../filters-wit", world: "audit-filter" });

use audit_forwarder::filter::host::log;
use audit_forwarder::filter::types::LogLevel;
use audit_forwarder::filter::types::{Needs, Span, Verdict};
use exports::audit_forwarder::filter::filter::{Batch, BatchResult, Guest};
use serde_json::Value;
use std::cell::RefCell;

struct Rules {
    resources: Vec<String>,
    paths: Vec<Vec<String>>,
}

fn split(paths: &[&str]) -> Vec<Vec<String>> {
    paths
        .iter()
        .map(|p| p.split('.').map(str::to_string).collect())
        .collect()
}

thread_local! {
    static RULES: RefCell<Rules> = RefCell::new(Rules {
        resources: vec!["secrets".into()],
        paths: split(&[
            "requestObject.data",
            "requestObject.stringData",
            "responseObject.data",
            "responseObject.stringData",
            "responseObject.items.*.data",
            "responseObject.items.*.stringData",
        ]),
    });
}

/// Removes `path` below `v`; `*` walks every element of an array. Returns
/// whether anything was removed.
fn remove(v: &mut Value, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => v.as_object_mut().is_some_and(|o| o.remove(last).is_some()),
        [head, rest @ ..] if head == "*" => v
            .as_array_mut()
            .map(|a| a.iter_mut().fold(false, |acc, x| remove(x, rest) | acc))
            .unwrap_or(false),
        [head, rest @ ..] => v.get_mut(head.as_str()).is_some_and(|x| remove(x, rest)),
    }
}

/// A span of the batch's text (the host guarantees UTF-8 on character
/// boundaries; anything else reads as empty).
fn text(batch: &Batch, s: Span) -> &str {
    let t = batch
        .text
        .get(s.start as usize..(s.start as usize).saturating_add(s.len as usize));
    t.and_then(|t| std::str::from_utf8(t).ok())
        .unwrap_or_default()
}

struct Redact;

impl Guest for Redact {
    fn configure(config: String) -> Result<Needs, String> {
        let c: Value = serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        let list = |key: &str| -> Result<Option<Vec<String>>, String> {
            c.get(key)
                .map(|v| {
                    v.as_array()
                        .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect())
                        .ok_or_else(|| format!("config: `{key}` must be a list of strings"))
                })
                .transpose()
        };
        for k in c.as_object().into_iter().flat_map(|o| o.keys()) {
            if !["resources", "paths"].contains(&k.as_str()) {
                return Err(format!("config: unknown key `{k}`"));
            }
        }
        let resources = list("resources")?;
        let paths = list("paths")?;
        RULES.with(|r| {
            let mut r = r.borrow_mut();
            if let Some(v) = resources {
                r.resources = v;
            }
            if let Some(p) = paths {
                let p: Vec<&str> = p.iter().map(String::as_str).collect();
                r.paths = split(&p);
            }
        });
        Ok(Needs::JSON)
    }

    fn filter_batch(batch: Batch) -> BatchResult {
        let verdicts = RULES.with(|r| {
            let r = r.borrow();
            batch
                .events
                .iter()
                .map(|e| {
                    let resource = text(&batch, e.resource);
                    if !r.resources.iter().any(|x| x == resource) {
                        return Verdict::Keep;
                    }
                    let mut v: Value = match serde_json::from_str(text(&batch, e.json)) {
                        Ok(v) => v,
                        Err(err) => {
                            let id = text(&batch, e.audit_id);
                            log(LogLevel::Warn, &format!("event {id}: {err}"));
                            return Verdict::Keep;
                        }
                    };
                    let mut changed = false;
                    for p in &r.paths {
                        changed |= remove(&mut v, p);
                    }
                    if changed {
                        Verdict::Replace(v.to_string())
                    } else {
                        Verdict::Keep
                    }
                })
                .collect()
        });
        BatchResult {
            verdicts,
            field_sets: Vec::new(),
        }
    }
}

export!(Redact);

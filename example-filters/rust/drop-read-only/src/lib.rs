//! Drops read-only requests (get, list, watch) made by system users
//! (`system:*`: controllers, nodes, service accounts): the bulk of an audit
//! log and rarely what an auditor asks for. Uses only the fields the host
//! extracts; no JSON parsing per event.
//!
//! ```toml
//! [[outputs.filters]]
//! wasm = "/filters/drop-read-only.wasm"
//! config = { verbs = ["get", "list", "watch"], user_prefixes = ["system:"] }
//! ```
//! Both keys are optional (the values above are the defaults).

wit_bindgen::generate!({ path: "../../../filters-wit", world: "audit-filter" });

use audit_forwarder::filter::types::{Needs, Span, Verdict};
use exports::audit_forwarder::filter::filter::{Batch, BatchResult, Guest};
use std::cell::RefCell;

struct Rules {
    verbs: Vec<String>,
    prefixes: Vec<String>,
}

thread_local! {
    static RULES: RefCell<Rules> = RefCell::new(Rules {
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        prefixes: vec!["system:".into()],
    });
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

fn strings(c: &serde_json::Value, key: &str) -> Result<Option<Vec<String>>, String> {
    match c.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect())
            .map(Some)
            .ok_or_else(|| format!("config: `{key}` must be a list of strings")),
    }
}

struct DropReadOnly;

impl Guest for DropReadOnly {
    fn configure(config: String) -> Result<Needs, String> {
        let c: serde_json::Value =
            serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        for k in c.as_object().into_iter().flat_map(|o| o.keys()) {
            if !["verbs", "user_prefixes"].contains(&k.as_str()) {
                return Err(format!("config: unknown key `{k}`"));
            }
        }
        let verbs = strings(&c, "verbs")?;
        let prefixes = strings(&c, "user_prefixes")?;
        RULES.with(|r| {
            let mut r = r.borrow_mut();
            if let Some(v) = verbs {
                r.verbs = v;
            }
            if let Some(p) = prefixes {
                r.prefixes = p;
            }
        });
        // Reads only the extracted fields, never the JSON.
        Ok(Needs::empty())
    }

    fn filter_batch(batch: Batch) -> BatchResult {
        let verdicts = RULES.with(|r| {
            let r = r.borrow();
            batch
                .events
                .iter()
                .map(|e| {
                    let verb = text(&batch, e.verb);
                    let read = r.verbs.iter().any(|v| v == verb);
                    let user = text(&batch, e.username);
                    let system = r.prefixes.iter().any(|p| user.starts_with(p.as_str()));
                    if read && system {
                        Verdict::Drop
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

export!(DropReadOnly);

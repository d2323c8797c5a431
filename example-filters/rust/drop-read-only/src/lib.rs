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

use exports::audit_forwarder::filter::filter::{Event, Guest, Verdict};
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
    fn configure(config: String) -> Result<(), String> {
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
        Ok(())
    }

    fn filter_batch(events: Vec<Event>) -> Vec<Verdict> {
        RULES.with(|r| {
            let r = r.borrow();
            events
                .iter()
                .map(|e| {
                    let read = r.verbs.iter().any(|v| *v == e.verb);
                    let system = r
                        .prefixes
                        .iter()
                        .any(|p| e.username.starts_with(p.as_str()));
                    if read && system {
                        Verdict::Drop
                    } else {
                        Verdict::Keep
                    }
                })
                .collect()
        })
    }
}

export!(DropReadOnly);

//! Adds the cluster's identity to every event, as top-level fields
//! (`set-fields`: the host splices them in, the event is not re-serialised).
//!
//! ```toml
//! [[outputs.filters]]
//! wasm = "/filters/add-cluster-id.wasm"
//! config = { cluster = "shoot--prod--a", field = "clusterID", extra = { landscape = "eu1" } }
//! ```
//! `cluster` is required; `field` defaults to `clusterID`; `extra` adds more
//! string fields.

wit_bindgen::generate!({ path: "../../../filters-wit", world: "audit-filter" });

use audit_forwarder::filter::host::log;
use audit_forwarder::filter::types::Field;
use audit_forwarder::filter::types::LogLevel;
use audit_forwarder::filter::types::{Needs, Verdict};
use exports::audit_forwarder::filter::filter::{Batch, BatchResult, Guest};
use std::cell::RefCell;

thread_local! {
    static FIELDS: RefCell<Vec<Field>> = const { RefCell::new(Vec::new()) };
}

struct AddClusterId;

impl Guest for AddClusterId {
    fn configure(config: String) -> Result<Needs, String> {
        let c: serde_json::Value =
            serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        let cluster = c["cluster"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or("config: `cluster` (a non-empty string) is required")?;
        let field = c.get("field").map_or(Some("clusterID"), |v| v.as_str());
        let field = field.ok_or("config: `field` must be a string")?;
        let mut fields = vec![Field {
            key: field.to_string(),
            value: serde_json::Value::from(cluster).to_string(),
        }];
        if let Some(extra) = c.get("extra") {
            let extra = extra.as_object().ok_or("config: `extra` must be a table")?;
            for (k, v) in extra {
                fields.push(Field {
                    key: k.clone(),
                    value: v.to_string(),
                });
            }
        }
        for k in c.as_object().into_iter().flat_map(|o| o.keys()) {
            if !["cluster", "field", "extra"].contains(&k.as_str()) {
                return Err(format!("config: unknown key `{k}`"));
            }
        }
        log(LogLevel::Info, &format!("adding {field} = {cluster:?}"));
        FIELDS.with(|f| *f.borrow_mut() = fields);
        // Reads only the extracted fields, never the JSON.
        Ok(Needs::empty())
    }

    /// One field set for the whole batch; every event names it.
    fn filter_batch(batch: Batch) -> BatchResult {
        BatchResult {
            verdicts: vec![Verdict::SetFields(0); batch.events.len()],
            field_sets: vec![FIELDS.with(|f| f.borrow().clone())],
        }
    }
}

export!(AddClusterId);

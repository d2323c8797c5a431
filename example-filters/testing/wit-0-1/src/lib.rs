//! A test guest built against `audit-forwarder:filter@0.1.0`, the interface
//! before 0.2.0 (one string per field per event): the host must reject it
//! with a message that says to rebuild.

wit_bindgen::generate!({ path: "wit", world: "audit-filter" });

use exports::audit_forwarder::filter::filter::{Event, Guest, Verdict};

struct Old;

impl Guest for Old {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn filter_batch(events: Vec<Event>) -> Vec<Verdict> {
        events.iter().map(|_| Verdict::Keep).collect()
    }
}

export!(Old);

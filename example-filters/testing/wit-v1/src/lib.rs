//! A test guest built against `audit-forwarder:filter@1.0.0`.

wit_bindgen::generate!({ path: "wit", world: "audit-filter" });

use exports::audit_forwarder::filter::filter::Guest;

struct V1;

impl Guest for V1 {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn filter_batch(events: Vec<String>) -> Vec<bool> {
        events.iter().map(|_| true).collect()
    }
}

export!(V1);

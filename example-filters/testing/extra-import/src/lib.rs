//! A test guest that imports `test:extra-import/net`, which the host does
//! not provide: loading it must fail with a clear error.

wit_bindgen::generate!({ path: "wit", world: "guest", generate_all });

use exports::audit_forwarder::filter::filter::{Event, Guest, Verdict};

struct Extra;

impl Guest for Extra {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn filter_batch(events: Vec<Event>) -> Vec<Verdict> {
        let _ = test::extra_import::net::open("10.0.0.1:443");
        events.iter().map(|_| Verdict::Keep).collect()
    }
}

export!(Extra);

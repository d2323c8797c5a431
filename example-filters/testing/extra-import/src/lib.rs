//! A test guest that imports `test:extra-import/net`, which the host does
//! not provide: loading it must fail with a clear error.

wit_bindgen::generate!({ path: "wit", world: "guest", generate_all });

use audit_forwarder::filter::types::{Needs, Verdict};
use exports::audit_forwarder::filter::filter::{Batch, BatchResult, Guest};

struct Extra;

impl Guest for Extra {
    fn configure(_config: String) -> Result<Needs, String> {
        // Reads only the extracted fields, never the JSON.
        Ok(Needs::empty())
    }

    fn filter_batch(batch: Batch) -> BatchResult {
        let _ = test::extra_import::net::open("10.0.0.1:443");
        BatchResult {
            verdicts: vec![Verdict::Keep; batch.events.len()],
            field_sets: Vec::new(),
        }
    }
}

export!(Extra);

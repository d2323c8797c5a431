//! A test guest: its `mode` (from the config) makes it behave well or
//! badly, so that the host's tests can prove each misbehaviour is
//! contained. Unknown config keys are ignored.
//!
//! Modes: `tag` (default: sets `"probe": "tag"`), `loop` (never returns),
//! `alloc` (asks for 1 GiB), `panic`, `panic-on-user` (panics on a batch
//! holding an event of user `panic-me`, keeps otherwise), `wrong-count`
//! (one verdict too few), `bad-json` (replaces with invalid JSON),
//! `print` (writes to stdout and stderr, then keeps), `configure-error`.

wit_bindgen::generate!({ path: "../../../filters-wit", world: "audit-filter" });

use audit_forwarder::filter::types::Field;
use exports::audit_forwarder::filter::filter::{Event, Guest, Verdict};
use std::cell::RefCell;

thread_local! {
    static MODE: RefCell<String> = RefCell::new("tag".into());
}

struct Probe;

impl Guest for Probe {
    fn configure(config: String) -> Result<(), String> {
        let c: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let mode = c["mode"].as_str().unwrap_or("tag").to_string();
        if mode == "configure-error" {
            return Err("this filter refuses its configuration".into());
        }
        MODE.with(|m| *m.borrow_mut() = mode);
        Ok(())
    }

    fn filter_batch(events: Vec<Event>) -> Vec<Verdict> {
        let mode = MODE.with(|m| m.borrow().clone());
        match mode.as_str() {
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "alloc" => {
                let v = vec![1u8; 1 << 30];
                let n = std::hint::black_box(&v).len();
                events
                    .iter()
                    .map(|_| if n > 0 { Verdict::Keep } else { Verdict::Drop })
                    .collect()
            }
            "panic" => panic!("the probe panics on purpose"),
            "panic-on-user" => {
                if events.iter().any(|e| e.username == "panic-me") {
                    panic!("the probe panics on user panic-me");
                }
                events.iter().map(|_| Verdict::Keep).collect()
            }
            "wrong-count" => events.iter().skip(1).map(|_| Verdict::Keep).collect(),
            "bad-json" => events
                .iter()
                .map(|_| Verdict::Replace("{not json".into()))
                .collect(),
            "print" => {
                println!("hello from the probe on stdout ({} events)", events.len());
                eprintln!("hello from the probe on stderr");
                events.iter().map(|_| Verdict::Keep).collect()
            }
            _ => events
                .iter()
                .map(|_| {
                    Verdict::SetFields(vec![Field {
                        key: "probe".into(),
                        value: "\"tag\"".into(),
                    }])
                })
                .collect(),
        }
    }
}

export!(Probe);

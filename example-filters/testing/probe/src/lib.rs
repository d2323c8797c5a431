//! A test guest: its `mode` (from the config) makes it behave well or
//! badly, so that the host's tests can prove each misbehaviour is
//! contained. Unknown config keys are ignored.
//!
//! It says it needs the events' JSON (unless config `json = false`) and
//! panics on an event whose `json` span is not a JSON object, or not empty
//! when it did not ask for it (a host bug).
//!
//! Modes: `tag` (default: sets `"probe": "tag"`), `loop` (never returns),
//! `alloc` (asks for 1 GiB), `panic`, `panic-on-user` (panics on a batch
//! holding an event of user `panic-me`, keeps otherwise), `wrong-count`
//! (one verdict too few), `bad-json` (replaces with invalid JSON),
//! `bad-set` (names a field set the result lacks), `bad-value` (a field
//! set whose value is not JSON), `print` (writes to stdout and stderr, then
//! keeps), `echo` (sets `"seen"` to every field it got, as the guest read
//! it from the batch: the host's spans under test), `configure-error`.

wit_bindgen::generate!({ path: "../../../filters-wit", world: "audit-filter" });

use audit_forwarder::filter::types::{Event, Field, Needs, Span, Verdict};
use exports::audit_forwarder::filter::filter::{Batch, BatchResult, Guest};
use std::cell::RefCell;

thread_local! {
    static MODE: RefCell<String> = RefCell::new("tag".into());
    /// Whether it asked for the events' JSON (config `json`, default true).
    static JSON: RefCell<bool> = const { RefCell::new(true) };
}

/// A span of the batch's text; panics on a span that is out of range or
/// not UTF-8 (a host bug this guest exists to catch).
fn text(batch: &Batch, s: Span) -> &str {
    let t = &batch.text[s.start as usize..(s.start + s.len) as usize];
    std::str::from_utf8(t).expect("span is UTF-8")
}

/// Every field of `e` as the guest sees it, as a JSON object.
fn seen(batch: &Batch, e: &Event) -> serde_json::Value {
    let t = |s| text(batch, s);
    let groups = &batch.groups[e.groups.start as usize..(e.groups.start + e.groups.len) as usize];
    let json: serde_json::Value = if JSON.with(|j| *j.borrow()) {
        serde_json::from_str(t(e.json)).expect("json span is JSON")
    } else {
        assert_eq!(e.json.len, 0, "no JSON asked for, none given");
        serde_json::Value::Null
    };
    serde_json::json!({
        "auditID": t(e.audit_id),
        "verb": t(e.verb),
        "username": t(e.username),
        "groups": groups.iter().map(|&g| t(g)).collect::<Vec<_>>(),
        "namespace": t(e.namespace),
        "resource": t(e.resource),
        "subresource": t(e.subresource),
        "name": t(e.name),
        "apiGroup": t(e.api_group),
        "stage": t(e.stage),
        "level": t(e.level),
        "requestURI": t(e.request_uri),
        "json": json,
    })
}

fn all(n: usize, v: Verdict) -> BatchResult {
    BatchResult {
        verdicts: vec![v; n],
        field_sets: Vec::new(),
    }
}

fn set(key: &str, value: &str) -> Vec<Field> {
    vec![Field {
        key: key.into(),
        value: value.into(),
    }]
}

struct Probe;

impl Guest for Probe {
    fn configure(config: String) -> Result<Needs, String> {
        let c: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let mode = c["mode"].as_str().unwrap_or("tag").to_string();
        if mode == "configure-error" {
            return Err("this filter refuses its configuration".into());
        }
        MODE.with(|m| *m.borrow_mut() = mode);
        let json = c["json"].as_bool().unwrap_or(true);
        JSON.with(|j| *j.borrow_mut() = json);
        Ok(if json { Needs::JSON } else { Needs::empty() })
    }

    fn filter_batch(batch: Batch) -> BatchResult {
        let mode = MODE.with(|m| m.borrow().clone());
        let n = batch.events.len();
        match mode.as_str() {
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "alloc" => {
                let v = vec![1u8; 1 << 30];
                let k = std::hint::black_box(&v).len();
                all(n, if k > 0 { Verdict::Keep } else { Verdict::Drop })
            }
            "panic" => panic!("the probe panics on purpose"),
            "panic-on-user" => {
                if batch
                    .events
                    .iter()
                    .any(|e| text(&batch, e.username) == "panic-me")
                {
                    panic!("the probe panics on user panic-me");
                }
                all(n, Verdict::Keep)
            }
            "wrong-count" => all(n.saturating_sub(1), Verdict::Keep),
            "bad-json" => all(n, Verdict::Replace("{not json".into())),
            "bad-set" => BatchResult {
                verdicts: vec![Verdict::SetFields(1); n],
                field_sets: vec![set("probe", "\"tag\"")],
            },
            "bad-value" => BatchResult {
                verdicts: vec![Verdict::SetFields(0); n],
                field_sets: vec![set("probe", "{not json")],
            },
            "print" => {
                println!("hello from the probe on stdout ({n} events)");
                eprintln!("hello from the probe on stderr");
                all(n, Verdict::Keep)
            }
            "echo" => BatchResult {
                verdicts: (0..n as u32).map(Verdict::SetFields).collect(),
                field_sets: batch
                    .events
                    .iter()
                    .map(|e| set("seen", &seen(&batch, e).to_string()))
                    .collect(),
            },
            _ => {
                for e in &batch.events {
                    let v = seen(&batch, e);
                    assert!(
                        v["json"].is_object() || !JSON.with(|j| *j.borrow()),
                        "json span is an object"
                    );
                }
                BatchResult {
                    verdicts: vec![Verdict::SetFields(0); n],
                    field_sets: vec![set("probe", "\"tag\"")],
                }
            }
        }
    }
}

export!(Probe);

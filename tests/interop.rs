//! Interoperability with real third-party Forward peers installed from the
//! registries (see tests/interop/): `@fluent-org/logger` (npm) FluentServer and
//! FluentClient, and Python `fluent-logger` (PyPI).
//!
//! Needs `npm ci --prefix tests/interop` and `pip install -r
//! tests/interop/requirements.txt` (the README's test command does both).

mod common;

use audit_forwarder::synth::Mix;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn interop_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        d.join("node_modules/@fluent-org/logger").is_dir(),
        "tests/interop/node_modules is missing: run `npm ci --prefix tests/interop` (the README's test command does)"
    );
    d
}

/// The sample events every client test sends, parsed.
fn sample_events() -> (PathBuf, Vec<serde_json::Value>) {
    let events = interop_dir().join("sample-events.jsonl");
    let text = std::fs::read_to_string(&events).unwrap();
    let want = text.lines().map(json_value).collect();
    (events, want)
}

#[test]
fn our_forwarder_to_fluent_org_server_with_acks_plain_and_gzip() {
    for gzip in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let server = NodeServer::start(&[]);
        let log = d.path().join("audit.log");
        let mut api = ApiServerLog::new(&log, 11, Mix::Metadata);
        api.write(300);
        api.rotate();
        api.write(200);
        let mut args = forward_args(&log, &d.path().join("state"), server.port);
        args.extend([
            "--oneshot".into(),
            "--set".into(),
            "tail.start_at=\"oldest\"".into(),
        ]);
        args.extend(["--set".into(), format!("output.gzip={gzip}")]);
        args.extend(["--set".into(), "output.max_batch_events=64".into()]);
        let mut f = spawn_forward(&args);
        assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
        assert_eq!(server.records(api.written.len()), json_values(&api.written));
    }
}

/// A DATA GAP goes out as a chunk without events carrying `af_gap`
/// (this program's option): @fluent-org/logger's server acks and ignores
/// it, and every event still arrives.
#[test]
fn our_gap_chunks_are_acked_and_ignored_by_fluent_org_server() {
    let d = tempfile::tempdir().unwrap();
    let server = NodeServer::start(&[]);
    let log = d.path().join("audit.log");
    let state = d.path().join("state");
    let mut api = ApiServerLog::new(&log, 13, Mix::Metadata);
    api.write(100);
    let args = |extra: &[&str]| {
        let mut a = forward_args(&log, &state, server.port);
        a.push("--oneshot".into());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let mut f = spawn_forward(&args(&[]));
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    let rotated = api.rotate();
    std::fs::remove_file(&rotated).unwrap();
    api.write(50);
    let mut f = spawn_forward(&args(&[]));
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert!(f.all_logs().contains("DATA GAP"), "{}", f.all_logs());
    assert_eq!(server.records(150), json_values(&api.written));
}

fn node_client(port: u16, mode: &str, file: &Path) {
    let dir = interop_dir();
    let out = Command::new("node")
        .arg(dir.join("fluent-client.js"))
        .args([
            "--port",
            &port.to_string(),
            "--mode",
            mode,
            "--ack",
            "--batch",
            "7",
            "--time-field",
            "stageTimestamp",
            "--timeout",
            "30",
        ])
        .arg(file)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "fluent-client.js {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("SENT "));
}

#[test]
fn fluent_org_client_to_our_receiver_in_every_mode_with_acks() {
    let d = tempfile::tempdir().unwrap();
    let (events, want) = sample_events();
    for mode in ["message", "forward", "packed", "compressed"] {
        let out = d.path().join(format!("{mode}.jsonl"));
        let (_rx, port) = receiver(&out, &[]);
        node_client(port, mode, &events);
        // The client exits only after every ack: all records must be written already.
        assert_eq!(json_values(&read_lines(&out)), want, "mode {mode}");
    }
}

#[test]
fn python_fluent_logger_to_our_receiver() {
    let d = tempfile::tempdir().unwrap();
    let (events, want) = sample_events();
    let out = d.path().join("py.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let o = Command::new("python3")
        .arg(interop_dir().join("fluent_sender.py"))
        .args([
            "--port",
            &port.to_string(),
            "--time-field",
            "stageTimestamp",
            "--timeout",
            "30",
        ])
        .arg(&events)
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "fluent_sender.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Python's sender has no acks: wait for the lines (bounded).
    assert_eq!(json_values(&wait_lines(&out, want.len())), want);
}

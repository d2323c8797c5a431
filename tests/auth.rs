//! The Forward handshake (shared key, users) between our sides and against a
//! real peer (@fluent-org/logger, npm).

mod common;

use audit_forwarder::synth::Mix;
use common::*;
use std::path::Path;
use std::process::Command;

const RECV_SEC: &[&str] = &[
    "--set",
    "receive.shared_key=\"s3cret\"",
    "--set",
    "receive.self_hostname=\"receiver-host\"",
    "--set",
    "receive.users=[{username=\"alice\",password=\"pw\"}]",
];

fn fwd_args(log: &Path, state: &Path, port: u16, key: &str, user: &str, pw: &str) -> Vec<String> {
    let mut a = forward_args(log, state, port);
    for s in [
        format!("output.shared_key=\"{key}\""),
        format!("output.username=\"{user}\""),
        format!("output.password=\"{pw}\""),
        "output.self_hostname=\"forwarder-host\"".to_string(),
    ] {
        a.extend(["--set".to_string(), s]);
    }
    a
}

#[test]
fn shared_key_and_user_authentication_between_our_sides() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, RECV_SEC);
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 51, Mix::Metadata);
    api.write(300);
    let mut a = fwd_args(&log, &d.path().join("s"), port, "s3cret", "alice", "pw");
    a.push("--oneshot".into());
    let mut f = spawn_forward(&a);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert_eq!(read_lines(&out), api.written);
}

#[test]
fn wrong_key_wrong_password_and_missing_helo_fail_closed_with_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 52, Mix::Metadata);
    api.write(10);
    for (i, (key, pw, recv_args, want_fwd, want_recv)) in [
        (
            "wrong",
            "pw",
            RECV_SEC,
            "shared_key mismatch",
            Some("shared_key mismatch"),
        ),
        (
            "s3cret",
            "bad",
            RECV_SEC,
            "username/password mismatch",
            Some("username/password mismatch"),
        ),
        ("s3cret", "pw", &[][..], "no HELO from the server", None),
    ]
    .into_iter()
    .enumerate()
    {
        let out = d.path().join(format!("out{i}.jsonl"));
        let (rx, port) = receiver(&out, recv_args);
        let mut a = fwd_args(
            &log,
            &d.path().join(format!("s{i}")),
            port,
            key,
            "alice",
            pw,
        );
        a.extend(["--set".into(), "output.connect_timeout=\"500ms\"".into()]);
        let mut f = spawn_forward(&a);
        f.wait_log(want_fwd);
        if let Some(w) = want_recv {
            rx.wait_log(w);
        }
        f.kill9();
        assert!(
            read_lines(&out).is_empty(),
            "nothing may be written or acked"
        );
        let cp = d.path().join(format!("s{i}/checkpoint-default.json"));
        if let Ok(text) = std::fs::read_to_string(cp) {
            let cp: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                cp["offset"], 0,
                "nothing acked, the checkpoint did not move"
            );
        }
    }
}

fn interop_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

#[test]
fn our_forwarder_authenticates_to_fluent_org_server() {
    let d = tempfile::tempdir().unwrap();
    let srv = NodeServer::start(&[
        "--shared-key",
        "s3cret",
        "--username",
        "alice",
        "--password",
        "pw",
    ]);
    let port = srv.port;
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 53, Mix::Metadata);
    api.write(100);
    let mut a = fwd_args(&log, &d.path().join("s"), port, "s3cret", "alice", "pw");
    a.push("--oneshot".into());
    let mut f = spawn_forward(&a);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert_eq!(srv.records(100), json_values(&api.written));
    // Regression: a salt of raw random bytes in a msgpack str is read as
    // UTF-8 text by this server, so the digest failed on almost every try.
    assert!(
        !f.all_logs().contains("mismatch"),
        "the first handshake must succeed:\n{}",
        f.all_logs()
    );
}

#[test]
fn fluent_org_client_authenticates_to_our_receiver() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, RECV_SEC);
    let events = interop_dir().join("sample-events.jsonl");
    let run = |pw: &str| {
        Command::new("node")
            .arg(interop_dir().join("fluent-client.js"))
            .args([
                "--port",
                &port.to_string(),
                "--ack",
                "--shared-key",
                "s3cret",
                "--username",
                "alice",
            ])
            .args(["--password", pw, "--timeout", "20"])
            .arg(&events)
            .output()
            .unwrap()
    };
    let o = run("pw");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = std::fs::read_to_string(&events).unwrap().lines().count();
    assert_eq!(read_lines(&out).len(), want);
    let o = run("wrong");
    assert!(!o.status.success(), "a wrong password must fail");
    assert_eq!(
        read_lines(&out).len(),
        want,
        "nothing written for the rejected client"
    );
}

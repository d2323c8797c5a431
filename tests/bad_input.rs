//! Bad input in the audit log: each case has a defined outcome, and nothing
//! else is lost.

mod common;

use common::*;
use std::io::Write;

const A: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a","stage":"ResponseComplete","verb":"get"}"#;
const B: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"b","stage":"ResponseComplete","verb":"list"}"#;

/// Appends `text` to the file at `path` (as the apiserver does).
fn append(path: &std::path::Path, text: &str) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

fn bad_log(path: &std::path::Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
    let mut body: Vec<u8> = Vec::new();
    body.extend_from_slice(A.as_bytes());
    body.extend_from_slice(b"\n{\"kind\":\"Event\", \"broken\n"); // invalid JSON
    body.extend_from_slice(b"{\"kind\":\"Event\",\"x\":\"\xff\xfe\"}\n"); // invalid UTF-8
    body.extend_from_slice(b"[1,2,3]\n"); // not an object
    body.extend_from_slice(b"{\"a\":\"nul\x00byte\"}\n"); // NUL byte
    body.extend_from_slice(deep.as_bytes());
    body.extend_from_slice(b"\n\n   \n"); // empty lines
    body.extend_from_slice(format!("{{\"big\":\"{}\"}}\n", "x".repeat(2 << 20)).as_bytes()); // over the 1 MiB limit
    body.extend_from_slice(B.as_bytes());
    body.extend_from_slice(b"\n{\"kind\":\"Ev"); // truncated last line, no newline yet
    f.write_all(&body).unwrap();
}

#[test]
fn invalid_lines_are_forwarded_raw_with_a_reason_by_default() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    bad_log(&log);
    let f = oneshot(
        &log,
        &d.path().join("state"),
        port,
        &["--set", "tail.max_line_bytes=1048576"],
    );
    let got: Vec<serde_json::Value> = read_lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 7, "{got:#?}");
    assert_eq!(got[0]["auditID"], "a");
    let reasons: Vec<String> = got[1..6]
        .iter()
        .map(|v| v["error"].as_str().unwrap().to_string())
        .collect();
    assert!(reasons[0].contains("invalid JSON"), "{reasons:?}");
    assert!(reasons[1].contains("invalid UTF-8"), "{reasons:?}");
    assert!(reasons[2].contains("not an object"), "{reasons:?}");
    assert!(reasons[3].contains("control character"), "{reasons:?}");
    assert!(reasons[4].contains("nested deeper"), "{reasons:?}");
    assert_eq!(got[1]["log"], "{\"kind\":\"Event\", \"broken");
    assert_eq!(
        got[2]["log"], "{\"kind\":\"Event\",\"x\":\"\u{fffd}\u{fffd}\"}",
        "invalid bytes become U+FFFD"
    );
    assert_eq!(got[6]["auditID"], "b");
    let logs = f.all_logs();
    assert!(
        logs.contains("skipping a line longer than max_line_bytes"),
        "{logs}"
    );
    assert!(logs.contains("the last line has no newline yet"), "{logs}");
    assert!(
        !logs.contains("nul\\u0000byte") && !logs.contains("broken"),
        "event bodies must not be logged"
    );
}

#[test]
fn invalid_lines_can_be_dropped() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    bad_log(&log);
    oneshot(
        &log,
        &d.path().join("state"),
        port,
        &[
            "--set",
            "tail.max_line_bytes=1048576",
            "--set",
            "tail.on_invalid=\"drop\"",
        ],
    );
    let got = read_lines(&out);
    assert_eq!(got, vec![A.to_string(), B.to_string()]);
}

#[test]
fn a_20_mb_line_over_the_default_limit_is_skipped_and_the_file_is_not_abandoned() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let mut f = std::fs::File::create(&log).unwrap();
    writeln!(f, "{A}").unwrap();
    writeln!(f, "{{\"big\":\"{}\"}}", "x".repeat(20 << 20)).unwrap();
    writeln!(f, "{B}").unwrap();
    drop(f);
    let p = oneshot(&log, &d.path().join("state"), port, &[]);
    assert_eq!(read_lines(&out), vec![A.to_string(), B.to_string()]);
    assert!(p.all_logs().contains("max_line_bytes"));
}

#[test]
fn a_5_mb_event_under_the_limit_passes_intact() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let big = format!(
        "{{\"auditID\":\"big\",\"requestObject\":{{\"data\":\"{}\"}}}}",
        "y".repeat(5 << 20)
    );
    std::fs::write(&log, format!("{A}\n{big}\n{B}\n")).unwrap();
    oneshot(&log, &d.path().join("state"), port, &[]);
    assert_eq!(read_lines(&out), vec![A.to_string(), big, B.to_string()]);
}

#[test]
fn an_unterminated_last_line_of_a_rotated_file_is_final_and_forwarded() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let state = d.path().join("state");
    std::fs::write(&log, format!("{A}\n")).unwrap();
    oneshot(&log, &state, port, &[]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"{\"auditID\":\"cut")
        .unwrap();
    std::fs::rename(&log, d.path().join("audit-2026-01-01T00-00-00.000.log")).unwrap();
    std::fs::write(&log, format!("{B}\n")).unwrap();
    oneshot(&log, &state, port, &[]);
    let got = read_lines(&out);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], A);
    let raw: serde_json::Value = serde_json::from_str(&got[1]).unwrap();
    assert_eq!(raw["log"], "{\"auditID\":\"cut");
    assert_eq!(got[2], B);
}

#[test]
fn empty_file_and_copytruncate() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let state = d.path().join("state");
    std::fs::write(&log, "").unwrap();
    oneshot(&log, &state, port, &[]);
    assert!(read_lines(&out).is_empty());
    std::fs::write(&log, format!("{A}\n{A}\n")).unwrap();
    oneshot(&log, &state, port, &[]);
    assert_eq!(read_lines(&out).len(), 2);
    // copytruncate: the file is emptied in place and written again.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    append(&log, &format!("{B}\n"));
    let f = oneshot(&log, &state, port, &[]);
    assert_eq!(read_lines(&out).last().unwrap(), B);
    assert!(f.all_logs().contains("truncated"), "{}", f.all_logs());
}

#[test]
fn a_fifo_or_directory_at_the_path_is_reported_and_waited_out() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    std::fs::create_dir(&log).unwrap();
    let f = spawn_forward(&forward_args(&log, &d.path().join("state"), port));
    f.wait_log("is not a regular file");
    std::fs::remove_dir(&log).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&log)
            .status()
            .unwrap()
            .success()
    );
    std::fs::remove_file(&log).unwrap();
    std::fs::write(&log, format!("{A}\n")).unwrap();
    assert_eq!(wait_lines(&out, 1), vec![A.to_string()]);
}

#[test]
fn an_event_larger_than_max_record_bytes_is_dropped_not_stalling_the_output() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    // The receiver refuses frames over 64 KiB; the forwarder caps records at 32 KiB.
    let (_rx, port) = receiver(&out, &["--set", "receive.max_frame_bytes=65536"]);
    let log = d.path().join("audit.log");
    let big = format!("{{\"auditID\":\"big\",\"x\":\"{}\"}}", "y".repeat(100_000));
    std::fs::write(&log, format!("{A}\n{big}\n{B}\n")).unwrap();
    let f = oneshot(
        &log,
        &d.path().join("state"),
        port,
        &["--set", "output.max_record_bytes=32768"],
    );
    assert_eq!(read_lines(&out), vec![A.to_string(), B.to_string()]);
    assert!(
        f.all_logs().contains("exceeds max_record_bytes"),
        "{}",
        f.all_logs()
    );
}

#[test]
fn copytruncate_followed_by_more_data_than_was_read_is_detected_while_running() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 41, audit_forwarder::synth::Mix::Metadata);
    api.write(50);
    let f = spawn_forward(&forward_args(&log, &d.path().join("state"), port));
    wait_lines(&out, 50);
    // Truncate in place and write more than had been read before.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    let before = api.written.len();
    let mut api2 = ApiServerLog::new(&log, 42, audit_forwarder::synth::Mix::Metadata);
    api2.write(200);
    let got = wait_lines(&out, before + 200);
    assert_eq!(
        got[before..],
        api2.written[..],
        "the rewritten file is read from its start, intact"
    );
    f.wait_log("truncated in place");
}

#[test]
fn an_unreadable_log_is_reported_retried_and_read_once_permitted() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    std::fs::write(&log, format!("{A}\n")).unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o000)).unwrap();
    // As root, drop the capabilities that bypass file permissions.
    let root = unsafe { libc::geteuid() } == 0;
    let wrapper: &[&str] = if root {
        &[
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
        ]
    } else {
        &[]
    };
    let mut args = forward_args(&log, &d.path().join("state"), port);
    args.extend(["--set".into(), "http_listen=\"127.0.0.1:0\"".into()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = Proc::spawn_via(wrapper, &a, &[]);
    let line = f.wait_log("cannot open audit log file");
    assert!(line.contains("Permission denied"), "{line}");
    let mport = http_port(&f);
    wait_metrics(mport, "read errors", |t| {
        metric(t, "audit_forwarder_read_errors_total", "output=\"default\"") >= 2.0
    });
    assert!(read_lines(&out).is_empty());
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    append(&log, &format!("{B}\n"));
    assert_eq!(wait_lines(&out, 2), vec![A.to_string(), B.to_string()]);
}

#[test]
fn a_50_mb_event_passes_intact_when_max_line_bytes_allows_it() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &["--set", "receive.max_frame_bytes=104857600"]);
    let log = d.path().join("audit.log");
    let big = format!(
        "{{\"auditID\":\"big\",\"requestObject\":{{\"data\":\"{}\"}}}}",
        "z".repeat(50 << 20)
    );
    std::fs::write(&log, format!("{A}\n{big}\n{B}\n")).unwrap();
    oneshot(
        &log,
        &d.path().join("state"),
        port,
        &[
            "--set",
            "tail.max_line_bytes=67108864",
            "--set",
            "output.max_record_bytes=67108864",
        ],
    );
    let got = read_lines(&out);
    assert_eq!(got.len(), 3);
    assert!(got[1] == big, "the 50 MB event changed on the way");
}

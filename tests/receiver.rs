//! The receiver against hostile or broken clients: each case closes that
//! connection only, and the receiver keeps serving others.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;

/// A valid Message-mode message with a chunk id: [tag, time, {"k": v}, {"chunk": id}].
fn message(v: u8, chunk: &str) -> Vec<u8> {
    let mut f = vec![0x94, 0xa1, b't', 0x05, 0x81, 0xa1, b'k', v, 0x81, 0xa5];
    f.extend_from_slice(b"chunk");
    f.push(0xa0 | chunk.len() as u8);
    f.extend_from_slice(chunk.as_bytes());
    f
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Sends a message and reads its ack.
fn send_acked(port: u16, v: u8, chunk: &str) {
    let mut s = connect(port);
    acked(&mut s, v, chunk);
}

/// Sends a message on `s` and reads its ack (the connection has then
/// proven itself: it is no longer evicted for others).
fn acked(s: &mut TcpStream, v: u8, chunk: &str) {
    s.write_all(&message(v, chunk)).unwrap();
    let mut ack = vec![0u8; 6 + chunk.len()];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(&ack[..5], b"\x81\xa3ack");
    assert_eq!(&ack[6..], chunk.as_bytes());
}

/// Reads until the server closes the connection (bounded by WAIT).
fn closed_by_server(mut s: TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn garbage_bombs_and_idle_clients_close_their_connection_only() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (rx, port) = receiver(
        &out,
        &[
            "--set",
            "receive.max_frame_bytes=1048576",
            "--set",
            "receive.idle_timeout=\"1s\"",
        ],
    );

    // Garbage bytes (the reserved msgpack marker 0xc1).
    let mut s = connect(port);
    s.write_all(b"\xc1GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(closed_by_server(s));
    rx.wait_log("reserved marker");

    // A msgpack bomb: a bin32 declaring 4 GiB, refused from its header.
    let mut s = connect(port);
    s.write_all(&[0x93, 0xa1, b't', 0xc6, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    assert!(closed_by_server(s));
    rx.wait_log("frame larger than the limit");

    // An array32 declaring 4 billion entries.
    let mut s = connect(port);
    s.write_all(&[0xdd, 0xff, 0xff, 0xff, 0xff]).unwrap();
    assert!(closed_by_server(s));

    // Not a Forward message (a bare integer).
    let mut s = connect(port);
    s.write_all(&[0x07]).unwrap();
    assert!(closed_by_server(s));
    rx.wait_log("not a Forward message");

    // A client that connects and never speaks is closed after idle_timeout.
    let s = connect(port);
    assert!(closed_by_server(s));
    rx.wait_log("idle for");

    // Through all of that, valid clients are served.
    send_acked(port, 1, "c1");
    assert_eq!(read_lines(&out), vec!["{\"k\":1}".to_string()]);
}

#[test]
fn a_gzip_bomb_and_a_deeply_nested_record_close_their_connection_only() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (rx, port) = receiver(&out, &["--set", "receive.max_decompressed_bytes=1048576"]);
    // CompressedPackedForward whose 16 KiB of gzip inflate to 16 MiB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0xc0u8; 16 << 20]).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 64 << 10, "{}", gz.len());
    let mut f = vec![0x93, 0xa1, b't', 0xc6];
    f.extend_from_slice(&(gz.len() as u32).to_be_bytes());
    f.extend_from_slice(&gz);
    f.extend_from_slice(b"\x81\xaacompressed\xa4gzip");
    let mut s = connect(port);
    s.write_all(&f).unwrap();
    assert!(closed_by_server(s));
    rx.wait_log("max_decompressed_bytes");

    // A record nested 100,000 arrays deep.
    let mut f = vec![0x93, 0xa1, b't', 0x05];
    f.extend(std::iter::repeat_n(0x91u8, 100_000));
    f.push(0x01);
    let mut s = connect(port);
    s.write_all(&f).unwrap();
    assert!(closed_by_server(s));
    rx.wait_log("deep");

    send_acked(port, 3, "c3");
    assert_eq!(read_lines(&out), vec!["{\"k\":3}".to_string()]);
}

#[test]
fn a_thousand_idle_connections_do_not_block_a_real_client() {
    raise_nofile();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let idle: Vec<TcpStream> = (0..1000).map(|_| connect(port)).collect();
    send_acked(port, 2, "c2");
    assert_eq!(read_lines(&out), vec!["{\"k\":2}".to_string()]);
    drop(idle);
}

#[test]
fn connections_over_the_limit_are_refused_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (rx, port) = receiver(&out, &["--set", "receive.max_connections=2"]);
    let mut a = connect(port);
    let mut b = connect(port);
    // Both proven (one message each): neither is evicted for a third.
    acked(&mut a, 1, "a1");
    acked(&mut b, 2, "b1");
    let c = connect(port);
    rx.wait_log("max_connections reached");
    assert!(closed_by_server(c));
    drop((a, b));
}

/// Unauthenticated connections that never sent a message are closed,
/// oldest first, to admit new ones: idle connections cannot keep a real
/// client out, whatever the limit.
#[test]
fn idle_connections_are_evicted_for_new_ones_oldest_first() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (rx, port) = receiver(
        &out,
        &[
            "--set",
            "receive.max_connections=3",
            "--set",
            "http_listen=\"127.0.0.1:0\"",
        ],
    );
    let hp = http_port(&rx);
    let mut proven = connect(port);
    acked(&mut proven, 1, "p1");
    let idle1 = connect(port);
    let idle2 = connect(port);
    wait_metrics(hp, "3 connections", |m| {
        metric(m, "audit_forwarder_receiver_connections_active", "") == 3.0
    });
    // A fourth evicts idle1 (the oldest unproven), a fifth idle2.
    let mut c2 = connect(port);
    acked(&mut c2, 2, "c2");
    assert!(closed_by_server(idle1));
    let mut c3 = connect(port);
    acked(&mut c3, 3, "c3");
    assert!(closed_by_server(idle2));
    acked(&mut proven, 4, "p2");
    let m = wait_metrics(hp, "2 evictions", |m| {
        metric(
            m,
            "audit_forwarder_receiver_rejected_frames_total",
            "reason=\"evicted\"",
        ) == 2.0
    });
    assert_eq!(
        metric(
            &m,
            "audit_forwarder_receiver_rejected_frames_total",
            "reason=\"too_many_connections\""
        ),
        0.0
    );
    let got: Vec<String> = read_lines(&out);
    assert_eq!(got, ["{\"k\":1}", "{\"k\":2}", "{\"k\":3}", "{\"k\":4}"]);
}

#[test]
fn a_resent_chunk_is_acked_again_but_written_once() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    send_acked(port, 3, "same-id");
    send_acked(port, 3, "same-id");
    send_acked(port, 4, "other");
    assert_eq!(
        read_lines(&out),
        vec!["{\"k\":3}".to_string(), "{\"k\":4}".to_string()]
    );
}

#[test]
fn a_connection_closed_mid_message_writes_nothing_from_it() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (rx, port) = receiver(&out, &[]);
    let mut s = connect(port);
    let m = message(5, "half");
    s.write_all(&m[..m.len() / 2]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    rx.wait_log("closed in the middle of a message");
    send_acked(port, 6, "after");
    assert_eq!(read_lines(&out), vec!["{\"k\":6}".to_string()]);
}

#[test]
fn file_output_rotates_by_size_between_messages() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(
        &out,
        &[
            "--set",
            "receive.output_max_bytes=40",
            "--set",
            "receive.output_keep_files=2",
        ],
    );
    for v in 0..5u8 {
        send_acked(port, 10 + v, &format!("c{v}"));
    }
    // Each message is one 9-byte line: 4 fit in 40 bytes, then a rotation.
    let cur = read_lines(&out);
    let one = read_lines(&d.path().join("out.jsonl.1"));
    assert_eq!(
        one,
        (10..14)
            .map(|v| format!("{{\"k\":{v}}}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(cur, vec!["{\"k\":14}".to_string()]);
    assert!(!d.path().join("out.jsonl.3").exists());
}

/// `receive.tag_key`: the Forward tag of each record in its line (off by
/// default, as before).
#[test]
fn the_forward_tag_is_written_under_tag_key() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &["--set", "receive.tag_key=\"tag\""]);
    send_acked(port, 7, "tagged");
    assert_eq!(read_lines(&out), vec![r#"{"k":7,"tag":"t"}"#.to_string()]);
}

/// Files holding audit content are created 0600 (0640 with
/// `group_readable = true`); the forwarder's state directory 0700.
#[test]
fn audit_files_are_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    send_acked(port, 1, "m1");
    assert_eq!(mode(&out), 0o600);
    let shared = d.path().join("shared.jsonl");
    let (_rx2, port2) = receiver(&shared, &["--set", "group_readable=true"]);
    send_acked(port2, 2, "m2");
    assert_eq!(mode(&shared), 0o640);
    let log = d.path().join("audit.log");
    std::fs::write(&log, "{\"kind\":\"Event\",\"auditID\":\"a\"}\n").unwrap();
    let state = d.path().join("state");
    oneshot(&log, &state, port, &[]);
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("checkpoint-default.json")), 0o600);
}

/// A flood of refused connections does not flood the log: the first 10 of
/// each 10 s in full, then a count; every one is counted by reason.
#[test]
fn refusals_are_counted_each_and_logged_in_moderation() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (rx, port) = receiver(
        &out,
        &[
            "--set",
            "receive.max_connections=1",
            "--set",
            "http_listen=\"127.0.0.1:0\"",
        ],
    );
    let hp = http_port(&rx);
    let mut a = connect(port);
    acked(&mut a, 1, "a1");
    for _ in 0..40 {
        assert!(closed_by_server(connect(port)));
    }
    wait_metrics(hp, "40 refusals", |m| {
        metric(
            m,
            "audit_forwarder_receiver_rejected_frames_total",
            "reason=\"too_many_connections\"",
        ) == 40.0
    });
    let logged = rx
        .all_logs()
        .lines()
        .filter(|l| l.contains("max_connections reached"))
        .count();
    assert!(
        (1..=10).contains(&logged),
        "{logged} refusal lines for 40 refusals"
    );
    drop(a);
}

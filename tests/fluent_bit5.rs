//! fluent-bit 5.x's Forward frames, byte for byte, into our receiver.
//!
//! CI cannot build a current fluent-bit (it is in no registry), so its
//! behaviour is pinned here with golden bytes built as fluent-bit **5.1.1**
//! builds them (source read at tag v5.1.1):
//! - plugins/out_forward/forward_format.c: `flb_forward_format_forward_mode`
//!   (the default Forward mode, entries copied from the chunk), the
//!   `retain_metadata_in_forward_mode` default `true` since 5.0.5,
//!   `flb_forward_format_transcode` (retain off), the compat mode
//!   (`time_as_integer`), `flb_forward_format_message_mode`, and
//!   `append_options` (map32 header, `chunk`, `size`, `compressed`,
//!   `fluent_signal`, `metadata`);
//! - src/flb_log_event_encoder.c: an entry is `[[EventTime, metadata],
//!   body]`; an input that never sets metadata leaves fluent-bit's dynamic
//!   map32 header `df 00 00 00 00`; group markers have EventTime seconds
//!   0xFFFFFFFF / 0xFFFFFFFE;
//! - the chunk id: base64 of the first 16 bytes of SHA-512 of the entries.
//!
//! Example event throughout: tag "audit", time 1700000000.123456789,
//! record {"a":"b"}.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;

/// Parses spaced hex (`"92 a5 61"`), with `<…>` parts spliced in by the caller.
fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

const TAG: &str = "a5 61 75 64 69 74";
const TIME: &str = "d7 00 65 53 f1 00 07 5b cd 15";
const REC: &str = "81 a1 61 a1 62";
/// `[[time, {}], {"a":"b"}]` as in_dummy makes it (metadata `80`): the 18
/// bytes the golden chunk id is computed over.
const ENTRY: &str = "92 92 d7 00 65 53 f1 00 07 5b cd 15 80 81 a1 61 a1 62";
/// The chunk id fluent-bit computes over [`ENTRY`], as a str8 of 24 bytes.
const CHUNK: &str = "6Y/CXr+CgcSbvt28DiaBJQ==";

fn chunk_str() -> Vec<u8> {
    let mut v = vec![0xb8];
    v.extend_from_slice(CHUNK.as_bytes());
    v
}

/// `{"chunk": CHUNK, "size": 1, "fluent_signal": 0}` with fluent-bit's map32 header.
fn ack_options() -> Vec<u8> {
    let mut o = hex("df 00 00 00 03 a5 63 68 75 6e 6b");
    o.extend(chunk_str());
    o.extend(hex(
        "a4 73 69 7a 65 01 ad 66 6c 75 65 6e 74 5f 73 69 67 6e 61 6c 00",
    ));
    o
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Sends `frame` and reads the ack fluent-bit expects:
/// `81 a3 "ack" b8 <CHUNK>` (plugins/out_forward/forward.c, `forward_read_ack`).
fn send_acked(s: &mut TcpStream, frame: &[u8]) {
    s.write_all(frame).unwrap();
    let mut want = hex("81 a3 61 63 6b");
    want.extend(chunk_str());
    let mut ack = vec![0u8; want.len()];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, want);
}

/// A frame of `parts` (hex strings and byte vectors).
fn frame(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The gzip member fluent-bit's `flb_gzip_compress` writes: its fixed header
/// (mtime 0, XFL 0, OS 0xff), raw deflate, CRC32 and size (the deflate
/// bytes of miniz differ from flate2's; the receiver only inflates them).
fn fluent_bit_gzip(data: &[u8]) -> Vec<u8> {
    let mut out = hex("1f 8b 08 00 00 00 00 00 00 ff");
    let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    d.write_all(data).unwrap();
    out.extend(d.finish().unwrap());
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend(crc.sum().to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

/// Sends a frame holding `n` copies of the example record (acknowledged
/// when `acked`) and checks they were written after the `*count` before.
fn send(
    s: &mut TcpStream,
    out: &std::path::Path,
    count: &mut usize,
    (f, acked, n): (Vec<u8>, bool, usize),
    what: &str,
) {
    if acked {
        send_acked(s, &f);
    } else {
        s.write_all(&f).unwrap();
    }
    *count += n;
    let lines = wait_lines(out, *count);
    assert_eq!(lines.len(), *count, "{what}");
    for l in &lines[*count - n..] {
        assert_eq!(l, r#"{"a":"b"}"#, "{what}");
    }
}

#[test]
fn every_frame_fluent_bit_5_sends_is_written_and_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    // fluent-bit's chunk id is a hash of the entries, so the example's
    // frames share one: without deduplication each is written.
    let (_rx, port) = receiver(&out, &["--set", "receive.dedupe_window=0"]);
    let mut s = connect(port);
    let mut count = 0;
    let t = hex(TAG);
    // Forward mode, the 5.0.5+ default: no options, entries with metadata.
    // 92 a5 "audit" 91 92 92 d7 00 <time> 80 81 a1 61 a1 62 (26 bytes).
    let f = frame(&[&hex("92"), &t, &hex("91"), &hex(ENTRY)]);
    assert_eq!(f.len(), 26);
    send(
        &mut s,
        &out,
        &mut count,
        (f, false, 1),
        "forward, metadata {}",
    );
    // The same from in_tail: metadata and body keep the encoder's map32 headers.
    let entry = hex(&format!(
        "92 92 {TIME} df 00 00 00 00 df 00 00 00 01 a1 61 a1 62"
    ));
    send(
        &mut s,
        &out,
        &mut count,
        (frame(&[&hex("92"), &t, &hex("91"), &entry]), false, 1),
        "forward, map32 metadata",
    );
    // Require_ack_response on: options map32 {chunk, size, fluent_signal}.
    send(
        &mut s,
        &out,
        &mut count,
        (
            frame(&[&hex("93"), &t, &hex("91"), &hex(ENTRY), &ack_options()]),
            true,
            1,
        ),
        "forward with ack",
    );
    // Retain_Metadata_In_Forward_Mode off (the default before 5.0.5):
    // entries transcoded to `dd 00 00 00 02 <time> <body>`.
    send(
        &mut s,
        &out,
        &mut count,
        (
            frame(&[
                &hex("92"),
                &t,
                &hex("91"),
                &hex(&format!("dd 00 00 00 02 {TIME} {REC}")),
            ]),
            false,
            1,
        ),
        "forward, metadata off",
    );
    // time_as_integer: `[uint32 seconds, body]`.
    send(
        &mut s,
        &out,
        &mut count,
        (
            frame(&[
                &hex("92"),
                &t,
                &hex("91"),
                &hex(&format!("92 ce 65 53 f1 00 {REC}")),
            ]),
            false,
            1,
        ),
        "forward compat, integer time",
    );
    // Compress gzip: [tag, bin(gzip(entries)), {chunk, size, compressed, fluent_signal}].
    let gz = fluent_bit_gzip(&hex(ENTRY));
    let mut opts = hex("df 00 00 00 04 a5 63 68 75 6e 6b");
    opts.extend(chunk_str());
    opts.extend(hex("a4 73 69 7a 65 01 aa 63 6f 6d 70 72 65 73 73 65 64 a4 67 7a 69 70 ad 66 6c 75 65 6e 74 5f 73 69 67 6e 61 6c 00"));
    send(
        &mut s,
        &out,
        &mut count,
        (
            frame(&[&hex("93"), &t, &[0xc4, gz.len() as u8], &gz, &opts]),
            true,
            1,
        ),
        "compressed packed forward",
    );
    // Message mode (a record-accessor tag): options always sent, map32.
    send(
        &mut s,
        &out,
        &mut count,
        (
            frame(&[
                &hex("94"),
                &t,
                &hex(TIME),
                &hex(REC),
                &hex("df 00 00 00 01 ad 66 6c 75 65 6e 74 5f 73 69 67 6e 61 6c 00"),
            ]),
            false,
            1,
        ),
        "message mode",
    );
    // PackedForward, as in_forward relays it (raw entries in a bin and a str),
    // with an old-style entry `[time, body]` after a new one.
    let packed = [hex(ENTRY), hex(&format!("92 {TIME} {REC}"))].concat();
    for marker in [0xc4u8, 0xd9] {
        let f = frame(&[&hex("92"), &t, &[marker, packed.len() as u8], &packed]);
        send(&mut s, &out, &mut count, (f, false, 2), "packed forward");
    }
    // ext8 EventTime and a float time.
    send(
        &mut s,
        &out,
        &mut count,
        (
            frame(&[
                &hex("92"),
                &t,
                &hex(&format!(
                    "91 92 92 c7 08 00 65 53 f1 00 07 5b cd 15 80 {REC}"
                )),
            ]),
            false,
            1,
        ),
        "ext8 time",
    );
    send(
        &mut s,
        &out,
        &mut count,
        (
            frame(&[
                &hex("92"),
                &t,
                &hex(&format!("91 92 cb 41 d9 54 fc 40 07 e6 b7 {REC}")),
            ]),
            false,
            1,
        ),
        "float time",
    );
}

/// Group markers (an OTLP-style input's group start and end) are not
/// records; the record between them is.
#[test]
fn group_markers_are_not_written() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let start = hex("92 92 d7 00 ff ff ff ff 00 00 00 00 81 a1 67 a1 31 81 a1 72 a1 32");
    let end = hex("92 92 d7 00 ff ff ff fe 00 00 00 00 80 80");
    let mut s = connect(port);
    let f = frame(&[
        &hex("93"),
        &hex(TAG),
        &hex("93"),
        &start,
        &hex(ENTRY),
        &end,
        &ack_options(),
    ]);
    send_acked(&mut s, &f);
    assert_eq!(read_lines(&out), [r#"{"a":"b"}"#]);
}

/// `receive.metadata_key`: an entry's metadata (and Message mode's
/// `metadata` option) written under that key; empty metadata writes
/// nothing; without the key it is dropped.
#[test]
fn metadata_is_dropped_or_written_under_the_configured_key() {
    let d = tempfile::tempdir().unwrap();
    let with_meta = hex(&format!("92 92 {TIME} 81 a1 6b a1 76 {REC}"));
    let msg = frame(&[
        &hex("94"),
        &hex(TAG),
        &hex(TIME),
        &hex("82 a1 61 a1 62 a1 63 01"),
        &hex(
            "df 00 00 00 02 ad 66 6c 75 65 6e 74 5f 73 69 67 6e 61 6c 00 a8 6d 65 74 61 64 61 74 61 81 a1 6b a1 76",
        ),
    ]);
    for (key, want) in [
        (None, [r#"{"a":"b"}"#, r#"{"a":"b"}"#, r#"{"a":"b","c":1}"#]),
        (
            Some("_meta"),
            [
                r#"{"a":"b","_meta":{"k":"v"}}"#,
                r#"{"a":"b"}"#,
                r#"{"a":"b","c":1,"_meta":{"k":"v"}}"#,
            ],
        ),
    ] {
        let out = d
            .path()
            .join(format!("out-{}.jsonl", key.unwrap_or("none")));
        let set = format!("receive.metadata_key={:?}", key.unwrap_or(""));
        let (_rx, port) = receiver(&out, &["--set", &set]);
        let mut s = connect(port);
        let f = frame(&[&hex("92"), &hex(TAG), &hex("92"), &with_meta, &hex(ENTRY)]);
        s.write_all(&f).unwrap();
        s.write_all(&msg).unwrap();
        assert_eq!(wait_lines(&out, 3), want, "metadata_key {key:?}");
    }
}

/// An entry the receiver cannot decode never vanishes: the message is not
/// acknowledged (the sender keeps it), nothing of it is written, the
/// connection is closed with a reason naming the peer, and it is counted.
#[test]
fn an_undecodable_entry_is_not_acknowledged_and_is_counted() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (rx, port) = receiver(&out, &["--set", "http_listen=\"127.0.0.1:0\""]);
    let http = http_port(&rx);
    let mut s = connect(port);
    // A good entry, then one whose metadata is not a map.
    let bad = hex(&format!("92 92 {TIME} 01 {REC}"));
    let f = frame(&[
        &hex("93"),
        &hex(TAG),
        &hex("92"),
        &hex(ENTRY),
        &bad,
        &ack_options(),
    ]);
    s.write_all(&f).unwrap();
    let mut buf = Vec::new();
    // The server closes without an ack (read to EOF, bounded by WAIT).
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "no ack: {buf:x?}");
    let line = rx.wait_log("entry metadata is not a map");
    assert!(line.contains("127.0.0.1:"), "the peer is named: {line}");
    let m = wait_metrics(http, "the rejection", |m| {
        metric(
            m,
            "audit_forwarder_receiver_rejected_frames_total",
            "reason=\"not_forward\"",
        ) == 1.0
    });
    assert_eq!(
        metric(&m, "audit_forwarder_receiver_acks_total", ""),
        0.0,
        "{m}"
    );
    // The same message with the good entry only is then written once.
    let mut s = connect(port);
    send_acked(
        &mut s,
        &frame(&[
            &hex("93"),
            &hex(TAG),
            &hex("91"),
            &hex(ENTRY),
            &ack_options(),
        ]),
    );
    assert_eq!(read_lines(&out), [r#"{"a":"b"}"#]);
}

//! Corpus-guided fuzzing (proptest) of every parser that reads bytes from
//! outside: the Forward frame measurer and message decoder (incl. gzip), the
//! handshake messages, the HTTP CONNECT response parser, the webhook body
//! parser, the audit policy loader, and the tail's line splitter (checked
//! against a model).
//!
//! Inputs are seeds from `tests/fuzz-corpus/<target>/` (valid and hostile
//! samples; `make.py` wrote them) mutated by proptest: byte flips, inserts,
//! deletes, truncation, splices of msgpack length markers that declare huge
//! sizes, and plain random bytes. Properties: no panic, and **no single
//! allocation above 8 MiB** for inputs of at most 64 KiB (a declared length
//! is never trusted; the decoders' limits are 1 MiB here), checked by a
//! counting global allocator.
//!
//! Cases per target: `FUZZ_CASES` (default 20,000, the tail model a tenth;
//! CI runs the default with a fixed seed; `scripts/fuzz.sh` runs longer with
//! random seeds).

use audit_forwarder::filter::policy::Policy;
use audit_forwarder::forward::protocol::handshake::{Helo, Ping, Pong};
use audit_forwarder::forward::protocol::{decode_ack, frame};
use audit_forwarder::forward::server::message;
use audit_forwarder::ops::metrics::OutputMetrics;
use audit_forwarder::record::origin::FileInfo;
use audit_forwarder::source::tail::{StartAt, Tail, TailConfig};
use audit_forwarder::source::webhook::to_lines;
use audit_forwarder::source::{LineSink, Skip, Stopped};
use audit_forwarder::transport::proxy::{body_line, parse_head};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Records the largest single allocation request.
struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const LIMIT: usize = 1 << 20;
const MAX_ALLOC: usize = 8 << 20;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// A deterministic runner (the same inputs in every CI run), or a random
/// one with `FUZZ_RANDOM=1` (`scripts/fuzz.sh`).
fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("FUZZ_RANDOM").is_some() {
        TestRunner::new(config)
    } else {
        let rng = proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm);
        TestRunner::new_with_rng(config, rng)
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target);
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "empty corpus {}", dir.display());
    v.into_iter().map(|(_, d)| d).collect()
}

/// msgpack headers that declare sizes far beyond any input.
const BOMBS: &[&[u8]] = &[
    b"\xdd\xff\xff\xff\xff",     // array32
    b"\xdf\xff\xff\xff\xff",     // map32
    b"\xdb\xff\xff\xff\xf0",     // str32
    b"\xc6\xff\xff\xff\xf0",     // bin32
    b"\xc9\xff\xff\xff\xf0\x00", // ext32
    b"\xdc\xff\xff",             // array16
    b"\x1f\x8b\x08\x00",         // a gzip header
];

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Bomb(usize, usize),
    Repeat(usize, usize),
}

fn apply(mut d: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match *e {
            Edit::Flip(i, b) if !d.is_empty() => {
                let n = d.len();
                d[i % n] ^= b;
            }
            Edit::Insert(i, b) => {
                let i = at(i, d.len());
                d.insert(i, b);
            }
            Edit::Delete(i) if !d.is_empty() => {
                let n = d.len();
                d.remove(i % n);
            }
            Edit::Truncate(i) => {
                let i = at(i, d.len());
                d.truncate(i);
            }
            Edit::Bomb(i, k) => {
                let i = at(i, d.len());
                let b = BOMBS[k % BOMBS.len()];
                d.splice(i..i, b.iter().copied());
            }
            Edit::Repeat(i, n) if !d.is_empty() => {
                // Duplicate a slice (grows nesting and repetition).
                let i = i % d.len();
                let j = (i + 1 + n % 64).min(d.len());
                let s = d[i..j].to_vec();
                d.splice(i..i, s);
            }
            _ => {}
        }
    }
    d.truncate(64 << 10);
    d
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(i, k)| Edit::Bomb(i, k)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, n)| Edit::Repeat(i, n)),
    ]
}

/// Corpus seeds with up to 8 edits, or random bytes.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (prop::sample::select(seeds), prop::collection::vec(edit(), 0..8))
            .prop_map(|(s, e)| apply(s, &e)),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// Runs `check` on mutated corpus inputs of `target`; fails on a panic or
/// an allocation above [`MAX_ALLOC`].
fn fuzz(target: &str, check: impl Fn(&[u8])) {
    let mut runner = runner(cases());
    let seeds = corpus(target);
    let n = seeds.len();
    let r = runner.run(&inputs(seeds), |input| {
        check(&input);
        let big = LARGEST.load(Ordering::Relaxed);
        prop_assert!(
            big <= MAX_ALLOC,
            "an allocation of {big} bytes for a {}-byte input",
            input.len()
        );
        Ok(())
    });
    if let Err(e) = r {
        panic!("{target}: {e}");
    }
    println!(
        "{target}: {} cases from {n} seeds, largest allocation {} KiB",
        cases(),
        LARGEST.load(Ordering::Relaxed) >> 10
    );
}

#[test]
fn forward_frames_and_messages() {
    fuzz("forward", |b| {
        let _ = frame::measure(b, LIMIT);
        let mut out = Vec::new();
        if let Ok(Some(d)) = message::decode(b, LIMIT, &mut out) {
            // Every record became one JSON line.
            let lines = out.iter().filter(|&&c| c == b'\n').count() as u64;
            assert_eq!(lines, d.events, "{} lines for {} events", lines, d.events);
            for l in out.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
                // Records may be nested as deep as the decoder allows (more
                // than serde_json's default recursion limit).
                let mut de = serde_json::Deserializer::from_slice(l);
                de.disable_recursion_limit();
                <serde_json::Value as serde::Deserialize>::deserialize(&mut de)
                    .unwrap_or_else(|e| panic!("invalid JSON line ({e})"));
            }
        }
        let _ = decode_ack(b);
    });
}

#[test]
fn handshake_messages() {
    fuzz("handshake", |b| {
        let _ = Helo::decode(b);
        let _ = Ping::decode(b);
        let _ = Pong::decode(b);
        let _ = frame::measure(b, LIMIT);
    });
}

#[test]
fn connect_responses() {
    fuzz("connect", |b| {
        // Complete or not, in every split: never a panic, and a complete
        // head never claims more bytes than it was given.
        if let Ok(Some(h)) = parse_head(b) {
            assert!(h.len <= b.len());
            assert!((100..1000).contains(&h.status));
            let _ = body_line(&h, &b[h.len..]);
        }
        for cut in [1, b.len() / 2, b.len().saturating_sub(1)] {
            let _ = parse_head(&b[..cut.min(b.len())]);
        }
    });
}

#[test]
fn webhook_bodies() {
    fuzz("webhook", |b| {
        let mut out = Vec::new();
        if let Ok(n) = to_lines(b, &mut out) {
            // Exactly n lines, each a JSON object with kind Event.
            let lines: Vec<&[u8]> = out
                .split(|&c| c == b'\n')
                .filter(|l| !l.is_empty())
                .collect();
            assert_eq!(lines.len(), n);
            for l in lines {
                let v: serde_json::Value =
                    serde_json::from_slice(l).expect("a spooled line is JSON");
                assert_eq!(v["kind"], "Event");
            }
        }
    });
}

#[test]
fn policy_loader() {
    fuzz("policy", |b| {
        let text = String::from_utf8_lossy(b);
        if let Ok(p) = Policy::from_yaml(&text, "fuzz") {
            let _ = p.warnings();
        }
    });
}

#[derive(Default)]
struct Collect {
    lines: Vec<Vec<u8>>,
    skipped: Vec<u64>,
    ends: Vec<u64>,
}
impl LineSink for Collect {
    fn start(&mut self, _: &Arc<FileInfo>, _: u64) -> Result<(), Stopped> {
        Ok(())
    }
    fn line(&mut self, l: &[u8], _: &Arc<FileInfo>, end: u64) -> Result<(), Stopped> {
        self.lines.push(l.to_vec());
        self.ends.push(end);
        Ok(())
    }
    fn skipped(&mut self, w: Skip, bytes: u64, _: &Arc<FileInfo>, end: u64) -> Result<(), Stopped> {
        if w == Skip::Oversize {
            self.skipped.push(bytes);
        }
        self.ends.push(end);
        Ok(())
    }
    fn idle(&mut self) -> Result<(), Stopped> {
        Ok(())
    }
}

/// Reads `content` as the live audit log with a oneshot tail.
fn run_tail(content: &[u8], read_buffer: usize, max_line: usize) -> Collect {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("audit.log");
    std::fs::write(&path, content).unwrap();
    let mut tail = Tail::new(
        TailConfig {
            path,
            read_buffer,
            max_line_bytes: max_line,
            poll_interval: std::time::Duration::from_millis(5),
            start_at: StartAt::Beginning,
            oneshot: true,
            max_held_bytes: 1 << 30,
        },
        OutputMetrics::default(),
        Arc::new(AtomicBool::new(false)),
    );
    let mut sink = Collect::default();
    let _ = tail.run(None, &mut sink);
    sink
}

/// Regression: a line of exactly `max_line_bytes` ending in CRLF whose "\r"
/// ended a read was discarded as oversize (the partial-line check counted
/// the "\r"), while the same line read in one piece passed.
#[test]
fn a_crlf_line_of_exactly_the_limit_split_after_the_cr_passes() {
    let max = 100;
    let mut content = Vec::new();
    while 4096 - (max + 1) - content.len() > 51 {
        content.extend_from_slice(&[b'a'; 50]);
        content.push(b'\n');
    }
    content.extend(std::iter::repeat_n(
        b'b',
        4096 - (max + 1) - content.len() - 1,
    ));
    content.push(b'\n');
    let filler = content.iter().filter(|&&b| b == b'\n').count();
    content.extend(std::iter::repeat_n(b'x', max));
    content.extend_from_slice(b"\r\n");
    assert_eq!(content.len(), 4096 + 1); // the first read (4 KiB) ends after the "\r"
    let got = run_tail(&content, 4096, max);
    assert!(
        got.skipped.is_empty(),
        "skipped as oversize: {:?}",
        got.skipped
    );
    assert_eq!(got.lines.len(), filler + 1);
    assert_eq!(got.lines[filler], vec![b'x'; max]);
}

/// The tail's line splitter against a model: whatever bytes are appended,
/// in whatever pieces, the lines handed on are exactly the complete lines
/// of the file (a line over `max_line_bytes` is skipped and reported), with
/// end offsets that add up.
#[test]
fn tail_line_splitter_matches_a_model() {
    let line = prop_oneof![
        3 => prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..40),
        1 => (0usize..300).prop_map(|n| vec![b'x'; n]),
        1 => (0usize..300).prop_map(|n| {
            let mut v = vec![b'x'; n];
            v.push(b'\r');
            v
        }),
        1 => Just(Vec::new()),
    ];
    let strategy = (
        prop::collection::vec(line, 0..40),
        any::<bool>(),
        16usize..128,
        64usize..200,
    );
    let mut runner = runner(cases() / 10);
    let r = runner.run(&strategy, |(lines, trailing, read_buffer, max_line)| {
        let mut content = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            content.extend_from_slice(l);
            if i + 1 < lines.len() || trailing {
                content.push(b'\n');
            }
        }
        let sink = run_tail(&content, read_buffer, max_line);
        // Model: complete lines; blank ones pass as skips; oversize skipped.
        let complete = if trailing {
            lines.len()
        } else {
            lines.len().saturating_sub(1)
        };
        let mut want_lines = Vec::new();
        let mut want_skipped = Vec::new();
        for l in &lines[..complete] {
            let l = match l.as_slice() {
                [rest @ .., b'\r'] => rest,
                l => l,
            };
            if l.len() > max_line {
                want_skipped.push(l.len() as u64 + 1);
            } else if !l.iter().all(|b| b.is_ascii_whitespace()) {
                want_lines.push(l.to_vec());
            }
        }
        prop_assert_eq!(&sink.lines, &want_lines);
        prop_assert_eq!(sink.skipped.len(), want_skipped.len());
        prop_assert!(
            sink.ends.windows(2).all(|w| w[0] < w[1]),
            "ends not increasing: {:?}",
            sink.ends
        );
        let done: u64 = lines[..complete].iter().map(|l| l.len() as u64 + 1).sum();
        prop_assert_eq!(sink.ends.last().copied().unwrap_or(0), done);
        Ok(())
    });
    if let Err(e) = r {
        panic!("tail: {e}");
    }
}

//! The audit log as kube-apiserver writes it: through the real Go
//! lumberjack library (Debian's golang-gopkg-natefinch-lumberjack.v2-dev,
//! built by `tests/lumberjack/writer.go`), with rotation, compression and
//! backup deletion, while the receiver stalls, the writer bursts, or the
//! forwarder is killed. Each scenario is judged by auditID (missing,
//! duplicates) and by the gap counters: nothing is missing where the data
//! was on disk when the forwarder could have opened it, and what is
//! missing otherwise is what the DATA GAP reports said.

mod common;

use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Builds the writer once (GOPATH mode against Debian's package).
fn writer_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("target/lumberjack-writer");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("writer");
        let o = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg("writer.go")
            .current_dir(root.join("tests/lumberjack"))
            .env("GO111MODULE", "off")
            // No per-user Go settings (and no need for $HOME).
            .env("GOENV", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", dir.join("cache"))
            .output()
            .unwrap_or_else(|e| {
                panic!("go: {e}; scripts/test-all.sh installs golang-go and golang-gopkg-natefinch-lumberjack.v2-dev")
            });
        assert!(
            o.status.success(),
            "building the lumberjack writer failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
}

/// A writer run: `args` as writer.go takes them.
struct Writer(Child);

impl Writer {
    fn start(log: &Path, args: &[&str]) -> Writer {
        let c = Command::new(writer_bin())
            .arg("-path")
            .arg(log)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Writer(c)
    }

    /// Waits for the end (bounded by the run's own length: the writer
    /// paces itself); returns the events written.
    fn wait(self) -> usize {
        let o = self.0.wait_with_output().unwrap();
        assert!(o.status.success(), "writer failed");
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    }
}

fn run_writer(log: &Path, args: &[&str]) -> usize {
    Writer::start(log, args).wait()
}

/// A receiver, and a forwarder on `log` with its HTTP endpoint.
struct Relay {
    dir: tempfile::TempDir,
    log: PathBuf,
    out: PathBuf,
    rx: Proc,
    port: u16,
    fwd: Option<Proc>,
    extra: Vec<String>,
}

impl Relay {
    fn new(extra: &[&str]) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let out = dir.path().join("out.jsonl");
        let (rx, port) = receiver(&out, &[]);
        Relay {
            log,
            out,
            rx,
            port,
            fwd: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir,
        }
    }

    fn start_forwarder(&mut self) {
        let mut a = forward_args(&self.log, &self.dir.path().join("state"), self.port);
        a.extend(["--set".into(), "http_listen=\"127.0.0.1:0\"".into()]);
        a.extend(self.extra.iter().cloned());
        let f = spawn_forward(&a);
        f.logged("http endpoint listening");
        self.fwd = Some(f);
    }

    fn http(&self) -> u16 {
        http_port(self.fwd.as_ref().unwrap())
    }

    /// Waits until the forwarder read the whole log (nothing held, the live
    /// file read to its end) and every line read was acknowledged.
    fn wait_caught_up(&self) -> String {
        let name = "audit_forwarder_";
        let g = |m: &str, k: &str| metric(m, &format!("{name}{k}"), "output=\"default\"");
        wait_metrics(self.http(), "the forwarder caught up", |m| {
            let read = g(m, "lines_read_total");
            read > 0.0
                && read == g(m, "events_acked_total")
                && g(m, "held_files") == 0.0
                && g(m, "lag_bytes") == 0.0
        })
    }

    fn pause_receiver(&self) {
        unsafe_free_kill(self.rx.child.id(), "STOP");
    }

    fn resume_receiver(&self) {
        unsafe_free_kill(self.rx.child.id(), "CONT");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.resume_receiver();
    }
}

/// What arrived: (missing of `0..n`, duplicates).
fn judge(out: &Path, n: usize) -> (Vec<usize>, usize) {
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for l in read_lines(out) {
        let id = l
            .split("\"auditID\":\"lj-")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no auditID in {l:.200}"));
        *seen.entry(id).or_default() += 1;
    }
    let missing = (0..n).filter(|i| !seen.contains_key(i)).collect();
    let dups = seen.values().map(|c| c - 1).sum();
    (missing, dups)
}

fn gaps(m: &str) -> (f64, f64) {
    (
        metric(m, "audit_forwarder_gaps_total", "output=\"default\""),
        metric(m, "audit_forwarder_gap_bytes_total", "output=\"default\""),
    )
}

/// Writes at `rate` while the forwarder follows; nothing missing, nothing
/// twice, no gap.
fn steady(writer: &[&str]) {
    let mut r = Relay::new(&[]);
    r.start_forwarder();
    let n = run_writer(&r.log, writer);
    let m = r.wait_caught_up();
    let (missing, dups) = judge(&r.out, n);
    assert_eq!(gaps(&m).0, 0.0, "{m}");
    assert!(
        missing.is_empty(),
        "{} of {n} missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert_eq!(dups, 0);
}

#[test]
fn steady_5k_per_second_at_maxsize_1_with_compression() {
    steady(&[
        "-rate",
        "5000",
        "-count",
        "25000",
        "-maxsize",
        "1",
        "-maxbackup",
        "3",
        "-compress",
    ]);
}

#[test]
fn bursts_of_60k_per_second_at_maxsize_1_and_2() {
    for size in ["1", "2"] {
        steady(&[
            "-rate",
            "60000",
            "-bursts",
            "-count",
            "180000",
            "-maxsize",
            size,
            "-maxbackup",
            "3",
            "-compress",
        ]);
    }
}

/// The receiver stopped (SIGSTOP) for 20 s while the writer goes on at
/// 5k events/s: the forwarder stops reading (back-pressure) while
/// lumberjack rotates, compresses and deletes ~100 files behind it.
fn receiver_paused(compress: bool, maxbackup: &str) {
    let mut r = Relay::new(&[]);
    r.start_forwarder();
    let mut args = vec![
        "-rate",
        "5000",
        "-count",
        "125000",
        "-maxsize",
        "1",
        "-maxbackup",
        maxbackup,
    ];
    if compress {
        args.push("-compress");
    }
    let w = Writer::start(&r.log, &args);
    wait_lines(&r.out, 5000);
    r.pause_receiver();
    std::thread::sleep(Duration::from_secs(20)); // the fault lasts 20 s
    r.resume_receiver();
    let n = w.wait();
    let m = r.wait_caught_up();
    let (missing, dups) = judge(&r.out, n);
    assert_eq!(gaps(&m).0, 0.0, "{m}");
    assert!(missing.is_empty(), "{} of {n} missing", missing.len());
    assert_eq!(dups, 0);
}

#[test]
fn receiver_paused_20s_compressed_maxbackup_3() {
    receiver_paused(true, "3");
}

#[test]
fn receiver_paused_20s_plain_maxbackup_3() {
    receiver_paused(false, "3");
}

#[test]
fn receiver_paused_20s_compressed_maxbackup_10() {
    receiver_paused(true, "10");
}

#[test]
fn receiver_paused_20s_plain_maxbackup_10() {
    receiver_paused(false, "10");
}

/// SIGKILL of the forwarder, five times, while lumberjack compresses:
/// every restart resumes from its checkpoint (found again in a `.gz`).
#[test]
fn forwarder_killed_repeatedly_while_compression_runs() {
    let mut r = Relay::new(&[]);
    r.start_forwarder();
    let w = Writer::start(
        &r.log,
        &[
            "-rate",
            "5000",
            "-count",
            "50000",
            "-maxsize",
            "1",
            "-maxbackup",
            "10",
            "-compress",
        ],
    );
    for k in 1..=5 {
        wait_lines(&r.out, 7000 * k);
        r.fwd.as_mut().unwrap().kill9();
        r.start_forwarder();
    }
    let n = w.wait();
    let m = r.wait_caught_up();
    let (missing, dups) = judge(&r.out, n);
    assert_eq!(gaps(&m).0, 0.0, "{m}");
    assert!(missing.is_empty(), "{} of {n} missing", missing.len());
    // Only the unacknowledged window of each kill is sent again.
    println!("{dups} duplicates after 5 kills");
    assert!(dups <= 5 * 12_000, "{dups} duplicates");
}

/// First start after the writer made several `.gz` backups and one plain
/// one: every sibling is read, oldest first (`start_at = "oldest"`).
#[test]
fn a_late_start_reads_every_gz_and_plain_sibling() {
    let mut r = Relay::new(&[]);
    let a = run_writer(
        &r.log,
        &["-rate", "0", "-count", "8000", "-maxsize", "1", "-compress"],
    );
    let start = a.to_string();
    let b = run_writer(
        &r.log,
        &[
            "-rate", "0", "-count", "1500", "-start", &start, "-maxsize", "1",
        ],
    );
    let names: Vec<String> = std::fs::read_dir(r.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().filter(|n| n.ends_with(".log.gz")).count() >= 5,
        "{names:?}"
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("audit-") && n.ends_with(".log"))
            .count(),
        1,
        "{names:?}"
    );
    r.start_forwarder();
    let m = r.wait_caught_up();
    let (missing, dups) = judge(&r.out, a + b);
    assert_eq!(gaps(&m).0, 0.0, "{m}");
    assert!(missing.is_empty(), "{} of {} missing", missing.len(), a + b);
    assert_eq!(dups, 0);
}

/// Retention far smaller than the backlog (one backup kept) while the
/// receiver is stopped: lumberjack deletes every file before the forwarder
/// could read it, but it holds them open, so nothing is lost.
#[test]
fn retention_smaller_than_the_backlog_loses_nothing() {
    let mut r = Relay::new(&[]);
    r.start_forwarder();
    r.pause_receiver();
    let n = run_writer(
        &r.log,
        &[
            "-rate",
            "5000",
            "-count",
            "30000",
            "-maxsize",
            "1",
            "-maxbackup",
            "1",
            "-compress",
        ],
    );
    let held = wait_metrics(r.http(), "held deleted files", |m| {
        metric(m, "audit_forwarder_held_bytes", "output=\"default\"") > 10e6
    });
    r.resume_receiver();
    let m = r.wait_caught_up();
    let (missing, dups) = judge(&r.out, n);
    assert_eq!(gaps(&m).0, 0.0, "{m}\nwhile held:\n{held}");
    assert!(missing.is_empty(), "{} of {n} missing", missing.len());
    assert_eq!(dups, 0);
}

/// The same with `tail.max_held_bytes` smaller than the backlog: the
/// oldest held files are released, each a DATA GAP, and what is missing
/// is what the gaps said (their bytes are whole lines of the same size).
#[test]
fn past_max_held_bytes_the_loss_is_reported_and_matches() {
    let mut r = Relay::new(&["--set", "tail.max_held_bytes=4000000"]);
    r.start_forwarder();
    r.pause_receiver();
    let n = run_writer(
        &r.log,
        &[
            "-rate",
            "5000",
            "-count",
            "30000",
            "-maxsize",
            "1",
            "-maxbackup",
            "1",
            "-compress",
        ],
    );
    wait_metrics(r.http(), "a released file", |m| gaps(m).0 > 0.0);
    r.resume_receiver();
    let m = r.wait_caught_up();
    let (missing, dups) = judge(&r.out, n);
    let (count, bytes) = gaps(&m);
    // Lines differ only in the digits of their auditID: the bytes of the
    // missing lines, exactly.
    let first = read_lines(&r.out).swap_remove(0);
    let digits = |i: usize| i.to_string().len();
    let id: usize = first
        .split("\"auditID\":\"lj-")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let base = first.len() + 1 - digits(id);
    let lost: usize = missing.iter().map(|&i| base + digits(i)).sum();
    assert!(!missing.is_empty());
    assert!(
        (lost as f64 - bytes).abs() <= count * base as f64,
        "{} events ({lost} bytes) missing, gaps reported {bytes} bytes in {count} files",
        missing.len()
    );
    assert!(r.fwd.as_ref().unwrap().all_logs().contains("DATA GAP"));
    assert_eq!(dups, 0);
}

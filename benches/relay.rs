//! End-to-end benchmark: `forward --oneshot` → `receive --output null` on
//! loopback, release build. Reports events/s, MB/s, CPU µs per event and peak
//! RSS of each side (from wait4's rusage), and append-to-receive latency at a
//! steady rate.
//!
//! `cargo bench --bench relay` (env: BENCH_EVENTS, default 200000;
//! BENCH_RATE_SECS, default 5; BENCH_ONLY, comma-separated parts of variant
//! names to run; BENCH_DATA_DIR, keep the generated logs there, e.g. for
//! `perf record` of a single `forward --oneshot` run).

#[path = "../tests/common/mod.rs"]
mod common;

use audit_forwarder::synth::{Generator, Mix};
use common::{free_port, listening_port};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_audit-forwarder");

struct Usage {
    cpu: Duration,
    max_rss_kb: i64,
}

/// Waits for the child and returns its resource usage.
fn wait_usage(c: &mut Child) -> Usage {
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(c.id() as i32, &mut status, 0, &mut ru) };
    assert!(r > 0, "wait4 failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Usage {
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_kb: ru.ru_maxrss,
    }
}

fn receiver(output: &str) -> (Child, u16) {
    receiver_with(output, &[])
}

fn receiver_with(output: &str, extra: &[&str]) -> (Child, u16) {
    let mut c = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--output",
            output,
        ])
        .args(extra)
        .stdout(if output == "stdout" {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .spawn()
        .expect("receiver");
    let mut err = BufReader::new(c.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "receiver exited");
        if line.contains("receiver listening") {
            break;
        }
    }
    std::thread::spawn(move || for _ in err.lines() {});
    (c, listening_port(&line))
}

fn forward(log: &Path, state: &Path, port: u16, extra: &[&str], oneshot: bool) -> Child {
    let mut a = vec![
        "--log-level".to_string(),
        "warn".into(),
        "forward".into(),
        "--path".into(),
        log.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--port".into(),
        port.to_string(),
    ];
    if oneshot {
        a.push("--oneshot".into());
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    Command::new(BIN)
        .args(&a)
        .stdout(Stdio::null())
        .spawn()
        .expect("forwarder")
}

/// A run over `log` with a fresh checkpoint; `state` keeps the WASM
/// compile cache between runs (warmed by [`warm`]), so no run pays for
/// compiling a filter.
fn throughput(name: &str, log: &Path, events: usize, bytes: u64, extra: &[&str], state: &Path) {
    throughput_with(name, log, events, bytes, extra, state, &[])
}

fn throughput_with(
    name: &str,
    log: &Path,
    events: usize,
    bytes: u64,
    extra: &[&str],
    state: &Path,
    rx_extra: &[&str],
) {
    if !selected(name) {
        return;
    }
    // Median of BENCH_RUNS runs (by forwarder CPU): this VM's neighbours
    // make single runs vary by up to 30 %.
    let mut runs: Vec<[f64; 6]> = (0..bench_runs())
        .map(|_| {
            for e in std::fs::read_dir(state).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with("checkpoint-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let (mut rx, port) = receiver_with("null", rx_extra);
            let t0 = Instant::now();
            let mut f = forward(log, state, port, extra, true);
            let fu = wait_usage(&mut f);
            let wall = t0.elapsed();
            let _ = Command::new("kill").arg(rx.id().to_string()).status();
            let ru = wait_usage(&mut rx);
            figures(events, bytes, wall, &fu, &ru)
        })
        .collect();
    runs.sort_by(|a, b| a[2].total_cmp(&b[2]));
    row(name, &runs[runs.len() / 2]);
}

/// CPU time of a running process (utime + stime from /proc/PID/stat).
fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): state is field 3.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 (11 and 12 after the command).
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / tick)
}

/// A run of `forward --oneshot` into a long-running peer (moto, rsyslog):
/// the forwarder measured as in [`throughput`], the peer by its CPU time
/// over the run and its peak RSS (VmHWM).
fn sink_throughput(
    name: &str,
    log: &Path,
    events: usize,
    bytes: u64,
    st: &Path,
    extra: &[&str],
    peer: u32,
) {
    if !selected(name) {
        return;
    }
    let mut runs: Vec<[f64; 6]> = (0..bench_runs())
        .map(|_| {
            for e in std::fs::read_dir(st).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with("checkpoint-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let c0 = proc_cpu(peer);
            let t0 = Instant::now();
            // No --port: it would override the syslog port given in `extra`.
            let mut f = Command::new(BIN)
                .args(["--log-level", "warn", "forward", "--oneshot", "--path"])
                .arg(log)
                .arg("--state-dir")
                .arg(st)
                .args(extra)
                .stdout(Stdio::null())
                .spawn()
                .expect("forwarder");
            let fu = wait_usage(&mut f);
            let wall = t0.elapsed();
            let ru = Usage {
                cpu: proc_cpu(peer).saturating_sub(c0),
                max_rss_kb: common::proc_status_kib(peer, "VmHWM") as i64,
            };
            figures(events, bytes, wall, &fu, &ru)
        })
        .collect();
    runs.sort_by(|a, b| a[2].total_cmp(&b[2]));
    row(name, &runs[runs.len() / 2]);
}

/// The S3 output into moto and the syslog output into rsyslog (RELP and
/// plain TCP, omfile), when those peers are installed (scripts/test-all.sh).
fn sinks(logs: &[(&str, std::path::PathBuf, u64)], events: usize, dir: &Path) {
    let st = dir.join("state-sinks");
    std::fs::create_dir_all(&st).unwrap();
    let have_moto = Command::new("python3")
        .args(["-c", "import moto, boto3"])
        .status()
        .is_ok_and(|s| s.success());
    let have_rsyslog = Command::new("rsyslogd").arg("-v").output().is_ok();
    let (name, log, bytes) = logs
        .iter()
        .find(|(n, _, _)| *n == "metadata")
        .expect("metadata log");
    if have_moto
        && ["S3", "s3"]
            .iter()
            .any(|n| selected(&format!("{name} {n}")))
    {
        let moto = common::sinks::Moto::start();
        let creds = dir.join("aws-credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = bench\naws_secret_access_key = bench\n",
        )
        .unwrap();
        let s3 = format!(
            "output.s3={{ bucket = \"{}\", endpoint = \"{}\", path_style = true, credentials_file = {:?} }}",
            common::sinks::BUCKET,
            moto.endpoint(),
            creds
        );
        sink_throughput(
            &format!("{name} S3 (moto), gzip"),
            log,
            events,
            *bytes,
            &st,
            &["--set", "output.type=\"s3\"", "--set", &s3],
            moto.child.id(),
        );
    } else if !have_moto {
        println!("(S3 variant skipped: pip install -r tests/s3/requirements.txt)");
    }
    if have_rsyslog
        && ["RELP", "TCP"]
            .iter()
            .any(|n| selected(&format!("{name} syslog {n}")))
    {
        let pki = common::pki::Pki::new();
        let rs = common::sinks::Rsyslog::start(dir, &pki);
        let pid = rs.pid().expect("rsyslogd runs");
        for (proto, port) in [("RELP", rs.ports.relp), ("TCP", rs.ports.tcp)] {
            let p = format!("output.port={port}");
            let sl = format!(
                "output.syslog={{ protocol = \"{}\" }}",
                proto.to_lowercase()
            );
            sink_throughput(
                &format!("{name} syslog {proto} (rsyslog)"),
                log,
                events,
                *bytes,
                &st,
                &["--set", "output.type=\"syslog\"", "--set", &p, "--set", &sl],
                pid,
            );
        }
    } else if !have_rsyslog {
        println!("(syslog variants skipped: apt-get install rsyslog rsyslog-relp rsyslog-gnutls)");
    }
}

fn bench_runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            3
        } else {
            1
        })
        .max(1)
}

/// events/s, MB/s, sender and receiver CPU µs/event, their peak RSS (MB).
fn figures(events: usize, bytes: u64, wall: Duration, fu: &Usage, ru: &Usage) -> [f64; 6] {
    let n = events as f64;
    [
        n / wall.as_secs_f64(),
        bytes as f64 / 1e6 / wall.as_secs_f64(),
        fu.cpu.as_secs_f64() * 1e6 / n,
        ru.cpu.as_secs_f64() * 1e6 / n,
        fu.max_rss_kb as f64 / 1024.0,
        ru.max_rss_kb as f64 / 1024.0,
    ]
}

fn row(name: &str, r: &[f64; 6]) {
    println!(
        "| {name:<28} | {:>9.0} | {:>7.1} | {:>6.2} | {:>6.2} | {:>6.1} | {:>6.1} |",
        r[0], r[1], r[2], r[3], r[4], r[5]
    );
}

/// `audit_forwarder_receiver_events_total` from the receiver's /metrics.
fn received(http_port: u16) -> Option<u64> {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", http_port)).ok()?;
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    c.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with("audit_forwarder_receiver_events_total"))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// The same data through fluent-bit (`in_tail` with the JSON parser →
/// `out_forward` with acks) into our receiver, measured the same way, when
/// tests/interop/fluent-bit/build.sh has built it into target/fluent-bit.
/// fluent-bit has no one-shot mode: it runs until the receiver counted
/// every event.
fn fluent_bit(name: &str, log: &Path, events: usize, bytes: u64, dir: &Path) {
    if !selected(name) {
        return;
    }
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fluent-bit/bin/fluent-bit");
    if !bin.is_file() {
        println!("| {name:<28} | (skipped: run tests/interop/fluent-bit/build.sh first) |");
        return;
    }
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut runs: Vec<[f64; 6]> = Vec::new();
    for k in 0..bench_runs() {
        let http = free_port();
        let (mut rx, port) = receiver_with(
            "null",
            &["--set", &format!("http_listen=\"127.0.0.1:{http}\"")],
        );
        let parsers = dir.join("parsers.conf");
        std::fs::write(&parsers, "[PARSER]\n    Name json\n    Format json\n").unwrap();
        // The issue's "tuned" settings: 0.2 s flush, 256 KB tail buffer.
        let conf = dir.join(format!("fluent-bit-{k}.conf"));
        std::fs::write(
            &conf,
            format!(
                "[SERVICE]\n    Flush 0.2\n    Grace 1\n    Log_Level error\n    Parsers_File {}\n\
                 [INPUT]\n    Name tail\n    Path {}\n    Parser json\n    Read_from_Head On\n    \
                 Buffer_Chunk_Size 256k\n    Buffer_Max_Size 4m\n    Skip_Long_Lines On\n\
                 [OUTPUT]\n    Name forward\n    Match *\n    Host 127.0.0.1\n    Port {port}\n    \
                 Require_ack_response On\n",
                parsers.display(),
                log.display()
            ),
        )
        .unwrap();
        let t0 = Instant::now();
        let mut fb = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fluent-bit");
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut got = 0;
        while got < events as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            got = received(http).unwrap_or(got);
        }
        let wall = t0.elapsed();
        let _ = Command::new("kill").arg(fb.id().to_string()).status();
        let fu = wait_usage(&mut fb);
        let _ = Command::new("kill").arg(rx.id().to_string()).status();
        let ru = wait_usage(&mut rx);
        if got < events as u64 {
            println!("| {name:<28} | (only {got} of {events} events arrived in 300 s) |");
            return;
        }
        runs.push(figures(events, bytes, wall, &fu, &ru));
    }
    runs.sort_by(|a, b| a[2].total_cmp(&b[2]));
    row(name, &runs[runs.len() / 2]);
    if !version.is_empty() {
        println!("|   ({version}; events/s includes its 0.2 s flush interval) | | | | | | |");
    }
}

/// One event of `size` bytes (a RequestResponse event with a big
/// responseObject) through forward → receive: the forwarder's peak RSS
/// against the event's size (the issue's bound: twice the size plus the
/// baseline, the peak RSS for the same event with a 1 KB blob).
fn big_event(size: usize, dir: &Path) {
    if !selected("big event") {
        return;
    }
    // Written in pieces: the bench must not hold the event in memory, as a
    // child's peak RSS (wait4) counts the parent's pages it started with.
    let write_event = |path: &Path, size: usize| {
        let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        w.write_all(
            br#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"big-1","stage":"ResponseComplete","requestURI":"/api/v1/configmaps","verb":"list","user":{"username":"admin"},"stageTimestamp":"2026-11-24T00:00:00.000000Z","responseObject":{"kind":"ConfigMapList","items":[{"data":{"blob":""#,
        )
        .unwrap();
        let block = [b'x'; 1 << 16];
        let mut left = size.saturating_sub(400);
        while left > 0 {
            let n = left.min(block.len());
            w.write_all(&block[..n]).unwrap();
            left -= n;
        }
        w.write_all(b"\"}}]}}\n").unwrap();
        w.flush().unwrap();
    };
    let log = dir.join("big.log");
    write_event(&log, size);
    let size = std::fs::metadata(&log).unwrap().len();
    let state = dir.join("big-state");
    let mb = |b: f64| b / 1024.0 / 1024.0;
    let run = |log: &Path| {
        let _ = std::fs::remove_dir_all(&state);
        let http = free_port();
        let listen = format!("http_listen=\"127.0.0.1:{http}\"");
        let (mut rx, port) = receiver_with(
            "null",
            &[
                "--set",
                "receive.max_frame_bytes=104857600",
                "--set",
                &listen,
            ],
        );
        let limits = [
            "--set",
            "tail.max_line_bytes=104857600",
            "--set",
            "output.max_record_bytes=104857600",
        ];
        let mut f = forward(log, &state, port, &limits, true);
        let fu = wait_usage(&mut f);
        let got = received(http);
        let _ = Command::new("kill").arg(rx.id().to_string()).status();
        let ru = wait_usage(&mut rx);
        (fu, ru, got)
    };
    // The baseline: the same event with a 1 KB blob, so the same code runs
    // (an empty log leaves the data path's code pages untouched, ~0.3 MB).
    let small = dir.join("big-small.log");
    write_event(&small, 1400);
    let (base, _, _) = run(&small);
    let (fu, ru, got) = run(&log);
    let base_mb = mb(base.max_rss_kb as f64 * 1024.0);
    let peak_mb = mb(fu.max_rss_kb as f64 * 1024.0);
    println!(
        "one {:.1} MB event ({} received): forwarder peak RSS {peak_mb:.1} MB (baseline {base_mb:.1} MB, bound 2 × size + baseline = {:.1} MB: {}), receiver peak RSS {:.1} MB",
        mb(size as f64),
        got.unwrap_or(0),
        2.0 * mb(size as f64) + base_mb,
        if peak_mb <= 2.0 * mb(size as f64) + base_mb {
            "within"
        } else {
            "OVER"
        },
        mb(ru.max_rss_kb as f64 * 1024.0),
    );
}

/// Is the variant `name` among those BENCH_ONLY selects (all by default)?
fn selected(name: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(only) if !only.is_empty() => only.split(',').any(|p| name.contains(p.trim())),
        _ => true,
    }
}

/// A CA and a server certificate for 127.0.0.1 (the tests' PKI, made with
/// openssl): (ca, crt, key).
fn tls_files() -> (common::pki::Pki, (String, String, String)) {
    let pki = common::pki::Pki::new();
    let files = (pki.p("ca.crt"), pki.p("server.crt"), pki.p("server.key"));
    (pki, files)
}

/// tinyproxy on a free loopback port, if installed.
fn tinyproxy(dir: &Path) -> Option<(common::proxies::Daemon, u16)> {
    let installed = Command::new("tinyproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    installed.then(|| common::proxies::tinyproxy(dir, ""))
}

fn latency(rate: usize, secs: usize) {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("audit.log");
    std::fs::File::create(&log).unwrap();
    let (mut rx, port) = receiver("stdout");
    let out = rx.stdout.take().unwrap();
    let (tx, got) = std::sync::mpsc::channel::<(String, Instant)>();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let id = l
                .split("\"auditID\":\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
                .to_string();
            if tx.send((id, Instant::now())).is_err() {
                break;
            }
        }
    });
    let mut f = forward(
        &log,
        &d.path().join("s"),
        port,
        &["--set", "tail.poll_interval=\"250ms\""],
        false,
    );
    let mut synth = Generator::new(9, Mix::Metadata);
    let mut w = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let total = rate * secs;
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let e = synth.event();
        let id = e
            .split("\"auditID\":\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        w.write_all(format!("{e}\n").as_bytes()).unwrap();
        sent.insert(id, Instant::now());
    }
    let mut lat: Vec<f64> = Vec::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lat.len() < total && Instant::now() < deadline {
        if let Ok((id, t)) = got.recv_timeout(Duration::from_secs(1))
            && let Some(s) = sent.get(&id)
        {
            lat.push(t.duration_since(*s).as_secs_f64() * 1e3);
        }
    }
    let _ = f.kill();
    let _ = f.wait();
    let _ = rx.kill();
    let _ = rx.wait();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "latency at {rate} events/s for {secs} s: received {} of {total}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(0.50),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

/// Writes `events` synthetic events (fixed seed) to `log`.
fn write_log(log: &Path, mix: Mix, events: usize) {
    let tmp = log.with_extension("tmp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
    let mut synth = Generator::new(7, mix);
    for _ in 0..events {
        writeln!(w, "{}", synth.event()).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    std::fs::rename(&tmp, log).unwrap();
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: then
    // run a small smoke version so the benchmark itself stays tested.
    let full = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, full_default: usize, smoke: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if full { full_default } else { smoke })
    };
    let events = env("BENCH_EVENTS", 200_000, 2_000);
    let rate_secs = env("BENCH_RATE_SECS", 5, 1);
    let d = tempfile::tempdir().unwrap();
    let data =
        std::env::var_os("BENCH_DATA_DIR").map_or_else(|| d.path().to_path_buf(), Into::into);
    std::fs::create_dir_all(&data).unwrap();
    let mut logs = Vec::new();
    for (name, mix) in [("metadata", Mix::Metadata), ("realistic", Mix::Realistic)] {
        let log = data.join(format!("{name}-{events}.log"));
        if !log.is_file() {
            write_log(&log, mix, events);
        }
        let bytes = std::fs::metadata(&log).unwrap().len();
        println!(
            "{name}: {events} events, {:.1} MB, {:.0} bytes/event",
            bytes as f64 / 1e6,
            bytes as f64 / events as f64
        );
        logs.push((name, log, bytes));
    }
    println!(
        "\n| variant                      | events/s  | MB/s    | fwd µs/ev | rcv µs/ev | fwd RSS MB | rcv RSS MB |"
    );
    println!(
        "|------------------------------|-----------|---------|--------|--------|--------|--------|"
    );
    let state = d.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let st = state.as_path();
    let guests =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("example-filters/target/wasm32-wasip2/release");
    let filter = |name: &str, config: &str| {
        format!(
            "output.filters=[{{ wasm = {:?}, config = {{ {config} }} }}]",
            guests.join(format!("{name}.wasm"))
        )
    };
    let wasm: Vec<(&str, String)> = [
        ("add_cluster_id", "cluster = \"shoot--prod--a\""),
        ("drop_read_only", ""),
        ("redact", ""),
    ]
    .iter()
    .filter(|(n, _)| guests.join(format!("{n}.wasm")).is_file())
    .map(|(n, c)| (*n, filter(n, c)))
    .collect();
    // Compile the filters into the cache once, outside the measurements.
    let empty = d.path().join("empty.log");
    std::fs::write(&empty, "").unwrap();
    for (_, f) in &wasm {
        let (mut rx, port) = receiver("null");
        let mut c = forward(&empty, st, port, &["--set", f], true);
        wait_usage(&mut c);
        let _ = Command::new("kill").arg(rx.id().to_string()).status();
        wait_usage(&mut rx);
    }
    if wasm.is_empty() {
        println!("(WASM variants skipped: build example-filters/ first)");
    }
    let (_pki, tls) = tls_files();
    for (name, log, bytes) in &logs {
        throughput(&format!("{name} plain"), log, events, *bytes, &[], st);
        throughput(
            &format!("{name} + recommended policy"),
            log,
            events,
            *bytes,
            &["--set", "output.policy=\"recommended\""],
            st,
        );
        for (w, f) in &wasm {
            throughput(
                &format!("{name} + policy + {w}"),
                log,
                events,
                *bytes,
                &["--set", "output.policy=\"recommended\"", "--set", f],
                st,
            );
        }
        throughput(
            &format!("{name} gzip"),
            log,
            events,
            *bytes,
            &["--set", "output.gzip=true"],
            st,
        );
        {
            let (ca, crt, key) = &tls;
            let ca = format!("output.tls_ca_file={ca:?}");
            let c = format!("receive.tls_cert_file={crt:?}");
            let k = format!("receive.tls_key_file={key:?}");
            throughput_with(
                &format!("{name} TLS"),
                log,
                events,
                *bytes,
                &["--set", "output.tls=true", "--set", &ca],
                st,
                &["--set", &c, "--set", &k],
            );
        }
        if let Some(p) = tinyproxy(d.path()) {
            let url = format!("output.proxy.url=\"http://127.0.0.1:{}\"", p.1);
            throughput(
                &format!("{name} via tinyproxy"),
                log,
                events,
                *bytes,
                &["--set", &url],
                st,
            );
            drop(p);
        }
    }
    for (name, log, bytes) in logs.iter().filter(|(n, _, _)| *n == "metadata") {
        fluent_bit(&format!("{name} fluent-bit"), log, events, *bytes, d.path());
    }
    sinks(&logs, events, d.path());
    println!();
    big_event(env("BENCH_BIG_EVENT_MB", 50, 2) << 20, d.path());
    if selected("latency") {
        latency(2000, rate_secs);
    }
}

//! Helpers for tests that drive the real binary.
#![allow(dead_code)]

pub mod pki;
pub mod proxies;
pub mod sinks;

use audit_forwarder::synth::{Generator, Mix};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_audit-forwarder");

/// Upper bound for any wait in these tests: a hung test fails instead of
/// running forever.
pub const WAIT: Duration = Duration::from_secs(60);

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub logs: mpsc::Receiver<String>,
    pub log_copy: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    /// Spawns the binary with JSON logs on stderr.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        Proc::spawn_via(&[], args, envs)
    }

    /// Like [`Proc::spawn`], started through `wrapper` (e.g. `setpriv ...`).
    pub fn spawn_via(wrapper: &[&str], args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("--log-format")
            .arg("json")
            .arg("--log-level")
            .arg("info");
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn audit-forwarder");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let copy = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let c2 = copy.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                c2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Proc {
            child,
            logs: rx,
            log_copy: copy,
        }
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "no log line containing {needle:?} within {WAIT:?}; logs:\n{}",
                    self.log_copy.lock().unwrap().join("\n")
                ),
            }
        }
    }

    /// The first log line so far, or to come, containing `needle`
    /// (independent of what [`Proc::wait_log`] consumed).
    pub fn logged(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self
                .log_copy
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line containing {needle:?} within {WAIT:?}; logs:\n{}",
                self.all_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn all_logs(&self) -> String {
        self.log_copy.lock().unwrap().join("\n")
    }

    /// Waits for exit (bounded) and returns the status code.
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit; logs:\n{}",
                self.all_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        unsafe_free_kill(self.child.id(), "TERM");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal with kill(1) (keeps the tests free of unsafe).
pub fn unsafe_free_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// A receiver writing to `out`, on an ephemeral loopback port.
pub fn receiver(out: &Path, extra: &[&str]) -> (Proc, u16) {
    receiver_on("127.0.0.1:0", out, extra)
}

pub fn receiver_on(listen: &str, out: &Path, extra: &[&str]) -> (Proc, u16) {
    let mut args = vec![
        "receive",
        "--listen",
        listen,
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let p = Proc::spawn(&args, &[]);
    let port = listening_port(&p.wait_log("receiver listening"));
    (p, port)
}

/// The port of a server's JSON "... listening" log line (`listen` field).
pub fn listening_port(line: &str) -> u16 {
    let v: serde_json::Value = serde_json::from_str(line).expect("json log");
    let addr = v["fields"]["listen"].as_str().expect("listen field");
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// A port that was free a moment ago (for a receiver started later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Forwarder arguments for `log` → 127.0.0.1:`port`.
pub fn forward_args(log: &Path, state: &Path, port: u16) -> Vec<String> {
    vec![
        "forward".into(),
        "--path".into(),
        log.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--port".into(),
        port.to_string(),
        "--set".into(),
        "tail.poll_interval=\"20ms\"".into(),
        "--set".into(),
        "output.retry_max=\"200ms\"".into(),
        "--set".into(),
        "output.retry_min=\"20ms\"".into(),
    ]
}

/// `forward --oneshot` of `log` → 127.0.0.1:`port` with `extra`
/// arguments; asserts that it exits 0.
pub fn oneshot(log: &Path, state: &Path, port: u16, extra: &[&str]) -> Proc {
    let mut args = forward_args(log, state, port);
    args.push("--oneshot".into());
    args.extend(extra.iter().map(|e| e.to_string()));
    let mut f = spawn_forward(&args);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    f
}

pub fn spawn_forward(args: &[String]) -> Proc {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(&a, &[])
}

/// Lines of a file (complete lines only).
pub fn read_lines(p: &Path) -> Vec<String> {
    let text = std::fs::read(p).unwrap_or_default();
    let end = text
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    String::from_utf8_lossy(&text[..end])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until `p` has at least `n` lines.
pub fn wait_lines(p: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let l = read_lines(p);
        if l.len() >= n {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} lines arrived in {}",
            l.len(),
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn audit_id(line: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:.200}"));
    v["auditID"].as_str().unwrap_or_default().to_string()
}

/// Writes audit events like kube-apiserver: appends, and rotates by renaming
/// to `audit-<timestamp>.log` and creating a new file.
pub struct ApiServerLog {
    pub path: PathBuf,
    file: std::fs::File,
    synth: Generator,
    rotations: u32,
    pub written: Vec<String>,
}

impl ApiServerLog {
    pub fn new(path: &Path, seed: u64, mix: Mix) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        ApiServerLog {
            path: path.to_path_buf(),
            file,
            synth: Generator::new(seed, mix),
            rotations: 0,
            written: Vec::new(),
        }
    }

    pub fn write(&mut self, n: usize) {
        let mut buf = String::new();
        for _ in 0..n {
            let e = self.synth.event();
            buf.push_str(&e);
            buf.push('\n');
            self.written.push(e);
        }
        self.file.write_all(buf.as_bytes()).unwrap();
    }

    pub fn rotate(&mut self) -> PathBuf {
        self.rotations += 1;
        let name = format!(
            "audit-2026-01-01T00-00-{:02}.{:03}.log",
            self.rotations / 1000,
            self.rotations % 1000
        );
        let to = self.path.with_file_name(name);
        std::fs::rename(&self.path, &to).unwrap();
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .unwrap();
        to
    }
}

/// HTTP GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let code = r
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = r
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Value of the sample `name{labels}` (labels as printed, e.g.
/// `output="default",reason="policy"`), 0 when absent.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    let key = format!("{name}{{{labels}}}");
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(&key).or_else(|| {
                // A series without labels is printed as `name` or `name{}`.
                l.strip_prefix(name).filter(|_| labels.is_empty())
            })?;
            rest.strip_prefix(' ')
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The port of the HTTP endpoint from the process's log.
pub fn http_port(p: &Proc) -> u16 {
    logged_port(p, "http endpoint listening")
}

/// The port in the `listen` field of the log line containing `needle`.
pub fn logged_port(p: &Proc, needle: &str) -> u16 {
    let line = p.logged(needle);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["fields"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Polls `/metrics` until `cond` holds (bounded by WAIT); returns the text.
pub fn wait_metrics(port: u16, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = http_get(port, "/metrics");
        if cond(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what}:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parses one JSON line (panics with the line on error).
pub fn json_value(l: &str) -> serde_json::Value {
    serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:.200}"))
}

/// Parses JSON lines.
pub fn json_values(lines: &[String]) -> Vec<serde_json::Value> {
    lines.iter().map(|l| json_value(l)).collect()
}

/// The real FluentServer, printing each record as a JSON line.
pub struct NodeServer {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub port: u16,
}

impl NodeServer {
    /// Starts `fluent-server.js` on an ephemeral port with `args`.
    pub fn start(args: &[&str]) -> NodeServer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        let mut child = Command::new("node")
            .arg(dir.join("fluent-server.js"))
            .arg("0")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let first = rx.recv_timeout(WAIT).expect("FluentServer did not start");
        let port = first
            .strip_prefix("LISTENING ")
            .expect("LISTENING line")
            .trim()
            .parse()
            .unwrap();
        NodeServer {
            child,
            lines: rx,
            port,
        }
    }

    /// Exactly `n` records as parsed JSON (fails on fewer or more).
    pub fn records(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        let mut v = Vec::new();
        while v.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => v.push(l),
                Err(_) => panic!("FluentServer printed {} of {n} records", v.len()),
            }
        }
        // Nothing more than n.
        assert!(
            self.lines.recv_timeout(Duration::from_millis(300)).is_err(),
            "more records than sent"
        );
        v.iter().map(|l| json_value(l)).collect()
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raises this process's open-file limit to the hard limit (CI machines may
/// start with a soft limit of 1,024); children inherit it.
pub fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A TCP connection to 127.0.0.1:`port` from `src` (any 127/8 address works
/// on Linux loopback).
pub fn connect_from(
    rt: &tokio::runtime::Runtime,
    src: std::net::Ipv4Addr,
    port: u16,
) -> Option<std::net::TcpStream> {
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(std::net::SocketAddr::from((src, 0)))?;
        sock.connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await
    });
    let s = s.ok()?.into_std().ok()?;
    s.set_nonblocking(false).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(20))).ok()?;
    Some(s)
}

/// Deletes every `checkpoint-*` file in a state directory (the outputs
/// start over; their stream ids stay).
pub fn forget_checkpoints(state: &Path) {
    for e in std::fs::read_dir(state).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("checkpoint-")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
}

/// Writes `dir/cfg.toml`: state in `dir/state`, metrics on an ephemeral
/// loopback port, the tail of `log` (20 ms polls), then `outputs` (TOML
/// text of the `[[outputs]]` tables). Returns its path.
pub fn forwarder_config(dir: &Path, log: &Path, outputs: &str) -> String {
    let p = dir.join("cfg.toml");
    let text = format!(
        "state_dir = {:?}\nhttp_listen = \"127.0.0.1:0\"\n[tail]\npath = {:?}\npoll_interval = \"20ms\"\n{outputs}",
        dir.join("state").display().to_string(),
        log.display().to_string(),
    );
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

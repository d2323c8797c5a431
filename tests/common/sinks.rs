//! The S3 and syslog outputs' peers: moto 5.2.5 in server mode (PyPI,
//! `tests/s3/moto_faulty.py`: moto's own app plus a loopback switch that
//! makes it answer 5xx for a while; objects read back through boto3,
//! `tests/s3/dump.py`) and rsyslog (Debian 8.2302 with librelp 1.11 and
//! GnuTLS) with one input of each kind. Used by `tests/s3.rs`,
//! `tests/syslog.rs` and the benchmark.

use super::pki::Pki;
use super::{WAIT, free_port, unsafe_free_kill};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "audit-archive";

/// moto on a loopback port, with [`BUCKET`] created; killed when dropped.
pub struct Moto {
    pub child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request without a body; (status, body).
pub fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let code = r
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = r.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (code, body)
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let child = Command::new("python3")
            .arg(root.join("tests/s3/moto_faulty.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 tests/s3/moto_faulty.py (scripts/test-all.sh installs tests/s3/requirements.txt)");
        let mut m = Moto { child, port };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = m.child.try_wait() {
                panic!("moto exited ({st}): is moto[server] 5.2.5 installed?");
            }
            assert!(Instant::now() < deadline, "moto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (code, body) = http(port, "PUT", &format!("/{BUCKET}"));
        assert_eq!(code, 200, "creating the bucket: {body}");
        m.port = port;
        m
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Arms a fault (`status=503&count=4`, ...; see moto_faulty.py).
    pub fn fault(&self, q: &str) {
        let (code, body) = http(self.port, "POST", &format!("/__fault__?{q}"));
        assert_eq!(code, 200, "{body}");
    }

    /// How many requests the armed fault answered.
    pub fn faults_served(&self) -> u64 {
        let (_, body) = http(self.port, "GET", "/__fault__");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["served"].as_u64().unwrap()
    }

    /// Every object, through boto3.
    pub fn objects(&self) -> Vec<Obj> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let o = Command::new("python3")
            .arg(root.join("tests/s3/dump.py"))
            .args([&self.endpoint(), BUCKET])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "dump.py: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                Obj {
                    key: v["key"].as_str().unwrap().to_string(),
                    size: v["size"].as_u64().unwrap(),
                    encoding: v["content_encoding"].as_str().unwrap().to_string(),
                    ids: v["ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i.as_str().unwrap().to_string())
                        .collect(),
                }
            })
            .collect()
    }
}

#[derive(Debug)]
pub struct Obj {
    pub key: String,
    pub size: u64,
    pub encoding: String,
    pub ids: Vec<String>,
}

impl Obj {
    /// (source, start, end) from the key's `{id}`.
    pub fn span(&self) -> (String, u64, u64) {
        let name = self.key.rsplit('/').next().unwrap();
        let id = name.split('.').next().unwrap();
        let p: Vec<&str> = id.split('-').collect();
        let n = p.len();
        (
            p[n - 3].to_string(),
            p[n - 2].parse().unwrap(),
            p[n - 1].parse().unwrap(),
        )
    }
}

/// rsyslogd with one input of each kind; killed when dropped.
pub struct Rsyslog {
    child: Option<Child>,
    conf: PathBuf,
    pid: PathBuf,
    dir: PathBuf,
    pub ports: Ports,
}

#[derive(Clone, Copy)]
pub struct Ports {
    pub tcp: u16,
    pub tls: u16,
    pub relp: u16,
    pub relp_tls: u16,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Ports in LISTEN state on IPv4 (from /proc/net/tcp: no probe
/// connections, which rsyslog would log as broken sessions).
pub fn listening() -> Vec<u16> {
    let t = std::fs::read_to_string("/proc/net/tcp").unwrap();
    t.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(3) == Some(&"0A"))
                .then(|| u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok())
                .flatten()
        })
        .collect()
}

impl Rsyslog {
    pub fn start(dir: &Path, pki: &Pki) -> Rsyslog {
        let ports = Ports {
            tcp: free_port(),
            tls: free_port(),
            relp: free_port(),
            relp_tls: free_port(),
        };
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let conf = dir.join("rsyslog.conf");
        let (ca, crt, key) = (pki.p("ca.crt"), pki.p("server.crt"), pki.p("server.key"));
        let o = out.display();
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}" processInternalMessages="on" maxMessageSize="4m"
  defaultNetstreamDriverCAFile="{ca}" defaultNetstreamDriverCertFile="{crt}" defaultNetstreamDriverKeyFile="{key}")
template(name="msgonly" type="list") {{ property(name="msg") constant(value="\n") }}
module(load="imtcp" maxFrameSize="4194304")
module(load="imrelp")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="{tls}" ruleset="tls" streamDriver.name="gtls" streamDriver.mode="1"
  streamDriver.authMode="x509/name" permittedPeer=["forwarder.test"])
input(type="imrelp" address="127.0.0.1" port="{relp}" ruleset="relp")
input(type="imrelp" address="127.0.0.1" port="{relp_tls}" ruleset="relptls" tls="on" tls.cacert="{ca}"
  tls.mycert="{crt}" tls.myprivkey="{key}" tls.authmode="name" tls.permittedpeer=["forwarder.test"])
ruleset(name="tcp") {{ action(type="omfile" file="{o}/tcp.log" template="msgonly") }}
ruleset(name="tls") {{ action(type="omfile" file="{o}/tls.log" template="msgonly") }}
ruleset(name="relp" queue.type="direct") {{ action(type="omfile" file="{o}/relp.log" template="msgonly") }}
ruleset(name="relptls" queue.type="direct") {{ action(type="omfile" file="{o}/relptls.log" template="msgonly") }}
"#,
                work = work.display(),
                tcp = ports.tcp,
                tls = ports.tls,
                relp = ports.relp,
                relp_tls = ports.relp_tls,
            ),
        )
        .unwrap();
        let mut r = Rsyslog {
            child: None,
            conf,
            pid: dir.join("rsyslogd.pid"),
            dir: dir.to_path_buf(),
            ports,
        };
        r.run();
        r
    }

    /// Starts rsyslogd and waits until all four inputs listen.
    pub fn run(&mut self) {
        let _ = std::fs::remove_file(&self.pid);
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(&self.pid)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("rsyslogd.stderr")).unwrap())
            .spawn()
            .expect("rsyslogd (scripts/test-all.sh installs rsyslog rsyslog-relp rsyslog-gnutls)");
        self.child = Some(child);
        let p = self.ports;
        let deadline = Instant::now() + WAIT;
        loop {
            let l = listening();
            if [p.tcp, p.tls, p.relp, p.relp_tls]
                .iter()
                .all(|x| l.contains(x))
            {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("rsyslogd exited ({st}): {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, and waits until it exited.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_free_kill(c.id(), "TERM");
            let deadline = Instant::now() + WAIT;
            while c.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "rsyslogd did not stop");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default()
    }

    pub fn out(&self, name: &str) -> PathBuf {
        self.dir.join("out").join(format!("{name}.log"))
    }
}

impl Rsyslog {
    /// rsyslogd's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

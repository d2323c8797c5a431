//! Real HTTP CONNECT proxies from Debian packages, on loopback: tinyproxy,
//! squid, socat (Unix socket in front), stunnel (mutual TLS in front).

use super::WAIT;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A third-party daemon, killed (SIGKILL) when dropped.
pub struct Daemon {
    pub name: &'static str,
    child: Child,
    cmd: Vec<String>,
    ready: Ready,
    log: PathBuf,
}

#[derive(Clone)]
enum Ready {
    Tcp(u16),
    Unix(PathBuf),
}

impl Daemon {
    fn start(name: &'static str, cmd: Vec<String>, ready: Ready, log: PathBuf) -> Daemon {
        if let Ready::Unix(p) = &ready {
            let _ = std::fs::remove_file(p);
        }
        let child = spawn(name, &cmd, &log);
        let d = Daemon {
            name,
            child,
            cmd,
            ready,
            log,
        };
        d.wait_ready();
        d
    }

    /// Waits (bounded) until the daemon accepts connections.
    fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let up = match &self.ready {
                Ready::Tcp(p) => std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok(),
                Ready::Unix(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
            };
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not come up; its log:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the same command line and waits until it is up.
    pub fn restart(&mut self) {
        self.kill();
        if let Ready::Unix(p) = &self.ready {
            let _ = std::fs::remove_file(p);
        }
        self.child = spawn(self.name, &self.cmd, &self.log);
        self.wait_ready();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn spawn(name: &str, cmd: &[String], log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("{name} ({}): {e}; scripts/test-all.sh installs it", cmd[0]))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// tinyproxy 1.11: `HTTP/1.0 200 Connection established`, `500 Unable to
/// connect` when the target refuses.
/// `extra`: more configuration lines (e.g. `BasicAuth user password`).
pub fn tinyproxy(dir: &Path, extra: &str) -> (Daemon, u16) {
    let port = super::free_port();
    let conf = dir.join(format!("tinyproxy-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 600\nMaxClients 64\nLogLevel Info\n{extra}\n"
        ),
    )
    .unwrap();
    let cmd = vec![
        "tinyproxy".into(),
        "-d".into(),
        "-c".into(),
        conf.display().to_string(),
    ];
    let log = dir.join(format!("tinyproxy-{port}.log"));
    (Daemon::start("tinyproxy", cmd, Ready::Tcp(port), log), port)
}

/// squid 5: `HTTP/1.1 200 Connection established`, `503` with
/// `X-Squid-Error: ERR_CONNECT_FAIL` when the target refuses.
pub fn squid(dir: &Path) -> (Daemon, u16) {
    let port = super::free_port();
    let d = dir.join(format!("squid-{port}"));
    std::fs::create_dir_all(&d).unwrap();
    // squid drops to its own user for logs.
    let _ = Command::new("chmod").arg("777").arg(&d).status();
    let conf = d.join("squid.conf");
    let p = |f: &str| d.join(f).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "http_port 127.0.0.1:{port}\nacl local src 127.0.0.1/32\nhttp_access allow local\nhttp_access deny all\n\
             cache deny all\ndns_nameservers 127.0.0.1\npinger_enable off\nshutdown_lifetime 0 seconds\n\
             pid_filename {}\ncache_log {}\naccess_log {}\ncoredump_dir {}\n",
            p("squid.pid"),
            p("cache.log"),
            p("access.log"),
            d.display()
        ),
    )
    .unwrap();
    let cmd = vec![
        "squid".into(),
        "-N".into(),
        "-f".into(),
        conf.display().to_string(),
    ];
    (
        Daemon::start("squid", cmd, Ready::Tcp(port), d.join("stdout.log")),
        port,
    )
}

/// `socat UNIX-LISTEN` in front of a TCP proxy: konnectivity's UDS mode.
pub fn socat_uds(dir: &Path, to_port: u16) -> (Daemon, PathBuf) {
    let sock = dir.join(format!("konnectivity-{to_port}.socket"));
    let cmd = vec![
        "socat".into(),
        format!("UNIX-LISTEN:{},fork", sock.display()),
        format!("TCP:127.0.0.1:{to_port}"),
    ];
    let log = dir.join(format!("socat-{to_port}.log"));
    (
        Daemon::start("socat", cmd, Ready::Unix(sock.clone()), log),
        sock,
    )
}

/// stunnel in front of a TCP proxy, requiring a client certificate signed
/// by `ca` (`verifyChain`, `requireCert`): an mTLS CONNECT proxy like
/// konnectivity-server's or Gardener's VPN endpoint.
pub fn stunnel(dir: &Path, cert: &str, key: &str, ca: &str, to_port: u16) -> (Daemon, u16) {
    let port = super::free_port();
    let conf = dir.join(format!("stunnel-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\ndebug = notice\n[proxy]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{to_port}\n\
             cert = {cert}\nkey = {key}\nCAfile = {ca}\nverifyChain = yes\nrequireCert = yes\n"
        ),
    )
    .unwrap();
    let cmd = vec!["stunnel".into(), conf.display().to_string()];
    let log = dir.join(format!("stunnel-{port}.log"));
    (Daemon::start("stunnel", cmd, Ready::Tcp(port), log), port)
}

/// stunnel terminating TLS in front of a TCP server, without client
/// certificates (an HTTPS endpoint for a plain-HTTP test server).
pub fn tls_front(dir: &Path, cert: &str, key: &str, to_port: u16) -> (Daemon, u16) {
    let port = super::free_port();
    let conf = dir.join(format!("stunnel-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\ndebug = notice\n[front]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{to_port}\n\
             cert = {cert}\nkey = {key}\n"
        ),
    )
    .unwrap();
    let cmd = vec!["stunnel".into(), conf.display().to_string()];
    let log = dir.join(format!("stunnel-{port}.log"));
    (Daemon::start("stunnel", cmd, Ready::Tcp(port), log), port)
}

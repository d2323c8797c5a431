//! Interop with fluent-bit 1.8.15, built from the npm `fluent-bit@0.0.3`
//! package's C sources by tests/interop/fluent-bit/build.sh (cached in
//! target/fluent-bit; the README's test command runs the build).

mod common;

use audit_forwarder::synth::Mix;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    let b = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fluent-bit/bin/fluent-bit");
    assert!(
        b.is_file(),
        "fluent-bit is not built: run `bash tests/interop/fluent-bit/build.sh` (the README's test command does)"
    );
    b
}

struct FluentBit(Child);

impl Drop for FluentBit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts fluent-bit with `conf` (where `@PORT@` is its in_forward port) and
/// waits until it listens. fluent-bit 1.8 cannot bind port 0, so a free port
/// is picked and the start retried if another process took it.
fn start(dir: &Path, name: &str, conf: &str) -> (FluentBit, u16) {
    for _ in 0..5 {
        let port = free_port();
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf.replace("@PORT@", &port.to_string())).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(bin())
            .arg("-c")
            .arg(&path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("fluent-bit");
        let mut fb = FluentBit(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (fb, port);
            }
            if fb.0.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(fb);
    }
    panic!(
        "fluent-bit did not start; see {}",
        dir.join(format!("{name}.log")).display()
    );
}

fn json(l: &str) -> serde_json::Value {
    serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:.200}"))
}

#[test]
fn our_forwarder_to_fluent_bit_in_forward_with_acks_plain_and_gzip() {
    let d = tempfile::tempdir().unwrap();
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let conf = format!(
        "[SERVICE]\n    Flush 0.2\n    Grace 1\n[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port @PORT@\n[OUTPUT]\n    Name file\n    Match *\n    Path {}\n    Format plain\n",
        out_dir.display()
    );
    let (_fb, port) = start(d.path(), "recv", &conf);
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 71, Mix::Metadata);
    let mut want = 0;
    for (i, gzip) in [false, true].into_iter().enumerate() {
        api.write(300);
        want += 300;
        let mut a = forward_args(&log, &d.path().join("s"), port);
        a.extend([
            "--oneshot".into(),
            "--tag".into(),
            "audit".into(),
            "--set".into(),
            format!("output.gzip={gzip}"),
        ]);
        let mut f = spawn_forward(&a);
        assert_eq!(f.wait_exit(), 0, "run {i}: {}", f.all_logs());
    }
    // A DATA GAP (the checkpointed file deleted while the forwarder was
    // down) goes out as a chunk without events carrying `af_gap`:
    // fluent-bit acks it and ignores it, and the run completes.
    let rotated = api.rotate();
    std::fs::remove_file(&rotated).unwrap();
    api.write(100);
    want += 100;
    let mut a = forward_args(&log, &d.path().join("s"), port);
    a.extend(["--oneshot".into(), "--tag".into(), "audit".into()]);
    let mut f = spawn_forward(&a);
    assert_eq!(f.wait_exit(), 0, "gap run: {}", f.all_logs());
    assert!(f.all_logs().contains("DATA GAP"), "{}", f.all_logs());
    let got = wait_lines(&out_dir.join("audit"), want);
    let got: Vec<serde_json::Value> = got.iter().map(|l| json(l)).collect();
    let expect: Vec<serde_json::Value> = api.written.iter().map(|l| json(l)).collect();
    assert_eq!(got, expect);
}

#[test]
fn fluent_bit_out_forward_with_shared_key_user_tls_acks_gzip_to_our_receiver() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=receiver.test",
        ])
        .args([
            "-addext",
            "subjectAltName=DNS:receiver.test,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(dir.join("server.key"))
        .arg("-out")
        .arg(dir.join("server.crt"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = dir.join("out.jsonl");
    let crt = dir.join("server.crt").display().to_string();
    let key = dir.join("server.key").display().to_string();
    let (_rx, rport) = receiver(
        &out,
        &[
            "--set",
            &format!("receive.tls_cert_file={crt:?}"),
            "--set",
            &format!("receive.tls_key_file={key:?}"),
            "--set",
            "receive.shared_key=\"s3cret\"",
            "--set",
            "receive.self_hostname=\"receiver-host\"",
            "--set",
            "receive.users=[{username=\"flb\",password=\"pw\"}]",
        ],
    );
    let conf = format!(
        "[SERVICE]\n    Flush 0.2\n    Grace 1\n[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port @PORT@\n\
         [OUTPUT]\n    Name forward\n    Match *\n    Host 127.0.0.1\n    Port {rport}\n    Self_Hostname flb-host\n\
         \x20   Shared_Key s3cret\n    Username flb\n    Password pw\n    Require_ack_response On\n    Compress gzip\n\
         \x20   tls On\n    tls.verify On\n    tls.ca_file {crt}\n    tls.vhost receiver.test\n"
    );
    let (_fb, fport) = start(dir, "fwd", &conf);
    let events = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sample-events.jsonl");
    let o = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/fluent-client.js"))
        .args(["--port", &fport.to_string(), "--ack", "--timeout", "20"])
        .arg(&events)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(json)
        .collect();
    let got: Vec<serde_json::Value> = wait_lines(&out, want.len())
        .iter()
        .map(|l| json(l))
        .collect();
    assert_eq!(
        got, want,
        "fluent-bit's raw-salt handshake, TLS, gzip and acks all worked"
    );
}

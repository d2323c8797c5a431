//! TLS and mutual TLS (rustls) between our sides and with a real peer;
//! certificates made with openssl.

mod common;

use audit_forwarder::synth::Mix;
use common::pki::{Pki, leaf};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tls_receiver(pki: &Pki, out: &Path, mtls: bool) -> (Proc, u16) {
    let mut a = vec![
        "--set".to_string(),
        format!("receive.tls_cert_file={:?}", pki.p("server.crt")),
        "--set".into(),
        format!("receive.tls_key_file={:?}", pki.p("server.key")),
    ];
    if mtls {
        a.extend([
            "--set".into(),
            format!("receive.tls_client_ca_file={:?}", pki.p("ca.crt")),
        ]);
    }
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    receiver(out, &a)
}

fn fwd(log: &Path, state: &Path, port: u16, flags: &[String]) -> Vec<String> {
    let mut a = forward_args(log, state, port);
    a.extend(flags.iter().cloned());
    a
}

#[test]
fn tls_with_server_name_override_and_mtls() {
    let pki = Pki::new();
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 61, Mix::Metadata);
    api.write(200);
    for (i, mtls) in [false, true].into_iter().enumerate() {
        let out = d.path().join(format!("out{i}.jsonl"));
        let (_rx, port) = tls_receiver(&pki, &out, mtls);
        // Predecessor-compatible flags; the target is an IP, the name is verified.
        let mut flags = vec![
            "--tls-ca-file".into(),
            pki.p("ca.crt"),
            "--tls-vhost".into(),
            "receiver.test".into(),
        ];
        if mtls {
            flags.extend([
                "--tls-crt-file".into(),
                pki.p("client.crt"),
                "--tls-key-file".into(),
                pki.p("client.key"),
            ]);
        }
        flags.push("--oneshot".into());
        let mut f = spawn_forward(&fwd(&log, &d.path().join(format!("s{i}")), port, &flags));
        assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
        assert_eq!(read_lines(&out), api.written);
    }
}

#[test]
fn untrusted_missing_or_rogue_certificates_fail_closed() {
    let pki = Pki::new();
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 62, Mix::Metadata);
    api.write(10);
    let cases: Vec<(bool, Vec<String>, &str, Option<&str>)> = vec![
        // The server's certificate is not signed by the CA we trust.
        (
            false,
            vec!["--tls-ca-file".into(), pki.p("rogue.crt")],
            "UnknownIssuer",
            None,
        ),
        // The name does not match the certificate.
        (
            false,
            vec![
                "--tls-ca-file".into(),
                pki.p("ca.crt"),
                "--tls-vhost".into(),
                "other.test".into(),
            ],
            "certificate not valid for name",
            None,
        ),
        // mTLS: no client certificate.
        (
            true,
            vec!["--tls-ca-file".into(), pki.p("ca.crt")],
            "the server rejected this connection",
            Some("TLS handshake failed"),
        ),
        // mTLS: a client certificate from another CA.
        (
            true,
            vec![
                "--tls-ca-file".into(),
                pki.p("ca.crt"),
                "--tls-crt-file".into(),
                pki.p("rogueclient.crt"),
                "--tls-key-file".into(),
                pki.p("rogueclient.key"),
            ],
            "the server rejected this connection",
            Some("TLS handshake failed"),
        ),
    ];
    for (i, (mtls, flags, want_fwd, want_recv)) in cases.into_iter().enumerate() {
        let out = d.path().join(format!("out{i}.jsonl"));
        let (rx, port) = tls_receiver(&pki, &out, mtls);
        let mut f = spawn_forward(&fwd(&log, &d.path().join(format!("s{i}")), port, &flags));
        f.wait_log(want_fwd);
        if let Some(w) = want_recv {
            rx.wait_log(w);
        }
        f.kill9();
        assert!(
            read_lines(&out).is_empty(),
            "case {i}: nothing may be written"
        );
    }
}

fn served_serial(port: u16) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername receiver.test </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn certificate_rotation_during_a_run_loses_nothing() {
    let pki = Pki::new();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (rx, port) = tls_receiver(&pki, &out, false);
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 63, Mix::Metadata);
    let flags = vec![
        "--tls-ca-file".to_string(),
        pki.p("ca.crt"),
        "--tls-vhost".into(),
        "receiver.test".into(),
    ];
    let _f = spawn_forward(&fwd(&log, &d.path().join("s"), port, &flags));
    api.write(300);
    wait_lines(&out, 300);
    let before = served_serial(port);
    // Rotate the server certificate in place (as a Secret update would).
    let dir = pki.dir.path();
    leaf(dir, "ca", "server2", "DNS:receiver.test,IP:127.0.0.1");
    std::fs::copy(dir.join("server2.key"), dir.join("server.key")).unwrap();
    std::fs::copy(dir.join("server2.crt"), dir.join("server.crt")).unwrap();
    api.write(300);
    let after = served_serial(port);
    assert!(
        !before.is_empty() && before != after,
        "new connections get the new certificate ({before} → {after})"
    );
    rx.wait_log("TLS certificate files changed");
    api.write(300);
    assert_eq!(
        wait_lines(&out, 900),
        api.written,
        "zero events lost across the rotation"
    );
}

fn interop() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

#[test]
fn tls_interop_with_fluent_org_logger() {
    let pki = Pki::new();
    let d = tempfile::tempdir().unwrap();
    // Their client → our TLS receiver.
    let out = d.path().join("out.jsonl");
    let (_rx, port) = tls_receiver(&pki, &out, false);
    let events = interop().join("sample-events.jsonl");
    let o = Command::new("node")
        .arg(interop().join("fluent-client.js"))
        .args([
            "--port",
            &port.to_string(),
            "--ack",
            "--tls-ca",
            &pki.p("ca.crt"),
            "--servername",
            "receiver.test",
            "--timeout",
            "20",
        ])
        .arg(&events)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        read_lines(&out).len(),
        std::fs::read_to_string(&events).unwrap().lines().count()
    );

    // Our forwarder → their TLS server.
    // Shared key and user authentication inside TLS, with acks.
    let srv = NodeServer::start(&[
        "--tls-cert",
        &pki.p("server.crt"),
        "--tls-key",
        &pki.p("server.key"),
        "--shared-key",
        "s3cret",
        "--username",
        "alice",
        "--password",
        "pw",
    ]);
    let port = srv.port;
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 64, Mix::Metadata);
    api.write(50);
    let flags = vec![
        "--tls-ca-file".to_string(),
        pki.p("ca.crt"),
        "--tls-vhost".into(),
        "receiver.test".into(),
        "--oneshot".into(),
    ];
    let flags: Vec<String> = flags
        .into_iter()
        .chain(
            [
                "output.shared_key=\"s3cret\"",
                "output.username=\"alice\"",
                "output.password=\"pw\"",
                "output.self_hostname=\"forwarder-host\"",
            ]
            .into_iter()
            .flat_map(|s| ["--set".to_string(), s.to_string()]),
        )
        .collect();
    let mut f = spawn_forward(&fwd(&log, &d.path().join("s"), port, &flags));
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert_eq!(srv.records(50), json_values(&api.written));
}

#[test]
fn check_validates_certificates_and_keys() {
    let pki = Pki::new();
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("c.toml");
    let run = |text: String| {
        std::fs::write(&cfg, text).unwrap();
        Command::new(BIN)
            .args(["check", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let ok = run(format!(
        "[[outputs]]\ntls = true\ntls_ca_file = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}\n[receive]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        pki.p("ca.crt"),
        pki.p("client.crt"),
        pki.p("client.key"),
        pki.p("server.crt"),
        pki.p("server.key")
    ));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // A key that does not belong to the certificate, and a missing CA file.
    let bad = run(format!(
        "[[outputs]]\ntls = true\ntls_ca_file = \"/nonexistent/ca.crt\"\n[receive]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        pki.p("server.crt"),
        pki.p("client.key")
    ));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("tls_ca_file = /nonexistent/ca.crt"), "{err}");
    assert!(
        err.contains("receive.tls_cert_file:") && err.contains("tls_cert_file/tls_key_file"),
        "{err}"
    );
}

#[test]
fn expired_certificates_fail_closed() {
    let pki = Pki::new();
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 65, Mix::Metadata);
    api.write(10);
    // An expired server certificate.
    let out = d.path().join("out1.jsonl");
    let (_rx, port) = receiver(
        &out,
        &[
            "--set",
            &format!("receive.tls_cert_file={:?}", pki.p("expiredserver.crt")),
            "--set",
            &format!("receive.tls_key_file={:?}", pki.p("expiredserver.key")),
        ],
    );
    let flags = vec![
        "--tls-ca-file".to_string(),
        pki.p("ca.crt"),
        "--tls-vhost".into(),
        "receiver.test".into(),
    ];
    let mut f = spawn_forward(&fwd(&log, &d.path().join("s1"), port, &flags));
    f.wait_log("certificate expired");
    f.kill9();
    assert!(read_lines(&out).is_empty());
    // An expired client certificate against mutual TLS.
    let out = d.path().join("out2.jsonl");
    let (rx, port) = tls_receiver(&pki, &out, true);
    let mut flags = flags.clone();
    flags.extend([
        "--tls-crt-file".into(),
        pki.p("expiredclient.crt"),
        "--tls-key-file".into(),
        pki.p("expiredclient.key"),
    ]);
    let mut f = spawn_forward(&fwd(&log, &d.path().join("s2"), port, &flags));
    rx.wait_log("certificate expired");
    f.wait_log("the server rejected this connection");
    f.kill9();
    assert!(read_lines(&out).is_empty());
}

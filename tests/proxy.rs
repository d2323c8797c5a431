//! Forwarding through real HTTP CONNECT proxies (Debian's tinyproxy, squid,
//! socat, stunnel): plain, konnectivity-style Unix socket, and mutual TLS to
//! the proxy with TLS and the Forward handshake inside the tunnel.
//!
//! Each mode proves: the proxy's refusal (target port closed) is a clear,
//! counted error and the forwarder retries; events then arrive with acks;
//! the proxy killed and restarted mid-stream loses nothing.

mod common;

use audit_forwarder::synth::Mix;
use common::pki::Pki;
use common::proxies::{Daemon, socat_uds, squid, stunnel, tinyproxy};
use common::*;
use std::collections::HashSet;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Tinyproxy,
    Squid,
    /// socat UNIX-LISTEN → tinyproxy (konnectivity-server's UDS mode).
    Uds,
    /// stunnel with client-certificate verification → squid; TLS to the
    /// receiver and the shared-key handshake inside the tunnel.
    Mtls,
}

/// Starts the proxy chain; returns the daemons (back first) and the
/// forwarder flags that use it.
fn proxy_chain(mode: Mode, dir: &Path, pki: &Pki) -> (Vec<Daemon>, Vec<String>) {
    let http = |port: u16| {
        vec![
            "--proxy-host".to_string(),
            "127.0.0.1".into(),
            "--proxy-port".into(),
            port.to_string(),
        ]
    };
    match mode {
        Mode::Tinyproxy => {
            let (d, port) = tinyproxy(dir, "");
            (vec![d], http(port))
        }
        Mode::Squid => {
            let (d, port) = squid(dir);
            (vec![d], http(port))
        }
        Mode::Uds => {
            let (t, port) = tinyproxy(dir, "");
            let (s, sock) = socat_uds(dir, port);
            (
                vec![t, s],
                vec![
                    "--konnectivity-uds-socket".into(),
                    sock.display().to_string(),
                ],
            )
        }
        Mode::Mtls => {
            let (q, port) = squid(dir);
            let (s, sport) = stunnel(
                dir,
                &pki.p("server.crt"),
                &pki.p("server.key"),
                &pki.p("ca.crt"),
                port,
            );
            let mut f = http(sport);
            f.extend([
                "--proxy-ca-file".into(),
                pki.p("ca.crt"),
                "--proxy-client-crt-file".into(),
                pki.p("client.crt"),
                "--proxy-client-key-file".into(),
                pki.p("client.key"),
            ]);
            (vec![q, s], f)
        }
    }
}

/// Receiver flags and matching forwarder flags for the mode (TLS and a
/// shared key in the mTLS mode).
fn security(mode: Mode, pki: &Pki) -> (Vec<String>, Vec<String>) {
    if mode != Mode::Mtls {
        return (vec![], vec![]);
    }
    (
        vec![
            "--set".into(),
            format!("receive.tls_cert_file={:?}", pki.p("server.crt")),
            "--set".into(),
            format!("receive.tls_key_file={:?}", pki.p("server.key")),
            "--set".into(),
            "receive.shared_key=\"s3cret\"".into(),
        ],
        vec![
            "--tls-ca-file".into(),
            pki.p("ca.crt"),
            "--tls-vhost".into(),
            "receiver.test".into(),
            "--set".into(),
            "output.shared_key=\"s3cret\"".into(),
            "--set".into(),
            "output.self_hostname=\"kube-apiserver\"".into(),
        ],
    )
}

fn refusal_status(mode: Mode) -> &'static str {
    match mode {
        Mode::Tinyproxy | Mode::Uds => ": 500 Unable to connect",
        Mode::Squid | Mode::Mtls => ": 503 Service Unavailable",
    }
}

fn counter(text: &str, name: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("audit_forwarder_{name}_total"),
        &format!("output=\"default\",reason=\"{reason}\""),
    )
}

fn scenario(mode: Mode) {
    let pki = Pki::new();
    let d = tempfile::tempdir().unwrap();
    let (mut chain, proxy_flags) = proxy_chain(mode, d.path(), &pki);
    let (rx_flags, tx_flags) = security(mode, &pki);
    let log = d.path().join("audit.log");
    let out = d.path().join("out.jsonl");
    let mut api = ApiServerLog::new(&log, 71, Mix::Metadata);
    api.write(200);

    // 1. The receiver is not up yet: the proxy refuses, the forwarder says
    //    so clearly, counts it, and retries.
    let recv_port = free_port();
    let mut args = forward_args(&log, &d.path().join("state"), recv_port);
    args.extend(proxy_flags);
    args.extend(tx_flags);
    args.extend(["--set".into(), "http_listen=\"127.0.0.1:0\"".into()]);
    let fwd = spawn_forward(&args);
    let mport = http_port(&fwd);
    let line = fwd.wait_log("refused CONNECT");
    assert!(
        line.contains(&format!("127.0.0.1:{recv_port}")) && line.contains(refusal_status(mode)),
        "{mode:?}: {line}"
    );
    wait_metrics(mport, "proxy_refused", |t| {
        counter(t, "connect_errors", "proxy_refused") >= 2.0
    });

    // 2. Receiver up: everything arrives, acked.
    let rx: Vec<&str> = rx_flags.iter().map(String::as_str).collect();
    let (_rx, _) = receiver_on(&format!("127.0.0.1:{recv_port}"), &out, &rx);
    let deadline = std::time::Instant::now() + WAIT;
    while read_lines(&out).len() < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "{mode:?}: forwarder logs:\n{}",
            fwd.all_logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // 3. The proxy chain is killed mid-stream and comes back: nothing lost.
    api.write(3000);
    wait_lines(&out, 201);
    for p in chain.iter_mut().rev() {
        p.kill();
    }
    api.write(300);
    wait_metrics(mport, "proxy_connect errors", |t| {
        counter(t, "connect_errors", "proxy_connect") >= 1.0
    });
    for p in chain.iter_mut() {
        p.restart();
    }
    let lines = wait_lines(&out, api.written.len());
    let got: HashSet<String> = lines.iter().map(|l| audit_id(l)).collect();
    let missing = api
        .written
        .iter()
        .filter(|e| !got.contains(&audit_id(e)))
        .count();
    println!(
        "{mode:?}: written {}, received {} lines ({} distinct), missing {missing}",
        api.written.len(),
        lines.len(),
        got.len()
    );
    assert_eq!(missing, 0, "{mode:?}: events lost");
    wait_metrics(mport, "acks", |t| {
        metric(
            t,
            "audit_forwarder_events_acked_total",
            "output=\"default\"",
        ) >= api.written.len() as f64
    });
}

#[test]
fn through_tinyproxy() {
    scenario(Mode::Tinyproxy);
}

#[test]
fn through_squid() {
    scenario(Mode::Squid);
}

#[test]
fn konnectivity_unix_socket_via_socat() {
    scenario(Mode::Uds);
}

#[test]
fn mtls_proxy_via_stunnel_with_tls_and_handshake_inside_the_tunnel() {
    scenario(Mode::Mtls);
}

/// A missing, untrusted or rogue certificate on either side of the mTLS
/// proxy is a certificate error; replacing the client certificate files
/// takes effect without a restart.
#[test]
fn mtls_proxy_certificate_errors_and_reload() {
    let pki = Pki::new();
    let d = tempfile::tempdir().unwrap();
    let (_q, qport) = squid(d.path());
    let (_s, sport) = stunnel(
        d.path(),
        &pki.p("server.crt"),
        &pki.p("server.key"),
        &pki.p("ca.crt"),
        qport,
    );
    let log = d.path().join("audit.log");
    let out = d.path().join("out.jsonl");
    let mut api = ApiServerLog::new(&log, 72, Mix::Metadata);
    api.write(50);
    let (_rx, port) = receiver(&out, &[]);
    let run = |name: &str, ca: &str, cert: Option<(&str, &str)>| -> Proc {
        let mut a = forward_args(&log, &d.path().join(name), port);
        a.extend([
            "--proxy-host".into(),
            "127.0.0.1".into(),
            "--proxy-port".into(),
            sport.to_string(),
            "--proxy-ca-file".into(),
            ca.into(),
        ]);
        if let Some((c, k)) = cert {
            a.extend([
                "--proxy-client-crt-file".into(),
                c.into(),
                "--proxy-client-key-file".into(),
                k.into(),
            ]);
        }
        spawn_forward(&a)
    };
    // No client certificate: stunnel rejects it (TLS 1.3: at the first read).
    let f = run("none", &pki.p("ca.crt"), None);
    let l = f.wait_log("forward connection failed");
    println!("{l}");
    assert!(
        l.contains("rejected this client's certificate") || l.contains("client certificate"),
        "{l}"
    );
    drop(f);
    // A client certificate from a rogue CA.
    let f = run(
        "rogue",
        &pki.p("ca.crt"),
        Some((&pki.p("rogueclient.crt"), &pki.p("rogueclient.key"))),
    );
    let l = f.wait_log("forward connection failed");
    println!("{l}");
    assert!(l.contains("rejected this client's certificate"), "{l}");
    drop(f);
    // The proxy's certificate is not signed by the CA we trust.
    let f = run(
        "untrusted",
        &pki.p("rogue.crt"),
        Some((&pki.p("client.crt"), &pki.p("client.key"))),
    );
    let l = f.wait_log("forward connection failed");
    println!("{l}");
    assert!(
        l.contains("proxy https://127.0.0.1") && l.contains("TLS") && l.contains("UnknownIssuer"),
        "{l}"
    );
    drop(f);
    assert!(
        read_lines(&out).is_empty(),
        "nothing may pass a failed proxy"
    );

    // Rotation: the files hold the rogue pair first, then the right one.
    let crt = d.path().join("tls.crt");
    let key = d.path().join("tls.key");
    std::fs::copy(pki.p("rogueclient.crt"), &crt).unwrap();
    std::fs::copy(pki.p("rogueclient.key"), &key).unwrap();
    let f = run(
        "rotate",
        &pki.p("ca.crt"),
        Some((crt.to_str().unwrap(), key.to_str().unwrap())),
    );
    f.wait_log("rejected this client's certificate");
    std::fs::copy(pki.p("client.key"), &key).unwrap();
    std::fs::copy(pki.p("client.crt"), &crt).unwrap();
    let lines = wait_lines(&out, 50);
    assert_eq!(lines.len(), 50);
}

/// Basic proxy authentication against tinyproxy's `BasicAuth`, a Host
/// header and an extra header; a wrong password is a clear refusal
/// (tinyproxy answers 401 rather than 407).
#[test]
fn basic_proxy_auth_with_tinyproxy() {
    let d = tempfile::tempdir().unwrap();
    let (_t, pport) = tinyproxy(d.path(), "BasicAuth audit s3cret\n");
    let log = d.path().join("audit.log");
    let out = d.path().join("out.jsonl");
    let mut api = ApiServerLog::new(&log, 73, Mix::Metadata);
    api.write(20);
    let (_rx, port) = receiver(&out, &[]);
    let run = |name: &str, password: &str| -> Proc {
        let mut a = forward_args(&log, &d.path().join(name), port);
        for s in [
            format!("output.proxy.url=\"http://127.0.0.1:{pport}\""),
            "output.proxy.username=\"audit\"".into(),
            format!("output.proxy.password={password:?}"),
            "output.proxy.host_header=\"127.0.0.1\"".into(),
            "output.proxy.headers={ X-Cluster = \"shoot--a\" }".into(),
        ] {
            a.extend(["--set".into(), s]);
        }
        spawn_forward(&a)
    };
    let f = run("wrong", "nope");
    let l = f.wait_log("forward connection failed");
    println!("{l}");
    assert!(
        l.contains("refused CONNECT") && l.contains("401 Unauthorized"),
        "{l}"
    );
    drop(f);
    assert!(read_lines(&out).is_empty());
    let _f = run("right", "s3cret");
    assert_eq!(wait_lines(&out, 20).len(), 20);
}

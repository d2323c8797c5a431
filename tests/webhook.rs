//! The webhook source, driven like kube-apiserver's audit webhook backend
//! (EventList POSTs over HTTPS with a client certificate and a bearer
//! token), with curl as the HTTP client: spooled before the 200, forwarded
//! with acks, nothing lost when the forwarder is SIGKILLed after answering,
//! 429 while the spool is full, 4xx for bad bodies.

mod common;

use audit_forwarder::synth::{Generator, Mix};
use common::pki::Pki;
use common::*;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// An EventList body as the apiserver's webhook sends it: items without
/// kind/apiVersion. Returns the body and the items' auditIDs.
fn event_list(g: &mut Generator, n: usize) -> (String, Vec<String>) {
    let mut ids = Vec::with_capacity(n);
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let mut v: serde_json::Value = serde_json::from_str(&g.event()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.shift_remove("kind");
        o.shift_remove("apiVersion");
        ids.push(o["auditID"].as_str().unwrap().to_string());
        items.push(v);
    }
    let body = serde_json::json!({
        "kind": "EventList",
        "apiVersion": "audit.k8s.io/v1",
        "metadata": {},
        "items": items,
    });
    (body.to_string(), ids)
}

/// How to reach the webhook.
struct Endpoint {
    port: u16,
    /// curl arguments for TLS and the token (empty: plain HTTP).
    auth: Vec<String>,
    tls: bool,
    dir: PathBuf,
}

impl Endpoint {
    /// POSTs `body` with curl; returns (HTTP status, response body). Status 0:
    /// curl failed before an answer (e.g. the TLS handshake was refused).
    fn post_with(&self, body: &str, extra: &[&str]) -> (u16, String) {
        let f = self.dir.join("body.json");
        std::fs::write(&f, body).unwrap();
        let scheme = if self.tls { "https" } else { "http" };
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}"])
            .args(["-H", "Content-Type: application/json"])
            .args(&self.auth)
            .args(extra)
            .arg("--data-binary")
            .arg(format!("@{}", f.display()))
            .arg(format!("{scheme}://127.0.0.1:{}/audit", self.port))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (resp, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), resp.to_string())
    }

    fn post(&self, body: &str) -> (u16, String) {
        self.post_with(body, &[])
    }
}

fn webhook_port(p: &Proc) -> u16 {
    logged_port(p, "webhook source listening")
}

/// Starts a forwarder whose config is `toml` (plus test timings).
fn forwarder(dir: &Path, toml: &str) -> Proc {
    let cfg = dir.join("forwarder.toml");
    std::fs::write(&cfg, toml).unwrap();
    let c = cfg.display().to_string();
    Proc::spawn(
        &[
            "forward",
            "--config",
            &c,
            "--set",
            "http_listen=\"127.0.0.1:0\"",
            "--set",
            "tail.poll_interval=\"20ms\"",
            "--set",
            "output.retry_min=\"20ms\"",
            "--set",
            "output.retry_max=\"200ms\"",
        ],
        &[],
    )
}

/// A webhook-only forwarder on plain HTTP with these limits (bytes), sending
/// to 127.0.0.1:`rport`; returns it, its endpoint and its metrics port.
fn plain_webhook_forwarder(
    dir: &Path,
    rport: u16,
    max_body: u64,
    file: u64,
    max: u64,
) -> (Proc, Endpoint, u16) {
    let toml = format!(
        r#"
state_dir = "{state}"
[tail]
enabled = false
[webhook]
listen = "127.0.0.1:0"
allow_plaintext = true
max_body_bytes = {max_body}
spool_file_bytes = {file}
spool_max_bytes = {max}
[[outputs]]
port = {rport}
"#,
        state = dir.join("state").display(),
    );
    let fwd = forwarder(dir, &toml);
    let ep = Endpoint {
        port: webhook_port(&fwd),
        auth: vec![],
        tls: false,
        dir: dir.to_path_buf(),
    };
    let mport = http_port(&fwd);
    (fwd, ep, mport)
}

fn ids_in(out: &Path) -> Vec<String> {
    read_lines(out).iter().map(|l| audit_id(l)).collect()
}

/// Waits until every id of `want` is in `out`.
fn wait_ids(out: &Path, want: &HashSet<String>) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = ids_in(out);
        let have: HashSet<&String> = got.iter().collect();
        let missing = want.iter().filter(|i| !have.contains(i)).count();
        if missing == 0 {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} events never arrived",
            want.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn eventlists_over_mtls_arrive_beside_the_file_tail_and_survive_sigkill_after_200() {
    let pki = Pki::new();
    let d = tempfile::tempdir().unwrap();
    let (out, state, log) = (
        d.path().join("out.jsonl"),
        d.path().join("state"),
        d.path().join("audit.log"),
    );
    let token = d.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let rport = free_port();
    let toml = format!(
        r#"
state_dir = "{state}"
[tail]
path = "{log}"
[webhook]
listen = "127.0.0.1:0"
tls_cert_file = "{cert}"
tls_key_file = "{key}"
tls_client_ca_file = "{ca}"
bearer_token_file = "{token}"
max_body_bytes = 16777216
spool_file_bytes = 1048576
[[outputs]]
port = {rport}
"#,
        state = state.display(),
        log = log.display(),
        cert = pki.p("server.crt"),
        key = pki.p("server.key"),
        ca = pki.p("ca.crt"),
        token = token.display(),
    );
    let mut apiserver_log = ApiServerLog::new(&log, 11, Mix::Metadata);
    apiserver_log.write(300);
    let mut fwd = forwarder(d.path(), &toml);
    let ep = Endpoint {
        port: webhook_port(&fwd),
        auth: [
            "--cacert",
            &pki.p("ca.crt"),
            "--cert",
            &pki.p("client.crt"),
            "--key",
            &pki.p("client.key"),
            "-H",
            "Authorization: Bearer s3cret-token",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        tls: true,
        dir: d.path().to_path_buf(),
    };
    let mport = http_port(&fwd);

    // The receiver is down: batches are answered 200 once spooled, nothing
    // is forwarded yet.
    let mut g = Generator::new(4242, Mix::Metadata);
    let mut want: HashSet<String> = HashSet::new();
    for n in [1, 100, 5_000, 250] {
        let (body, ids) = event_list(&mut g, n);
        let (code, resp) = ep.post(&body);
        assert_eq!(code, 200, "{resp}");
        want.extend(ids);
    }
    // Large RequestResponse events, and a single Event on its own.
    let (body, ids) = event_list(&mut Generator::new(17, Mix::Realistic), 150);
    assert_eq!(ep.post(&body).0, 200);
    want.extend(ids);
    let single = g.event();
    assert_eq!(ep.post(&single).0, 200);
    want.insert(audit_id(&single));
    // Over max_body_bytes: 413, nothing of it spooled.
    let (big, big_ids) = event_list(&mut Generator::new(99, Mix::Metadata), 12_000);
    assert!(big.len() > 16 << 20, "{}", big.len());
    let (code, resp) = ep.post(&big);
    assert_eq!(code, 413, "{resp}");
    assert!(resp.contains("max_body_bytes"), "{resp}");
    // Wrong token: 401. No client certificate: the TLS handshake fails.
    let (body, _) = event_list(&mut Generator::new(7, Mix::Metadata), 3);
    let wrong_token = Endpoint {
        auth: ep.auth[..6]
            .iter()
            .cloned()
            .chain(["-H".into(), "Authorization: Bearer wrong".into()])
            .collect(),
        ..ep_clone(&ep)
    };
    let (code, resp) = wrong_token.post(&body);
    assert_eq!(code, 401, "{resp}");
    let no_cert = Endpoint {
        auth: vec!["--cacert".into(), pki.p("ca.crt")],
        ..ep_clone(&ep)
    };
    assert_eq!(
        no_cert.post(&body).0,
        0,
        "a client without a certificate got an answer"
    );
    let m = wait_metrics(mport, "rejections", |t| {
        metric(
            t,
            "audit_forwarder_webhook_rejected_total",
            "reason=\"unauthorized\"",
        ) == 1.0
            && metric(
                t,
                "audit_forwarder_webhook_rejected_total",
                "reason=\"too_large\"",
            ) == 1.0
            && metric(
                t,
                "audit_forwarder_webhook_rejected_total",
                "reason=\"tls\"",
            ) >= 1.0
    });
    assert_eq!(
        metric(&m, "audit_forwarder_webhook_events_total", ""),
        want.len() as f64
    );

    // Killed after answering 200, before anything was forwarded.
    fwd.kill9();
    let (_rcv, _) = receiver_on(&format!("127.0.0.1:{rport}"), &out, &[]);
    let fwd = forwarder(d.path(), &toml);
    let ep = Endpoint {
        port: webhook_port(&fwd),
        ..ep_clone(&ep)
    };
    // More batches and more file lines while it runs.
    for _ in 0..5 {
        let (body, ids) = event_list(&mut g, 200);
        assert_eq!(ep.post(&body).0, 200);
        want.extend(ids);
    }
    apiserver_log.write(200);
    let from_file: HashSet<String> = apiserver_log.written.iter().map(|l| audit_id(l)).collect();
    let all: HashSet<String> = want.union(&from_file).cloned().collect();
    let got = wait_ids(&out, &all);
    let distinct: HashSet<&String> = got.iter().collect();
    assert!(
        !big_ids.iter().any(|i| distinct.contains(i)),
        "events of the refused batch were forwarded"
    );
    assert_eq!(distinct.len(), all.len(), "unexpected events arrived");
    println!(
        "webhook: {} events posted and accepted, {} from the file; received {} ({} distinct), missing 0",
        want.len(),
        from_file.len(),
        got.len(),
        distinct.len()
    );
    // Items got the kind/apiVersion of a log line.
    let first: serde_json::Value = serde_json::from_str(&read_lines(&out)[0]).unwrap();
    assert_eq!(first["kind"], "Event");
    assert_eq!(first["apiVersion"], "audit.k8s.io/v1");
}

fn ep_clone(e: &Endpoint) -> Endpoint {
    Endpoint {
        port: e.port,
        auth: e.auth.clone(),
        tls: e.tls,
        dir: e.dir.clone(),
    }
}

#[test]
fn a_full_spool_answers_429_and_recovers_once_the_receiver_drains_it() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let rport = free_port();
    let (_fwd, ep, mport) = plain_webhook_forwarder(d.path(), rport, 262144, 131072, 1048576);
    let mut g = Generator::new(5, Mix::Metadata);
    let mut want = HashSet::new();
    // Receiver down: fill the spool (~1 MiB) until it refuses.
    let mut refused = None;
    for _ in 0..200 {
        let (body, ids) = event_list(&mut g, 50);
        let (code, resp) = ep.post(&body);
        match code {
            200 => want.extend(ids),
            429 => {
                refused = Some(resp);
                break;
            }
            c => panic!("unexpected answer {c}: {resp}"),
        }
    }
    let resp = refused.expect("the spool never filled up");
    let status: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(status["reason"], "TooManyRequests", "{resp}");
    assert!(
        status["message"].as_str().unwrap().contains("spool full"),
        "{resp}"
    );
    assert!(want.len() >= 300, "only {} accepted", want.len());
    wait_metrics(mport, "spool_full", |t| {
        metric(
            t,
            "audit_forwarder_webhook_rejected_total",
            "reason=\"spool_full\"",
        ) >= 1.0
            && metric(t, "audit_forwarder_webhook_requests_total", "code=\"429\"") >= 1.0
    });

    // The receiver comes up: everything accepted arrives, the acknowledged
    // spool files are deleted, and batches are accepted again.
    let (_rcv, _) = receiver_on(&format!("127.0.0.1:{rport}"), &out, &[]);
    wait_ids(&out, &want);
    let deadline = Instant::now() + WAIT;
    let mut later = HashSet::new();
    loop {
        let (body, ids) = event_list(&mut g, 50);
        match ep.post(&body) {
            (200, _) => {
                later.extend(ids);
                break;
            }
            (429, _) => assert!(Instant::now() < deadline, "the spool never drained"),
            (c, r) => panic!("unexpected answer {c}: {r}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    want.extend(later);
    let got = wait_ids(&out, &want);
    let m = wait_metrics(mport, "spool files deleted", |t| {
        metric(t, "audit_forwarder_spool_files_deleted_total", "") >= 1.0
    });
    println!(
        "spool full: accepted {}, received {} ({} distinct), spool files deleted {}",
        want.len(),
        got.len(),
        got.iter().collect::<HashSet<_>>().len(),
        metric(&m, "audit_forwarder_spool_files_deleted_total", "")
    );
}

#[test]
fn bad_requests_get_a_4xx_with_a_reason_and_are_counted() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rcv, rport) = receiver(&out, &[]);
    let (_fwd, ep, mport) = plain_webhook_forwarder(d.path(), rport, 65536, 65536, 1048576);
    let cases: [(&str, &[&str], u16, &str, &str); 7] = [
        (
            "not json",
            &[],
            400,
            "invalid_json",
            "not an audit.k8s.io EventList",
        ),
        (
            r#"{"kind":"PodList","apiVersion":"v1","items":[]}"#,
            &[],
            400,
            "wrong_kind",
            "is not audit.k8s.io/v1",
        ),
        (
            r#"{"kind":"Status","apiVersion":"audit.k8s.io/v1"}"#,
            &[],
            400,
            "wrong_kind",
            "expected EventList or Event",
        ),
        (
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":["x"]}"#,
            &[],
            400,
            "not_an_object",
            "items[0]",
        ),
        (&"x".repeat(70_000), &[], 413, "too_large", "max_body_bytes"),
        (
            "{}",
            &["-H", "Content-Type: application/vnd.kubernetes.protobuf"],
            415,
            "media_type",
            "only application/json",
        ),
        ("", &["-X", "GET"], 405, "method", "POST"),
    ];
    for (body, extra, code, reason, says) in cases {
        let (c, resp) = ep.post_with(body, extra);
        assert_eq!(c, code, "{body:.60}: {resp}");
        assert!(resp.contains(says), "{body:.60}: {resp}");
        let st: serde_json::Value = serde_json::from_str(&resp).unwrap();
        assert_eq!(st["code"], code);
        wait_metrics(mport, reason, |t| {
            metric(
                t,
                "audit_forwarder_webhook_rejected_total",
                &format!("reason=\"{reason}\""),
            ) >= 1.0
        });
    }
    // Still serving: a good batch is accepted and arrives.
    let (body, ids) = event_list(&mut Generator::new(3, Mix::Metadata), 10);
    assert_eq!(ep.post(&body).0, 200);
    wait_ids(&out, &ids.into_iter().collect());
    assert_eq!(read_lines(&out).len(), 10, "a refused body was forwarded");
}

/// 300 clients that send their headers and then a byte of body per second
/// (from other loopback addresses) neither hold the request permits nor
/// keep a normal POST out: it is answered 200 and forwarded, and they are
/// closed by the minimum transfer rate.
#[test]
fn slow_clients_do_not_block_a_normal_post() {
    raise_nofile();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rcv, rport) = receiver(&out, &[]);
    let (_fwd, ep, mport) = plain_webhook_forwarder(d.path(), rport, 1 << 20, 1 << 20, 64 << 20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let head = "POST /audit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{";
    let mut slow: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|i| {
            let src = std::net::Ipv4Addr::new(127, 0, 4, 1 + (i / 100) as u8);
            let mut s = connect_from(&rt, src, ep.port)?;
            std::io::Write::write_all(&mut s, head.as_bytes()).ok()?;
            Some(s)
        })
        .collect();
    assert_eq!(slow.len(), 300);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let dribble = std::thread::spawn(move || {
        for _ in 0..90 {
            if st.load(std::sync::atomic::Ordering::Relaxed) {
                return slow.len();
            }
            slow.retain_mut(|s| std::io::Write::write_all(s, b" ").is_ok());
            std::thread::sleep(std::time::Duration::from_secs(1)); // the attack's pace
        }
        slow.len()
    });
    let mut g = Generator::new(7, Mix::Metadata);
    let (body, ids) = event_list(&mut g, 20);
    let (code, resp) = ep.post(&body);
    assert_eq!(code, 200, "{resp}");
    let want: HashSet<String> = ids.into_iter().collect();
    assert_eq!(wait_ids(&out, &want).len(), 20);
    wait_metrics(mport, "slow bodies refused", |m| {
        metric(
            m,
            "audit_forwarder_webhook_rejected_total",
            "reason=\"slow_body\"",
        ) > 0.0
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    dribble.join().unwrap();
}

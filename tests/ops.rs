//! Operability: metrics that add up, lag, probes, graceful shutdown, reload.

mod common;

use audit_forwarder::synth::Mix;
use common::*;
use std::io::Write;

const OUT: &str = "output=\"default\"";

fn m(text: &str, name: &str, labels: &str) -> f64 {
    metric(text, &format!("audit_forwarder_{name}"), labels)
}

#[test]
fn metrics_add_up_read_equals_acked_plus_dropped_by_reason() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 31, Mix::Metadata);
    api.write(500);
    {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"not json\n[1]\n{\"x\":\"\xff\"}\n").unwrap();
        f.write_all(format!("{{\"big\":\"{}\"}}\n", "x".repeat(20_000)).as_bytes())
            .unwrap();
    }
    api.write(100);
    let mut args = forward_args(&log, &d.path().join("state"), port);
    for s in [
        "http_listen=\"127.0.0.1:0\"",
        "output.policy=\"minimal\"",
        "tail.on_invalid=\"drop\"",
        "tail.max_line_bytes=10000",
    ] {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    let f = spawn_forward(&args);
    let hp = http_port(&f);
    let body = wait_metrics(hp, "604 lines accounted for", |t| {
        let read = m(t, "lines_read_total", OUT);
        let acked = m(t, "events_acked_total", OUT);
        let dropped: f64 = [
            "policy",
            "invalid_json",
            "not_an_object",
            "invalid_utf8",
            "oversize",
        ]
        .iter()
        .map(|r| m(t, "events_dropped_total", &format!("{OUT},reason=\"{r}\"")))
        .sum();
        read == 604.0 && acked + dropped == read
    });
    let dropped = |r: &str| {
        m(
            &body,
            "events_dropped_total",
            &format!("{OUT},reason=\"{r}\""),
        )
    };
    assert_eq!(dropped("invalid_json"), 1.0);
    assert_eq!(dropped("not_an_object"), 1.0);
    assert_eq!(dropped("invalid_utf8"), 1.0);
    assert_eq!(dropped("oversize"), 1.0);
    assert!(
        dropped("policy") > 300.0,
        "minimal drops most read-only events"
    );
    let acked = m(&body, "events_acked_total", OUT) as usize;
    assert_eq!(
        read_lines(&out).len(),
        acked,
        "the receiver has exactly the acked events"
    );
    assert_eq!(m(&body, "events_sent_total", OUT) as usize, acked);
    assert_eq!(m(&body, "buffered_bytes", OUT), 0.0);
    assert!(m(&body, "checkpoint_writes_total", OUT) >= 1.0);
    assert_eq!(
        m(
            &body,
            "invalid_lines_total",
            &format!("{OUT},reason=\"invalid_json\"")
        ),
        1.0
    );
    assert_eq!(http_get(hp, "/healthz").0, 200);
    assert_eq!(http_get(hp, "/readyz").0, 200);
    assert_eq!(http_get(hp, "/nope").0, 404);
}

#[test]
fn lag_rises_while_the_receiver_is_down_and_returns_to_zero() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (mut rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 32, Mix::Metadata);
    api.write(100);
    let mut args = forward_args(&log, &d.path().join("state"), port);
    args.extend(["--set".into(), "http_listen=\"127.0.0.1:0\"".into()]);
    args.extend(["--set".into(), "readiness_grace=\"1s\"".into()]);
    let f = spawn_forward(&args);
    let hp = http_port(&f);
    wait_metrics(hp, "lag 0 after 100 acked", |t| {
        m(t, "events_acked_total", OUT) == 100.0 && m(t, "lag_bytes", OUT) == 0.0
    });
    rx.kill9();
    api.write(200);
    let t = wait_metrics(hp, "lag > 0 while down", |t| {
        m(t, "lag_bytes", OUT) > 0.0 && m(t, "lag_seconds", OUT) > 0.0
    });
    assert_eq!(m(&t, "connected", OUT), 0.0);
    // Ready turns to not-ready once the grace period is over; alive all along.
    let deadline = std::time::Instant::now() + WAIT;
    while http_get(hp, "/readyz").0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never reported the dead destination"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(http_get(hp, "/healthz").0, 200);
    let (_rx2, _) = receiver_on(&format!("127.0.0.1:{port}"), &out, &[]);
    wait_metrics(hp, "lag back to 0", |t| {
        m(t, "lag_bytes", OUT) == 0.0
            && m(t, "lag_seconds", OUT) == 0.0
            && m(t, "events_acked_total", OUT) == 300.0
    });
    assert_eq!(http_get(hp, "/readyz").0, 200);
    assert_eq!(read_lines(&out).len(), 300);
}

/// Regression: after a restart `lag_bytes` ignored the checkpoint until the
/// first acknowledgement (the whole log looked unsent: a false alert).
/// The first scrape of the restarted forwarder, with nothing new to send,
/// reads 0.
#[test]
fn lag_is_taken_from_the_checkpoint_right_after_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let state = d.path().join("state");
    let mut api = ApiServerLog::new(&log, 34, Mix::Metadata);
    api.write(500);
    oneshot(&log, &state, port, &[]);
    let mut args = forward_args(&log, &state, port);
    args.extend(["--set".into(), "http_listen=\"127.0.0.1:0\"".into()]);
    let f = spawn_forward(&args);
    f.logged("resuming from checkpoint");
    let (_, body) = http_get(http_port(&f), "/metrics");
    assert_eq!(
        m(&body, "events_acked_total", OUT),
        0.0,
        "nothing new acked yet"
    );
    assert_eq!(m(&body, "lag_bytes", OUT), 0.0, "{body}");
    assert_eq!(m(&body, "lag_seconds", OUT), 0.0, "{body}");
}

/// Regression: `lag_seconds` stayed 0 while nothing was ever acknowledged,
/// so the suggested alert never fired for a receiver down from the start.
/// It is the age of the oldest unacknowledged event.
#[test]
fn lag_seconds_rises_when_nothing_was_ever_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 35, Mix::Metadata);
    api.write(100);
    let mut args = forward_args(&log, &d.path().join("state"), free_port());
    args.extend(["--set".into(), "http_listen=\"127.0.0.1:0\"".into()]);
    let f = spawn_forward(&args);
    let t = wait_metrics(http_port(&f), "lag while never acknowledged", |t| {
        m(t, "lag_seconds", OUT) > 0.0 && m(t, "lag_bytes", OUT) > 0.0
    });
    assert_eq!(m(&t, "events_acked_total", OUT), 0.0);
}

#[test]
fn sigterm_drains_acks_saves_the_checkpoint_and_exits_0() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let state = d.path().join("state");
    let mut api = ApiServerLog::new(&log, 33, Mix::Metadata);
    api.write(30_000);
    let args = forward_args(&log, &state, port);
    let mut f = spawn_forward(&args);
    wait_lines(&out, 2000);
    f.sigterm();
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    let got = read_lines(&out);
    assert!(got.len() < api.written.len(), "stopped before the end");
    let cp: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("checkpoint-default.json")).unwrap(),
    )
    .unwrap();
    let end_of_received: usize = api.written[..got.len()].iter().map(|l| l.len() + 1).sum();
    assert_eq!(
        cp["offset"].as_u64().unwrap() as usize,
        end_of_received,
        "checkpoint = end of the last acknowledged event"
    );
    let mut a = args.clone();
    a.push("--oneshot".into());
    let mut f = spawn_forward(&a);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert_eq!(
        read_lines(&out),
        api.written,
        "restart resumed with no loss and no duplicate"
    );
}

#[test]
fn reload_applies_a_new_policy_and_rejects_an_invalid_config() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let cfg = d.path().join("config.toml");
    // Written atomically, as Kubernetes updates a mounted ConfigMap.
    let put = |text: &str| {
        let tmp = d.path().join("config.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &cfg).unwrap();
    };
    let write_cfg = |policy: &str| {
        put(&format!(
            "state_dir = {:?}\nhttp_listen = \"127.0.0.1:0\"\n[tail]\npath = {:?}\npoll_interval = \"20ms\"\n[[outputs]]\npolicy = \"{policy}\"\nport = {port}\n",
            d.path().join("state").to_str().unwrap(),
            log.to_str().unwrap()
        ))
    };
    write_cfg("metadata");
    let mut api = ApiServerLog::new(&log, 34, Mix::Metadata);
    let f = Proc::spawn(&["forward", "--config", cfg.to_str().unwrap()], &[]);
    let hp = http_port(&f);
    api.write(200);
    wait_lines(&out, 200);

    // A new policy: picked up from the file change.
    write_cfg("minimal");
    f.wait_log("configuration reloaded");
    let before = api.written.len();
    api.write(300);
    let lines_b: Vec<String> = api.written[before..].to_vec();
    let want_b = {
        let p = audit_forwarder::filter::policy::Policy::load("minimal").unwrap();
        lines_b
            .iter()
            .filter(|l| {
                audit_forwarder::filter::apply::explain(&p, l.as_bytes())["level"] != "None"
            })
            .count()
    };
    let got = wait_lines(&out, 200 + want_b);
    assert_eq!(got.len(), 200 + want_b, "no duplicates after the reload");

    // An invalid config is rejected and the running one keeps working (SIGHUP too).
    put("[tail]\npaht = 1\n");
    f.wait_log("configuration reload rejected");
    unsafe_free_kill(f.child.id(), "HUP");
    wait_metrics(hp, "two rejected reloads", |t| {
        metric(
            t,
            "audit_forwarder_config_reloads_total",
            "result=\"invalid\"",
        ) >= 2.0
    });
    let before = api.written.len();
    api.write(100);
    let p = audit_forwarder::filter::policy::Policy::load("minimal").unwrap();
    let want_c = api.written[before..]
        .iter()
        .filter(|l| audit_forwarder::filter::apply::explain(&p, l.as_bytes())["level"] != "None")
        .count();
    assert_eq!(
        wait_lines(&out, 200 + want_b + want_c).len(),
        200 + want_b + want_c
    );
    // Chunks dropped by the reload left the buffer gauge: it returns to 0.
    wait_metrics(hp, "buffered_bytes back to 0", |t| {
        metric(t, "audit_forwarder_buffered_bytes", "output=\"default\"") == 0.0
    });
}

/// Logs a person and a log pipeline can read: no colour codes when stderr
/// is not a terminal; one INFO line when the output connects and when it
/// recovers (how long it was down, how many tries); the first failure after
/// a recovery logged at once (a rate limit hid it for 10 s); and a
/// connection the receiver closed when idle counted in `reconnects_total`.
#[test]
fn connection_logs_and_reconnect_counts() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 36, Mix::Metadata);
    api.write(50);
    let port = free_port();
    let mut args = forward_args(&log, &d.path().join("state"), port);
    args.extend(["--set".into(), "http_listen=\"127.0.0.1:0\"".into()]);
    let f = spawn_forward(&args);
    f.logged("forward connection failed");
    let (mut rx, _) = receiver_on(
        &format!("127.0.0.1:{port}"),
        &out,
        &["--set", "receive.idle_timeout=\"1s\""],
    );
    let up = f.logged("output connected again after failures");
    let v = json_value(&up);
    assert!(v["fields"]["tries"].as_u64().unwrap_or(0) >= 1, "{up}");
    assert!(v["fields"]["down_for_ms"].as_u64().is_some(), "{up}");
    wait_lines(&out, 50);
    // Idle for longer than the receiver's idle_timeout: it closes, the
    // output reconnects, and that is counted.
    wait_metrics(http_port(&f), "a reconnect after an idle closure", |t| {
        metric(
            t,
            "audit_forwarder_reconnects_total",
            "output=\"default\",reason=\"closed_by_server\"",
        ) >= 1.0
    });
    let after = f.log_copy.lock().unwrap().len();
    rx.kill9();
    api.write(10);
    let first = loop {
        let logs = f.log_copy.lock().unwrap().clone();
        if let Some(l) = logs[after..]
            .iter()
            .find(|l| l.contains("forward connection failed"))
        {
            break l.clone();
        }
        drop(logs);
        f.wait_log("forward connection failed");
    };
    assert_eq!(json_value(&first)["fields"]["suppressed"], 0, "{first}");
}

#[test]
fn text_logs_have_no_colour_codes_off_a_terminal() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    ApiServerLog::new(&log, 37, Mix::Metadata).write(5);
    let o = std::process::Command::new(BIN)
        .args(["--log-format", "text", "--log-level", "info"])
        .args(forward_args(&log, &d.path().join("state"), port))
        .arg("--oneshot")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("output connected"), "{err}");
    assert!(!err.contains('\x1b'), "ANSI escapes in piped logs:\n{err}");
}

//! WebAssembly filters through the real host: the example filters (built
//! from example-filters/ by scripts/test-all.sh), abuse guests, hot reload,
//! and the compile cache.

mod common;

use audit_forwarder::synth::Mix;
use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A built guest (`example-filters/target/wasm32-wasip2/release/<name>.wasm`).
fn guest(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("example-filters/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: build the guests with `cargo build --release --locked --target wasm32-wasip2 --manifest-path example-filters/Cargo.toml` (scripts/test-all.sh does)",
        p.display()
    );
    p
}

/// `forward --oneshot` over `log` into a fresh receiver, with `--set`
/// each of `sets` (state in `dir/state-<name>`); the exit must be 0;
/// returns what the receiver wrote.
fn forward_oneshot(log: &Path, dir: &Path, name: &str, sets: &[String]) -> Vec<Value> {
    let out = dir.join(format!("out-{name}.jsonl"));
    let (_rx, port) = receiver(&out, &[]);
    let extra: Vec<&str> = sets.iter().flat_map(|s| ["--set", s.as_str()]).collect();
    oneshot(log, &dir.join(format!("state-{name}")), port, &extra);
    json_values(&read_lines(&out))
}

/// `filter test` over `input`; returns the result lines.
fn filter_test(wasm: &[PathBuf], config: &[&str], input: &str) -> (i32, Vec<Value>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["--log-level", "info", "filter", "test"]);
    for w in wasm {
        cmd.arg("--wasm").arg(w);
    }
    for c in config {
        cmd.args(["--config", c]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let w = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(input.as_bytes());
    });
    let o = child.wait_with_output().unwrap();
    w.join().unwrap();
    let lines = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(json_value)
        .collect();
    (
        o.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn events(seed: u64, n: usize) -> Vec<String> {
    let mut g = audit_forwarder::synth::Generator::new(seed, Mix::Realistic);
    (0..n).map(|_| g.event()).collect()
}

fn is_system_read(e: &Value) -> bool {
    ["get", "list", "watch"].contains(&e["verb"].as_str().unwrap_or(""))
        && e["user"]["username"]
            .as_str()
            .unwrap_or("")
            .starts_with("system:")
}

#[test]
fn example_filters_through_the_host() {
    let evs = events(81, 400);
    let mut input = evs.join("\n");
    // A Secret with data in request and response, and a Secret list.
    let secret = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"secret-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/a/secrets","verb":"create","user":{"username":"alice"},"objectRef":{"resource":"secrets","namespace":"a","name":"s","apiVersion":"v1"},"requestObject":{"kind":"Secret","data":{"k":"c2VjcmV0"},"stringData":{"p":"x"}},"responseObject":{"kind":"Secret","data":{"k":"c2VjcmV0"}},"stageTimestamp":"2026-11-23T10:00:00.000000Z"}"#;
    let list = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"secret-2","stage":"ResponseComplete","requestURI":"/api/v1/secrets","verb":"list","user":{"username":"bob"},"objectRef":{"resource":"secrets","apiVersion":"v1"},"responseObject":{"kind":"SecretList","items":[{"metadata":{"name":"a"},"data":{"k":"eA=="}},{"metadata":{"name":"b"},"data":{"k":"eQ=="}}]},"stageTimestamp":"2026-11-23T10:00:00.000000Z"}"#;
    input.push('\n');
    input.push_str(secret);
    input.push('\n');
    input.push_str(list);
    input.push('\n');
    let originals: Vec<Value> = input.lines().map(json_value).collect();

    // add-cluster-id: every event gets the fields, nothing else changes.
    let (rc, out, err) = filter_test(
        &[guest("add_cluster_id")],
        &["cluster=shoot--prod--a", "extra={ landscape = \"eu1\" }"],
        &input,
    );
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.len(), originals.len());
    for (o, r) in originals.iter().zip(&out) {
        assert_eq!(r["result"], "changed");
        let mut e = r["event"].clone();
        assert_eq!(e["clusterID"], "shoot--prod--a");
        assert_eq!(e["landscape"], "eu1");
        let m = e.as_object_mut().unwrap();
        m.remove("clusterID");
        m.remove("landscape");
        assert_eq!(&e, o, "only the added fields may differ");
    }

    // drop-read-only: exactly the read-only requests of system users go.
    let (rc, out, err) = filter_test(&[guest("drop_read_only")], &[], &input);
    assert_eq!(rc, 0, "{err}");
    let mut dropped = 0;
    for (o, r) in originals.iter().zip(&out) {
        if is_system_read(o) {
            assert_eq!(r["result"], "drop", "{o}");
            dropped += 1;
        } else {
            assert_eq!(r["result"], "keep", "{o}");
            assert_eq!(&r["event"], o);
        }
    }
    assert!(dropped > 0 && dropped < originals.len(), "{dropped}");

    // redact: Secret data is gone, everything else is untouched.
    let (rc, out, err) = filter_test(&[guest("redact")], &[], &input);
    assert_eq!(rc, 0, "{err}");
    for (o, r) in originals.iter().zip(&out) {
        let e = &r["event"];
        if o["objectRef"]["resource"] == "secrets" {
            let text = e.to_string();
            assert!(
                !text.contains("\"data\"") && !text.contains("stringData"),
                "{text}"
            );
            assert_eq!(e["auditID"], o["auditID"]);
        } else {
            assert_eq!(r["result"], "keep");
            assert_eq!(e, o);
        }
    }
    let s2 = out.iter().find(|r| r["auditID"] == "secret-2").unwrap();
    assert_eq!(
        s2["event"]["responseObject"]["items"][1]["metadata"]["name"],
        "b"
    );

    // A chain: drop, then redact, then add the cluster ID.
    let (rc, out, err) = filter_test(
        &[
            guest("drop_read_only"),
            guest("redact"),
            guest("add_cluster_id"),
        ],
        &[],
        &input,
    );
    // add-cluster-id requires `cluster`: configure() fails, clearly.
    assert_ne!(rc, 0);
    assert!(
        err.contains("configure() rejected the config") && err.contains("cluster"),
        "{err}"
    );
    assert!(out.is_empty());
}

/// What a guest reads from the batch (text, spans, group ranges) is each
/// event's JSON and its fields, unescaped, also after an earlier filter
/// changed the event and for fields the event lacks.
#[test]
fn guests_read_every_field_from_the_batch() {
    let mut input: Vec<String> = events(84, 300);
    input.push(
        r#"{"kind":"Event","level":"Metadata","auditID":"esc-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/n%C3%A9/pods?x=\"y\"","verb":"get","user":{"username":"al\"ice\u00e9 \ud83d\ude00","groups":["g\\1","","ü"]},"objectRef":{"resource":"pods","namespace":"né","name":"p\n1","apiGroup":"","subresource":"log"}}"#
            .into(),
    );
    input.push(r#"{"kind":"Event","auditID":"bare-1"}"#.into());
    let originals: Vec<Value> = input.iter().map(|l| json_value(l)).collect();
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let expect = |o: &Value| {
        let r = &o["objectRef"];
        serde_json::json!({
            "auditID": s(&o["auditID"]),
            "verb": s(&o["verb"]),
            "username": s(&o["user"]["username"]),
            "groups": o["user"]["groups"].as_array().map_or(vec![], |g| g.iter().map(s).collect()),
            "namespace": s(&r["namespace"]),
            "resource": s(&r["resource"]),
            "subresource": s(&r["subresource"]),
            "name": s(&r["name"]),
            "apiGroup": s(&r["apiGroup"]),
            "stage": s(&o["stage"]),
            "level": s(&o["level"]),
            "requestURI": s(&o["requestURI"]),
        })
    };
    let text = input.join("\n") + "\n";
    let (rc, out, err) = filter_test(&[guest("probe")], &["mode=\"echo\""], &text);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.len(), originals.len());
    for (o, r) in originals.iter().zip(&out) {
        let mut seen = r["event"]["seen"].clone();
        assert_eq!(seen["json"], *o, "the json span is the event");
        seen.as_object_mut().unwrap().remove("json");
        assert_eq!(seen, expect(o), "{o}");
    }
    // After add-cluster-id, in the forwarder: the probe sees the changed
    // event, derived from its record.
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("audit.log");
    std::fs::write(&log, &text).unwrap();
    let got = forward_oneshot(
        &log,
        d.path(),
        "chain",
        &[format!(
            "output.filters=[{{ wasm = {:?}, config = {{ cluster = \"c-1\" }} }}, {{ wasm = {:?}, config = {{ mode = \"echo\" }} }}]",
            guest("add_cluster_id"),
            guest("probe")
        )],
    );
    assert_eq!(got.len(), originals.len());
    for (o, e) in originals.iter().zip(&got) {
        let mut want = o.clone();
        want["clusterID"] = "c-1".into();
        assert_eq!(e["seen"]["json"], want);
        assert_eq!(e["seen"]["username"], expect(o)["username"]);
        assert_eq!(e["clusterID"], "c-1");
    }
    // A filter that does not need the JSON, first in the chain: its fields
    // come straight from the encoded records (the transcoder's spans).
    let got = forward_oneshot(
        &log,
        d.path(),
        "no-json",
        &[format!(
            "output.filters=[{{ wasm = {:?}, config = {{ mode = \"echo\", json = false }} }}]",
            guest("probe")
        )],
    );
    assert_eq!(got.len(), originals.len());
    for (o, e) in originals.iter().zip(&got) {
        let mut seen = e["seen"].clone();
        assert_eq!(seen["json"], Value::Null, "no JSON asked for");
        seen.as_object_mut().unwrap().remove("json");
        assert_eq!(seen, expect(o), "{o}");
    }
}

/// The forwarder with policy + a filter chain, end to end.
#[test]
fn forwarder_with_policy_and_filter_chain() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 82, Mix::Realistic);
    api.write(1500);
    let got = forward_oneshot(
        &log,
        d.path(),
        "chain",
        &[
            "output.policy=\"recommended\"".into(),
            format!(
                "output.filters=[{{ wasm = {:?} }}, {{ wasm = {:?}, config = {{ cluster = \"shoot--a\" }} }}]",
                guest("drop_read_only"),
                guest("add_cluster_id")
            ),
        ],
    );
    // What `policy eval` says the recommended policy keeps, minus system reads.
    let written: Vec<Value> = api.written.iter().map(|l| json_value(l)).collect();
    let ids: HashSet<String> = got.iter().map(|e| e["auditID"].to_string()).collect();
    for e in &got {
        assert_eq!(e["clusterID"], "shoot--a");
        assert!(!is_system_read(e), "{e}");
    }
    let expect_dropped = written.iter().filter(|e| is_system_read(e)).count();
    assert!(expect_dropped > 0);
    assert!(!got.is_empty() && ids.len() == got.len());
    println!(
        "written {}, system reads {expect_dropped}, received {}",
        written.len(),
        got.len()
    );
}

/// Runs `probe` in `mode` with `on_error` over 150 events (oneshot).
fn abuse(
    mode: &str,
    on_error: &str,
    extra: &str,
) -> (i32, Vec<String>, ApiServerLog, Proc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("audit.log");
    let out = d.join("out.jsonl");
    let mut api = ApiServerLog::new(&log, 83, Mix::Metadata);
    api.write(150);
    let (rx, port) = receiver(&out, &[]);
    let mut a = forward_args(&log, &d.join("state"), port);
    a.extend([
        "--oneshot".into(),
        "--set".into(),
        format!(
            "output.filters=[{{ wasm = {:?}, config = {{ mode = {mode:?} }}, on_error = {on_error:?}{extra} }}]",
            guest("probe")
        ),
    ]);
    let mut f = spawn_forward(&a);
    let rc = f.wait_exit();
    drop(rx);
    (rc, read_lines(&out), api, f, dir)
}

#[test]
fn abusive_guests_are_contained_and_on_error_keep_loses_nothing() {
    for (mode, reason, needle) in [
        ("loop", "timeout", "did not return within"),
        ("alloc", "memory", "memory limit"),
        ("panic", "trap", "trapped"),
        ("wrong-count", "verdict_count", "verdicts for"),
        ("bad-json", "invalid_verdict", "not a JSON object"),
        (
            "bad-set",
            "invalid_verdict",
            "set-fields(1): the result has 1 field sets",
        ),
        ("bad-value", "invalid_verdict", "probe: invalid JSON value"),
    ] {
        let (rc, lines, api, f, _d) = abuse(mode, "keep", ", max_memory_bytes = 33554432");
        let logs = f.all_logs();
        assert_eq!(rc, 0, "{mode}: {logs}");
        assert!(
            logs.contains("filter failed") && logs.contains(needle) && logs.contains(reason),
            "{mode}: {logs}"
        );
        // Every event arrives, unchanged.
        assert_eq!(lines.len(), api.written.len(), "{mode}");
        for (w, l) in api.written.iter().zip(&lines) {
            assert_eq!(json_value(w), json_value(l), "{mode}");
        }
        println!(
            "{mode}: contained ({reason}), {} of {} events forwarded unchanged",
            lines.len(),
            api.written.len()
        );
    }
}

#[test]
fn on_error_drop_and_stop() {
    // drop: nothing forwarded, everything counted, the run completes.
    let (rc, lines, _api, f, _d) = abuse("panic", "drop", "");
    assert_eq!(rc, 0, "{}", f.all_logs());
    assert!(lines.is_empty());
    // stop: the forwarder exits non-zero and commits nothing; a fixed
    // filter then forwards every event.
    let (rc, lines, api, f, d) = abuse("wrong-count", "stop", "");
    let logs = f.all_logs();
    assert_ne!(rc, 0, "{logs}");
    assert!(logs.contains("stopping the output"), "{logs}");
    assert!(lines.is_empty());
    let d = d.path();
    let out = d.join("out2.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let mut a = forward_args(&api.path, &d.join("state"), port);
    a.extend([
        "--oneshot".into(),
        "--set".into(),
        format!(
            "output.filters=[{{ wasm = {:?}, on_error = \"stop\" }}]",
            guest("probe")
        ),
    ]);
    let mut f = spawn_forward(&a);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    let got = read_lines(&out);
    assert_eq!(got.len(), api.written.len());
    assert!(got.iter().all(|l| json_value(l)["probe"] == "tag"));
}

#[test]
fn trap_then_fresh_instance_and_guest_stdout_in_the_log() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("audit.log");
    let out = d.path().join("out.jsonl");
    // One event of user panic-me among ordinary ones.
    let mut lines: Vec<String> = events(84, 200);
    let mut odd: Value = json_value(&lines[10]);
    odd["user"]["username"] = "panic-me".into();
    lines[10] = odd.to_string();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let (_rx, port) = receiver(&out, &[]);
    for (mode, expect) in [
        ("panic-on-user", "trapped"),
        ("print", "hello from the probe on stdout"),
    ] {
        let mut a = forward_args(&log, &d.path().join(format!("state-{mode}")), port);
        a.extend([
            "--oneshot".into(),
            "--set".into(),
            "http_listen=\"127.0.0.1:0\"".into(),
            "--set".into(),
            "output.filter_batch_events=16".into(),
            "--set".into(),
            format!(
                "output.filters=[{{ wasm = {:?}, config = {{ mode = {mode:?} }} }}]",
                guest("probe")
            ),
        ]);
        let mut f = spawn_forward(&a);
        f.wait_log(expect);
        assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
        if mode == "panic-on-user" {
            // One batch trapped; the following batches ran on a fresh instance.
            let traps = f.all_logs().matches("trapped").count();
            assert_eq!(traps, 1, "{}", f.all_logs());
        } else {
            assert!(f.all_logs().contains("hello from the probe on stderr"));
        }
    }
    assert_eq!(read_lines(&out).len(), 400);
}

#[test]
fn incompatible_guests_are_rejected_clearly() {
    for (wasm, config, needle) in [
        ("extra_import", "", "test:extra-import/net"),
        ("wit_v1", "", "audit-forwarder:filter@1.0.0"),
        (
            "wit_0_1",
            "",
            "built against audit-forwarder:filter@0.1.0; this audit-forwarder implements audit-forwarder:filter@0.2.0 (rebuild",
        ),
        (
            "probe",
            "mode = \"configure-error\"",
            "refuses its configuration",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("audit.log");
        std::fs::write(&log, "").unwrap();
        let mut a = forward_args(&log, &d.path().join("state"), free_port());
        a.extend([
            "--oneshot".into(),
            "--set".into(),
            format!(
                "output.filters=[{{ wasm = {:?}, config = {{ {config} }} }}]",
                guest(wasm)
            ),
        ]);
        let mut f = spawn_forward(&a);
        let rc = f.wait_exit();
        let logs = f.all_logs();
        assert_ne!(rc, 0, "{wasm}: {logs}");
        assert!(logs.contains(needle), "{wasm}: {logs}");
        println!(
            "{wasm}: {}",
            logs.lines().find(|l| l.contains(needle)).unwrap_or("")
        );
    }
    // Not a component at all.
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm garbage").unwrap();
    let (rc, _, err) = filter_test(&[bad], &[], "{}\n");
    assert_ne!(rc, 0);
    assert!(err.contains("not a valid WebAssembly component"), "{err}");
}

#[test]
fn hot_reload_while_events_flow() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("audit.log");
    let out = d.path().join("out.jsonl");
    let wasm = d.path().join("filter.wasm");
    let replace = |from: &Path| {
        let tmp = d.path().join("filter.wasm.new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, &wasm).unwrap();
    };
    replace(&guest("add_cluster_id"));
    let mut api = ApiServerLog::new(&log, 85, Mix::Metadata);
    let (_rx, port) = receiver(&out, &[]);
    let mut a = forward_args(&log, &d.path().join("state"), port);
    a.extend([
        "--set".into(),
        format!(
            "output.filters=[{{ wasm = {:?}, config = {{ cluster = \"c1\" }} }}]",
            wasm
        ),
    ]);
    let f = spawn_forward(&a);
    api.write(100);
    wait_lines(&out, 100);
    // A new version: the probe (it ignores `cluster`).
    replace(&guest("probe"));
    f.wait_log("filter reloaded");
    api.write(100);
    wait_lines(&out, 200);
    // A broken version is rejected; the probe keeps running.
    let tmp = d.path().join("filter.wasm.new");
    std::fs::write(&tmp, b"not wasm").unwrap();
    std::fs::rename(&tmp, &wasm).unwrap();
    f.wait_log("new filter version rejected");
    api.write(100);
    let lines = json_values(&wait_lines(&out, 300));
    assert_eq!(lines.len(), 300);
    for (i, e) in lines.iter().enumerate() {
        let want = &json_value(&api.written[i]);
        assert_eq!(e["auditID"], want["auditID"], "order and completeness");
        if i < 100 {
            assert_eq!(e["clusterID"], "c1", "{i}");
            assert!(e.get("probe").is_none());
        } else {
            assert_eq!(e["probe"], "tag", "{i}");
            assert!(e.get("clusterID").is_none());
        }
    }
}

/// The first start compiles in a child process (the forwarder does not keep
/// the compiler's memory) into the cache; the second loads the cache.
#[test]
fn compiled_components_are_cached() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("audit.log");
    std::fs::write(&log, "").unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let mut cached = Vec::new();
    for _ in 0..2 {
        let mut a = forward_args(&log, &d.path().join("state"), port);
        a.extend([
            "--oneshot".into(),
            "--set".into(),
            format!(
                "output.filters=[{{ wasm = {:?}, config = {{ cluster = \"c\" }} }}]",
                guest("add_cluster_id")
            ),
        ]);
        let mut f = spawn_forward(&a);
        let l = json_value(&f.wait_log("filter component loaded"));
        cached.push(l["fields"]["compiled"].clone());
        assert_eq!(f.wait_exit(), 0);
    }
    assert_eq!(cached, vec![Value::from("child"), Value::from("cache")]);
    let files: Vec<_> = std::fs::read_dir(d.path().join("state/wasm-cache"))
        .unwrap()
        .collect();
    assert_eq!(files.len(), 1);
}

#[test]
fn add_cluster_id_in_python() {
    other_language("python");
}

#[test]
fn add_cluster_id_in_javascript() {
    other_language("js");
}

/// The same add-cluster-id written in Python (componentize-py) or
/// JavaScript (componentize-js), built by scripts/test-all.sh.
fn other_language(lang: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-filters");
    let evs = events(86, 200);
    let input = evs.join("\n") + "\n";
    {
        let wasm = root.join(lang).join("add-cluster-id/add-cluster-id.wasm");
        assert!(
            wasm.is_file(),
            "{} is missing: scripts/test-all.sh builds it",
            wasm.display()
        );
        let (rc, out, err) = filter_test(
            &[wasm],
            &["cluster=shoot--a", "extra={ landscape = \"eu1\" }"],
            &input,
        );
        assert_eq!(rc, 0, "{lang}: {err}");
        assert_eq!(out.len(), evs.len(), "{lang}");
        for (r, e) in out.iter().zip(&evs) {
            let mut ev = r["event"].clone();
            assert_eq!(ev["clusterID"], "shoot--a", "{lang}");
            assert_eq!(ev["landscape"], "eu1", "{lang}");
            let m = ev.as_object_mut().unwrap();
            m.remove("clusterID");
            m.remove("landscape");
            assert_eq!(ev, json_value(e), "{lang}");
        }
        // Refusing a bad config works the same way.
        let (rc, _, err) = filter_test(
            &[root.join(lang).join("add-cluster-id/add-cluster-id.wasm")],
            &["colour=blue"],
            "{}\n",
        );
        assert_ne!(rc, 0);
        assert!(
            err.contains("configure() rejected the config"),
            "{lang}: {err}"
        );
    }
}

/// `check` loads every filter: a filter that refuses its config fails it.
#[test]
fn check_loads_filters() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("c.toml");
    let run = |config: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[[outputs]]\n[[outputs.filters]]\nwasm = {:?}\nconfig = {{ {config} }}\n",
                guest("add_cluster_id")
            ),
        )
        .unwrap();
        let o = Command::new(BIN)
            .args(["check", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, out) = run("cluster = \"a\"");
    assert!(ok, "{out}");
    let (ok, out) = run("clusterr = \"a\"");
    assert!(!ok);
    assert!(
        out.contains("`cluster` (a non-empty string) is required"),
        "{out}"
    );
    let (ok, out) = run("cluster = \"a\", colour = 1");
    assert!(!ok);
    assert!(out.contains("unknown key `colour`"), "{out}");
}

/// A configuration reload applies a new filter config; one whose filter
/// refuses its config is rejected and the running filter keeps working.
#[test]
fn config_reload_checks_filters() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let cfg = d.path().join("config.toml");
    let put = |config: &str| {
        let tmp = d.path().join("config.toml.tmp");
        std::fs::write(
            &tmp,
            format!(
                "state_dir = {:?}\n[tail]\npath = {:?}\npoll_interval = \"20ms\"\n[[outputs]]\nport = {port}\n[[outputs.filters]]\nwasm = {:?}\nconfig = {{ {config} }}\n",
                d.path().join("state"),
                log,
                guest("add_cluster_id")
            ),
        )
        .unwrap();
        std::fs::rename(&tmp, &cfg).unwrap();
    };
    put("cluster = \"c1\"");
    let mut api = ApiServerLog::new(&log, 87, Mix::Metadata);
    let f = Proc::spawn(&["forward", "--config", cfg.to_str().unwrap()], &[]);
    api.write(50);
    wait_lines(&out, 50);
    put("cluster = \"c2\"");
    f.wait_log("configuration reloaded");
    api.write(50);
    wait_lines(&out, 100);
    put("cluster = \"\"");
    f.wait_log("configuration reload rejected");
    api.write(50);
    let got = json_values(&wait_lines(&out, 150));
    let ids: HashSet<String> = got.iter().map(|e| e["auditID"].to_string()).collect();
    assert_eq!(ids.len(), 150, "nothing lost or duplicated");
    assert!(got[..50].iter().all(|e| e["clusterID"] == "c1"));
    assert!(got[50..].iter().all(|e| e["clusterID"] == "c2"));
}

/// Items are built without the JSON text while no filter reads it; a
/// filter that does (here after a hot reload swapped one in) gets it
/// derived from the record. The probe panics on an empty `json` span, so
/// without the derivation the event would fall back to `keep` untagged.
#[test]
fn a_filter_that_needs_json_gets_it_from_items_built_without() {
    use audit_forwarder::filter::chain::Chain;
    use audit_forwarder::filter::item::{Pool, Positions};
    use audit_forwarder::filter::on_error::OnError;
    use audit_forwarder::filter::wasm::Spec;
    use audit_forwarder::record::encode::Transcoder;
    use audit_forwarder::record::json::record_json;
    let spec = Spec {
        name: "probe".into(),
        path: guest("probe"),
        config: "{}".into(),
        timeout: std::time::Duration::from_secs(10),
        max_memory: 64 << 20,
        cache_dir: None,
    };
    let mut chain = Chain::load(vec![(spec, OnError::Keep)], Default::default()).unwrap();
    assert!(chain.needs_json());
    let line = br#"{"kind":"Event","auditID":"a-1","verb":"get","user":{"username":"u"}}"#;
    let mut tc = Transcoder::default();
    let mut pool = Pool::default();
    let mut rec = Vec::new();
    let f = tc.encode(line, &mut rec).unwrap();
    let mut items = vec![pool.item(
        &mut rec,
        None,
        &f,
        Positions::Unknown,
        Some(&tc.spans),
        None,
    )];
    chain.run(&mut items).unwrap();
    let out: Value = serde_json::from_str(&record_json(&items[0].rec).unwrap()).unwrap();
    assert_eq!(out["probe"], "tag", "{out}");
    assert_eq!(out["auditID"], "a-1");
}

/// `filter test` gives each filter its own config (`--config N:KEY=VALUE`)
/// and shows each filter's decision; `--config FILE --output NAME` runs
/// exactly that output's policy and chain, each filter with the config the
/// file gives it.
#[test]
fn filter_test_runs_an_outputs_chain_with_each_filters_config() {
    let add = guest("add_cluster_id");
    let drop = guest("drop_read_only");
    let input = events(85, 40).join("\n") + "\n";
    let (rc, out, err) = filter_test(
        &[add.clone(), add.clone()],
        &["cluster=\"a\"", "2:cluster=\"b\"", "2:field=\"second\""],
        &input,
    );
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.len(), 40);
    for v in &out {
        assert_eq!(v["event"]["clusterID"], "a", "{v}");
        assert_eq!(v["event"]["second"], "b", "{v}");
        let fs: Vec<&str> = v["filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["result"].as_str().unwrap())
            .collect();
        assert_eq!(fs, ["changed", "changed"], "{v}");
    }
    let (rc, _, err) = filter_test(std::slice::from_ref(&add), &["3:cluster=\"x\""], &input);
    assert_ne!(rc, 0);
    assert!(err.contains("no --wasm number 3"), "{err}");

    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("forwarder.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[[outputs]]
name = "owner"
policy = "minimal"
filters = [
  {{ wasm = {drop:?}, name = "drop-reads" }},
  {{ wasm = {add:?}, name = "tag", config = {{ cluster = "shoot--x" }} }},
]
"#
        ),
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["filter", "test", "--config"])
        .arg(&cfg)
        .args(["--output", "owner"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(input.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(json_value)
        .collect();
    assert_eq!(out.len(), 40);
    let mut kept = 0;
    for v in &out {
        match v["policy"].as_str() {
            Some("drop") | Some("drop (omitted stage)") => {
                assert_eq!(v["result"], "drop", "{v}");
                assert!(v["filters"].as_array().unwrap().is_empty(), "{v}");
            }
            Some(_) => {
                let names: Vec<&str> = v["filters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["filter"].as_str().unwrap())
                    .collect();
                assert_eq!(names.first(), Some(&"drop-reads"), "{v}");
                if v["result"] != "drop" {
                    kept += 1;
                    assert_eq!(names, ["drop-reads", "tag"], "{v}");
                    assert_eq!(v["event"]["clusterID"], "shoot--x", "{v}");
                }
            }
            None => panic!("no policy decision with --output: {v}"),
        }
    }
    assert!(
        kept > 0,
        "the minimal policy keeps some of 40 realistic events"
    );
}

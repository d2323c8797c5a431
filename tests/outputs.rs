//! Several outputs with their own policies from one audit log.

mod common;

use audit_forwarder::filter::apply::{Outcome, apply};
use audit_forwarder::filter::policy::Policy;
use audit_forwarder::record::encode::Transcoder;
use audit_forwarder::record::json::write_value;
use audit_forwarder::record::reader::MsgReader;
use audit_forwarder::synth::Mix;
use common::*;

/// What an output with `policy` must deliver for `lines`, as JSON lines.
fn expected(policy: &str, lines: &[String]) -> Vec<String> {
    let p = Policy::load(policy).unwrap();
    let mut t = Transcoder::default();
    let mut out = Vec::new();
    for l in lines {
        let mut rec = Vec::new();
        let f = t.encode(l.as_bytes(), &mut rec).unwrap();
        let mut rw = Vec::new();
        let room = audit_forwarder::record::buf::fresh_capacity;
        let bytes = match apply(&p, &f, &t.top, &rec, &mut rw, &mut Vec::new(), room) {
            Outcome::Drop => continue,
            Outcome::Keep => rec,
            Outcome::Rewritten => rw,
        };
        let mut j = Vec::new();
        write_value(&mut MsgReader::new(&bytes), &mut j).unwrap();
        out.push(String::from_utf8(j).unwrap());
    }
    out
}

#[test]
fn two_outputs_get_their_own_slices_and_a_dead_one_does_not_stall_the_other() {
    let d = tempfile::tempdir().unwrap();
    let out_a = d.path().join("owner.jsonl");
    let out_b = d.path().join("security.jsonl");
    let (mut rx_a, port_a) = receiver(&out_a, &[]);
    let (_rx_b, port_b) = receiver(&out_b, &[]);
    let log = d.path().join("audit.log");
    let cfg = d.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
state_dir = "{state}"
[tail]
path = "{log}"
poll_interval = "20ms"
[[outputs]]
name = "owner"
policy = "minimal"
port = {port_a}
retry_min = "20ms"
retry_max = "100ms"
[[outputs]]
name = "security"
policy = "metadata"
port = {port_b}
"#,
            state = d.path().join("state").display(),
            log = log.display()
        ),
    )
    .unwrap();
    let mut api = ApiServerLog::new(&log, 21, Mix::Realistic);
    let f = Proc::spawn(&["forward", "--config", cfg.to_str().unwrap()], &[]);
    api.write(1500);
    let want_a = expected("minimal", &api.written);
    let want_b = expected("metadata", &api.written);
    assert!(
        want_a.len() < api.written.len() / 2,
        "minimal keeps a small slice ({})",
        want_a.len()
    );
    assert_eq!(want_b.len(), api.written.len());
    assert_eq!(wait_lines(&out_a, want_a.len()), want_a);
    assert_eq!(wait_lines(&out_b, want_b.len()), want_b);

    // The owner's receiver dies; the security output keeps flowing.
    rx_a.kill9();
    api.write(1500);
    let want_b = expected("metadata", &api.written);
    assert_eq!(wait_lines(&out_b, want_b.len()), want_b);

    // The owner's receiver comes back on its port: nothing was lost for it.
    let (_rx_a2, _) = receiver_on(&format!("127.0.0.1:{port_a}"), &out_a, &[]);
    let want_a = expected("minimal", &api.written);
    let got_a = wait_lines(&out_a, want_a.len());
    assert_eq!(got_a, want_a);
    drop(f);
}

#[test]
fn stdout_and_file_destinations_write_json_lines() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("audit.log");
    let file = d.path().join("copy.jsonl");
    let mut api = ApiServerLog::new(&log, 22, Mix::Metadata);
    api.write(200);
    let mut f = Proc::spawn(
        &[
            "forward",
            "--oneshot",
            "--path",
            log.to_str().unwrap(),
            "--state-dir",
            d.path().join("s").to_str().unwrap(),
            "--set",
            "output.type=\"file\"",
            "--set",
            &format!("output.path={:?}", file.to_str().unwrap()),
        ],
        &[],
    );
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert_eq!(read_lines(&file), api.written);
}

#[test]
fn policy_eval_prints_a_decision_per_event() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("events.jsonl");
    let mut api = ApiServerLog::new(&log, 23, Mix::Metadata);
    api.write(50);
    let o = std::process::Command::new(BIN)
        .args([
            "policy",
            "eval",
            "--policy",
            "minimal",
            log.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 50);
    for (l, w) in lines.iter().zip(&api.written) {
        assert_eq!(l["auditID"].as_str().unwrap(), audit_id(w));
        let action = l["action"].as_str().unwrap();
        assert!(
            ["keep", "drop", "lower level", "drop (omitted stage)"].contains(&action),
            "{l}"
        );
    }
    let o = std::process::Command::new(BIN)
        .args(["policy", "eval", "--policy", "no-such-file.yaml"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no-such-file.yaml"));
}

#[test]
fn check_reports_every_problem() {
    let d = tempfile::tempdir().unwrap();
    let bad_policy = d.path().join("p.yaml");
    std::fs::write(
        &bad_policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Loud\n",
    )
    .unwrap();
    let cases: Vec<(String, &str)> = vec![
        ("[tail]\npaht = \"/x\"\n".into(), "paht"),
        ("[[outputs]]\nname = \"a b\"\n".into(), "outputs[0].name"),
        ("[[outputs]]\ntype = \"file\"\n".into(), "outputs[0].path"),
        (
            "[[outputs]]\npolicy = \"nosuchpreset\"\n".into(),
            "nosuchpreset",
        ),
        (
            format!(
                "[[outputs]]\npolicy_file = {:?}\n",
                bad_policy.to_str().unwrap()
            ),
            "rules[0].level",
        ),
        (
            "[[outputs]]\nack_timeout = \"soon\"\n".into(),
            "ack_timeout",
        ),
        // S3 and syslog sections, each problem named by its key.
        ("[[outputs]]\ntype = \"s3\"\n".into(), "outputs[0].s3: required"),
        (
            "[[outputs]]\ntype = \"s3\"\n[outputs.s3]\nbucket = \"b\"\nkey = \"audit/{yyyy}.gz\"\n".into(),
            "outputs[0].s3.key: \"audit/{yyyy}.gz\": must contain {id}",
        ),
        (
            "[[outputs]]\ntype = \"s3\"\n[outputs.s3]\nbucket = \"b\"\nkey = \"{cluster}/{id}\"\n".into(),
            "unknown placeholder {cluster}",
        ),
        (
            "[[outputs]]\ntype = \"s3\"\n[outputs.s3]\nbucket = \"b\"\npart_bytes = 1000\n".into(),
            "outputs[0].s3.part_bytes",
        ),
        (
            "[[outputs]]\ntype = \"s3\"\n[outputs.s3]\nbucket = \"b\"\ncredentials_file = \"/no/such/creds\"\n".into(),
            "outputs[0].s3.credentials_file: /no/such/creds",
        ),
        (
            "[[outputs]]\ntype = \"s3\"\n[outputs.s3]\nbucket = \"b\"\nca_file = \"/no/such/ca\"\n".into(),
            "s3.ca_file /no/such/ca",
        ),
        (
            "[[outputs]]\ntype = \"s3\"\n[outputs.s3]\nbukket = \"b\"\n".into(),
            "bukket",
        ),
        (
            "[[outputs]]\ntype = \"forward\"\n[outputs.s3]\nbucket = \"b\"\n".into(),
            "outputs[0].s3: only with type = \"s3\"",
        ),
        (
            "[[outputs]]\ntype = \"syslog\"\n[outputs.syslog]\nfacility = \"local9\"\n".into(),
            "outputs[0].syslog.facility",
        ),
        (
            "[[outputs]]\ntype = \"syslog\"\n[outputs.syslog]\napp_name = \"kube apiserver\"\n".into(),
            "outputs[0].syslog.app_name",
        ),
        (
            "[[outputs]]\ntype = \"syslog\"\n[outputs.syslog]\nprotocol = \"udp\"\n".into(),
            "unknown value \"udp\" (one of: tcp, relp)",
        ),
    ];
    for (text, needle) in cases {
        let p = d.path().join("c.toml");
        std::fs::write(&p, &text).unwrap();
        let o = std::process::Command::new(BIN)
            .args(["check", "--config", p.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(needle), "{text}: expected {needle:?} in {err}");
    }
    for ok in [
        "[[outputs]]\npolicy = \"recommended\"\n",
        "[[outputs]]\ntype = \"s3\"\n[outputs.s3]\nbucket = \"b\"\nkey_vars = { cluster = \"shoot--a\" }\nkey = \"audit/{cluster}/{yyyy}/{id}.jsonl.gz\"\n",
        "[[outputs]]\ntype = \"syslog\"\nport = 2514\n[outputs.syslog]\nfacility = \"authpriv\"\n",
    ] {
        let p = d.path().join("ok.toml");
        std::fs::write(&p, ok).unwrap();
        let o = std::process::Command::new(BIN)
            .args(["check", "--config", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{ok}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn env_vars_override_the_file_and_flags_override_env() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.toml");
    std::fs::write(&p, "[tail]\npath = \"/from/file\"\n").unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = std::process::Command::new(BIN);
        c.args(["check", "--config", p.to_str().unwrap()])
            .args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        String::from_utf8(c.output().unwrap().stdout).unwrap()
    };
    assert!(run(&[], &[]).contains("/from/file"));
    assert!(run(&[("AUDIT_TAIL__PATH", "/from/env")], &[]).contains("/from/env"));
    assert!(
        run(
            &[("AUDIT_TAIL__PATH", "/from/env")],
            &["--set", "tail.path=\"/from/flag\""]
        )
        .contains("/from/flag")
    );
}

/// `generate completions SHELL` and `generate man`, from the clap
/// definitions: a bash script bash accepts, naming every subcommand, and a
/// roff man page.
#[test]
fn completions_and_man_page_are_generated() {
    let run = |args: &[&str]| {
        let o = std::process::Command::new(BIN).args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let bash = run(&["generate", "completions", "bash"]);
    for sub in [
        "forward", "receive", "check", "policy", "filter", "demo", "generate",
    ] {
        assert!(
            bash.contains(sub),
            "{sub} missing from the bash completions"
        );
    }
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("audit-forwarder.bash");
    std::fs::write(&script, &bash).unwrap();
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(syntax.success(), "bash -n rejected the completion script");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(
            !run(&["generate", "completions", shell]).is_empty(),
            "{shell}"
        );
    }
    let man = run(&["generate", "man"]);
    assert!(man.contains(".TH audit-forwarder 1"), "{man:.200}");
    assert!(man.contains("receive"), "{man:.400}");
}

/// `check` prints every problem at once, each once, as `FILE:LINE: key:
/// problem`, in TOML terms, with a did-you-mean for keys, values and
/// presets; `[receive]` is validated too.
#[test]
fn check_prints_every_problem_with_its_line() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.toml");
    std::fs::write(
        &p,
        "log_level = \"info\"\n\n[tail]\npaht = \"/var/log/audit/audit.log\"\n\n[receive]\nlisten = \"0.0.0.0:99999\"\n\n[[outputs]]\nname = \"owner\"\npolicy = \"minmal\"\nport = \"24224\"\ntype = \"stdot\"\n",
    )
    .unwrap();
    let o = std::process::Command::new(BIN)
        .args(["check", "--config", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    let f = p.display().to_string();
    let want = [
        format!("{f}:4: tail.paht: unknown key `paht`; did you mean `path`?"),
        format!(
            "{f}:7: receive.listen: \"0.0.0.0:99999\" has no port from 0 to 65535 after the last ':'"
        ),
        format!(
            "{f}:11: outputs[0].policy: \"minmal\" is neither a preset nor a file; did you mean the preset \"minimal\"?"
        ),
        format!(
            "{f}:12: outputs[0].port: invalid type: the string \"24224\", expected an integer from 0 to 65535"
        ),
        format!("{f}:13: outputs[0].type: unknown value \"stdot\"; did you mean \"stdout\"?"),
        "configuration invalid: 5 problems".to_string(),
    ];
    let got: Vec<&str> = err.lines().collect();
    assert_eq!(got, want, "{err}");
    for l in &got {
        assert!(
            !l.contains("u16") && !l.contains("usize"),
            "Rust type names: {l}"
        );
    }
}

/// Every sample configuration shipped in the repository is free of key and
/// type mistakes (kind/validate.sh runs the full `check` on each of them,
/// with stand-ins for the certificates and filters they name).
#[test]
fn every_sample_config_passes_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    let mut stack = vec![root.join("kind")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                let text = std::fs::read_to_string(&p).unwrap();
                let problems = audit_forwarder::cmd::check::lint_text(&text);
                assert!(problems.is_empty(), "{}: {problems:?}", p.display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 6, "found {seen} sample configs");
}

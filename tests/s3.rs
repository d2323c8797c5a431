//! `type = "s3"` against a real S3 implementation: moto 5.2.5 in server
//! mode (PyPI; `tests/s3/moto_faulty.py` runs moto's own app unchanged,
//! plus a loopback control endpoint that makes it answer 5xx for a while).
//! The objects are listed, fetched and decompressed by boto3
//! (`tests/s3/dump.py`), a client independent of ours.
//! `scripts/test-all.sh` installs `tests/s3/requirements.txt`.

mod common;

use audit_forwarder::synth::Mix;
use common::sinks::*;
use common::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A configuration file: the tail of `log`, one S3 output with `extra`
/// lines in `[outputs.s3]` and `out_extra` in `[[outputs]]`.
fn config(dir: &Path, log: &Path, moto: &Moto, out_extra: &str, extra: &str) -> String {
    let key = if extra.contains("key = ") {
        ""
    } else {
        r#"key = "audit/{cluster}/{yyyy}/{mm}/{dd}/{hh}/{id}.jsonl.gz""#
    };
    let outputs = format!(
        r#"[[outputs]]
name = "archive"
type = "s3"
retry_min = "20ms"
retry_max = "300ms"
{out_extra}
[outputs.s3]
bucket = "{BUCKET}"
endpoint = "{endpoint}"
path_style = true
key_vars = {{ cluster = "shoot--ci--a" }}
{key}
{extra}
"#,
        endpoint = moto.endpoint(),
    );
    forwarder_config(dir, log, &outputs)
}

const CREDS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];

fn forward(cfg: &str, oneshot: bool) -> Proc {
    let mut args = vec!["forward", "--config", cfg];
    if oneshot {
        args.push("--oneshot");
    }
    Proc::spawn(&args, &CREDS)
}

/// Each ID's count over all objects.
fn counts(objs: &[Obj]) -> HashMap<&str, usize> {
    let mut c = HashMap::new();
    for o in objs {
        for id in &o.ids {
            *c.entry(id.as_str()).or_default() += 1;
        }
    }
    c
}

/// 12,000 events in 4 files (3 rotations), the forwarder SIGKILLed 6 times
/// while it uploads, then run to completion: every event is stored; the
/// events stored twice are counted and lie where two objects' key spans
/// overlap (a reader can tell them from the keys alone), and they are
/// bounded by what was confirmed after the last checkpoint write.
#[test]
fn rotation_and_kill9_lose_nothing_and_duplicates_are_bounded_and_visible_in_keys() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let logp = dir.path().join("audit.log");
    let mut log = ApiServerLog::new(&logp, 27, Mix::Metadata);
    // Small objects (many uploads, many chances to be killed mid-way).
    let cfg = config(
        dir.path(),
        &logp,
        &moto,
        "max_batch_events = 100\ncheckpoint_interval = \"50ms\"",
        "max_object_bytes = 200000\nmax_object_age = \"200ms\"",
    );
    let kills = 6;
    let mut uploaded = 0.0;
    for round in 0..kills {
        log.write(2000);
        if round % 2 == 1 {
            log.rotate();
        }
        let mut f = forward(&cfg, false);
        let port = http_port(&f);
        let body = wait_metrics(port, "a new object", |b| {
            metric(
                b,
                "audit_forwarder_objects_uploaded_total",
                "output=\"archive\"",
            ) >= 1.0
        });
        uploaded += metric(
            &body,
            "audit_forwarder_objects_uploaded_total",
            "output=\"archive\"",
        );
        f.kill9();
    }
    let mut f = forward(&cfg, true);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    let objs = moto.objects();
    let c = counts(&objs);
    let missing = log
        .written
        .iter()
        .filter(|l| !c.contains_key(audit_id(l).as_str()))
        .count();
    let dup_events: usize = c.values().map(|n| n - 1).sum();
    let max_obj = objs.iter().map(|o| o.ids.len()).max().unwrap();
    eprintln!(
        "S3 kill -9: {} written, {} objects, {} distinct, {} missing, {} stored twice ({kills} kills, {uploaded} objects seen before the kills, largest object {max_obj} events)",
        log.written.len(),
        objs.len(),
        c.len(),
        missing,
        dup_events
    );
    assert_eq!(missing, 0);
    assert_eq!(c.len(), log.written.len());
    // Bounded: per kill, at most what the objects confirmed after the
    // last checkpoint write held (a few objects at most here).
    assert!(
        dup_events <= kills * 3 * max_obj,
        "{dup_events} duplicates for {kills} kills"
    );
    // Visible: every duplicated event is in objects of one source whose
    // key spans overlap.
    let mut by_id: HashMap<&str, Vec<(String, u64, u64)>> = HashMap::new();
    for o in &objs {
        assert_eq!(o.encoding, "gzip");
        assert!(o.key.starts_with("audit/shoot--ci--a/"), "{}", o.key);
        for id in &o.ids {
            by_id.entry(id.as_str()).or_default().push(o.span());
        }
    }
    for (id, spans) in by_id.iter().filter(|(_, s)| s.len() > 1) {
        let (a, b) = (&spans[0], &spans[1]);
        assert!(
            a.0 == b.0 && a.1 < b.2 && b.1 < a.2,
            "{id} is stored twice in objects whose spans do not overlap: {spans:?}"
        );
    }
    // Each file's events went to objects named after that file.
    let mut per_source: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for o in &objs {
        let (s, a, b) = o.span();
        per_source.entry(s).or_default().push((a, b));
    }
    // Three files hold events (the live file is empty after the last
    // rotation).
    assert_eq!(per_source.len(), 3, "{:?}", per_source.keys());
}

/// A store that answers 503, then 500, for a while: uploads are retried
/// with backoff, the checkpoint waits, and every event is stored once.
/// Then a multipart upload (3 parts of 5 MiB, uncompressed) whose part
/// uploads fail twice: the upload is aborted and redone, nothing is lost
/// or stored twice.
#[test]
fn a_store_answering_5xx_for_a_while_loses_nothing_single_and_multipart() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let logp = dir.path().join("audit.log");
    let mut log = ApiServerLog::new(&logp, 5, Mix::Metadata);
    log.write(3000);
    let cfg = config(dir.path(), &logp, &moto, "", "max_object_bytes = 1000000");
    moto.fault("status=503&count=5&method=PUT");
    let mut f = forward(&cfg, true);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert_eq!(moto.faults_served(), 5);
    let failed = f.logged("object upload failed; will retry");
    assert!(failed.contains("http_503"), "{failed}");
    f.logged("object stored after failures");
    let objs = moto.objects();
    let c = counts(&objs);
    assert_eq!(c.len(), 3000);
    assert!(c.values().all(|n| *n == 1), "an event stored twice");

    // 500s for 1.5 s, by time rather than count.
    log.write(2000);
    moto.fault("status=500&seconds=1.5&method=PUT");
    let mut f = forward(&cfg, true);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert!(moto.faults_served() >= 1);
    assert!(
        f.logged("object upload failed; will retry")
            .contains("http_500")
    );
    let c2 = moto.objects();
    let c2 = counts(&c2);
    assert_eq!(c2.len(), 5000);
    assert!(c2.values().all(|n| *n == 1), "an event stored twice");

    // Multipart: ~12 MB uncompressed in one object, parts of 5 MiB; the
    // first two part uploads fail.
    let dir2 = tempfile::tempdir().unwrap();
    let logp2 = dir2.path().join("audit.log");
    let mut big = ApiServerLog::new(&logp2, 9, Mix::Metadata);
    while big.written.iter().map(|l| l.len() + 1).sum::<usize>() < 12 << 20 {
        big.write(1000);
    }
    let cfg2 = config(
        dir2.path(),
        &logp2,
        &moto,
        "flush_interval = \"10s\"",
        "compression = \"none\"\nkey = \"big/{id}.jsonl\"\npart_bytes = 5242880\nmax_object_bytes = 64000000",
    );
    moto.fault("status=500&count=2&method=PUT&prefix=/audit-archive/big/");
    let mut f = forward(&cfg2, true);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert_eq!(moto.faults_served(), 2);
    let objs: Vec<Obj> = moto
        .objects()
        .into_iter()
        .filter(|o| o.key.starts_with("big/"))
        .collect();
    assert_eq!(objs.len(), 1, "{objs:?}");
    assert!(objs[0].size > 10 << 20, "size {}", objs[0].size);
    let c = counts(&objs);
    assert_eq!(c.len(), big.written.len());
    assert!(c.values().all(|n| *n == 1));
}

/// The same span read again (checkpoint deleted) maps to the keys already
/// stored: `If-None-Match` keeps them, nothing is stored twice, and the
/// uploads count as `objects_existing`.
#[test]
fn a_span_read_again_maps_to_its_stored_keys_and_is_not_stored_twice() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let logp = dir.path().join("audit.log");
    let mut log = ApiServerLog::new(&logp, 11, Mix::Metadata);
    log.write(4000);
    // Objects end by size or at the end of input only (no timer).
    let cfg = config(
        dir.path(),
        &logp,
        &moto,
        "flush_interval = \"10s\"",
        "max_object_bytes = 1000000\nmax_object_age = \"1h\"",
    );
    let mut f = forward(&cfg, true);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    let first = moto.objects();
    forget_checkpoints(&dir.path().join("state"));
    let mut f = forward(&cfg, true);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    let kept = f.logged("object already stored");
    assert!(kept.contains("kept, not replaced"), "{kept}");
    let second = moto.objects();
    assert_eq!(
        first.iter().map(|o| &o.key).collect::<Vec<_>>(),
        second.iter().map(|o| &o.key).collect::<Vec<_>>()
    );
    let c = counts(&second);
    assert_eq!(c.len(), 4000);
    assert!(c.values().all(|n| *n == 1));
}

/// SIGTERM with an object open (its age limit far away): the object is
/// uploaded before the exit, the checkpoint is saved past it, and a
/// restart stores nothing again.
#[test]
fn sigterm_uploads_the_open_object_and_saves_the_checkpoint() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let logp = dir.path().join("audit.log");
    let mut log = ApiServerLog::new(&logp, 13, Mix::Metadata);
    log.write(500);
    let cfg = config(dir.path(), &logp, &moto, "", "max_object_age = \"1h\"");
    let mut f = forward(&cfg, false);
    let port = http_port(&f);
    wait_metrics(port, "500 events taken", |b| {
        metric(b, "audit_forwarder_events_sent_total", "output=\"archive\"") == 0.0
            && metric(b, "audit_forwarder_lines_read_total", "output=\"archive\"") == 500.0
    });
    assert!(
        moto.objects().is_empty(),
        "nothing uploaded before the stop"
    );
    f.sigterm();
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    f.logged("stopping: uploading the open object");
    let objs = moto.objects();
    assert_eq!(objs.len(), 1);
    assert_eq!(counts(&objs).len(), 500);
    let mut g = forward(&cfg, true);
    assert_eq!(g.wait_exit(), 0, "{}", g.all_logs());
    assert_eq!(
        moto.objects().len(),
        1,
        "nothing stored again after the restart"
    );
}

/// No static credentials: web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` +
/// `AWS_ROLE_ARN`, as EKS IRSA or Gardener workload identity set them)
/// against moto's STS, and the store over HTTPS (stunnel in front of moto)
/// verified with `ca_file`. object_store allows STS only over HTTPS.
#[test]
fn web_identity_credentials_and_https_to_the_store() {
    let moto = Moto::start();
    let pki = common::pki::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (_front, https) = common::proxies::tls_front(
        dir.path(),
        &pki.p("server.crt"),
        &pki.p("server.key"),
        moto.port,
    );
    let logp = dir.path().join("audit.log");
    let mut log = ApiServerLog::new(&logp, 21, Mix::Metadata);
    log.write(500);
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.e30.sig").unwrap();
    let cfg = dir.path().join("cfg.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"state_dir = "{state}"
[tail]
path = "{log}"
[[outputs]]
name = "archive"
type = "s3"
retry_min = "20ms"
retry_max = "300ms"
[outputs.s3]
bucket = "{BUCKET}"
endpoint = "https://127.0.0.1:{https}"
path_style = true
ca_file = "{ca}"
key = "wi/{{id}}.jsonl.gz"
"#,
            state = dir.path().join("state").display(),
            log = logp.display(),
            ca = pki.p("ca.crt"),
        ),
    )
    .unwrap();
    let sts = format!("https://127.0.0.1:{https}");
    let mut f = Proc::spawn(
        &["forward", "--config", cfg.to_str().unwrap(), "--oneshot"],
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/audit-archive",
            ),
            ("AWS_ENDPOINT_URL_STS", &sts),
        ],
    );
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    let objs: Vec<Obj> = moto
        .objects()
        .into_iter()
        .filter(|o| o.key.starts_with("wi/"))
        .collect();
    assert_eq!(counts(&objs).len(), 500);
}

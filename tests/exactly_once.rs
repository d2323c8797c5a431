//! Exactly once into the receiver (`forward::protocol::identity`,
//! `forward::server::streams`): events read and sent again after the
//! forwarder lost its checkpoint (what a SIGKILL before the checkpoint write
//! does, here for every event at once) are recognised by their stream and
//! source offsets and not written again, after a SIGKILL of the receiver
//! too (`receive.state_dir`), across a rotation. A forwarder with another
//! state directory is another stream: its events are written (the control
//! that shows the check can fail).

mod common;

use audit_forwarder::synth::Mix;
use common::*;
use std::path::Path;

fn ids(out: &Path) -> Vec<String> {
    read_lines(out).iter().map(|l| audit_id(l)).collect()
}

/// (lines, distinct, missing of `want`, in `want`'s order): short enough
/// to print when an assertion fails.
fn summary(out: &Path, want: &[String]) -> (usize, usize, usize, bool) {
    let got = ids(out);
    let distinct: std::collections::HashSet<&String> = got.iter().collect();
    let missing = want.iter().filter(|w| !distinct.contains(w)).count();
    (got.len(), distinct.len(), missing, got == want)
}

fn forget_checkpoints(state: &Path) {
    for e in std::fs::read_dir(state).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("checkpoint-")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
}

fn duplicate_events(hp: u16) -> f64 {
    let (_, m) = http_get(hp, "/metrics");
    metric(&m, "audit_forwarder_receiver_duplicate_events_total", "")
}

#[test]
fn events_resent_after_either_side_restarts_are_written_once() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let rstate = d.path().join("receiver-state");
    let fstate = d.path().join("forwarder-state");
    let rs = format!("receive.state_dir={:?}", rstate.display().to_string());
    let args = ["--set", rs.as_str(), "--set", "http_listen=\"127.0.0.1:0\""];
    let log = d.path().join("audit.log");
    let mut w = ApiServerLog::new(&log, 5, Mix::Realistic);
    w.write(3000);

    let (mut rx, port) = receiver(&out, &args);
    let hp = http_port(&rx);
    oneshot(&log, &fstate, port, &[]);
    let want: Vec<String> = w.written.iter().map(|l| audit_id(l)).collect();
    let all = |want: &[String]| (want.len(), want.len(), 0, true);
    assert_eq!(summary(&out, &want), all(&want));

    // The checkpoint lost: everything is read and sent again.
    forget_checkpoints(&fstate);
    oneshot(&log, &fstate, port, &[]);
    assert_eq!(summary(&out, &want), all(&want), "nothing written twice");
    assert_eq!(duplicate_events(hp), 3000.0);

    // The receiver SIGKILLed and started again on the same state.
    rx.kill9();
    let (_rx2, port) = receiver(&out, &args);
    let hp = http_port(&_rx2);
    forget_checkpoints(&fstate);
    oneshot(&log, &fstate, port, &[]);
    assert_eq!(
        summary(&out, &want),
        all(&want),
        "nothing written twice after the receiver's restart"
    );
    assert_eq!(duplicate_events(hp), 3000.0);

    // A rotation, more events, and the whole history sent again.
    w.rotate();
    w.write(2000);
    oneshot(&log, &fstate, port, &[]);
    let want: Vec<String> = w.written.iter().map(|l| audit_id(l)).collect();
    assert_eq!(summary(&out, &want), all(&want));
    forget_checkpoints(&fstate);
    oneshot(&log, &fstate, port, &[]);
    assert_eq!(
        summary(&out, &want),
        all(&want),
        "rotated and live file: nothing written twice"
    );
    assert_eq!(duplicate_events(hp), 8000.0);

    // Control: another state directory is another stream.
    oneshot(&log, &d.path().join("other-state"), port, &[]);
    assert_eq!(ids(&out).len(), 2 * want.len());
}

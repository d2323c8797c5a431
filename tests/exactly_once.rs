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

/// A loopback relay between the forwarder and the receiver that swallows
/// the third Forward message and passes everything else.
fn lossy_relay(to: u16) -> u16 {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for c in l.incoming().take(20) {
            let Ok(mut client) = c else { return };
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", to)) else {
                return;
            };
            let (mut s2, mut c2) = (server.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
            });
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 64 * 1024];
                loop {
                    let n = match client.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    use audit_forwarder::forward::protocol::frame::{Frame, measure};
                    while let Ok(Frame::Complete(len)) = measure(&buf, 64 << 20) {
                        let msg: Vec<u8> = buf.drain(..len).collect();
                        if seen.fetch_add(1, Ordering::SeqCst) != 2
                            && server.write_all(&msg).is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// A chunk lost on the way (taken out by a relay; its ack never comes):
/// the receiver sees the later chunks start past what it accounted for,
/// keeps the hole open (metric, and a GAP line once `gap_timeout` passed),
/// and closes it when the forwarder resends the chunk after its ack
/// timeout. Every event arrives once.
#[test]
fn a_chunk_lost_on_the_way_is_a_hole_until_it_is_resent() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (rx, rport) = receiver(
        &out,
        &[
            "--set",
            "receive.gap_timeout=\"1s\"",
            "--set",
            "http_listen=\"127.0.0.1:0\"",
        ],
    );
    let hp = http_port(&rx);
    let relay = lossy_relay(rport);
    let log = d.path().join("audit.log");
    let mut w = ApiServerLog::new(&log, 9, Mix::Metadata);
    w.write(5000);
    let mut args = forward_args(&log, &d.path().join("state"), relay);
    for a in [
        "--oneshot",
        "--set",
        "output.max_batch_events=500",
        "--set",
        "output.ack_timeout=\"8s\"",
    ] {
        args.push(a.into());
    }
    let mut fwd = spawn_forward(&args);
    // The third chunk's range is missing while later ones are written.
    let gap = rx.wait_log("GAP: a source range");
    assert!(gap.contains("\"bytes\":"), "{gap}");
    assert_eq!(fwd.wait_exit(), 0, "{}", fwd.all_logs());
    let m = wait_metrics(hp, "the hole closed", |m| {
        metric(m, "audit_forwarder_receiver_open_holes", "") == 0.0
    });
    assert_eq!(metric(&m, "audit_forwarder_receiver_gaps_total", ""), 1.0);
    assert_eq!(metric(&m, "audit_forwarder_receiver_streams", ""), 1.0);
    let got = ids(&out);
    let distinct: std::collections::HashSet<&String> = got.iter().collect();
    let want: std::collections::HashSet<String> = w.written.iter().map(|l| audit_id(l)).collect();
    assert_eq!((got.len(), distinct.len()), (5000, 5000));
    assert!(want.iter().all(|i| distinct.contains(i)));
}

/// A DATA GAP on the forwarder's side (its checkpointed file rotated away
/// and deleted while it was down) is sent to the receiver, which logs and
/// counts it: the receiver's log shows every loss the sender knows of.
#[test]
fn a_data_gap_of_the_sender_is_reported_by_the_receiver() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (rx, port) = receiver(&out, &["--set", "http_listen=\"127.0.0.1:0\""]);
    let hp = http_port(&rx);
    let log = d.path().join("audit.log");
    let state = d.path().join("state");
    let mut w = ApiServerLog::new(&log, 11, Mix::Metadata);
    w.write(100);
    oneshot(&log, &state, port, &[]);
    let rotated = w.rotate();
    w.write(50);
    std::fs::remove_file(&rotated).unwrap();
    let f = oneshot(&log, &state, port, &[]);
    assert!(f.all_logs().contains("DATA GAP"), "{}", f.all_logs());
    let line = rx.wait_log("GAP reported by the sender");
    assert!(
        line.contains(&rotated.display().to_string()) || line.contains("audit.log"),
        "{line}"
    );
    let m = wait_metrics(hp, "one sender gap", |m| {
        metric(m, "audit_forwarder_receiver_sender_gaps_total", "") == 1.0
    });
    assert_eq!(
        metric(&m, "audit_forwarder_receiver_events_total", ""),
        150.0
    );
    assert_eq!(ids(&out).len(), 150);
}

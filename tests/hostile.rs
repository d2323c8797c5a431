//! The receiver against hostile, unauthenticated peers on loopback (SECURITY.md,
//! "Limits"): 2,000 idle connections, 200 slowloris clients and 50 clients
//! each pushing a 15 MiB partial frame, all at once, while our forwarder
//! delivers N events. Every event arrives exactly once, the receiver's peak
//! RSS stays under its RSS before the attack plus `memory_budget_bytes`, and
//! the frame measurer examines a number of bytes linear in what it received.
//!
//! The attackers come from other loopback addresses (127.0.1.x, 127.0.2.x,
//! 127.0.3.x) so the per-address cap does not hide the global limits; the
//! forwarder connects from 127.0.0.1.

mod common;

use common::*;
use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const BUDGET: u64 = 64 << 20;
const EVENTS: usize = 20_000;

/// A Forward-mode message of small entries, about `size` bytes:
/// `[tag, [[time, {"a": "xx…"}], …]]` (array32 of entries).
fn big_forward_frame(size: usize) -> Vec<u8> {
    let mut entry = vec![0x92, 0x05, 0x81, 0xa1, b'a', 0xd9, 100];
    entry.extend(std::iter::repeat_n(b'x', 100));
    let n = size / entry.len();
    let mut f = vec![0x92, 0xa1, b't', 0xdd];
    f.extend_from_slice(&(n as u32).to_be_bytes());
    for _ in 0..n {
        f.extend_from_slice(&entry);
    }
    f
}

/// The attack: returns the stop flag and the threads to join.
struct Attack {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    idle: Vec<TcpStream>,
}

impl Attack {
    fn start(port: u16) -> Attack {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // 2,000 idle connections from 20 addresses, 100 each.
        let idle: Vec<TcpStream> = (0..2000)
            .filter_map(|i| connect_from(&rt, Ipv4Addr::new(127, 0, 1, 1 + (i / 100) as u8), port))
            .collect();
        let mut threads = Vec::new();
        // 200 slowloris clients (4 addresses): a message header declaring
        // a 200-byte string, then one byte of it per second, for at most 90 s.
        let slow: Vec<TcpStream> = (0..200)
            .filter_map(|i| connect_from(&rt, Ipv4Addr::new(127, 0, 2, 1 + (i / 50) as u8), port))
            .collect();
        let st = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut slow = slow;
            for s in &mut slow {
                let _ = s.write_all(&[0x93, 0xa1, b't', 0x05, 0xd9, 200]);
            }
            for _ in 0..90 {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                slow.retain_mut(|s| s.write_all(b"x").is_ok());
                std::thread::sleep(Duration::from_secs(1)); // the attack's pace
            }
        }));
        // 50 clients, each pushing a 15 MiB frame but its last byte, in
        // 16 KiB writes, then holding it.
        let frame = Arc::new(big_forward_frame(15 << 20));
        for i in 0..50u8 {
            let Some(mut s) = connect_from(&rt, Ipv4Addr::new(127, 0, 3, 1 + i), port) else {
                continue;
            };
            let (frame, st) = (frame.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                for c in frame[..frame.len() - 1].chunks(16 * 1024) {
                    if st.load(Ordering::Relaxed) || s.write_all(c).is_err() {
                        return;
                    }
                }
                let mut b = [0u8; 1];
                let _ = std::io::Read::read(&mut s, &mut b); // until closed
            }));
        }
        Attack {
            stop,
            threads,
            idle,
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.idle);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn run_suite(auth: bool) {
    raise_nofile();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let mut args = vec![
        "--set".to_string(),
        format!("receive.memory_budget_bytes={BUDGET}"),
        "--set".into(),
        "http_listen=\"127.0.0.1:0\"".into(),
    ];
    if auth {
        args.extend(["--set".into(), "receive.shared_key=\"s3cret\"".into()]);
        // Both sides run on this host: the handshake refuses equal names.
        args.extend(["--set".into(), "receive.self_hostname=\"receiver\"".into()]);
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (rx, port) = receiver(&out, &a);
    let hp = http_port(&rx);
    let pid = rx.child.id();
    let baseline = proc_status_kib(pid, "VmRSS");

    let attack = Attack::start(port);
    // The attack is under way: slots full (evictions), and frames or
    // handshakes refused.
    let refused = if auth { "handshake" } else { "memory_budget" };
    wait_metrics(hp, "evictions and refusals", |m| {
        let r = |reason: &str| {
            metric(
                m,
                "audit_forwarder_receiver_rejected_frames_total",
                &format!("reason=\"{reason}\""),
            )
        };
        r("evicted") > 0.0 && r(refused) > 0.0
    });

    // Meanwhile, the real sender.
    let log = d.path().join("audit.log");
    let mut w = ApiServerLog::new(&log, 23, audit_forwarder::synth::Mix::Metadata);
    w.write(EVENTS);
    let mut extra = vec![];
    if auth {
        extra.extend(["--set", "output.shared_key=\"s3cret\""]);
    }
    oneshot(&log, &d.path().join("state"), port, &extra);

    // Slowloris clients are closed by the minimum rate.
    let m = wait_metrics(hp, "slow clients closed", |m| {
        metric(
            m,
            "audit_forwarder_receiver_rejected_frames_total",
            "reason=\"slow_transfer\"",
        ) > 0.0
            || auth
    });
    let peak = proc_status_kib(pid, "VmHWM");
    attack.stop();

    let lines = read_lines(&out);
    let ids: Vec<String> = lines.iter().map(|l| audit_id(l)).collect();
    let want: Vec<String> = w.written.iter().map(|l| audit_id(l)).collect();
    assert_eq!(ids.len(), EVENTS, "every event, none twice");
    assert_eq!(ids, want, "in order, none lost");

    let received = metric(&m, "audit_forwarder_receiver_bytes_total", "");
    let examined = metric(
        &m,
        "audit_forwarder_receiver_frame_bytes_examined_total",
        "",
    );
    let reasons: Vec<String> = m
        .lines()
        .filter(|l| l.starts_with("audit_forwarder_receiver_rejected_frames_total{"))
        .map(|l| {
            l.trim_start_matches("audit_forwarder_receiver_rejected_frames_total")
                .to_string()
        })
        .collect();
    println!(
        "hostile suite ({}): {EVENTS} events delivered; receiver RSS {:.1} MB before the attack, peak {:.1} MB (budget {} MB); {:.0} MB received, {:.0} MB examined by the frame measurer; refusals {reasons:?}",
        if auth {
            "shared_key"
        } else {
            "no authentication"
        },
        baseline as f64 / 1024.0,
        peak as f64 / 1024.0,
        BUDGET >> 20,
        received / 1e6,
        examined / 1e6,
    );
    assert!(
        peak * 1024 <= baseline * 1024 + BUDGET,
        "peak RSS {peak} KiB exceeds {baseline} KiB + the {BUDGET}-byte budget"
    );
    assert!(
        examined <= 2.0 * received,
        "{examined} bytes examined for {received} bytes received"
    );
}

/// No authentication configured: attackers reach the frame reader, and the
/// memory budget and the deadlines hold them.
#[test]
fn hostile_peers_without_authentication_cannot_stop_a_real_sender() {
    run_suite(false);
}

/// With `shared_key` (the recommended set-up): attackers never get past the
/// handshake, and cannot keep the authenticated sender out.
#[test]
fn hostile_peers_cannot_stop_an_authenticated_sender() {
    run_suite(true);
}

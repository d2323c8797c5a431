//! End to end on loopback with the real binary: forwarder → receiver.

mod common;

use audit_forwarder::synth::Mix;
use common::*;
use std::collections::HashMap;

#[test]
fn every_event_arrives_byte_for_byte_through_rotations() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("received.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 1, Mix::Realistic);
    let _fwd = spawn_forward(&forward_args(&log, &d.path().join("state"), port));
    for _ in 0..5 {
        api.write(800);
        api.rotate();
    }
    api.write(500);
    let got = wait_lines(&out, api.written.len());
    assert_eq!(got.len(), api.written.len(), "no more and no fewer");
    for (i, (g, w)) in got.iter().zip(&api.written).enumerate() {
        assert!(g == w, "event {i} differs:\n got {g:.300}\nwant {w:.300}");
    }
}

/// With a 4 KiB read buffer most realistic lines are longer than it: the
/// tail grows its buffer for them and later gives the memory back, keeping
/// the partial line that follows, many times over.
#[test]
fn lines_longer_than_the_read_buffer_arrive_intact_as_the_buffer_grows_and_shrinks() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("received.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 3, Mix::Realistic);
    api.write(3000);
    let mut args = forward_args(&log, &d.path().join("state"), port);
    args.extend(["--oneshot", "--set", "tail.read_buffer_bytes=4096"].map(String::from));
    let mut f = spawn_forward(&args);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    let long = api.written.iter().filter(|l| l.len() > 8 * 4096).count();
    assert!(long > 50, "the mix has long lines: {long}");
    let got = read_lines(&out);
    assert_eq!(got.len(), api.written.len());
    for (i, (g, w)) in got.iter().zip(&api.written).enumerate() {
        assert!(g == w, "event {i} differs:\n got {g:.300}\nwant {w:.300}");
    }
}

#[test]
fn oneshot_reads_to_the_end_then_exits_and_resumes_without_replay() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("received.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let state = d.path().join("state");
    let mut api = ApiServerLog::new(&log, 2, Mix::Metadata);
    api.write(1000);
    let mut args = forward_args(&log, &state, port);
    args.push("--oneshot".into());
    let mut f = spawn_forward(&args);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert_eq!(read_lines(&out), api.written);

    // More events and a rotation while it was not running.
    api.write(300);
    api.rotate();
    api.write(200);
    let mut f = spawn_forward(&args);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert_eq!(
        read_lines(&out),
        api.written,
        "resumed exactly after the checkpoint, through the rotation"
    );
}

#[test]
fn kill_9_at_random_moments_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("received.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let state = d.path().join("state");
    let mut api = ApiServerLog::new(&log, 3, Mix::Metadata);
    let mut args = forward_args(&log, &state, port);
    // Small windows and a checkpoint after every ack make the duplicate bound tight:
    // at most (in flight + pending + open batch + one being checkpointed) batches per kill.
    for s in [
        "output.max_batch_events=50",
        "output.max_in_flight=2",
        "output.max_pending_chunks=1",
        "output.checkpoint_interval=\"0s\"",
    ] {
        args.push("--set".into());
        args.push(s.into());
    }
    let window = (2 + 1 + 2) * 50;
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let kills = 25;
    for round in 0..kills {
        let mut f = spawn_forward(&args);
        // The apiserver keeps writing (and rotating) while the forwarder runs.
        api.write(200 + rnd(400) as usize);
        if round % 4 == 3 {
            api.rotate();
        }
        // Kill after a random amount of progress (bounded by WAIT).
        let before = read_lines(&out).len();
        let target = before + 1 + rnd(300) as usize;
        wait_lines(&out, target.min(api.written.len()));
        f.kill9();
    }
    let mut f = spawn_forward(&{
        let mut a = args.clone();
        a.push("--oneshot".into());
        a
    });
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());

    let got = read_lines(&out);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in &got {
        *seen.entry(audit_id(l)).or_default() += 1;
    }
    let missing: Vec<_> = api
        .written
        .iter()
        .map(|w| audit_id(w))
        .filter(|id| !seen.contains_key(id))
        .collect();
    let dups: usize = seen.values().map(|c| c - 1).sum();
    if !missing.is_empty() {
        let idx: Vec<usize> = api
            .written
            .iter()
            .enumerate()
            .filter(|(_, w)| !seen.contains_key(&audit_id(w)))
            .map(|(i, _)| i)
            .collect();
        let mut ranges = Vec::new();
        let mut st = idx[0];
        for w in idx.windows(2) {
            if w[1] != w[0] + 1 {
                ranges.push((st, w[0]));
                st = w[1];
            }
        }
        ranges.push((st, *idx.last().unwrap()));
        eprintln!("missing ranges: {ranges:?}");
    }
    eprintln!(
        "kill -9 x{kills}: written {}, received {}, missing {}, duplicates {dups}",
        api.written.len(),
        got.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "lost {} events, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    assert!(
        dups <= kills * window,
        "duplicates {dups} exceed {kills} kills x window {window}"
    );
}

#[test]
fn receiver_down_then_back_loses_nothing_and_memory_stays_bounded() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("received.jsonl");
    let log = d.path().join("audit.log");
    let port = free_port();
    let mut api = ApiServerLog::new(&log, 4, Mix::Metadata);
    api.write(20_000); // ~40 MB, far more than the buffer bound
    let mut args = forward_args(&log, &d.path().join("state"), port);
    // Small batches so the bound is small: (2 in flight + 1 pending + 1 open) x 64 KiB.
    for s in [
        "output.max_batch_bytes=65536",
        "output.max_in_flight=2",
        "output.max_pending_chunks=1",
    ] {
        args.push("--set".into());
        args.push(s.into());
    }
    args.push("--oneshot".into());
    let mut f = spawn_forward(&args);
    f.wait_log("forward connection failed");
    let (_rx, _) = receiver_on(&format!("127.0.0.1:{port}"), &out, &[]);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert_eq!(read_lines(&out).len(), api.written.len());
    let fin = f.all_logs();
    let line = fin
        .lines()
        .find(|l| l.contains("output finished"))
        .expect("final report");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let max = v["fields"]["buffered_bytes_max"]
        .as_u64()
        .expect("buffered_bytes_max");
    let max_event = api.written.iter().map(|e| e.len()).max().unwrap() as u64;
    // Sealed chunks: 2 in flight + 1 pending + 1 blocked in the hand-over,
    // each at most max_batch_bytes plus its header, plus one event larger than a batch.
    let bound = 4 * (65536 + 128) + max_event;
    eprintln!("buffered_bytes_max = {max} (bound {bound})");
    assert!(max > 0 && max <= bound, "buffered {max} > bound {bound}");
}

#[test]
fn resumes_inside_a_rotated_file_that_was_gzipped_while_down() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("received.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let state = d.path().join("state");
    let mut api = ApiServerLog::new(&log, 5, Mix::Metadata);
    api.write(300);
    let mut args = forward_args(&log, &state, port);
    args.push("--oneshot".into());
    let mut f = spawn_forward(&args);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());

    // While it is down: more events, rotation, and the rotated file is
    // compressed and the plain one removed (lumberjack's `compress`).
    api.write(200);
    let rotated = api.rotate();
    let gz = rotated.with_extension("log.gz");
    let data = std::fs::read(&rotated).unwrap();
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::Write::write_all(&mut enc, &data).unwrap();
    enc.finish().unwrap();
    std::fs::remove_file(&rotated).unwrap();
    api.write(100);

    let mut f = spawn_forward(&args);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert_eq!(
        read_lines(&out),
        api.written,
        "each event exactly once, in order"
    );
}

#[test]
fn a_checkpointed_file_deleted_while_down_is_reported_as_a_gap() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("received.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let state = d.path().join("state");
    let mut api = ApiServerLog::new(&log, 6, Mix::Metadata);
    api.write(100);
    let mut args = forward_args(&log, &state, port);
    args.push("--oneshot".into());
    let mut f = spawn_forward(&args);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    api.write(50); // never forwarded: deleted below
    let rotated = api.rotate();
    std::fs::remove_file(&rotated).unwrap();
    api.write(70);
    let mut f = spawn_forward(&args);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert!(f.all_logs().contains("DATA GAP"), "{}", f.all_logs());
    let got = read_lines(&out);
    assert_eq!(
        got.len(),
        170,
        "the 50 deleted events are the reported gap; the rest arrive"
    );
    assert_eq!(got[100..], api.written[150..]);
}

#[test]
fn after_a_gap_every_surviving_rotated_file_is_read() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("received.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let log = d.path().join("audit.log");
    let state = d.path().join("state");
    let mut api = ApiServerLog::new(&log, 7, Mix::Metadata);
    api.write(100);
    let mut args = forward_args(&log, &state, port);
    args.push("--oneshot".into());
    let mut f = spawn_forward(&args);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    // While down: A rotated (then deleted), B written and rotated, C live.
    api.write(10);
    let a = api.rotate();
    api.write(40);
    api.rotate();
    api.write(30);
    std::fs::remove_file(&a).unwrap();
    // A checkpoint saved late (e.g. at a graceful stop) must not hide B.
    let cp_path = state.join("checkpoint-default.json");
    let mut cp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cp_path).unwrap()).unwrap();
    cp["saved_at_ms"] = serde_json::json!(4_102_444_800_000u64); // year 2100
    std::fs::write(&cp_path, cp.to_string()).unwrap();
    let mut f = spawn_forward(&args);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    assert!(f.all_logs().contains("DATA GAP"));
    let got = read_lines(&out);
    assert_eq!(
        got[100..],
        api.written[110..],
        "B and C arrive; only A's 10 unread events are the gap"
    );
}

#[test]
fn failover_to_a_standby_server_when_the_primary_dies_mid_stream() {
    let d = tempfile::tempdir().unwrap();
    let out_a = d.path().join("a.jsonl");
    let out_b = d.path().join("b.jsonl");
    let (mut rx_a, port_a) = receiver(&out_a, &[]);
    let (_rx_b, port_b) = receiver(&out_b, &[]);
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 8, Mix::Metadata);
    let mut args = forward_args(&log, &d.path().join("state"), port_a);
    args.extend([
        "--set".into(),
        format!("output.servers=[{{host=\"127.0.0.1\",port={port_b}}}]"),
    ]);
    let _f = spawn_forward(&args);
    api.write(2000);
    wait_lines(&out_a, 500);
    rx_a.kill9(); // mid-stream
    api.write(1000);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for l in read_lines(&out_a).iter().chain(read_lines(&out_b).iter()) {
            *seen.entry(audit_id(l)).or_default() += 1;
        }
        let missing = api
            .written
            .iter()
            .filter(|w| !seen.contains_key(&audit_id(w)))
            .count();
        if missing == 0 {
            let dups: usize = seen.values().map(|c| c - 1).sum();
            eprintln!(
                "failover: written {}, missing 0, duplicates {dups}",
                api.written.len()
            );
            assert!(!read_lines(&out_b).is_empty(), "the standby took over");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} events never arrived at either server"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn round_robin_spreads_chunks_over_servers_without_loss_or_duplicates() {
    let d = tempfile::tempdir().unwrap();
    let out_a = d.path().join("a.jsonl");
    let out_b = d.path().join("b.jsonl");
    let (_rx_a, port_a) = receiver(&out_a, &[]);
    let (_rx_b, port_b) = receiver(&out_b, &[]);
    let log = d.path().join("audit.log");
    let mut api = ApiServerLog::new(&log, 9, Mix::Metadata);
    api.write(3000);
    let mut args = forward_args(&log, &d.path().join("state"), port_a);
    for s in [
        format!("output.servers=[{{host=\"127.0.0.1\",port={port_b}}}]"),
        "output.balance=\"round-robin\"".into(),
        // Move on after every acknowledged window: deterministic alternation.
        "output.rebalance_interval=\"0s\"".into(),
        "output.max_batch_events=100".into(),
        "--oneshot".into(),
    ] {
        if s == "--oneshot" {
            args.push(s);
        } else {
            args.extend(["--set".into(), s]);
        }
    }
    let mut f = spawn_forward(&args);
    assert_eq!(f.wait_exit(), 0, "{}", f.all_logs());
    let (a, b) = (read_lines(&out_a), read_lines(&out_b));
    eprintln!(
        "round-robin: server A {} events, server B {}",
        a.len(),
        b.len()
    );
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both servers received chunks"
    );
    let mut all: Vec<String> = a.iter().chain(b.iter()).map(|l| audit_id(l)).collect();
    all.sort();
    let mut want: Vec<String> = api.written.iter().map(|l| audit_id(l)).collect();
    want.sort();
    assert_eq!(all, want, "every event exactly once");
}

/// Regression: started before the audit log existed, the forwarder took only
/// the live file once files appeared, skipping files rotated before its
/// first open (start_at = "oldest" or not, they were all written since).
#[test]
fn files_rotated_before_the_first_open_are_read_when_the_log_did_not_exist_at_start() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let (_rx, port) = receiver(&out, &[]);
    let dir = d.path().join("log");
    let staging = d.path().join("staging");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&staging).unwrap();
    let log = dir.join("audit.log");
    let f = spawn_forward(&forward_args(&log, &d.path().join("state"), port));
    f.wait_log("audit log not found");
    // An apiserver that wrote and rotated twice meanwhile (made elsewhere,
    // then moved in: the rotated files first, the live file last).
    let mut w = ApiServerLog::new(&staging.join("audit.log"), 5, Mix::Metadata);
    w.write(30);
    let r1 = w.rotate();
    w.write(30);
    let r2 = w.rotate();
    w.write(30);
    for r in [&r1, &r2] {
        std::fs::rename(r, dir.join(r.file_name().unwrap())).unwrap();
    }
    std::fs::rename(staging.join("audit.log"), &log).unwrap();
    let got = wait_lines(&out, 90);
    assert_eq!(got, w.written);
}

/// Paths of the files process `pid` has open.
fn open_files(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (bounded) until process `pid` has `path` open (the fd table is the
/// condition, no sleeps as synchronisation).
fn wait_open(pid: u32, path: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while !open_files(pid).iter().any(|p| p == path) {
        assert!(
            std::time::Instant::now() < deadline,
            "{path} was never opened: {:?}",
            open_files(pid)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Regression: with the receiver away, the reader waits inside one rotated
/// file while the apiserver rotates on and deletes its oldest files
/// (`--audit-log-maxbackup`); the files after the one being read were lost
/// without a report. Now they are held open as soon as they appear.
#[test]
fn rotated_files_deleted_by_maxbackup_while_the_reader_waits_are_not_lost() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let port = free_port();
    let log = d.path().join("audit.log");
    let mut w = ApiServerLog::new(&log, 9, Mix::Metadata);
    w.write(200);
    let mut args = forward_args(&log, &d.path().join("state"), port);
    for s in [
        "output.max_batch_events=10",
        "output.max_pending_chunks=1",
        "output.max_in_flight=1",
    ] {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    let f = spawn_forward(&args);
    f.wait_log("forward connection failed");
    let pid = f.child.id();
    // The reader must be inside the first file before it is rotated: a
    // fresh start reads the file that is live when the tail opens it, so a
    // rotation before that open would leave the first file out (this raced
    // under CI load: 320 of 520 lines, all of the first file missing).
    wait_open(pid, &log.display().to_string());
    let mut rotated = vec![w.rotate()];
    for _ in 0..6 {
        w.write(50);
        let r = w.rotate();
        // The forwarder holds the new file open before the writer deletes
        // anything (no sleeps: the fd table is the condition).
        wait_open(pid, &r.display().to_string());
        rotated.push(r);
        // maxbackup = 2: delete the oldest rotated files.
        while rotated.len() > 2 {
            std::fs::remove_file(rotated.remove(0)).unwrap();
        }
    }
    w.write(20);
    let _rcv = receiver_on(&format!("127.0.0.1:{port}"), &out, &[]);
    let got = wait_lines(&out, w.written.len());
    assert_eq!(got, w.written);
}

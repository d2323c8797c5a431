//! In-process benchmark of the CPU-bound stages, without I/O: the sender's
//! JSON → msgpack transcoder, the `recommended` policy on top of it, and the
//! receiver's msgpack → JSON writer. Best of several passes over the same
//! synthetic events, so a noisy machine disturbs it less than the
//! end-to-end `relay` benchmark. The events fit in the CPU caches (about
//! 256 KB for the metadata mix), as a block read by the tail does.
//!
//! `cargo bench --bench encode` (env: BENCH_EVENTS, distinct events,
//! default 128; BENCH_ROUNDS, passes over them per measurement, default
//! 200; BENCH_PASSES, measurements, the best is shown, default 7).

use audit_forwarder::filter::apply;
use audit_forwarder::filter::policy::Policy;
use audit_forwarder::record::encode::Transcoder;
use audit_forwarder::record::json::write_value;
use audit_forwarder::record::reader::MsgReader;
use audit_forwarder::synth::{Generator, Mix};
use std::time::{Duration, Instant};

/// The best of `passes` measurements of `rounds` calls of `f`, per call.
fn best(passes: usize, rounds: usize, mut f: impl FnMut()) -> Duration {
    (0..passes)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..rounds {
                f();
            }
            t.elapsed() / rounds as u32
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, full_default: usize, smoke: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if full { full_default } else { smoke })
    };
    let n = env("BENCH_EVENTS", 128, 16);
    let rounds = env("BENCH_ROUNDS", 200, 2);
    let passes = env("BENCH_PASSES", 7, 1);
    println!("| stage | mix | ns/event | MB/s |\n|---|---|---:|---:|");
    for (name, mix) in [("metadata", Mix::Metadata), ("realistic", Mix::Realistic)] {
        let mut g = Generator::new(7, mix);
        let lines: Vec<String> = (0..n).map(|_| g.event()).collect();
        let bytes: usize = lines.iter().map(|l| l.len()).sum();
        let report = |stage: &str, d: Duration| {
            println!(
                "| {stage} | {name} | {:.0} | {:.0} |",
                d.as_nanos() as f64 / n as f64,
                bytes as f64 / 1e6 / d.as_secs_f64()
            );
        };
        let mut tc = Transcoder::default();
        let mut rec = Vec::with_capacity(1 << 16);
        let d = best(passes, rounds, || {
            for l in &lines {
                rec.clear();
                let f = tc.encode(l.as_bytes(), &mut rec).expect("valid event");
                std::hint::black_box(&f);
            }
        });
        report("encode", d);
        let policy = Policy::preset("recommended").expect("preset");
        let mut out = Vec::with_capacity(1 << 16);
        let mut out_top = Vec::new();
        let d = best(passes, rounds, || {
            for l in &lines {
                rec.clear();
                let f = tc.encode(l.as_bytes(), &mut rec).expect("valid event");
                out.clear();
                let o = apply::apply(
                    &policy,
                    &f,
                    &tc.top,
                    &rec,
                    &mut out,
                    &mut out_top,
                    audit_forwarder::record::buf::fresh_capacity,
                );
                std::hint::black_box(&o);
            }
        });
        report("encode + recommended policy", d);
        let records: Vec<Vec<u8>> = lines
            .iter()
            .map(|l| {
                let mut r = Vec::new();
                tc.encode(l.as_bytes(), &mut r).expect("valid event");
                r
            })
            .collect();
        let mut json = Vec::with_capacity(1 << 16);
        let d = best(passes, rounds, || {
            for r in &records {
                json.clear();
                write_value(&mut MsgReader::new(r), &mut json).expect("valid record");
                json.push(b'\n');
            }
        });
        report("receiver: record → JSON line", d);
    }
}

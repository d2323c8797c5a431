//! `audit-forwarder demo`: the main job on loopback, no setup. Two receivers
//! play two consumers in the cluster; one forwarder with two outputs follows
//! a temporary audit log while "kube-apiserver" writes and rotates it:
//!
//! - `security`: policy preset `metadata` (everything, bodies removed);
//! - `owner`: policy preset `minimal` (pod/deployment changes with bodies,
//!   exec, secrets metadata; no read-only noise), plus the `add-cluster-id`
//!   WebAssembly filter when its component is at hand.

use crate::config::{Config, OutputSection, TailSection};
use crate::forward::server::{Output, Server, ServerConfig};
use crate::ops::metrics::Metrics;
use crate::pipeline::{self, PipelineError};
use crate::synth::{Generator, Mix};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo: {0}")]
    Io(#[from] std::io::Error),
    #[error("demo: {0}")]
    Pipeline(#[from] PipelineError),
    #[error("demo: {0}")]
    Failed(String),
}

async fn receiver(
    out: &Path,
    metrics: &Metrics,
    sd: watch::Receiver<bool>,
) -> Result<(u16, tokio::task::JoinHandle<()>), DemoError> {
    let server = Server::bind(
        ServerConfig {
            listen: "127.0.0.1:0".into(),
            max_frame_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_connections: 16,
            max_connections_per_address: 16,
            memory_budget_bytes: 256 << 20,
            handshake_timeout: Duration::from_secs(10),
            first_message_timeout: Duration::from_secs(60),
            min_transfer_rate: 1024,
            idle_timeout: Duration::from_secs(60),
            dedupe_window: 4096,
            state_dir: None,
            gap_timeout: Duration::from_secs(300),
            metadata_key: None,
            tag_key: None,
            output: Output::File(out.to_path_buf()),
            security: None,
            tls: None,
        },
        metrics.receiver(),
    )
    .await?;
    let port = server.local_addr()?.port();
    Ok((port, tokio::spawn(server.serve(sd))))
}

/// Shortens long strings so an event fits on a screen.
fn abbreviate(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.chars().count() > 60 => {
            let n = s.chars().count();
            *s = format!("{}… ({n} chars)", s.chars().take(40).collect::<String>());
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(abbreviate),
        serde_json::Value::Object(o) => o.values_mut().for_each(abbreviate),
        _ => {}
    }
}

fn read_json_lines(p: &Path) -> Result<Vec<serde_json::Value>, DemoError> {
    std::fs::read_to_string(p)?
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| DemoError::Failed(format!("receiver wrote invalid JSON: {e}")))
        })
        .collect()
}

/// Where the add-cluster-id example filter is found by default.
pub const FILTER_PATHS: [&str; 2] = [
    "example-filters/target/wasm32-wasip2/release/add_cluster_id.wasm",
    "/usr/share/audit-forwarder/filters/add-cluster-id.wasm",
];

pub async fn run(events: usize, show: usize, filter: Option<PathBuf>) -> Result<(), DemoError> {
    let filter = filter.or_else(|| FILTER_PATHS.iter().map(PathBuf::from).find(|p| p.is_file()));
    match &filter {
        Some(f) => println!(
            "the owner's output adds clusterID = \"shoot--demo\" with the WebAssembly filter {}",
            f.display()
        ),
        None => println!(
            "(no add-cluster-id.wasm found; build example-filters/ or pass --filter to see a WASM filter at work)"
        ),
    }
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("audit.log");
    let (sd_tx, sd_rx) = watch::channel(false);
    let metrics = Metrics::new();
    let sec_out = dir.path().join("security.jsonl");
    let own_out = dir.path().join("owner.jsonl");
    let (sec_port, sec_srv) = receiver(&sec_out, &metrics, sd_rx.clone()).await?;
    let (own_port, own_srv) = receiver(&own_out, &metrics, sd_rx.clone()).await?;

    std::fs::File::create(&log)?;
    let cfg = Config {
        state_dir: dir.path().join("state"),
        tail: TailSection {
            path: log.clone(),
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
        outputs: vec![
            OutputSection {
                name: "security".into(),
                port: sec_port,
                policy: Some("metadata".into()),
                ..Default::default()
            },
            OutputSection {
                name: "owner".into(),
                port: own_port,
                policy: Some("minimal".into()),
                filters: filter
                    .iter()
                    .map(|f| crate::config::FilterSection {
                        wasm: f.clone(),
                        name: Some("add-cluster-id".into()),
                        config: serde_json::json!({ "cluster": "shoot--demo" }),
                        on_error: Default::default(),
                        timeout: Duration::from_millis(100),
                        max_memory_bytes: 64 << 20,
                    })
                    .collect(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let (fwd_tx, fwd_rx) = watch::channel(false);
    let t0 = Instant::now();
    let fwd = {
        let (cfg, metrics) = (cfg.clone(), metrics.clone());
        tokio::spawn(async move { pipeline::run(&cfg, false, &metrics, fwd_rx).await })
    };

    // kube-apiserver's side: write, rotate half way (as lumberjack does), write on.
    let mut synth = Generator::new(42, Mix::Realistic);
    let minimal = crate::filter::policy::Policy::load("minimal")
        .map_err(|e| DemoError::Failed(e.to_string()))?;
    let mut ids = Vec::with_capacity(events);
    // What the owner's output should get: the events its policy keeps.
    let mut owner_ids = Vec::new();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
    for i in 0..events {
        if i == events / 2 {
            drop(f);
            std::fs::rename(&log, dir.path().join("audit-2026-11-23T10-00-00.000.log"))?;
            f = std::fs::File::create(&log)?;
        }
        let line = synth.event();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            let id = v["auditID"].as_str().unwrap_or_default().to_string();
            let d = crate::filter::apply::explain(&minimal, line.as_bytes());
            if d["action"] == "keep" || d["action"] == "lower level" {
                owner_ids.push(id.clone());
            }
            ids.push(id);
        }
        std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes())?;
    }
    drop(f);
    println!(
        "kube-apiserver (simulated) wrote {events} audit events to {}, rotating it half way",
        log.display()
    );

    // Wait (bounded) until both outputs accounted for every line.
    let outs = [metrics.output("security"), metrics.output("owner")];
    let done = |m: &crate::ops::metrics::OutputMetrics| {
        m.events_acked.get() + m.dropped_count("policy") >= events as u64
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !outs.iter().all(done) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t0.elapsed();
    let short: Vec<String> = outs
        .iter()
        .filter(|m| !done(m))
        .map(|m| {
            format!(
                "output {} accounted for {} of {events} events within 60 s",
                m.name,
                m.events_acked.get() + m.dropped_count("policy")
            )
        })
        .collect();
    let _ = fwd_tx.send(true);
    let reports = fwd.await.map_err(|e| DemoError::Failed(e.to_string()))??;
    let _ = sd_tx.send(true);
    let _ = sec_srv.await;
    let _ = own_srv.await;

    let sec = read_json_lines(&sec_out)?;
    let own = read_json_lines(&own_out)?;
    println!(
        "\nthe owner's receiver (policy preset \"minimal\") wrote {} JSON lines; the first {}:",
        own.len(),
        show.min(own.len())
    );
    for v in own.iter().take(show) {
        let mut v = v.clone();
        abbreviate(&mut v);
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    println!(
        "\nsummary ({:.0} ms, {:.0} events/s)",
        took.as_secs_f64() * 1e3,
        events as f64 / took.as_secs_f64()
    );
    for r in &reports {
        let m = metrics.output(&r.output);
        println!(
            "  output {:<9} read {:>6}  sent {:>6}  acked {:>6}  dropped by policy {:>6}  invalid {:>2}  oversize {:>2}",
            r.output,
            r.lines_read,
            r.events_sent,
            r.events_acked,
            m.dropped_count("policy"),
            r.dropped_invalid,
            r.dropped_oversize
        );
    }
    let id_of = |v: &serde_json::Value| v["auditID"].as_str().unwrap_or_default().to_string();
    let sec_ids: Vec<String> = sec.iter().map(id_of).collect();
    let own_ids: Vec<String> = own.iter().map(id_of).collect();
    let with_bodies = sec
        .iter()
        .filter(|v| v.get("requestObject").is_some())
        .count();
    let own_levels: HashSet<&str> = own.iter().filter_map(|v| v["level"].as_str()).collect();
    println!(
        "  security: {} of {} events, same order as written: {}, with bodies: {} (preset metadata removes them)",
        sec.len(),
        ids.len(),
        if sec_ids == ids { "yes" } else { "NO" },
        with_bodies
    );
    let tagged = own
        .iter()
        .filter(|v| v["clusterID"] == "shoot--demo")
        .count();
    println!(
        "  owner:    {} of {} events its policy keeps, same order as written: {}, levels {:?}, with clusterID from the WASM filter: {}",
        own.len(),
        owner_ids.len(),
        if own_ids == owner_ids { "yes" } else { "NO" },
        own_levels,
        tagged
    );
    if !short.is_empty() {
        return Err(DemoError::Failed(short.join("; ")));
    }
    if own_ids != owner_ids {
        return Err(DemoError::Failed(format!(
            "the owner receiver got {} events, its policy keeps {}",
            own_ids.len(),
            owner_ids.len()
        )));
    }
    if filter.is_some() && tagged != own.len() {
        return Err(DemoError::Failed(
            "the WASM filter did not tag every owner event".into(),
        ));
    }
    if sec_ids != ids || with_bodies != 0 {
        return Err(DemoError::Failed(
            "the security receiver did not get exactly the events written".into(),
        ));
    }
    Ok(())
}

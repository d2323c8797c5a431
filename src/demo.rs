//! `audit-forwarder demo`: the main job on loopback, no setup. Writes
//! generated audit events into a temporary audit log (rotating it half way),
//! runs a receiver and a forwarder, and shows what arrived.

use crate::config::{Config, OutputSection};
use crate::forward::server::{Output, Server, ServerConfig};
use crate::metrics::Metrics;
use crate::pipeline::{self, PipelineError};
use crate::synth::{Generator, Mix};
use std::collections::HashSet;
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

pub async fn run(events: usize, show: usize) -> Result<(), DemoError> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("audit.log");
    let received = dir.path().join("received.jsonl");
    let (sd_tx, sd_rx) = watch::channel(false);
    let metrics = Metrics::new();

    let server = Server::bind(
        ServerConfig {
            listen: "127.0.0.1:0".into(),
            max_frame_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_connections: 16,
            idle_timeout: Duration::from_secs(60),
            dedupe_window: 4096,
            output: Output::File(received.clone()),
        },
        metrics.receiver(),
    )
    .await?;
    let port = server.local_addr()?.port();
    let srv = tokio::spawn(server.serve(sd_rx.clone()));

    // The forwarder follows the log while the "apiserver" writes it.
    std::fs::File::create(&log)?;
    let cfg = Config {
        state_dir: dir.path().join("state"),
        tail: crate::config::TailSection {
            path: log.clone(),
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
        outputs: vec![OutputSection {
            port,
            ..Default::default()
        }],
        ..Default::default()
    };
    let (fwd_tx, fwd_rx) = watch::channel(false);
    let t0 = Instant::now();
    let fwd = {
        let (cfg, metrics) = (cfg.clone(), metrics.clone());
        tokio::spawn(async move { pipeline::run(&cfg, false, &metrics, fwd_rx).await })
    };

    // The apiserver's side: write, rotate half way (as lumberjack does), write on.
    let mut synth = Generator::new(42, Mix::Metadata);
    let mut ids = Vec::with_capacity(events);
    let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
    for i in 0..events {
        if i == events / 2 {
            drop(f);
            std::fs::rename(&log, dir.path().join("audit-2026-11-23T10-00-00.000.log"))?;
            f = std::fs::File::create(&log)?;
        }
        let line = synth.event();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            ids.push(v["auditID"].as_str().unwrap_or_default().to_string());
        }
        std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes())?;
    }
    drop(f);
    println!(
        "wrote {events} audit events to {} and rotated it half way, as kube-apiserver does",
        log.display()
    );

    // Wait (bounded) until the receiver acknowledged all of them.
    let acked = metrics.output("default").events_acked;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.get() < events as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t0.elapsed();
    let _ = fwd_tx.send(true);
    let reports = fwd.await.map_err(|e| DemoError::Failed(e.to_string()))??;
    let _ = sd_tx.send(true);
    let _ = srv.await;

    let text = std::fs::read_to_string(&received)?;
    let lines: Vec<&str> = text.lines().collect();
    println!(
        "\nthe receiver wrote {} JSON lines; the first {}:",
        lines.len(),
        show.min(lines.len())
    );
    for l in lines.iter().take(show) {
        let v: serde_json::Value =
            serde_json::from_str(l).map_err(|e| DemoError::Failed(e.to_string()))?;
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    let got: Vec<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["auditID"].as_str().unwrap_or_default().to_string())
        .collect();
    let unique: HashSet<&String> = got.iter().collect();
    let in_order = got == ids;
    println!("\nsummary");
    for r in &reports {
        println!(
            "  output {:<10} read {:>7}  sent {:>7}  acked {:>7}  dropped {:>3}  checkpoint offset {}",
            r.output,
            r.lines_read,
            r.events_sent,
            r.events_acked,
            r.dropped_invalid + r.dropped_oversize,
            r.checkpoint.as_ref().map(|c| c.offset).unwrap_or(0)
        );
    }
    println!(
        "  received {} of {} events, {} unique auditIDs, same order as written: {}",
        got.len(),
        ids.len(),
        unique.len(),
        if in_order { "yes" } else { "NO" }
    );
    println!(
        "  time {:.1} ms ({:.0} events/s)",
        took.as_secs_f64() * 1e3,
        events as f64 / took.as_secs_f64()
    );
    if !in_order {
        return Err(DemoError::Failed(
            "the receiver did not get exactly the events written".into(),
        ));
    }
    Ok(())
}

//! `audit-forwarder forward`: the sidecar. Runs every output's pipeline,
//! the webhook source and the HTTP endpoint; reloads the configuration on
//! SIGHUP or when its file changes (outputs drain, then restart from their
//! checkpoints).

use super::cli::{Cli, ForwardArgs};
use super::{init_logging, signals};
use crate::config::{self, Config};
use crate::ops::http;
use crate::ops::metrics::{Metrics, OutputMetrics};
use crate::pipeline;
use anyhow::Context;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

pub async fn run(cli: &Cli, a: &ForwardArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = config::load(a.config.config.as_deref(), &a.sets())?;
    init_logging(cli, &cfg);
    let metrics = Metrics::new();
    let (reload_tx, mut reload_rx) = mpsc::channel(4);
    let mut sd = signals((!a.oneshot).then(|| reload_tx.clone()));
    let _watcher = match (&a.config.config, a.oneshot) {
        (Some(p), false) => watch_config(p, reload_tx.clone()),
        _ => None,
    };
    let state = Arc::new(http::State {
        metrics: metrics.clone(),
        probe: std::sync::Mutex::new(probe_for(&cfg, &metrics)),
    });
    if let Some(addr) = &cfg.http_listen {
        let l = http::bind(addr).await?;
        tokio::spawn(http::serve(l, state.clone(), sd.clone()));
    }
    if !a.oneshot {
        start_webhook(&cfg, &metrics, sd.clone()).await?;
    }
    let sources: Vec<String> = cfg
        .sources()
        .iter()
        .map(|s| format!("{} {}", s.kind, s.path.display()))
        .collect();
    info!(sources = ?sources, outputs = cfg.outputs.len(), oneshot = a.oneshot, "forwarder starting");
    loop {
        let (gen_tx, gen_rx) = watch::channel(false);
        let mut run = {
            let (cfg, metrics, oneshot) = (cfg.clone(), metrics.clone(), a.oneshot);
            tokio::spawn(async move { pipeline::run(&cfg, oneshot, &metrics, gen_rx).await })
        };
        // Wait for the end, a shutdown, or a valid new configuration.
        let next = loop {
            tokio::select! {
                r = &mut run => break Err(r),
                _ = crate::stopped(&mut sd) => {
                    let _ = gen_tx.send(true);
                    break Err((&mut run).await);
                }
                Some(why) = reload_rx.recv() => {
                    // Coalesce a burst of change events (an editor's truncate + write).
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    while reload_rx.try_recv().is_ok() {}
                    match config::load(a.config.config.as_deref(), &a.sets()) {
                        Ok(new) => match new.outputs.iter().try_for_each(|o| {
                            pipeline::load_policy(o)?;
                            // Filters must load, too (compiled into the cache).
                            pipeline::load_filters(&new, o, OutputMetrics::default())
                                .map(|_| ())
                        }) {
                            Ok(()) => match pipeline::restart_safe(&cfg) {
                                Ok(()) => break Ok((new, why)),
                                Err(e) => {
                                    warn!(reason = why, "configuration reload postponed by 5 s: {e}");
                                    let tx = reload_tx.clone();
                                    tokio::spawn(async move {
                                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                                        let _ = tx.try_send("postponed reload");
                                    });
                                }
                            },
                            Err(e) => {
                                metrics.config_reload("invalid");
                                error!(reason = why, error = %e, "configuration reload rejected; keeping the running configuration");
                            }
                        },
                        Err(e) => {
                            metrics.config_reload("invalid");
                            error!(reason = why, error = %e, "configuration reload rejected; keeping the running configuration");
                        }
                    }
                }
            }
        };
        match next {
            Ok((new, why)) => {
                info!(
                    reason = why,
                    "reloading configuration: draining outputs, then restarting them from their checkpoints"
                );
                let _ = gen_tx.send(true);
                run.await??;
                if new.webhook != cfg.webhook {
                    warn!("webhook settings changed: they take effect after a restart");
                }
                cfg = new;
                if let Ok(mut p) = state.probe.lock() {
                    *p = probe_for(&cfg, &metrics);
                }
                metrics.config_reload("ok");
                info!(outputs = cfg.outputs.len(), "configuration reloaded");
            }
            Err(joined) => {
                let reports = joined??;
                let mut ok = true;
                for r in &reports {
                    info!(output = %r.output, lines_read = r.lines_read, events_sent = r.events_sent,
                        events_acked = r.events_acked, dropped_invalid = r.dropped_invalid,
                        dropped_oversize = r.dropped_oversize,
                        buffered_bytes_max = r.buffered_bytes_max, complete = r.complete, "output finished");
                    ok &= r.complete || !a.oneshot;
                    if let Some(f) = &r.fatal {
                        error!(output = %r.output, "output stopped: {f}");
                        ok = false;
                    }
                }
                return Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
        }
    }
}

/// Sends a reload request when the config file's content changes (the
/// directory is watched: Kubernetes updates ConfigMap files by symlink swap).
fn watch_config(path: &Path, tx: mpsc::Sender<&'static str>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let file = path.to_path_buf();
    let mut last = std::fs::read(&file).ok();
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Reading the file below causes access events: not changes.
        if !crate::source::files::is_change(&ev) {
            return;
        }
        let now = std::fs::read(&file).ok();
        if now.is_some() && now != last {
            last = now;
            let _ = tx.try_send("config file changed");
        }
    })
    .ok()?;
    w.watch(&dir, notify::RecursiveMode::NonRecursive).ok()?;
    Some(w)
}

fn probe_for(cfg: &Config, metrics: &Metrics) -> http::Probe {
    http::Probe::Forward {
        outputs: cfg
            .pipeline_labels()
            .iter()
            .map(|l| metrics.output(l))
            .collect(),
        grace: cfg.readiness_grace,
    }
}

/// Starts the webhook source (when `webhook.listen` is set): it accepts
/// batches into the spool, which the pipelines read like the audit log.
async fn start_webhook(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    sd: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use crate::source::{spool::Spool, webhook};
    let w = &cfg.webhook;
    let Some(addr) = &w.listen else {
        return Ok(());
    };
    let dir = cfg.spool_dir();
    let spool = Spool::open(&dir, w.spool_max_bytes, w.spool_file_bytes, w.fsync)
        .context("opening the webhook spool")?;
    let m = metrics.webhook();
    m.spool_bytes.set(spool.used() as i64);
    let tls = match w.server_tls() {
        Some(t) => {
            let proves = t.client_ca_file.is_some();
            let acc = crate::transport::tls::ReloadingAcceptor::new(t).context("webhook TLS")?;
            Some((Arc::new(acc), proves))
        }
        None => {
            warn!(listen = %addr, "webhook without TLS (allow_plaintext = true): use only on loopback or behind TLS termination");
            None
        }
    };
    let st = Arc::new(webhook::Webhook {
        spool: Arc::new(std::sync::Mutex::new(spool)),
        max_body_bytes: w.max_body_bytes,
        budget: crate::transport::limits::Budget::new(w.memory_budget_bytes),
        processing: tokio::sync::Semaphore::new(w.max_concurrent_requests.max(1)),
        limits: webhook::WebhookLimits {
            max_connections: w.max_connections,
            max_connections_per_address: w.max_connections_per_address,
            handshake_timeout: w.handshake_timeout,
            min_transfer_rate: w.min_transfer_rate,
        },
        token: w.bearer_token_file.clone().map(webhook::TokenFile::new),
        metrics: m,
        warn: std::sync::Mutex::new(crate::ops::logging::RateLimit::with_burst(
            10,
            std::time::Duration::from_secs(10),
        )),
    });
    let l = webhook::bind(addr).await?;
    tokio::spawn(webhook::serve(l, tls, st, sd));
    Ok(())
}

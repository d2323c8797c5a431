//! The forward side's wiring. Each (source, output) pair is its own
//! pipeline (docs/ARCHITECTURE.md invariant 3), wired in [`output`]; this
//! file starts them, collects the webhook spool, and holds what the
//! commands ask of the pipelines (policy and filter loading, restart
//! safety, lag).

pub mod output;
pub mod process;

use crate::config::{Config, OutputSection};
use crate::filter::chain::Chain;
use crate::filter::policy::Policy;
use crate::forward::batch::Pending;
use crate::ops::metrics::{Metrics, OutputMetrics};
use crate::record::origin::Position;
use crate::record::time::EventTime;
use crate::source::checkpoint::{Checkpoint, CheckpointError};
use output::OutputPlan;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("state_dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("output {output:?}: {source}")]
    Policy {
        output: String,
        source: crate::filter::policy::PolicyError,
    },
    #[error("starting the tail thread: {0}")]
    Thread(std::io::Error),
    #[error("proxy: {0}")]
    Proxy(String),
    #[error("output {output:?}: {error}")]
    Sink { output: String, error: String },
    #[error("output {output:?}: {source}")]
    Filter {
        output: String,
        source: crate::filter::wasm::LoadError,
    },
}

/// What one output did.
#[derive(Debug, Clone)]
pub struct Report {
    pub output: String,
    pub lines_read: u64,
    pub events_sent: u64,
    pub events_acked: u64,
    pub dropped_invalid: u64,
    pub dropped_oversize: u64,
    /// High-water mark of bytes read but not yet acknowledged.
    pub buffered_bytes_max: u64,
    pub checkpoint: Option<Checkpoint>,
    /// Everything read was acknowledged (oneshot success).
    pub complete: bool,
    /// Why the output stopped on its own (a filter with `on_error = "stop"`).
    pub fatal: Option<String>,
}

/// Runs every output until `shutdown` (or, with `oneshot`, until caught up
/// and acknowledged).
pub async fn run(
    cfg: &Config,
    oneshot: bool,
    metrics: &Metrics,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<Report>, PipelineError> {
    let was = crate::ops::files::private_dir(&cfg.state_dir).map_err(|source| {
        PipelineError::StateDir {
            path: cfg.state_dir.clone(),
            source,
        }
    })?;
    if let Some(mode) = was {
        tracing::info!(state_dir = %cfg.state_dir.display(), was = format!("{mode:o}"),
            now = format!("{:o}", crate::ops::files::dir_mode()),
            "state_dir was open to other users: narrowed (it holds checkpoints and the webhook spool)");
    }
    // Every output stops on `shutdown`, or when one of them must stop.
    let (stop_all, all_rx) = watch::channel(false);
    let stop_all = Arc::new(stop_all);
    {
        let (mut sd, tx) = (shutdown.clone(), stop_all.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = crate::stopped(&mut sd) => { let _ = tx.send(true); }
                _ = tx.closed() => {}
            }
        });
    }
    let mut tasks = Vec::new();
    let sources = cfg.sources();
    for src in &sources {
        for o in &cfg.outputs {
            let label = src.label(&o.name);
            let p = OutputPlan {
                cfg,
                src,
                out: o,
                metrics: metrics.output(&label),
                label,
                oneshot,
                shutdown: all_rx.clone(),
                stop_all: stop_all.clone(),
            }
            .start()?;
            tasks.push(tokio::spawn(p));
        }
    }
    // Start-up is over (filters loaded): its code need not stay resident.
    let advised = crate::ops::memory::release_startup_pages();
    tracing::debug!(bytes = advised, "start-up pages released");
    // The webhook spool: delete what every output acknowledged.
    let spool_gc = sources.iter().find(|s| s.kind == "webhook").map(|src| {
        let dir = cfg.spool_dir();
        let cps: Vec<PathBuf> = cfg
            .outputs
            .iter()
            .map(|o| checkpoint_path(cfg, &src.label(&o.name)))
            .collect();
        (dir, cps, metrics.webhook())
    });
    let gc_task = spool_gc.clone().map(|(dir, cps, m)| {
        let mut stop = all_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => collect_spool(&dir, &cps, &m).await,
                    _ = crate::stopped(&mut stop) => return,
                }
            }
        })
    });
    drop(all_rx);
    let mut reports = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => reports.push(r),
            Err(e) => error!(error = %e, "output task failed"),
        }
    }
    if let Some(t) = gc_task {
        t.abort();
    }
    if let Some((dir, cps, m)) = spool_gc {
        collect_spool(&dir, &cps, &m).await;
    }
    Ok(reports)
}

/// `state_dir/checkpoint-<label>.json`.
pub fn checkpoint_path(cfg: &Config, label: &str) -> PathBuf {
    cfg.state_dir.join(format!("checkpoint-{label}.json"))
}

/// This output's stream id (sent with every chunk, see
/// `forward::protocol::identity`): created once, then read from
/// `<state_dir>/stream-<label>.id`, so events read again after a restart
/// carry the same identity.
pub fn stream_id(cfg: &Config, label: &str) -> Result<String, PipelineError> {
    let path = cfg.state_dir.join(format!("stream-{label}.id"));
    let err = |source| PipelineError::StateDir {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim();
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(id.to_string());
            }
            tracing::warn!(path = %path.display(), "stream id file is damaged: a new stream starts (the receiver cannot recognise events sent before)");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let id = hex::encode(rand::random::<[u8; 16]>());
    crate::ops::files::write_atomic(&path, id.as_bytes(), true).map_err(err)?;
    Ok(id)
}

async fn collect_spool(
    dir: &std::path::Path,
    cps: &[PathBuf],
    m: &crate::ops::metrics::WebhookMetrics,
) {
    let (dir, cps) = (dir.to_path_buf(), cps.to_vec());
    if let Ok((deleted, left)) =
        tokio::task::spawn_blocking(move || crate::source::spool::collect(&dir, &cps)).await
    {
        for d in &deleted {
            info!(path = %d.display(), "spool file acknowledged by every output: deleted");
        }
        m.spool_files_deleted.inc_by(deleted.len() as u64);
        m.spool_bytes.set(left as i64);
    }
}

/// Can the outputs be restarted from their checkpoints without losing
/// data? Not while an output's checkpointed file exists only as a descriptor
/// its tail holds open (rotated away and deleted): restarting would close it.
pub fn restart_safe(cfg: &Config) -> Result<(), String> {
    for src in cfg.sources() {
        let cands = crate::source::files::candidates(&src.path);
        for o in &cfg.outputs {
            let label = src.label(&o.name);
            if let Ok(Some(cp)) = Checkpoint::load(&checkpoint_path(cfg, &label))
                && !cands.iter().any(|c| cp.matches(c))
            {
                return Err(format!(
                    "output {label:?} is still reading {} (deleted from disk, kept open)",
                    cp.file.path.display()
                ));
            }
        }
    }
    Ok(())
}

/// Bytes of the audit log not yet acknowledged: the rest of the position's
/// file plus every file written after it (found by identity among the live
/// file and its rotated siblings). The position is the watermark, or before
/// the first acknowledgement the checkpoint it resumed from. Without
/// either, everything present.
pub fn lag_bytes(
    live: &std::path::Path,
    wm: Option<&Position>,
    resumed: Option<&Checkpoint>,
) -> u64 {
    let cands = crate::source::files::candidates(live);
    let at = match (wm, resumed) {
        (Some(wm), _) => cands
            .iter()
            .position(|c| !c.gz && c.dev == wm.file.dev && c.ino == wm.file.ino)
            .map(|i| (i, wm.offset)),
        (None, Some(cp)) => cands
            .iter()
            .position(|c| cp.matches(c))
            .map(|i| (i, cp.offset)),
        (None, None) => return cands.iter().map(|c| c.len).sum(),
    };
    match at {
        Some((i, offset)) => {
            // A `.gz` length is compressed: count its rest as unknown (0).
            let rest = if cands[i].gz {
                0
            } else {
                cands[i].len.saturating_sub(offset)
            };
            rest + cands[i + 1..].iter().map(|c| c.len).sum::<u64>()
        }
        // The position's file is gone or compressed: count what is newer.
        None => cands.iter().filter(|c| c.live).map(|c| c.len).sum(),
    }
}

/// `lag_bytes`, and `lag_seconds`: now minus the stageTimestamp of the
/// oldest event not yet acknowledged (0 when nothing is pending).
pub(crate) fn update_lag(m: &OutputMetrics, lag: u64, pending: &Pending) {
    m.lag_bytes.set(lag as i64);
    let secs = pending
        .oldest()
        .map_or(0.0, |t| (EventTime::now().as_f64() - t.as_f64()).max(0.0));
    m.lag_seconds.set(secs);
}

/// Loads an output's WASM filters (compiled forms cached under
/// `state_dir/wasm-cache`).
pub fn load_filters(
    cfg: &Config,
    o: &OutputSection,
    m: OutputMetrics,
) -> Result<Chain, PipelineError> {
    let cache = Some(cfg.state_dir.join("wasm-cache"));
    let specs = o
        .filters
        .iter()
        .map(|f| (f.spec(cache.clone()), f.on_error))
        .collect();
    Chain::load(specs, m).map_err(|source| PipelineError::Filter {
        output: o.name.clone(),
        source,
    })
}

/// Loads an output's policy (preset or file), logging lenient-decoding warnings.
pub fn load_policy(o: &OutputSection) -> Result<Option<Policy>, PipelineError> {
    let Some(spec) = o.policy_spec() else {
        return Ok(None);
    };
    let p = Policy::load(&spec).map_err(|source| PipelineError::Policy {
        output: o.name.clone(),
        source,
    })?;
    for w in p.warnings() {
        warn!(output = %o.name, policy = %spec, "{w}");
    }
    Ok(Some(p))
}

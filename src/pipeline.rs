//! The whole forward side in one place. Each output is its own pipeline
//! (DESIGN.md invariant 3):
//!
//! ```text
//! tail thread: Tail ──lines──► Processor (encode → batch) ──chunks (bounded)──►
//! tokio:       Client (send, acks) ──watermark──► checkpoint task ──► state_dir/checkpoint-<output>.json
//! ```

use crate::config::{Config, OutputKind, OutputSection, SourceSpec};
use crate::filter::policy::Policy;
use crate::forward::batch::{BatchConfig, Batcher, Recycler};
use crate::forward::client::{Client, ClientConfig, ClientEnd};
use crate::forward::server::Output;
use crate::metrics::{Metrics, OutputMetrics};
use crate::process::Processor;
use crate::source::checkpoint::{Checkpoint, CheckpointError};
use crate::source::tail::{Tail, TailConfig, TailEnd};
use crate::source::{LineSink, Position};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, watch};
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
    std::fs::create_dir_all(&cfg.state_dir).map_err(|source| PipelineError::StateDir {
        path: cfg.state_dir.clone(),
        source,
    })?;
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
            let p = output(
                cfg,
                src,
                o,
                &label,
                oneshot,
                metrics.output(&label),
                all_rx.clone(),
                stop_all.clone(),
            )?;
            tasks.push(tokio::spawn(p));
        }
    }
    // Start-up is over (filters loaded): its code need not stay resident.
    let advised = crate::memory::release_startup_pages();
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

async fn collect_spool(dir: &std::path::Path, cps: &[PathBuf], m: &crate::metrics::WebhookMetrics) {
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

/// Bytes of the audit log not yet acknowledged: the rest of the watermark's
/// file plus every file written after it (found by identity among the live
/// file and its rotated siblings). Without a watermark, everything present.
pub fn lag_bytes(live: &std::path::Path, wm: Option<&Position>) -> u64 {
    let cands = crate::source::files::candidates(live);
    let Some(wm) = wm else {
        return cands.iter().map(|c| c.len).sum();
    };
    let at = cands
        .iter()
        .position(|c| !c.gz && c.dev == wm.file.dev && c.ino == wm.file.ino);
    match at {
        Some(i) => {
            cands[i].len.saturating_sub(wm.offset)
                + cands[i + 1..].iter().map(|c| c.len).sum::<u64>()
        }
        // The watermark's file is gone or compressed: count what is newer.
        None => cands.iter().filter(|c| c.live).map(|c| c.len).sum(),
    }
}

fn update_lag(m: &OutputMetrics, lag: u64) {
    m.lag_bytes.set(lag as i64);
    let secs = if lag == 0 || m.last_acked_ts.get() == 0.0 {
        0.0
    } else {
        (crate::forward::protocol::EventTime::now().as_f64() - m.last_acked_ts.get()).max(0.0)
    };
    m.lag_seconds.set(secs);
}

/// Loads an output's WASM filters (compiled forms cached under
/// `state_dir/wasm-cache`).
pub fn load_filters(
    cfg: &Config,
    o: &OutputSection,
    m: OutputMetrics,
) -> Result<crate::filter::chain::Chain, PipelineError> {
    let cache = Some(cfg.state_dir.join("wasm-cache"));
    let specs = o
        .filters
        .iter()
        .map(|f| (f.spec(cache.clone()), f.on_error))
        .collect();
    crate::filter::chain::Chain::load(specs, m).map_err(|source| PipelineError::Filter {
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

/// Starts one output's pipeline; the returned future completes when it ends.
#[allow(clippy::too_many_arguments)]
fn output(
    cfg: &Config,
    src: &SourceSpec,
    o: &OutputSection,
    label: &str,
    oneshot: bool,
    m: OutputMetrics,
    shutdown: watch::Receiver<bool>,
    stop_all: Arc<watch::Sender<bool>>,
) -> Result<impl Future<Output = Report> + use<>, PipelineError> {
    let cp_path = checkpoint_path(cfg, label);
    let resume = Checkpoint::load(&cp_path)?;
    let policy = load_policy(o)?;
    let chain = load_filters(cfg, o, m.clone())?;
    let (chunk_tx, chunk_rx) = mpsc::channel(o.max_pending_chunks);
    let (wm_tx, mut wm_rx) = watch::channel::<Option<Position>>(None);
    let (conn_tx, _conn_rx) = watch::channel(false);

    // Source + processing on a thread of their own.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tail = Tail::new(
        TailConfig {
            path: src.path.clone(),
            read_buffer: cfg.tail.read_buffer_bytes,
            max_line_bytes: cfg.tail.max_line_bytes,
            poll_interval: cfg.tail.poll_interval,
            start_at: src.start_at,
            oneshot,
        },
        m.clone(),
        stop.clone(),
    );
    let waker = tail.waker();
    let proxy = o.proxy().map_err(PipelineError::Proxy)?;
    let recycler = Recycler::new(o.max_batch_bytes);
    let mut proc = Processor::new(
        Batcher::new(BatchConfig {
            tag: o.tag.clone(),
            max_events: o.max_batch_events,
            max_bytes: o.max_batch_bytes,
            flush_interval: o.flush_interval,
            gzip: o.gzip.then_some(o.gzip_level),
            recycler: recycler.clone(),
        }),
        policy,
        chunk_tx,
        cfg.tail.on_invalid,
        m.clone(),
    )
    .with_max_record(o.max_record_bytes)
    .with_filters(chain, o.filter_batch_events);
    let name = label.to_string();
    let tail_m = m.clone();
    let tail_thread = std::thread::Builder::new()
        .name(format!("tail-{name}"))
        .spawn(move || {
            tail_m.tail_running.set(1);
            let end = tail.run(resume, &mut proc);
            tail_m.tail_running.set(0);
            if end == Ok(TailEnd::Caught) {
                let _ = proc.idle();
            }
            let fatal = proc.fatal.take();
            if fatal.is_some() {
                let _ = stop_all.send(true);
            }
            (end, fatal)
        })
        .map_err(PipelineError::Thread)?;

    let client = Client::new(
        ClientConfig {
            host: o.host.clone(),
            port: o.port,
            connect_timeout: o.connect_timeout,
            ack_timeout: o.ack_timeout,
            require_ack: o.require_ack,
            max_in_flight: o.max_in_flight,
            retry_min: o.retry_min,
            retry_max: o.retry_max,
            servers: o.servers.iter().map(|s| (s.host.clone(), s.port)).collect(),
            rebalance: (o.balance == crate::config::Balance::RoundRobin)
                .then_some(o.rebalance_interval),
            tls: o.client_tls(),
            proxy,
            security: o
                .shared_key
                .as_ref()
                .map(|k| crate::forward::auth::ClientSecurity {
                    shared_key: k.clone(),
                    hostname: o.self_hostname.clone().unwrap_or_else(|| {
                        crate::forward::protocol::handshake::hostname("audit-forwarder")
                    }),
                    username: o.username.clone().unwrap_or_default(),
                    password: o.password.clone().unwrap_or_default(),
                }),
            local: match o.kind {
                OutputKind::Forward => None,
                OutputKind::Stdout => Some(Output::Stdout),
                OutputKind::File => o.path.clone().map(Output::File),
            },
            recycler,
        },
        m.clone(),
        chunk_rx,
        wm_tx,
        shutdown.clone(),
        conn_tx,
    );
    let interval = o.checkpoint_interval;
    let log_path = src.path.clone();
    let shutdown_timeout = cfg.shutdown_timeout;
    Ok(async move {
        let mut sd = shutdown.clone();
        let mut client = tokio::spawn(client.run());
        let mut saved: Option<Position> = None;
        // Save promptly when the watermark moves, at most once per interval.
        let mut next_save = tokio::time::Instant::now();
        let mut dirty = false;
        let mut wm_open = true;
        let mut lag_tick = tokio::time::interval(std::time::Duration::from_secs(1));
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let save = |p: Position| {
            let path = cp_path.clone();
            let m = m.clone();
            async move {
                let cp = Checkpoint::from_position(&p);
                let r = tokio::task::spawn_blocking(move || cp.save(&path).map(|_| cp)).await;
                match r {
                    Ok(Ok(cp)) => {
                        m.checkpoint_writes.inc();
                        Some(cp)
                    }
                    Ok(Err(e)) => {
                        m.checkpoint_failures.inc();
                        warn!(error = %e, "checkpoint write failed; will retry");
                        None
                    }
                    Err(_) => None,
                }
            }
        };
        let mut last_cp = None;
        let end = loop {
            tokio::select! {
                r = &mut client => break r.ok(),
                _ = lag_tick.tick() => {
                    let wm = wm_rx.borrow().clone();
                    let path = log_path.clone();
                    if let Ok(lag) = tokio::task::spawn_blocking(move || lag_bytes(&path, wm.as_ref())).await {
                        update_lag(&m, lag);
                    }
                }
                r = wm_rx.changed(), if wm_open => match r {
                    Ok(()) => dirty = true,
                    Err(_) => wm_open = false,
                },
                _ = tokio::time::sleep_until(next_save), if dirty => {
                    dirty = false;
                    let p = wm_rx.borrow_and_update().clone();
                    if let Some(p) = p {
                        let same = saved.as_ref().is_some_and(|s| Arc::ptr_eq(&s.file, &p.file) && s.offset == p.offset);
                        if !same {
                            match save(p.clone()).await {
                                Some(cp) => {
                                    saved = Some(p);
                                    last_cp = Some(cp);
                                }
                                None => dirty = true, // retry after the interval
                            }
                            next_save = tokio::time::Instant::now() + interval;
                        }
                    }
                }
                _ = crate::stopped(&mut sd) => {
                    stop.store(true, Ordering::Relaxed);
                    waker.wake();
                    info!(output = %name, timeout = ?shutdown_timeout, "stopping: waiting for outstanding acks");
                    match tokio::time::timeout(shutdown_timeout, &mut client).await {
                        Ok(r) => break r.ok(),
                        Err(_) => {
                            warn!(output = %name, "shutdown_timeout reached with chunks unacknowledged; they will be re-sent after restart");
                            client.abort();
                            break None;
                        }
                    }
                }
            }
        };
        // The tail ends once the client stops taking chunks (Stopped) or it caught up.
        stop.store(true, Ordering::Relaxed);
        waker.wake();
        let fatal = match tokio::task::spawn_blocking(move || tail_thread.join()).await {
            Ok(Ok((_, fatal))) => fatal,
            _ => None,
        };
        // Final save, unless it would only refresh the same position.
        let final_pos = wm_rx.borrow().clone();
        if let Some(p) = final_pos
            && !saved
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(&s.file, &p.file) && s.offset == p.offset)
            && let Some(cp) = save(p).await
        {
            last_cp = Some(cp);
        }
        let complete = end == Some(ClientEnd::Drained) && fatal.is_none();
        Report {
            output: name,
            lines_read: m.lines_read.get(),
            events_sent: m.events_sent.get(),
            events_acked: m.events_acked.get(),
            dropped_invalid: ["invalid_json", "invalid_utf8", "not_an_object", "too_deep"]
                .iter()
                .map(|r| m.dropped_count(r))
                .sum(),
            dropped_oversize: m.dropped_count("oversize"),
            buffered_bytes_max: m.buffered_bytes_max.get().max(0) as u64,
            checkpoint: last_cp,
            complete,
            fatal,
        }
    })
}

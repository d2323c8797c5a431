//! One output's pipeline, wired (docs/ARCHITECTURE.md, "Data flow"):
//!
//! ```text
//! tail thread: Tail ──lines──► Processor (policy → filters → encode → batch) ──chunks (bounded)──►
//! tokio:       Client (send, acks) ──watermark──► checkpoint loop ──► state_dir/checkpoint-<label>.json
//! ```
//!
//! The client is the Forward client (also for `stdout` and `file`), or for
//! `s3` and `syslog` the sink of that type; each reports the watermark the
//! same way.

use super::process::Processor;
use super::{PipelineError, Report, checkpoint_path, lag_bytes, load_filters, load_policy};
use crate::config::{Balance, Config, OutputKind, OutputSection, SourceSpec};
use crate::forward::auth::ClientSecurity;
use crate::forward::batch::{BatchConfig, Batcher, Chunk, Pending, Recycler};
use crate::forward::client::{Client, ClientConfig, ClientEnd};
use crate::forward::protocol::handshake::hostname;
use crate::forward::server::Output;
use crate::ops::metrics::OutputMetrics;
use crate::record::origin::Position;
use crate::sink::Progress;
use crate::sink::s3::{S3Config, S3Sink};
use crate::sink::syslog::{SyslogConfig, SyslogSink};
use crate::source::LineSink;
use crate::source::checkpoint::Checkpoint;
use crate::source::tail::{Tail, TailConfig, TailEnd, Waker};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// What one output's pipeline is built from.
pub struct OutputPlan<'a> {
    pub cfg: &'a Config,
    pub src: &'a SourceSpec,
    pub out: &'a OutputSection,
    /// `<output>` or `<source>-<output>`: names its checkpoint and metrics.
    pub label: String,
    pub oneshot: bool,
    pub metrics: OutputMetrics,
    pub shutdown: watch::Receiver<bool>,
    /// Stops every output (a filter with `on_error = "stop"` failed).
    pub stop_all: Arc<watch::Sender<bool>>,
}

/// The future that takes the chunks and ends with how it ended.
type ClientTask = std::pin::Pin<Box<dyn Future<Output = ClientEnd> + Send>>;

/// The tail thread's result: how it ended, and why the output must stop.
type TailThread = JoinHandle<(Result<TailEnd, crate::source::Stopped>, Option<String>)>;

impl OutputPlan<'_> {
    /// Starts the pipeline; the returned future completes when it ends.
    pub fn start(self) -> Result<impl Future<Output = Report> + use<>, PipelineError> {
        let (o, m) = (self.out, self.metrics.clone());
        let cp_path = checkpoint_path(self.cfg, &self.label);
        let resume = Checkpoint::load(&cp_path)?;
        let (chunk_tx, chunk_rx) = mpsc::channel(o.max_pending_chunks);
        let (wm_tx, wm_rx) = watch::channel::<Option<Position>>(None);
        let recycler = Recycler::new(o.max_batch_bytes);
        let pending = Pending::default();
        let stop = Arc::new(AtomicBool::new(false));
        let stream = super::stream_id(self.cfg, &self.label)?;
        let client = self.client(
            (recycler.clone(), pending.clone()),
            chunk_rx,
            wm_tx,
            &stream,
        )?;
        // Lag as of the checkpoint, before the first scrape can ask.
        super::update_lag(
            &m,
            lag_bytes(&self.src.path, None, resume.as_ref()),
            &pending,
        );
        let resumed = resume.clone();
        let (tail_thread, waker) = self.start_tail(
            resume,
            chunk_tx,
            (recycler, pending.clone()),
            stop.clone(),
            stream,
        )?;
        let cp = Checkpointer {
            name: self.label,
            path: cp_path,
            log_path: self.src.path.clone(),
            interval: o.checkpoint_interval,
            shutdown_timeout: self.cfg.shutdown_timeout,
            m,
            resumed,
            pending,
        };
        Ok(cp.run(client, wm_rx, self.shutdown, stop, waker, tail_thread))
    }

    /// The source and the processing, on a thread of their own.
    fn start_tail(
        &self,
        resume: Option<Checkpoint>,
        chunk_tx: mpsc::Sender<crate::forward::batch::Chunk>,
        (recycler, pending): (Recycler, Pending),
        stop: Arc<AtomicBool>,
        stream: String,
    ) -> Result<(TailThread, Waker), PipelineError> {
        let (cfg, o, m) = (self.cfg, self.out, &self.metrics);
        let mut tail = Tail::new(
            TailConfig {
                path: self.src.path.clone(),
                read_buffer: cfg.tail.read_buffer_bytes,
                max_line_bytes: cfg.tail.max_line_bytes,
                poll_interval: cfg.tail.poll_interval,
                start_at: self.src.start_at,
                oneshot: self.oneshot,
                max_held_bytes: cfg.tail.max_held_bytes,
            },
            m.clone(),
            stop,
        );
        let waker = tail.waker();
        let mut proc = Processor::new(
            Batcher::new(BatchConfig {
                tag: o.tag.clone(),
                max_events: o.max_batch_events,
                max_bytes: o.max_batch_bytes,
                flush_interval: o.flush_interval,
                // The sinks decode chunks in process: compressing them would
                // only cost CPU.
                gzip: (o.gzip && !matches!(o.kind, OutputKind::S3 | OutputKind::Syslog))
                    .then_some(o.gzip_level),
                recycler,
                pending,
                stream: Some(stream),
            }),
            load_policy(o)?,
            chunk_tx,
            cfg.tail.on_invalid,
            m.clone(),
        )
        .with_max_record(o.max_record_bytes)
        .with_filters(load_filters(cfg, o, m.clone())?, o.filter_batch_events);
        let (tail_m, stop_all) = (m.clone(), self.stop_all.clone());
        let thread = std::thread::Builder::new()
            .name(format!("tail-{}", self.label))
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
        Ok((thread, waker))
    }

    /// What takes the chunks: the Forward client, or the output type's sink.
    fn client(
        &self,
        (recycler, pending): (Recycler, Pending),
        rx: mpsc::Receiver<Chunk>,
        wm_tx: watch::Sender<Option<Position>>,
        stream: &str,
    ) -> Result<ClientTask, PipelineError> {
        let (o, m, sd) = (self.out, self.metrics.clone(), self.shutdown.clone());
        let sink_err = |e: String| PipelineError::Sink {
            output: o.name.clone(),
            error: e,
        };
        let progress =
            || Progress::new(m.clone(), pending.clone(), recycler.clone(), wm_tx.clone());
        Ok(match o.kind {
            OutputKind::S3 => {
                let s = o.s3.clone().unwrap_or_default();
                let cfg = S3Config::new(
                    &s,
                    self.label.clone(),
                    stream.to_string(),
                    (o.retry_min, o.retry_max),
                )
                .map_err(sink_err)?;
                Box::pin(S3Sink::new(cfg, m.clone(), rx, progress(), sd).run())
            }
            OutputKind::Syslog => {
                let cfg = syslog_config(o).map_err(sink_err)?;
                Box::pin(SyslogSink::new(cfg, m.clone(), rx, progress(), sd).run())
            }
            OutputKind::Forward | OutputKind::Stdout | OutputKind::File => {
                let cfg = self.client_config(recycler.clone(), pending.clone())?;
                let (conn_tx, _) = watch::channel(false);
                Box::pin(Client::new(cfg, m.clone(), rx, wm_tx, sd, conn_tx).run())
            }
        })
    }

    /// Where and how the Forward client sends: a Forward server (or
    /// several), or a local JSON-lines destination.
    fn client_config(
        &self,
        recycler: Recycler,
        pending: Pending,
    ) -> Result<ClientConfig, PipelineError> {
        let o = self.out;
        Ok(ClientConfig {
            host: o.host.clone(),
            port: o.port,
            connect_timeout: o.connect_timeout,
            ack_timeout: o.ack_timeout,
            require_ack: o.require_ack,
            max_in_flight: o.max_in_flight,
            retry_min: o.retry_min,
            retry_max: o.retry_max,
            servers: o.servers.iter().map(|s| (s.host.clone(), s.port)).collect(),
            rebalance: (o.balance == Balance::RoundRobin).then_some(o.rebalance_interval),
            tls: o.client_tls(),
            proxy: o.proxy().map_err(PipelineError::Proxy)?,
            security: o.shared_key.as_ref().map(|k| ClientSecurity {
                shared_key: k.clone(),
                hostname: o
                    .self_hostname
                    .clone()
                    .unwrap_or_else(|| hostname("audit-forwarder")),
                username: o.username.clone().unwrap_or_default(),
                password: o.password.clone().unwrap_or_default(),
            }),
            local: match o.kind {
                OutputKind::Forward | OutputKind::S3 | OutputKind::Syslog => None,
                OutputKind::Stdout => Some(Output::Stdout),
                OutputKind::File => o.path.clone().map(Output::File),
            },
            recycler,
            pending,
        })
    }
}

/// Commits the client's watermark: promptly when it moves, at most once
/// per `interval`, and once more at the end (never ahead of the acks:
/// ARCHITECTURE.md invariant 1). Also keeps the lag metrics.
struct Checkpointer {
    name: String,
    path: PathBuf,
    log_path: PathBuf,
    interval: Duration,
    shutdown_timeout: Duration,
    m: OutputMetrics,
    /// The checkpoint the output resumed from (lag before the first ack).
    resumed: Option<Checkpoint>,
    pending: Pending,
}

impl Checkpointer {
    async fn save(&self, p: Position) -> Option<Checkpoint> {
        let cp = Checkpoint::from_position(&p);
        let path = self.path.clone();
        match tokio::task::spawn_blocking(move || cp.save(&path).map(|_| cp)).await {
            Ok(Ok(cp)) => {
                self.m.checkpoint_writes.inc();
                Some(cp)
            }
            Ok(Err(e)) => {
                self.m.checkpoint_failures.inc();
                warn!(error = %e, "checkpoint write failed; will retry");
                None
            }
            Err(_) => None,
        }
    }

    async fn run(
        self,
        client: ClientTask,
        mut wm_rx: watch::Receiver<Option<Position>>,
        shutdown: watch::Receiver<bool>,
        stop: Arc<AtomicBool>,
        waker: Waker,
        tail_thread: TailThread,
    ) -> Report {
        let m = self.m.clone();
        let mut sd = shutdown;
        let mut client = tokio::spawn(client);
        let mut saved: Option<Position> = None;
        let same = |s: &Option<Position>, p: &Position| {
            s.as_ref()
                .is_some_and(|s| Arc::ptr_eq(&s.file, &p.file) && s.offset == p.offset)
        };
        // Save promptly when the watermark moves, at most once per interval.
        let mut next_save = tokio::time::Instant::now();
        let mut dirty = false;
        let mut wm_open = true;
        let mut lag_tick = tokio::time::interval(Duration::from_secs(1));
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_cp = None;
        let end = loop {
            tokio::select! {
                r = &mut client => break r.ok(),
                _ = lag_tick.tick() => {
                    let wm = wm_rx.borrow().clone();
                    let (path, cp) = (self.log_path.clone(), self.resumed.clone());
                    if let Ok(lag) = tokio::task::spawn_blocking(move || lag_bytes(&path, wm.as_ref(), cp.as_ref())).await {
                        super::update_lag(&m, lag, &self.pending);
                    }
                }
                r = wm_rx.changed(), if wm_open => match r {
                    Ok(()) => dirty = true,
                    Err(_) => wm_open = false,
                },
                _ = tokio::time::sleep_until(next_save), if dirty => {
                    dirty = false;
                    let p = wm_rx.borrow_and_update().clone();
                    if let Some(p) = p && !same(&saved, &p) {
                        match self.save(p.clone()).await {
                            Some(cp) => {
                                saved = Some(p);
                                last_cp = Some(cp);
                            }
                            None => dirty = true, // retry after the interval
                        }
                        next_save = tokio::time::Instant::now() + self.interval;
                    }
                }
                _ = crate::stopped(&mut sd) => {
                    stop.store(true, Ordering::Relaxed);
                    waker.wake();
                    info!(output = %self.name, timeout = ?self.shutdown_timeout, "stopping: waiting for outstanding acks");
                    match tokio::time::timeout(self.shutdown_timeout, &mut client).await {
                        Ok(r) => break r.ok(),
                        Err(_) => {
                            warn!(output = %self.name, "shutdown_timeout reached with chunks unacknowledged; they will be re-sent after restart");
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
            && !same(&saved, &p)
            && let Some(cp) = self.save(p).await
        {
            last_cp = Some(cp);
        }
        let complete = end == Some(ClientEnd::Drained) && fatal.is_none();
        Report {
            output: self.name,
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
    }
}

/// The syslog sink's settings: `[outputs.syslog]` plus the output's
/// connection keys (`host`, `port`, `tls*`, `proxy`, timeouts, retries).
fn syslog_config(o: &OutputSection) -> Result<SyslogConfig, String> {
    let s = o.syslog.clone().unwrap_or_default();
    Ok(SyslogConfig {
        relp: s.protocol == crate::config::SyslogProtocol::Relp,
        header: crate::sink::syslog::header(&s)?,
        window: s.window,
        host: o.host.clone(),
        port: o.port,
        tls: o.client_tls(),
        proxy: o.proxy()?,
        connect_timeout: o.connect_timeout,
        ack_timeout: o.ack_timeout,
        retry_min: o.retry_min,
        retry_max: o.retry_max,
        max_in_flight: o.max_in_flight,
    })
}

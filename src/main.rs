use anyhow::Context;
use audit_forwarder::cli::{Cli, Command, FilterCommand, ForwardArgs, PolicyCommand};
use audit_forwarder::config::{self, Config};
use audit_forwarder::forward::server::{Output, Server, ServerConfig};
use audit_forwarder::metrics::Metrics;
use audit_forwarder::{demo, http, logging, pipeline};
use clap::Parser;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

/// Raises the soft open-file limit to the hard one (as Go programs do): the
/// receiver holds one descriptor per connection (`max_connections` 1,024 by
/// default), the forwarder one per open rotated file.
fn raise_nofile_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Serves big blocks (256 KiB and more: batches, long lines, big events)
/// from mappings of their own, returned to the system when freed. glibc's
/// default raises this threshold with every such block freed; after that
/// they come from the heap arenas, where small allocations split the freed
/// blocks and the arenas keep growing: on the realistic benchmark log 11–16
/// MB of the forwarder's peak RSS was free memory kept by malloc. The
/// forwarder reuses its batch and event buffers, so few blocks are mapped.
/// At most two arenas: glibc gives each allocating thread its own (up to 8
/// per core), and the few threads here allocate little. The environment
/// (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_ARENA_MAX`) still wins.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: sets malloc parameters; called before other threads exist.
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
            }
        }
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    if let Ok(exe) = std::env::current_exe() {
        audit_forwarder::filter::wasm::compile_with(exe);
    }
    raise_nofile_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(cli: &Cli, cfg: &Config) {
    let level = cli
        .log_level
        .clone()
        .unwrap_or_else(|| cfg.log_level.clone());
    logging::init(&level, cli.log_format.unwrap_or(cfg.log_format));
}

/// First SIGTERM/SIGINT: graceful stop. Second: exit at once (checkpoints
/// are written by atomic rename, so this never corrupts them). SIGHUP: reload.
fn signals(reload: Option<mpsc::Sender<&'static str>>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        let mut n = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    if let Some(r) = &reload {
                        let _ = r.try_send("SIGHUP");
                    }
                    continue;
                }
            }
            if n == 0 {
                info!("signal received: shutting down (send again to exit immediately)");
                let _ = tx.send(true);
            } else {
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            }
            n += 1;
        }
    });
    rx
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
        if !audit_forwarder::source::files::is_change(&ev) {
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
    use audit_forwarder::source::{spool::Spool, webhook};
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
        Some(t) => Some(Arc::new(
            audit_forwarder::transport::tls::ReloadingAcceptor::new(t).context("webhook TLS")?,
        )),
        None => {
            warn!(listen = %addr, "webhook without TLS (allow_plaintext = true): use only on loopback or behind TLS termination");
            None
        }
    };
    let st = Arc::new(webhook::Webhook {
        spool: Arc::new(std::sync::Mutex::new(spool)),
        max_body_bytes: w.max_body_bytes,
        token: w.bearer_token_file.clone().map(webhook::TokenFile::new),
        metrics: m,
    });
    let l = webhook::bind(addr).await?;
    tokio::spawn(webhook::serve(l, tls, st, sd));
    Ok(())
}

async fn forward(cli: &Cli, a: &ForwardArgs) -> anyhow::Result<ExitCode> {
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
                _ = audit_forwarder::stopped(&mut sd) => {
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
                            pipeline::load_filters(&new, o, audit_forwarder::metrics::OutputMetrics::default())
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Forward(a) => forward(&cli, a).await,
        Command::Receive(a) => {
            let cfg = config::load(a.config.config.as_deref(), &a.sets())?;
            init_logging(&cli, &cfg);
            let r = &cfg.receive;
            let output = match r.output.as_str() {
                "stdout" | "-" => Output::Stdout,
                "null" => Output::Null,
                p if r.output_max_bytes > 0 => Output::Rotating {
                    path: p.into(),
                    max_bytes: r.output_max_bytes,
                    keep: r.output_keep_files,
                },
                p => Output::File(p.into()),
            };
            let metrics = Metrics::new();
            let server = Server::bind(
                ServerConfig {
                    listen: r.listen.clone(),
                    max_frame_bytes: r.max_frame_bytes,
                    max_decompressed_bytes: r.max_decompressed_bytes,
                    max_connections: r.max_connections,
                    idle_timeout: r.idle_timeout,
                    dedupe_window: r.dedupe_window,
                    output,
                    security: r.shared_key.as_ref().map(|k| {
                        audit_forwarder::forward::auth::ServerSecurity {
                            shared_key: k.clone(),
                            hostname: r.self_hostname.clone().unwrap_or_else(|| {
                                audit_forwarder::forward::protocol::handshake::hostname(
                                    "audit-forwarder-receiver",
                                )
                            }),
                            users: r
                                .users
                                .iter()
                                .map(|u| (u.username.clone(), u.password.clone()))
                                .collect(),
                        }
                    }),
                    tls: match (&r.tls_cert_file, &r.tls_key_file) {
                        (Some(c), Some(k)) => Some(audit_forwarder::transport::tls::ServerTls {
                            cert_file: c.clone(),
                            key_file: k.clone(),
                            client_ca_file: r.tls_client_ca_file.clone(),
                        }),
                        _ => None,
                    },
                },
                metrics.receiver(),
            )
            .await
            .context("starting the receiver")?;
            let sd = signals(None);
            if let Some(addr) = &cfg.http_listen {
                let st = Arc::new(http::State {
                    metrics: metrics.clone(),
                    probe: std::sync::Mutex::new(http::Probe::Receive),
                });
                tokio::spawn(http::serve(http::bind(addr).await?, st, sd.clone()));
            }
            server.serve(sd).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(a) => {
            let cfg = match config::load(a.config.as_deref(), &a.set) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("configuration invalid: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let mut problems: Vec<String> = cfg
                .outputs
                .iter()
                .filter_map(|o| pipeline::load_policy(o).err().map(|e| e.to_string()))
                .collect();
            // Certificates and keys parse, and each key matches its certificate.
            // Filters load, pass the version check and accept their config.
            for o in &cfg.outputs {
                for f in &o.filters {
                    if let Err(e) = audit_forwarder::filter::wasm::WasmFilter::load(f.spec(None)) {
                        problems.push(format!("output {:?}: {e}", o.name));
                    }
                }
            }
            for o in &cfg.outputs {
                let proxy_tls = match o.proxy() {
                    Ok(Some(audit_forwarder::transport::proxy::Proxy {
                        via: audit_forwarder::transport::proxy::Via::Https { tls, .. },
                        ..
                    })) => Some(tls),
                    _ => None,
                };
                for t in o.client_tls().into_iter().chain(proxy_tls) {
                    if let Err(e) = t.config() {
                        problems.push(format!("output {:?}: {e}", o.name));
                    }
                }
            }
            let r = &cfg.receive;
            if let (Some(c), Some(k)) = (&r.tls_cert_file, &r.tls_key_file) {
                let t = audit_forwarder::transport::tls::ServerTls {
                    cert_file: c.clone(),
                    key_file: k.clone(),
                    client_ca_file: r.tls_client_ca_file.clone(),
                };
                if let Err(e) = t.config() {
                    problems.push(format!("receive: {e}"));
                }
            }
            if let Some(t) = cfg.webhook.server_tls()
                && let Err(e) = t.config()
            {
                problems.push(format!("webhook: {e}"));
            }
            if let Some(t) = &cfg.webhook.bearer_token_file
                && let Err(e) =
                    audit_forwarder::source::webhook::TokenFile::new(t.clone()).current()
            {
                problems.push(format!("webhook: {e}"));
            }
            if problems.is_empty() {
                let sources: Vec<String> = cfg
                    .sources()
                    .iter()
                    .map(|s| format!("{} {}", s.kind, s.path.display()))
                    .collect();
                println!(
                    "configuration OK: {} output(s), sources: {}",
                    cfg.outputs.len(),
                    sources.join(", ")
                );
                Ok(ExitCode::SUCCESS)
            } else {
                for p in problems {
                    eprintln!("configuration invalid: {p}");
                }
                Ok(ExitCode::from(2))
            }
        }
        Command::Policy(PolicyCommand::Eval { policy, file }) => {
            logging::init(
                cli.log_level.as_deref().unwrap_or("warn"),
                cli.log_format.unwrap_or(logging::LogFormat::Text),
            );
            let p = audit_forwarder::filter::policy::Policy::load(policy)?;
            for w in p.warnings() {
                eprintln!("warning: {w}");
            }
            let input: Box<dyn std::io::BufRead> = match file {
                Some(f) => Box::new(std::io::BufReader::new(
                    std::fs::File::open(f).with_context(|| f.display().to_string())?,
                )),
                None => Box::new(std::io::stdin().lock()),
            };
            let mut out = std::io::stdout().lock();
            for line in std::io::BufRead::split(input, b'\n') {
                let line = line?;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let v = audit_forwarder::filter::apply::explain(&p, &line);
                match std::io::Write::write_all(&mut out, format!("{v}\n").as_bytes()) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                    r => r?,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Filter(FilterCommand::Compile { wasm, out }) => {
            audit_forwarder::filter::wasm::compile_to(wasm, out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Filter(FilterCommand::Test {
            wasm,
            config,
            batch,
            timeout,
            file,
        }) => {
            logging::init(
                cli.log_level.as_deref().unwrap_or("info"),
                cli.log_format.unwrap_or(logging::LogFormat::Text),
            );
            let mut table = serde_json::Map::new();
            for kv in config {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--config {kv:?}: expected KEY=VALUE"))?;
                let v = toml::from_str::<toml::Table>(&format!("v = {v}"))
                    .ok()
                    .and_then(|t| t.get("v").cloned())
                    .and_then(|v| serde_json::to_value(v).ok())
                    .unwrap_or_else(|| serde_json::Value::from(v));
                table.insert(k.trim().to_string(), v);
            }
            let config = serde_json::Value::Object(table);
            let specs = wasm
                .iter()
                .map(|p| {
                    let f = config::FilterSection {
                        wasm: p.clone(),
                        name: None,
                        config: config.clone(),
                        on_error: audit_forwarder::filter::chain::OnError::Stop,
                        timeout: *timeout,
                        max_memory_bytes: 256 << 20,
                    };
                    (f.spec(None), f.on_error)
                })
                .collect();
            let mut chain = audit_forwarder::filter::chain::Chain::load(
                specs,
                audit_forwarder::metrics::OutputMetrics::default(),
            )?;
            let input: Box<dyn std::io::BufRead> = match file {
                Some(f) => Box::new(std::io::BufReader::new(
                    std::fs::File::open(f).with_context(|| f.display().to_string())?,
                )),
                None => Box::new(std::io::stdin().lock()),
            };
            let mut out = std::io::stdout().lock();
            let mut lines = std::io::BufRead::split(input, b'\n').enumerate().peekable();
            while lines.peek().is_some() {
                let mut batch_lines = Vec::new();
                let mut first = 0;
                for (n, l) in lines.by_ref() {
                    let l = l?;
                    if l.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    if batch_lines.is_empty() {
                        first = n + 1;
                    }
                    batch_lines.push(l);
                    if batch_lines.len() >= (*batch).max(1) {
                        break;
                    }
                }
                if batch_lines.is_empty() {
                    break;
                }
                let results = match audit_forwarder::filter::chain::try_lines(
                    &mut chain,
                    first,
                    &batch_lines,
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("filter failed: {e}");
                        return Ok(ExitCode::from(1));
                    }
                };
                for r in results {
                    match std::io::Write::write_all(&mut out, format!("{r}\n").as_bytes()) {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                            return Ok(ExitCode::SUCCESS);
                        }
                        r => r?,
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(a) => {
            logging::init(
                cli.log_level.as_deref().unwrap_or("warn"),
                cli.log_format.unwrap_or(logging::LogFormat::Text),
            );
            demo::run(a.events, a.show, a.filter.clone()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

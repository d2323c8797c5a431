use anyhow::Context;
use audit_forwarder::cli::{Cli, Command, PolicyCommand};
use audit_forwarder::config::{self, Config};
use audit_forwarder::forward::server::{Output, Server, ServerConfig};
use audit_forwarder::metrics::Metrics;
use audit_forwarder::{demo, logging, pipeline};
use clap::Parser;
use std::process::ExitCode;
use tokio::sync::watch;
use tracing::{error, info};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
/// are written by atomic rename, so this never corrupts them).
fn signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if n == 0 {
                info!("signal received: shutting down (send again to exit immediately)");
                let _ = tx.send(true);
            } else {
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    rx
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Forward(a) => {
            let cfg = config::load(a.config.config.as_deref(), &a.sets())?;
            init_logging(&cli, &cfg);
            let metrics = Metrics::new();
            let sd = signals();
            info!(path = %cfg.tail.path.display(), outputs = cfg.outputs.len(), oneshot = a.oneshot, "forwarder starting");
            let reports = pipeline::run(&cfg, a.oneshot, &metrics, sd).await?;
            let mut ok = true;
            for r in &reports {
                info!(output = %r.output, lines_read = r.lines_read, events_sent = r.events_sent,
                    events_acked = r.events_acked, dropped_invalid = r.dropped_invalid,
                    dropped_oversize = r.dropped_oversize,
                    buffered_bytes_max = r.buffered_bytes_max, complete = r.complete, "output finished");
                ok &= r.complete || !a.oneshot;
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Receive(a) => {
            let cfg = config::load(a.config.config.as_deref(), &a.sets())?;
            init_logging(&cli, &cfg);
            let r = &cfg.receive;
            let output = match r.output.as_str() {
                "stdout" | "-" => Output::Stdout,
                "null" => Output::Null,
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
                },
                metrics.receiver(),
            )
            .await
            .context("starting the receiver")?;
            server.serve(signals()).await;
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
            let problems: Vec<String> = cfg
                .outputs
                .iter()
                .filter_map(|o| pipeline::load_policy(o).err().map(|e| e.to_string()))
                .collect();
            if problems.is_empty() {
                println!(
                    "configuration OK: {} output(s), tail.path = {}",
                    cfg.outputs.len(),
                    cfg.tail.path.display()
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
        Command::Demo(a) => {
            logging::init(
                cli.log_level.as_deref().unwrap_or("warn"),
                cli.log_format.unwrap_or(logging::LogFormat::Text),
            );
            demo::run(a.events, a.show).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

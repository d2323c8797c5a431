//! The subcommands, one file each; `main.rs` parses the command line
//! ([`cli`]) and calls [`run`].

pub mod check;
pub mod cli;
pub mod demo;
pub mod filter;
pub mod forward;
pub mod generate;
pub mod policy;
pub mod receive;

use crate::config::Config;
use crate::ops::logging::{self, LogFormat};
use cli::{Cli, Command};
use std::path::Path;
use std::process::ExitCode;
use tokio::sync::{mpsc, watch};
use tracing::info;

/// Runs the subcommand `cli` names.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Forward(a) => forward::run(&cli, a).await,
        Command::Receive(a) => receive::run(&cli, a).await,
        Command::Check(a) => check::run(a),
        Command::Policy(c) => policy::run(&cli, c),
        Command::Filter(c) => filter::run(&cli, c),
        Command::Generate(g) => generate::run(g),
        Command::Demo(a) => {
            init_tool_logging(&cli, "warn");
            demo::run(a.events, a.show, a.filter.clone()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Logging of the long-running commands: flags over the configuration;
/// also the modes of the files they create.
fn init_logging(cli: &Cli, cfg: &Config) {
    crate::ops::files::set_group_readable(cfg.group_readable);
    let level = cli
        .log_level
        .clone()
        .unwrap_or_else(|| cfg.log_level.clone());
    logging::init(&level, cli.log_format.unwrap_or(cfg.log_format));
}

/// Logging of the tools (`policy`, `filter`, `demo`): text at `level`
/// unless the flags say otherwise.
fn init_tool_logging(cli: &Cli, level: &str) {
    logging::init(
        cli.log_level.as_deref().unwrap_or(level),
        cli.log_format.unwrap_or(LogFormat::Text),
    );
}

/// The lines of `file`, or of stdin without one.
fn input(file: Option<&Path>) -> anyhow::Result<Box<dyn std::io::BufRead>> {
    use anyhow::Context;
    Ok(match file {
        Some(f) => Box::new(std::io::BufReader::new(
            std::fs::File::open(f).with_context(|| f.display().to_string())?,
        )),
        None => Box::new(std::io::stdin().lock()),
    })
}

/// Writes one line to `out`; `Ok(false)` when the reader went away (a
/// closed pipe ends the output quietly).
fn write_line(out: &mut impl std::io::Write, line: &str) -> std::io::Result<bool> {
    match out.write_all(format!("{line}\n").as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        r => r.map(|()| true),
    }
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

//! `audit-forwarder policy eval`: what a Kubernetes audit Policy decides
//! for each event of a file, as one JSON line per event.

use super::cli::{Cli, PolicyCommand};
use super::{init_tool_logging, input, write_line};
use crate::filter::{apply, policy::Policy};
use std::process::ExitCode;

pub fn run(cli: &Cli, c: &PolicyCommand) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Eval { policy, file } = c;
    init_tool_logging(cli, "warn");
    let p = Policy::load(policy)?;
    for w in p.warnings() {
        eprintln!("warning: {w}");
    }
    let mut out = std::io::stdout().lock();
    for line in std::io::BufRead::split(input(file.as_deref())?, b'\n') {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if !write_line(&mut out, &apply::explain(&p, &line).to_string())? {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

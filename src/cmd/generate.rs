//! `audit-forwarder generate`: shell completions (clap_complete) and the man
//! page (clap_mangen), both from the clap definitions in [`super::cli`], so
//! they never drift from the real flags.

use super::cli::{Cli, GenerateCommand};
use clap::CommandFactory;
use std::process::ExitCode;

pub fn run(g: &GenerateCommand) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut text = Vec::new();
    match g {
        GenerateCommand::Completions { shell } => {
            clap_complete::generate(*shell, &mut cmd, "audit-forwarder", &mut text);
        }
        GenerateCommand::Man => clap_mangen::Man::new(cmd).render(&mut text)?,
    }
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &text) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r?,
    }
    Ok(ExitCode::SUCCESS)
}

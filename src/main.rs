//! The binary: process set-up, command-line parsing, and the subcommand
//! (`src/cmd/`, one file each).

use audit_forwarder::cmd::{self, cli::Cli};
use clap::Parser;
use std::process::ExitCode;
use tracing::error;

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
    match rt.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

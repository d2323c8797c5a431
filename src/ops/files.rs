//! Modes of the files and directories that hold audit content (the
//! receiver's output, the webhook spool, the state directory): 0600 and
//! 0700, or 0640 and 0750 with `group_readable = true` (where a log
//! collector in the same group must read them). Applied when they are
//! created; existing ones keep their mode. The umask may remove more.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

static GROUP_READABLE: AtomicBool = AtomicBool::new(false);

/// Sets the process-wide choice (from the configuration, at start).
pub fn set_group_readable(on: bool) {
    GROUP_READABLE.store(on, Ordering::Relaxed);
}

pub fn file_mode() -> u32 {
    if GROUP_READABLE.load(Ordering::Relaxed) {
        0o640
    } else {
        0o600
    }
}

pub fn dir_mode() -> u32 {
    if GROUP_READABLE.load(Ordering::Relaxed) {
        0o750
    } else {
        0o700
    }
}

/// `create_dir_all` with [`dir_mode`] for the directories it creates.
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(dir_mode())
        .create(path)
}

/// Open options that create with [`file_mode`].
pub fn options() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.mode(file_mode());
    o
}

//! Modes of the files and directories that hold audit content (the
//! receiver's output, the webhook spool, the state directory): 0600 and
//! 0700, or 0640 and 0750 with `group_readable = true` (where a log
//! collector in the same group must read them). Applied when they are
//! created; existing files keep their mode. A private directory that
//! already exists (a volume: Kubernetes emptyDir is 0777, a new hostPath
//! 0755) is narrowed to the mode when this process owns it. The umask may
//! remove more.

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

/// Replaces `path` with `body` atomically: a temp file beside it (created
/// with [`file_mode`]), optionally fsynced with its directory, renamed over.
pub fn write_atomic(path: &Path, body: &[u8], fsync: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let r = options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(body)?;
            if fsync { f.sync_all() } else { Ok(()) }
        });
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    if fsync
        && let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// [`create_dir_all`], then, if the directory existed with more
/// permissions than [`dir_mode`] and this process owns it, narrows it.
/// Returns the mode it had when narrowed (for the log), or `Err` from the
/// creation.
pub fn private_dir(path: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    create_dir_all(path)?;
    let md = std::fs::metadata(path)?;
    let mode = md.mode() & 0o7777;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let extra = mode & 0o777 & !dir_mode();
    if extra == 0 || md.uid() != me {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(dir_mode()))?;
    Ok(Some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_existing_open_directory_is_narrowed_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(private_dir(&p).unwrap(), Some(0o777));
        let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, dir_mode());
        assert_eq!(private_dir(&p).unwrap(), None);
    }
}

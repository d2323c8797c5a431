//! Which files make up the audit log: the live file and its rotated siblings,
//! in the order they were written.
//!
//! kube-apiserver rotates with lumberjack: `audit.log` is renamed to
//! `audit-2006-01-02T15-04-05.000.log` (optionally gzipped to `.log.gz`
//! later) and a new `audit.log` is created.

use crate::record::origin::{FINGERPRINT_BYTES, fingerprint_of};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One file that may hold audit events.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub mtime: SystemTime,
    pub len: u64,
    pub gz: bool,
    /// The live file (the configured path) rather than a rotated sibling.
    pub live: bool,
}

impl Candidate {
    /// Hex sha256 of the first `n` bytes (decompressed for `.gz`), or `None`
    /// when the file is shorter or unreadable.
    pub fn head_fingerprint(&self, n: usize) -> Option<String> {
        let head = read_head(&self.path, self.gz, n).ok()?;
        (head.len() == n).then(|| fingerprint_of(&head))
    }
}

/// Reads up to `n` leading bytes (decompressed for gzip).
pub fn read_head(path: &Path, gz: bool, n: usize) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut out = Vec::with_capacity(n.min(FINGERPRINT_BYTES));
    if gz {
        flate2::read::MultiGzDecoder::new(f)
            .take(n as u64)
            .read_to_end(&mut out)?;
    } else {
        f.take(n as u64).read_to_end(&mut out)?;
    }
    Ok(out)
}

/// Splits `audit.log` into (`audit`, `.log`).
fn stem_ext(live: &Path) -> (String, String) {
    let name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rfind('.') {
        Some(i) if i > 0 => (name[..i].to_string(), name[i..].to_string()),
        _ => (name, String::new()),
    }
}

/// Whether a file notification means something changed. Access events
/// (open, read, close without writing) are not changes: our own listing and
/// reading cause them, and waking on them would make the reader spin.
pub fn is_change(res: &notify::Result<notify::Event>) -> bool {
    match res {
        Ok(ev) => !matches!(ev.kind, notify::EventKind::Access(_)),
        Err(_) => true,
    }
}

/// Identity of the live file, if it is a regular file.
pub fn live_id(live: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(live)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| (m.dev(), m.ino()))
}

/// Lists the rotated siblings of `live` (oldest first, by the timestamp in
/// their names) followed by `live` itself if it is a regular file. A sibling
/// present both plain and gzipped (compression in progress) is listed plain.
///
/// The list is consistent with one moment: if the live file was rotated
/// while the directory was read (its identity differs before and after),
/// the directory is read again, so a file renamed in between is never
/// missing from the list while its successor is in it.
pub fn candidates(live: &Path) -> Vec<Candidate> {
    let mut list = Vec::new();
    for _ in 0..100 {
        let before = live_id(live);
        list = list_once(live);
        let listed = list.last().filter(|c| c.live).map(|c| (c.dev, c.ino));
        if before == listed && live_id(live) == before {
            break;
        }
    }
    list
}

fn list_once(live: &Path) -> Vec<Candidate> {
    let dir = live
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (stem, ext) = stem_ext(live);
    let prefix = format!("{stem}-");
    let mut rotated: Vec<(String, Candidate)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let (key, gz) = if let Some(k) = rest.strip_suffix(&format!("{ext}.gz")) {
                (k.to_string(), true)
            } else if let Some(k) = rest.strip_suffix(ext.as_str()) {
                (k.to_string(), false)
            } else {
                continue;
            };
            if key.is_empty() {
                continue;
            }
            let path = e.path();
            if let Some(c) = candidate(&path, gz, false) {
                rotated.push((key, c));
            }
        }
    }
    rotated.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.gz.cmp(&b.1.gz)));
    rotated.dedup_by(|b, a| a.0 == b.0); // keeps the plain one (sorted first)
    let mut out: Vec<Candidate> = rotated.into_iter().map(|(_, c)| c).collect();
    if let Some(c) = candidate(live, false, true) {
        out.push(c);
    }
    out
}

/// The file at `path` as a candidate, if it is a regular file.
pub fn candidate_at(path: &Path, gz: bool, live: bool) -> Option<Candidate> {
    candidate(path, gz, live)
}

fn candidate(path: &Path, gz: bool, live: bool) -> Option<Candidate> {
    let m = std::fs::metadata(path).ok()?;
    if !m.is_file() {
        return None;
    }
    Some(Candidate {
        path: path.to_path_buf(),
        dev: m.dev(),
        ino: m.ino(),
        mtime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        len: m.len(),
        gz,
        live,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_rotated_siblings_in_order_then_live() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join("audit.log");
        for n in [
            "audit-2026-01-02T10-00-00.000.log",
            "audit-2026-01-01T10-00-00.000.log.gz",
            "audit-2026-01-03T10-00-00.000.log",
            "audit-2026-01-03T10-00-00.000.log.gz",
            "other.log",
            "audit.log.bak",
        ] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        std::fs::write(&live, b"y").unwrap();
        let names: Vec<_> = candidates(&live)
            .iter()
            .map(|c| c.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "audit-2026-01-01T10-00-00.000.log.gz",
                "audit-2026-01-02T10-00-00.000.log",
                "audit-2026-01-03T10-00-00.000.log",
                "audit.log"
            ]
        );
    }

    #[test]
    fn access_events_are_not_changes() {
        use notify::event::{AccessKind, CreateKind, EventKind, ModifyKind};
        let ev = |k| Ok(notify::Event::new(k));
        assert!(!is_change(&ev(EventKind::Access(AccessKind::Any))));
        assert!(is_change(&ev(EventKind::Create(CreateKind::File))));
        assert!(is_change(&ev(EventKind::Modify(ModifyKind::Any))));
    }

    #[test]
    fn a_rotation_during_listing_is_not_half_seen() {
        // Rotate on another thread as fast as possible while listing: every
        // list must hold every rotated file older than its live file.
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join("audit.log");
        std::fs::write(&live, b"0").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l2, s2) = (live.clone(), stop.clone());
        let rotator = std::thread::spawn(move || {
            for i in 1..=600u32 {
                let to = l2.with_file_name(format!("audit-2026-01-01T00-00-00.{i:04}.log"));
                std::fs::rename(&l2, &to).unwrap();
                std::fs::write(&l2, i.to_string()).unwrap();
                if s2.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
            }
        });
        for _ in 0..1500 {
            let c = candidates(&live);
            let Some(last) = c.last().filter(|c| c.live) else {
                continue;
            };
            let n: usize = std::fs::read_to_string(&last.path)
                .ok()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            // The live file written after rotation i holds i: rotated files
            // 1..=i must all be listed (when it was not replaced meanwhile).
            if live_id(&live) == Some((last.dev, last.ino)) {
                assert!(
                    c.len() > n,
                    "live {n} listed with only {} rotated files",
                    c.len() - 1
                );
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        rotator.join().unwrap();
    }

    #[test]
    fn a_directory_or_fifo_is_not_a_candidate() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join("audit.log");
        std::fs::create_dir(&live).unwrap();
        assert!(candidates(&live).is_empty());
    }
}

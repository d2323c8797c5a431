//! Which files make up the audit log: the live file and its rotated siblings,
//! in the order they were written.
//!
//! kube-apiserver rotates with lumberjack: `audit.log` is renamed to
//! `audit-2006-01-02T15-04-05.000.log` (optionally gzipped to `.log.gz`
//! later) and a new `audit.log` is created.

use super::{FINGERPRINT_BYTES, fingerprint_of};
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

/// Lists the rotated siblings of `live` (oldest first, by the timestamp in
/// their names) followed by `live` itself if it is a regular file. A sibling
/// present both plain and gzipped (compression in progress) is listed plain.
pub fn candidates(live: &Path) -> Vec<Candidate> {
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
    fn a_directory_or_fifo_is_not_a_candidate() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join("audit.log");
        std::fs::create_dir(&live).unwrap();
        assert!(candidates(&live).is_empty());
    }
}

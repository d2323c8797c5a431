//! The webhook source's spool: accepted batches appended as JSON lines (the
//! format of `--audit-log-path`) to `<spool_dir>/webhook.log`, made durable
//! before the webhook answers 200. The same tail and checkpoint machinery as
//! for the audit log forwards it; files are rotated lumberjack-style
//! (`webhook-<time>.log`) and a rotated file is deleted once every output's
//! checkpoint is past its end.

use super::checkpoint::Checkpoint;
use super::files::candidates;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The live spool file's name inside the spool directory.
pub const LIVE: &str = "webhook.log";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Accepting would exceed `spool_max_bytes`.
    #[error("spool full: {used} bytes waiting for acknowledgement, limit {max}")]
    Full { used: u64, max: u64 },
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The writer side of the spool (one per process).
pub struct Spool {
    dir: PathBuf,
    file: File,
    /// Bytes in the live file.
    len: u64,
    /// Bytes in every spool file, as of the last scan plus what was appended.
    used: u64,
    max: u64,
    file_bytes: u64,
    fsync: bool,
    last_rotated: String,
}

impl Spool {
    /// Opens (creating) the spool. A line torn by a crash during an append
    /// was never acknowledged to the apiserver: it is cut off.
    pub fn open(dir: &Path, max: u64, file_bytes: u64, fsync: bool) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io {
            path: dir.to_path_buf(),
            source,
        };
        crate::ops::files::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LIVE);
        let mut file = crate::ops::files::options()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let keep = complete_prefix(&mut file, len).map_err(io)?;
        if keep < len {
            tracing::warn!(path = %path.display(), bytes = len - keep, "spool: cutting off a torn last line (never acknowledged)");
            file.set_len(keep).map_err(io)?;
        }
        let mut s = Spool {
            dir: dir.to_path_buf(),
            file,
            len: keep,
            used: 0,
            max,
            file_bytes,
            fsync,
            last_rotated: String::new(),
        };
        s.used = s.scan();
        Ok(s)
    }

    /// Bytes in the spool as of the last scan or append.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Sums the sizes of the spool files on disk.
    fn scan(&self) -> u64 {
        candidates(&self.dir.join(LIVE)).iter().map(|c| c.len).sum()
    }

    /// Appends complete lines (each ending in `\n`) and makes them durable.
    /// Refuses with [`SpoolError::Full`] rather than exceed the limit; on an
    /// I/O error the file is cut back to where it was.
    pub fn append(&mut self, lines: &[u8]) -> Result<(), SpoolError> {
        let n = lines.len() as u64;
        if self.used + n > self.max {
            self.used = self.scan();
            if self.used + n > self.max {
                // Let the acknowledged part of the live file become deletable.
                if self.len > 0 {
                    self.rotate()?;
                }
                return Err(SpoolError::Full {
                    used: self.used,
                    max: self.max,
                });
            }
        }
        let r = self.file.write_all(lines).and_then(|()| {
            if self.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(source) = r {
            let _ = self.file.set_len(self.len);
            return Err(SpoolError::Io {
                path: self.dir.join(LIVE),
                source,
            });
        }
        self.len += n;
        self.used += n;
        if self.len >= self.file_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Renames the live file to `webhook-<UTC time>.log` (names strictly
    /// increasing, so they sort in writing order) and starts a new one.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        let io = |source| SpoolError::Io {
            path: self.dir.join(LIVE),
            source,
        };
        let mut t = chrono::Utc::now();
        let mut name;
        let mut tries = 0;
        loop {
            name = format!("webhook-{}.log", t.format("%Y-%m-%dT%H-%M-%S%.3f"));
            if name > self.last_rotated && !self.dir.join(&name).exists() {
                break;
            }
            t += chrono::Duration::milliseconds(1);
            tries += 1;
            if tries > 100_000 {
                return Err(io(std::io::Error::other("no free rotated file name")));
            }
        }
        std::fs::rename(self.dir.join(LIVE), self.dir.join(&name)).map_err(io)?;
        let file = crate::ops::files::options()
            .create(true)
            .read(true)
            .append(true)
            .open(self.dir.join(LIVE))
            .map_err(io)?;
        if self.fsync {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        self.file = file;
        self.len = 0;
        self.last_rotated = name;
        Ok(())
    }
}

/// Length of the prefix of `file` that ends with a newline (or is empty).
fn complete_prefix(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Deletes the rotated spool files that every output has acknowledged,
/// judged by the outputs' checkpoints. An output without a checkpoint, or
/// whose checkpoint matches no spool file, keeps everything. Returns the
/// deleted files and the bytes left in the spool.
pub fn collect(dir: &Path, checkpoints: &[PathBuf]) -> (Vec<PathBuf>, u64) {
    let live = dir.join(LIVE);
    let cands = candidates(&live);
    let mut upto = cands.len();
    for path in checkpoints {
        let done = match Checkpoint::load(path) {
            Ok(Some(cp)) => match cands.iter().position(|c| cp.matches(c)) {
                Some(i) if !cands[i].live && cp.offset >= cands[i].len => i + 1,
                Some(i) => i,
                None => 0,
            },
            _ => 0,
        };
        upto = upto.min(done);
    }
    let mut deleted = Vec::new();
    let mut left = 0;
    for (i, c) in cands.iter().enumerate() {
        if i < upto && !c.live {
            match std::fs::remove_file(&c.path) {
                Ok(()) => {
                    deleted.push(c.path.clone());
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %c.path.display(), error = %e, "spool: deleting an acknowledged file failed")
                }
            }
        }
        left += c.len;
    }
    (deleted, left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::origin::{FileInfo, Position};
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn checkpoint_at(path: &Path, file: &Path, offset: u64, cp: &Path) {
        let m = std::fs::metadata(file).unwrap();
        let info = Arc::new(FileInfo::new(path.to_path_buf(), m.dev(), m.ino(), false));
        let data = std::fs::read(file).unwrap();
        info.note_head(
            0,
            &data[..data.len().min(crate::record::origin::FINGERPRINT_BYTES)],
        );
        Checkpoint::from_position(&Position { file: info, offset })
            .save(cp)
            .unwrap();
    }

    #[test]
    fn rotates_refuses_when_full_and_collects_only_what_every_output_acked() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("spool");
        let mut s = Spool::open(&dir, 100, 30, true).unwrap();
        let line = b"{\"auditID\":\"0123456789\"}\n"; // 25 bytes
        s.append(line).unwrap();
        s.append(line).unwrap(); // 50 >= 30: rotated
        s.append(line).unwrap();
        s.append(line).unwrap(); // rotated again: 100 bytes used
        assert_eq!(s.used(), 100);
        let err = s.append(line).unwrap_err();
        assert!(
            matches!(
                err,
                SpoolError::Full {
                    used: 100,
                    max: 100
                }
            ),
            "{err}"
        );
        let files = names(&dir);
        assert_eq!(files.len(), 3, "{files:?}"); // two rotated + empty live
        let first = dir.join(&files[0]);
        let second = dir.join(&files[1]);

        // Output a acked all of the first file, output b only half of it.
        let (a, b) = (d.path().join("cp-a.json"), d.path().join("cp-b.json"));
        checkpoint_at(&dir.join(LIVE), &first, 50, &a);
        checkpoint_at(&dir.join(LIVE), &first, 25, &b);
        let (del, left) = collect(&dir, &[a.clone(), b.clone()]);
        assert!(del.is_empty());
        assert_eq!(left, 100);
        // Without any checkpoint for an output, nothing goes either.
        assert!(
            collect(&dir, &[a.clone(), d.path().join("none.json")])
                .0
                .is_empty()
        );

        checkpoint_at(&dir.join(LIVE), &first, 50, &b);
        let (del, left) = collect(&dir, &[a.clone(), b.clone()]);
        assert_eq!(del, vec![first.clone()]);
        assert_eq!(left, 50);
        assert!(second.exists());
        // Room again.
        s.append(line).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_cut_off_on_open() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(LIVE), b"{\"a\":1}\n{\"b\":").unwrap();
        let mut s = Spool::open(d.path(), 1 << 20, 1 << 20, true).unwrap();
        s.append(b"{\"c\":3}\n").unwrap();
        assert_eq!(
            std::fs::read(d.path().join(LIVE)).unwrap(),
            b"{\"a\":1}\n{\"c\":3}\n"
        );
    }
}

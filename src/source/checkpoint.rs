//! The persisted read position of one output: which file (by identity, not
//! name) and how far into it every event was acknowledged.
//!
//! Written atomically: temp file, fsync, rename, fsync of the directory, so a
//! crash leaves either the old or the new checkpoint, never a torn one.

use super::files::Candidate;
use crate::record::origin::Position;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Current checkpoint format version.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    #[serde(default)]
    pub gz: bool,
    /// Hex sha256 of the first `fingerprint_len` bytes.
    pub fingerprint: String,
    pub fingerprint_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub version: u32,
    /// Unix time in milliseconds when it was written.
    pub saved_at_ms: u64,
    pub file: FileRecord,
    pub offset: u64,
    /// The file had been rotated and `offset` is its end: nothing in it is
    /// unread, so its later deletion is no gap. Written only when true, so
    /// most checkpoints stay readable by earlier versions (which refuse
    /// unknown fields).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub complete: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("reading checkpoint {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is corrupt: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("checkpoint {path} has version {found}, this build reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("writing checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Checkpoint {
    pub fn from_position(p: &Position) -> Self {
        let (fingerprint, fingerprint_len) = p.file.fingerprint(p.offset);
        Checkpoint {
            version: VERSION,
            saved_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            file: FileRecord {
                path: p.file.path.clone(),
                dev: p.file.dev,
                ino: p.file.ino,
                gz: p.file.gz,
                fingerprint,
                fingerprint_len,
            },
            offset: p.offset,
            complete: p.file.final_len() == Some(p.offset),
        }
    }

    pub fn saved_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.saved_at_ms)
    }

    /// Loads a checkpoint; `Ok(None)` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>, CheckpointError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        #[derive(Deserialize)]
        struct V {
            version: u32,
        }
        let v: V = serde_json::from_slice(&text).map_err(|source| CheckpointError::Parse {
            path: path.into(),
            source,
        })?;
        if v.version != VERSION {
            return Err(CheckpointError::Version {
                path: path.into(),
                found: v.version,
            });
        }
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| CheckpointError::Parse {
                path: path.into(),
                source,
            })
    }

    /// Writes atomically: temp file, fsync, rename, directory fsync.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let err = |source| CheckpointError::Write {
            path: path.into(),
            source,
        };
        let body = serde_json::to_vec_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        crate::ops::files::write_atomic(path, &body, true).map_err(err)?;
        Ok(())
    }

    /// Does this candidate hold the checkpointed file? Same device and inode
    /// with the same leading bytes, or (after gzip or a copy) the same leading
    /// bytes alone.
    pub fn matches(&self, c: &Candidate) -> bool {
        if self.file.fingerprint_len == 0 {
            return c.dev == self.file.dev && c.ino == self.file.ino && c.gz == self.file.gz;
        }
        c.head_fingerprint(self.file.fingerprint_len).as_deref()
            == Some(self.file.fingerprint.as_str())
    }
}

/// Where to start after a restart.
#[derive(Debug)]
pub enum Resume {
    /// The checkpointed file was found: continue it at `offset`.
    Found { candidate: Candidate, offset: u64 },
    /// The checkpointed file is still there (same device and inode) but its
    /// leading bytes changed: it was truncated in place (copytruncate) and
    /// written again. Read it from the start.
    Rewritten { candidate: Candidate },
    /// The checkpointed file is gone: bytes after its offset may be lost.
    /// Continue with the first file written after the checkpoint, if any.
    Gap { next: Option<Candidate> },
}

/// Finds the checkpointed file among `cands` (oldest first).
pub fn resolve(cp: &Checkpoint, cands: &[Candidate]) -> Resume {
    if let Some(c) = cands.iter().find(|c| cp.matches(c)) {
        return Resume::Found {
            candidate: c.clone(),
            offset: cp.offset,
        };
    }
    // Same inode, other leading bytes, and nothing rotated after it: the
    // live file was truncated and rewritten in place. (A rotated sibling
    // after it would mean the inode was reused by a newer file instead.)
    if let Some(c) = cands.last()
        && c.live
        && c.dev == cp.file.dev
        && c.ino == cp.file.ino
        && cands
            .iter()
            .filter(|o| !o.live)
            .all(|o| o.mtime <= cp.saved_at())
    {
        return Resume::Rewritten {
            candidate: c.clone(),
        };
    }
    // The file is gone. kube-apiserver deletes the oldest rotated files
    // first, so every file still present is newer: read them all (at worst
    // a file is read again; never skipped).
    Resume::Gap {
        next: cands.first().cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::origin::FileInfo;
    use std::sync::Arc;

    #[test]
    fn save_load_round_trip_and_version_check() {
        let d = tempfile::tempdir().unwrap();
        let info = Arc::new(FileInfo::new(d.path().join("audit.log"), 1, 2, false));
        info.note_head(0, b"{\"a\":1}\n");
        let cp = Checkpoint::from_position(&Position {
            file: info,
            offset: 8,
        });
        assert_eq!(cp.file.fingerprint_len, 8);
        let p = d.path().join("cp.json");
        assert!(Checkpoint::load(&p).unwrap().is_none());
        cp.save(&p).unwrap();
        assert_eq!(Checkpoint::load(&p).unwrap(), Some(cp));
        std::fs::write(&p, br#"{"version":9}"#).unwrap();
        assert!(matches!(
            Checkpoint::load(&p),
            Err(CheckpointError::Version { found: 9, .. })
        ));
        std::fs::write(&p, b"{").unwrap();
        assert!(matches!(
            Checkpoint::load(&p),
            Err(CheckpointError::Parse { .. })
        ));
    }

    /// `complete` is set from the file's final length (a rotated file read
    /// to its end) and written only when true.
    #[test]
    fn complete_marks_a_rotated_file_read_to_its_end() {
        let f = Arc::new(FileInfo::new("/x/audit.log".into(), 1, 2, false));
        f.note_head(0, b"{\"a\":1}\n");
        let mid = Checkpoint::from_position(&Position {
            file: f.clone(),
            offset: 4,
        });
        assert!(!mid.complete);
        assert!(!serde_json::to_string(&mid).unwrap().contains("complete"));
        f.set_final_len(8);
        let end = Checkpoint::from_position(&Position {
            file: f.clone(),
            offset: 8,
        });
        assert!(end.complete);
        let text = serde_json::to_string(&end).unwrap();
        assert!(text.contains("\"complete\":true"), "{text}");
        assert_eq!(serde_json::from_str::<Checkpoint>(&text).unwrap(), end);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cp.json");
        mid.save(&p).unwrap();
        assert_eq!(Checkpoint::load(&p).unwrap(), Some(mid));
    }
}

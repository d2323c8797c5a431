//! What the receiver wrote, per sender stream and source file: the end
//! offset of the last event written ([`crate::forward::protocol::identity`]).
//! A resent chunk's events that end at or before it were written before and
//! are dropped, after a restart of either side when `receive.state_dir` is
//! set (the record is saved before each ack), while the receiver runs when
//! it is not. Bounded: [`MAX_SOURCES`] files per stream, [`MAX_STREAMS`]
//! streams (the least recently used are forgotten).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// Source files remembered per stream (a sender reads them in order, and
/// after a restart resumes within the last few).
pub const MAX_SOURCES: usize = 16;
/// Streams remembered (one per sender state directory and output).
pub const MAX_STREAMS: usize = 10_000;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct StreamState {
    /// Update counter when last used (for forgetting the least recent).
    used: u64,
    /// Oldest first.
    sources: Vec<Source>,
}

/// What was written of one source file of a stream.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub id: String,
    /// Everything up to here is accounted for, except the holes.
    pub end: u64,
    /// Byte ranges `(from, to]` of the source no chunk has covered yet,
    /// though later ones arrived (a chunk lost on the way, or not yet
    /// resent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holes: Vec<Hole>,
}

/// A range of a source not accounted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hole {
    pub from: u64,
    pub to: u64,
    /// When it opened (Unix seconds).
    pub since: u64,
    /// Logged as a gap already.
    #[serde(default)]
    pub reported: bool,
}

impl Source {
    /// Was the event ending at `e` written?
    pub fn has(&self, e: u64) -> bool {
        e <= self.end && !self.holes.iter().any(|h| h.from < e && e <= h.to)
    }

    /// Accounts for the chunk covering `(start, end]`.
    fn cover(&mut self, start: u64, end: u64, now: u64) {
        if start > self.end {
            self.holes.push(Hole {
                from: self.end,
                to: start,
                since: now,
                reported: false,
            });
        }
        self.end = self.end.max(end);
        let mut rest = Vec::with_capacity(self.holes.len());
        for h in self.holes.drain(..) {
            // Keep what the chunk does not cover.
            if h.from < start.min(h.to) {
                rest.push(Hole {
                    to: start.min(h.to),
                    ..h.clone()
                });
            }
            if h.to > end.max(h.from) {
                rest.push(Hole {
                    from: end.max(h.from),
                    ..h
                });
            }
        }
        rest.truncate(MAX_HOLES);
        self.holes = rest;
    }
}

/// Holes remembered per source (more means the sender is very broken; the
/// oldest are kept, the rest only counted as one).
pub const MAX_HOLES: usize = 64;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Holes across all streams, for the metrics and the gap log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HoleReport {
    pub streams: usize,
    pub open: usize,
    pub oldest_age_secs: u64,
    /// Holes open longer than the timeout, not reported before:
    /// (stream, source, from, to, age).
    pub new_gaps: Vec<(String, String, u64, u64, u64)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    version: u32,
    streams: BTreeMap<String, StreamState>,
    /// The write in progress when this was saved (file outputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Intent>,
}

/// A write to a file output, saved with the ends it records *before* the
/// bytes are written: at the next start, a file shorter than `after` means
/// the write did not complete; it is cut back to `before` and the ends are
/// rolled back, so the sender's resend is written once, whole.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Intent {
    pub path: PathBuf,
    pub ino: u64,
    pub before: u64,
    pub after: u64,
    /// (stream, what was known of the source before this write).
    #[serde(default)]
    pub rollback: Vec<(String, String, Option<Source>)>,
}

/// One chunk's record: it accounted for `(start, end]` of `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub stream: String,
    pub source: String,
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    #[error("receiver state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The receiver's record of every stream.
pub struct Streams {
    state: Mutex<(u64, HashMap<String, StreamState>)>,
    pending: Mutex<Option<Intent>>,
    /// One lock per stream, held from the check to the record, so two
    /// connections of one sender (an old one still being served, a new one
    /// resending) never both write the same events.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    path: Option<PathBuf>,
    /// Serialises saves.
    save: Mutex<()>,
}

impl Streams {
    /// In memory only.
    pub fn in_memory() -> Streams {
        Streams {
            state: Mutex::new((0, HashMap::new())),
            pending: Mutex::new(None),
            locks: Mutex::new(HashMap::new()),
            path: None,
            save: Mutex::new(()),
        }
    }

    /// Loaded from (and saved to) `<dir>/receiver-streams.json`. A damaged
    /// file is reported and set aside: what it recorded may then be
    /// written again once.
    pub fn open(dir: &Path) -> Result<Streams, StreamsError> {
        let path = dir.join("receiver-streams.json");
        let io = |source| StreamsError::Io {
            path: path.clone(),
            source,
        };
        crate::ops::files::private_dir(dir).map_err(io)?;
        let mut s = Streams::in_memory();
        match std::fs::read(&path) {
            Ok(b) => match serde_json::from_slice::<Saved>(&b) {
                Ok(saved) => {
                    let used = saved.streams.values().map(|s| s.used).max().unwrap_or(0);
                    s.state = Mutex::new((used, saved.streams.into_iter().collect()));
                    if let Some(i) = saved.pending {
                        s.path = Some(path.clone());
                        s.recover(i)?;
                    }
                }
                Err(e) => {
                    let aside = path.with_extension("json.damaged");
                    tracing::warn!(path = %path.display(), error = %e, moved_to = %aside.display(),
                        "receiver state is damaged: set aside; chunks resent now may be written a second time");
                    let _ = std::fs::rename(&path, &aside);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        s.path = Some(path);
        Ok(s)
    }

    /// Number of streams remembered.
    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.1.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for `stream`'s lock.
    pub async fn lock(&self, stream: &str) -> OwnedMutexGuard<()> {
        let m = {
            let mut l = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            if l.len() > 2 * MAX_STREAMS {
                l.retain(|_, m| Arc::strong_count(m) > 1);
            }
            l.entry(stream.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// What was written of `source` in `stream` (empty: nothing).
    pub fn written(&self, stream: &str, source: &str) -> Source {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1.get(stream)
            .and_then(|st| st.sources.iter().find(|x| x.id == source))
            .cloned()
            .unwrap_or_default()
    }

    /// Records `recs` and saves the record, with `intent` (a file write
    /// about to happen) or after the write (`None`). Returns what was known
    /// before, for [`Streams::rollback`].
    pub fn apply(
        &self,
        recs: &[Record],
        intent: Option<Intent>,
    ) -> Result<Vec<(String, String, Option<Source>)>, StreamsError> {
        let mut prev = Vec::with_capacity(recs.len());
        let now = unix_now();
        {
            let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for r in recs {
                g.0 += 1;
                let used = g.0;
                if !g.1.contains_key(&r.stream) && g.1.len() >= MAX_STREAMS {
                    let oldest =
                        g.1.iter()
                            .min_by_key(|(_, s)| s.used)
                            .map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        g.1.remove(&k);
                    }
                }
                let st = g.1.entry(r.stream.clone()).or_default();
                st.used = used;
                match st.sources.iter_mut().find(|x| x.id == r.source) {
                    Some(src) => {
                        prev.push((r.stream.clone(), r.source.clone(), Some(src.clone())));
                        src.cover(r.start, r.end, now);
                    }
                    None => {
                        // The first chunk of a source seen: where the sender
                        // began reading it, not a hole.
                        prev.push((r.stream.clone(), r.source.clone(), None));
                        if st.sources.len() >= MAX_SOURCES {
                            st.sources.remove(0);
                        }
                        st.sources.push(Source {
                            id: r.source.clone(),
                            end: r.end,
                            holes: Vec::new(),
                        });
                    }
                }
            }
        }
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = intent.map(|mut i| {
            i.rollback = prev.clone();
            i
        });
        self.persist()?;
        Ok(prev)
    }

    /// Puts back what was known before a write that failed or did not
    /// complete, and saves.
    pub fn rollback(&self, prev: &[(String, String, Option<Source>)]) -> Result<(), StreamsError> {
        {
            let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for (stream, source, before) in prev.iter().rev() {
                if let Some(st) = g.1.get_mut(stream) {
                    match before {
                        None => st.sources.retain(|x| x.id != *source),
                        Some(b) => {
                            if let Some(x) = st.sources.iter_mut().find(|x| x.id == *source) {
                                *x = b.clone();
                            }
                        }
                    }
                }
            }
        }
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.persist()
    }

    /// Counts the open holes; those open longer than `timeout` and not
    /// reported before are returned once (and marked).
    pub fn holes(&self, timeout: std::time::Duration) -> HoleReport {
        let now = unix_now();
        let mut r = HoleReport::default();
        let mut marked = false;
        {
            let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
            r.streams = g.1.len();
            for (stream, st) in g.1.iter_mut() {
                for src in &mut st.sources {
                    for h in &mut src.holes {
                        let age = now.saturating_sub(h.since);
                        r.open += 1;
                        r.oldest_age_secs = r.oldest_age_secs.max(age);
                        if !h.reported && age >= timeout.as_secs() {
                            h.reported = true;
                            marked = true;
                            r.new_gaps
                                .push((stream.clone(), src.id.clone(), h.from, h.to, age));
                        }
                    }
                }
            }
        }
        if marked {
            let _ = self.persist();
        }
        r
    }

    /// At start: completes the account of the write that was in progress.
    fn recover(&self, i: Intent) -> Result<(), StreamsError> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&i.path).ok().filter(|m| m.ino() == i.ino);
        match md.map(|m| m.len()) {
            Some(len) if len >= i.after => {
                *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.persist()
            }
            Some(len) => {
                if len > i.before {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&i.path)
                        .and_then(|f| f.set_len(i.before));
                    f.map_err(|source| StreamsError::Io {
                        path: i.path.clone(),
                        source,
                    })?;
                }
                tracing::warn!(path = %i.path.display(), written = len.saturating_sub(i.before), of = i.after - i.before,
                    "the receiver stopped in the middle of a write: its partial lines were removed; the sender resends them (never acknowledged)");
                self.rollback(&i.rollback)
            }
            None => {
                tracing::warn!(path = %i.path.display(),
                    "the output file of the write in progress at the last stop is gone or replaced: its events are accepted again when resent (they may be written twice)");
                self.rollback(&i.rollback)
            }
        }
    }

    fn persist(&self) -> Result<(), StreamsError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let _one = self.save.lock().unwrap_or_else(|e| e.into_inner());
        let saved = {
            let g = self.state.lock().unwrap_or_else(|e| e.into_inner());
            Saved {
                version: 1,
                streams: g.1.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                pending: self
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            }
        };
        let io = |source| StreamsError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec(&saved).map_err(|e| io(std::io::Error::other(e)))?;
        // Not fsynced: a killed process loses nothing the kernel has; a
        // machine crash may then write the last chunks a second time.
        crate::ops::files::write_atomic(path, &bytes, false).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_ends_survive_a_restart_and_stay_bounded() {
        let d = tempfile::tempdir().unwrap();
        let s = Streams::open(d.path()).unwrap();
        assert_eq!(s.written("a", "f1").end, 0);
        let rec = |stream: &str, source: &str, end| Record {
            stream: stream.into(),
            source: source.into(),
            start: 0,
            end,
        };
        s.apply(&[rec("a", "f1", 100)], None).unwrap();
        s.apply(&[rec("a", "f1", 50)], None).unwrap(); // never backwards
        for i in 0..MAX_SOURCES {
            s.apply(&[rec("b", &format!("g{i}"), i as u64)], None)
                .unwrap();
        }
        s.apply(&[rec("b", "new", 7)], None).unwrap();
        drop(s);
        let s = Streams::open(d.path()).unwrap();
        assert_eq!(s.written("a", "f1").end, 100);
        assert_eq!(
            s.written("b", "g0").end,
            0,
            "the oldest source was forgotten"
        );
        assert_eq!(s.written("b", "g1").end, 1);
        assert_eq!(s.written("b", "new").end, 7);
        assert_eq!(s.len(), 2);
    }

    /// A write that did not complete is cut back and its record rolled
    /// back at the next start; a complete one stays.
    #[test]
    fn an_interrupted_file_write_is_undone_at_start() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out.jsonl");
        std::fs::write(&out, b"{\"a\":1}\n").unwrap();
        let ino = std::fs::metadata(&out).unwrap().ino();
        let s = Streams::open(d.path()).unwrap();
        let r = |end| Record {
            stream: "s".into(),
            source: "f".into(),
            start: 0,
            end,
        };
        s.apply(&[r(10)], None).unwrap();
        let intent = |before, after| Intent {
            path: out.clone(),
            ino,
            before,
            after,
            rollback: vec![],
        };
        s.apply(&[r(20)], Some(intent(8, 24))).unwrap();
        // Killed after 5 of the 16 bytes.
        std::fs::write(&out, b"{\"a\":1}\n{\"b\":2").unwrap();
        drop(s);
        let s = Streams::open(d.path()).unwrap();
        assert_eq!(s.written("s", "f").end, 10, "rolled back");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            b"{\"a\":1}\n",
            "the partial line removed"
        );
        // A complete write stays.
        s.apply(&[r(20)], Some(intent(8, 16))).unwrap();
        std::fs::write(&out, b"{\"a\":1}\n{\"b\":2}\n").unwrap();
        drop(s);
        let s = Streams::open(d.path()).unwrap();
        assert_eq!(s.written("s", "f").end, 20);
        assert_eq!(std::fs::read(&out).unwrap().len(), 16);
    }

    /// A chunk that starts past what was accounted for opens a hole; the
    /// events in it are not taken for written; the chunk that covers it
    /// (the resend) closes it.
    #[test]
    fn holes_open_and_close() {
        let s = Streams::in_memory();
        let r = |start, end| Record {
            stream: "s".into(),
            source: "f".into(),
            start,
            end,
        };
        s.apply(&[r(0, 100)], None).unwrap();
        s.apply(&[r(200, 300)], None).unwrap(); // (100, 200] lost on the way
        let w = s.written("s", "f");
        assert_eq!(w.end, 300);
        assert!(w.has(100) && !w.has(150) && !w.has(200) && w.has(250));
        let rep = s.holes(std::time::Duration::ZERO);
        assert_eq!((rep.open, rep.new_gaps.len()), (1, 1));
        assert_eq!(rep.new_gaps[0].2..rep.new_gaps[0].3, 100..200);
        assert_eq!(
            s.holes(std::time::Duration::ZERO).new_gaps.len(),
            0,
            "reported once"
        );
        s.apply(&[r(100, 150)], None).unwrap(); // part of it resent
        assert_eq!(s.written("s", "f").holes.len(), 1);
        assert!(s.written("s", "f").has(150));
        s.apply(&[r(150, 200)], None).unwrap();
        assert_eq!(s.holes(std::time::Duration::ZERO).open, 0);
        assert!(s.written("s", "f").has(200));
    }

    #[test]
    fn a_damaged_file_is_set_aside() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("receiver-streams.json"), b"{not json").unwrap();
        let s = Streams::open(d.path()).unwrap();
        assert!(s.is_empty());
        assert!(d.path().join("receiver-streams.json.damaged").exists());
    }
}

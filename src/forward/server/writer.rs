//! The receiver's single output writer: lines from every connection go
//! through one thread, so they never interleave, and a connection learns when
//! its lines were written *and flushed* (ARCHITECTURE.md invariant 6).

use super::streams::{Intent, Record, Streams};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Where received records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Appended to a file that is rotated by size: `path` → `path.1` → … →
    /// `path.<keep>` (the oldest is deleted). Rotation happens between
    /// messages, so a line is never split.
    Rotating {
        path: PathBuf,
        max_bytes: u64,
        keep: usize,
    },
    /// Discarded (benchmarks).
    Null,
}

struct Req {
    data: Vec<u8>,
    /// What writing it records (exactly once, [`super::streams`]).
    record: Option<Record>,
    /// The outcome, and `data` emptied for the connection to reuse.
    done: oneshot::Sender<(std::io::Result<()>, Vec<u8>)>,
}

/// Where the writer thread puts lines.
trait Sink: Send {
    /// Writes one message's lines (never split across files).
    fn write_msg(&mut self, data: &[u8]) -> std::io::Result<()>;
    fn flush(&mut self) -> std::io::Result<()>;
    /// For a file: makes room for `total` bytes (rotating first if they
    /// would not fit) and says where they will go: (path, inode, length).
    fn position(&mut self, _total: u64) -> std::io::Result<Option<(PathBuf, u64, u64)>> {
        Ok(None)
    }
}

struct Plain(Box<dyn Write + Send>);

impl Sink for Plain {
    fn write_msg(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.write_all(data)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// An append-only file.
struct Append {
    path: PathBuf,
    file: std::fs::File,
}

impl Sink for Append {
    fn write_msg(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all(data)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
    fn position(&mut self, _total: u64) -> std::io::Result<Option<(PathBuf, u64, u64)>> {
        use std::os::unix::fs::MetadataExt;
        let md = self.file.metadata()?;
        Ok(Some((self.path.clone(), md.ino(), md.len())))
    }
}

/// A size-rotated output file.
struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: std::fs::File,
    size: u64,
}

impl Rotating {
    fn open(path: PathBuf, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        let file = crate::ops::files::options()
            .create(true)
            .append(true)
            .open(&path)?;
        let size = file.metadata()?.len();
        Ok(Rotating {
            path,
            max_bytes,
            keep,
            file,
            size,
        })
    }

    fn numbered(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    /// Rotates first when `n` more bytes would not fit.
    fn make_room(&mut self, n: u64) -> std::io::Result<()> {
        if self.max_bytes > 0 && self.size > 0 && self.size + n > self.max_bytes {
            self.file.flush()?;
            if self.keep == 0 {
                std::fs::remove_file(&self.path)?;
            } else {
                let _ = std::fs::remove_file(self.numbered(self.keep));
                for n in (1..self.keep).rev() {
                    let _ = std::fs::rename(self.numbered(n), self.numbered(n + 1));
                }
                std::fs::rename(&self.path, self.numbered(1))?;
            }
            *self = Rotating::open(self.path.clone(), self.max_bytes, self.keep)?;
        }
        Ok(())
    }
}

impl Sink for Rotating {
    fn write_msg(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.make_room(data.len() as u64)?;
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Handle to the writer thread.
/// Writes one batch of requests and keeps their records: for a file, saved
/// with the write's position first (undone at the next start if the write
/// did not complete); otherwise saved once the write is done.
fn write_batch(
    sink: &mut dyn Sink,
    batch: &[Req],
    recs: &[Record],
    streams: Option<&Streams>,
) -> std::io::Result<()> {
    let io = |e: super::streams::StreamsError| std::io::Error::other(e.to_string());
    let total: u64 = batch.iter().map(|r| r.data.len() as u64).sum();
    let mut undo = None;
    let keep = streams.filter(|_| !recs.is_empty());
    if let Some(st) = keep
        && let Some((path, ino, before)) = sink.position(total)?
    {
        let intent = Intent {
            path,
            ino,
            before,
            after: before + total,
            rollback: Vec::new(),
        };
        undo = Some(st.apply(recs, Some(intent)).map_err(io)?);
    }
    let mut r = Ok(());
    for req in batch {
        if r.is_ok() {
            r = sink.write_msg(&req.data);
        }
    }
    if r.is_ok() {
        r = sink.flush();
    }
    match (r, keep, undo) {
        (Ok(()), Some(st), None) => st.apply(recs, None).map(|_| ()).map_err(io),
        (Err(e), Some(st), Some(prev)) => {
            let _ = st.rollback(&prev);
            Err(e)
        }
        (r, ..) => r,
    }
}

#[derive(Clone)]
pub struct Writer {
    tx: std::sync::mpsc::SyncSender<Req>,
}

impl Writer {
    /// Starts the writer thread.
    /// A writer; with `streams`, requests' records are kept there: saved
    /// with the write's position before a file write, after a write to
    /// stdout.
    pub fn start(output: Output, streams: Option<Arc<Streams>>) -> std::io::Result<Writer> {
        let mut sink: Box<dyn Sink> = match &output {
            Output::Stdout => Box::new(Plain(Box::new(std::io::stdout()))),
            Output::File(p) => Box::new(Append {
                path: p.clone(),
                file: crate::ops::files::options()
                    .create(true)
                    .append(true)
                    .open(p)?,
            }),
            Output::Null => Box::new(Plain(Box::new(std::io::sink()))),
            Output::Rotating {
                path,
                max_bytes,
                keep,
            } => Box::new(Rotating::open(path.clone(), *max_bytes, *keep)?),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Req>(64);
        std::thread::Builder::new()
            .name("receiver-writer".into())
            .spawn(move || {
                let mut batch = Vec::new();
                while let Ok(first) = rx.recv() {
                    batch.push(first);
                    // Group commit: one flush for everything already waiting.
                    while batch.len() < 64 {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    let recs: Vec<Record> = batch.iter().filter_map(|r| r.record.clone()).collect();
                    let r = write_batch(sink.as_mut(), &batch, &recs, streams.as_deref());
                    for mut req in batch.drain(..) {
                        req.data.clear();
                        let res = match &r {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        };
                        let _ = req.done.send((res, req.data));
                    }
                }
            })?;
        Ok(Writer { tx })
    }

    /// Writes and flushes `data`; returns when both are done, with `data`'s
    /// buffer emptied for reuse (a fresh buffer per message would take new
    /// pages from the kernel: a page fault every 4 KiB written).
    pub async fn write(&self, data: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        self.write_recorded(data, None).await
    }

    /// [`Writer::write`], keeping `record` with the write (see
    /// [`Writer::start`]); `data` may be empty.
    pub async fn write_recorded(
        &self,
        data: Vec<u8>,
        record: Option<Record>,
    ) -> (std::io::Result<()>, Vec<u8>) {
        let (done, rx) = oneshot::channel();
        let tx = self.tx.clone();
        // The channel is bounded: block a pool thread, not the runtime.
        let stopped = || std::io::Error::other("writer stopped");
        match tokio::task::spawn_blocking(move || tx.send(Req { data, record, done })).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return (Err(stopped()), Vec::new()),
            Err(e) => return (Err(std::io::Error::other(e)), Vec::new()),
        }
        rx.await.unwrap_or_else(|_| (Err(stopped()), Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer comes back emptied, the same allocation: a connection
    /// reuses it for its next message instead of faulting in new pages.
    #[tokio::test]
    async fn write_gives_the_buffer_back_for_reuse() {
        let path = std::env::temp_dir().join(format!("af-writer-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let w = Writer::start(Output::File(path.clone()), None).unwrap();
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(b"{\"a\":1}\n");
        let ptr = buf.as_ptr();
        let (r, back) = w.write(buf).await;
        r.unwrap();
        assert!(back.is_empty());
        assert_eq!(back.as_ptr(), ptr);
        assert_eq!(back.capacity(), 1 << 16);
        let mut buf = back;
        buf.extend_from_slice(b"{\"b\":2}\n");
        let (r, _) = w.write(buf).await;
        r.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        let _ = std::fs::remove_file(&path);
    }
}

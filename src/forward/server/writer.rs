//! The receiver's single output writer: lines from every connection go
//! through one thread, so they never interleave, and a connection learns when
//! its lines were written *and flushed* (DESIGN.md invariant 6).

use std::io::Write;
use std::path::PathBuf;
use tokio::sync::oneshot;

/// Where received records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded (benchmarks).
    Null,
}

struct Req {
    data: Vec<u8>,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: std::sync::mpsc::SyncSender<Req>,
}

impl Writer {
    /// Starts the writer thread.
    pub fn start(output: Output) -> std::io::Result<Writer> {
        let mut sink: Box<dyn Write + Send> = match &output {
            Output::Stdout => Box::new(std::io::stdout()),
            Output::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            Output::Null => Box::new(std::io::sink()),
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
                    let mut r = Ok(());
                    for req in &batch {
                        if r.is_ok() {
                            r = sink.write_all(&req.data);
                        }
                    }
                    if r.is_ok() {
                        r = sink.flush();
                    }
                    for req in batch.drain(..) {
                        let _ = req.done.send(match &r {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        });
                    }
                }
            })?;
        Ok(Writer { tx })
    }

    /// Writes and flushes `data`; returns when both are done.
    pub async fn write(&self, data: Vec<u8>) -> std::io::Result<()> {
        let (done, rx) = oneshot::channel();
        let tx = self.tx.clone();
        // The channel is bounded: block a pool thread, not the runtime.
        tokio::task::spawn_blocking(move || tx.send(Req { data, done }))
            .await
            .map_err(std::io::Error::other)?
            .map_err(|_| std::io::Error::other("writer stopped"))?;
        rx.await
            .map_err(|_| std::io::Error::other("writer stopped"))?
    }
}

//! The source stage: follow the kube-apiserver audit log through rotation and
//! hand complete lines, each with the file position after it, to a sink.

pub mod checkpoint;
pub mod files;
pub mod holder;
pub mod spool;
pub mod tail;
pub mod webhook;

use crate::record::origin::FileInfo;
use std::sync::Arc;

/// Why bytes of the log were passed over without becoming an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A line longer than `max_line_bytes`.
    Oversize,
    /// An empty or blank line: nothing to forward, but the position moves.
    Blank,
}

/// Returned by a sink when the pipeline is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// Receives what the tail reads, in file order.
pub trait LineSink {
    /// Reading begins (or resumes) at `offset` of `file`: the position to
    /// checkpoint before any line is read, so that a crash before the first
    /// ack still finds this file again after it rotates.
    fn start(&mut self, file: &Arc<FileInfo>, offset: u64) -> Result<(), Stopped>;
    /// One complete line (without its newline); `end` is the offset after it.
    fn line(&mut self, line: &[u8], file: &Arc<FileInfo>, end: u64) -> Result<(), Stopped>;
    /// Bytes skipped (e.g. an oversize line); the position moves past them.
    fn skipped(
        &mut self,
        why: Skip,
        bytes: u64,
        file: &Arc<FileInfo>,
        end: u64,
    ) -> Result<(), Stopped>;
    /// The reader caught up with the writer: a good moment to flush.
    fn idle(&mut self) -> Result<(), Stopped>;
    /// A DATA GAP was reported (already logged and counted): passed on to
    /// whoever should know (the Forward output tells the receiver).
    fn gap(&mut self, _gap: &crate::record::origin::Gap) -> Result<(), Stopped> {
        Ok(())
    }
}

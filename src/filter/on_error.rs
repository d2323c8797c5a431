//! What a failed filter call or an unusable verdict does (`on_error`):
//! `keep` (the default: audit data is never lost because a filter broke),
//! `drop`, or `stop` (the output stops; nothing after the last acknowledged
//! event is committed, so a restart resumes there). Each is logged and
//! counted.

use super::item::Item;
use crate::ops::logging::RateLimit;
use crate::ops::metrics::OutputMetrics;
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

/// What happens to a batch (or an event) when its filter fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Forward the events as they were before this filter.
    #[default]
    Keep,
    /// Drop them (counted, reason `filter_error`).
    Drop,
    /// Stop the output (the process exits non-zero after the acked part
    /// is checkpointed).
    Stop,
}

/// A filter with `on_error = "stop"` failed: the output must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {filter}: {reason}")]
pub struct Stop {
    pub filter: String,
    pub reason: String,
}

/// Logs, counts and applies filter failures by each filter's `on_error`.
pub(super) struct Failures {
    m: OutputMetrics,
    warn: RateLimit,
}

impl Failures {
    pub(super) fn new(m: OutputMetrics) -> Self {
        Failures {
            m,
            warn: RateLimit::default(),
        }
    }

    /// Logs and counts a failure; `Err` when the output must stop.
    pub(super) fn failed(
        &mut self,
        name: &str,
        on_error: OnError,
        msg: &str,
        reason: &str,
        events: usize,
    ) -> Result<(), Stop> {
        self.m.filter_error(name, reason);
        if on_error == OnError::Stop {
            error!(
                filter = name,
                reason,
                events,
                "filter failed with on_error = \"stop\": stopping the output: {msg}"
            );
            return Err(Stop {
                filter: name.to_string(),
                reason: msg.to_string(),
            });
        }
        if let Some(n) = self.warn.allow() {
            warn!(filter = name, reason, events, on_error = ?on_error, suppressed = n, "filter failed: {msg}");
        }
        Ok(())
    }

    /// An event whose filter failed (and `on_error` is not `stop`): drop
    /// it, or keep it as the filter saw it (it is still in `it`).
    pub(super) fn fallback(&self, on_error: OnError, it: &mut Item) {
        if on_error == OnError::Drop {
            it.dropped = true;
            self.m.dropped("filter_error", 1);
        }
    }
}

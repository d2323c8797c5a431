//! Logging set-up and rate limiting of repeated warnings.

use std::time::{Duration, Instant};

/// Lets a repeated message through at most `burst` times per `every`,
/// counting what it held back so the next line can say how many were
/// suppressed.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    burst: u32,
    /// Start of the current window and lines let through in it.
    window: Option<Instant>,
    passed: u32,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(every: Duration) -> Self {
        RateLimit::with_burst(1, every)
    }

    /// The first `burst` lines of each `every` in full, then a count.
    pub fn with_burst(burst: u32, every: Duration) -> Self {
        RateLimit {
            every,
            burst: burst.max(1),
            window: None,
            passed: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged now (`n` = lines suppressed since
    /// the last one), `None` when it should be held back.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.window {
            Some(t) if now.duration_since(t) < self.every => {
                if self.passed < self.burst {
                    self.passed += 1;
                    return Some(std::mem::take(&mut self.suppressed));
                }
                self.suppressed += 1;
                None
            }
            _ => {
                self.window = Some(now);
                self.passed = 1;
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(Duration::from_secs(10))
    }
}

/// Colour (ANSI escapes) only on a terminal, and not when `NO_COLOR` is
/// set to anything but "" (no-color.org): container logs and log pipelines
/// get plain text.
fn colour(stderr_is_tty: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_tty && no_color.is_none_or(|v| v.is_empty())
}

/// Log output format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber (logs go to stderr: stdout carries
/// the receiver's events).
pub fn init(level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_target(false);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_suppressed() {
        let mut r = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        r.window = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(r.allow(), Some(2));
    }

    #[test]
    fn a_burst_passes_then_lines_are_counted() {
        let mut r = RateLimit::with_burst(3, Duration::from_secs(3600));
        assert_eq!(
            (0..5).map(|_| r.allow()).collect::<Vec<_>>(),
            [Some(0), Some(0), Some(0), None, None]
        );
        assert_eq!(r.suppressed, 2);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}

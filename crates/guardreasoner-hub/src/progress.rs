//! Telling the user what a fetch is doing.

use std::io::Write;
use std::time::{Duration, Instant};

/// Receives status lines and byte progress from long operations.
pub trait Progress {
    /// A status line ("downloading X", "verifying Y").
    fn message(&mut self, text: &str);
    /// `done` of `total` bytes (total `None` when unknown) of the current step.
    fn bytes(&mut self, label: &str, done: u64, total: Option<u64>);
    /// The current step finished.
    fn finish(&mut self) {}
}

/// Discards everything (tests, library callers with their own UI).
#[derive(Debug, Default)]
pub struct QuietProgress;

impl Progress for QuietProgress {
    fn message(&mut self, _text: &str) {}
    fn bytes(&mut self, _label: &str, _done: u64, _total: Option<u64>) {}
}

/// Writes to stderr, so stdout stays clean for a command's output: status lines as they come,
/// byte progress redrawn in place at most a few times a second.
#[derive(Debug)]
pub struct StderrProgress {
    last_draw: Option<Instant>,
    drawn: bool,
}

impl StderrProgress {
    pub fn new() -> Self {
        Self {
            last_draw: None,
            drawn: false,
        }
    }
}

impl Default for StderrProgress {
    fn default() -> Self {
        Self::new()
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Progress for StderrProgress {
    fn message(&mut self, text: &str) {
        self.finish();
        eprintln!("guardreasoner: {text}");
    }

    fn bytes(&mut self, label: &str, done: u64, total: Option<u64>) {
        let complete = total.is_some_and(|t| done >= t);
        let due = self
            .last_draw
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(250));
        if !due && !complete {
            return;
        }
        self.last_draw = Some(Instant::now());
        let line = match total {
            Some(t) if t > 0 => format!(
                "  {label}: {:5.1} / {:.1} MiB ({:3.0}%)",
                mib(done),
                mib(t),
                100.0 * done as f64 / t as f64
            ),
            _ => format!("  {label}: {:5.1} MiB", mib(done)),
        };
        let mut err = std::io::stderr().lock();
        // Progress output is best effort: a closed stderr must not fail the download.
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
        self.last_draw = None;
    }
}

//! What a run reports: the progress line on a terminal, the JSONL log rewritten to the resumed
//! step, and the loss curve.

use super::LogRecord;
use crate::TrainError;
use std::io::{IsTerminal, Write};
use std::path::Path;

pub(super) fn progress_line(r: &LogRecord, total: usize, tokens: usize, secs: f64) {
    let width = 30;
    let done = (r.step * width) / total.max(1);
    let bar: String = "#".repeat(done) + &".".repeat(width - done);
    let line = format!(
        "[{bar}] {}/{} loss {:.4} lr {:.2e} |g| {:.3} {:.0} tok/s",
        r.step,
        total,
        r.loss,
        r.lr,
        r.grad_norm,
        tokens as f64 / secs.max(1e-9)
    );
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r{line}");
    } else {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

pub(super) fn rewrite_log(path: &Path, records: &[LogRecord]) -> Result<(), TrainError> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).map_err(|e| TrainError::Data(e.to_string()))?);
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Steps averaged by the loss curve's smoothed line.
const LOSS_WINDOW: usize = 10;

/// The loss per step and, over longer runs, its trailing mean over [`LOSS_WINDOW`] steps (one
/// step's loss is noisy: eight records, some with short targets).
fn loss_lines(points: Vec<(f64, f64)>) -> Vec<guardreasoner_plot::Line> {
    let smoothed: Vec<(f64, f64)> = points
        .windows(LOSS_WINDOW)
        .map(|w| {
            let mean = w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64;
            (w[w.len() - 1].0, mean)
        })
        .collect();
    let mut lines = vec![guardreasoner_plot::Line {
        name: "loss".to_string(),
        points,
        markers: false,
    }];
    if smoothed.len() >= LOSS_WINDOW {
        lines.push(guardreasoner_plot::Line {
            name: format!("mean of the last {LOSS_WINDOW} steps"),
            points: smoothed,
            markers: false,
        });
    }
    lines
}

/// Writes the loss per step as a line chart, `<stem>.svg` and `<stem>.png`.
pub fn write_loss_curve(log: &[LogRecord], stem: &Path) -> Result<(), TrainError> {
    let points: Vec<(f64, f64)> = log
        .iter()
        .filter(|r| r.loss.is_finite())
        .map(|r| (r.step as f64, r.loss))
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let chart = guardreasoner_plot::LineChart {
        title: "training loss (mean over each step's output tokens)".to_string(),
        x_label: "optimiser step".to_string(),
        y_label: "loss".to_string(),
        x_range: None,
        y_range: None,
        lines: loss_lines(points),
        diagonal: false,
    };
    guardreasoner_plot::Chart::from(chart)
        .write(stem)
        .map(|_| ())
        .map_err(|e| TrainError::Format {
            path: stem.to_path_buf(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_curve_adds_a_trailing_mean_over_longer_runs() {
        let points: Vec<(f64, f64)> = (1..=30).map(|i| (i as f64, (i % 2) as f64)).collect();
        let lines = loss_lines(points[..15].to_vec());
        assert_eq!(lines.len(), 1, "too short to smooth");
        let lines = loss_lines(points);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].points.len(), 21);
        assert_eq!(lines[1].points[0], (10.0, 0.5));
    }
}

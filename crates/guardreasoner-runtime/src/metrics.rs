//! Counters the scheduler keeps and the server exports in the Prometheus text format, all under
//! the stable prefix `guardreasoner_`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// A cumulative histogram with fixed bucket bounds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if value <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Relaxed));
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];
const PER_TOKEN: &[f64] = &[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Everything the server reports on `/metrics`.
pub struct Metrics {
    pub requests: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    pub queue_seconds: Histogram,
    pub time_per_token_seconds: Histogram,
    pub batch_size: Histogram,
    pub request_seconds: Histogram,
    pub generated_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub reused_prompt_tokens: AtomicU64,
    /// Prompt-lookup draft tokens fed, and those kept.
    pub draft_tokens: AtomicU64,
    pub accepted_draft_tokens: AtomicU64,
    pub queue_depth: AtomicU64,
    pub active_sequences: AtomicU64,
    pub cancelled_sequences: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            queue_seconds: Histogram::new(SECONDS),
            time_per_token_seconds: Histogram::new(PER_TOKEN),
            batch_size: Histogram::new(SIZES),
            request_seconds: Histogram::new(SECONDS),
            generated_tokens: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            reused_prompt_tokens: AtomicU64::new(0),
            draft_tokens: AtomicU64::new(0),
            accepted_draft_tokens: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            active_sequences: AtomicU64::new(0),
            cancelled_sequences: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Count a failed request by kind (`validation`, `queue_full`, `unauthorized`, ...).
    pub fn failure(&self, kind: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        *f.entry(kind.to_string()).or_default() += 1;
    }

    pub fn failures(&self, kind: &str) -> u64 {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "guardreasoner_requests_total",
            "Generation requests accepted.",
            self.requests.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP guardreasoner_request_failures_total Requests that failed, by kind.\n# TYPE guardreasoner_request_failures_total counter"
        );
        for (kind, n) in self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "guardreasoner_request_failures_total{{kind=\"{kind}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "guardreasoner_generated_tokens_total",
            "Tokens generated.",
            self.generated_tokens.load(Relaxed),
        );
        counter(
            &mut out,
            "guardreasoner_prompt_tokens_total",
            "Prompt tokens processed or reused.",
            self.prompt_tokens.load(Relaxed),
        );
        counter(
            &mut out,
            "guardreasoner_reused_prompt_tokens_total",
            "Prompt tokens whose keys/values came from the cached guard instruction.",
            self.reused_prompt_tokens.load(Relaxed),
        );
        counter(
            &mut out,
            "guardreasoner_draft_tokens_total",
            "Prompt-lookup draft tokens fed for speculative decoding.",
            self.draft_tokens.load(Relaxed),
        );
        counter(
            &mut out,
            "guardreasoner_accepted_draft_tokens_total",
            "Prompt-lookup draft tokens kept (the model chose them).",
            self.accepted_draft_tokens.load(Relaxed),
        );
        counter(
            &mut out,
            "guardreasoner_cancelled_sequences_total",
            "Sequences dropped because their client went away.",
            self.cancelled_sequences.load(Relaxed),
        );
        gauge(
            &mut out,
            "guardreasoner_queue_depth",
            "Requests waiting for a batch slot.",
            self.queue_depth.load(Relaxed),
        );
        gauge(
            &mut out,
            "guardreasoner_active_sequences",
            "Sequences in the decode batch.",
            self.active_sequences.load(Relaxed),
        );
        self.queue_seconds.render(
            &mut out,
            "guardreasoner_queue_seconds",
            "Time from submission to joining the batch.",
        );
        self.time_per_token_seconds.render(
            &mut out,
            "guardreasoner_time_per_token_seconds",
            "Decode step time.",
        );
        self.batch_size.render(
            &mut out,
            "guardreasoner_batch_size",
            "Sequences per decode step.",
        );
        self.request_seconds.render(
            &mut out,
            "guardreasoner_request_seconds",
            "Time from submission to the last token.",
        );
        out
    }
}

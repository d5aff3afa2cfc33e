//! The GuardReasoner protocol: the prompt contract, the verdict parser, the benchmark
//! registry and paper-exact scoring. Deliberately free of ML dependencies.
//!
//! The pipeline reads top to bottom: [`prompt`] builds what the guard reads, [`verdict`]
//! parses what it writes, [`benchmarks`] says what to score, [`score`] and [`report`] score it.

pub mod answer_grammar;
pub mod benchmarks;
pub mod calibration;
pub mod cascade;
pub mod hygiene;
pub mod jsonl;
pub mod label_scores;
pub mod labels;
pub mod metrics;
pub mod prompt;
pub mod records;
pub mod report;
pub mod score;
pub mod verdict;

pub use benchmarks::{Benchmark, BENCHMARKS};
pub use cascade::{ReasoningMode, UncertaintyBand};
pub use label_scores::LabelScores;
pub use labels::{Label, Task};
pub use prompt::{build_guard_prompt, build_input, Conversation, INSTRUCTION};
pub use verdict::{flagged, parse_strict, ParseError, ParsePolicy, ParsedOutput, Verdict};

//! `guardreasoner`: reasoning-based LLM safeguards (GuardReasoner, Liu et al. 2025).

mod model;
mod score;
mod synth;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "guardreasoner",
    version,
    about = "Reasoning-based LLM safeguards: classify, serve, evaluate, synthesise and train GuardReasoner guards"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch, locate and describe models (`pull`, `path [SPEC]`, `info [SPEC]`).
    Model(model::ModelArgs),
    /// Score official-layout prediction files (`<dir>/<Benchmark>/generated_predictions.jsonl`)
    /// and print the paper's tables.
    Score(score::ScoreArgs),
    /// Synthesise GuardReasonerTrain reasoning data from labelled records with a teacher model.
    Synth(synth::SynthArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Model(args) => model::run(args),
        Command::Score(args) => score::run(args),
        Command::Synth(args) => synth::run(args),
    }
}

//! `guardreasoner`: reasoning-based LLM safeguards (GuardReasoner, Liu et al. 2025).

mod bench;
mod cascade;
mod classify;
mod data;
mod eval;
mod export;
mod generator;
mod loadgen;
mod mine;
mod model;
mod score;
mod serve;
mod synth;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "guardreasoner",
    version,
    about = "Reasoning-based LLM safeguards: classify, serve, evaluate, synthesise and train GuardReasoner guards"
)]
struct Cli {
    /// What the libraries log to stderr, as a tracing filter: `info`, `debug`,
    /// `guardreasoner_server=debug,warn`, ... (default: `info` for `serve`, where each request
    /// is logged, `warn` otherwise: retries, failovers, engine failures)
    #[arg(long, env = "GUARDREASONER_LOG", global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Judge a conversation (or a JSONL file of them) with the guard model: reasoning and the
    /// three verdicts, parsed strictly (an unparseable output is reported and flagged).
    Classify(classify::ClassifyArgs),
    /// Serve the guard over HTTP: /v1/guard, /v1/moderations, OpenAI-compatible completions.
    Serve(serve::ServeArgs),
    /// Bounded load test of a running server (loopback only): throughput and p50/p95/p99
    /// latency at several concurrency levels.
    Loadgen(loadgen::LoadgenArgs),
    /// Fetch, locate and describe models (`pull`, `path [SPEC]`, `info [SPEC]`).
    Model(model::ModelArgs),
    /// Generate on the paper's benchmarks (local model or an OpenAI-compatible endpoint),
    /// resumably, then score and report beside the paper's baselines.
    Eval(eval::EvalArgs),
    /// Score official-layout prediction files (`<dir>/<Benchmark>/generated_predictions.jsonl`)
    /// and print the paper's tables.
    Score(score::ScoreArgs),
    /// Choose `--reasoning auto`'s uncertainty band on a development split: F1 and generated
    /// tokens per band, from an `eval --reasoning none` run and a `full` one over the same rows.
    Cascade(cascade::CascadeArgs),
    /// Benchmarks (`bench engine`: the inference engine on the guard workload).
    Bench(bench::BenchArgs),
    /// Training data without a teacher: `data distill` (R-SFT records from released predictions).
    Data(data::DataArgs),
    /// Synthesise GuardReasonerTrain reasoning data from labelled records with a teacher model.
    Synth(synth::SynthArgs),
    /// Train guards on CPU: `train sft` (R-SFT), `train dpo` (HS-DPO); merge LoRA adapters with
    /// `model merge`.
    Train(train::TrainArgs),
    /// Hard-sample mining: `mine sample` (n outputs per input from an R-SFT model), `mine pairs`
    /// (weighted DPO pairs from the samples of one or more models).
    Mine(mine::MineArgs),
    /// Export datasets and configs for other trainers (`export llamafactory`).
    Export(export::ExportArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref(), matches!(cli.command, Command::Serve(_)))?;
    if matches!(
        cli.command,
        Command::Classify(_)
            | Command::Score(_)
            | Command::Cascade(_)
            | Command::Model(_)
            | Command::Data(_)
            | Command::Export(_)
            | Command::Bench(_)
    ) {
        end_quietly_when_the_reader_goes();
    }
    match cli.command {
        Command::Classify(args) => classify::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Loadgen(args) => loadgen::run(args),
        Command::Model(args) => model::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Cascade(args) => cascade::run(args),
        Command::Score(args) => score::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Data(args) => data::run(args),
        Command::Train(args) => train::run(args),
        Command::Mine(args) => mine::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

/// Let a closed output pipe end the process as it ends Unix tools (`guardreasoner score .. |
/// head`): Rust ignores SIGPIPE, so the write would otherwise fail as a "Broken pipe" error or
/// a panic in the middle of a table. Only for the commands whose work is their output: the
/// server, the load generator and the long jobs (synth, mine, train, eval, which write files and
/// resume) must not die because whoever read their logs went away.
fn end_quietly_when_the_reader_goes() {
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any thread is spawned; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The one subscriber: events of the libraries to stderr, filtered by `--log`.
fn init_logging(filter: Option<&str>, serving: bool) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter = filter.unwrap_or(if serving { "info" } else { "warn" });
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("--log {filter:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    Ok(())
}

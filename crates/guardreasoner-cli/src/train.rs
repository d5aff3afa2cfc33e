//! `guardreasoner train sft|dpo`: R-SFT and HS-DPO on CPU; `guardreasoner model merge`: LoRA
//! adapter merge (HF checkpoint + GGUF).

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use guardreasoner_tokenizer::Tokenizer;
use guardreasoner_train::data::{load_records, tokenize, DataSource, TextEncoder};
use guardreasoner_train::dpo::{
    reference_log_probs, tokenize_pairs, DpoConfig, DpoObjective, PreferenceRecord,
};
use guardreasoner_train::fast::FastLlama;
use guardreasoner_train::gguf_base::{convert_gguf_to_hf, convert_hf_to_gguf, GgufWeightType};
use guardreasoner_train::lora::{
    load_adapter, merge_checkpoint, save_adapter, LoraConfig, ALL_TARGETS,
};
use guardreasoner_train::model::{Config, TrainMode};
use guardreasoner_train::optim::AdamWConfig;
use guardreasoner_train::sft::SftObjective;
use guardreasoner_train::trainer::{train, Objective, Resume, RunOptions, TrainerConfig};
use guardreasoner_train::WeightDtype;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct TrainArgs {
    #[command(subcommand)]
    command: TrainCommand,
}

#[derive(Subcommand)]
enum TrainCommand {
    /// Reasoning SFT on GuardReasonerTrain records (loss on the output tokens only).
    Sft(SftArgs),
    /// Hard-sample DPO on mined pairs (LLaMA-Factory ranking format with `sample_weight`).
    Dpo(DpoArgs),
}

#[derive(Args)]
struct CommonArgs {
    /// Base model: `smollm2-base` (the embedded, untrained SmolLM2-135M-Instruct; `default` is
    /// the shipped guard, to train further on top of it), a .gguf file (dequantised to f32 and
    /// converted into `<output>/base`), an HF-layout directory (config.json, *.safetensors,
    /// tokenizer.json), or a Hub id.
    #[arg(long, default_value = guardreasoner_hub::BASE_SPEC)]
    model: String,
    /// How the adapter names its base (`base_model_name_or_path`): the Hub id of the embedded
    /// base, a Hub id as given, else the path given; set before `model` becomes the converted
    /// directory, so a shipped adapter never names a path on the training machine.
    #[arg(skip)]
    base_name: String,
    /// Output directory (checkpoints, train_log.jsonl, loss_curve.svg/.png, the final model).
    #[arg(long)]
    output: PathBuf,
    /// Hyperparameter preset: `paper` (the paper's values for this stage) or `none`.
    #[arg(long, default_value = "paper")]
    preset: String,
    #[arg(long)]
    learning_rate: Option<f64>,
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many optimiser steps instead of whole epochs.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Sequences per forward pass (the trainer runs them one by one; with --grad-accum this
    /// gives the effective batch).
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Gradient accumulation steps (default: the preset's effective batch / batch size).
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long, default_value_t = 2048)]
    cutoff_len: usize,
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long)]
    save_steps: Option<usize>,
    /// Resume from the newest checkpoint in --output.
    #[arg(long)]
    resume: bool,
    /// Train LoRA adapters of this rank instead of all weights.
    #[arg(long)]
    lora_rank: Option<usize>,
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f64,
    /// Comma-separated projections to adapt.
    #[arg(
        long,
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    lora_targets: String,
    /// Start the LoRA adapters from this PEFT adapter directory instead of PEFT's
    /// initialisation, to train a guard further (e.g. the shipped one,
    /// `crates/guardreasoner-hub/guard`, on its base `smollm2-base`). Its rank, alpha and
    /// targets must be those of --lora-*; the result is still one adapter on the base.
    #[arg(long, env = "GUARDREASONER_INIT_ADAPTER", requires = "lora_rank")]
    init_adapter: Option<PathBuf>,
    /// Element type of the saved full model: f32, bf16 or f16.
    #[arg(long, env = "GUARDREASONER_SAVE_DTYPE", default_value = "bf16")]
    save_dtype: WeightDtype,
}

#[derive(Args)]
struct SftArgs {
    /// Training files (JSON array or JSONL of instruction/input/output); `PATH:N` takes the first N.
    #[arg(long = "data", required = true)]
    data: Vec<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct DpoArgs {
    /// Pair files (instruction/input/chosen/rejected/sample_weight); `PATH:N` takes the first N.
    #[arg(long = "data", required = true)]
    data: Vec<String>,
    #[arg(long, default_value_t = 0.01)]
    beta: f64,
    #[arg(long, default_value_t = 2.0)]
    ftx: f64,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct MergeArgs {
    /// The base model: an HF-layout directory (writes an HF checkpoint and a GGUF of
    /// --gguf's type), or a GGUF file or `smollm2-base` (writes `<output>/model.gguf` in the
    /// form --adapted-type names, by default the one the shipped guard runs in, so a candidate
    /// can be measured as it would ship).
    #[arg(long)]
    base: PathBuf,
    /// PEFT adapter directory (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    #[arg(long)]
    output: PathBuf,
    /// Element type of the merged checkpoint: f32, bf16 or f16.
    #[arg(long, default_value = "bf16")]
    save_dtype: WeightDtype,
    /// Element type of the `model.gguf` written beside the checkpoint (f16, f32), or `none`
    /// to write no GGUF.
    #[arg(long, default_value = "f16")]
    gguf: String,
    /// From a GGUF base: how the adapted projections are stored: `lora` (the shipped guard's
    /// form: not merged, the factors beside the unchanged base tensors, applied at run time
    /// by this engine only; no rounding of the merged weights), `q8_0` (merged, for llama.cpp
    /// and other engines), `f16` (merged, keeps a small fine-tuning delta Q8_0 would blur) or
    /// `lora-adapter` (`<output>/adapter.gguf`: the factors alone as llama.cpp's LoRA adapter
    /// GGUF; `llama-server -m BASE.gguf --lora adapter.gguf` runs the guard unmerged, as this
    /// engine does).
    #[arg(long, default_value = "lora")]
    adapted_type: guardreasoner_hub::guard::AdaptedType,
}

#[derive(Args)]
pub struct ExtractAdapterArgs {
    /// HF-layout base model directory (a GGUF converts with `model convert --to-hf`).
    #[arg(long, env = "GUARDREASONER_EXTRACT_BASE")]
    base: PathBuf,
    /// HF-layout directory of the fully fine-tuned model (same weights and shapes).
    #[arg(long, env = "GUARDREASONER_EXTRACT_TUNED")]
    tuned: PathBuf,
    /// Adapter rank: at SmolLM2-135M shapes each rank costs 0.61 MB in the shipped f16.
    #[arg(long, default_value_t = 32)]
    rank: usize,
    /// LoRA alpha (the merge adds alpha/rank * B A); the default is the rank.
    #[arg(long)]
    alpha: Option<f64>,
    /// Projections to adapt (HF short names).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    targets: Vec<String>,
    /// How the adapter names its base (`base_model_name_or_path`).
    #[arg(long, default_value = "HuggingFaceTB/SmolLM2-135M-Instruct")]
    base_name: String,
    /// Output directory: adapter_config.json, adapter_model.safetensors (f32) and
    /// extract-report.json (per weight: the share of its difference kept).
    #[arg(long)]
    output: PathBuf,
}

/// `model extract-adapter`: an adapter cut by SVD from a fully fine-tuned model.
pub fn extract_adapter(args: ExtractAdapterArgs) -> anyhow::Result<()> {
    let config = LoraConfig {
        rank: args.rank,
        alpha: args.alpha.unwrap_or(args.rank as f64),
        dropout: 0.0,
        targets: args.targets,
    };
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} weights, {elapsed} elapsed, ETA {eta}",
        )?
        .progress_chars("=> "),
    );
    bar.set_message(format!("rank-{} SVD", config.rank));
    let extracted = guardreasoner_train::extract::extract_adapter(
        &args.base,
        &args.tuned,
        &config,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )
    .with_context(|| {
        format!(
            "cutting an adapter from {} against {}",
            args.tuned.display(),
            args.base.display()
        )
    })?;
    bar.finish_and_clear();
    extracted.save(&args.base_name, &args.output)?;
    let total_kept = extracted.total_kept();
    let report = serde_json::json!({
        "base": args.base.display().to_string(),
        "tuned": args.tuned.display().to_string(),
        "rank": config.rank,
        "alpha": config.alpha,
        "total_kept": total_kept,
        "weights": extracted.kept.iter().map(|k| serde_json::json!({
            "weight": k.weight, "kept": k.kept, "relative_change": k.relative_change,
        })).collect::<Vec<_>>(),
        "not_carried": extracted.not_carried.iter().map(|(w, r)| serde_json::json!({
            "weight": w, "relative_change": r,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        args.output.join("extract-report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let least = extracted
        .kept
        .iter()
        .min_by(|a, b| a.kept.total_cmp(&b.kept))
        .expect("at least one adapted weight");
    eprintln!(
        "rank {}: kept {:.1}% of the adapted weights' squared difference (least: {} {:.1}%); \
         wrote {}",
        config.rank,
        100.0 * total_kept,
        least.weight,
        100.0 * least.kept,
        args.output.display()
    );
    if !extracted.not_carried.is_empty() {
        let mut moved = extracted.not_carried.clone();
        moved.sort_by(|a, b| b.1.total_cmp(&a.1));
        let shown: Vec<String> = moved
            .iter()
            .take(3)
            .map(|(w, r)| format!("{w} ({:.2}%)", 100.0 * r))
            .collect();
        eprintln!(
            "warning: {} changed weight(s) a LoRA cannot carry are left at the base's values, \
             largest relative change first: {}",
            moved.len(),
            shown.join(", ")
        );
    }
    Ok(())
}

/// `model merge` from a GGUF base: the shipped guard's merge, for any adapter.
fn merge_into_gguf(args: &MergeArgs, base: &Path) -> anyhow::Result<()> {
    let read = |name: &str| {
        let path = args.adapter.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let config_json = String::from_utf8(read("adapter_config.json")?)
        .context("adapter_config.json is not UTF-8")?;
    let weights = read("adapter_model.safetensors")?;
    let adapter = guardreasoner_hub::guard::Adapter {
        config_json: &config_json,
        weights: &weights,
        sha256: "", // only the embedded adapter has a pinned hash to verify
    };
    std::fs::create_dir_all(&args.output)?;
    let adapter_only = args.adapted_type == guardreasoner_hub::guard::AdaptedType::LoraAdapter;
    let out = args.output.join(if adapter_only {
        "adapter.gguf"
    } else {
        "model.gguf"
    });
    guardreasoner_hub::guard::merge_adapter_into_gguf(base, &adapter, &out, &[], args.adapted_type)
        .with_context(|| format!("merging {} into {}", args.adapter.display(), base.display()))?;
    if adapter_only {
        eprintln!(
            "wrote {} (llama.cpp's LoRA adapter format: llama-server -m {} --lora {0})",
            out.display(),
            base.display()
        );
    } else {
        eprintln!(
            "wrote {} (adapted projections {}; serve it with --model {0})",
            out.display(),
            args.adapted_type.name()
        );
    }
    Ok(())
}

/// Plain-text encoding through the model's tokenizer: the guard prompt holds no special tokens,
/// so this equals the engine's trusted/untrusted guard-prompt encoding, and user text can never
/// become a special token.
struct TokenizerEncoder {
    tokenizer: Tokenizer,
    eos: u32,
}

impl TextEncoder for TokenizerEncoder {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode_untrusted(text)
            .map_err(|e| e.to_string())
    }
    fn eos_id(&self) -> u32 {
        self.eos
    }
}

fn encoder_for(model_dir: &Path) -> anyhow::Result<TokenizerEncoder> {
    let tokenizer = Tokenizer::from_hf_dir(model_dir)
        .with_context(|| format!("loading the tokenizer of {}", model_dir.display()))?;
    let config = guardreasoner_train::model::read_config(&model_dir.join("config.json"))?;
    let eos = config
        .eos_token_ids()
        .first()
        .copied()
        .or_else(|| tokenizer.eos_ids().first().copied())
        .context("neither config.json nor the tokenizer names an EOS token")?;
    Ok(TokenizerEncoder { tokenizer, eos })
}

fn mode(c: &CommonArgs) -> anyhow::Result<TrainMode> {
    Ok(match c.lora_rank {
        None => TrainMode::Full,
        Some(rank) => {
            let cfg = LoraConfig {
                rank,
                alpha: c.lora_alpha,
                dropout: c.lora_dropout,
                targets: c
                    .lora_targets
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            };
            cfg.validate()
                .with_context(|| format!("LoRA targets must be among {ALL_TARGETS:?}"))?;
            TrainMode::Lora(cfg)
        }
    })
}

fn trainer_config(c: &CommonArgs, preset: TrainerConfig) -> anyhow::Result<TrainerConfig> {
    let mut cfg = match c.preset.as_str() {
        "paper" => preset,
        "none" => TrainerConfig {
            batch_size: 1,
            ..preset
        },
        other => bail!("unknown preset {other:?} (paper, none)"),
    };
    if c.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let accum = c
        .grad_accum
        .unwrap_or_else(|| cfg.batch_size.div_ceil(c.batch_size));
    cfg.batch_size = c.batch_size * accum.max(1);
    if let Some(lr) = c.learning_rate {
        cfg.learning_rate = lr;
    }
    if let Some(e) = c.epochs {
        cfg.epochs = e;
    }
    cfg.max_steps = c.max_steps;
    cfg.warmup_ratio = c.warmup_ratio;
    cfg.max_grad_norm = c.max_grad_norm;
    cfg.seed = c.seed;
    cfg.adamw = AdamWConfig {
        weight_decay: c.weight_decay,
        ..AdamWConfig::default()
    };
    if c.save_steps.is_some() {
        cfg.save_steps = c.save_steps;
    }
    Ok(cfg)
}

fn run_training(
    c: &CommonArgs,
    (model, config): (&mut FastLlama, &Config),
    objective: &dyn Objective,
    cfg: &TrainerConfig,
    mode: &TrainMode,
) -> anyhow::Result<()> {
    eprintln!(
        "training {} examples, {} trainable parameters, effective batch {}, lr {:e}",
        objective.len(),
        model.trainable_count(),
        cfg.batch_size,
        cfg.learning_rate
    );
    let resume = if c.resume { Resume::Latest } else { Resume::No };
    let options = RunOptions {
        stop_at_step: None,
        progress: true,
    };
    let summary = train(model, objective, cfg, &c.output, resume, &options)?;
    match mode {
        TrainMode::Full => {
            let dir = c.output.join("model");
            model.save_hf(&dir, config, c.save_dtype)?;
            copy_tokenizer(Path::new(&c.model), &dir)?;
            eprintln!("saved the model to {}", dir.display());
        }
        TrainMode::Lora(lora) => {
            let dir = c.output.join("adapter");
            save_adapter(model, lora, &c.base_name, &dir)?;
            eprintln!(
                "saved the PEFT adapter to {} (merge with `guardreasoner model merge`)",
                dir.display()
            );
        }
    }
    eprintln!(
        "done: {} steps; final loss {:.4}; log {}, curve {}",
        summary.step,
        summary.log.last().map_or(f64::NAN, |r| r.loss),
        c.output
            .join(guardreasoner_train::trainer::LOG_FILE)
            .display(),
        c.output
            .join(guardreasoner_train::trainer::CURVE_FILE)
            .display()
    );
    Ok(())
}

fn copy_tokenizer(from: &Path, to: &Path) -> anyhow::Result<()> {
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        let src = from.join(name);
        if src.exists() {
            std::fs::copy(&src, to.join(name))
                .with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

/// The name an adapter gives its base: what `--model` named, as PEFT expects it.
fn base_name(spec: &str) -> String {
    match guardreasoner_hub::ModelSpec::parse(Some(spec)) {
        Ok(guardreasoner_hub::ModelSpec::Base | guardreasoner_hub::ModelSpec::Default) => {
            "HuggingFaceTB/SmolLM2-135M-Instruct".to_string()
        }
        Ok(guardreasoner_hub::ModelSpec::Hub { repo, .. }) => repo,
        _ => spec.to_string(),
    }
}

/// The base model as an HF-layout directory: a GGUF base is converted once into
/// `<output>/base` (and reused on resume).
fn base_dir(c: &CommonArgs) -> anyhow::Result<PathBuf> {
    let resolved = guardreasoner_hub::resolve_from_env(Some(&c.model))
        .with_context(|| format!("cannot find the base model {:?}", c.model))?;
    match resolved {
        guardreasoner_hub::ResolvedModel::HfDir(dir) => Ok(dir),
        guardreasoner_hub::ResolvedModel::Gguf(file) => {
            let dir = c.output.join("base");
            let complete = [
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "tokenizer_config.json",
            ]
            .iter()
            .all(|f| dir.join(f).is_file());
            if complete {
                eprintln!(
                    "base: {} (converted earlier from {})",
                    dir.display(),
                    file.display()
                );
            } else {
                eprintln!(
                    "converting {} to an f32 Hugging Face checkpoint in {} ...",
                    file.display(),
                    dir.display()
                );
                convert_gguf_to_hf(&file, &dir)?;
            }
            Ok(dir)
        }
    }
}

/// The model to train, its adapters started from --init-adapter when given.
fn load_model(
    c: &CommonArgs,
    model_dir: &Path,
    mode: &TrainMode,
) -> anyhow::Result<(FastLlama, Config)> {
    let config = guardreasoner_train::model::read_config(&model_dir.join("config.json"))?;
    let mut model = FastLlama::load_hf(model_dir, mode, c.seed)?;
    if let (Some(dir), TrainMode::Lora(lora)) = (&c.init_adapter, mode) {
        let (init, tensors) = load_adapter(dir)
            .with_context(|| format!("reading the initial adapter {}", dir.display()))?;
        let sorted = |t: &[String]| {
            let mut t = t.to_vec();
            t.sort();
            t
        };
        if init.rank != lora.rank
            || init.alpha != lora.alpha
            || sorted(&init.targets) != sorted(&lora.targets)
        {
            bail!(
                "--init-adapter {} has rank {}, alpha {}, targets {:?}; this run has rank {}, alpha {}, targets {:?}",
                dir.display(), init.rank, init.alpha, init.targets, lora.rank, lora.alpha, lora.targets
            );
        }
        model
            .set_trainable(&tensors)
            .with_context(|| format!("starting from the adapter {}", dir.display()))?;
        eprintln!("adapters start from {}", dir.display());
    }
    Ok((model, config))
}

fn sft(args: SftArgs) -> anyhow::Result<()> {
    let mut args = args;
    let base = base_dir(&args.common)?;
    args.common.base_name = base_name(&args.common.model);
    args.common.model = base.display().to_string();
    let c = &args.common;
    let model_dir = base.as_path();
    let sources: Vec<DataSource> = args.data.iter().map(|s| DataSource::parse(s)).collect();
    let records = load_records(&sources)?;
    let encoder = encoder_for(model_dir)?;
    let tokenized = tokenize(&records, &encoder, c.cutoff_len)?;
    if tokenized.truncated > 0 {
        eprintln!(
            "warning: {} of {} records exceed --cutoff-len {} and were truncated",
            tokenized.truncated,
            records.len(),
            c.cutoff_len
        );
    }
    let mode = mode(c)?;
    let cfg = trainer_config(c, TrainerConfig::paper_sft())?;
    let (mut model, config) = load_model(c, model_dir, &mode)?;
    let objective = SftObjective {
        examples: tokenized.examples,
    };
    run_training(c, (&mut model, &config), &objective, &cfg, &mode)
}

fn dpo(args: DpoArgs) -> anyhow::Result<()> {
    let mut args = args;
    let base = base_dir(&args.common)?;
    args.common.base_name = base_name(&args.common.model);
    args.common.model = base.display().to_string();
    let c = &args.common;
    let model_dir = base.as_path();
    let mut records: Vec<PreferenceRecord> = Vec::new();
    for spec in &args.data {
        let source = DataSource::parse(spec);
        let mut file: Vec<PreferenceRecord> =
            guardreasoner_core::jsonl::read_records(&source.path)?;
        file.truncate(source.limit.unwrap_or(usize::MAX));
        records.extend(file);
    }
    let encoder = encoder_for(model_dir)?;
    let (pairs, truncated) = tokenize_pairs(&records, &encoder, c.cutoff_len)?;
    if truncated > 0 {
        eprintln!(
            "warning: {truncated} of {} pairs exceed --cutoff-len {} and were truncated",
            pairs.len(),
            c.cutoff_len
        );
    }
    let mode = mode(c)?;
    let cfg = trainer_config(c, TrainerConfig::paper_dpo())?;
    let (mut model, config) = load_model(c, model_dir, &mode)?;
    std::fs::create_dir_all(&c.output)?;
    eprintln!(
        "computing reference log-probs for {} pairs (cached)",
        pairs.len()
    );
    let reference = reference_log_probs(
        &model,
        &pairs,
        &std::fs::canonicalize(model_dir)?.display().to_string(),
        Some(c.output.join("reference_logps.json").as_path()),
    )?;
    let objective = DpoObjective {
        pairs,
        reference,
        config: DpoConfig {
            beta: args.beta,
            ftx: args.ftx,
        },
    };
    run_training(c, (&mut model, &config), &objective, &cfg, &mode)
}

pub fn merge(args: MergeArgs) -> anyhow::Result<()> {
    // A directory is an HF base as it is; anything else is a model spec (a GGUF file,
    // `smollm2-base`, a Hub id).
    let base = if args.base.is_dir() {
        args.base.clone()
    } else {
        let spec = args.base.display().to_string();
        match guardreasoner_hub::resolve_from_env(Some(&spec))
            .with_context(|| format!("cannot find the base model {spec:?}"))?
        {
            guardreasoner_hub::ResolvedModel::Gguf(file) => return merge_into_gguf(&args, &file),
            guardreasoner_hub::ResolvedModel::HfDir(dir) => dir,
        }
    };
    let config = guardreasoner_train::model::read_config(&base.join("config.json"))?;
    let out_dtype = args.save_dtype;
    let weight_type = match args.gguf.as_str() {
        "none" => None,
        "f16" => Some(GgufWeightType::F16),
        "f32" => Some(GgufWeightType::F32),
        other => bail!("unknown --gguf {other:?} (f16, f32, none)"),
    };
    let (lora, adapter) = load_adapter(&args.adapter)?;
    std::fs::create_dir_all(&args.output)?;
    // One base weight at a time: memory stays near one f32 weight plus the adapter.
    merge_checkpoint(
        &base,
        &lora,
        &adapter,
        &args.output.join("model.safetensors"),
        out_dtype,
    )?;
    std::fs::write(
        args.output.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    copy_tokenizer(&base, &args.output)?;
    eprintln!(
        "merged {} into {}",
        args.adapter.display(),
        args.output.display()
    );
    let Some(weight_type) = weight_type else {
        return Ok(());
    };
    let gguf = args.output.join("model.gguf");
    match convert_hf_to_gguf(&args.output, &gguf, weight_type) {
        Ok(()) => eprintln!("wrote {} (serve it with --model {0})", gguf.display()),
        // The checkpoint itself is complete and servable; say why the GGUF is missing.
        Err(e) => eprintln!("warning: no GGUF written: {e}"),
    }
    Ok(())
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    match args.command {
        TrainCommand::Sft(a) => sft(a),
        TrainCommand::Dpo(a) => dpo(a),
    }
}

#[cfg(test)]
mod tests {
    use super::base_name;

    #[test]
    fn an_adapter_names_its_base_as_given_never_the_converted_directory() {
        for spec in ["smollm2-base", "default"] {
            assert_eq!(base_name(spec), "HuggingFaceTB/SmolLM2-135M-Instruct");
        }
        assert_eq!(
            base_name("meta-llama/Llama-3.2-1B@main"),
            "meta-llama/Llama-3.2-1B"
        );
        assert_eq!(base_name("./missing/model.gguf"), "./missing/model.gguf");
    }
}

//! `guardreasoner synth`: reasoning data synthesis with a teacher model (issue 6).

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use guardreasoner_backend::{
    Backend, Balance, MultiBackend, OpenAiBackend, OpenAiConfig, RateLimiter, RateLimits,
    RetryPolicy, DEFAULT_API_KEY_VAR,
};
use guardreasoner_synth::batch;
use guardreasoner_synth::{
    load_samples, rejects_path, JobConfig, Sample, Source, Summary, TeacherParams,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SynthArgs {
    #[command(subcommand)]
    action: Option<BatchAction>,
    /// Boxed: the live-run flags are large beside other commands' arguments.
    #[command(flatten)]
    run: Box<RunArgs>,
}

#[derive(Subcommand)]
enum BatchAction {
    /// Write an OpenAI Batch API request file (custom_id = input key) for every input not yet
    /// kept or rejected in --out.
    BatchPrepare(PrepareArgs),
    /// Validate a Batch API results file and record it into --out and its rejects file.
    BatchIngest(IngestArgs),
}

#[derive(Args)]
struct InputArgs {
    /// Labelled records: a JSON array or JSONL file.
    #[arg(long, required = true)]
    input: Option<PathBuf>,
    /// Which dataset the records come from: wildguard, aegis, toxicchat, beavertails, generic.
    #[arg(long, required = true)]
    source: Option<String>,
    /// Output JSONL (GuardReasonerTrain rows); rejects go to `<out stem>.rejects.jsonl`.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// Only the first N inputs.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Args)]
struct SamplingArgs {
    /// Most tokens the teacher may write per reply (a cut-off reply is rejected).
    #[arg(long, default_value_t = 2048)]
    max_new_tokens: u32,
    /// Teacher sampling temperature (1 is the OpenAI default the official script ran with).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Teacher nucleus sampling.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampling seed sent to the teacher, where the endpoint supports it.
    #[arg(long)]
    seed: Option<u64>,
}

impl SamplingArgs {
    fn params(&self) -> TeacherParams {
        TeacherParams {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
        }
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    inputs: InputArgs,
    /// OpenAI-compatible endpoint(s) (`http://host:port` or `.../v1`); repeat or separate with
    /// commas to spread the work over several.
    #[arg(long, required = true, value_delimiter = ',')]
    teacher_endpoint: Vec<String>,
    /// The model name sent to the endpoint.
    #[arg(long, required = true)]
    teacher_model: Option<String>,
    /// Environment variable holding the API key (sent as a bearer token, never printed).
    #[arg(long, default_value = DEFAULT_API_KEY_VAR)]
    api_key_env: String,
    /// Teacher requests in flight at once (over all endpoints).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Requests per minute, over all endpoints.
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per minute (prompt + completion), over all endpoints.
    #[arg(long)]
    tpm: Option<u32>,
    /// Seconds one attempt may take.
    #[arg(long, default_value_t = 600.0)]
    timeout_secs: f64,
    /// Retries of a request on 429/5xx/timeouts/connection errors.
    #[arg(long, default_value_t = 6)]
    max_retries: u32,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct PrepareArgs {
    #[command(flatten)]
    inputs: InputArgs,
    #[arg(long)]
    teacher_model: String,
    /// The request file to upload to the Batch API.
    #[arg(long)]
    requests: PathBuf,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct IngestArgs {
    /// The Batch API results file (JSONL).
    results: PathBuf,
    #[command(flatten)]
    inputs: InputArgs,
}

struct Loaded {
    samples: Vec<Sample>,
    duplicates: usize,
    source: Source,
    out: PathBuf,
}

fn load(inputs: &InputArgs) -> anyhow::Result<Loaded> {
    let (Some(input), Some(source), Some(out)) = (&inputs.input, &inputs.source, &inputs.out)
    else {
        bail!("--input, --source and --out are required");
    };
    let source: Source = source.parse()?;
    let loaded = load_samples(input, source)
        .with_context(|| format!("reading {} as {source} records", input.display()))?;
    let mut samples = loaded.samples;
    if let Some(limit) = inputs.limit {
        samples.truncate(limit);
    }
    Ok(Loaded {
        samples,
        duplicates: loaded.duplicates,
        source,
        out: out.clone(),
    })
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    match args.action {
        Some(BatchAction::BatchPrepare(a)) => prepare(a),
        Some(BatchAction::BatchIngest(a)) => ingest(a),
        None => live(*args.run),
    }
}

fn live(args: RunArgs) -> anyhow::Result<()> {
    let loaded = load(&args.inputs)?;
    let model = args.teacher_model.clone().unwrap_or_default();
    if args.teacher_endpoint.is_empty() {
        bail!("--teacher-endpoint is required");
    }
    if !(args.timeout_secs.is_finite() && args.timeout_secs > 0.0) {
        bail!("--timeout-secs must be positive");
    }
    let limiter = (args.rpm.is_some() || args.tpm.is_some()).then(|| {
        Arc::new(RateLimiter::new(RateLimits {
            requests_per_minute: args.rpm,
            tokens_per_minute: args.tpm,
        }))
    });
    if guardreasoner_backend::ApiKey::from_env(&args.api_key_env).is_none() {
        eprintln!(
            "synth: ${} is not set: requests go without an API key (fine for local servers)",
            args.api_key_env
        );
    }
    let endpoints = args.teacher_endpoint.len();
    let mut members: Vec<Arc<dyn Backend>> = Vec::new();
    for url in &args.teacher_endpoint {
        let mut config =
            OpenAiConfig::new(url.clone(), model.clone()).with_api_key_from_env(&args.api_key_env);
        config.max_concurrency = args.concurrency.max(1);
        config.request_timeout = Duration::from_secs_f64(args.timeout_secs);
        config.retry = RetryPolicy {
            max_retries: args.max_retries,
            ..RetryPolicy::default()
        };
        config.rate_limiter = limiter.clone();
        members.push(Arc::new(OpenAiBackend::new(config)?));
    }
    let backend: Arc<dyn Backend> = if endpoints == 1 {
        members.remove(0)
    } else {
        Arc::new(MultiBackend::new(
            members,
            Balance::LeastOutstanding,
            Duration::from_secs(30),
        )?)
    };
    let config = JobConfig {
        out: loaded.out.clone(),
        source: loaded.source,
        teacher: args.sampling.params(),
        concurrency: args.concurrency.max(1),
    };
    let progress = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} ({per_sec}, eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    eprintln!(
        "synth: {} inputs from {} ({}), teacher {} at {}",
        loaded.samples.len(),
        args.inputs
            .input
            .as_deref()
            .map_or(String::new(), |p| p.display().to_string()),
        loaded.source,
        model,
        backend.name()
    );
    let summary = runtime.block_on(guardreasoner_synth::run(
        &loaded.samples,
        loaded.duplicates,
        backend,
        &config,
        &progress,
    ))?;
    progress.finish_and_clear();
    print_summary(&summary, &loaded.out);
    if summary.failed > 0 {
        bail!(
            "{} input(s) failed after every retry and were not recorded; run the same command again to retry them",
            summary.failed
        );
    }
    Ok(())
}

fn print_summary(s: &Summary, out: &Path) {
    println!("inputs            {}", s.inputs);
    if s.duplicates > 0 {
        println!("duplicates        {} (done once)", s.duplicates);
    }
    println!("already done      {}", s.already_done);
    println!("kept              {}", s.kept);
    println!("rejected          {}", s.rejected);
    for (reason, n) in &s.rejected_by_reason {
        println!("  {reason:<28} {n}");
    }
    println!("failed            {}", s.failed);
    for (kind, n) in &s.failed_by_kind {
        println!("  {kind:<28} {n}");
    }
    println!("retries           {}", s.retries);
    println!(
        "tokens            {} prompt + {} completion",
        s.prompt_tokens, s.completion_tokens
    );
    let st = &s.steps_per_sample;
    if st.count > 0 {
        println!(
            "steps per sample  mean {:.2}, min {}, max {}",
            st.mean, st.min, st.max
        );
    }
    println!(
        "files             {} kept in {}, {} rejected in {}, {} remaining",
        s.total_kept,
        out.display(),
        s.total_rejected,
        rejects_path(out).display(),
        s.remaining()
    );
    if let Ok(json) = serde_json::to_string(s) {
        println!("summary-json {json}");
    }
}

fn prepare(args: PrepareArgs) -> anyhow::Result<()> {
    let loaded = load(&args.inputs)?;
    let s = batch::prepare(
        &loaded.samples,
        &args.teacher_model,
        &args.sampling.params(),
        &loaded.out,
        &args.requests,
    )?;
    println!(
        "wrote {} request(s) to {} ({} already done, {} already in the file)",
        s.written,
        args.requests.display(),
        s.already_done,
        s.already_prepared
    );
    Ok(())
}

fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let loaded = load(&args.inputs)?;
    let s = batch::ingest(&loaded.samples, &args.results, &loaded.out, loaded.source)?;
    if s.unknown_ids > 0 {
        eprintln!(
            "warning: {} result(s) match no input of {} (another job's results?)",
            s.unknown_ids,
            args.inputs
                .input
                .as_deref()
                .map_or(String::new(), |p| p.display().to_string())
        );
    }
    print_summary(&s.summary, &loaded.out);
    Ok(())
}

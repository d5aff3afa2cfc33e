//! Where generation happens, for commands that generate (`eval`, `mine sample`): the local
//! engine with a model spec, or any OpenAI-compatible endpoint.

use anyhow::{bail, Context};
use clap::{ArgGroup, Args};
use guardreasoner_backend::{
    Backend, Balance, GenerationRequest, MultiBackend, OpenAiBackend, OpenAiConfig, PromptInput,
    RetryPolicy, DEFAULT_API_KEY_VAR,
};
use guardreasoner_engine::KvType;
use guardreasoner_runtime::{LocalBackend, RuntimeOptions};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("generator").required(true).args(["model", "endpoint"])))]
pub struct GeneratorArgs {
    /// Generate locally with this model: `default` (the embedded SmolLM2-135M), a .gguf file,
    /// a Hugging Face directory, or a Hub id.
    #[arg(long, conflicts_with = "endpoint")]
    pub model: Option<String>,
    /// Generate with an OpenAI-compatible server (`http://host:port` or `.../v1`): vLLM,
    /// llama.cpp's server, `guardreasoner serve`, ...
    #[arg(long, requires = "served_model")]
    pub endpoint: Option<String>,
    /// The model name the endpoint serves (sent as `model`).
    #[arg(long)]
    pub served_model: Option<String>,
    /// Environment variable holding the endpoint's API key (sent as a bearer token, never
    /// printed).
    #[arg(long, default_value = DEFAULT_API_KEY_VAR)]
    pub api_key_env: String,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Retries of a failed request (endpoint only) on 429/5xx/timeouts.
    #[arg(long, default_value_t = 6)]
    pub max_retries: u32,
    /// Seconds one request may take (endpoint only).
    #[arg(long, default_value_t = 900.0)]
    pub timeout_secs: f64,
}

impl GeneratorArgs {
    /// The backend and the model name to record, for `concurrency` requests in flight (also the
    /// local engine's decode batch). An endpoint is probed once, so a wrong address fails fast.
    pub fn build(
        &self,
        runtime: &tokio::runtime::Runtime,
        concurrency: usize,
    ) -> anyhow::Result<(Arc<dyn Backend>, String)> {
        let request_timeout = Duration::try_from_secs_f64(self.timeout_secs)
            .ok()
            .filter(|d| !d.is_zero())
            .context("--timeout-secs must be a positive number of seconds")?;
        match (&self.model, &self.endpoint) {
            (Some(spec), _) => {
                let options = RuntimeOptions {
                    max_batch: concurrency,
                    max_queue: concurrency.max(RuntimeOptions::default().max_queue),
                    ..self.engine.runtime_options()
                };
                let backend = LocalBackend::from_spec(Some(spec), options)
                    .with_context(|| format!("cannot load the model {spec:?}"))?;
                // `default` changes with the shipped adapter: name the run by the adapter, so a
                // resumed run never mixes two guards' outputs.
                let name = match guardreasoner_hub::ModelSpec::parse(Some(spec))? {
                    guardreasoner_hub::ModelSpec::Default => format!(
                        "default ({}, adapter {})",
                        guardreasoner_hub::guard::GUARD_NAME,
                        &guardreasoner_hub::guard::ADAPTER_SHA256[..12]
                    ),
                    _ => spec.clone(),
                };
                Ok((Arc::new(backend), name))
            }
            (None, Some(_)) if self.engine.speculation_requested() => {
                bail!("--prompt-lookup speculates inside the local engine; an --endpoint decodes on its own")
            }
            (None, Some(endpoint)) => {
                let served = self.served_model.clone().unwrap_or_default();
                let remote = Remote {
                    endpoints: vec![endpoint.clone()],
                    model: served.clone(),
                    api_key_env: self.api_key_env.clone(),
                    concurrency,
                    request_timeout,
                    max_retries: self.max_retries,
                };
                Ok((runtime.block_on(remote.backend())?, served))
            }
            (None, None) => bail!("give --model M, or --endpoint URL --served-model NAME"),
        }
    }
}

/// OpenAI-compatible endpoints to generate with, one model name for all of them.
pub struct Remote {
    pub endpoints: Vec<String>,
    pub model: String,
    /// Environment variable holding the endpoints' API key.
    pub api_key_env: String,
    /// Requests in flight at once per endpoint.
    pub concurrency: usize,
    pub request_timeout: Duration,
    pub max_retries: u32,
}

impl Remote {
    /// The backend: each endpoint probed once (a wrong address fails fast), several behind
    /// failover (an endpoint that fails is passed over for a while).
    pub async fn backend(&self) -> anyhow::Result<Arc<dyn Backend>> {
        let mut members: Vec<Arc<dyn Backend>> = Vec::new();
        for endpoint in &self.endpoints {
            let mut config = OpenAiConfig::new(endpoint.clone(), self.model.clone())
                .with_api_key_from_env(&self.api_key_env);
            config.max_concurrency = self.concurrency;
            config.request_timeout = self.request_timeout;
            config.retry.max_retries = self.max_retries;
            let backend = OpenAiBackend::new(config.clone())?;
            probe_endpoint(&config).await?;
            members.push(Arc::new(backend));
        }
        if members.len() == 1 {
            return Ok(members.remove(0));
        }
        Ok(Arc::new(MultiBackend::new(
            members,
            Balance::LeastOutstanding,
            Duration::from_secs(30),
        )?))
    }
}

/// Fail fast with a clear message when the endpoint cannot be reached, instead of retrying
/// every request with backoff.
async fn probe_endpoint(config: &OpenAiConfig) -> anyhow::Result<()> {
    let mut once = config.clone();
    once.retry = RetryPolicy {
        max_retries: 0,
        ..RetryPolicy::default()
    };
    once.max_concurrency = 1;
    let probe = OpenAiBackend::new(once)?;
    let request = GenerationRequest::new(PromptInput::Text("Hello".into()), 1);
    probe.generate(request).await.map(|_| ()).with_context(|| {
        format!(
            "cannot use the endpoint {} (model {:?}): is the server running and serving that model?",
            config.base_url, config.model
        )
    })
}

/// How the local engine runs: shared by every command that loads one.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Engine threads (default: physical cores).
    #[arg(long, env = "GUARDREASONER_THREADS")]
    pub threads: Option<usize>,
    /// Key/value cache storage.
    #[arg(long, env = "GUARDREASONER_KV_CACHE", value_enum, default_value_t = KvCacheArg::Auto)]
    pub kv_cache: KvCacheArg,
    /// Speculative decoding on the local engine: feed up to N tokens looked up in the
    /// conversation (what followed the last few generated tokens where they occurred before),
    /// else in the earlier verdicts of this run, with each decoded token, and keep those the
    /// model would have chosen anyway. The same output in fewer passes (default 2; 0: off).
    /// Drafts are made only while at most two conversations decode together: in a bigger batch
    /// a drafted token costs about as much as another conversation's.
    #[arg(long, env = "GUARDREASONER_PROMPT_LOOKUP")]
    pub prompt_lookup: Option<usize>,
}

/// Draft tokens per decoded token unless `--prompt-lookup` says otherwise: measured faster one
/// and two conversations at a time on a 2-core machine, and not drafted in bigger batches, where
/// drafts were slower (`PromptLookup::max_batch`, BENCHMARKS.md).
pub const DEFAULT_PROMPT_LOOKUP: usize = 2;

impl EngineArgs {
    /// These settings over the runtime's defaults.
    pub fn runtime_options(&self) -> RuntimeOptions {
        let draft = self.prompt_lookup.unwrap_or(DEFAULT_PROMPT_LOOKUP);
        RuntimeOptions {
            threads: self.threads,
            kv_cache: self.kv_cache.choice(),
            prompt_lookup: (draft > 0).then(|| guardreasoner_engine::PromptLookup::new(draft)),
            ..RuntimeOptions::default()
        }
    }

    /// Whether speculation was asked for explicitly (an `--endpoint` refuses it).
    pub fn speculation_requested(&self) -> bool {
        matches!(self.prompt_lookup, Some(n) if n > 0)
    }
}

/// `--kv-cache`: how the local engine stores cached keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvCacheArg {
    /// The shipped guard (`--model default`): what its card names (q8, chosen on its
    /// development splits); other models: f32 for all-f32 weights, f16 otherwise.
    Auto,
    /// 4 bytes per element.
    F32,
    /// 2 bytes per element.
    F16,
    /// 8-bit with a scale per 32 elements: 56% of f16's memory, logits within ~0.3 of f16's
    /// (enough to flip near-ties in greedy decoding; the shipped guard's F1 did not move).
    Q8,
}

impl KvCacheArg {
    /// The engine's setting (`None`: its automatic choice).
    pub fn choice(self) -> Option<KvType> {
        match self {
            KvCacheArg::Auto => None,
            KvCacheArg::F32 => Some(KvType::F32),
            KvCacheArg::F16 => Some(KvType::F16),
            KvCacheArg::Q8 => Some(KvType::Q8),
        }
    }
}

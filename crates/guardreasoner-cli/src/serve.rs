use crate::generator::{EngineArgs, Remote};
use anyhow::Context;
use clap::Args;
use guardreasoner_runtime::{LocalBackend, RuntimeOptions};
use guardreasoner_server::{serve, Served, ServerConfig};

#[derive(Args)]
pub struct ServeArgs {
    /// Model: `default` (the embedded SmolLM2-135M), a .gguf file, a Hugging Face directory, or
    /// a Hub id.
    #[arg(long, env = "GUARDREASONER_MODEL")]
    model: Option<String>,
    /// Serve the guard API in front of this OpenAI-compatible server (vLLM, llama.cpp's
    /// server, another `guardreasoner serve`) instead of a local model; repeat for failover.
    /// Its outputs are parsed strictly and fail closed as the local engine's are; it gives no
    /// label scores, so reasoning stays `full` and there are no thresholds.
    #[arg(long = "endpoint", value_name = "URL")]
    endpoints: Vec<String>,
    /// The model name the endpoints serve (default: --served-model).
    #[arg(long, requires = "endpoints")]
    endpoint_model: Option<String>,
    /// Environment variable holding the endpoints' API key (sent as a bearer token).
    #[arg(long, default_value = guardreasoner_backend::DEFAULT_API_KEY_VAR)]
    endpoint_api_key_env: String,
    /// Seconds one request to an endpoint may take.
    #[arg(long, default_value_t = 900.0)]
    endpoint_timeout_secs: f64,
    /// Address to listen on.
    #[arg(long, env = "GUARDREASONER_ADDR", default_value = "127.0.0.1:8080")]
    addr: String,
    /// The model name clients send and /v1/models lists.
    #[arg(
        long,
        env = "GUARDREASONER_SERVED_MODEL",
        default_value = "guardreasoner"
    )]
    served_model: String,
    /// Require `Authorization: Bearer <key>` on /v1/* (health and metrics stay open).
    #[arg(long, env = "GUARDREASONER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, env = "GUARDREASONER_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Most prompt tokens per request (default: the model's context window).
    #[arg(long, env = "GUARDREASONER_MAX_INPUT_TOKENS")]
    max_input_tokens: Option<usize>,
    /// Most new tokens a request may ask for.
    #[arg(long, env = "GUARDREASONER_MAX_NEW_TOKENS", default_value_t = 2048)]
    max_new_tokens: u32,
    /// Sequences decoded together (continuous batching).
    #[arg(long, env = "GUARDREASONER_MAX_BATCH", default_value_t = 16)]
    max_batch: usize,
    /// Requests waiting or running at once; more are answered 429.
    #[arg(long, env = "GUARDREASONER_MAX_QUEUE", default_value_t = 256)]
    max_queue: usize,
    #[command(flatten)]
    engine: EngineArgs,
    /// Flag a request or response whose harmful score reaches this probability instead of
    /// following the label the model wrote (a request's `threshold` overrides it).
    #[arg(long, env = "GUARDREASONER_THRESHOLD", value_parser = crate::classify::parse_threshold)]
    threshold: Option<f32>,
    /// Reasoning tokens before a guard answer is forced (a request's `max_reasoning_tokens`
    /// overrides it; default: what the token budget leaves room for).
    #[arg(long, env = "GUARDREASONER_MAX_REASONING_TOKENS")]
    max_reasoning_tokens: Option<u32>,
    /// The guard's default reasoning (a request's `reasoning` overrides it).
    #[command(flatten)]
    reasoning: crate::classify::ReasoningArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.addr).await.with_context(|| format!("cannot listen on {}", args.addr))?;
        eprintln!("guardreasoner: listening on http://{} (loading the model; /health answers 503 until it is ready)", listener.local_addr()?);
        let remote = !args.endpoints.is_empty();
        let defaults = if remote {
            check_remote(&args)?;
            args.reasoning.over(crate::classify::GuardDefaults::reasoning_fully())?
        } else {
            args.reasoning.resolve(args.model.as_deref())?
        };
        if remote && defaults.reasoning != guardreasoner_core::ReasoningMode::Full {
            anyhow::bail!("--reasoning {} needs label scores and a constrained answer, which an --endpoint cannot give; use --reasoning full", defaults.reasoning.name());
        }
        let config = ServerConfig {
            served_model: args.served_model,
            api_key: args.api_key,
            max_body_bytes: args.max_body_bytes,
            max_new_tokens: args.max_new_tokens,
            guard_max_new_tokens: args.max_new_tokens,
            flag_threshold: args.threshold,
            max_reasoning_tokens: args.max_reasoning_tokens,
            reasoning: defaults.reasoning,
            uncertainty_band: defaults.band,
            calibration: defaults.calibration,
            ..ServerConfig::default()
        };
        let options = RuntimeOptions {
            max_batch: args.max_batch.max(1),
            max_queue: args.max_queue.max(1),
            max_input_tokens: args.max_input_tokens,
            ..args.engine.runtime_options()
        };
        let load: Box<dyn FnOnce() -> Result<Served, String> + Send> = if remote {
            let upstream = Remote {
                endpoints: args.endpoints.clone(),
                model: args.endpoint_model.clone().unwrap_or_else(|| config.served_model.clone()),
                api_key_env: args.endpoint_api_key_env.clone(),
                concurrency: args.max_batch.max(1),
                request_timeout: std::time::Duration::try_from_secs_f64(args.endpoint_timeout_secs)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .context("--endpoint-timeout-secs must be a positive number of seconds")?,
                max_retries: 6,
            };
            let backend = upstream.backend().await?;
            eprintln!("guardreasoner: serving in front of {}", backend.name());
            Box::new(move || Ok(Served::remote(backend)))
        } else {
            let model = args.model;
            Box::new(move || match LocalBackend::from_spec(model.as_deref(), options) {
                Ok(backend) => {
                    eprintln!("guardreasoner: model loaded, serving");
                    Ok(backend.into())
                }
                Err(e) => {
                    eprintln!("error: cannot load the model: {e}");
                    Err(e.to_string())
                }
            })
        };
        serve(listener, config, load, shutdown_signal()).await?;
        eprintln!("guardreasoner: stopped");
        anyhow::Ok(())
    })
}

/// What an --endpoint cannot do, refused at start instead of ignored.
fn check_remote(args: &ServeArgs) -> anyhow::Result<()> {
    if args.model.is_some() {
        anyhow::bail!("give --model (a local model) or --endpoint (a remote server), not both");
    }
    if args.threshold.is_some() {
        anyhow::bail!("--threshold needs label scores, which an --endpoint cannot give");
    }
    if args.max_reasoning_tokens.is_some() {
        anyhow::bail!(
            "--max-reasoning-tokens needs a constrained answer, which an --endpoint cannot give"
        );
    }
    if args.engine.speculation_requested() {
        anyhow::bail!(
            "--prompt-lookup speculates inside the local engine; an --endpoint decodes on its own"
        );
    }
    Ok(())
}

/// Ctrl-C or SIGTERM: stop accepting, finish in-flight requests, exit.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    eprintln!("guardreasoner: shutting down, finishing in-flight requests");
}

//! Where requests become batched engine work: the local backend validates and tokenises on the
//! caller's side and hands jobs to one scheduler thread, which runs the continuous-batching
//! loop (`batching.rs`).

use crate::chat::encode_chat;
use crate::metrics::Metrics;
use async_trait::async_trait;
use guardreasoner_backend::{
    Backend, BackendError, BackendStats, Choice, EngineTimings, EventStream, FinishReason,
    Generation, GenerationRequest, PromptInput, StreamEvent, TokenLogprob, Usage,
};
use guardreasoner_core::Conversation;
use guardreasoner_engine::{
    AnswerConstraint, ContinuationProbe, Engine, EngineError, KvType, LoadOptions, PromptLookup,
    SamplingParams, SequenceOptions,
};
use guardreasoner_tokenizer::{Tokenizer, TokenizerError};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Failures of loading the local backend.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Hub(#[from] guardreasoner_hub::HubError),
    #[error("cannot start the scheduler thread: {0}")]
    Thread(String),
}

/// Limits and sizes of the local backend.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Engine worker threads (default: physical cores).
    pub threads: Option<usize>,
    /// Dequantise every weight to f32 at load (reference checks only).
    pub dequantize: bool,
    /// Key/value cache storage (default: chosen from the weights, see `Llama::kv_type`).
    pub kv_cache: Option<KvType>,
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Most requests waiting or running; more are refused (`RateLimited`, HTTP 429).
    pub max_queue: usize,
    /// Most prompt tokens processed per step, so running sequences are not stalled long.
    pub prefill_chunk: usize,
    /// Most prompt tokens accepted (default: the context window).
    pub max_input_tokens: Option<usize>,
    /// Speculative decoding with drafts looked up in each sequence's text (default: off).
    pub prompt_lookup: Option<PromptLookup>,
    /// The name the backend reports (default: the model file or directory name).
    pub model_name: Option<String>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            threads: None,
            dequantize: false,
            kv_cache: None,
            max_batch: 16,
            max_queue: 256,
            prefill_chunk: 512,
            max_input_tokens: None,
            prompt_lookup: None,
            model_name: None,
        }
    }
}

/// What a submitted request streams back, per choice.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text of one choice: complete UTF-8, with any possible start of a stop string held
    /// back until it is known not to be one. `token`/`logprob` are the token just generated.
    Text {
        choice: usize,
        delta: String,
        token: u32,
        logprob: f32,
    },
    /// A choice is complete.
    Done {
        choice: usize,
        text: String,
        finish_reason: FinishReason,
        completion_tokens: usize,
        logprobs: Option<Vec<TokenLogprob>>,
        /// Per probe of the request, the log-probability of each alternative (empty when the
        /// request had none).
        probe_logprobs: Vec<Option<Vec<f32>>>,
        /// With a constrained ending: whether the answer header had to be forced.
        forced_ending: Option<bool>,
        reused_prompt_tokens: usize,
        prefill_s: f64,
        decode_s: f64,
    },
    /// The engine failed; no more events follow.
    Failed(String),
}

/// A request accepted into the queue. Dropping `events` cancels it.
pub struct Submission {
    pub prompt_tokens: usize,
    pub n: usize,
    pub events: UnboundedReceiver<Event>,
    pub submitted: Instant,
}

/// A request as the batching loop receives it.
pub(crate) struct Job {
    pub(crate) prompt: Vec<u32>,
    pub(crate) params: SamplingParams,
    pub(crate) stop: Vec<String>,
    pub(crate) logprobs: bool,
    pub(crate) options: SequenceOptions,
    pub(crate) events: UnboundedSender<Event>,
    pub(crate) submitted: Instant,
}

/// What the caller's side and the batching loop share.
pub(crate) struct Shared {
    pub(crate) engine: Arc<Engine>,
    pub(crate) tokenizer: Arc<Tokenizer>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) options: RuntimeOptions,
    pub(crate) name: String,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) stats: Mutex<BackendStats>,
}

/// The local engine as a [`Backend`]. Cheap to share (`Arc`).
pub struct LocalBackend {
    shared: Arc<Shared>,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The key/value cache the shipped guard's card names (`None`: the engine's own choice).
pub fn default_guard_kv_cache() -> Result<Option<KvType>, RuntimeError> {
    let invalid = |message: String| RuntimeError::Engine(EngineError::InvalidParams(message));
    let card =
        guardreasoner_hub::guard::GuardCard::embedded().map_err(|e| invalid(e.to_string()))?;
    card.engine
        .as_ref()
        .and_then(|engine| engine.kv_cache.as_deref())
        .map(|name| {
            name.parse().map_err(|e: String| {
                invalid(format!("the shipped guard card's engine.kv_cache: {e}"))
            })
        })
        .transpose()
}

/// Resolve a model spec to files on disk, with the key/value cache it runs with: `kv_cache`
/// when given, else the card's for the shipped guard ([`default_guard_kv_cache`]), else `None`
/// (the engine's own choice).
pub fn resolve_model(
    spec: Option<&str>,
    kv_cache: Option<KvType>,
) -> Result<(guardreasoner_hub::ResolvedModel, Option<KvType>), RuntimeError> {
    let resolved = guardreasoner_hub::resolve_from_env(spec)?;
    let kv_cache = match kv_cache {
        None if guardreasoner_hub::ModelSpec::parse(spec)?
            == guardreasoner_hub::ModelSpec::Default =>
        {
            default_guard_kv_cache()?
        }
        given => given,
    };
    Ok((resolved, kv_cache))
}

impl LocalBackend {
    /// Resolve a model spec (`None`/`default` for the embedded model, fetched on first use; a
    /// `.gguf` path; a Hugging Face directory; a Hub id) and load it.
    ///
    /// The shipped guard runs with the key/value cache its card names unless
    /// `options.kv_cache` says otherwise ([`default_guard_kv_cache`]).
    pub fn from_spec(
        spec: Option<&str>,
        mut options: RuntimeOptions,
    ) -> Result<LocalBackend, RuntimeError> {
        let (resolved, kv_cache) = resolve_model(spec, options.kv_cache)?;
        options.kv_cache = kv_cache;
        LocalBackend::load(resolved.path(), options)
    }

    /// Load a GGUF file or a Hugging Face directory, its tokenizer, and start the scheduler.
    pub fn load(path: &Path, options: RuntimeOptions) -> Result<LocalBackend, RuntimeError> {
        let engine = Engine::load_with(
            path,
            &LoadOptions {
                threads: options.threads,
                dequantize: options.dequantize,
                kv_cache: options.kv_cache,
            },
        )?;
        let tokenizer = if path.is_dir() {
            Tokenizer::from_hf_dir(path)?
        } else {
            Tokenizer::from_gguf_path(path)?
        };
        let name = options.model_name.clone().unwrap_or_else(|| {
            path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        });
        LocalBackend::from_parts(Arc::new(engine), Arc::new(tokenizer), name, options)
    }

    /// Start a backend over an already loaded engine and tokenizer.
    pub fn from_parts(
        engine: Arc<Engine>,
        tokenizer: Arc<Tokenizer>,
        name: String,
        options: RuntimeOptions,
    ) -> Result<LocalBackend, RuntimeError> {
        register_guard_prefix(&engine, &tokenizer)?;
        let shared = Arc::new(Shared {
            engine,
            tokenizer,
            metrics: Arc::new(Metrics::default()),
            options,
            name,
            in_flight: AtomicUsize::new(0),
            stats: Mutex::new(BackendStats::default()),
        });
        let (tx, rx) = mpsc::channel();
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("guardreasoner-scheduler".into())
            .spawn(move || crate::batching::run_scheduler(&worker, rx))
            .map_err(|e| RuntimeError::Thread(e.to_string()))?;
        Ok(LocalBackend {
            shared,
            queue: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.shared.options
    }

    /// Most prompt tokens a request may have with `max_new_tokens` new ones.
    pub fn max_input_tokens(&self) -> usize {
        let context = self.shared.engine.context_length();
        self.shared
            .options
            .max_input_tokens
            .map_or(context, |m| m.min(context))
    }

    /// Token ids of a request's input (BOS added where the model wants one). User text is
    /// encoded untrusted: special-token text in it stays text.
    pub fn encode_input(&self, input: &PromptInput) -> Result<Vec<u32>, BackendError> {
        let tokenizer = &self.shared.tokenizer;
        match input {
            PromptInput::Text(text) => {
                let mut ids = Vec::new();
                let special = tokenizer.special_ids();
                if let (true, Some(bos)) = (special.add_bos, special.bos) {
                    ids.push(bos);
                }
                ids.extend(
                    tokenizer
                        .encode_untrusted(text)
                        .map_err(|e| BackendError::Validation(e.to_string()))?,
                );
                Ok(ids)
            }
            PromptInput::Chat(messages) => {
                encode_chat(tokenizer, messages).map_err(BackendError::Validation)
            }
        }
    }

    /// A request's probes and constrained ending as token ids. They are model text (never
    /// user text), encoded as the model writes them: without BOS.
    fn encode_options(&self, request: &GenerationRequest) -> Result<SequenceOptions, BackendError> {
        let encode = |text: &str| {
            self.shared
                .tokenizer
                .encode_untrusted(text)
                .map_err(|e| BackendError::Validation(e.to_string()))
        };
        let answer = match &request.ending {
            None => None,
            Some(e) => {
                let trigger = encode(&e.header)?;
                // One piece, as the trained guard's outputs encode it (and as direct-answer
                // training records present it: `answer_grammar::forced_prefix`).
                let forced = encode(&format!("{}{}", e.separator, e.header))?;
                let constraint = AnswerConstraint {
                    trigger,
                    forced,
                    endings: e
                        .endings
                        .iter()
                        .map(|t| encode(t))
                        .collect::<Result<_, _>>()?,
                    budget: e.max_reasoning_tokens.map(|n| n as usize),
                };
                let fits = constraint.reserve() < request.max_new_tokens as usize;
                match (fits, e.max_reasoning_tokens) {
                    (true, _) => Some(constraint),
                    // A token budget too small for any answer: generated unconstrained (the
                    // strict parser fails it closed, and the choice says nothing was forced).
                    (false, None) => None,
                    (false, Some(_)) => {
                        return Err(BackendError::Validation(format!(
                            "max_new_tokens ({}) must leave room for the {}-token answer after max_reasoning_tokens",
                            request.max_new_tokens,
                            constraint.reserve()
                        )))
                    }
                }
            }
        };
        let probes = request
            .probes
            .iter()
            .map(|p| {
                Ok(ContinuationProbe {
                    marker: encode(&p.marker)?,
                    alternatives: p
                        .alternatives
                        .iter()
                        .map(|a| encode(a))
                        .collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        Ok(SequenceOptions { probes, answer })
    }

    /// Validate, tokenise and queue a request. Errors here happen before anything is queued.
    pub fn submit(&self, request: &GenerationRequest) -> Result<Submission, BackendError> {
        let metrics = &self.shared.metrics;
        let fail = |kind: &str, e: BackendError| {
            metrics.failure(kind);
            Err(e)
        };
        if let Err(e) = request.validate() {
            return fail("validation", e);
        }
        let prompt = match self.encode_input(&request.input) {
            Ok(p) => p,
            Err(e) => return fail("validation", e),
        };
        let max_new = request.max_new_tokens as usize;
        let (limit, context) = (self.max_input_tokens(), self.shared.engine.context_length());
        if prompt.is_empty() {
            return fail(
                "validation",
                BackendError::Validation("the prompt encodes to no tokens".into()),
            );
        }
        if prompt.len() > limit || prompt.len() + max_new > context {
            return fail(
                "validation",
                BackendError::InputTooLong {
                    prompt_tokens: prompt.len(),
                    max_new_tokens: max_new,
                    max_prompt_tokens: limit,
                    context,
                },
            );
        }
        let options = match self.encode_options(request) {
            Ok(o) => o,
            Err(e) => return fail("validation", e),
        };
        let n = request.n as usize;
        if n > self.shared.options.max_batch {
            return fail(
                "validation",
                BackendError::Validation(format!(
                    "n = {n} exceeds the batch size {}",
                    self.shared.options.max_batch
                )),
            );
        }
        let reserved = self.shared.in_flight.fetch_add(1, Relaxed);
        if reserved >= self.shared.options.max_queue {
            self.shared.in_flight.fetch_sub(1, Relaxed);
            return fail(
                "queue_full",
                BackendError::RateLimited {
                    endpoint: self.shared.name.clone(),
                    retry_after: Some(Duration::from_secs(1)),
                    body: format!(
                        "the queue is full ({} requests)",
                        self.shared.options.max_queue
                    ),
                },
            );
        }
        let seed = request.seed.unwrap_or_else(|| {
            // Unseeded sampling still needs a stream; greedy ignores it.
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let params = SamplingParams {
            temperature: request.temperature,
            top_p: request.top_p,
            seed,
            max_new_tokens: max_new,
            n,
            ..SamplingParams::default()
        };
        let (tx, rx) = unbounded_channel();
        let submitted = Instant::now();
        let job = Job {
            prompt: prompt.clone(),
            params,
            stop: request.stop.clone(),
            logprobs: request.logprobs,
            options,
            events: tx,
            submitted,
        };
        let sent = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|q| q.send(job).is_ok());
        if sent != Some(true) {
            self.shared.in_flight.fetch_sub(1, Relaxed);
            return fail("shutdown", BackendError::Cancelled);
        }
        metrics.requests.fetch_add(1, Relaxed);
        metrics.queue_depth.fetch_add(1, Relaxed);
        metrics
            .prompt_tokens
            .fetch_add(prompt.len() as u64, Relaxed);
        Ok(Submission {
            prompt_tokens: prompt.len(),
            n,
            events: rx,
            submitted,
        })
    }

    /// Stop accepting requests, let running ones finish, and wait for the scheduler.
    pub fn shutdown(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }

    /// Requests waiting or running.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Relaxed)
    }
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        // The scheduler finishes what it holds and exits once the queue is closed.
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Collect a submission's events into a [`Generation`].
pub async fn collect(
    mut submission: Submission,
    model: String,
) -> Result<Generation, BackendError> {
    let mut choices: Vec<Option<Choice>> = vec![None; submission.n];
    let mut completion_tokens = 0u64;
    // The choices run side by side: the request took as long as the slowest.
    let mut timings = EngineTimings::default();
    while choices.iter().any(Option::is_none) {
        match submission.events.recv().await {
            Some(Event::Done {
                choice,
                text,
                finish_reason,
                completion_tokens: c,
                logprobs,
                probe_logprobs,
                forced_ending,
                reused_prompt_tokens,
                prefill_s,
                decode_s,
                ..
            }) => {
                completion_tokens += c as u64;
                timings.reused_prompt_tokens += reused_prompt_tokens as u64;
                timings.prefill_s = timings.prefill_s.max(prefill_s);
                timings.decode_s = timings.decode_s.max(decode_s);
                choices[choice] = Some(Choice {
                    text,
                    finish_reason,
                    completion_tokens: Some(c as u32),
                    logprobs,
                    probe_logprobs: (!probe_logprobs.is_empty()).then_some(probe_logprobs),
                    forced_ending,
                });
            }
            Some(Event::Text { .. }) => {}
            Some(Event::Failed(message)) => return Err(BackendError::Engine(message)),
            None => return Err(BackendError::Cancelled),
        }
    }
    Ok(Generation {
        choices: choices.into_iter().flatten().collect(),
        usage: Usage {
            prompt_tokens: submission.prompt_tokens as u64,
            completion_tokens,
        },
        model,
        retries: 0,
        timings: Some(timings),
    })
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> String {
        format!("local:{}", self.shared.name)
    }

    async fn generate(&self, request: GenerationRequest) -> Result<Generation, BackendError> {
        let result = match self.submit(&request) {
            Ok(submission) => collect(submission, self.shared.name.clone()).await,
            Err(e) => Err(e),
        };
        let mut stats = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.requests += 1;
        stats.attempts += 1;
        match &result {
            Ok(g) => {
                stats.prompt_tokens += g.usage.prompt_tokens;
                stats.completion_tokens += g.usage.completion_tokens;
            }
            Err(_) => stats.failures += 1,
        }
        result
    }

    async fn generate_stream(
        &self,
        request: GenerationRequest,
    ) -> Result<EventStream, BackendError> {
        let submission = self.submit(&request)?;
        // The state: the submission and how many of its choices have not ended yet.
        let left = submission.n;
        let events =
            futures_util::stream::unfold((submission, left), |(mut sub, mut left)| async move {
                if left == 0 {
                    return None;
                }
                loop {
                    let event = match sub.events.recv().await? {
                        Event::Text { choice, delta, .. } if !delta.is_empty() => {
                            Ok(StreamEvent::Text { choice, delta })
                        }
                        Event::Text { .. } => continue,
                        Event::Done {
                            choice,
                            finish_reason,
                            ..
                        } => {
                            left -= 1;
                            Ok(StreamEvent::Finished {
                                choice,
                                finish_reason,
                            })
                        }
                        Event::Failed(message) => {
                            left = 0;
                            Err(BackendError::Engine(message))
                        }
                    };
                    return Some((event, (sub, left)));
                }
            });
        Ok(Box::pin(events))
    }

    fn scores_answers(&self) -> bool {
        true
    }

    fn stats(&self) -> BackendStats {
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The guard instruction is the same for every request: compute its keys/values once. The
/// shared prefix is found as the common token prefix of two guard prompts, so BPE merges
/// across the boundary can never make a cached prefix disagree with a real prompt.
fn register_guard_prefix(engine: &Engine, tokenizer: &Tokenizer) -> Result<(), RuntimeError> {
    let a = tokenizer.encode_guard_prompt(&Conversation::new("a", None))?;
    let b = tokenizer.encode_guard_prompt(&Conversation::new("Z9", Some("q".into())))?;
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let special = tokenizer.special_ids();
    if common > 1 && !(special.add_bos && special.bos.is_some()) {
        engine.register_prefix(&a[..common])?;
    } else if common > 1 {
        let mut with_bos = vec![special.bos.expect("checked above")];
        with_bos.extend_from_slice(&a[..common]);
        engine.register_prefix(&with_bos)?;
    }
    Ok(())
}

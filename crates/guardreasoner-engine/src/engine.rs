//! The high-level API: load a model, generate for many prompts at once, or drive a
//! [`DecodeBatch`] step by step (continuous batching).

use crate::answer::AnswerConstraint;
use crate::batch::{DecodeBatch, SeqId};
use crate::config::Config;
use crate::error::{EngineError, Result};
use crate::llama::{ForwardScratch, KvCache, KvType, Llama, LogitsFor, SeqStep};
use crate::probe::ContinuationProbe;
use crate::sampling::SamplingParams;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Worker threads (default: the number of physical cores).
    pub threads: Option<usize>,
    /// Convert every weight to f32 after loading (reference checks; uses 4 bytes per weight).
    pub dequantize: bool,
    /// How to store the key/value cache (default: from the weights, see [`Llama::kv_type`]).
    pub kv_cache: Option<KvType>,
}

/// A prompt to continue.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence or stop token was generated (it is the last of `tokens`).
    Stop,
    /// `max_new_tokens` were generated.
    Length,
    /// Cancelled by the caller.
    Cancelled,
}

/// Wall-clock times of one generated sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// From being added to the first generated token (prompt processing, shared with the
    /// other sequences of the batch).
    pub prefill_s: f64,
    /// From the first generated token to the last.
    pub decode_s: f64,
}

/// The result for one sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Generated token ids (the stop token included when `finish_reason` is `Stop`).
    pub tokens: Vec<u32>,
    /// Natural-log probability of each generated token under the model.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys/values came from a registered prefix instead of being computed.
    pub reused_prompt_tokens: usize,
    pub timings: Timings,
    /// For each probe the sequence was added with ([`DecodeBatch::add_with`]): the
    /// log-probability of each alternative, or `None` where the marker was not generated (or
    /// the sequence was cancelled).
    pub probe_logprobs: Vec<Option<Vec<f32>>>,
    /// Whether an [`AnswerConstraint`] had to force the answer (the reasoning budget ran out,
    /// or the sequence would have ended without answering).
    pub forced_answer: bool,
    /// Prompt-lookup draft tokens fed ([`DecodeBatch::prompt_lookup`]), and those kept.
    pub drafted_tokens: usize,
    pub accepted_draft_tokens: usize,
}

/// What a sequence is added with besides its prompt and sampling settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SequenceOptions {
    /// Continuations to score once it ends ([`Generation::probe_logprobs`]).
    pub probes: Vec<ContinuationProbe>,
    /// How it must end ([`AnswerConstraint`]).
    pub answer: Option<AnswerConstraint>,
}

/// A prompt prefix whose keys/values are computed once and read (not copied) by every
/// sequence that starts with it (the guard instruction).
pub(crate) struct Prefix {
    pub(crate) tokens: Vec<u32>,
    pub(crate) cache: Arc<KvCache>,
}

/// A loaded model with its worker threads. `Send + Sync`: share it with `Arc`.
pub struct Engine {
    pub(crate) model: Llama,
    pub(crate) pool: rayon::ThreadPool,
    threads: usize,
    pub(crate) eos: Vec<u32>,
    pub(crate) prefixes: RwLock<Vec<Arc<Prefix>>>,
}

impl Engine {
    /// Load a GGUF file or a Hugging Face directory with default options.
    pub fn load(path: impl AsRef<Path>) -> Result<Engine> {
        Engine::load_with(path, &LoadOptions::default())
    }

    /// Load a GGUF file (`*.gguf`) or a Hugging Face directory (`config.json` + safetensors).
    pub fn load_with(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Engine> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(EngineError::ModelNotFound(path.to_path_buf()));
        }
        let model = if path.is_dir() {
            Llama::from_hf_dir(path)?
        } else {
            Llama::from_gguf(path)?
        };
        let mut model = if options.dequantize {
            model.dequantized()
        } else {
            model
        };
        model.set_kv_type(options.kv_cache)?;
        Engine::from_model(model, options.threads)
    }

    /// Wrap a loaded model (laying its matrices out for this CPU, see [`Llama::set_kv_type`]).
    pub fn from_model(mut model: Llama, threads: Option<usize>) -> Result<Engine> {
        model.prepare_matrices();
        let threads = threads.unwrap_or_else(num_cpus::get_physical).max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("guardreasoner-engine-{i}"))
            .build()
            .map_err(|e| EngineError::ThreadPool(e.to_string()))?;
        let eos = model.config().eos_token_ids();
        Ok(Engine {
            model,
            pool,
            threads,
            eos,
            prefixes: RwLock::new(Vec::new()),
        })
    }

    /// The model configuration.
    pub fn config(&self) -> &Config {
        self.model.config()
    }

    /// The model.
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Token ids that end generation.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    /// The context window in tokens.
    pub fn context_length(&self) -> usize {
        self.config().max_position_embeddings
    }

    /// Logits after the last token of `ids` (one forward pass from an empty cache).
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        self.run_prompt(ids, LogitsFor::Last)
    }

    /// Logits after every token of `ids`, concatenated (`ids.len() * vocab_size` values).
    pub fn logits_all(&self, ids: &[u32]) -> Result<Vec<f32>> {
        self.run_prompt(ids, LogitsFor::All)
    }

    fn run_prompt(&self, ids: &[u32], logits: LogitsFor) -> Result<Vec<f32>> {
        self.check_prompt(ids, 0)?;
        let mut cache = self.model.new_cache(ids.len());
        let mut scratch = ForwardScratch::default();
        self.pool.install(|| {
            self.model.forward(
                &mut [SeqStep {
                    cache: &mut cache,
                    tokens: ids,
                    logits,
                }],
                &mut scratch,
            )
        })
    }

    pub(crate) fn check_prompt(&self, ids: &[u32], max_new_tokens: usize) -> Result<()> {
        if ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let vocab = self.config().vocab_size;
        if let Some(&token) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::TokenOutOfRange { token, vocab });
        }
        let context = self.context_length();
        if ids.len() + max_new_tokens > context {
            return Err(EngineError::ContextOverflow {
                prompt: ids.len(),
                max_new_tokens,
                needed: ids.len() + max_new_tokens,
                context,
            });
        }
        Ok(())
    }

    /// Compute the keys/values of `ids` once; every later sequence whose prompt starts with
    /// them starts from a copy instead of recomputing them. Register the guard instruction.
    pub fn register_prefix(&self, ids: &[u32]) -> Result<()> {
        self.check_prompt(ids, 0)?;
        let cache = self.prefill_cache(ids)?;
        let mut prefixes = self.prefixes.write().unwrap_or_else(|e| e.into_inner());
        prefixes.retain(|p| p.tokens != ids);
        prefixes.push(Arc::new(Prefix {
            tokens: ids.to_vec(),
            cache: Arc::new(cache),
        }));
        Ok(())
    }

    pub(crate) fn prefill_cache(&self, ids: &[u32]) -> Result<KvCache> {
        let mut cache = self.model.new_cache(ids.len());
        let mut scratch = ForwardScratch::default();
        self.pool.install(|| {
            self.model.forward(
                &mut [SeqStep {
                    cache: &mut cache,
                    tokens: ids,
                    logits: LogitsFor::Nothing,
                }],
                &mut scratch,
            )
        })?;
        Ok(cache)
    }

    /// A new, empty batch for step-by-step decoding.
    pub fn batch(&self) -> DecodeBatch<'_> {
        DecodeBatch::new(self)
    }

    /// Generate for every request together (one batch) and return one [`Generation`] per
    /// sample: request `i`'s `n` samples come in order, after those of requests `0..i`.
    /// `on_token(index, token)` is called for every token as it is produced, `index` counting
    /// samples in that same order.
    pub fn generate(
        &self,
        requests: &[GenerationRequest],
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<Vec<Generation>> {
        let mut batch = self.batch();
        let mut ids = Vec::new();
        for request in requests {
            ids.extend(batch.add_samples(
                request.prompt_ids.clone(),
                request.params.clone(),
                request.params.n,
                SequenceOptions::default(),
            )?);
        }
        let mut results: Vec<Option<Generation>> = vec![None; ids.len()];
        let slot = |id: SeqId| ids.iter().position(|&x| x == id);
        while !batch.is_empty() {
            for event in batch.step()? {
                if let Some(i) = slot(event.id) {
                    on_token(i, event.token);
                    if let Some(generation) = event.finished {
                        results[i] = Some(generation);
                    }
                }
            }
        }
        Ok(results.into_iter().flatten().collect())
    }
}

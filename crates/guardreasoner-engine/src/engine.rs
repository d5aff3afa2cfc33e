//! The high-level API: load a model, generate for many prompts at once, or drive a
//! [`DecodeBatch`] step by step (continuous batching).

use crate::answer::{AnswerConstraint, Answering, Choice};
use crate::config::Config;
use crate::error::{EngineError, Result};
use crate::llama::{ForwardScratch, KvCache, KvType, Llama, LogitsFor, SeqStep};
use crate::lookup::{DraftHistory, PromptLookup};
use crate::probe::{self, ContinuationProbe};
use crate::sampling::Sampled;
use crate::sampling::{Sampler, SamplingParams};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Instant;

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
struct Prefix {
    tokens: Vec<u32>,
    cache: Arc<KvCache>,
}

/// A loaded model with its worker threads. `Send + Sync`: share it with `Arc`.
pub struct Engine {
    model: Llama,
    pool: rayon::ThreadPool,
    threads: usize,
    eos: Vec<u32>,
    prefixes: RwLock<Vec<Arc<Prefix>>>,
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

    fn check_prompt(&self, ids: &[u32], max_new_tokens: usize) -> Result<()> {
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

    fn prefill_cache(&self, ids: &[u32]) -> Result<KvCache> {
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

/// Identifies a sequence in a [`DecodeBatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId(pub u64);

/// One token a [`DecodeBatch::step`] produced (a sequence that fed a forced run gets several).
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    pub id: SeqId,
    pub token: u32,
    pub logprob: f32,
    /// Set when this token ended the sequence (it has left the batch).
    pub finished: Option<Generation>,
}

/// Most forced tokens fed in one pass (an answer block is about 25 tokens).
const MAX_FORCED_RUN: usize = 32;

struct Active {
    id: SeqId,
    prompt: Vec<u32>,
    /// Prompt tokens already in the cache.
    fed: usize,
    reused: usize,
    cache: KvCache,
    params: SamplingParams,
    sampler: Sampler,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    added: Instant,
    first_token: Option<Instant>,
    probes: Vec<ContinuationProbe>,
    probe_logprobs: Vec<Option<Vec<f32>>>,
    answer: Option<Answering>,
    /// Tokens expected to follow `tokens`, fed with its last token in the next pass and kept
    /// as far as the choices made from that pass's logits agree with them.
    draft: Vec<u32>,
    /// Whether `draft` was looked up (not forced).
    looked_up: bool,
    /// Looked-up draft tokens fed, and kept.
    drafted: usize,
    accepted: usize,
}

impl Active {
    /// The next token: sampled, sampled among what the answer constraint allows, or forced.
    fn choose(&mut self, row: &[f32], eos: &[u32]) -> Sampled {
        let choice = match &mut self.answer {
            None => Choice::Free,
            Some(a) => a.next(self.tokens.len()),
        };
        match choice {
            Choice::Free => {
                let pick = self.sampler.sample(row);
                let ends = !self.params.ignore_eos && eos.contains(&pick.token);
                // Ending before answering: the answer is forced instead.
                let intercepted = ends && self.answer.as_mut().is_some_and(|a| a.intercept_end());
                if intercepted {
                    self.choose(row, eos)
                } else {
                    pick
                }
            }
            Choice::Force(token) => Sampled {
                token,
                logprob: probe::log_softmax_at(row, token as usize) as f32,
            },
            Choice::Among(allowed) => {
                let mut masked = vec![f32::NEG_INFINITY; row.len()];
                for &t in &allowed {
                    masked[t as usize] = row[t as usize];
                }
                let token = self.sampler.sample(&masked).token;
                Sampled {
                    token,
                    logprob: probe::log_softmax_at(row, token as usize) as f32,
                }
            }
        }
    }

    /// Tokens that may be fed after the last one within the token budget.
    fn room(&self) -> usize {
        self.params
            .max_new_tokens
            .saturating_sub(self.tokens.len() + 1)
    }

    /// The forced tokens that will follow, as far as the token budget goes.
    fn forced_run(&self) -> Vec<u32> {
        match &self.answer {
            Some(a) => a.forced_run(&self.tokens, self.room().min(MAX_FORCED_RUN)),
            None => Vec::new(),
        }
    }

    fn finish(self, reason: FinishReason) -> Generation {
        let mut probe_logprobs = self.probe_logprobs;
        probe_logprobs.resize(self.probes.len(), None);
        let forced_answer = self.answer.as_ref().is_some_and(|a| a.forced);
        let now = Instant::now();
        let first = self.first_token.unwrap_or(now);
        Generation {
            tokens: self.tokens,
            logprobs: self.logprobs,
            finish_reason: reason,
            prompt_tokens: self.prompt.len(),
            reused_prompt_tokens: self.reused,
            timings: Timings {
                prefill_s: first.duration_since(self.added).as_secs_f64(),
                decode_s: now.duration_since(first).as_secs_f64(),
            },
            probe_logprobs,
            forced_answer,
            drafted_tokens: self.drafted,
            accepted_draft_tokens: self.accepted,
        }
    }
}

/// Sequences decoded together, one token each per [`step`](DecodeBatch::step), or a run of
/// tokens where they are forced (an answer constraint's header and fixed text). Sequences can
/// be added or cancelled between steps (continuous batching); a new sequence's prompt is
/// processed in chunks inside the same forward passes that decode the others.
pub struct DecodeBatch<'e> {
    engine: &'e Engine,
    seqs: Vec<Active>,
    /// Further samples of a prompt another sequence (the leader) is reading: they join the
    /// batch with a copy of its keys/values once it has read the prompt.
    followers: Vec<(SeqId, Active)>,
    next_id: u64,
    /// Most prompt tokens processed per step, so decoding sequences are not stalled long.
    pub prefill_chunk: usize,
    /// Feed a run of forced answer tokens (the answer header, the text between labels) in one
    /// pass instead of one pass per token. The choices are the same; off only to measure it.
    pub forced_runs: bool,
    /// Speculate with drafts looked up in each sequence's own text (where no forced run is
    /// due). The choices are the same, one draw per token; only the number of passes changes.
    pub prompt_lookup: Option<PromptLookup>,
    /// The outputs of this batch's finished sequences, drafted from where a sequence's own text
    /// has no match (with `prompt_lookup` only).
    draft_history: DraftHistory,
    scratch: ForwardScratch,
}

impl<'e> DecodeBatch<'e> {
    fn new(engine: &'e Engine) -> Self {
        DecodeBatch {
            engine,
            seqs: Vec::new(),
            followers: Vec::new(),
            next_id: 0,
            prefill_chunk: 512,
            forced_runs: true,
            prompt_lookup: None,
            draft_history: DraftHistory::default(),
            scratch: ForwardScratch::default(),
        }
    }

    /// Sequences in the batch (with samples waiting for their prompt's keys/values).
    pub fn len(&self) -> usize {
        self.seqs.len() + self.followers.len()
    }

    /// Whether no sequence is left.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty() && self.followers.is_empty()
    }

    /// Add sample `sample_index` of a prompt (the index selects its random stream).
    pub fn add(
        &mut self,
        prompt_ids: Vec<u32>,
        params: SamplingParams,
        sample_index: usize,
    ) -> Result<SeqId> {
        self.add_inner(prompt_ids, params, sample_index, SequenceOptions::default())
    }

    /// [`add`](Self::add) with [`SequenceOptions`]: probes scored once the sequence ends (stop
    /// or length) after the last place each marker was generated, and an answer constraint.
    pub fn add_with(
        &mut self,
        prompt_ids: Vec<u32>,
        params: SamplingParams,
        sample_index: usize,
        options: SequenceOptions,
    ) -> Result<SeqId> {
        let vocab = self.engine.config().vocab_size;
        let probe_tokens = options
            .probes
            .iter()
            .flat_map(|p| p.marker.iter().chain(p.alternatives.iter().flatten()));
        let answer_tokens = options.answer.iter().flat_map(|a| {
            a.trigger
                .iter()
                .chain(&a.forced)
                .chain(a.endings.iter().flatten())
        });
        if let Some(&token) = probe_tokens
            .chain(answer_tokens)
            .find(|&&t| t as usize >= vocab)
        {
            return Err(crate::error::EngineError::TokenOutOfRange { token, vocab });
        }
        if let Some(a) = &options.answer {
            if a.endings.is_empty() || a.endings.iter().any(Vec::is_empty) || a.trigger.is_empty() {
                return Err(crate::error::EngineError::InvalidParams(
                    "an answer constraint needs a trigger and non-empty endings".into(),
                ));
            }
            if !a.forced.ends_with(&a.trigger) {
                return Err(crate::error::EngineError::InvalidParams(
                    "an answer constraint's forced tokens must end with its trigger".into(),
                ));
            }
            if a.reserve() >= params.max_new_tokens {
                return Err(crate::error::EngineError::InvalidParams(format!(
                    "max_new_tokens {} leaves no room to reason before the {}-token answer",
                    params.max_new_tokens,
                    a.reserve()
                )));
            }
        }
        self.add_inner(prompt_ids, params, sample_index, options)
    }

    /// Add samples `0..n` of one prompt ([`add_with`](Self::add_with) each). The prompt is read
    /// once: the first sample reads it, the others start from a copy of its keys/values (all
    /// but the last prompt token, which each runs itself) one step after it has read it.
    pub fn add_samples(
        &mut self,
        prompt_ids: Vec<u32>,
        params: SamplingParams,
        n: usize,
        options: SequenceOptions,
    ) -> Result<Vec<SeqId>> {
        let mut ids = Vec::with_capacity(n);
        for index in 0..n {
            let id = match self.add_with(prompt_ids.clone(), params.clone(), index, options.clone())
            {
                Ok(id) => id,
                Err(e) => {
                    // All or nothing: the samples added so far leave again.
                    for id in ids {
                        self.cancel(id);
                    }
                    return Err(e);
                }
            };
            ids.push(id);
            let seq = self.seqs.last().expect("just added");
            // Worth waiting for only where the leader computes more than a registered prefix.
            if index > 0 && seq.fed + 1 < seq.prompt.len() {
                let follower = self.seqs.pop().expect("just added");
                self.followers.push((ids[0], follower));
            }
        }
        Ok(ids)
    }

    fn add_inner(
        &mut self,
        prompt: Vec<u32>,
        params: SamplingParams,
        index: usize,
        options: SequenceOptions,
    ) -> Result<SeqId> {
        params.validate()?;
        self.engine.check_prompt(&prompt, params.max_new_tokens)?;
        let capacity = prompt.len() + params.max_new_tokens;
        // Longest registered prefix of the prompt; at least one prompt token is left to run
        // so the first logits come from this sequence's own pass.
        let best = {
            let registered = self
                .engine
                .prefixes
                .read()
                .unwrap_or_else(|e| e.into_inner());
            registered
                .iter()
                .filter(|p| prompt.starts_with(&p.tokens))
                .max_by_key(|p| p.tokens.len())
                .cloned()
        };
        let (cache, fed) = match best {
            Some(p) => {
                let n = p.tokens.len().min(prompt.len() - 1);
                (KvCache::fork_prefix(&p.cache, n, capacity), n)
            }
            None => (self.engine.model.new_cache(capacity), 0),
        };
        let id = SeqId(self.next_id);
        self.next_id += 1;
        let params_max_new = params.max_new_tokens;
        self.seqs.push(Active {
            id,
            sampler: Sampler::new(&params, index),
            prompt,
            fed,
            reused: fed,
            cache,
            params,
            tokens: Vec::new(),
            logprobs: Vec::new(),
            added: Instant::now(),
            first_token: None,
            answer: options.answer.map(|a| Answering::new(a, params_max_new)),
            probes: options.probes,
            probe_logprobs: Vec::new(),
            draft: Vec::new(),
            looked_up: false,
            drafted: 0,
            accepted: 0,
        });
        if self.forced_runs {
            let seq = self.seqs.last_mut().expect("just added");
            seq.draft = seq.forced_run();
        }
        Ok(id)
    }

    /// Remove a sequence; returns what it had generated.
    pub fn cancel(&mut self, id: SeqId) -> Option<Generation> {
        if let Some(at) = self.followers.iter().position(|(_, s)| s.id == id) {
            return Some(self.followers.remove(at).1.finish(FinishReason::Cancelled));
        }
        let at = self.seqs.iter().position(|s| s.id == id)?;
        // Samples waiting for this one's keys/values read the prompt themselves.
        let (orphans, kept) = std::mem::take(&mut self.followers)
            .into_iter()
            .partition(|(leader, _)| *leader == id);
        self.followers = kept;
        self.seqs.extend(orphans.into_iter().map(|(_, s)| s));
        Some(self.seqs.remove(at).finish(FinishReason::Cancelled))
    }

    /// Followers of the sequences at `leaders` (indices into `seqs`, which have just read
    /// their prompts) join the batch with a copy of the leader's keys/values.
    fn release_followers(&mut self, leaders: &[usize]) {
        for &at in leaders {
            let leader = &self.seqs[at];
            let (mine, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.followers)
                .into_iter()
                .partition(|(l, _)| *l == leader.id);
            self.followers = kept;
            let n = leader.prompt.len() - 1;
            let joining: Vec<Active> = mine
                .into_iter()
                .map(|(_, mut s)| {
                    s.cache = leader.cache.copy_prefix(n, s.cache.capacity());
                    s.fed = n;
                    s.reused = n;
                    s
                })
                .collect();
            self.seqs.extend(joining);
        }
    }

    /// Run one forward pass over every sequence: prompt chunks for new ones, one token for
    /// the others (with the run of tokens forced after it, if any). Returns the tokens produced
    /// this step, several for a sequence that fed a run; finished sequences leave the batch.
    pub fn step(&mut self) -> Result<Vec<StepOutput>> {
        if self.seqs.is_empty() {
            return Ok(Vec::new());
        }
        let engine = self.engine;
        let mut budget = self.prefill_chunk.max(1);
        // The input of each sequence for this step: `feed[start..end]`, and how many logits
        // rows it wants back (0, or 1 for its last token, or one per token with a draft).
        struct Input {
            start: usize,
            end: usize,
            rows: usize,
            /// Prompt tokens among them.
            prompt: usize,
        }
        let mut inputs: Vec<Input> = Vec::with_capacity(self.seqs.len());
        let mut feed: Vec<u32> = Vec::new();
        for s in &self.seqs {
            let start = feed.len();
            if s.fed < s.prompt.len() {
                if budget == 0 {
                    inputs.push(Input {
                        start,
                        end: start,
                        rows: 0,
                        prompt: 0,
                    });
                    continue;
                }
                let take = (s.prompt.len() - s.fed).min(budget);
                budget -= take;
                feed.extend_from_slice(&s.prompt[s.fed..s.fed + take]);
                let rows = if s.fed + take == s.prompt.len() {
                    // The prompt ends here: tokens forced from the start (an answer without
                    // reasoning) ride along in the same pass.
                    feed.extend_from_slice(&s.draft);
                    1 + s.draft.len()
                } else {
                    0
                };
                inputs.push(Input {
                    start,
                    end: feed.len(),
                    rows,
                    prompt: take,
                });
            } else {
                feed.push(*s.tokens.last().unwrap_or(&0));
                feed.extend_from_slice(&s.draft);
                inputs.push(Input {
                    start,
                    end: feed.len(),
                    rows: 1 + s.draft.len(),
                    prompt: 0,
                });
            }
        }
        let logits = {
            let mut steps: Vec<SeqStep<'_>> = self
                .seqs
                .iter_mut()
                .zip(&inputs)
                .filter(|(_, input)| input.end > input.start)
                .map(|(s, input)| SeqStep {
                    cache: &mut s.cache,
                    tokens: &feed[input.start..input.end],
                    logits: match input.rows {
                        0 => LogitsFor::Nothing,
                        1 => LogitsFor::Last,
                        n => LogitsFor::Tail(n),
                    },
                })
                .collect();
            let scratch = &mut self.scratch;
            engine
                .pool
                .install(|| engine.model.forward(&mut steps, scratch))?
        };
        let vocab = engine.config().vocab_size;
        // Each sequence's rows, in order: `row_start` is the first of the next one's.
        let mut row_start = 0;
        let mut out = Vec::new();
        let mut finished = Vec::new();
        let mut prompts_read = Vec::new();
        for (i, (s, input)) in self.seqs.iter_mut().zip(&inputs).enumerate() {
            s.fed += input.prompt;
            if input.prompt > 0 && s.fed == s.prompt.len() {
                prompts_read.push(i);
            }
            // Row j holds the logits after the j-th token fed; the draft is kept while the
            // token chosen from each row is the draft's next one.
            // A sequence still reading its prompt keeps its draft for the pass that ends it.
            let (draft, looked_up) = match input.rows {
                0 => (Vec::new(), false),
                _ => (
                    std::mem::take(&mut s.draft),
                    std::mem::take(&mut s.looked_up),
                ),
            };
            let own = logits
                .get(row_start * vocab..(row_start + input.rows) * vocab)
                .unwrap_or_default();
            row_start += input.rows;
            for (j, row) in own.chunks_exact(vocab).enumerate() {
                let pick = s.choose(row, &engine.eos);
                s.first_token.get_or_insert_with(Instant::now);
                s.tokens.push(pick.token);
                s.logprobs.push(pick.logprob);
                let answered = match &mut s.answer {
                    Some(a) => a.emitted(pick.token, &s.tokens),
                    None => false,
                };
                let stop = answered
                    || (!s.params.ignore_eos && engine.eos.contains(&pick.token))
                    || s.params.stop_token_ids.contains(&pick.token);
                let reason = if stop {
                    Some(FinishReason::Stop)
                } else if s.tokens.len() >= s.params.max_new_tokens {
                    Some(FinishReason::Length)
                } else {
                    None
                };
                out.push(StepOutput {
                    id: s.id,
                    token: pick.token,
                    logprob: pick.logprob,
                    finished: None,
                });
                if let Some(reason) = reason {
                    finished.push((i, out.len() - 1, reason));
                    break;
                }
                if draft.get(j) != Some(&pick.token) {
                    // Keys/values of draft tokens that were not kept are dropped: the cache
                    // holds the prompt and every generated token but the last.
                    s.cache.truncate(s.prompt.len() + s.tokens.len() - 1);
                    if self.forced_runs {
                        s.draft = s.forced_run();
                    }
                    if let (true, Some(lookup)) = (s.draft.is_empty(), &self.prompt_lookup) {
                        s.draft = lookup.draft(&s.prompt, &s.tokens, s.room(), &self.draft_history);
                        s.looked_up = !s.draft.is_empty();
                        s.drafted += s.draft.len();
                    }
                    break;
                }
                s.accepted += usize::from(looked_up);
            }
        }
        // Before finished sequences leave (indices stay valid: followers join at the end).
        if !self.followers.is_empty() {
            self.release_followers(&prompts_read);
        }
        let mut done: Vec<(usize, Active, FinishReason)> = finished
            .iter()
            .rev()
            .map(|&(i, o, reason)| (o, self.seqs.remove(i), reason))
            .collect();
        // The label probes of every sequence that finished here, in one pass.
        if done.iter().any(|(_, s, _)| !s.probes.is_empty()) {
            let inputs: Vec<probe::Finished<'_>> = done
                .iter_mut()
                .filter(|(_, s, _)| !s.probes.is_empty())
                .map(|(_, s, _)| {
                    let cache = std::mem::replace(&mut s.cache, engine.model.new_cache(0));
                    let s: &Active = s;
                    probe::Finished {
                        cache,
                        prompt_len: s.prompt.len(),
                        generated: &s.tokens,
                        probes: &s.probes,
                    }
                })
                .collect();
            let scratch = &mut self.scratch;
            let scored = engine
                .pool
                .install(|| probe::score(&engine.model, inputs, scratch))?;
            for ((_, s, _), logprobs) in done
                .iter_mut()
                .filter(|(_, s, _)| !s.probes.is_empty())
                .zip(scored)
            {
                s.probe_logprobs = logprobs;
            }
        }
        for (o, seq, reason) in done {
            if self.prompt_lookup.is_some() {
                self.draft_history.record(&seq.tokens);
            }
            out[o].finished = Some(seq.finish(reason));
        }
        Ok(out)
    }
}

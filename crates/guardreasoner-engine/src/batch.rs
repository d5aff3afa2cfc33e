//! Continuous batching: sequences join a [`DecodeBatch`] at any step, decode together (one
//! forward pass per step for all of them), and leave as they finish.

use crate::answer::{Answering, Choice};
use crate::engine::{Engine, FinishReason, Generation, SequenceOptions, Timings};
use crate::error::Result;
use crate::llama::{ForwardScratch, KvCache, LogitsFor, SeqStep};
use crate::lookup::{DraftHistory, PromptLookup};
use crate::probe::{self, ContinuationProbe};
use crate::sampling::{Sampled, Sampler, SamplingParams};
use std::time::Instant;

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
    pub(crate) fn new(engine: &'e Engine) -> Self {
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
        // Drafts for the next pass, where the batch is small enough for them to pay.
        let lookup = self
            .prompt_lookup
            .as_ref()
            .filter(|l| self.seqs.len() <= l.max_batch);
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
                    if let (true, Some(lookup)) = (s.draft.is_empty(), lookup) {
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

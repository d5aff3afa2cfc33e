//! The continuous-batching loop of the local backend's scheduler thread: admits queued jobs
//! into the engine's batch, steps it, streams each choice's text (holding back what could be
//! the start of a stop string), and finishes, cancels and accounts for requests.

use crate::scheduler::{Event, Job, Shared};
use guardreasoner_backend::{FinishReason, TokenLogprob};
use guardreasoner_engine::{FinishReason as EngineFinish, SeqId, SequenceOptions};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// Per-request state shared by its `n` choices.
struct JobState {
    events: UnboundedSender<Event>,
    stop: Vec<String>,
    max_stop: usize,
    logprobs: bool,
    options: SequenceOptions,
    submitted: Instant,
    remaining: std::cell::Cell<usize>,
}

/// One choice being generated.
struct ChoiceState<'t> {
    job: Rc<JobState>,
    choice: usize,
    decoder: guardreasoner_tokenizer::StreamDecoder<'t>,
    text: String,
    emitted: usize,
    generated: usize,
    logprobs: Vec<TokenLogprob>,
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn map_finish(reason: EngineFinish) -> FinishReason {
    match reason {
        EngineFinish::Stop => FinishReason::Stop,
        EngineFinish::Length => FinishReason::Length,
        EngineFinish::Cancelled => FinishReason::Other("cancelled".into()),
    }
}

/// The scheduler thread: runs until every sender of `rx` is gone and the batch is empty.
pub(crate) fn run_scheduler(shared: &Shared, rx: mpsc::Receiver<Job>) {
    let engine = shared.engine.clone();
    let tokenizer = shared.tokenizer.clone();
    let metrics = shared.metrics.clone();
    let options = &shared.options;
    let mut batch = engine.batch();
    batch.prefill_chunk = options.prefill_chunk.max(1);
    batch.prompt_lookup = options.prompt_lookup;
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut active: HashMap<SeqId, ChoiceState<'_>> = HashMap::new();
    let finish_job = |job: &JobState| {
        let left = job.remaining.get() - 1;
        job.remaining.set(left);
        if left == 0 {
            shared.in_flight.fetch_sub(1, Relaxed);
            metrics
                .request_seconds
                .observe(job.submitted.elapsed().as_secs_f64());
        }
    };
    loop {
        if batch.is_empty() && waiting.is_empty() {
            match rx.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return, // queue closed and nothing left: shut down
            }
        }
        while let Ok(job) = rx.try_recv() {
            waiting.push_back(job);
        }
        // Requests whose callers left while waiting are dropped unseen.
        waiting.retain(|job| {
            let keep = !job.events.is_closed();
            if !keep {
                shared.in_flight.fetch_sub(1, Relaxed);
                metrics.queue_depth.fetch_sub(1, Relaxed);
                metrics
                    .cancelled_sequences
                    .fetch_add(job.params.n as u64, Relaxed);
            }
            keep
        });
        // Admit waiting requests at this step boundary while there is room.
        while let Some(job) = waiting.front() {
            if !batch.is_empty() && batch.len() + job.params.n > options.max_batch {
                break;
            }
            let job = waiting.pop_front().expect("front exists");
            metrics.queue_depth.fetch_sub(1, Relaxed);
            metrics
                .queue_seconds
                .observe(job.submitted.elapsed().as_secs_f64());
            let state = Rc::new(JobState {
                max_stop: job.stop.iter().map(String::len).max().unwrap_or(0),
                events: job.events,
                stop: job.stop,
                logprobs: job.logprobs,
                options: job.options,
                submitted: job.submitted,
                remaining: std::cell::Cell::new(job.params.n),
            });
            // The n choices of a request read its prompt once.
            match batch.add_samples(
                job.prompt.clone(),
                job.params.clone(),
                job.params.n,
                state.options.clone(),
            ) {
                Ok(ids) => {
                    for (choice, id) in ids.into_iter().enumerate() {
                        active.insert(
                            id,
                            ChoiceState {
                                job: state.clone(),
                                choice,
                                decoder: tokenizer.stream_decoder(true),
                                text: String::new(),
                                emitted: 0,
                                generated: 0,
                                logprobs: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) => {
                    state.remaining.set(1);
                    finish_job(&state);
                    let _ = state.events.send(Event::Failed(e.to_string()));
                }
            }
        }
        // Sequences whose caller went away leave the batch before the next step.
        let gone: Vec<SeqId> = active
            .iter()
            .filter(|(_, c)| c.job.events.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            batch.cancel(id);
            if let Some(c) = active.remove(&id) {
                metrics.cancelled_sequences.fetch_add(1, Relaxed);
                finish_job(&c.job);
            }
        }
        if batch.is_empty() {
            continue;
        }
        metrics.active_sequences.store(batch.len() as u64, Relaxed);
        metrics.batch_size.observe(batch.len() as f64);
        let started = Instant::now();
        let outputs = match batch.step() {
            Ok(o) => o,
            Err(e) => {
                // The engine failed mid-step: every running request fails with the reason.
                tracing::error!(error = %e, sequences = active.len(), "engine step failed");
                for (id, c) in active.drain() {
                    batch.cancel(id);
                    finish_job(&c.job);
                    let _ = c.job.events.send(Event::Failed(e.to_string()));
                }
                continue;
            }
        };
        metrics
            .time_per_token_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics
            .generated_tokens
            .fetch_add(outputs.len() as u64, Relaxed);
        for out in outputs {
            let Some(state) = active.get_mut(&out.id) else {
                continue;
            };
            let mut finished = out.finished.as_ref().map(|g| map_finish(g.finish_reason));
            state.generated += 1;
            let delta = state.decoder.push(out.token).unwrap_or_default();
            state.text.push_str(&delta);
            if state.job.logprobs {
                let token = tokenizer.decode(&[out.token], false).unwrap_or_default();
                state.logprobs.push(TokenLogprob {
                    token,
                    logprob: out.logprob,
                });
            }
            if finished.is_some() {
                // Bytes held back for an incomplete character are flushed (lossily) at the end.
                let decoder = std::mem::replace(&mut state.decoder, tokenizer.stream_decoder(true));
                state.text.push_str(&decoder.finish().unwrap_or_default());
            }
            // Stop strings: the text ends before the first one; the sequence ends there.
            if state.job.max_stop > 0 {
                let from = floor_char(
                    &state.text,
                    state
                        .text
                        .len()
                        .saturating_sub(delta.len() + state.job.max_stop),
                );
                let hit = state
                    .job
                    .stop
                    .iter()
                    .filter_map(|s| state.text[from..].find(s.as_str()))
                    .min();
                if let Some(pos) = hit {
                    state.text.truncate(from + pos);
                    if finished.is_none() {
                        batch.cancel(out.id);
                    }
                    finished = Some(FinishReason::Stop);
                }
            }
            let safe = if finished.is_some() {
                state.text.len()
            } else {
                floor_char(
                    &state.text,
                    state
                        .text
                        .len()
                        .saturating_sub(state.job.max_stop.saturating_sub(1)),
                )
            };
            if safe > state.emitted || finished.is_none() {
                let delta = state.text[state.emitted..safe.max(state.emitted)].to_string();
                state.emitted = safe.max(state.emitted);
                let _ = state.job.events.send(Event::Text {
                    choice: state.choice,
                    delta,
                    token: out.token,
                    logprob: out.logprob,
                });
            }
            if let Some(reason) = finished {
                let c = active.remove(&out.id).expect("present above");
                let (reused, prefill_s, decode_s) =
                    out.finished.as_ref().map_or((0, 0.0, 0.0), |g| {
                        (
                            g.reused_prompt_tokens,
                            g.timings.prefill_s,
                            g.timings.decode_s,
                        )
                    });
                if let Some(g) = &out.finished {
                    metrics
                        .draft_tokens
                        .fetch_add(g.drafted_tokens as u64, Relaxed);
                    metrics
                        .accepted_draft_tokens
                        .fetch_add(g.accepted_draft_tokens as u64, Relaxed);
                }
                // A choice cut by a stop string left the engine cancelled: nothing scored.
                let constrained = c.job.options.answer.is_some();
                let (probe_logprobs, forced_ending) = match out.finished {
                    Some(g) => (g.probe_logprobs, constrained.then_some(g.forced_answer)),
                    None => (vec![None; c.job.options.probes.len()], None),
                };
                metrics
                    .reused_prompt_tokens
                    .fetch_add(reused as u64, Relaxed);
                // The slot is released before the caller hears of the result, so a follow-up
                // it submits at once (an `auto` escalation) finds the room this one left.
                finish_job(&c.job);
                let _ = c.job.events.send(Event::Done {
                    choice: c.choice,
                    completion_tokens: c.generated,
                    text: c.text,
                    finish_reason: reason,
                    logprobs: c.job.logprobs.then_some(c.logprobs),
                    probe_logprobs,
                    forced_ending,
                    reused_prompt_tokens: reused,
                    prefill_s,
                    decode_s,
                });
            }
        }
        metrics.active_sequences.store(batch.len() as u64, Relaxed);
    }
}

//! The LLaMA-family model: its weights and the forward pass. This is the one place where the
//! network is computed; loading (GGUF, Hugging Face directories) is in `llama/load.rs`, the
//! key/value cache in [`crate::kv_cache`].
//!
//! Weight fields mirror the Hugging Face module paths (`model.layers.N.self_attn.q_proj`, ...).
//! GGUF files store the Q and K projections with their rows permuted for llama.cpp's rotary
//! layout (rotating adjacent pairs instead of the two halves of each head); the model keeps
//! the stored order and rotates accordingly ([`RopeLayout`]), which gives the same result.

mod linear;
mod load;

use linear::{Linear, LinearScratch};
pub use linear::{LowRank, LowRankPart};

use crate::kv_cache::KvSlice;
pub use crate::kv_cache::{KvCache, KvType, KV_GROW_STEP};

use crate::config::Config;
use crate::error::{EngineError, Result};
use crate::kernels::{self, Isa, KV_Q8_BLOCK};
use crate::matrix::{matmul, Matrix};
use crate::quant::{Activations, WeightType};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Which element pairs the rotary embedding rotates within a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Hugging Face: element `i` with `i + head_dim/2`.
    Halves,
    /// GGUF (permuted Q/K weights): element `2i` with `2i + 1`.
    Adjacent,
}

struct Layer {
    input_layernorm: Vec<f32>,
    /// `self_attn.{q,k,v}_proj`, stacked.
    qkv_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: Vec<f32>,
    /// `mlp.{gate,up}_proj`, stacked.
    gate_up_proj: Linear,
    down_proj: Linear,
}

/// A loaded LLaMA-family model.
pub struct Llama {
    config: Config,
    rope_layout: RopeLayout,
    inv_freq: Vec<f32>,
    embed_tokens: Matrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `None` when tied to `embed_tokens`.
    lm_head: Option<Linear>,
    source: PathBuf,
    /// The key/value cache type asked for; `None` picks one from the weights.
    kv_choice: Option<KvType>,
}

/// Which logits one sequence of a forward pass wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFor {
    /// None (a prompt chunk that is not the last).
    Nothing,
    /// The last token's.
    Last,
    /// Every token's.
    All,
    /// The last `n` tokens' (a prompt's end and the forced tokens fed after it).
    Tail(usize),
}

/// One sequence's share of a forward pass: new `tokens` appended to `cache`.
pub struct SeqStep<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub logits: LogitsFor,
}

/// Buffers reused across forward passes.
#[derive(Default)]
pub struct ForwardScratch {
    x: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    linear: LinearScratch,
}

impl Llama {
    /// The same model with every weight converted to F32 (reference comparisons).
    pub fn dequantized(self) -> Llama {
        let f = |m: &Matrix| m.to_f32();
        Llama {
            embed_tokens: self.embed_tokens.to_f32(),
            layers: self
                .layers
                .into_iter()
                .map(|l| Layer {
                    qkv_proj: l.qkv_proj.map(f),
                    o_proj: l.o_proj.map(f),
                    gate_up_proj: l.gate_up_proj.map(f),
                    down_proj: l.down_proj.map(f),
                    ..l
                })
                .collect(),
            lm_head: self.lm_head.map(|h| h.map(f)),
            ..self
        }
    }

    /// The model configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the weights came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The rotary layout of the stored Q/K weights.
    pub fn rope_layout(&self) -> RopeLayout {
        self.rope_layout
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv_proj.bytes() + l.o_proj.bytes() + l.gate_up_proj.bytes() + l.down_proj.bytes()
            })
            .sum();
        layers + self.embed_tokens.byte_len() + self.lm_head.as_ref().map_or(0, Linear::bytes)
    }

    /// The storage format of the first layer's attention weights (for reports).
    pub fn weight_type(&self) -> WeightType {
        self.layers
            .first()
            .map_or(self.embed_tokens.ty(), |l| l.qkv_proj.weight_type())
    }

    /// Whether LoRA updates are applied at run time beside the stored weights ([`LowRank`]).
    pub fn has_low_rank(&self) -> bool {
        self.layers.iter().any(|l| {
            l.qkv_proj.has_low_rank()
                || l.o_proj.has_low_rank()
                || l.gate_up_proj.has_low_rank()
                || l.down_proj.has_low_rank()
        })
    }

    /// How this model's key/value cache is stored: as set by [`Llama::set_kv_type`], or else
    /// f32 when every weight is f32 (a reference model, computed without rounding) and f16
    /// otherwise. [`KvType::Q8`] is never chosen by itself: it moves logits by up to ~0.3
    /// (measured on the SmolLM2 fixture), enough to flip near-ties in greedy decoding, so it
    /// is for when memory matters more (BENCHMARKS.md).
    pub fn kv_type(&self) -> KvType {
        if let Some(ty) = self.kv_choice {
            return ty;
        }
        let all_f32 = self.embed_tokens.ty() == WeightType::F32
            && self.lm_head.as_ref().is_none_or(|h| h.all_f32())
            && self.layers.iter().all(|l| {
                l.qkv_proj.all_f32()
                    && l.o_proj.all_f32()
                    && l.gate_up_proj.all_f32()
                    && l.down_proj.all_f32()
            });
        if all_f32 {
            KvType::F32
        } else {
            KvType::F16
        }
    }

    /// Store the key/value cache as `ty` (`None`: choose from the weights), and round the
    /// interleaved kernels' activations as goes with it ([`Llama::activations`]). Caches made
    /// before the change keep their type and are refused by [`Llama::forward`].
    pub fn set_kv_type(&mut self, ty: Option<KvType>) -> Result<()> {
        let kv_dim = self.config.num_key_value_heads() * self.config.head_dim();
        if ty == Some(KvType::Q8) && !kv_dim.is_multiple_of(KV_Q8_BLOCK) {
            return Err(EngineError::InvalidParams(format!(
                "an 8-bit key/value cache needs key/value heads x head size ({} x {}) to be a multiple of {KV_Q8_BLOCK}; use f16",
                self.config.num_key_value_heads(),
                self.config.head_dim()
            )));
        }
        self.kv_choice = ty;
        self.prepare_matrices();
        Ok(())
    }

    /// Lay every matrix out as the kernels of this CPU run it fastest with
    /// [`Llama::activations`] ([`Matrix::prepare`]; done once, when the engine is made or the
    /// cache type set, since the layout depends on both). The token embeddings too: when the
    /// output layer is tied to them (SmolLM2's Q8_0 embeddings: a fifth of a token's
    /// multiply-adds), the interleaved kernel runs it ~3x faster than row by row
    /// (`examples/kernel_bench.rs`), and a lookup reads a row back from either layout.
    pub(crate) fn prepare_matrices(&mut self) {
        let (isa, acts) = (Isa::detect(), self.activations());
        self.embed_tokens.prepare(isa, acts);
        for l in &mut self.layers {
            for linear in [
                &mut l.qkv_proj,
                &mut l.o_proj,
                &mut l.gate_up_proj,
                &mut l.down_proj,
            ] {
                linear.prepare(isa, acts);
            }
        }
        if let Some(head) = &mut self.lm_head {
            head.prepare(isa, acts);
        }
    }

    /// How the interleaved matrix kernels (AVX-512 VNNI) round activations: to 8 bits with
    /// the 8-bit key/value cache, the fast mode (chosen together on the shipped guard's dev
    /// splits: `BENCHMARKS.md`), to 16 bits otherwise, within ~0.01 of the exact computation.
    pub fn activations(&self) -> Activations {
        if self.kv_type() == KvType::Q8 {
            Activations::Q8
        } else {
            Activations::Q16
        }
    }

    /// An empty key/value cache for up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(&self.config, capacity, self.kv_type())
    }

    /// Run the network over new tokens of several sequences at once and return the requested
    /// logits (rows of `vocab_size`, in sequence order; `All` gives one row per token).
    ///
    /// Each sequence's tokens are appended at its cache's current length. The linear layers
    /// see all tokens of all sequences as one matrix; attention runs per sequence against its
    /// own cache. Call inside the engine's thread pool (`ThreadPool::install`).
    pub fn forward(&self, seqs: &mut [SeqStep<'_>], s: &mut ForwardScratch) -> Result<Vec<f32>> {
        let c = &self.config;
        let isa = Isa::detect();
        let (h, head_dim) = (c.hidden_size, c.head_dim());
        let (n_heads, n_kv) = (c.num_attention_heads, c.num_key_value_heads());
        let (q_dim, kv_dim) = (n_heads * head_dim, n_kv * head_dim);
        let qkv_dim = q_dim + 2 * kv_dim;
        let inter = c.intermediate_size;

        // Validate before touching any cache.
        let kv_type = self.kv_type();
        let mut seq_of = Vec::new();
        let mut pos_of = Vec::new();
        // Each sequence's first row in the token-major buffers.
        let mut first_token = Vec::with_capacity(seqs.len());
        for (si, seq) in seqs.iter().enumerate() {
            if seq.tokens.is_empty() {
                return Err(EngineError::EmptyPrompt);
            }
            if seq.cache.kv_type() != kv_type {
                return Err(EngineError::CacheTypeMismatch {
                    found: seq.cache.kv_type().name(),
                    expected: kv_type.name(),
                });
            }
            if let Some(&bad) = seq.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(EngineError::TokenOutOfRange {
                    token: bad,
                    vocab: c.vocab_size,
                });
            }
            let needed = seq.cache.len() + seq.tokens.len();
            if needed > seq.cache.capacity() || needed > c.max_position_embeddings {
                return Err(EngineError::ContextOverflow {
                    prompt: needed,
                    max_new_tokens: 0,
                    needed,
                    context: seq.cache.capacity().min(c.max_position_embeddings),
                });
            }
            first_token.push(seq_of.len());
            for i in 0..seq.tokens.len() {
                seq_of.push(si);
                pos_of.push(seq.cache.len() + i);
            }
        }
        let n = seq_of.len();
        if n == 0 {
            return Ok(Vec::new());
        }

        // Embeddings.
        s.x.resize(n * h, 0.0);
        let tokens: Vec<u32> = seqs.iter().flat_map(|q| q.tokens.iter().copied()).collect();
        s.x.par_chunks_mut(h)
            .with_min_len(PARALLEL_TOKENS)
            .zip(&tokens)
            .for_each(|(row, &t)| self.embed_tokens.dequantize_row_into(t as usize, row));

        // Rotary tables for every token: cos/sin of position * inv_freq.
        let half = head_dim / 2;
        let mut cos = vec![0.0f32; n * half];
        let mut sin = vec![0.0f32; n * half];
        for (t, &p) in pos_of.iter().enumerate() {
            for (j, &f) in self.inv_freq.iter().enumerate() {
                let angle = (p as f32 * f) as f64;
                cos[t * half + j] = angle.cos() as f32;
                sin[t * half + j] = angle.sin() as f32;
            }
        }

        let eps = c.rms_norm_eps as f32;
        let group = n_heads / n_kv;
        let scale = 1.0 / (head_dim as f32).sqrt();
        for seq in seqs.iter_mut() {
            let len = seq.cache.len() + seq.tokens.len();
            seq.cache.grow_to(len);
        }
        // Attention tasks: a whole GQA group each (its keys/values read once) when that gives
        // the threads enough tasks, else one query head each.
        let heads_per_task = if n * n_kv >= 4 * rayon::current_num_threads() {
            group
        } else {
            1
        };
        for (l, layer) in self.layers.iter().enumerate() {
            // Attention block.
            rms_norm(&s.x, &layer.input_layernorm, eps, h, &mut s.normed);
            s.qkv.resize(n * qkv_dim, 0.0);
            layer
                .qkv_proj
                .forward(isa, &s.normed, n, &mut s.qkv, &mut s.linear);
            // Rotate the token's query and key heads; then store its keys and values.
            let rope = |t: usize, row: &mut [f32]| {
                let (cs, sn) = (
                    &cos[t * half..(t + 1) * half],
                    &sin[t * half..(t + 1) * half],
                );
                for head in row[..q_dim + kv_dim].chunks_mut(head_dim) {
                    rotate(head, cs, sn, self.rope_layout);
                }
            };
            let store = |seq: &mut SeqStep<'_>, rows: &[f32]| {
                let start = seq.cache.len();
                for (i, row) in rows.chunks_exact(qkv_dim).enumerate() {
                    let (k, v) = row[q_dim..].split_at(kv_dim);
                    seq.cache.write(l, start + i, k, v);
                }
            };
            if let [seq] = seqs {
                // One sequence (prefill, or a lone decode step): rotate by token across the
                // threads, then store.
                s.qkv[..n * qkv_dim]
                    .par_chunks_mut(qkv_dim)
                    .with_min_len(PARALLEL_TOKENS)
                    .enumerate()
                    .for_each(|(t, row)| rope(t, row));
                store(seq, &s.qkv[..n * qkv_dim]);
            } else {
                // Several sequences (a decode step): one task each, rotating and storing its
                // rows, so the cache writes (which miss the cache) do not run serially.
                let mut rows: Vec<&mut [f32]> = Vec::with_capacity(seqs.len());
                let mut rest = &mut s.qkv[..n * qkv_dim];
                for seq in seqs.iter() {
                    let (mine, tail) = rest.split_at_mut(seq.tokens.len() * qkv_dim);
                    rows.push(mine);
                    rest = tail;
                }
                seqs.par_iter_mut()
                    .zip(rows)
                    .zip(&first_token)
                    .for_each(|((seq, rows), &t0)| {
                        for (i, row) in rows.chunks_exact_mut(qkv_dim).enumerate() {
                            rope(t0 + i, row);
                        }
                        store(seq, rows);
                    });
            }
            let qkv = &s.qkv;
            s.attn.resize(n * q_dim, 0.0);
            {
                let caches: Vec<&KvCache> = seqs.iter().map(|q| &*q.cache).collect();
                let job = AttentionJob {
                    isa,
                    caches: &caches,
                    layer: l,
                    qkv,
                    qkv_dim,
                    seq_of: &seq_of,
                    pos_of: &pos_of,
                    head_dim,
                    group,
                    heads_per_task,
                    n_heads,
                    scale,
                };
                match kv_type {
                    KvType::F32 => job.run::<f32>(&mut s.attn),
                    KvType::F16 => job.run::<half::f16>(&mut s.attn),
                    KvType::Q8 => job.run::<i8>(&mut s.attn),
                }
            }
            s.proj.resize(n * h, 0.0);
            layer
                .o_proj
                .forward(isa, &s.attn, n, &mut s.proj, &mut s.linear);
            add_in_place(&mut s.x, &s.proj);

            // MLP block.
            rms_norm(&s.x, &layer.post_attention_layernorm, eps, h, &mut s.normed);
            s.gate_up.resize(n * 2 * inter, 0.0);
            layer
                .gate_up_proj
                .forward(isa, &s.normed, n, &mut s.gate_up, &mut s.linear);
            s.act.resize(n * inter, 0.0);
            s.act
                .par_chunks_mut(inter)
                .with_min_len(PARALLEL_TOKENS)
                .zip(s.gate_up.par_chunks(2 * inter))
                .for_each(|(a, gu)| {
                    let (g, u) = gu.split_at(inter);
                    kernels::silu_mul(isa, g, u, a);
                });
            layer
                .down_proj
                .forward(isa, &s.act, n, &mut s.proj, &mut s.linear);
            add_in_place(&mut s.x, &s.proj);
        }

        // Logits for the rows asked for.
        let mut wanted = Vec::new();
        let mut t = 0;
        for seq in seqs.iter_mut() {
            let len = seq.tokens.len();
            match seq.logits {
                LogitsFor::Nothing => {}
                LogitsFor::Last => wanted.push(t + len - 1),
                LogitsFor::All => wanted.extend(t..t + len),
                LogitsFor::Tail(n) => wanted.extend(t + len - n.min(len)..t + len),
            }
            seq.cache.advance(len);
            t += len;
        }
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut last = Vec::with_capacity(wanted.len() * h);
        for &t in &wanted {
            last.extend_from_slice(&s.x[t * h..(t + 1) * h]);
        }
        rms_norm(&last, &self.norm, eps, h, &mut s.normed);
        let mut logits = vec![0.0f32; wanted.len() * c.vocab_size];
        match &self.lm_head {
            Some(head) => head.forward(isa, &s.normed, wanted.len(), &mut logits, &mut s.linear),
            None => matmul(
                isa,
                &self.embed_tokens,
                &s.normed,
                wanted.len(),
                &mut logits,
                &mut s.linear.matmul,
            ),
        }
        Ok(logits)
    }
}

thread_local! {
    /// Attention score scratch of each worker thread.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The attention step of one layer for every token of a forward pass.
struct AttentionJob<'a> {
    isa: Isa,
    caches: &'a [&'a KvCache],
    layer: usize,
    qkv: &'a [f32],
    qkv_dim: usize,
    seq_of: &'a [usize],
    pos_of: &'a [usize],
    head_dim: usize,
    group: usize,
    heads_per_task: usize,
    n_heads: usize,
    scale: f32,
}

impl AttentionJob<'_> {
    /// Fill `attn` (`[token][head][head_dim]`): each task is `heads_per_task` query heads of
    /// one token, all in the same GQA group.
    fn run<T: KvSlice>(&self, attn: &mut [f32]) {
        let (d, per_task) = (self.head_dim, self.heads_per_task);
        let tasks_per_token = self.n_heads / per_task;
        let kv_dim = self.qkv_dim - self.n_heads * d;
        let stride = kv_dim / 2;
        attn.par_chunks_mut(per_task * d)
            .enumerate()
            .for_each(|(idx, out)| {
                let (t, head) = (idx / tasks_per_token, (idx % tasks_per_token) * per_task);
                let cache = self.caches[self.seq_of[t]];
                let q = &self.qkv
                    [t * self.qkv_dim + head * d..t * self.qkv_dim + (head + per_task) * d];
                let segs = cache.segments::<T>(self.layer, self.pos_of[t] + 1);
                let offset = (head / self.group) * d;
                SCORES.with_borrow_mut(|scores| {
                    kernels::attend(
                        self.isa, q, d, &segs, stride, offset, self.scale, scores, out,
                    )
                });
            });
    }
}

/// Below this many tokens, element-wise steps run on the calling thread: waking the pool
/// would cost more than the work.
const PARALLEL_TOKENS: usize = 8;

/// `out[t] = x[t] / rms(x[t]) * weight`, per row of `h`.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, h: usize, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    out.par_chunks_mut(h)
        .with_min_len(PARALLEL_TOKENS)
        .zip(x.par_chunks(h))
        .for_each(|(o, x)| {
            crate::norm::rms_norm_row(x, weight, eps, o);
        });
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Rotate one head in place.
#[inline]
fn rotate(head: &mut [f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    let half = head.len() / 2;
    for j in 0..half {
        let (a, b) = match layout {
            RopeLayout::Halves => (j, j + half),
            RopeLayout::Adjacent => (2 * j, 2 * j + 1),
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos[j] - x1 * sin[j];
        head[b] = x1 * cos[j] + x0 * sin[j];
    }
}

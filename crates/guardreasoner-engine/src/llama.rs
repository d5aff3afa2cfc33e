//! The LLaMA-family model: weights (from GGUF or a Hugging Face directory) and the forward
//! pass. This is the one place where the network is computed.
//!
//! Weight fields mirror the Hugging Face module paths (`model.layers.N.self_attn.q_proj`, ...).
//! GGUF files store the Q and K projections with their rows permuted for llama.cpp's rotary
//! layout (rotating adjacent pairs instead of the two halves of each head); the model keeps
//! the stored order and rotates accordingly ([`RopeLayout`]), which gives the same result.

use crate::config::Config;
use crate::error::{EngineError, Result};
use crate::kernels::{self, Isa, KvElem, KvSeg, KV_Q8_BLOCK};
use crate::matrix::{matmul, MatmulScratch, Matrix};
use crate::quant::WeightType;
use guardreasoner_gguf::GgufFile;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which element pairs the rotary embedding rotates within a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Hugging Face: element `i` with `i + head_dim/2`.
    Halves,
    /// GGUF (permuted Q/K weights): element `2i` with `2i + 1`.
    Adjacent,
}

/// A linear layer whose output is the concatenation of one or more stored matrices (Q/K/V and
/// gate/up are fused when their formats agree, so one parallel pass computes them).
pub(crate) struct Linear {
    parts: Vec<Matrix>,
    rows: usize,
}

impl Linear {
    fn fused(parts: Vec<Matrix>) -> Linear {
        let refs: Vec<&Matrix> = parts.iter().collect();
        let parts = match Matrix::concat_rows(&refs) {
            Some(m) if parts.len() > 1 => vec![m],
            _ => parts,
        };
        let rows = parts.iter().map(Matrix::rows).sum();
        Linear { parts, rows }
    }

    fn forward(
        &self,
        isa: Isa,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        part_out: &mut Vec<f32>,
        mm: &mut MatmulScratch,
    ) {
        if let [only] = self.parts.as_slice() {
            return matmul(isa, only, x, n, out, mm);
        }
        let mut offset = 0;
        for part in &self.parts {
            let rows = part.rows();
            part_out.resize(n * rows, 0.0);
            matmul(isa, part, x, n, part_out, mm);
            for t in 0..n {
                out[t * self.rows + offset..t * self.rows + offset + rows]
                    .copy_from_slice(&part_out[t * rows..(t + 1) * rows]);
            }
            offset += rows;
        }
    }

    fn bytes(&self) -> usize {
        self.parts.iter().map(Matrix::byte_len).sum()
    }

    fn all_f32(&self) -> bool {
        self.parts.iter().all(|m| m.ty() == WeightType::F32)
    }

    fn map(self, f: impl Fn(&Matrix) -> Matrix) -> Linear {
        Linear {
            parts: self.parts.iter().map(f).collect(),
            rows: self.rows,
        }
    }
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

/// How cached keys and values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    /// 4 bytes per element: models whose weights are all f32 (reference computations).
    F32,
    /// 2 bytes per element (IEEE half, as llama.cpp's default cache): float models.
    F16,
    /// 1 byte per element plus one f32 scale per block of 32 (1.125 bytes in all): for
    /// memory, on request (see [`Llama::kv_type`]).
    Q8,
}

impl KvType {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8 => "q8",
        }
    }
}

/// The elements of one layer's cached keys or values, `[position][kv_head][head_dim]`.
#[derive(Clone)]
enum KvData {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    Q8(Vec<i8>),
}

/// The cached keys or values of one layer: the elements and, for [`KvType::Q8`], the scale
/// of each block of [`KV_Q8_BLOCK`] elements.
#[derive(Clone)]
struct KvBuf {
    data: KvData,
    scales: Vec<f32>,
}

impl KvBuf {
    fn new(ty: KvType) -> KvBuf {
        let data = match ty {
            KvType::F32 => KvData::F32(Vec::new()),
            KvType::F16 => KvData::F16(Vec::new()),
            KvType::Q8 => KvData::Q8(Vec::new()),
        };
        KvBuf {
            data,
            scales: Vec::new(),
        }
    }

    fn ty(&self) -> KvType {
        match self.data {
            KvData::F32(_) => KvType::F32,
            KvData::F16(_) => KvType::F16,
            KvData::Q8(_) => KvType::Q8,
        }
    }

    fn len(&self) -> usize {
        match &self.data {
            KvData::F32(v) => v.len(),
            KvData::F16(v) => v.len(),
            KvData::Q8(v) => v.len(),
        }
    }

    /// Grow to `len` elements: the first growth reserves `planned` (untouched), later ones
    /// `step` at a time.
    fn grow(&mut self, len: usize, step: usize, planned: usize) {
        fn go<T: Copy + Default>(v: &mut Vec<T>, len: usize, step: usize, planned: usize) {
            if len > v.capacity() {
                let target = if v.capacity() == 0 {
                    planned.max(len)
                } else {
                    len.next_multiple_of(step.max(1))
                };
                v.reserve_exact(target - v.len());
            }
            if len > v.len() {
                v.resize(len, T::default());
            }
        }
        match &mut self.data {
            KvData::F32(v) => go(v, len, step, planned),
            KvData::F16(v) => go(v, len, step, planned),
            KvData::Q8(v) => {
                go(v, len, step, planned);
                let b = KV_Q8_BLOCK;
                go(&mut self.scales, len / b, step / b, planned / b);
            }
        }
    }

    /// Store one position's values (whole blocks) starting at element `at`.
    fn write(&mut self, at: usize, values: &[f32]) {
        fn go<T: KvElem>(v: &mut [T], scales: &mut [f32], at: usize, x: &[f32]) {
            let blocks = if T::TYPE == KvType::Q8 {
                &mut scales[at / KV_Q8_BLOCK..(at + x.len()) / KV_Q8_BLOCK]
            } else {
                &mut []
            };
            T::store(x, &mut v[at..at + x.len()], blocks);
        }
        let scales = &mut self.scales;
        match &mut self.data {
            KvData::F32(v) => go(v, scales, at, values),
            KvData::F16(v) => go(v, scales, at, values),
            KvData::Q8(v) => go(v, scales, at, values),
        }
    }

    fn truncate(&mut self, len: usize) {
        match &mut self.data {
            KvData::F32(v) => v.truncate(len),
            KvData::F16(v) => v.truncate(len),
            KvData::Q8(v) => v.truncate(len),
        }
        self.scales.truncate(len / KV_Q8_BLOCK);
    }

    fn bytes(&self) -> usize {
        let data = match &self.data {
            KvData::F32(v) => v.capacity() * 4,
            KvData::F16(v) => v.capacity() * 2,
            KvData::Q8(v) => v.capacity(),
        };
        data + self.scales.capacity() * 4
    }
}

/// The key/value cache of one sequence: positions `0..shared_len` live in a shared, frozen
/// cache (the registered guard instruction, read by every sequence that starts with it and
/// never copied); the sequence's own positions follow in per-layer buffers. At the first write
/// each buffer reserves address space for the sequence's planned length (`capacity`) without
/// touching it, so memory becomes resident only as positions are written and the buffer is never
/// moved (growing by reallocation left measurably more allocator slack); past the plan it grows
/// in steps of [`KV_GROW_STEP`] positions.
#[derive(Clone)]
pub struct KvCache {
    shared: Option<Arc<KvCache>>,
    shared_len: usize,
    k: Vec<KvBuf>,
    v: Vec<KvBuf>,
    len: usize,
    capacity: usize,
    kv_dim: usize,
    ty: KvType,
}

/// Positions a sequence's cache grows by at once.
pub const KV_GROW_STEP: usize = 64;

impl KvCache {
    /// An empty cache for up to `capacity` positions of `config`'s model, storing `ty`.
    /// Nothing is allocated until positions are written.
    pub fn new(config: &Config, capacity: usize, ty: KvType) -> KvCache {
        let kv_dim = config.num_key_value_heads() * config.head_dim();
        let layers = config.num_hidden_layers;
        KvCache {
            shared: None,
            shared_len: 0,
            k: (0..layers).map(|_| KvBuf::new(ty)).collect(),
            v: (0..layers).map(|_| KvBuf::new(ty)).collect(),
            len: 0,
            capacity,
            kv_dim,
            ty,
        }
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Positions this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// The element type.
    pub fn kv_type(&self) -> KvType {
        self.ty
    }
    /// Leading positions read from a shared cache rather than stored here.
    pub fn shared_len(&self) -> usize {
        self.shared_len
    }
    /// Bytes this cache holds itself (shared positions not counted).
    pub fn own_bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(KvBuf::bytes).sum()
    }

    /// A cache of `capacity` positions whose first `n` positions are those of `prefix`
    /// (prefix reuse: the shared instruction is computed once and read by every sequence,
    /// not copied). When `prefix` itself starts with shared positions, its own positions
    /// are copied, so every cache has at most one shared part.
    pub fn fork_prefix(prefix: &Arc<KvCache>, n: usize, capacity: usize) -> KvCache {
        let n = n.min(prefix.len).min(capacity);
        let mut cache = KvCache {
            shared: None,
            shared_len: 0,
            k: Vec::new(),
            v: Vec::new(),
            len: 0,
            capacity,
            kv_dim: prefix.kv_dim,
            ty: prefix.ty,
        };
        if prefix.shared_len == 0 || n <= prefix.shared_len {
            let (shared, shared_len) = if prefix.shared_len == 0 {
                (prefix.clone(), n)
            } else {
                (prefix.shared.clone().expect("shared part"), n)
            };
            cache.k = prefix.k.iter().map(|b| KvBuf::new(b.ty())).collect();
            cache.v = prefix.v.iter().map(|b| KvBuf::new(b.ty())).collect();
            cache.shared = (shared_len > 0).then_some(shared);
            cache.shared_len = shared_len;
            cache.len = shared_len;
        } else {
            cache = prefix.copy_prefix(n, capacity);
        }
        cache
    }

    /// A cache of `capacity` positions holding this cache's first `n` positions: its shared
    /// part is shared again, its own positions up to `n` are copied (another sample of the same
    /// prompt starts from the keys/values one sample computed).
    pub fn copy_prefix(&self, n: usize, capacity: usize) -> KvCache {
        let n = n.min(self.len).min(capacity);
        let shared_len = self.shared_len.min(n);
        let own = (n - shared_len) * self.kv_dim;
        let copy = |b: &KvBuf| {
            let mut b = b.clone();
            b.truncate(own);
            b
        };
        KvCache {
            shared: (shared_len > 0).then(|| self.shared.clone()).flatten(),
            shared_len,
            k: self.k.iter().map(copy).collect(),
            v: self.v.iter().map(copy).collect(),
            len: n,
            capacity,
            kv_dim: self.kv_dim,
            ty: self.ty,
        }
    }

    /// Forget positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        if self.len < self.shared_len {
            self.shared_len = self.len;
            if self.shared_len == 0 {
                self.shared = None;
            }
        }
        let own = (self.len - self.shared_len) * self.kv_dim;
        for b in self.k.iter_mut().chain(self.v.iter_mut()) {
            b.truncate(own);
        }
    }

    /// Make room for positions up to `len` (exclusive) in the own buffers.
    fn grow_to(&mut self, len: usize) {
        let own = (len - self.shared_len) * self.kv_dim;
        let step = KV_GROW_STEP * self.kv_dim;
        let planned = self.capacity.saturating_sub(self.shared_len) * self.kv_dim;
        for b in self.k.iter_mut().chain(self.v.iter_mut()) {
            if b.len() < own {
                b.grow(own, step, planned);
            }
        }
    }

    /// Store the keys and values of position `pos` in layer `l`.
    fn write(&mut self, l: usize, pos: usize, k: &[f32], v: &[f32]) {
        let at = (pos - self.shared_len) * self.kv_dim;
        self.k[l].write(at, k);
        self.v[l].write(at, v);
    }

    /// The cached positions `0..len` of layer `l` as up to two segments (shared, own).
    fn segments<T: KvSlice>(&self, l: usize, len: usize) -> [KvSeg<'_, T>; 2] {
        let shared_n = len.min(self.shared_len);
        let own_n = len - shared_n;
        let empty = KvSeg {
            k: &[],
            v: &[],
            k_scale: &[],
            v_scale: &[],
            len: 0,
        };
        let first = match &self.shared {
            Some(s) if shared_n > 0 => KvSeg {
                k: T::slice(&s.k[l]),
                v: T::slice(&s.v[l]),
                k_scale: &s.k[l].scales,
                v_scale: &s.v[l].scales,
                len: shared_n,
            },
            _ => empty,
        };
        let second = if own_n > 0 {
            KvSeg {
                k: T::slice(&self.k[l]),
                v: T::slice(&self.v[l]),
                k_scale: &self.k[l].scales,
                v_scale: &self.v[l].scales,
                len: own_n,
            }
        } else {
            empty
        };
        [first, second]
    }
}

/// Typed access to a [`KvBuf`]'s elements (empty when the buffer holds another type).
trait KvSlice: KvElem {
    fn slice(buf: &KvBuf) -> &[Self];
}
impl KvSlice for f32 {
    fn slice(buf: &KvBuf) -> &[f32] {
        match &buf.data {
            KvData::F32(v) => v,
            _ => &[],
        }
    }
}
impl KvSlice for half::f16 {
    fn slice(buf: &KvBuf) -> &[half::f16] {
        match &buf.data {
            KvData::F16(v) => v,
            _ => &[],
        }
    }
}
impl KvSlice for i8 {
    fn slice(buf: &KvBuf) -> &[i8] {
        match &buf.data {
            KvData::Q8(v) => v,
            _ => &[],
        }
    }
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
    part: Vec<f32>,
    matmul: MatmulScratch,
}

impl Llama {
    /// Load a GGUF file (architecture `llama`).
    pub fn from_gguf(path: &Path) -> Result<Llama> {
        let file = GgufFile::open(path)?;
        let config = Config::from_gguf(&file)?;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let (q_dim, kv_dim) = (
            config.num_attention_heads * config.head_dim(),
            config.num_key_value_heads() * config.head_dim(),
        );
        let matrix = |name: &str, rows: usize, cols: usize| gguf_matrix(&file, name, rows, cols);
        let vector = |name: &str, len: usize| -> Result<Vec<f32>> {
            let m = matrix(name, 1, len)?;
            let mut v = vec![0.0; len];
            m.dequantize_row_into(0, &mut v);
            Ok(v)
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            layers.push(Layer {
                input_layernorm: vector(&n("attn_norm"), h)?,
                qkv_proj: Linear::fused(vec![
                    matrix(&n("attn_q"), q_dim, h)?,
                    matrix(&n("attn_k"), kv_dim, h)?,
                    matrix(&n("attn_v"), kv_dim, h)?,
                ]),
                o_proj: Linear::fused(vec![matrix(&n("attn_output"), h, q_dim)?]),
                post_attention_layernorm: vector(&n("ffn_norm"), h)?,
                gate_up_proj: Linear::fused(vec![
                    matrix(&n("ffn_gate"), i, h)?,
                    matrix(&n("ffn_up"), i, h)?,
                ]),
                down_proj: Linear::fused(vec![matrix(&n("ffn_down"), h, i)?]),
            });
        }
        let mut inv_freq = config.rope_inv_freq();
        // llama3-style scaling is stored as per-frequency divisors.
        if file.tensor("rope_freqs.weight").is_some() {
            let factors = vector("rope_freqs.weight", inv_freq.len())?;
            for (f, d) in inv_freq.iter_mut().zip(factors) {
                *f /= d;
            }
        }
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(Linear::fused(vec![matrix(
                "output.weight",
                config.vocab_size,
                h,
            )?]))
        };
        Ok(Llama {
            rope_layout: RopeLayout::Adjacent,
            inv_freq,
            embed_tokens: matrix("token_embd.weight", config.vocab_size, h)?,
            layers,
            norm: vector("output_norm.weight", h)?,
            lm_head,
            source: path.to_path_buf(),
            config,
            kv_choice: None,
        })
    }

    /// Load a Hugging Face layout directory: `config.json` and `model.safetensors` (or shards
    /// listed in `model.safetensors.index.json`), weights in f32, f16 or bf16.
    pub fn from_hf_dir(dir: &Path) -> Result<Llama> {
        let config = Config::from_hf_file(&dir.join("config.json"))?;
        let st = SafetensorsSet::open(dir)?;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let (q_dim, kv_dim) = (
            config.num_attention_heads * config.head_dim(),
            config.num_key_value_heads() * config.head_dim(),
        );
        let vector = |name: &str, len: usize| -> Result<Vec<f32>> {
            let m = st.matrix(name, 1, len)?;
            let mut v = vec![0.0; len];
            m.dequantize_row_into(0, &mut v);
            Ok(v)
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let n = |s: &str| format!("model.layers.{l}.{s}.weight");
            layers.push(Layer {
                input_layernorm: vector(&n("input_layernorm"), h)?,
                qkv_proj: Linear::fused(vec![
                    st.matrix(&n("self_attn.q_proj"), q_dim, h)?,
                    st.matrix(&n("self_attn.k_proj"), kv_dim, h)?,
                    st.matrix(&n("self_attn.v_proj"), kv_dim, h)?,
                ]),
                o_proj: Linear::fused(vec![st.matrix(&n("self_attn.o_proj"), h, q_dim)?]),
                post_attention_layernorm: vector(&n("post_attention_layernorm"), h)?,
                gate_up_proj: Linear::fused(vec![
                    st.matrix(&n("mlp.gate_proj"), i, h)?,
                    st.matrix(&n("mlp.up_proj"), i, h)?,
                ]),
                down_proj: Linear::fused(vec![st.matrix(&n("mlp.down_proj"), h, i)?]),
            });
        }
        let tied = config.tie_word_embeddings || !st.contains("lm_head.weight");
        let lm_head = if tied {
            None
        } else {
            Some(Linear::fused(vec![st.matrix(
                "lm_head.weight",
                config.vocab_size,
                h,
            )?]))
        };
        Ok(Llama {
            rope_layout: RopeLayout::Halves,
            inv_freq: config.rope_inv_freq(),
            embed_tokens: st.matrix("model.embed_tokens.weight", config.vocab_size, h)?,
            layers,
            norm: vector("model.norm.weight", h)?,
            lm_head,
            source: dir.to_path_buf(),
            config,
            kv_choice: None,
        })
    }

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
            .map_or(self.embed_tokens.ty(), |l| l.qkv_proj.parts[0].ty())
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

    /// Store the key/value cache as `ty` (`None`: choose from the weights). Caches made
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
        Ok(())
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
        for (si, seq) in seqs.iter().enumerate() {
            if seq.tokens.is_empty() {
                return Err(EngineError::EmptyPrompt);
            }
            if seq.cache.ty != kv_type {
                return Err(EngineError::CacheTypeMismatch {
                    found: seq.cache.ty.name(),
                    expected: kv_type.name(),
                });
            }
            if let Some(&bad) = seq.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(EngineError::TokenOutOfRange {
                    token: bad,
                    vocab: c.vocab_size,
                });
            }
            let needed = seq.cache.len + seq.tokens.len();
            if needed > seq.cache.capacity || needed > c.max_position_embeddings {
                return Err(EngineError::ContextOverflow {
                    prompt: needed,
                    max_new_tokens: 0,
                    needed,
                    context: seq.cache.capacity.min(c.max_position_embeddings),
                });
            }
            for i in 0..seq.tokens.len() {
                seq_of.push(si);
                pos_of.push(seq.cache.len + i);
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
            let len = seq.cache.len + seq.tokens.len();
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
                .forward(isa, &s.normed, n, &mut s.qkv, &mut s.part, &mut s.matmul);
            let qkv = &mut s.qkv;
            qkv.par_chunks_mut(qkv_dim)
                .with_min_len(PARALLEL_TOKENS)
                .enumerate()
                .for_each(|(t, row)| {
                    let (cs, sn) = (
                        &cos[t * half..(t + 1) * half],
                        &sin[t * half..(t + 1) * half],
                    );
                    for head in row[..q_dim + kv_dim].chunks_mut(head_dim) {
                        rotate(head, cs, sn, self.rope_layout);
                    }
                });
            let mut t = 0;
            for seq in seqs.iter_mut() {
                let start = seq.cache.len;
                for i in 0..seq.tokens.len() {
                    let row = &qkv[(t + i) * qkv_dim..(t + i + 1) * qkv_dim];
                    seq.cache.write(
                        l,
                        start + i,
                        &row[q_dim..q_dim + kv_dim],
                        &row[q_dim + kv_dim..],
                    );
                }
                t += seq.tokens.len();
            }
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
                .forward(isa, &s.attn, n, &mut s.proj, &mut s.part, &mut s.matmul);
            add_in_place(&mut s.x, &s.proj);

            // MLP block.
            rms_norm(&s.x, &layer.post_attention_layernorm, eps, h, &mut s.normed);
            s.gate_up.resize(n * 2 * inter, 0.0);
            layer.gate_up_proj.forward(
                isa,
                &s.normed,
                n,
                &mut s.gate_up,
                &mut s.part,
                &mut s.matmul,
            );
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
                .forward(isa, &s.act, n, &mut s.proj, &mut s.part, &mut s.matmul);
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
            seq.cache.len += len;
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
            Some(head) => head.forward(
                isa,
                &s.normed,
                wanted.len(),
                &mut logits,
                &mut s.part,
                &mut s.matmul,
            ),
            None => matmul(
                isa,
                &self.embed_tokens,
                &s.normed,
                wanted.len(),
                &mut logits,
                &mut s.matmul,
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
            let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / h as f32;
            let inv = 1.0 / (mean_sq + eps).sqrt();
            for ((o, &v), &w) in o.iter_mut().zip(x).zip(weight) {
                *o = v * inv * w;
            }
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

/// Read one GGUF tensor as a `rows × cols` matrix (ggml dims `[cols, rows]`).
fn gguf_matrix(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
    let path = file.path();
    let info = file
        .tensor(name)
        .ok_or_else(|| EngineError::MissingTensor {
            path: path.to_path_buf(),
            name: name.into(),
        })?;
    let dims: Vec<usize> = info.dims.iter().map(|&d| d as usize).collect();
    let expected = if rows == 1 {
        vec![cols]
    } else {
        vec![cols, rows]
    };
    let trimmed: Vec<usize> = {
        let mut d = dims.clone();
        while d.len() > expected.len() && d.last() == Some(&1) {
            d.pop();
        }
        d
    };
    if trimmed != expected {
        return Err(EngineError::ShapeMismatch {
            path: path.to_path_buf(),
            name: name.into(),
            found: dims,
            expected,
        });
    }
    let ty =
        WeightType::from_ggml(info.dtype).ok_or_else(|| EngineError::UnsupportedTensorType {
            path: path.to_path_buf(),
            name: name.into(),
            dtype: info.dtype.name(),
        })?;
    let data = file.tensor_data(info)?;
    let expected_bytes = ty.row_bytes(cols).map(|b| b * rows);
    Matrix::new(ty, rows, cols, data.to_vec()).ok_or_else(|| EngineError::TruncatedTensor {
        path: path.to_path_buf(),
        name: name.into(),
        found: data.len(),
        expected: expected_bytes.unwrap_or(0),
    })
}

/// The safetensors files of a Hugging Face directory, memory-mapped.
struct SafetensorsSet {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
}

impl SafetensorsSet {
    fn open(dir: &Path) -> Result<SafetensorsSet> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EngineError::Io { path, source }
        };
        let index_path = dir.join("model.safetensors.index.json");
        let names: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(io(&index_path))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| EngineError::Safetensors {
                    path: index_path.clone(),
                    message: e.to_string(),
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| EngineError::Safetensors {
                    path: index_path.clone(),
                    message: "no weight_map object".into(),
                })?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(io(dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            found
        };
        if names.is_empty() {
            return Err(EngineError::MissingTensor {
                path: dir.to_path_buf(),
                name: "*.safetensors (no weight files)".into(),
            });
        }
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in names {
            let file = std::fs::File::open(&path).map_err(io(&path))?;
            // SAFETY: read-only map of a weights file; modifying it while loaded is outside
            // what the engine can defend against (as with every mmap-based loader).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(&path))?;
            let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| {
                EngineError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
            for name in st.names() {
                index.insert(name.to_string(), files.len());
            }
            files.push((path, map));
        }
        Ok(SafetensorsSet { files, index })
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let &fi = self
            .index
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor {
                path: self.files.first().map(|f| f.0.clone()).unwrap_or_default(),
                name: name.into(),
            })?;
        let (path, map) = &self.files[fi];
        let st =
            safetensors::SafeTensors::deserialize(map).map_err(|e| EngineError::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let view = st.tensor(name).map_err(|e| EngineError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let ty = match view.dtype() {
            safetensors::Dtype::F32 => WeightType::F32,
            safetensors::Dtype::F16 => WeightType::F16,
            safetensors::Dtype::BF16 => WeightType::BF16,
            other => {
                return Err(EngineError::UnsupportedTensorType {
                    path: path.clone(),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let expected = if rows == 1 {
            vec![cols]
        } else {
            vec![rows, cols]
        };
        if view.shape() != expected.as_slice() {
            return Err(EngineError::ShapeMismatch {
                path: path.clone(),
                name: name.into(),
                found: view.shape().to_vec(),
                expected,
            });
        }
        let data = view.data();
        Matrix::new(ty, rows, cols, data.to_vec()).ok_or_else(|| EngineError::TruncatedTensor {
            path: path.clone(),
            name: name.into(),
            found: data.len(),
            expected: rows * cols * ty.block_bytes(),
        })
    }
}

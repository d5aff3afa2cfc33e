//! The key/value cache of a sequence, in f32, f16 or 8-bit blocks, with a shared frozen prefix.

use crate::config::Config;
use crate::kernels::{Isa, KvElem, KvHalf, KvLayout, KvSeg, KV_Q8_BLOCK};
use std::sync::Arc;

/// How cached keys and values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    /// 4 bytes per element: models whose weights are all f32 (reference computations).
    F32,
    /// 2 bytes per element (IEEE half, as llama.cpp's default cache): float models.
    F16,
    /// 1 byte per element plus one f32 scale per block of 32 (1.125 bytes in all): on request
    /// (see [`Llama::kv_type`](crate::llama::Llama::kv_type)), and the shipped guard's default
    /// (its card's choice, made on its development splits).
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

impl std::str::FromStr for KvType {
    type Err = String;

    /// The inverse of [`KvType::name`].
    fn from_str(s: &str) -> Result<Self, String> {
        [KvType::F32, KvType::F16, KvType::Q8]
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown key/value cache type {s:?} (f32, f16, q8)"))
    }
}

/// The elements of one layer's cached keys or values, `[position][kv_head][head_dim]`.
#[derive(Clone)]
enum KvData {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    Q8(Vec<i8>),
}

/// The cached keys or values of one layer: the elements (`stride` per position, laid out as
/// `layout` says) and, for [`KvType::Q8`], the scale of each block of [`KV_Q8_BLOCK`] elements.
#[derive(Clone)]
pub(crate) struct KvBuf {
    data: KvData,
    scales: Vec<f32>,
    stride: usize,
    layout: KvLayout,
    half: KvHalf,
}

impl KvBuf {
    fn new(ty: KvType, stride: usize, layout: KvLayout, half: KvHalf) -> KvBuf {
        let data = match ty {
            KvType::F32 => KvData::F32(Vec::new()),
            KvType::F16 => KvData::F16(Vec::new()),
            KvType::Q8 => KvData::Q8(Vec::new()),
        };
        KvBuf {
            data,
            scales: Vec::new(),
            stride,
            layout,
            half,
        }
    }

    /// An empty buffer of the same type and layout.
    fn empty_like(&self) -> KvBuf {
        KvBuf::new(self.ty(), self.stride, self.layout, self.half)
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

    /// Grow to hold `positions`: the first growth reserves room for `planned` positions
    /// (untouched), later ones `step` positions at a time.
    fn grow(&mut self, positions: usize, step: usize, planned: usize) {
        let elements = |n: usize| self.layout.elements(n, self.stride);
        let (len, step, planned) = (elements(positions), elements(step), elements(planned));
        if self.len() >= len {
            return;
        }
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

    /// Store position `pos`'s values (`stride` of them).
    fn write(&mut self, pos: usize, values: &[f32]) {
        fn go<T: KvElem>(v: &mut [T], scales: &mut [f32], at: usize, x: &[f32]) {
            let blocks = if T::TYPE == KvType::Q8 {
                &mut scales[at / KV_Q8_BLOCK..(at + x.len()) / KV_Q8_BLOCK]
            } else {
                &mut []
            };
            T::store(x, &mut v[at..at + x.len()], blocks);
        }
        debug_assert_eq!(values.len(), self.stride);
        let (stride, layout, half, scales) =
            (self.stride, self.layout, self.half, &mut self.scales);
        match (&mut self.data, layout) {
            (KvData::F32(v), KvLayout::Rows) => go(v, scales, pos * stride, values),
            (KvData::F16(v), KvLayout::Rows) => go(v, scales, pos * stride, values),
            (KvData::Q8(v), KvLayout::Rows) => go(v, scales, pos * stride, values),
            (KvData::Q8(v), KvLayout::Blocked) => {
                // Quantised block by block as in rows, then each element moved to its place.
                let mut q = [0i8; KV_Q8_BLOCK];
                for (b, x) in values.chunks_exact(KV_Q8_BLOCK).enumerate() {
                    let e0 = b * KV_Q8_BLOCK;
                    scales[layout.scale_index(pos, e0, stride)] =
                        crate::kernels::quantize_block_q8(x, &mut q);
                    for (i, &qi) in q.iter().enumerate() {
                        v[layout.index(half, pos, e0 + i, stride)] = qi;
                    }
                }
            }
            _ => unreachable!("blocked layouts are 8-bit"),
        }
    }

    /// Keep the first `positions`.
    fn truncate(&mut self, positions: usize) {
        let len = self.layout.elements(positions, self.stride);
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
        let layout = kv_layout(ty, config.head_dim());
        KvCache {
            shared: None,
            shared_len: 0,
            k: (0..layers)
                .map(|_| KvBuf::new(ty, kv_dim, layout, KvHalf::Keys))
                .collect(),
            v: (0..layers)
                .map(|_| KvBuf::new(ty, kv_dim, layout, KvHalf::Values))
                .collect(),
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
    /// How keys and values are laid out (8-bit caches are blocked for the AVX-512 VNNI kernel).
    pub fn layout(&self) -> KvLayout {
        self.k.first().map_or(KvLayout::Rows, |b| b.layout)
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
            cache.k = prefix.k.iter().map(KvBuf::empty_like).collect();
            cache.v = prefix.v.iter().map(KvBuf::empty_like).collect();
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
        let own = n - shared_len;
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
        let own = self.len - self.shared_len;
        for b in self.k.iter_mut().chain(self.v.iter_mut()) {
            b.truncate(own);
        }
    }

    /// The `n` positions the forward pass has just written (after [`grow_to`](Self::grow_to)
    /// and [`write`](Self::write)) become part of the cache.
    pub(crate) fn advance(&mut self, n: usize) {
        debug_assert!(self.len + n <= self.capacity);
        self.len += n;
    }

    /// Make room for positions up to `len` (exclusive) in the own buffers.
    pub(crate) fn grow_to(&mut self, len: usize) {
        let own = len - self.shared_len;
        let planned = self.capacity.saturating_sub(self.shared_len);
        for b in self.k.iter_mut().chain(self.v.iter_mut()) {
            b.grow(own, KV_GROW_STEP, planned);
        }
    }

    /// Store the keys and values of position `pos` in layer `l`.
    pub(crate) fn write(&mut self, l: usize, pos: usize, k: &[f32], v: &[f32]) {
        let own = pos - self.shared_len;
        self.k[l].write(own, k);
        self.v[l].write(own, v);
    }

    /// The cached positions `0..len` of layer `l` as up to two segments (shared, own).
    pub(crate) fn segments<T: KvSlice>(&self, l: usize, len: usize) -> [KvSeg<'_, T>; 2] {
        let shared_n = len.min(self.shared_len);
        let own_n = len - shared_n;
        let empty = KvSeg {
            k: &[],
            v: &[],
            k_scale: &[],
            v_scale: &[],
            len: 0,
            layout: KvLayout::Rows,
        };
        let first = match &self.shared {
            Some(s) if shared_n > 0 => KvSeg {
                k: T::slice(&s.k[l]),
                v: T::slice(&s.v[l]),
                k_scale: &s.k[l].scales,
                v_scale: &s.v[l].scales,
                len: shared_n,
                layout: s.k[l].layout,
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
                layout: self.k[l].layout,
            }
        } else {
            empty
        };
        [first, second]
    }
}

/// How a cache of `ty` stores its keys and values on this machine: 8-bit ones in blocks for
/// the AVX-512 VNNI kernel (heads of whole 32-element blocks), otherwise position after position.
fn kv_layout(ty: KvType, head_dim: usize) -> KvLayout {
    if ty == KvType::Q8 && Isa::detect() == Isa::Avx512 && head_dim.is_multiple_of(KV_Q8_BLOCK) {
        KvLayout::Blocked
    } else {
        KvLayout::Rows
    }
}

/// Typed access to a [`KvBuf`]'s elements (empty when the buffer holds another type).
pub(crate) trait KvSlice: KvElem {
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

//! Dot-product kernels, chosen at run time from the CPU's features.
//!
//! Every kernel exists as portable scalar code ([`scalar`]); x86-64 machines with AVX2+FMA+F16C
//! get hand-written versions ([`avx2`]), and those that also have AVX-512 F/BW with VNNI get
//! 512-bit Q8_0 dot products where they measured faster ([`avx512`], the rest from [`avx2`]). All compute the same
//! sums (integer parts exactly, float parts up to summation order). The tests at the bottom
//! compare each SIMD kernel with the scalar one on random data. Set
//! `GUARDREASONER_KERNELS=scalar` (or `avx2`) to force a path.
//!
//! A weight row is dotted with up to [`MAX_COLS`] activation vectors at once, so the unpacking
//! of each weight block is shared between the sequences of a batch (or tokens of a prompt).
//! On AVX-512 VNNI, Q8_0 and Q4_1 matrices are stored with sixteen rows interleaved
//! ([`interleaved`], [`dot_q16_group`], [`dot_q8_group`]), one row per 512-bit lane.

use crate::kv_cache::KvType;
use crate::quant::{BlockQ16, BlockQ8, WeightType};
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod interleaved;
pub mod scalar;

/// Most activation vectors one row-major kernel call handles.
pub const MAX_COLS: usize = 4;

/// Most activation vectors one call of an interleaved kernel ([`dot_q16_group`],
/// [`dot_q8_group`]) handles: its sixteen rows' unpacked weights serve eight vectors before
/// the next block is unpacked.
pub const GROUP_COLS: usize = 8;

/// The instruction set the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW with VNNI, besides everything [`Isa::Avx2`] needs.
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU supports (cached), or the one named by
    /// `GUARDREASONER_KERNELS` (`scalar`, `avx2`) when this CPU has it.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::best_available();
            match std::env::var("GUARDREASONER_KERNELS") {
                Ok(v) if v.eq_ignore_ascii_case("scalar") => Isa::Scalar,
                Ok(v) if v.eq_ignore_ascii_case("avx2") && best != Isa::Scalar => Isa::Avx2,
                _ => best,
            }
        })
    }

    fn best_available() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                return Isa::Avx512;
            }
            return Isa::Avx2;
        }
        Isa::Scalar
    }

    /// Every instruction set usable on this CPU (for tests comparing them).
    pub fn all_available() -> Vec<Isa> {
        match Isa::best_available() {
            Isa::Scalar => vec![Isa::Scalar],
            Isa::Avx2 => vec![Isa::Scalar, Isa::Avx2],
            Isa::Avx512 => vec![Isa::Scalar, Isa::Avx2, Isa::Avx512],
        }
    }

    /// A short name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512-vnni",
        }
    }
}

/// `out[c] = row · xs[c]` for a quantised weight row of type `ty` against 16-bit activation
/// blocks (`xs.len()` in `1..=MAX_COLS`, every `xs[c]` as long as the row in blocks of 32).
pub fn dot_q16(isa: Isa, ty: WeightType, row: &[u8], xs: &[&[BlockQ16]], out: &mut [f32]) {
    dot_q16_rows(isa, ty, row, row.len(), xs, out)
}

/// [`dot_q16`] for consecutive rows of `row_bytes` each: `out[r * xs.len() + c] = row_r · xs[c]`
/// (one call per block of rows, so the kernel choice is made once, not per row).
pub fn dot_q16_rows(
    isa: Isa,
    ty: WeightType,
    rows: &[u8],
    row_bytes: usize,
    xs: &[&[BlockQ16]],
    out: &mut [f32],
) {
    let n = xs.len();
    debug_assert!(n > 0 && n <= MAX_COLS && row_bytes > 0 && rows.len().is_multiple_of(row_bytes));
    debug_assert!(out.len() == rows.len() / row_bytes * n);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced after detecting avx512f/bw/vnni besides avx2,
        // fma and f16c.
        Isa::Avx512 if unsafe { avx512::dot_q16_rows(ty, rows, row_bytes, xs, out) } => {}
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` (and `Avx512`) are only produced after detecting avx2, fma, f16c.
        Isa::Avx2 | Isa::Avx512 if unsafe { avx2::dot_q16_rows(ty, rows, row_bytes, xs, out) } => {}
        _ => {
            for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n)) {
                scalar::dot_q16(ty, row, xs, o);
            }
        }
    }
}

/// [`interleaved::dot_q16_group`] on the best kernel `isa` has (AVX-512 VNNI, else the
/// portable one): sixteen rows of `ty` (Q8_0 or Q4_1) interleaved for 16-bit activations
/// against `xs` (`1..=GROUP_COLS` vectors); `out[c * GROUP + j]` is row `j` against `xs[c]`.
pub fn dot_q16_group(isa: Isa, ty: WeightType, group: &[u8], xs: &[&[BlockQ16]], out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced after detecting avx512f/bw/vnni besides avx2,
        // fma and f16c.
        Isa::Avx512 if unsafe { avx512::dot_q16_group(ty, group, xs, out) } => {}
        _ => interleaved::dot_q16_group(ty, group, xs, out),
    }
}

/// [`dot_q16_group`] for rows interleaved for 8-bit activations.
pub fn dot_q8_group(isa: Isa, ty: WeightType, group: &[u8], xs: &[&[BlockQ8]], out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced after detecting avx512f/bw/vnni besides avx2,
        // fma and f16c.
        Isa::Avx512 if unsafe { avx512::dot_q8_group(ty, group, xs, out) } => {}
        _ => interleaved::dot_q8_group(ty, group, xs, out),
    }
}

/// [`crate::quant::quantize_row_q16`] (the activations of the quantised matrix kernels) on the
/// best kernel `isa` has: the same integers and scales bit for bit.
pub fn quantize_q16(isa: Isa, x: &[f32], out: &mut [BlockQ16]) {
    debug_assert_eq!(x.len(), out.len() * crate::quant::QK);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` (and `Avx512`) are only produced after detecting avx2 and fma.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::quantize_q16(x, out) },
        _ => crate::quant::quantize_row_q16(x, out),
    }
}

/// [`crate::quant::quantize_row_q8`] (the activations of the interleaved kernel) on the best
/// kernel `isa` has: the same integers and scales bit for bit.
pub fn quantize_q8(isa: Isa, x: &[f32], out: &mut [BlockQ8]) {
    debug_assert_eq!(x.len(), out.len() * crate::quant::QK);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` (and `Avx512`) are only produced after detecting avx2 and fma.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::quantize_q8(x, out) },
        _ => crate::quant::quantize_row_q8(x, out),
    }
}

/// `out[c] = row · xs[c]` for a float weight row (F32, F16 or BF16) against f32 activations.
pub fn dot_f32(isa: Isa, ty: WeightType, row: &[u8], xs: &[&[f32]], out: &mut [f32]) {
    debug_assert!(!xs.is_empty() && xs.len() <= MAX_COLS && out.len() == xs.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` (and `Avx512`) are only produced after detecting avx2, fma, f16c.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::dot_f32(ty, row, xs, out) },
        _ => scalar::dot_f32(ty, row, xs, out),
    }
}

/// `a · b` over f32 slices of equal length.
#[inline]
pub fn dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` (and `Avx512`) are only produced after detecting avx2 and fma.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::dot(a, b) },
        _ => scalar::dot(a, b),
    }
}

/// `y += alpha * x`.
#[inline]
pub fn axpy(isa: Isa, alpha: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` (and `Avx512`) are only produced after detecting avx2 and fma.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::axpy(alpha, x, y) },
        _ => scalar::axpy(alpha, x, y),
    }
}

/// Elements sharing one scale in an `i8` key/value cache.
pub const KV_Q8_BLOCK: usize = 32;

/// An element type of the key/value cache: `f32` (reference models), `f16` (half the memory)
/// or `i8` (a quarter, plus one scale per [`KV_Q8_BLOCK`] elements).
pub trait KvElem: Copy + Default + Send + Sync + 'static {
    /// The cache type this element makes.
    const TYPE: KvType;
    /// The stored value (before its block's scale, for `i8`).
    fn to_f32(self) -> f32;
    /// Store `x` (whole blocks) into `out`, and for `i8` each block's scale into `scales`
    /// (untouched otherwise).
    fn store(x: &[f32], out: &mut [Self], scales: &mut [f32]);
}

impl KvElem for f32 {
    const TYPE: KvType = KvType::F32;
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    fn store(x: &[f32], out: &mut [f32], _: &mut [f32]) {
        out.copy_from_slice(x);
    }
}

impl KvElem for half::f16 {
    const TYPE: KvType = KvType::F16;
    #[inline]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn store(x: &[f32], out: &mut [half::f16], _: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = half::f16::from_f32(v);
        }
    }
}

impl KvElem for i8 {
    const TYPE: KvType = KvType::Q8;
    #[inline]
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn store(x: &[f32], out: &mut [i8], scales: &mut [f32]) {
        for ((x, q), d) in x
            .chunks_exact(KV_Q8_BLOCK)
            .zip(out.chunks_exact_mut(KV_Q8_BLOCK))
            .zip(scales)
        {
            *d = quantize_block_q8(x, q);
        }
    }
}

/// Quantize one block to 8 bits: `q[i] = round(x[i] / d)` with `d = max|x| / 127`,
/// returning `d` (0 for an all-zero block, NaN for one that is not finite, so that a broken
/// model's NaN reaches the logits as it does through the float caches).
pub fn quantize_block_q8(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() || x.iter().any(|v| v.is_nan()) {
        q.fill(0);
        return if amax == 0.0 { 0.0 } else { f32::NAN };
    }
    let d = amax / 127.0;
    let inv = 1.0 / d;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * inv).round() as i8;
    }
    d
}

/// Positions in one block of a [`KvLayout::Blocked`] cache.
pub const KV_BLOCK: usize = 16;

/// Where the keys and values of a run of cached positions are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvLayout {
    /// Position after position: element `e` of position `p` at `p * stride + e`.
    Rows,
    /// 8-bit keys and values for the AVX-512 VNNI kernel, in blocks of [`KV_BLOCK`] positions
    /// (`stride` a multiple of [`KV_Q8_BLOCK`]):
    /// - keys: each pair of elements `2j, 2j + 1` holds the sixteen positions' two values side
    ///   by side (32 bytes, one position per 32-bit lane), so one `vpdpwssd` against a
    ///   broadcast pair of the query adds that pair's products for sixteen positions at once;
    /// - values: each pair of positions `2i, 2i + 1` holds, element after element, the two
    ///   positions' values side by side, so one `vpdpwssd` against a broadcast pair of
    ///   attention weights adds both positions' contributions to sixteen elements at once;
    /// - scales (both): each 32-element block's scales are the sixteen positions' in a row.
    Blocked,
}

/// Which half of a layer's cache: their blocked layouts differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvHalf {
    Keys,
    Values,
}

impl KvLayout {
    /// Index of element `e` (`< stride`) of position `p`'s keys or values.
    #[inline]
    pub fn index(self, half: KvHalf, p: usize, e: usize, stride: usize) -> usize {
        let b = KV_BLOCK;
        match (self, half) {
            (KvLayout::Rows, _) => p * stride + e,
            (KvLayout::Blocked, KvHalf::Keys) => {
                p / b * b * stride + e / 2 * 2 * b + p % b * 2 + e % 2
            }
            (KvLayout::Blocked, KvHalf::Values) => {
                p / b * b * stride + p % b / 2 * 2 * stride + e * 2 + p % 2
            }
        }
    }

    /// Index of the scale of key or value element `e` of position `p` (8-bit caches).
    #[inline]
    pub fn scale_index(self, p: usize, e: usize, stride: usize) -> usize {
        match self {
            KvLayout::Rows => (p * stride + e) / KV_Q8_BLOCK,
            KvLayout::Blocked => {
                let b = KV_BLOCK;
                p / b * b * (stride / KV_Q8_BLOCK) + e / KV_Q8_BLOCK * b + p % b
            }
        }
    }

    /// Elements (and, divided by [`KV_Q8_BLOCK`], scales) that `positions` positions of
    /// `stride` occupy: whole blocks for [`KvLayout::Blocked`].
    pub fn elements(self, positions: usize, stride: usize) -> usize {
        match self {
            KvLayout::Rows => positions * stride,
            KvLayout::Blocked => positions.next_multiple_of(KV_BLOCK) * stride,
        }
    }
}

/// A run of `len` consecutive cached positions: position `p`'s keys are
/// `k[p * stride..][..stride]` (all key/value heads side by side; with a [`KvLayout::Blocked`]
/// layout, where its indices say), likewise `v`. For `i8` elements, element `i` stands for
/// `k[i] * k_scale[i / KV_Q8_BLOCK]` (likewise `v`; blocked: [`KvLayout::scale_index`]); the
/// float formats leave the scales empty.
#[derive(Clone, Copy)]
pub struct KvSeg<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub k_scale: &'a [f32],
    pub v_scale: &'a [f32],
    pub len: usize,
    pub layout: KvLayout,
}

/// Causal attention of one or more query heads that share a key/value head (a GQA group):
/// `q` holds `heads` queries of `head_dim` side by side, and for each of them
/// `out[h] = softmax(q[h] · K[p] * scale) · V[p]` over the positions of `segs` in order, where
/// position `p`'s key for this group is `k[p * stride + offset..][..head_dim]` (likewise `v`).
/// Each key and value row is read once for the whole group. `scores` is scratch.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn attend<T: KvElem>(
    isa: Isa,
    q: &[f32],
    head_dim: usize,
    segs: &[KvSeg<'_, T>],
    stride: usize,
    offset: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    assert!(
        head_dim > 0 && q.len().is_multiple_of(head_dim) && out.len() == q.len(),
        "attend: query/output shapes"
    );
    let mut blocked = false;
    for seg in segs {
        if seg.len == 0 {
            continue;
        }
        let elements = match seg.layout {
            KvLayout::Rows => (seg.len - 1) * stride + offset + head_dim,
            KvLayout::Blocked => {
                assert!(
                    T::TYPE == KvType::Q8
                        && stride.is_multiple_of(KV_Q8_BLOCK)
                        && offset.is_multiple_of(KV_Q8_BLOCK)
                        && head_dim.is_multiple_of(KV_Q8_BLOCK)
                        && offset + head_dim <= stride,
                    "attend: a blocked cache needs 8-bit elements and whole 32-element blocks"
                );
                blocked = true;
                KvLayout::Blocked.elements(seg.len, stride)
            }
        };
        assert!(
            elements <= seg.k.len().min(seg.v.len()),
            "attend: cache too short"
        );
        if T::TYPE == KvType::Q8 {
            assert!(
                elements.div_ceil(KV_Q8_BLOCK) <= seg.k_scale.len().min(seg.v_scale.len()),
                "attend: scales too short"
            );
        }
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced after detecting avx512f/bw besides avx2, fma
        // and f16c; the bounds were checked above.
        Isa::Avx512
            if head_dim.is_multiple_of(16)
                && stride.is_multiple_of(16)
                && offset.is_multiple_of(16)
                && (!blocked || head_dim <= avx512::MAX_BLOCKED_HEAD) =>
        unsafe { avx512::attend(q, head_dim, segs, stride, offset, scale, scores, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` (and `Avx512`) are only produced after detecting avx2, fma and
        // f16c; the bounds were checked above.
        Isa::Avx2 | Isa::Avx512
            if !blocked
                && head_dim.is_multiple_of(8)
                && stride.is_multiple_of(8)
                && offset.is_multiple_of(8) =>
        unsafe { avx2::attend(q, head_dim, segs, stride, offset, scale, scores, out) },
        _ => scalar::attend(q, head_dim, segs, stride, offset, scale, scores, out),
    }
}

/// `x[i] = exp(x[i])` in place, returning the sum (softmax denominators). The SIMD versions use
/// a polynomial accurate to a few ulp.
#[inline]
pub fn exp_in_place(isa: Isa, x: &mut [f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` (and `Avx512`) are only produced after detecting avx2 and fma.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::exp_in_place(x) },
        _ => scalar::exp_in_place(x),
    }
}

/// `Σ exp((x[i] - shift) · scale)` in f64 (a softmax denominator over a vocabulary: the sampler's
/// log-normaliser). The SIMD version computes each term with the f32 polynomial of
/// [`exp_in_place`] and sums in f64 lanes, so 49,152 terms cost microseconds, not the
/// tenths of a millisecond of a scalar f64 `exp` per term.
#[inline]
pub fn sum_exp(isa: Isa, x: &[f32], shift: f32, scale: f32) -> f64 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` (and `Avx512`) are only produced after detecting avx2 and fma.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::sum_exp(x, shift, scale) },
        _ => scalar::sum_exp(x, shift, scale),
    }
}

/// SiLU-gated product of the MLP: `out[i] = g[i] / (1 + exp(-g[i])) * u[i]`.
#[inline]
pub fn silu_mul(isa: Isa, g: &[f32], u: &[f32], out: &mut [f32]) {
    debug_assert!(g.len() == u.len() && out.len() == g.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` (and `Avx512`) are only produced after detecting avx2 and fma.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::silu_mul(g, u, out) },
        _ => scalar::silu_mul(g, u, out),
    }
}

#[cfg(test)]
mod tests;

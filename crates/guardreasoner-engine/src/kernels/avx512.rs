//! AVX-512 (F, BW, VNNI) quantised dot products (x86-64): one 32-element block of 16-bit
//! activations fills a 512-bit register, and `vpdpwssd` multiplies and pair-sums it against the
//! widened weights in one instruction. Everything else runs the [`super::avx2`] kernels.
//!
//! Only Q8_0 against one or two activation vectors is taken here: on the development machine
//! (AMD EPYC, 2 cores, 160k-row matrices streamed from memory) it ran 12-13.5 G weights/s
//! against AVX2's 11-12.5 at one vector, while for Q4_1 (any count) and Q8_0 at four vectors
//! the AVX2 kernels were as fast or faster (the 512-bit nibble unpacking costs more than the
//! fused multiply-add saves). Re-measure (`examples/kernel_bench.rs`) before widening this.
//!
//! Q8_0 matrices of whole sixteen-row groups are interleaved at load on these CPUs and go
//! through [`dot_q16_group`] or [`dot_q8_group`] instead (one lane per row), so the
//! row kernels above serve what is left: matrices not in whole groups, and tests.
//!
//! Callers must have checked the CPU features ([`super::Isa::detect`]); the functions are
//! `unsafe` for that reason only: memory accesses stay inside the slices passed in.

use super::avx2::{self, each_row};
use super::{KvElem, KvLayout, KvSeg, KV_BLOCK, KV_Q8_BLOCK};
use crate::kv_cache::KvType;
use crate::quant::{BlockQ16, BlockQ8, WeightType, QK};
use std::arch::x86_64::*;

/// See [`super::dot_q16_rows`]. Returns `false` (computing nothing) for formats without an
/// AVX-512 kernel (see the module notes) or buffers of the wrong size.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q16_rows(
    ty: WeightType,
    rows: &[u8],
    row_bytes: usize,
    xs: &[&[BlockQ16]],
    out: &mut [f32],
) -> bool {
    let blocks = row_bytes / ty.block_bytes();
    let n = xs.len();
    if n == 0
        || n > 4
        || row_bytes == 0
        || !rows.len().is_multiple_of(row_bytes)
        || out.len() < rows.len() / row_bytes * n
        || xs.iter().any(|x| x.len() < blocks)
    {
        return false;
    }
    match (ty, n) {
        (WeightType::Q8_0, 1) => each_row(rows, row_bytes, out, |r| q8_0::<1>(r, blocks, xs)),
        (WeightType::Q8_0, 2) => each_row(rows, row_bytes, out, |r| q8_0::<2>(r, blocks, xs)),
        _ => return false,
    }
    true
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0<const N: usize>(row: &[u8], blocks: usize, xs: &[&[BlockQ16]]) -> [f32; N] {
    let mut acc = [_mm512_setzero_ps(); N];
    let base = row.as_ptr();
    let xp: [*const BlockQ16; N] = std::array::from_fn(|c| xs[c].as_ptr());
    for b in 0..blocks {
        let p = base.add(b * 34);
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            (p as *const u16).read_unaligned() as i32,
        )));
        let w = _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.add(2) as *const __m256i));
        for c in 0..N {
            let xb = &*xp[c].add(b);
            let x = _mm512_loadu_si512(xb.qs.as_ptr() as *const _);
            let prod = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w, x);
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(prod), _mm512_set1_ps(d * xb.d), acc[c]);
        }
    }
    std::array::from_fn(|c| _mm512_reduce_add_ps(acc[c]))
}

const _: () = assert!(QK == 32);

/// The checks and the dispatch on the vector count shared by [`dot_q16_group`] and
/// [`dot_q8_group`] (`$kernel::<N, Q4_1>` for each const `N`).
macro_rules! group_call {
    ($kernel:ident, $ty:expr, $group:expr, $xs:expr, $out:expr) => {{
        use super::interleaved::{group_block, supports, GROUP};
        let (ty, group, xs, out) = ($ty, $group, $xs, $out);
        let n = xs.len();
        if !supports(ty) {
            return false;
        }
        let gb = group_block(ty);
        let blocks = group.len() / gb;
        if n == 0
            || n > super::GROUP_COLS
            || !group.len().is_multiple_of(gb)
            || out.len() < GROUP * n
            || xs.iter().any(|x| x.len() < blocks)
        {
            return false;
        }
        macro_rules! run {
            ($n:literal) => {{
                let acc = if ty == WeightType::Q4_1 {
                    $kernel::<$n, true>(group, blocks, xs)
                } else {
                    $kernel::<$n, false>(group, blocks, xs)
                };
                // One register per vector: its sixteen rows, stored as they are.
                for (c, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.as_mut_ptr().add(c * GROUP), *a);
                }
            }};
        }
        match n {
            1 => run!(1),
            2 => run!(2),
            3 => run!(3),
            4 => run!(4),
            5 => run!(5),
            6 => run!(6),
            7 => run!(7),
            _ => run!(8),
        }
        true
    }};
}

/// See [`super::interleaved::dot_q16_group`]: sixteen interleaved Q8_0 or Q4_1 rows against
/// up to [`super::GROUP_COLS`] 16-bit activation vectors. Returns `false` (computing nothing) for a
/// format without an interleaved layout or buffers of the wrong size.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q16_group(
    ty: WeightType,
    group: &[u8],
    xs: &[&[BlockQ16]],
    out: &mut [f32],
) -> bool {
    group_call!(rows_group_q16, ty, group, xs, out)
}

/// One lane per row: for each block, sixteen `vpdpwssd` (one per element pair, the pair of
/// each activation vector broadcast) give the block's integer sums of all sixteen rows, scaled
/// by one multiply-add per vector (and, for Q4_1, the block minima times the activations' sum
/// added by a second). Q4_1's two 4-bit weights of a pair sit in one byte per row: widened to
/// 32 bits, `(b | b << 12) & 0x000F000F` puts them in the lane's two 16-bit halves.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn rows_group_q16<const N: usize, const Q4_1: bool>(
    group: &[u8],
    blocks: usize,
    xs: &[&[BlockQ16]],
) -> [__m512; N] {
    use super::interleaved::{group_block, header, GROUP};
    let ty = if Q4_1 {
        WeightType::Q4_1
    } else {
        WeightType::Q8_0
    };
    let (gb, head) = (group_block(ty), header(ty));
    let nibbles = _mm512_set1_epi32(0x000F_000F);
    let mut acc = [_mm512_setzero_ps(); N];
    let base = group.as_ptr();
    let xp: [*const BlockQ16; N] = std::array::from_fn(|c| xs[c].as_ptr());
    for b in 0..blocks {
        let p = base.add(b * gb);
        prefetch_lines(p.wrapping_add(WEIGHTS_AHEAD) as *const i8, gb);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        let mut sums = [_mm512_setzero_si512(); N];
        for k in 0..QK / 2 {
            let w = if Q4_1 {
                let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                    p.add(head + GROUP * k) as *const __m128i
                ));
                // 0xA8: (a | b) & c.
                _mm512_ternarylogic_epi32::<0xA8>(bytes, _mm512_slli_epi32::<12>(bytes), nibbles)
            } else {
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(
                    p.add(head + 2 * GROUP * k) as *const __m256i
                ))
            };
            for c in 0..N {
                let pair = ((*xp[c].add(b)).qs.as_ptr().add(2 * k) as *const i32).read_unaligned();
                sums[c] = _mm512_dpwssd_epi32(sums[c], w, _mm512_set1_epi32(pair));
            }
        }
        let m = if Q4_1 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * GROUP) as *const __m256i))
        } else {
            _mm512_setzero_ps()
        };
        for c in 0..N {
            let x = &*xp[c].add(b);
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(x.d));
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[c]), scale, acc[c]);
            if Q4_1 {
                acc[c] = _mm512_fmadd_ps(m, _mm512_set1_ps(x.s), acc[c]);
            }
        }
    }
    acc
}

/// How far ahead of the block being computed the interleaved kernels ask for weights: the
/// groups of a matrix lie one after another, so this reaches into the next group (which a
/// decode step reads next, from memory).
const WEIGHTS_AHEAD: usize = 4096;

/// See [`super::interleaved::dot_q8_group`]: sixteen interleaved Q8_0 or Q4_1 rows against
/// up to [`super::GROUP_COLS`] 8-bit activation vectors. Returns `false` (computing nothing) for a
/// format without an interleaved layout or buffers of the wrong size.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q8_group(
    ty: WeightType,
    group: &[u8],
    xs: &[&[BlockQ8]],
    out: &mut [f32],
) -> bool {
    group_call!(rows_group_q8, ty, group, xs, out)
}

/// One lane per row: for each block, eight `vpdpbusd` per activation vector (four elements
/// each, the vector's four 8-bit values broadcast) give the block's integer sums of all sixteen
/// rows, scaled by one multiply-add per vector. Q4_1's nibbles are one mask (and a shift) from
/// the unsigned bytes `vpdpbusd` takes, and its block minima times the activations' sum are
/// added by a second multiply-add; Q8_0's weights are stored plus 128, so `128 · Σ x` comes off
/// the integer sum.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn rows_group_q8<const N: usize, const Q4_1: bool>(
    group: &[u8],
    blocks: usize,
    xs: &[&[BlockQ8]],
) -> [__m512; N] {
    use super::interleaved::{group_block, header, GROUP};
    let ty = if Q4_1 {
        WeightType::Q4_1
    } else {
        WeightType::Q8_0
    };
    let (gb, head) = (group_block(ty), header(ty));
    let nibbles = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); N];
    let base = group.as_ptr();
    let xp: [*const BlockQ8; N] = std::array::from_fn(|c| xs[c].as_ptr());
    // The four activations of quad `t` of vector `c` in block `b`, in every lane.
    let quad = |c: usize, b: usize, t: usize| {
        _mm512_set1_epi32(((*xp[c].add(b)).qs.as_ptr().add(4 * t) as *const i32).read_unaligned())
    };
    for b in 0..blocks {
        let p = base.add(b * gb);
        prefetch_lines(p.wrapping_add(WEIGHTS_AHEAD) as *const i8, gb);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        let mut sums = [_mm512_setzero_si512(); N];
        if Q4_1 {
            for r in 0..QK / 8 {
                let v = _mm512_loadu_si512(p.add(head + 4 * GROUP * r) as *const _);
                let lo = _mm512_and_si512(v, nibbles);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibbles);
                for (c, sum) in sums.iter_mut().enumerate() {
                    *sum = _mm512_dpbusd_epi32(*sum, lo, quad(c, b, 2 * r));
                    *sum = _mm512_dpbusd_epi32(*sum, hi, quad(c, b, 2 * r + 1));
                }
            }
        } else {
            for t in 0..QK / 4 {
                let w = _mm512_loadu_si512(p.add(head + 4 * GROUP * t) as *const _);
                for (c, sum) in sums.iter_mut().enumerate() {
                    *sum = _mm512_dpbusd_epi32(*sum, w, quad(c, b, t));
                }
            }
        }
        let m = if Q4_1 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * GROUP) as *const __m256i))
        } else {
            _mm512_setzero_ps()
        };
        for c in 0..N {
            let x = &*xp[c].add(b);
            if !Q4_1 {
                sums[c] = _mm512_sub_epi32(sums[c], _mm512_set1_epi32(128 * x.sum));
            }
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(x.d));
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[c]), scale, acc[c]);
            if Q4_1 {
                acc[c] = _mm512_fmadd_ps(m, _mm512_set1_ps(x.s), acc[c]);
            }
        }
    }
    acc
}

/// See [`super::attend`]: the same computation as [`super::avx2::attend`] on 512-bit vectors
/// (a 64-element head is four registers, and the weighted sum of the values covers the whole
/// head in one pass over the positions instead of four).
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vnni, avx2, fma and f16c; `head_dim`, `stride`
/// and `offset` must be multiples of 16, `head_dim` at most [`MAX_BLOCKED_HEAD`] where a segment
/// has blocked keys, and every segment long enough (checked by the caller).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn attend<T: KvElem>(
    q: &[f32],
    head_dim: usize,
    segs: &[KvSeg<'_, T>],
    stride: usize,
    offset: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let d = head_dim;
    let total: usize = segs.iter().map(|s| s.len).sum();
    // Up to four query heads at a time.
    for (q, out) in q.chunks(4 * d).zip(out.chunks_mut(4 * d)) {
        match q.len() / d {
            1 => group::<T, 1>(q, d, segs, total, stride, offset, scale, scores, out),
            2 => group::<T, 2>(q, d, segs, total, stride, offset, scale, scores, out),
            3 => group::<T, 3>(q, d, segs, total, stride, offset, scale, scores, out),
            _ => group::<T, 4>(q, d, segs, total, stride, offset, scale, scores, out),
        }
    }
}

/// Sixteen cached elements starting at `i`, as f32 (`i` a multiple of 16, so an 8-bit
/// block's sixteen share one scale).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn load16kv<T: KvElem>(data: *const T, scales: *const f32, i: usize) -> __m512 {
    let p = data.add(i);
    match T::TYPE {
        KvType::F32 => _mm512_loadu_ps(p as *const f32),
        KvType::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
        KvType::Q8 => _mm512_mul_ps(
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i))),
            _mm512_set1_ps(*scales.add(i / KV_Q8_BLOCK)),
        ),
    }
}

/// The 512-bit vectors folded to 256 bits (the two halves added), for [`avx2::hsum4`]. The
/// upper half is taken as four f64 lanes: `_mm512_extractf32x8_ps` needs AVX-512 DQ, which
/// `Isa::Avx512` does not check for, so it was not inlined here but called.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn fold(v: __m512) -> __m256 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    _mm256_add_ps(_mm512_castps512_ps256(v), hi)
}

#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn group<T: KvElem, const H: usize>(
    q: &[f32],
    d: usize,
    segs: &[KvSeg<'_, T>],
    total: usize,
    stride: usize,
    offset: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    scores.clear();
    scores.resize(H * total, 0.0);
    if total == 0 {
        out.fill(0.0);
        return;
    }
    let sp = scores.as_mut_ptr();
    // Blocked keys are dotted with the queries quantised to 16 bits, as the matrix kernels
    // dot their activations (`d <= MAX_BLOCKED_HEAD`, checked by the caller).
    let mut q16 = [BlockQ16::default(); 4 * MAX_BLOCKED_HEAD / QK];
    if segs.iter().any(|s| s.layout == KvLayout::Blocked) {
        for (h, qh) in q.chunks_exact(d).enumerate() {
            avx2::quantize_q16(qh, &mut q16[h * d / QK..(h + 1) * d / QK]);
        }
    }
    // Scores, four positions at a time; a lone position is reduced as a block of four with
    // zeros, so a score does not depend on where the segment boundaries fall.
    let qp = q.as_ptr();
    let mut base = 0;
    for seg in segs {
        if seg.layout == KvLayout::Blocked {
            blocked_scores::<H>(
                &q16[..H * d / QK],
                d,
                seg.k.as_ptr() as *const i8,
                seg.k_scale.as_ptr(),
                seg.len,
                stride,
                offset,
                scale,
                sp.add(base),
                total,
            );
            base += seg.len;
            continue;
        }
        let (k, ks) = (seg.k.as_ptr(), seg.k_scale.as_ptr());
        let mut p = 0;
        while p < seg.len {
            let m = (seg.len - p).min(4);
            // Always four rows (the last one again past the end, its sums unused), so that
            // the accumulators are indexed by constants and stay in registers.
            let rows: [usize; 4] = std::array::from_fn(|j| (p + j.min(m - 1)) * stride + offset);
            let mut acc = [[_mm512_setzero_ps(); 4]; H];
            let mut c = 0;
            while c < d {
                for (j, &row) in rows.iter().enumerate() {
                    let kv = load16kv(k, ks, row + c);
                    for (h, acc) in acc.iter_mut().enumerate() {
                        acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(h * d + c)), kv, acc[j]);
                    }
                }
                c += 16;
            }
            for (h, acc) in acc.iter().enumerate() {
                let s = _mm_mul_ps(
                    avx2::hsum4([fold(acc[0]), fold(acc[1]), fold(acc[2]), fold(acc[3])]),
                    _mm_set1_ps(scale),
                );
                // The first `m` lanes. (A copy loop became a `memcpy` call, whose register
                // saves and restores cost more than the scores.)
                let lanes = _mm_cmpgt_epi32(_mm_set1_epi32(m as i32), _mm_setr_epi32(0, 1, 2, 3));
                _mm_maskstore_ps(sp.add(h * total + base + p), lanes, s);
            }
            p += m;
        }
        base += seg.len;
    }
    avx2::softmax_rows(scores, total);
    // Weighted sums of the values, up to four registers (64 elements) of the head per pass.
    let mut c0 = 0;
    while c0 < d {
        match (d - c0) / 16 {
            1 => values::<T, H, 1>(segs, scores, total, stride, offset + c0, out, d, c0),
            2 => values::<T, H, 2>(segs, scores, total, stride, offset + c0, out, d, c0),
            3 => values::<T, H, 3>(segs, scores, total, stride, offset + c0, out, d, c0),
            _ => values::<T, H, 4>(segs, scores, total, stride, offset + c0, out, d, c0),
        }
        c0 += 16 * ((d - c0) / 16).min(4);
    }
    if segs.iter().any(|s| s.layout == KvLayout::Blocked) {
        WEIGHTS_Q16.with_borrow_mut(|wq| {
            blocked_values::<H>(segs, scores, total, stride, offset, out, d, wq)
        });
    }
}

thread_local! {
    /// The attention weights of [`blocked_values`], quantised to 16 bits.
    static WEIGHTS_Q16: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[h] += Σ_p w[h][p] · V[p]` over the segments with blocked values ([`KvLayout::Blocked`]).
///
/// For each head and 32-element block, the weights times the positions' value scales are
/// quantised to 16 bits with one multiplier `m` over all positions, as large as keeps every
/// lane's sum inside 32 bits (at most 32767 per weight, and `127 Σ|wq| < 2^31`). Then each pair
/// of positions is one `vpdpwssd` per sixteen elements and head, summed in integers over every
/// segment and converted once, `/ m`: the result does not depend on where segments split.
/// A non-finite weight or scale makes the head's block NaN, as the float path would.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn blocked_values<const H: usize>(
    segs: &[KvSeg<'_, impl KvElem>],
    w: &[f32],
    total: usize,
    stride: usize,
    offset: usize,
    out: &mut [f32],
    d: usize,
    wq: &mut Vec<i16>,
) {
    let (b, nb, first) = (KV_BLOCK, d / QK, offset / QK);
    // Pass 1: the largest |w s| and the sum of |w s| per head and 32-element block.
    let mut mult = [[0.0f32; MAX_BLOCKED_HEAD / QK]; 4];
    let mut finite = [[true; MAX_BLOCKED_HEAD / QK]; 4];
    for (h, (mult, finite)) in mult.iter_mut().zip(&mut finite).take(H).enumerate() {
        for (blk, (mult, finite)) in mult.iter_mut().zip(finite).take(nb).enumerate() {
            let (mut max, mut sum) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut base = 0;
            for seg in segs {
                if seg.layout == KvLayout::Blocked {
                    let wh = w.as_ptr().add(h * total + base);
                    for p0 in (0..seg.len).step_by(b) {
                        let ws = weighted_scales(wh, seg, p0, stride, first + blk);
                        let ws = _mm512_abs_ps(ws);
                        max = _mm512_max_ps(ws, max);
                        sum = _mm512_add_ps(sum, ws);
                    }
                }
                base += seg.len;
            }
            let (max, sum) = (_mm512_reduce_max_ps(max), _mm512_reduce_add_ps(sum));
            *finite = sum.is_finite();
            *mult = if sum > 0.0 && sum.is_finite() {
                // 2^31 / 127, less a unit of rounding per position.
                (32767.0 / max).min((16_909_320.0 - total as f32) / sum)
            } else {
                0.0
            };
        }
    }
    let padded: usize = segs
        .iter()
        .filter(|s| s.layout == KvLayout::Blocked)
        .map(|s| s.len.next_multiple_of(b))
        .sum();
    // Pass 2: the quantised weights, per segment, head and block, zero past each segment's end.
    wq.clear();
    wq.resize(H * nb * padded, 0);
    let mut base = 0;
    let mut at = 0;
    for seg in segs {
        if seg.layout == KvLayout::Blocked {
            let n = seg.len.next_multiple_of(b);
            for (h, mult) in mult.iter().take(H).enumerate() {
                let wh = w.as_ptr().add(h * total + base);
                for (blk, &mult) in mult.iter().take(nb).enumerate() {
                    let m = _mm512_set1_ps(mult);
                    let dst = wq.as_mut_ptr().add(at + (h * nb + blk) * n);
                    for p0 in (0..seg.len).step_by(b) {
                        let ws = weighted_scales(wh, seg, p0, stride, first + blk);
                        let q = _mm512_cvtps_epi32(_mm512_mul_ps(ws, m));
                        _mm256_storeu_si256(dst.add(p0) as *mut __m256i, _mm512_cvtepi32_epi16(q));
                    }
                }
            }
            at += H * nb * n;
        }
        base += seg.len;
    }
    // Pass 3: the integer sums, up to four registers (64 elements) of the head per pass.
    let mut c0 = 0;
    while c0 < d {
        match (d - c0) / 16 {
            1 => pair_sums::<H, 1>(segs, wq, stride, offset, c0, d, &mult, &finite, out),
            2 => pair_sums::<H, 2>(segs, wq, stride, offset, c0, d, &mult, &finite, out),
            3 => pair_sums::<H, 3>(segs, wq, stride, offset, c0, d, &mult, &finite, out),
            _ => pair_sums::<H, 4>(segs, wq, stride, offset, c0, d, &mult, &finite, out),
        }
        c0 += 16 * ((d - c0) / 16).min(4);
    }
}

/// `w[p] · s[p]` for the sixteen positions from `p0` (a multiple of [`KV_BLOCK`]) of a blocked
/// segment, zero past its end: the attention weights `w` (from the segment's first position)
/// times the value scales of the row's 32-element block `block`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn weighted_scales(
    w: *const f32,
    seg: &KvSeg<'_, impl KvElem>,
    p0: usize,
    stride: usize,
    block: usize,
) -> __m512 {
    let mask = lanes(seg.len - p0);
    let scales = seg
        .v_scale
        .as_ptr()
        .add(p0 * (stride / QK) + block * KV_BLOCK);
    prefetch(scales.wrapping_add(AHEAD_BLOCKS * KV_BLOCK * (stride / QK)) as *const i8);
    _mm512_mul_ps(
        _mm512_maskz_loadu_ps(mask, w.add(p0)),
        _mm512_maskz_loadu_ps(mask, scales),
    )
}

/// The first `n` (at most 16) lanes.
#[inline]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        (1u16 << n) - 1
    }
}

/// [`blocked_values`]' integer sums for elements `c0..c0 + 16W` of the head, added to `out`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn pair_sums<const H: usize, const W: usize>(
    segs: &[KvSeg<'_, impl KvElem>],
    wq: &[i16],
    stride: usize,
    offset: usize,
    c0: usize,
    d: usize,
    mult: &[[f32; MAX_BLOCKED_HEAD / QK]; 4],
    finite: &[[bool; MAX_BLOCKED_HEAD / QK]; 4],
    out: &mut [f32],
) {
    let (b, nb) = (KV_BLOCK, d / QK);
    let mut acc = [[_mm512_setzero_si512(); W]; H];
    let mut at = 0;
    for seg in segs {
        if seg.layout != KvLayout::Blocked {
            continue;
        }
        let (v, n) = (seg.v.as_ptr() as *const i8, seg.len.next_multiple_of(b));
        for p in (0..seg.len).step_by(2) {
            // Positions p and p + 1 (a zero weight past the end), elements side by side.
            let row = v.add(p / b * b * stride + p % b * stride + 2 * (offset + c0));
            prefetch_lines(row.wrapping_add(AHEAD_BLOCKS * b * stride), W * 32);
            let vv: [__m512i; W] = std::array::from_fn(|j| {
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(row.add(32 * j) as *const __m256i))
            });
            for (h, acc) in acc.iter_mut().enumerate() {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let blk = (c0 + 16 * j) / QK;
                    let pair = wq.as_ptr().add(at + (h * nb + blk) * n + p) as *const i32;
                    *acc =
                        _mm512_dpwssd_epi32(*acc, vv[j], _mm512_set1_epi32(pair.read_unaligned()));
                }
            }
        }
        at += H * nb * n;
    }
    let op = out.as_mut_ptr();
    for (h, acc) in acc.iter().enumerate() {
        for (j, a) in acc.iter().enumerate() {
            let blk = (c0 + 16 * j) / QK;
            let o = op.add(h * d + c0 + 16 * j);
            let add = if !finite[h][blk] {
                _mm512_set1_ps(f32::NAN)
            } else if mult[h][blk] == 0.0 {
                _mm512_setzero_ps()
            } else {
                _mm512_div_ps(_mm512_cvtepi32_ps(*a), _mm512_set1_ps(mult[h][blk]))
            };
            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), add));
        }
    }
}

/// How far ahead (in blocks of [`KV_BLOCK`] positions) the blocked kernels ask for keys and
/// values: a decode batch's caches come from memory, and the hardware prefetcher alone left
/// the kernels waiting on it.
const AHEAD_BLOCKS: usize = 4;

/// A hint to bring the cache line at `p` into L1; `p` may lie past the data (no access is made).
#[inline]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn prefetch(p: *const i8) {
    _mm_prefetch::<_MM_HINT_T0>(p);
}

/// [`prefetch`] for every line of the `bytes` from `p`.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn prefetch_lines(p: *const i8, bytes: usize) {
    for line in (0..bytes).step_by(64) {
        prefetch(p.wrapping_add(line));
    }
}

/// Longest head the blocked-key scores take (the queries' 16-bit blocks live on the stack).
pub const MAX_BLOCKED_HEAD: usize = 256;

/// `scores[h * total + p] = scale · q[h] · K[p]` for the `len` positions of one segment of
/// blocked 8-bit keys ([`KvLayout::Blocked`]), sixteen positions a register: for each pair of
/// elements, one widening load of the sixteen positions' pair and one `vpdpwssd` per head
/// against the query's pair broadcast; each 32-element block's integer sums are scaled by the
/// sixteen positions' scales times the query block's. Every position's score is computed the
/// same way wherever it sits in a block, so segment boundaries do not change it.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn blocked_scores<const H: usize>(
    q16: &[BlockQ16],
    d: usize,
    k: *const i8,
    k_scale: *const f32,
    len: usize,
    stride: usize,
    offset: usize,
    scale: f32,
    scores: *mut f32,
    total: usize,
) {
    let b = KV_BLOCK;
    let mut p0 = 0;
    while p0 < len {
        // Two blocks at a time where there are two: twice the independent sums in flight.
        let (m, n) = if len - p0 > b {
            (
                key_blocks::<H, 2>(q16, d, k, k_scale, p0, stride, offset),
                2 * b,
            )
        } else {
            let [a] = key_blocks::<H, 1>(q16, d, k, k_scale, p0, stride, offset);
            ([a, [_mm512_setzero_ps(); H]], b)
        };
        for (i, acc) in m.iter().enumerate().take(n / b) {
            let at = p0 + i * b;
            let mask = lanes(len - at);
            for (h, acc) in acc.iter().enumerate() {
                let s = _mm512_mul_ps(*acc, _mm512_set1_ps(scale));
                _mm512_mask_storeu_ps(scores.add(h * total + at), mask, s);
            }
        }
        p0 += n;
    }
}

/// The unscaled scores of `H` heads against `P` consecutive key blocks from position `p0` (a
/// multiple of [`KV_BLOCK`]): `[block][head]`, a lane per position.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn key_blocks<const H: usize, const P: usize>(
    q16: &[BlockQ16],
    d: usize,
    k: *const i8,
    k_scale: *const f32,
    p0: usize,
    stride: usize,
    offset: usize,
) -> [[__m512; H]; P] {
    let b = KV_BLOCK;
    let (blocks, first) = (d / QK, offset / QK);
    let mut acc = [[_mm512_setzero_ps(); H]; P];
    for blk in 0..blocks {
        // This 32-element block's sixteen pairs: 32 bytes each (sixteen positions' two values).
        let kp: [*const i8; P] =
            std::array::from_fn(|i| k.add((p0 + i * b) * stride + (first + blk) * QK * b));
        let mut sums = [[_mm512_setzero_si512(); H]; P];
        for j in 0..QK / 2 {
            if j % 2 == 0 {
                for &kp in &kp {
                    prefetch(kp.wrapping_add(2 * b * j + AHEAD_BLOCKS * b * stride));
                }
            }
            let kv: [__m512i; P] = std::array::from_fn(|i| {
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(kp[i].add(2 * b * j) as *const __m256i))
            });
            for h in 0..H {
                let qs = q16[h * blocks + blk].qs.as_ptr();
                let pair = _mm512_set1_epi32((qs.add(2 * j) as *const i32).read_unaligned());
                for i in 0..P {
                    sums[i][h] = _mm512_dpwssd_epi32(sums[i][h], kv[i], pair);
                }
            }
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let at = (p0 + i * b) * (stride / QK) + (first + blk) * b;
            prefetch(k_scale.wrapping_add(at + AHEAD_BLOCKS * b * (stride / QK)) as *const i8);
            let ks = _mm512_loadu_ps(k_scale.add(at));
            for (h, acc) in acc.iter_mut().enumerate() {
                let s = _mm512_mul_ps(ks, _mm512_set1_ps(q16[h * blocks + blk].d));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[i][h]), s, *acc);
            }
        }
    }
    acc
}

/// `out[h][c0..c0 + 16W] = Σ_p w[h][p] · V[p][col..col + 16W]`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn values<T: KvElem, const H: usize, const W: usize>(
    segs: &[KvSeg<'_, T>],
    w: &[f32],
    total: usize,
    stride: usize,
    col: usize,
    out: &mut [f32],
    d: usize,
    c0: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); W]; H];
    let wp = w.as_ptr();
    let mut base = 0;
    for seg in segs {
        if seg.layout == KvLayout::Blocked {
            // Added by `blocked_values`.
            base += seg.len;
            continue;
        }
        let (v, vs) = (seg.v.as_ptr(), seg.v_scale.as_ptr());
        for p in 0..seg.len {
            let row = p * stride + col;
            let vv: [__m512; W] = std::array::from_fn(|i| load16kv(v, vs, row + 16 * i));
            for (h, acc) in acc.iter_mut().enumerate() {
                let wb = _mm512_set1_ps(*wp.add(h * total + base + p));
                for i in 0..W {
                    acc[i] = _mm512_fmadd_ps(wb, vv[i], acc[i]);
                }
            }
        }
        base += seg.len;
    }
    let op = out.as_mut_ptr();
    for (h, acc) in acc.iter().enumerate() {
        for (i, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(op.add(h * d + c0 + 16 * i), *a);
        }
    }
}

//! AVX2 + FMA + F16C kernels (x86-64). Callers must have checked the CPU features
//! ([`super::Isa::detect`]); every function here is `unsafe` for that reason only: all memory
//! accesses stay inside the slices passed in (lengths are checked on entry).

use super::{KvElem, KvSeg, KV_Q8_BLOCK};
use crate::kv_cache::KvType;
use crate::quant::{BlockQ16, BlockQ8, WeightType, QK};
use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// See [`super::dot_q16_rows`]. Returns `false` (computing nothing) for formats without an
/// AVX2 kernel or buffers of the wrong size; the caller then runs the scalar one.
///
/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
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
    macro_rules! run {
        ($f:ident) => {
            match n {
                1 => each_row(rows, row_bytes, out, |r| $f::<1>(r, blocks, xs)),
                2 => each_row(rows, row_bytes, out, |r| $f::<2>(r, blocks, xs)),
                3 => each_row(rows, row_bytes, out, |r| $f::<3>(r, blocks, xs)),
                _ => each_row(rows, row_bytes, out, |r| $f::<4>(r, blocks, xs)),
            }
        };
    }
    match ty {
        WeightType::Q4_1 => run!(q4_1),
        WeightType::Q4_0 => run!(q4_0),
        WeightType::Q8_0 => run!(q8_0),
        _ => return false,
    }
    true
}

/// `out[r * N..][..N] = f(row r)` for each row.
#[inline(always)]
pub(super) fn each_row<const N: usize>(
    rows: &[u8],
    row_bytes: usize,
    out: &mut [f32],
    mut f: impl FnMut(&[u8]) -> [f32; N],
) {
    for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(N)) {
        o.copy_from_slice(&f(row));
    }
}

/// Q4_1 (and Q4_0, whose `q - 8` is folded into the offset term): the 16 bytes of a block
/// widened to 16-bit lanes once, split into low nibbles (elements 0..16) and high nibbles
/// (16..32) by a mask and a shift, then two `madd_epi16` per activation vector. The block's two
/// scale products `[d·d_x, m·s_x]` come from one vector multiply of the weight's `[d, m]`
/// halves with the activation block's leading `[d, s]` floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_generic<const N: usize, const Q4_0: bool>(
    row: &[u8],
    blocks: usize,
    xs: &[&[BlockQ16]],
) -> [f32; N] {
    let bb = if Q4_0 { 18 } else { 20 };
    let qs_off = if Q4_0 { 2 } else { 4 };
    let low = _mm256_set1_epi16(0x0F);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut mins = [_mm_setzero_ps(); N];
    let base = row.as_ptr();
    let xp: [*const BlockQ16; N] = std::array::from_fn(|c| xs[c].as_ptr());
    for b in 0..blocks {
        let p = base.add(b * bb);
        let dm = scale_pair::<Q4_0>(p);
        let w = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(qs_off) as *const __m128i));
        let w_lo = _mm256_and_si256(w, low);
        let w_hi = _mm256_srli_epi16(w, 4);
        for c in 0..N {
            let xb = xp[c].add(b);
            let xq = (*xb).qs.as_ptr() as *const __m256i;
            let prod = _mm256_add_epi32(
                _mm256_madd_epi16(w_lo, _mm256_loadu_si256(xq)),
                _mm256_madd_epi16(w_hi, _mm256_loadu_si256(xq.add(1))),
            );
            let sc = _mm_mul_ps(dm, _mm_castpd_ps(_mm_load_sd(xb as *const f64)));
            mins[c] = _mm_add_ps(mins[c], sc);
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), _mm256_broadcastss_ps(sc), acc[c]);
        }
    }
    std::array::from_fn(|c| hsum(acc[c]) + _mm_cvtss_f32(_mm_movehdup_ps(mins[c])))
}

/// `[d, m, 0, 0]` of a Q4_1 block at `p` (`[d, -8d, 0, 0]` for Q4_0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_pair<const Q4_0: bool>(p: *const u8) -> __m128 {
    if Q4_0 {
        let d = _mm_cvtph_ps(_mm_set1_epi16((p as *const i16).read_unaligned()));
        _mm_mul_ps(d, _mm_setr_ps(1.0, -8.0, 0.0, 0.0))
    } else {
        _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1<const N: usize>(row: &[u8], blocks: usize, xs: &[&[BlockQ16]]) -> [f32; N] {
    q4_generic::<N, false>(row, blocks, xs)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0<const N: usize>(row: &[u8], blocks: usize, xs: &[&[BlockQ16]]) -> [f32; N] {
    q4_generic::<N, true>(row, blocks, xs)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0<const N: usize>(row: &[u8], blocks: usize, xs: &[&[BlockQ16]]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    let base = row.as_ptr();
    let xp: [*const BlockQ16; N] = std::array::from_fn(|c| xs[c].as_ptr());
    for b in 0..blocks {
        let p = base.add(b * 34);
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            (p as *const u16).read_unaligned() as i32,
        )));
        let w_lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(2) as *const __m128i));
        let w_hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(18) as *const __m128i));
        for c in 0..N {
            let xb = &*xp[c].add(b);
            let xq = xb.qs.as_ptr() as *const __m256i;
            let prod = _mm256_add_epi32(
                _mm256_madd_epi16(w_lo, _mm256_loadu_si256(xq)),
                _mm256_madd_epi16(w_hi, _mm256_loadu_si256(xq.add(1))),
            );
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), _mm256_set1_ps(d * xb.d), acc[c]);
        }
    }
    std::array::from_fn(|c| hsum(acc[c]))
}

const _: () = assert!(QK == 32);

/// Eight weights starting at element `i` of a float row, as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8(ty: WeightType, row: *const u8, i: usize) -> __m256 {
    match ty {
        WeightType::F32 => _mm256_loadu_ps(row.add(i * 4) as *const f32),
        WeightType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(row.add(i * 2) as *const __m128i)),
        _ => {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(row.add(i * 2) as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
        }
    }
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(ty: WeightType, row: &[u8], xs: &[&[f32]], out: &mut [f32]) {
    let n = row.len() / ty.block_bytes();
    if xs.iter().any(|x| x.len() < n) {
        return super::scalar::dot_f32(ty, row, xs, out);
    }
    macro_rules! run {
        ($n:literal) => {
            out[..$n].copy_from_slice(&float_rows::<$n>(ty, row, n, xs))
        };
    }
    match xs.len() {
        1 => run!(1),
        2 => run!(2),
        3 => run!(3),
        _ => run!(4),
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_rows<const N: usize>(
    ty: WeightType,
    row: &[u8],
    n: usize,
    xs: &[&[f32]],
) -> [f32; N] {
    let mut acc0 = [_mm256_setzero_ps(); N];
    let mut acc1 = [_mm256_setzero_ps(); N];
    let p = row.as_ptr();
    let mut i = 0;
    while i + 16 <= n {
        let w0 = load8(ty, p, i);
        let w1 = load8(ty, p, i + 8);
        for c in 0..N {
            let x = xs[c].as_ptr().add(i);
            acc0[c] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc0[c]);
            acc1[c] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(8)), acc1[c]);
        }
        i += 16;
    }
    let mut out: [f32; N] = std::array::from_fn(|c| hsum(_mm256_add_ps(acc0[c], acc1[c])));
    if i < n {
        let tail = &row[i * ty.block_bytes()..];
        for (c, o) in out.iter_mut().enumerate() {
            let mut t = [0.0f32];
            super::scalar::dot_f32(ty, tail, &[&xs[c][i..n]], &mut t);
            *o += t[0];
        }
    }
    out
}

/// # Safety
/// The CPU must support avx2 and fma.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            acc1,
        );
        i += 16;
    }
    if i + 8 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// # Safety
/// The CPU must support avx2 and fma.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let a = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(
            py.add(i),
            _mm256_fmadd_ps(a, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i))),
        );
        i += 8;
    }
    while i < n {
        y[i] += alpha * x[i];
        i += 1;
    }
}

/// The eight cached elements `data[i..i + 8]` as the f32 values they stand for (`i8` ones
/// times their block's scale; `i` is a multiple of 8, so the eight share a block).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8kv<T: KvElem>(data: *const T, scales: *const f32, i: usize) -> __m256 {
    let p = data.add(i);
    match T::TYPE {
        KvType::F32 => _mm256_loadu_ps(p as *const f32),
        KvType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
        KvType::Q8 => _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))),
            _mm256_broadcast_ss(&*scales.add(i / KV_Q8_BLOCK)),
        ),
    }
}

/// The horizontal sums of four vectors, in order.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn hsum4(a: [__m256; 4]) -> __m128 {
    let t0 = _mm256_hadd_ps(a[0], a[1]);
    let t1 = _mm256_hadd_ps(a[2], a[3]);
    let t = _mm256_hadd_ps(t0, t1);
    _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1))
}

/// See [`super::attend`].
///
/// # Safety
/// The CPU must support avx2, fma and f16c; `head_dim` must be a multiple of 8 and every
/// segment long enough (checked by the caller).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
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

/// Attention for `H` query heads sharing one key/value head: each cached row is loaded (and
/// converted) once for all of them.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
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
    let qp = q.as_ptr();
    let sp = scores.as_mut_ptr();
    // Scores, four positions at a time.
    let mut base = 0;
    for seg in segs {
        let (k, ks) = (seg.k.as_ptr(), seg.k_scale.as_ptr());
        let mut p = 0;
        while p + 4 <= seg.len {
            let mut acc = [[_mm256_setzero_ps(); 4]; H];
            let mut c = 0;
            while c < d {
                let kv: [__m256; 4] =
                    std::array::from_fn(|j| load8kv(k, ks, (p + j) * stride + offset + c));
                for (h, acc) in acc.iter_mut().enumerate() {
                    let qv = _mm256_loadu_ps(qp.add(h * d + c));
                    for j in 0..4 {
                        acc[j] = _mm256_fmadd_ps(qv, kv[j], acc[j]);
                    }
                }
                c += 8;
            }
            for (h, acc) in acc.iter().enumerate() {
                let s = _mm_mul_ps(hsum4(*acc), _mm_set1_ps(scale));
                _mm_storeu_ps(sp.add(h * total + base + p), s);
            }
            p += 4;
        }
        while p < seg.len {
            let mut acc = [_mm256_setzero_ps(); H];
            let mut c = 0;
            while c < d {
                let kv = load8kv(k, ks, p * stride + offset + c);
                for (h, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(h * d + c)), kv, *acc);
                }
                c += 8;
            }
            // The same reduction as a block of four, so a position's score does not depend on
            // where the segment boundaries fall (prefix reuse gives the bits of a full prefill).
            let z = _mm256_setzero_ps();
            for (h, acc) in acc.iter().enumerate() {
                let s = _mm_mul_ps(hsum4([*acc, z, z, z]), _mm_set1_ps(scale));
                *sp.add(h * total + base + p) = _mm_cvtss_f32(s);
            }
            p += 1;
        }
        base += seg.len;
    }
    softmax_rows(scores, total);
    // Weighted sums of the values.
    let mut c0 = 0;
    while c0 < d {
        if H <= 2 && c0 + 32 <= d {
            values::<T, H, 4>(segs, scores, total, stride, offset + c0, out, d, c0);
            c0 += 32;
        } else if c0 + 16 <= d {
            values::<T, H, 2>(segs, scores, total, stride, offset + c0, out, d, c0);
            c0 += 16;
        } else {
            values::<T, H, 1>(segs, scores, total, stride, offset + c0, out, d, c0);
            c0 += 8;
        }
    }
}

/// `out[h][c0..c0 + 8W] = Σ_p w[h][p] · V[p][col..col + 8W]`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
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
    let mut acc = [[_mm256_setzero_ps(); W]; H];
    let wp = w.as_ptr();
    let mut base = 0;
    for seg in segs {
        let (v, vs) = (seg.v.as_ptr(), seg.v_scale.as_ptr());
        for p in 0..seg.len {
            let row = p * stride + col;
            let vv: [__m256; W] = std::array::from_fn(|i| load8kv(v, vs, row + 8 * i));
            for (h, acc) in acc.iter_mut().enumerate() {
                let wb = _mm256_broadcast_ss(&*wp.add(h * total + base + p));
                for i in 0..W {
                    acc[i] = _mm256_fmadd_ps(wb, vv[i], acc[i]);
                }
            }
        }
        base += seg.len;
    }
    let op = out.as_mut_ptr();
    for (h, acc) in acc.iter().enumerate() {
        for (i, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(op.add(h * d + c0 + 8 * i), *a);
        }
    }
}

/// Each `row_len` row of `scores` replaced by its softmax weights (normalised).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn softmax_rows(scores: &mut [f32], row_len: usize) {
    for s in scores.chunks_exact_mut(row_len) {
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        add_scalar(s, -max);
        let inv = 1.0 / exp_in_place(s);
        scale_in_place(s, inv);
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_scalar(x: &mut [f32], a: f32) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(p.add(i), _mm256_add_ps(_mm256_loadu_ps(p.add(i)), av));
        i += 8;
    }
    for v in &mut x[i..] {
        *v += a;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn scale_in_place(x: &mut [f32], a: f32) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), av));
        i += 8;
    }
    for v in &mut x[i..] {
        *v *= a;
    }
}

/// `exp` of eight lanes: range reduction by ln 2, a degree-6 polynomial (Cephes' `expf`
/// coefficients) and the exponent added as integer bits. Inputs below -87.3 (where `expf`
/// leaves the normal range) give 0; above 88.3 saturate.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8(x: __m256) -> __m256 {
    let underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.336_55), _CMP_LT_OQ);
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.336_55)),
        _mm256_set1_ps(88.376_26),
    );
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    // 2^n, with n in [-126, 127] after the clamp above; split in two factors so n = 128 can't
    // overflow the exponent field.
    let ni = _mm256_cvtps_epi32(n);
    let half = _mm256_srai_epi32(ni, 1);
    let p1 = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(half, _mm256_set1_epi32(127)),
        23,
    ));
    let p2 = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(_mm256_sub_epi32(ni, half), _mm256_set1_epi32(127)),
        23,
    ));
    _mm256_andnot_ps(underflow, _mm256_mul_ps(_mm256_mul_ps(y, p1), p2))
}

/// See [`super::exp_in_place`].
///
/// # Safety
/// The CPU must support avx2 and fma.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_in_place(x: &mut [f32]) -> f32 {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let e = exp8(_mm256_loadu_ps(p.add(i)));
        _mm256_storeu_ps(p.add(i), e);
        acc = _mm256_add_ps(acc, e);
        i += 8;
    }
    if i < n {
        let mut tail = [0.0f32; 8];
        tail[..n - i].copy_from_slice(&x[i..]);
        let mut e = [0.0f32; 8];
        _mm256_storeu_ps(e.as_mut_ptr(), exp8(_mm256_loadu_ps(tail.as_ptr())));
        x[i..].copy_from_slice(&e[..n - i]);
        let mut s = hsum(acc);
        for v in &e[..n - i] {
            s += v;
        }
        return s;
    }
    hsum(acc)
}

/// See [`super::sum_exp`].
///
/// # Safety
/// The CPU must support avx2 and fma.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn sum_exp(x: &[f32], shift: f32, scale: f32) -> f64 {
    let n = x.len();
    let p = x.as_ptr();
    let (s, k) = (_mm256_set1_ps(shift), _mm256_set1_ps(scale));
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let mut i = 0;
    while i + 8 <= n {
        let e = exp8(_mm256_mul_ps(
            _mm256_sub_ps(_mm256_loadu_ps(p.add(i)), s),
            k,
        ));
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
        i += 8;
    }
    let mut lanes = [0.0f64; 4];
    _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(lo, hi));
    let mut sum: f64 = lanes.iter().sum();
    if i < n {
        let mut tail = [f32::NEG_INFINITY; 8];
        tail[..n - i].copy_from_slice(&x[i..]);
        let mut e = [0.0f32; 8];
        let t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), s), k);
        _mm256_storeu_ps(e.as_mut_ptr(), exp8(t));
        sum += e.iter().map(|&v| v as f64).sum::<f64>();
    }
    sum
}

/// See [`super::silu_mul`].
///
/// # Safety
/// The CPU must support avx2 and fma.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    let n = g.len().min(u.len()).min(out.len());
    let (gp, up, op) = (g.as_ptr(), u.as_ptr(), out.as_mut_ptr());
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i + 8 <= n {
        let gv = _mm256_loadu_ps(gp.add(i));
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        let s = _mm256_div_ps(gv, _mm256_add_ps(one, e));
        _mm256_storeu_ps(op.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(up.add(i))));
        i += 8;
    }
    super::scalar::silu_mul(&g[i..n], &u[i..n], &mut out[i..n]);
}

/// One block of 32 activations rounded as [`crate::quant::quantize_row_q16`] and
/// [`crate::quant::quantize_row_q8`] round them, to at most `max` in magnitude: the scale `d`,
/// the four vectors of integers (elements `8i..8i + 8` in vector `i`) and their sum. `None`
/// for a block holding a NaN or an infinity (the scalar code decides what those become).
/// The same operations as the scalar code on eight lanes (the block maximum is exact in any
/// order, the rounding adds and subtracts the same constant unfused), so the same results.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_block(xs: &[f32], max: f32) -> Option<(f32, [__m256i; 4], i32)> {
    const ROUND: f32 = 12_582_912.0;
    let sign = _mm256_set1_ps(-0.0);
    let p = xs.as_ptr();
    let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(8 * i)));
    let mut amax = _mm256_setzero_ps();
    let mut unordered = _mm256_setzero_ps();
    for &v in &v {
        amax = _mm256_max_ps(_mm256_andnot_ps(sign, v), amax);
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
    }
    let m = _mm_max_ps(
        _mm256_castps256_ps128(amax),
        _mm256_extractf128_ps::<1>(amax),
    );
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
    let amax = _mm_cvtss_f32(m);
    if _mm256_movemask_ps(unordered) != 0 || !amax.is_finite() {
        return None;
    }
    let d = amax / max;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let (idv, round, lim) = (
        _mm256_set1_ps(id),
        _mm256_set1_ps(ROUND),
        _mm256_set1_ps(max),
    );
    let mut sum = _mm256_setzero_si256();
    let q: [__m256i; 4] = std::array::from_fn(|i| {
        let r = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v[i], idv), round), round);
        let r = _mm256_min_ps(
            _mm256_max_ps(r, _mm256_sub_ps(_mm256_setzero_ps(), lim)),
            lim,
        );
        let q = _mm256_cvtps_epi32(r);
        sum = _mm256_add_epi32(sum, q);
        q
    });
    let s = _mm_add_epi32(
        _mm256_castsi256_si128(sum),
        _mm256_extracti128_si256::<1>(sum),
    );
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0x4E>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0xB1>(s));
    Some((d, q, _mm_cvtsi128_si32(s)))
}

/// See [`super::quantize_q16`]: [`crate::quant::quantize_row_q16`] on eight lanes, the same
/// integers and scales.
///
/// # Safety
/// The CPU must support avx2 and fma.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_q16(x: &[f32], out: &mut [BlockQ16]) {
    use crate::quant::{quantize_row_q16, Q16_MAX};
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let Some((d, q, sum)) = quantize_block(xs, Q16_MAX) else {
            quantize_row_q16(xs, std::slice::from_mut(block));
            continue;
        };
        // packs interleaves 128-bit halves: [q0 lo, q1 lo, q0 hi, q1 hi] -> restore the order.
        let lo = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(q[0], q[1]));
        let hi = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(q[2], q[3]));
        let qs = block.qs.as_mut_ptr() as *mut __m256i;
        _mm256_storeu_si256(qs, lo);
        _mm256_storeu_si256(qs.add(1), hi);
        block.d = d;
        block.s = d * sum as f32;
    }
}

/// See [`super::quantize_q8`]: [`crate::quant::quantize_row_q8`] on eight lanes, the same
/// integers and scales.
///
/// # Safety
/// The CPU must support avx2 and fma.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    use crate::quant::{quantize_row_q8, Q8_MAX};
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let Some((d, q, sum)) = quantize_block(xs, Q8_MAX) else {
            quantize_row_q8(xs, std::slice::from_mut(block));
            continue;
        };
        // Two saturating packs (exact: the values are within ±127) leave, in each 128-bit
        // half, four elements of each vector in turn; the permutation restores the order.
        let bytes = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(block.qs.as_mut_ptr() as *mut __m256i, bytes);
        block.d = d;
        block.sum = sum;
        block.s = d * sum as f32;
    }
}

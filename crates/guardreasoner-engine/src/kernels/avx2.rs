//! AVX2 + FMA + F16C kernels (x86-64). Callers must have checked the CPU features
//! ([`super::Isa::detect`]); every function here is `unsafe` for that reason only: all memory
//! accesses stay inside the slices passed in (lengths are checked on entry).

use crate::quant::{BlockQ16, WeightType, QK};
use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Two consecutive little-endian halfs at `p` as floats.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn two_halfs(p: *const u8) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1)))
}

/// Returns `false` (computing nothing) for formats without an AVX2 kernel; the caller then
/// runs the scalar one.
///
/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q16(ty: WeightType, row: &[u8], xs: &[&[BlockQ16]], out: &mut [f32]) -> bool {
    let blocks = row.len() / ty.block_bytes();
    if xs.iter().any(|x| x.len() < blocks) || out.len() < xs.len() {
        return false;
    }
    macro_rules! run {
        ($f:ident) => {
            match xs.len() {
                1 => out[..1].copy_from_slice(&$f::<1>(row, blocks, xs)),
                2 => out[..2].copy_from_slice(&$f::<2>(row, blocks, xs)),
                3 => out[..3].copy_from_slice(&$f::<3>(row, blocks, xs)),
                _ => out[..4].copy_from_slice(&$f::<4>(row, blocks, xs)),
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

/// Q4_1 (and Q4_0, whose `q - 8` is folded into the offset term): widen the 32 nibbles of a
/// block to 16-bit lanes once, then two `madd_epi16` per activation vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_generic<const N: usize, const Q4_0: bool>(
    row: &[u8],
    blocks: usize,
    xs: &[&[BlockQ16]],
) -> [f32; N] {
    let bb = if Q4_0 { 18 } else { 20 };
    let qs_off = if Q4_0 { 2 } else { 4 };
    let low = _mm_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut mins = [0.0f32; N];
    let base = row.as_ptr();
    let xp: [*const BlockQ16; N] = std::array::from_fn(|c| xs[c].as_ptr());
    for b in 0..blocks {
        let p = base.add(b * bb);
        let (d, m) = if Q4_0 {
            let (d, _) = two_halfs(p);
            (d, -8.0 * d)
        } else {
            two_halfs(p)
        };
        let raw = _mm_loadu_si128(p.add(qs_off) as *const __m128i);
        let w_lo = _mm256_cvtepu8_epi16(_mm_and_si128(raw, low));
        let w_hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), low));
        for c in 0..N {
            let xb = &*xp[c].add(b);
            let xq = xb.qs.as_ptr() as *const __m256i;
            let prod = _mm256_add_epi32(
                _mm256_madd_epi16(w_lo, _mm256_loadu_si256(xq)),
                _mm256_madd_epi16(w_hi, _mm256_loadu_si256(xq.add(1))),
            );
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), _mm256_set1_ps(d * xb.d), acc[c]);
            mins[c] += m * xb.s;
        }
    }
    std::array::from_fn(|c| hsum(acc[c]) + mins[c])
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

/// See [`super::attend`].
///
/// # Safety
/// The CPU must support avx2 and fma.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    offset: usize,
    len: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let d = q.len();
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for p in 0..len {
        let s = dot(q, &k[p * stride + offset..p * stride + offset + d]) * scale;
        max = max.max(s);
        scores.push(s);
    }
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    let inv = 1.0 / sum;
    for (p, &w) in scores.iter().enumerate() {
        axpy(
            w * inv,
            &v[p * stride + offset..p * stride + offset + d],
            out,
        );
    }
}

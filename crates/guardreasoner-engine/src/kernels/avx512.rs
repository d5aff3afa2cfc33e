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
//! through [`dot_q16_group`] instead (one lane per row; 2.2x the row-major rate here), so the
//! row kernels above serve what is left: matrices not in whole groups, and tests.
//!
//! Callers must have checked the CPU features ([`super::Isa::detect`]); the functions are
//! `unsafe` for that reason only: memory accesses stay inside the slices passed in.

use super::avx2::each_row;
use crate::quant::{BlockQ16, WeightType, QK};
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

/// See [`super::interleaved::dot_q16_group`]: sixteen interleaved Q8_0 rows against up to
/// [`super::MAX_COLS`] activation vectors. Returns `false` (computing nothing) for buffers of
/// the wrong size.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q16_group(group: &[u8], xs: &[&[BlockQ16]], out: &mut [f32]) -> bool {
    use super::interleaved::{GROUP, GROUP_BLOCK};
    let n = xs.len();
    let blocks = group.len() / GROUP_BLOCK;
    if n == 0
        || n > super::MAX_COLS
        || !group.len().is_multiple_of(GROUP_BLOCK)
        || out.len() < GROUP * n
        || xs.iter().any(|x| x.len() < blocks)
    {
        return false;
    }
    let mut lanes = [0.0f32; GROUP];
    macro_rules! run {
        ($n:literal) => {{
            let acc = q8_0_group::<$n>(group, blocks, xs);
            for (c, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(lanes.as_mut_ptr(), *a);
                for (j, v) in lanes.iter().enumerate() {
                    out[j * n + c] = *v;
                }
            }
        }};
    }
    match n {
        1 => run!(1),
        2 => run!(2),
        3 => run!(3),
        _ => run!(4),
    }
    true
}

/// One lane per row: for each block, sixteen `vpdpwssd` (one per element pair, the pair of
/// each activation vector broadcast) give the block's integer sums of all sixteen rows, scaled
/// by one multiply-add per vector.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0_group<const N: usize>(
    group: &[u8],
    blocks: usize,
    xs: &[&[BlockQ16]],
) -> [__m512; N] {
    use super::interleaved::GROUP_BLOCK;
    let mut acc = [_mm512_setzero_ps(); N];
    let base = group.as_ptr();
    let xp: [*const BlockQ16; N] = std::array::from_fn(|c| xs[c].as_ptr());
    for b in 0..blocks {
        let p = base.add(b * GROUP_BLOCK);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        let mut sums = [_mm512_setzero_si512(); N];
        for k in 0..QK / 2 {
            let w = _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.add(32 + 32 * k) as *const __m256i));
            for c in 0..N {
                let pair = ((*xp[c].add(b)).qs.as_ptr().add(2 * k) as *const i32).read_unaligned();
                sums[c] = _mm512_dpwssd_epi32(sums[c], w, _mm512_set1_epi32(pair));
            }
        }
        for c in 0..N {
            let scale = _mm512_mul_ps(d, _mm512_set1_ps((*xp[c].add(b)).d));
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[c]), scale, acc[c]);
        }
    }
    acc
}

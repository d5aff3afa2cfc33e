//! The kernels against the scalar ones and against direct computation, per instruction set.

use super::*;
use crate::quant::{dequantize_row, quantize_row, quantize_row_q16, quantize_row_q8, QK};

/// A small deterministic generator so the tests need no extra crate.
struct Lcg(u64);
impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32() * scale).collect()
    }
    /// `count` random activation vectors of `cols`, quantised to 8-bit blocks.
    fn q8_vectors(&mut self, cols: usize, count: usize) -> Vec<Vec<BlockQ8>> {
        (0..count)
            .map(|_| {
                let mut q = vec![BlockQ8::default(); cols / QK];
                quantize_row_q8(&self.vec(cols, 2.0), &mut q);
                q
            })
            .collect()
    }

    /// `count` random activation vectors of `cols`, quantised to 16-bit blocks.
    fn q16_vectors(&mut self, cols: usize, count: usize) -> Vec<Vec<BlockQ16>> {
        (0..count)
            .map(|_| {
                let mut q = vec![BlockQ16::default(); cols / QK];
                quantize_row_q16(&self.vec(cols, 2.0), &mut q);
                q
            })
            .collect()
    }
}

const TYPES: [WeightType; 8] = [
    WeightType::F32,
    WeightType::F16,
    WeightType::BF16,
    WeightType::Q8_0,
    WeightType::Q4_0,
    WeightType::Q4_1,
    WeightType::Q4K,
    WeightType::Q6K,
];

fn close(a: f32, b: f32, scale: f32) -> bool {
    (a - b).abs() <= 1e-5 * scale.max(1.0)
}

#[test]
fn simd_kernels_match_scalar_on_random_data() {
    let mut rng = Lcg(7);
    for &ty in &TYPES {
        for cols in [256usize, 512, 768] {
            let w = rng.vec(cols, 1.5);
            let row = quantize_row(ty, &w);
            let xs_f: Vec<Vec<f32>> = (0..MAX_COLS).map(|_| rng.vec(cols, 3.0)).collect();
            let xs_q: Vec<Vec<BlockQ16>> = xs_f
                .iter()
                .map(|x| {
                    let mut q = vec![BlockQ16::default(); cols / QK];
                    quantize_row_q16(x, &mut q);
                    q
                })
                .collect();
            for n in 1..=MAX_COLS {
                let mut reference = vec![0.0; n];
                let magnitude = cols as f32 * 4.5;
                if ty.uses_quantised_activations() {
                    let xs: Vec<&[BlockQ16]> = xs_q[..n].iter().map(|v| v.as_slice()).collect();
                    scalar::dot_q16(ty, &row, &xs, &mut reference);
                    for isa in Isa::all_available() {
                        let mut got = vec![0.0; n];
                        dot_q16(isa, ty, &row, &xs, &mut got);
                        for c in 0..n {
                            assert!(
                                close(got[c], reference[c], magnitude),
                                "{ty:?} {isa:?} cols={cols} n={n} c={c}: {} vs {}",
                                got[c],
                                reference[c]
                            );
                        }
                    }
                    // The quantised dot product approximates the float one.
                    let mut wf = vec![0.0; cols];
                    dequantize_row(ty, &row, &mut wf);
                    for c in 0..n {
                        let exact: f32 = wf.iter().zip(&xs_f[c]).map(|(a, b)| a * b).sum();
                        assert!(
                            (exact - reference[c]).abs() < 0.02 * magnitude.sqrt() * 3.0,
                            "{ty:?}: {exact} vs {}",
                            reference[c]
                        );
                    }
                } else {
                    let xs: Vec<&[f32]> = xs_f[..n].iter().map(|v| v.as_slice()).collect();
                    scalar::dot_f32(ty, &row, &xs, &mut reference);
                    let mut wf = vec![0.0; cols];
                    dequantize_row(ty, &row, &mut wf);
                    for isa in Isa::all_available() {
                        let mut got = vec![0.0; n];
                        dot_f32(isa, ty, &row, &xs, &mut got);
                        for c in 0..n {
                            let exact: f32 = wf.iter().zip(&xs_f[c]).map(|(a, b)| a * b).sum();
                            assert!(
                                close(got[c], exact, magnitude),
                                "{ty:?} {isa:?}: {} vs {exact}",
                                got[c]
                            );
                            assert!(close(reference[c], exact, magnitude));
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn simd_activation_quantisation_is_the_scalar_one_bit_for_bit() {
    let mut rng = Lcg(29);
    let mut x = rng.vec(QK * 64, 4.0);
    // Exact halves (ties), zero blocks, tiny and huge magnitudes, and non-finite values.
    x[..QK].fill(0.0);
    for (i, v) in x[QK..2 * QK].iter_mut().enumerate() {
        *v = (i as f32 - 16.0) * 0.5;
    }
    x[2 * QK + 3] = 1e-30;
    x[3 * QK + 5] = 3e30;
    x[4 * QK + 7] = f32::NAN;
    x[5 * QK + 1] = f32::INFINITY;
    x[6 * QK + 30] = -f32::INFINITY;
    x[7 * QK] = -0.0;
    let mut want = vec![BlockQ16::default(); 64];
    quantize_row_q16(&x, &mut want);
    let mut want8 = vec![BlockQ8::default(); 64];
    quantize_row_q8(&x, &mut want8);
    for isa in Isa::all_available() {
        let mut got = vec![BlockQ16::default(); 64];
        quantize_q16(isa, &x, &mut got);
        for (b, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.qs, w.qs, "{isa:?} block {b}");
            assert_eq!(g.d.to_bits(), w.d.to_bits(), "{isa:?} block {b}");
            assert_eq!(g.s.to_bits(), w.s.to_bits(), "{isa:?} block {b}");
        }
        let mut got = vec![BlockQ8::default(); 64];
        quantize_q8(isa, &x, &mut got);
        for (b, (g, w)) in got.iter().zip(&want8).enumerate() {
            assert_eq!(g.qs, w.qs, "{isa:?} 8-bit block {b}");
            assert_eq!(g.sum, w.sum, "{isa:?} 8-bit block {b}");
            assert_eq!(g.d.to_bits(), w.d.to_bits(), "{isa:?} 8-bit block {b}");
            assert_eq!(g.s.to_bits(), w.s.to_bits(), "{isa:?} 8-bit block {b}");
        }
    }
}

#[test]
fn row_block_kernels_match_scalar_rows() {
    let mut rng = Lcg(13);
    let cols = 576;
    for ty in [
        WeightType::Q4_1,
        WeightType::Q4_0,
        WeightType::Q8_0,
        WeightType::Q6K,
    ] {
        let cols = if ty == WeightType::Q6K { 512 } else { cols };
        let rows: Vec<u8> = (0..7)
            .flat_map(|_| quantize_row(ty, &rng.vec(cols, 1.0)))
            .collect();
        let row_bytes = rows.len() / 7;
        let xs_q = rng.q16_vectors(cols, MAX_COLS);
        for n in 1..=MAX_COLS {
            let xs: Vec<&[BlockQ16]> = xs_q[..n].iter().map(|v| v.as_slice()).collect();
            let mut want = vec![0.0; 7 * n];
            for (r, o) in rows.chunks_exact(row_bytes).zip(want.chunks_exact_mut(n)) {
                scalar::dot_q16(ty, r, &xs, o);
            }
            for isa in Isa::all_available() {
                let mut got = vec![0.0; 7 * n];
                dot_q16_rows(isa, ty, &rows, row_bytes, &xs, &mut got);
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        close(*a, *b, cols as f32 * 3.0),
                        "{ty:?} {isa:?} n={n}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn interleaved_groups_match_their_rows() {
    use crate::quant::Activations;
    use interleaved::{interleave, relaid, row_of, GROUP};
    for ty in [WeightType::Q8_0, WeightType::Q4_1] {
        let mut rng = Lcg(17);
        let cols = 576;
        let rows: Vec<u8> = (0..2 * GROUP)
            .flat_map(|_| quantize_row(ty, &rng.vec(cols, 1.0)))
            .collect();
        let row_bytes = rows.len() / (2 * GROUP);
        let xs16 = rng.q16_vectors(cols, GROUP_COLS);
        let xs8 = rng.q8_vectors(cols, GROUP_COLS);
        for acts in [Activations::Q16, Activations::Q8] {
            assert!(
                interleave(ty, acts, &rows[..row_bytes * 3], row_bytes).is_none(),
                "whole groups only"
            );
            let packed = interleave(ty, acts, &rows, row_bytes).unwrap();
            assert_eq!(packed.len(), rows.len());
            let mut back = vec![0u8; row_bytes];
            for (r, want) in rows.chunks_exact(row_bytes).enumerate() {
                let group = &packed[r / GROUP * GROUP * row_bytes..][..GROUP * row_bytes];
                row_of(ty, acts, group, r % GROUP, &mut back);
                assert_eq!(back, want, "{ty:?} {acts:?} row {r} unpacks to itself");
            }
            let other = match acts {
                Activations::Q16 => Activations::Q8,
                Activations::Q8 => Activations::Q16,
            };
            assert_eq!(
                relaid(
                    ty,
                    other,
                    acts,
                    &interleave(ty, other, &rows, row_bytes).unwrap(),
                    row_bytes
                ),
                packed,
                "{ty:?}: relaid from {other:?}"
            );
            for n in 1..=GROUP_COLS {
                for g in 0..2 {
                    let group = &packed[g * GROUP * row_bytes..(g + 1) * GROUP * row_bytes];
                    let plain = &rows[g * GROUP * row_bytes..(g + 1) * GROUP * row_bytes];
                    let (mut reference, mut got) = (vec![0.0; GROUP * n], vec![0.0; GROUP * n]);
                    // The stored weights against the quantised activations, in f64.
                    let activations: Vec<Vec<f64>> = match acts {
                        Activations::Q16 => {
                            let xs: Vec<&[BlockQ16]> =
                                xs16[..n].iter().map(|v| v.as_slice()).collect();
                            interleaved::dot_q16_group(ty, group, &xs, &mut reference);
                            xs.iter()
                                .map(|x| {
                                    x.iter()
                                        .flat_map(|b| b.qs.map(|q| q as f64 * b.d as f64))
                                        .collect()
                                })
                                .collect()
                        }
                        Activations::Q8 => {
                            let xs: Vec<&[BlockQ8]> =
                                xs8[..n].iter().map(|v| v.as_slice()).collect();
                            interleaved::dot_q8_group(ty, group, &xs, &mut reference);
                            xs.iter()
                                .map(|x| {
                                    x.iter()
                                        .flat_map(|b| b.qs.map(|q| q as f64 * b.d as f64))
                                        .collect()
                                })
                                .collect()
                        }
                    };
                    let mut w = vec![0.0f32; cols];
                    for (j, r) in plain.chunks_exact(row_bytes).enumerate() {
                        dequantize_row(ty, r, &mut w);
                        for (c, x) in activations.iter().enumerate() {
                            let want: f64 = x.iter().zip(&w).map(|(a, &b)| a * b as f64).sum();
                            let a = reference[c * GROUP + j];
                            assert!(
                                (a as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                "{ty:?} {acts:?} n={n}: {a} vs {want}"
                            );
                        }
                    }
                    for isa in Isa::all_available() {
                        match acts {
                            Activations::Q16 => {
                                let xs: Vec<&[BlockQ16]> =
                                    xs16[..n].iter().map(|v| v.as_slice()).collect();
                                dot_q16_group(isa, ty, group, &xs, &mut got);
                            }
                            Activations::Q8 => {
                                let xs: Vec<&[BlockQ8]> =
                                    xs8[..n].iter().map(|v| v.as_slice()).collect();
                                dot_q8_group(isa, ty, group, &xs, &mut got);
                            }
                        }
                        // The same integer sums, scaled in the same order: the same floats.
                        assert_eq!(got, reference, "{ty:?} {acts:?} {isa:?} n={n}");
                    }
                }
            }
        }
    }
}

/// Attention of a GQA group over cache segments of `lens` positions (a shared prefix and a
/// sequence's own positions, say), in each cache format, against a direct computation on
/// the stored values. The segments are cut from one run of positions, so the same seed and
/// total give the same positions however they are split. Returns each kernel's output.
fn check_attention<T: KvElem>(
    heads: usize,
    d: usize,
    lens: &[usize],
    q_mag: f32,
    seed: u64,
    layout: KvLayout,
) -> Vec<(Isa, Vec<f32>)> {
    let mut rng = Lcg(seed);
    let (groups, g) = (3, 1);
    let stride = groups * d;
    let offset = g * d;
    let total: usize = lens.iter().sum();
    let q = rng.vec(heads * d, q_mag);
    // Stored elements and block scales (empty for the float formats).
    let mk = |rng: &mut Lcg| -> (Vec<T>, Vec<f32>) {
        let x = rng.vec(stride * total, 1.0);
        let mut out = vec![T::default(); x.len()];
        let mut scales = vec![0.0; x.len().div_ceil(KV_Q8_BLOCK)];
        T::store(&x, &mut out, &mut scales);
        if T::TYPE != KvType::Q8 {
            scales.clear();
        }
        (out, scales)
    };
    let (k, v) = (mk(&mut rng), mk(&mut rng));
    // Each segment's keys and values again in `layout` (positions counted from the
    // segment's start, as each cache buffer counts its own), element by element from rows.
    let relaid =
        |(rows, row_scales): &(Vec<T>, Vec<f32>), start: usize, len: usize, half: KvHalf| {
            let n = layout.elements(len, stride);
            let mut data = vec![T::default(); n];
            let mut scales = vec![
                0.0;
                if row_scales.is_empty() {
                    0
                } else {
                    n / KV_Q8_BLOCK
                }
            ];
            for p in 0..len {
                for e in 0..stride {
                    let i = (start + p) * stride + e;
                    data[layout.index(half, p, e, stride)] = rows[i];
                    if !scales.is_empty() {
                        scales[layout.scale_index(p, e, stride)] = row_scales[i / KV_Q8_BLOCK];
                    }
                }
            }
            (data, scales)
        };
    let mut start = 0;
    let mut parts = Vec::new();
    for &len in lens {
        parts.push((
            relaid(&k, start, len, KvHalf::Keys),
            relaid(&v, start, len, KvHalf::Values),
        ));
        start += len;
    }
    let segs: Vec<KvSeg<'_, T>> = lens
        .iter()
        .zip(&parts)
        .map(|(&len, ((kd, ks), (vd, vs)))| KvSeg {
            k: kd,
            v: vd,
            k_scale: ks,
            v_scale: vs,
            len,
            layout,
        })
        .collect();
    let scale = 1.0 / (d as f32).sqrt();
    // Direct: every position's key/value in order, as the values they stand for.
    let at = |(buf, scales): &(Vec<T>, Vec<f32>), p: usize, c: usize| -> f32 {
        let i = p * stride + offset + c;
        buf[i].to_f32() * scales.get(i / KV_Q8_BLOCK).copied().unwrap_or(1.0)
    };
    let mut want = vec![0.0f32; heads * d];
    for h in 0..heads {
        let qh = &q[h * d..(h + 1) * d];
        let s: Vec<f64> = (0..total)
            .map(|p| {
                let dot: f64 = (0..d).map(|c| (at(&k, p, c) * qh[c]) as f64).sum();
                dot * scale as f64
            })
            .collect();
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (p, w) in e.iter().enumerate() {
            for c in 0..d {
                want[h * d + c] += (w / sum * at(&v, p, c) as f64) as f32;
            }
        }
    }
    let mut reference = vec![0.0; heads * d];
    scalar::attend(
        &q,
        d,
        &segs,
        stride,
        offset,
        scale,
        &mut Vec::new(),
        &mut reference,
    );
    for (a, b) in reference.iter().zip(&want) {
        assert!((a - b).abs() < 1e-4, "scalar vs direct: {a} vs {b}");
    }
    let mut outputs = Vec::new();
    for isa in Isa::all_available() {
        let mut got = vec![0.0; heads * d];
        attend(
            isa,
            &q,
            d,
            &segs,
            stride,
            offset,
            scale,
            &mut Vec::new(),
            &mut got,
        );
        for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
            // A blocked cache meets queries and attention weights rounded to 16 bits (a
            // relative step of 2^-15 of each block's largest element).
            let tol = match (layout, isa) {
                (KvLayout::Blocked, Isa::Avx512) => 1e-5 + 2e-5 * q_mag,
                _ => 1e-5,
            };
            assert!(
                (a - b).abs() <= tol,
                "{isa:?} heads={heads} d={d} {lens:?} [{i}]: {a} vs {b} (tolerance {tol})"
            );
        }
        outputs.push((isa, got));
    }
    outputs
}

#[test]
fn attention_matches_scalar_and_direct_computation() {
    for heads in 1..=5 {
        for (d, lens) in [
            (64, &[0, 37][..]),
            (64, &[21, 19]),
            (16, &[8, 1]),
            (128, &[3, 0]),
            (48, &[7, 9]),
            (32, &[2, 3]),
            (12, &[5, 6]),
            // Around the 8-bit kernel's pairs and flushes (every 256 positions).
            (64, &[0, 0]),
            (64, &[1]),
            (64, &[0, 1]),
            (64, &[129, 0]),
            (64, &[137, 200]),
            (64, &[3, 5, 0, 7, 301]),
            (64, &[513, 2]),
            (96, &[150, 151]),
            (32, &[257, 3]),
            (128, &[5, 260]),
        ] {
            for q_mag in [1.5, 20.0] {
                let seed = heads as u64 + lens.len() as u64;
                let rows = KvLayout::Rows;
                check_attention::<f32>(heads, d, lens, q_mag, 5 + seed, rows);
                check_attention::<half::f16>(heads, d, lens, q_mag, 9 + seed, rows);
                if d.is_multiple_of(KV_Q8_BLOCK) {
                    for layout in [KvLayout::Rows, KvLayout::Blocked] {
                        check_attention::<i8>(heads, d, lens, q_mag, 13 + seed, layout);
                    }
                }
            }
        }
    }
}

/// The engine shares an instruction prefix's cache as a segment of its own, so where the
/// segments split must not change a bit of the output, on any kernel.
#[test]
fn attention_does_not_depend_on_segment_boundaries() {
    fn check<T: KvElem>(heads: usize, d: usize, total: usize, layout: KvLayout) {
        let splits: [&[usize]; 9] = [
            &[total],
            &[0, total],
            &[total, 0],
            &[1, total - 1],
            &[total / 2, total - total / 2],
            &[7, 200, total - 207],
            &[255, total - 255],
            &[256, total - 256],
            &[3, 0, 128, 1, total - 132],
        ];
        let want = check_attention::<T>(heads, d, splits[0], 3.0, 31, layout);
        for lens in &splits[1..] {
            let got = check_attention::<T>(heads, d, lens, 3.0, 31, layout);
            for ((isa, a), (_, b)) in got.iter().zip(&want) {
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{:?} {layout:?} {isa:?} heads={heads} d={d} {lens:?}",
                    T::TYPE
                );
            }
        }
    }
    for (heads, d, total) in [(3, 64, 301), (2, 96, 300), (4, 64, 520), (1, 32, 261)] {
        check::<i8>(heads, d, total, KvLayout::Rows);
        check::<i8>(heads, d, total, KvLayout::Blocked);
        check::<f32>(heads, d, total, KvLayout::Rows);
        check::<half::f16>(heads, d, total, KvLayout::Rows);
    }
}

#[test]
fn eight_bit_blocks_round_to_within_half_a_step() {
    let mut rng = Lcg(21);
    let x = rng.vec(KV_Q8_BLOCK, 3.0);
    let mut q = [0i8; KV_Q8_BLOCK];
    let d = quantize_block_q8(&x, &mut q);
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_eq!(d, amax / 127.0);
    assert!(q.iter().any(|&v| v.unsigned_abs() == 127));
    for (&v, &q) in x.iter().zip(&q) {
        assert!(
            (v - q as f32 * d).abs() <= d * 0.5 + 1e-6,
            "{v} vs {q} x {d}"
        );
    }
    assert_eq!(quantize_block_q8(&[0.0; KV_Q8_BLOCK], &mut q), 0.0);
    assert_eq!(q, [0; KV_Q8_BLOCK]);
    // A broken model's NaN must not be laundered into finite keys.
    let mut bad = x.clone();
    bad[5] = f32::NAN;
    assert!(quantize_block_q8(&bad, &mut q).is_nan());
}

#[test]
fn exp_and_silu_match_scalar() {
    let mut rng = Lcg(3);
    let x: Vec<f32> = rng
        .vec(203, 30.0)
        .into_iter()
        .chain([-100.0, 0.0, 80.0, -87.0])
        .collect();
    let u = rng.vec(x.len(), 2.0);
    let mut want = x.clone();
    let want_sum = scalar::exp_in_place(&mut want);
    let mut want_silu = vec![0.0; x.len()];
    scalar::silu_mul(&x, &u, &mut want_silu);
    for isa in Isa::all_available() {
        let mut got = x.clone();
        let sum = exp_in_place(isa, &mut got);
        assert!(
            (sum - want_sum).abs() <= 1e-6 * want_sum,
            "{isa:?}: {sum} vs {want_sum}"
        );
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 4e-7 * b.abs() + f32::MIN_POSITIVE,
                "{isa:?}: {a} vs {b}"
            );
        }
        // Shifted by a maximum, as a softmax does (no term above 1).
        for (shift, scale) in [(80.0, 1.0), (80.0, 1.0 / 0.7), (30.0, 1.0)] {
            let xs = &x[..x.len() - 2]; // without 80 where the shift is 30
            let xs = if shift == 80.0 { &x[..] } else { xs };
            let got = sum_exp(isa, xs, shift, scale);
            let want = scalar::sum_exp(xs, shift, scale);
            assert!(
                (got - want).abs() <= 1e-6 * want,
                "{isa:?}: sum_exp {got} vs {want}"
            );
        }
        let mut silu = vec![0.0; x.len()];
        silu_mul(isa, &x, &u, &mut silu);
        for (a, b) in silu.iter().zip(&want_silu) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{isa:?}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn vector_helpers_match_scalar() {
    let mut rng = Lcg(11);
    for len in [1usize, 7, 16, 64, 100] {
        let a = rng.vec(len, 2.0);
        let b = rng.vec(len, 2.0);
        let expected = scalar::dot(&a, &b);
        for isa in Isa::all_available() {
            assert!(close(dot(isa, &a, &b), expected, len as f32));
            let mut y1 = b.clone();
            let mut y2 = b.clone();
            axpy(isa, 0.3, &a, &mut y1);
            scalar::axpy(0.3, &a, &mut y2);
            for (p, q) in y1.iter().zip(&y2) {
                assert!(close(*p, *q, 1.0));
            }
        }
    }
}

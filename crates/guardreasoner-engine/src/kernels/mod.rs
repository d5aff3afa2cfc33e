//! Dot-product kernels, chosen at run time from the CPU's features.
//!
//! Every kernel exists as portable scalar code ([`scalar`]); x86-64 machines with AVX2+FMA+F16C
//! get hand-written versions ([`avx2`]) that compute the same sums (integer parts exactly, float
//! parts up to summation order). The tests at the bottom compare each SIMD kernel with the
//! scalar one on random data. Set `GUARDREASONER_KERNELS=scalar` to force the portable path.
//!
//! A weight row is dotted with up to [`MAX_COLS`] activation vectors at once, so the unpacking
//! of each weight block is shared between the sequences of a batch (or tokens of a prompt).

use crate::quant::{BlockQ16, WeightType};
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod scalar;

/// Most activation vectors one kernel call handles.
pub const MAX_COLS: usize = 4;

/// The instruction set the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
}

impl Isa {
    /// The best instruction set this CPU supports (cached), unless `GUARDREASONER_KERNELS=scalar`.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var("GUARDREASONER_KERNELS")
                .is_ok_and(|v| v.eq_ignore_ascii_case("scalar"))
            {
                return Isa::Scalar;
            }
            Isa::best_available()
        })
    }

    fn best_available() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Isa::Avx2;
        }
        Isa::Scalar
    }

    /// Every instruction set usable on this CPU (for tests comparing them).
    pub fn all_available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        if Isa::best_available() != Isa::Scalar {
            v.push(Isa::best_available());
        }
        v
    }

    /// A short name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
        }
    }
}

/// `out[c] = row · xs[c]` for a quantised weight row of type `ty` against 16-bit activation
/// blocks (`xs.len()` in `1..=MAX_COLS`, every `xs[c]` as long as the row in blocks of 32).
pub fn dot_q16(isa: Isa, ty: WeightType, row: &[u8], xs: &[&[BlockQ16]], out: &mut [f32]) {
    debug_assert!(!xs.is_empty() && xs.len() <= MAX_COLS && out.len() == xs.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: `Isa::Avx2` is only produced after detecting avx2, fma and f16c.
            if unsafe { avx2::dot_q16(ty, row, xs, out) } {
                return;
            }
            scalar::dot_q16(ty, row, xs, out)
        }
        _ => scalar::dot_q16(ty, row, xs, out),
    }
}

/// `out[c] = row · xs[c]` for a float weight row (F32, F16 or BF16) against f32 activations.
pub fn dot_f32(isa: Isa, ty: WeightType, row: &[u8], xs: &[&[f32]], out: &mut [f32]) {
    debug_assert!(!xs.is_empty() && xs.len() <= MAX_COLS && out.len() == xs.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only produced after detecting avx2, fma and f16c.
        Isa::Avx2 => unsafe { avx2::dot_f32(ty, row, xs, out) },
        _ => scalar::dot_f32(ty, row, xs, out),
    }
}

/// `a · b` over f32 slices of equal length.
#[inline]
pub fn dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only produced after detecting avx2 and fma.
        Isa::Avx2 => unsafe { avx2::dot(a, b) },
        _ => scalar::dot(a, b),
    }
}

/// `y += alpha * x`.
#[inline]
pub fn axpy(isa: Isa, alpha: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only produced after detecting avx2 and fma.
        Isa::Avx2 => unsafe { avx2::axpy(alpha, x, y) },
        _ => scalar::axpy(alpha, x, y),
    }
}

/// Causal attention of one query head `q` over the first `len` cached positions: `out =
/// softmax(q · K[p] * scale) · V[p]`, where position `p`'s key for this head is
/// `k[p * stride + offset..][..q.len()]` (likewise `v`). `scores` is scratch.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn attend(
    isa: Isa,
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
    assert!(
        len == 0 || (len - 1) * stride + offset + q.len() <= k.len().min(v.len()),
        "attend: cache too short"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only produced after detecting avx2 and fma.
        Isa::Avx2 => unsafe { avx2::attend(q, k, v, stride, offset, len, scale, scores, out) },
        _ => scalar::attend(q, k, v, stride, offset, len, scale, scores, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row, quantize_row_q16, QK};

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
                    if ty.uses_q16_activations() {
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
    fn attention_matches_scalar() {
        let mut rng = Lcg(5);
        let (d, stride, len) = (64, 192, 37);
        let q = rng.vec(d, 1.0);
        let k = rng.vec(stride * len, 1.0);
        let v = rng.vec(stride * len, 1.0);
        let mut want = vec![0.0; d];
        scalar::attend(
            &q,
            &k,
            &v,
            stride,
            64,
            len,
            0.125,
            &mut Vec::new(),
            &mut want,
        );
        for isa in Isa::all_available() {
            let mut got = vec![0.0; d];
            attend(
                isa,
                &q,
                &k,
                &v,
                stride,
                64,
                len,
                0.125,
                &mut Vec::new(),
                &mut got,
            );
            for (a, b) in got.iter().zip(&want) {
                assert!(close(*a, *b, 1.0), "{isa:?}: {a} vs {b}");
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
}

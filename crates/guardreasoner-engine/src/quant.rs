//! Weight storage formats (ggml block layouts and plain floats), their reference
//! dequantisation, and the 16-bit activation blocks the quantised kernels consume.
//!
//! Layouts follow ggml: a row of `cols` weights is `cols / block_elems` blocks stored back to
//! back, each block `block_bytes` long, scales in IEEE half precision.

use half::{bf16, f16};

/// Elements per block of the 32-wide formats (Q4_0, Q4_1, Q8_0) and of activation blocks.
pub const QK: usize = 32;
/// Elements per super-block of the K-quant formats (Q4_K, Q6_K).
pub const QK_K: usize = 256;

/// How a weight matrix is stored in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q4K,
    Q6K,
}

impl WeightType {
    /// Elements in one block (1 for plain floats).
    pub fn block_elems(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 | WeightType::BF16 => 1,
            WeightType::Q8_0 | WeightType::Q4_0 | WeightType::Q4_1 => QK,
            WeightType::Q4K | WeightType::Q6K => QK_K,
        }
    }

    /// Bytes in one block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 | WeightType::BF16 => 2,
            WeightType::Q8_0 => 34,
            WeightType::Q4_0 => 18,
            WeightType::Q4_1 => 20,
            WeightType::Q4K => 144,
            WeightType::Q6K => 210,
        }
    }

    /// Bytes of one row of `cols` elements, or `None` when `cols` is not a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        cols.is_multiple_of(self.block_elems())
            .then(|| cols / self.block_elems() * self.block_bytes())
    }

    /// Whether the kernels for this type read quantised activation blocks (16-bit for the
    /// row-major kernels, 8-bit for the interleaved one; else plain f32).
    pub fn uses_quantised_activations(self) -> bool {
        !matches!(self, WeightType::F32 | WeightType::F16 | WeightType::BF16)
    }

    /// The ggml name of the format.
    pub fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "F32",
            WeightType::F16 => "F16",
            WeightType::BF16 => "BF16",
            WeightType::Q8_0 => "Q8_0",
            WeightType::Q4_0 => "Q4_0",
            WeightType::Q4_1 => "Q4_1",
            WeightType::Q4K => "Q4_K",
            WeightType::Q6K => "Q6_K",
        }
    }

    /// The storage format of a GGUF tensor type, if the engine can run it.
    pub fn from_ggml(ty: guardreasoner_gguf::GgmlType) -> Option<WeightType> {
        use guardreasoner_gguf::GgmlType as G;
        Some(match ty {
            G::F32 => WeightType::F32,
            G::F16 => WeightType::F16,
            G::BF16 => WeightType::BF16,
            G::Q8_0 => WeightType::Q8_0,
            G::Q4_0 => WeightType::Q4_0,
            G::Q4_1 => WeightType::Q4_1,
            G::Q4K => WeightType::Q4K,
            G::Q6K => WeightType::Q6K,
            _ => return None,
        })
    }
}

/// How the quantised matrix kernels round their activations (the interleaved AVX-512 VNNI
/// kernels take either; the row-major kernels always take 16 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// [`BlockQ16`]: logits within ~0.01 of the exact computation on the same weights.
    Q16,
    /// [`BlockQ8`]: twice the multiply-adds per instruction; logits move up to ~0.4.
    Q8,
}

/// One block of 32 activations quantised to 16 bits: `x[i] ≈ d * qs[i]`, with `s = d * Σ qs`
/// kept so formats with an offset (Q4_1, Q4_0, Q4_K minima) need no second pass.
///
/// The row-major kernels' activations (AVX2, portable, and on AVX-512 the formats and
/// matrices that are not interleaved): 16 rather than llama.cpp's 8 bits, so their rounding
/// stays far below the 4-bit weights' at about 40% more instructions per multiply-add
/// (`madd_epi16` instead of `maddubs_epi16`). The interleaved AVX-512 VNNI kernel takes
/// [`BlockQ8`] instead: there 8 bits double the multiply-adds per instruction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ16 {
    pub d: f32,
    pub s: f32,
    pub qs: [i16; QK],
}

/// Largest quantised activation magnitude.
pub const Q16_MAX: f32 = 32767.0;

/// Quantise `x` (a multiple of 32 long) into `out` (`x.len() / 32` blocks).
///
/// Rounds half to even (what the SIMD rounding instruction does), so every kernel sees the
/// same integers.
pub fn quantize_row_q16(x: &[f32], out: &mut [BlockQ16]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    // Adding and subtracting 1.5 * 2^23 rounds half to even for |v| < 2^22, without a libm call.
    const ROUND: f32 = 12_582_912.0;
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / Q16_MAX;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in block.qs.iter_mut().zip(xs) {
            let r = ((v * id + ROUND) - ROUND).clamp(-Q16_MAX, Q16_MAX);
            *q = r as i16;
            sum += *q as i32;
        }
        block.d = d;
        block.s = d * sum as f32;
    }
}

/// One block of 32 activations quantised to 8 bits, as the interleaved AVX-512 VNNI kernel
/// takes them (`vpdpbusd`: four 8-bit products per lane, twice `vpdpwssd`'s): `x[i] ≈ d *
/// qs[i]`, with `sum = Σ qs` (Q8_0 weights are stored offset by 128, so their dot carries
/// `128 · sum`) and `s = d * sum` (Q4_1's minima).
///
/// The activations then round as llama.cpp's do (its `q8_0`/`q8_1` activation blocks). That
/// moves logits by more than [`BlockQ16`] does (greedy texts part from the f32 reference's at
/// near-ties within a few tokens), so it was decided by the shipped guard's development F1,
/// which did not fall (BENCHMARKS.md, session 10).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub sum: i32,
    pub qs: [i8; QK],
}

/// Largest 8-bit activation magnitude.
pub const Q8_MAX: f32 = 127.0;

/// Quantise `x` (a multiple of 32 long) into `out` (`x.len() / 32` blocks), rounding half to
/// even as [`quantize_row_q16`] does.
pub fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    const ROUND: f32 = 12_582_912.0;
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / Q8_MAX;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in block.qs.iter_mut().zip(xs) {
            let r = ((v * id + ROUND) - ROUND).clamp(-Q8_MAX, Q8_MAX);
            *q = r as i8;
            sum += *q as i32;
        }
        block.d = d;
        block.sum = sum;
        block.s = d * sum as f32;
    }
}

#[inline]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K super-block (ggml's packing).
#[inline]
pub(crate) fn q4k_scale_min(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Unpack one Q6_K super-block into its 256 signed 6-bit values (in element order) and
/// return the 16 sub-block scales.
#[inline]
pub(crate) fn q6k_unpack(block: &[u8], q: &mut [i8; QK_K]) -> [i8; 16] {
    let (ql, rest) = block.split_at(128);
    let (qh, rest) = rest.split_at(64);
    let mut scales = [0i8; 16];
    for (s, &b) in scales.iter_mut().zip(&rest[..16]) {
        *s = b as i8;
    }
    for half in 0..2 {
        let ql = &ql[half * 64..];
        let qh = &qh[half * 32..];
        let q = &mut q[half * 128..];
        for l in 0..32 {
            q[l] = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            q[l + 32] = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            q[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            q[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    scales
}

/// Dequantise one row stored as `ty` (`bytes` is exactly one row) into `out`.
pub fn dequantize_row(ty: WeightType, bytes: &[u8], out: &mut [f32]) {
    let bb = ty.block_bytes();
    debug_assert_eq!(bytes.len() / bb * ty.block_elems(), out.len());
    match ty {
        WeightType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        WeightType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        WeightType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        WeightType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(bb)) {
                let d = f16_at(b, 0);
                for (v, &q) in o.iter_mut().zip(&b[2..34]) {
                    *v = d * (q as i8) as f32;
                }
            }
        }
        WeightType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(bb)) {
                let d = f16_at(b, 0);
                for (j, &q) in b[2..18].iter().enumerate() {
                    o[j] = d * ((q & 0x0F) as i32 - 8) as f32;
                    o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
        }
        WeightType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(bb)) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                for (j, &q) in b[4..20].iter().enumerate() {
                    o[j] = d * (q & 0x0F) as f32 + m;
                    o[j + 16] = d * (q >> 4) as f32 + m;
                }
            }
        }
        WeightType::Q4K => {
            for (o, b) in out.chunks_exact_mut(QK_K).zip(bytes.chunks_exact(bb)) {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let scales = &b[4..16];
                let qs = &b[16..144];
                for chunk in 0..4 {
                    let (sc1, m1) = q4k_scale_min(2 * chunk, scales);
                    let (sc2, m2) = q4k_scale_min(2 * chunk + 1, scales);
                    let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
                    let q = &qs[chunk * 32..chunk * 32 + 32];
                    let o = &mut o[chunk * 64..chunk * 64 + 64];
                    for l in 0..32 {
                        o[l] = d1 * (q[l] & 0x0F) as f32 - min1;
                        o[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
                    }
                }
            }
        }
        WeightType::Q6K => {
            let mut q = [0i8; QK_K];
            for (o, b) in out.chunks_exact_mut(QK_K).zip(bytes.chunks_exact(bb)) {
                let scales = q6k_unpack(b, &mut q);
                let d = f16_at(b, 208);
                for (i, v) in o.iter_mut().enumerate() {
                    *v = d * scales[i / 16] as f32 * q[i] as f32;
                }
            }
        }
    }
}

/// Quantise a row to `ty` (round to nearest, ggml's simple reference schemes). Used to build
/// test matrices and models; not tuned for accuracy.
pub fn quantize_row(ty: WeightType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ty.row_bytes(x.len()).unwrap_or(0));
    let push_f16 = |out: &mut Vec<u8>, v: f32| {
        out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes())
    };
    match ty {
        WeightType::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        WeightType::F16 => x.iter().for_each(|&v| push_f16(&mut out, v)),
        WeightType::BF16 => x
            .iter()
            .for_each(|&v| out.extend_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes())),
        WeightType::Q8_0 => {
            for xs in x.chunks_exact(QK) {
                let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                push_f16(&mut out, d);
                out.extend(
                    xs.iter()
                        .map(|v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8),
                );
            }
        }
        WeightType::Q4_0 => {
            for xs in x.chunks_exact(QK) {
                // ggml: the value of largest magnitude maps to -8.
                let max = xs
                    .iter()
                    .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                push_f16(&mut out, d);
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(xs[j]) | (q(xs[j + 16]) << 4)));
            }
        }
        WeightType::Q4_1 => {
            for xs in x.chunks_exact(QK) {
                let min = xs.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                let max = xs.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                push_f16(&mut out, d);
                push_f16(&mut out, min);
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(xs[j]) | (q(xs[j + 16]) << 4)));
            }
        }
        WeightType::Q4K => {
            for xs in x.chunks_exact(QK_K) {
                // Per 32-element sub-block: scale and minimum, themselves quantised to 6 bits.
                let mut sub_scale = [0f32; 8];
                let mut sub_min = [0f32; 8];
                for j in 0..8 {
                    let s = &xs[j * 32..j * 32 + 32];
                    let min = s.iter().fold(0.0f32, |m, &v| m.min(v));
                    let max = s.iter().fold(0.0f32, |m, &v| m.max(v));
                    sub_scale[j] = (max - min) / 15.0;
                    sub_min[j] = -min;
                }
                let max_scale = sub_scale.iter().fold(0.0f32, |m, &v| m.max(v));
                let max_min = sub_min.iter().fold(0.0f32, |m, &v| m.max(v));
                let d = max_scale / 63.0;
                let dmin = max_min / 63.0;
                let mut ls = [0u8; 8];
                let mut lm = [0u8; 8];
                for j in 0..8 {
                    ls[j] = if d > 0.0 {
                        (sub_scale[j] / d).round().clamp(0.0, 63.0) as u8
                    } else {
                        0
                    };
                    lm[j] = if dmin > 0.0 {
                        (sub_min[j] / dmin).round().clamp(0.0, 63.0) as u8
                    } else {
                        0
                    };
                }
                let mut scales = [0u8; 12];
                for j in 0..8 {
                    if j < 4 {
                        scales[j] = ls[j];
                        scales[j + 4] = lm[j];
                    } else {
                        scales[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
                        scales[j - 4] |= (ls[j] >> 4) << 6;
                        scales[j] |= (lm[j] >> 4) << 6;
                    }
                }
                let d16 = f16::from_f32(d).to_f32();
                let dmin16 = f16::from_f32(dmin).to_f32();
                push_f16(&mut out, d);
                push_f16(&mut out, dmin);
                out.extend_from_slice(&scales);
                let mut q = [0u8; QK_K];
                for j in 0..8 {
                    let (sc, m) = q4k_scale_min(j, &scales);
                    let (dj, mj) = (d16 * sc as f32, dmin16 * m as f32);
                    for l in 0..32 {
                        let v = xs[j * 32 + l];
                        q[j * 32 + l] = if dj > 0.0 {
                            ((v + mj) / dj).round().clamp(0.0, 15.0) as u8
                        } else {
                            0
                        };
                    }
                }
                for chunk in 0..4 {
                    for l in 0..32 {
                        out.push(q[chunk * 64 + l] | (q[chunk * 64 + 32 + l] << 4));
                    }
                }
            }
        }
        WeightType::Q6K => {
            for xs in x.chunks_exact(QK_K) {
                let mut sub = [0f32; 16];
                for (j, s) in sub.iter_mut().enumerate() {
                    *s = xs[j * 16..j * 16 + 16]
                        .iter()
                        .fold(0.0f32, |m, v| m.max(v.abs()))
                        / 31.0;
                }
                let max_sub = sub.iter().fold(0.0f32, |m, &v| m.max(v));
                let d = max_sub / 127.0;
                let d16 = f16::from_f32(d).to_f32();
                let mut scales = [0i8; 16];
                for j in 0..16 {
                    scales[j] = if d > 0.0 {
                        (sub[j] / d).round().clamp(-128.0, 127.0) as i8
                    } else {
                        0
                    };
                }
                let mut q = [0u8; QK_K];
                for (i, qv) in q.iter_mut().enumerate() {
                    let dj = d16 * scales[i / 16] as f32;
                    let v = if dj != 0.0 {
                        (xs[i] / dj).round().clamp(-32.0, 31.0) as i32
                    } else {
                        0
                    };
                    *qv = (v + 32) as u8;
                }
                let mut ql = [0u8; 128];
                let mut qh = [0u8; 64];
                for half in 0..2 {
                    let q = &q[half * 128..];
                    for l in 0..32 {
                        ql[half * 64 + l] = (q[l] & 0x0F) | ((q[l + 64] & 0x0F) << 4);
                        ql[half * 64 + l + 32] = (q[l + 32] & 0x0F) | ((q[l + 96] & 0x0F) << 4);
                        qh[half * 32 + l] = (q[l] >> 4)
                            | ((q[l + 32] >> 4) << 2)
                            | ((q[l + 64] >> 4) << 4)
                            | ((q[l + 96] >> 4) << 6);
                    }
                }
                out.extend_from_slice(&ql);
                out.extend_from_slice(&qh);
                out.extend(scales.iter().map(|&s| s as u8));
                push_f16(&mut out, d);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32) * 0.37).sin() * (1.0 + (i % 7) as f32 * 0.1))
            .collect()
    }

    #[test]
    fn every_format_round_trips_within_its_precision() {
        let x = wave(512);
        for (ty, tol) in [
            (WeightType::F32, 0.0),
            (WeightType::F16, 1e-3),
            (WeightType::BF16, 1e-2),
            (WeightType::Q8_0, 0.02),
            (WeightType::Q4_0, 0.2),
            (WeightType::Q4_1, 0.12),
            (WeightType::Q4K, 0.15),
            (WeightType::Q6K, 0.05),
        ] {
            let bytes = quantize_row(ty, &x);
            assert_eq!(Some(bytes.len()), ty.row_bytes(x.len()), "{ty:?}");
            let mut y = vec![0.0; x.len()];
            dequantize_row(ty, &bytes, &mut y);
            let err = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err <= tol, "{ty:?}: max error {err} > {tol}");
        }
    }

    #[test]
    fn q8_activation_blocks_reconstruct_input() {
        let x = wave(96);
        let mut q = vec![BlockQ8::default(); 3];
        quantize_row_q8(&x, &mut q);
        for (b, xs) in q.iter().zip(x.chunks(QK)) {
            let sum: i32 = b.qs.iter().map(|&v| v as i32).sum();
            assert_eq!(b.sum, sum);
            assert_eq!(b.s, b.d * sum as f32);
            assert!(
                b.qs.iter().any(|&v| v.abs() == 127),
                "the largest maps to the end"
            );
            for (&qv, &v) in b.qs.iter().zip(xs) {
                assert!((qv as f32 * b.d - v).abs() <= b.d * 0.5 + 1e-6);
            }
        }
    }

    #[test]
    fn q16_activation_blocks_reconstruct_input() {
        let x = wave(96);
        let mut q = vec![BlockQ16::default(); 3];
        quantize_row_q16(&x, &mut q);
        for (b, xs) in q.iter().zip(x.chunks(QK)) {
            let sum: i32 = b.qs.iter().map(|&v| v as i32).sum();
            assert!((b.s - b.d * sum as f32).abs() < 1e-6);
            for (&qv, &v) in b.qs.iter().zip(xs) {
                assert!((qv as f32 * b.d - v).abs() <= b.d * 0.5 + 1e-6);
            }
        }
    }
}

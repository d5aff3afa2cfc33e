//! Portable reference kernels. The SIMD kernels must agree with these.

use super::{KvElem, KvHalf, KvSeg};
use crate::kv_cache::KvType;
use crate::quant::{f16_at, q4k_scale_min, q6k_unpack, BlockQ16, WeightType, QK, QK_K};
use half::{bf16, f16};

/// Σ a[i]·b[i] over 32 nibble-or-byte values against one activation block.
#[inline]
fn isum(w: impl Iterator<Item = i32>, x: &[i16]) -> i32 {
    w.zip(x).map(|(a, &b)| a * b as i32).sum()
}

/// See [`super::dot_q16`].
pub fn dot_q16(ty: WeightType, row: &[u8], xs: &[&[BlockQ16]], out: &mut [f32]) {
    for (o, x) in out.iter_mut().zip(xs) {
        *o = dot_q16_one(ty, row, x);
    }
}

fn dot_q16_one(ty: WeightType, row: &[u8], x: &[BlockQ16]) -> f32 {
    let bb = ty.block_bytes();
    let mut acc = 0.0f32;
    match ty {
        WeightType::Q8_0 => {
            for (b, xb) in row.chunks_exact(bb).zip(x) {
                let s = isum(b[2..34].iter().map(|&q| q as i8 as i32), &xb.qs);
                acc += f16_at(b, 0) * xb.d * s as f32;
            }
        }
        WeightType::Q4_0 | WeightType::Q4_1 => {
            let off = if ty == WeightType::Q4_0 { 2 } else { 4 };
            for (b, xb) in row.chunks_exact(bb).zip(x) {
                let qs = &b[off..off + 16];
                let s = isum(qs.iter().map(|&q| (q & 0x0F) as i32), &xb.qs[..16])
                    + isum(qs.iter().map(|&q| (q >> 4) as i32), &xb.qs[16..]);
                let d = f16_at(b, 0);
                // Q4_0 stores q - 8: Σ (q - 8)·x = Σ q·x - 8·Σ x, and d_x·Σ x is `s`.
                let m = if ty == WeightType::Q4_0 {
                    -8.0 * d
                } else {
                    f16_at(b, 2)
                };
                acc += d * xb.d * s as f32 + m * xb.s;
            }
        }
        WeightType::Q4K => {
            for (b, xsb) in row.chunks_exact(bb).zip(x.chunks_exact(QK_K / QK)) {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let scales = &b[4..16];
                let qs = &b[16..144];
                for (j, xb) in xsb.iter().enumerate() {
                    let q = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
                    let s = if j % 2 == 0 {
                        isum(q.iter().map(|&v| (v & 0x0F) as i32), &xb.qs)
                    } else {
                        isum(q.iter().map(|&v| (v >> 4) as i32), &xb.qs)
                    };
                    let (sc, m) = q4k_scale_min(j, scales);
                    acc += d * sc as f32 * xb.d * s as f32 - dmin * m as f32 * xb.s;
                }
            }
        }
        WeightType::Q6K => {
            let mut q = [0i8; QK_K];
            for (b, xsb) in row.chunks_exact(bb).zip(x.chunks_exact(QK_K / QK)) {
                let scales = q6k_unpack(b, &mut q);
                let d = f16_at(b, 208);
                for (k, xb) in xsb.iter().enumerate() {
                    let q = &q[k * 32..k * 32 + 32];
                    let lo = isum(q[..16].iter().map(|&v| v as i32), &xb.qs[..16]);
                    let hi = isum(q[16..].iter().map(|&v| v as i32), &xb.qs[16..]);
                    // Scale products can exceed i32: combine the two halves in f32.
                    let s = scales[2 * k] as f32 * lo as f32 + scales[2 * k + 1] as f32 * hi as f32;
                    acc += d * xb.d * s;
                }
            }
        }
        WeightType::F32 | WeightType::F16 | WeightType::BF16 => {
            unreachable!("float weights take f32 activations (dot_f32)")
        }
    }
    acc
}

/// See [`super::dot_f32`].
pub fn dot_f32(ty: WeightType, row: &[u8], xs: &[&[f32]], out: &mut [f32]) {
    for (o, x) in out.iter_mut().zip(xs) {
        *o = match ty {
            WeightType::F32 => row
                .chunks_exact(4)
                .zip(x.iter())
                .map(|(b, &v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v)
                .sum(),
            WeightType::F16 => row
                .chunks_exact(2)
                .zip(x.iter())
                .map(|(b, &v)| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32() * v)
                .sum(),
            WeightType::BF16 => row
                .chunks_exact(2)
                .zip(x.iter())
                .map(|(b, &v)| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32() * v)
                .sum(),
            _ => unreachable!("quantised weights take 16-bit activations (dot_q16)"),
        };
    }
}

/// `a · b`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `y += alpha * x`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += alpha * xv;
    }
}

/// See [`super::attend`].
#[allow(clippy::too_many_arguments)]
pub fn attend<T: KvElem>(
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
    let q8 = T::TYPE == KvType::Q8;
    // Each cached row of this group as the values it stands for.
    let rows = |half: KvHalf| {
        segs.iter().flat_map(move |s| {
            let (data, scales) = match half {
                KvHalf::Keys => (s.k, s.k_scale),
                KvHalf::Values => (s.v, s.v_scale),
            };
            (0..s.len).map(move |p| {
                (offset..offset + d).map(move |e| {
                    let x = data[s.layout.index(half, p, e, stride)].to_f32();
                    if q8 {
                        x * scales[s.layout.scale_index(p, e, stride)]
                    } else {
                        x
                    }
                })
            })
        })
    };
    for (qh, oh) in q.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        scores.clear();
        for k in rows(KvHalf::Keys) {
            let s: f32 = qh.iter().zip(k).map(|(a, b)| a * b).sum();
            scores.push(s * scale);
        }
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        for s in scores.iter_mut() {
            *s -= max;
        }
        let sum = exp_in_place(scores);
        let inv = 1.0 / sum;
        oh.fill(0.0);
        for (v, &w) in rows(KvHalf::Values).zip(scores.iter()) {
            let w = w * inv;
            for (o, x) in oh.iter_mut().zip(v) {
                *o += w * x;
            }
        }
    }
}

/// See [`super::exp_in_place`].
pub fn exp_in_place(x: &mut [f32]) -> f32 {
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = v.exp();
        sum += *v;
    }
    sum
}

/// See [`super::sum_exp`].
pub fn sum_exp(x: &[f32], shift: f32, scale: f32) -> f64 {
    x.iter()
        .map(|&v| ((v - shift) as f64 * scale as f64).exp())
        .sum()
}

/// See [`super::silu_mul`].
pub fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

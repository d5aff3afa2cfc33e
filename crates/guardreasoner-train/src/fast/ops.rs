//! Row kernels: RMSNorm forward and backward, RoPE tables and rotation, sigmoid.

use super::*;
use guardreasoner_engine::norm::{rms_norm_row, scale_row};

/// RMSNorm rows of `x` into `out`, saving the reciprocal RMS per row.
pub(super) fn rms_norm_fwd(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], rstd: &mut [f32]) {
    let d = w.len();
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(rstd.par_iter_mut())
        .for_each(|((o, x), r)| *r = rms_norm_row(x, w, eps, o));
}

/// Recomputes normalised rows from the saved reciprocal RMS.
pub(super) fn rms_norm_apply(x: &[f32], w: &[f32], rstd: &[f32], out: &mut [f32]) {
    let d = w.len();
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(rstd.par_iter())
        .for_each(|((o, x), &r)| scale_row(x, w, r, o));
}

/// RMSNorm backward: adds d(loss)/dx to `dx` and, when given, d(loss)/dw to `dw`.
pub(super) fn rms_norm_bwd(
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
) {
    let d = w.len();
    dx.par_chunks_mut(d)
        .zip(x.par_chunks(d).zip(dy.par_chunks(d)))
        .zip(rstd.par_iter())
        .for_each(|((dx, (x, dy)), &r)| {
            let dot: f32 = dy.iter().zip(w).zip(x).map(|((g, w), x)| g * w * x).sum();
            let c = r * r * r * dot / d as f32;
            for (((dx, g), w), x) in dx.iter_mut().zip(dy).zip(w).zip(x) {
                *dx += r * g * w - c * x;
            }
        });
    if let Some(dw) = dw {
        for ((x, dy), &r) in x.chunks(d).zip(dy.chunks(d)).zip(rstd) {
            for ((dw, x), g) in dw.iter_mut().zip(x).zip(dy) {
                *dw += g * x * r;
            }
        }
    }
}

/// RoPE tables `[t, head_dim / 2]`.
pub(super) fn rope_tables(dims: &Dims, t: usize) -> (Vec<f32>, Vec<f32>) {
    let half = dims.inv_freq.len();
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for pos in 0..t {
        for f in &dims.inv_freq {
            let angle = pos as f64 * f;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// Rotate-half RoPE in place on `x: [t, heads * head_dim]`; `inverse` applies the transpose
/// (the backward pass).
pub(super) fn rope(
    x: &mut [f32],
    heads: usize,
    hd: usize,
    cos: &[f32],
    sin: &[f32],
    inverse: bool,
) {
    let half = hd / 2;
    x.par_chunks_mut(heads * hd)
        .enumerate()
        .for_each(|(pos, row)| {
            let (c, s) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
            for head in row.chunks_mut(hd) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x1, x2) = (a[i], b[i]);
                    if inverse {
                        a[i] = x1 * c[i] + x2 * s[i];
                        b[i] = x2 * c[i] - x1 * s[i];
                    } else {
                        a[i] = x1 * c[i] - x2 * s[i];
                        b[i] = x2 * c[i] + x1 * s[i];
                    }
                }
            }
        });
}

pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

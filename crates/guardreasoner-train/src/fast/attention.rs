//! Causal grouped-query attention, forward and backward, in blocks of query rows (memory
//! linear in the sequence length: only the log-sum-exp per row is saved).

use super::*;

pub(super) struct AttnShape {
    pub(super) t: usize,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) hd: usize,
    pub(super) scale: f32,
}

impl AttnShape {
    fn blocks(&self) -> usize {
        self.t.div_ceil(ATTN_BLOCK)
    }
    fn kv_of(&self, h: usize) -> usize {
        h / (self.heads / self.kv_heads)
    }
}

/// Scaled scores of query rows `r0..r1` of head `h` against keys `0..r1` into `s: [bs, r1]`.
/// SAFETY (caller): `q`, `k` hold `t` rows of the shape's widths.
pub(super) unsafe fn block_scores(
    a: &AttnShape,
    h: usize,
    r0: usize,
    r1: usize,
    q: *const f32,
    k: *const f32,
    s: &mut [f32],
) {
    let (qrs, krs) = (a.heads * a.hd, a.kv_heads * a.hd);
    let kvh = a.kv_of(h);
    mm_raw(
        r1 - r0,
        r1,
        a.hd,
        s.as_mut_ptr(),
        r1,
        q.add(r0 * qrs + h * a.hd),
        qrs,
        1,
        k.add(kvh * a.hd),
        1,
        krs,
        false,
        a.scale,
        false,
    );
}

/// Causal attention forward: `out: [t, heads * hd]`, log-sum-exp per head and row `[heads, t]`.
pub(super) fn attention_fwd(
    a: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (t, hd) = (a.t, a.hd);
    let (ors, vrs) = (a.heads * hd, a.kv_heads * hd);
    let out_p = SendPtr(out.as_mut_ptr());
    let lse_p = SendPtr(lse.as_mut_ptr());
    let tasks: Vec<(usize, usize)> = (0..a.heads)
        .flat_map(|h| (0..a.blocks()).map(move |b| (h, b)))
        .collect();
    tasks.par_iter().for_each(|&(h, blk)| {
        let r0 = blk * ATTN_BLOCK;
        let r1 = (r0 + ATTN_BLOCK).min(t);
        let bs = r1 - r0;
        let mut s = vec![0f32; bs * r1];
        // SAFETY: every task writes its own rows of its own head's columns of `out` and `lse`.
        unsafe {
            block_scores(a, h, r0, r1, q.as_ptr(), k.as_ptr(), &mut s);
            for i in 0..bs {
                let row = &mut s[i * r1..(i + 1) * r1];
                let valid = r0 + i + 1;
                let max = row[..valid]
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let mut sum = 0.0;
                for x in &mut row[..valid] {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                row[..valid].iter_mut().for_each(|x| *x *= inv);
                row[valid..].fill(0.0);
                *lse_p.get().add(h * t + r0 + i) = max + sum.ln();
            }
            mm_raw(
                bs,
                hd,
                r1,
                out_p.get().add(r0 * ors + h * hd),
                ors,
                s.as_ptr(),
                r1,
                1,
                v.as_ptr().add(a.kv_of(h) * hd),
                vrs,
                1,
                false,
                1.0,
                false,
            );
        }
    });
}

/// Causal attention backward: d(loss)/d(q, k, v) (the roped q and k) from d(loss)/d(out).
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_bwd(
    a: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (t, hd) = (a.t, a.hd);
    let (qrs, kvrs) = (a.heads * hd, a.kv_heads * hd);
    let dq_p = SendPtr(dq.as_mut_ptr());
    // One task per (head, half of the rows); each keeps its own dK/dV for the rows it reaches.
    let blocks = a.blocks();
    // Split the blocks where the causal work (~ rows^2) is halved.
    let split = ((blocks as f64) / std::f64::consts::SQRT_2).round() as usize;
    let ranges: Vec<(usize, usize, usize)> = (0..a.heads)
        .flat_map(|h| {
            [(h, 0, split), (h, split, blocks)]
                .into_iter()
                .filter(|(_, b0, b1)| b1 > b0)
        })
        .collect();
    let partials: Vec<(usize, usize, Vec<f32>, Vec<f32>)> = ranges
        .par_iter()
        .map(|&(h, b0, b1)| {
            let kvh = a.kv_of(h);
            let rows = (b1 * ATTN_BLOCK).min(t);
            let mut dk_h = vec![0f32; rows * hd];
            let mut dv_h = vec![0f32; rows * hd];
            let mut s = Vec::new();
            let mut dp = Vec::new();
            let mut drow = vec![0f32; ATTN_BLOCK];
            for blk in b0..b1 {
                let r0 = blk * ATTN_BLOCK;
                let r1 = (r0 + ATTN_BLOCK).min(t);
                let bs = r1 - r0;
                s.resize(bs * r1, 0.0);
                dp.resize(bs * r1, 0.0);
                // SAFETY: reads stay within the t rows; writes go to this head's columns of
                // this task's rows of dq and to the task's own dk/dv.
                unsafe {
                    block_scores(a, h, r0, r1, q.as_ptr(), k.as_ptr(), &mut s);
                    for i in 0..bs {
                        let row = &mut s[i * r1..(i + 1) * r1];
                        let valid = r0 + i + 1;
                        let l = lse[h * t + r0 + i];
                        row[..valid].iter_mut().for_each(|x| *x = (*x - l).exp());
                        row[valid..].fill(0.0);
                        let o = &out[(r0 + i) * qrs + h * hd..][..hd];
                        let g = &dout[(r0 + i) * qrs + h * hd..][..hd];
                        drow[i] = o.iter().zip(g).map(|(o, g)| o * g).sum();
                    }
                    // dV[0..r1] += P^T dO
                    mm_raw(
                        r1,
                        hd,
                        bs,
                        dv_h.as_mut_ptr(),
                        hd,
                        s.as_ptr(),
                        1,
                        r1,
                        dout.as_ptr().add(r0 * qrs + h * hd),
                        qrs,
                        1,
                        true,
                        1.0,
                        false,
                    );
                    // dP = dO V^T
                    mm_raw(
                        bs,
                        r1,
                        hd,
                        dp.as_mut_ptr(),
                        r1,
                        dout.as_ptr().add(r0 * qrs + h * hd),
                        qrs,
                        1,
                        v.as_ptr().add(kvh * hd),
                        1,
                        kvrs,
                        false,
                        1.0,
                        false,
                    );
                    // dS = P * (dP - rowsum(dO * O)), in place in dp
                    for i in 0..bs {
                        let p = &s[i * r1..(i + 1) * r1];
                        let d = &mut dp[i * r1..(i + 1) * r1];
                        for (d, p) in d.iter_mut().zip(p) {
                            *d = p * (*d - drow[i]);
                        }
                    }
                    // dQ = scale dS K
                    mm_raw(
                        bs,
                        hd,
                        r1,
                        dq_p.get().add(r0 * qrs + h * hd),
                        qrs,
                        dp.as_ptr(),
                        r1,
                        1,
                        k.as_ptr().add(kvh * hd),
                        kvrs,
                        1,
                        false,
                        a.scale,
                        false,
                    );
                    // dK[0..r1] += scale dS^T Q
                    mm_raw(
                        r1,
                        hd,
                        bs,
                        dk_h.as_mut_ptr(),
                        hd,
                        dp.as_ptr(),
                        1,
                        r1,
                        q.as_ptr().add(r0 * qrs + h * hd),
                        qrs,
                        1,
                        true,
                        a.scale,
                        false,
                    );
                }
            }
            (kvh, rows, dk_h, dv_h)
        })
        .collect();
    dk.fill(0.0);
    dv.fill(0.0);
    for (kvh, rows, dk_h, dv_h) in partials {
        for r in 0..rows {
            let dst = &mut dk[r * kvrs + kvh * hd..][..hd];
            dst.iter_mut()
                .zip(&dk_h[r * hd..][..hd])
                .for_each(|(d, s)| *d += s);
            let dst = &mut dv[r * kvrs + kvh * hd..][..hd];
            dst.iter_mut()
                .zip(&dv_h[r * hd..][..hd])
                .for_each(|(d, s)| *d += s);
        }
    }
}

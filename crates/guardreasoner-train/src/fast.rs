//! The trainer's model: a hand-written forward and backward pass of the LLaMA on contiguous f32
//! buffers, every matmul a `gemm` call, and a fused in-place AdamW.
//!
//! It is what `train`, `bench train`, DPO's reference log-probs, checkpoints, adapters and merges
//! run on. The candle model in `crate::oracle` (feature `oracle`, tests only) is the reference its
//! losses and gradients are checked against. What makes it fast and small:
//!
//! - RMSNorm, RoPE, SwiGLU and the residual adds are fused row loops; RoPE is applied in place and
//!   its transpose in the backward pass. Normalised activations are recomputed in the backward
//!   pass from the saved residual stream and the saved reciprocal RMS instead of being stored.
//! - Causal attention works in blocks of query rows against only the keys up to the block's end
//!   (about half the work of the full square), reads grouped-query K/V heads in place through
//!   strides (no repeated copies), saves only the log-sum-exp per row and recomputes the
//!   probabilities per block in the backward pass (memory linear in the sequence length).
//! - The vocabulary projection is computed once for the positions that have targets; its
//!   log-softmax gradient is formed in place over the saved logits.
//! - LoRA: the base is frozen and gets no gradient buffers; only `A` and `B` do.
//!
//! Here: the model's buffers, forward and backward; beside it `fast/params.rs` (shapes from the
//! engine's weight schema, construction, the trainable tensors and their gradients),
//! `fast/matmul.rs` (the `gemm` wrapper), `fast/ops.rs` (RMSNorm, RoPE), `fast/attention.rs`,
//! `fast/adamw.rs` (the optimiser), `fast/io.rs` (HF checkpoints in and out, PEFT's adapter
//! initialisation) and `fast/candle_bridge.rs` (weights from and to the candle oracle).
//!
//! Interface: [`FastLlama::forward`] returns the log-probability of each target token and a
//! [`Tape`]; [`FastLlama::backward`] takes d(loss)/d(log-prob) per position and accumulates
//! gradients, so SFT (mean NLL) and DPO (sigmoid loss + NLL) both reduce to it.

use crate::model::Config;
use crate::optim::{decays, AdamWConfig};
use crate::TrainError;
use gemm::Parallelism;
use guardreasoner_engine::layout::LAYER_NAMES;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// The adaptable projections in layer order; index `p` of [`crate::lora::ALL_TARGETS`].
const PROJ_SLOT: [usize; 7] = [1, 2, 3, 4, 6, 7, 8];
/// The per-layer parameters, in slot order: the engine's one list ([`LAYER_NAMES`]).
const LAYER_PARAMS: usize = LAYER_NAMES.len();
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;
/// Query rows per attention block.
const ATTN_BLOCK: usize = 64;

/// Shapes of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    pub vocab: usize,
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
    pub tie: bool,
    /// RoPE inverse frequencies (llama3 scaling already applied).
    pub inv_freq: Vec<f64>,
    /// The base weights' HF names and shapes in slot order: the engine's one weight schema
    /// ([`hf_weights`]).
    pub schema: Vec<(String, Vec<usize>)>,
}

fn slot(l: usize, j: usize) -> usize {
    1 + l * LAYER_PARAMS + j
}

/// LoRA adapters over the frozen base: `A: [r, in]`, `B: [out, r]`, per layer and projection.
#[derive(Debug, Clone)]
pub struct FastLora {
    pub rank: usize,
    pub scale: f32,
    pub dropout: f64,
    /// Whether projection `p` (q, k, v, o, gate, up, down) is adapted.
    pub targets: [bool; 7],
    /// Indexed `layer * 7 + p`; empty where not adapted.
    pub a: Vec<Vec<f32>>,
    pub b: Vec<Vec<f32>>,
}

/// The model's weights as flat f32 buffers.
#[derive(Debug, Clone)]
pub struct FastLlama {
    pub dims: Dims,
    /// Base weights by slot: embedding, then 9 per layer ([`LAYER_PARAMS`]), the final norm and,
    /// when untied, the output head.
    pub base: Vec<Vec<f32>>,
    /// Adapters (LoRA mode: the base is frozen).
    pub lora: Option<FastLora>,
}

/// What the LoRA part of one projection saved for the backward pass.
struct LoraSave {
    /// `dropout(x) A^T`, `[t, r]`.
    u: Vec<f32>,
    /// The dropout mask (`1/keep` or 0 per input element) when dropout was applied.
    mask: Option<Vec<f32>>,
}

struct LayerTape {
    x_in: Vec<f32>,
    rstd1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    lse: Vec<f32>,
    x_mid: Vec<f32>,
    rstd2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    lora: Vec<Option<LoraSave>>,
}

/// Activations saved by [`FastLlama::forward`] for [`FastLlama::backward`].
pub struct Tape {
    ids: Vec<u32>,
    from: usize,
    targets: Vec<u32>,
    layers: Vec<LayerTape>,
    /// Residual stream after the last layer, rows `from..`.
    x_last: Vec<f32>,
    rstd_f: Vec<f32>,
    /// Logits `[t - from, vocab]` and their log-sum-exp per row.
    logits: Vec<f32>,
    lse: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Gradients of the trainable parameters, in [`FastLlama::trainable_names`] order.
pub struct Grads {
    pub tensors: Vec<Vec<f32>>,
}

mod adamw;
mod attention;
#[cfg(feature = "oracle")]
mod candle_bridge;
mod io;
mod matmul;
mod ops;
mod params;

pub use adamw::FastAdamW;
use attention::*;
use matmul::*;
use ops::*;

// ---------------------------------------------------------------------------------------------
// The model.

impl FastLlama {
    fn linear_fwd(
        &self,
        l: usize,
        p: usize,
        x: &[f32],
        t: usize,
        y: &mut [f32],
        rng: &mut Option<&mut ChaCha8Rng>,
    ) -> Option<LoraSave> {
        let (out, inp) = self.dims.proj_shape(p);
        let w = &self.base[slot(l, PROJ_SLOT[p])];
        mm(y, x, w, t, out, inp, false, true, false, 1.0);
        let lo = self.lora.as_ref().filter(|lo| lo.targets[p])?;
        let (a, b, r) = (&lo.a[l * 7 + p], &lo.b[l * 7 + p], lo.rank);
        let mask = match rng {
            Some(rng) if lo.dropout > 0.0 => {
                let keep = 1.0 - lo.dropout;
                Some(
                    (0..t * inp)
                        .map(|_| {
                            if rng.random::<f64>() < keep {
                                (1.0 / keep) as f32
                            } else {
                                0.0
                            }
                        })
                        .collect::<Vec<f32>>(),
                )
            }
            _ => None,
        };
        let mut u = vec![0f32; t * r];
        match &mask {
            Some(m) => {
                let xd: Vec<f32> = x.iter().zip(m).map(|(x, m)| x * m).collect();
                mm(&mut u, &xd, a, t, r, inp, false, true, false, 1.0);
            }
            None => mm(&mut u, x, a, t, r, inp, false, true, false, 1.0),
        }
        mm(y, &u, b, t, out, r, false, true, true, lo.scale);
        Some(LoraSave { u, mask })
    }

    /// Backward of projection `p` of layer `l`: weight (or adapter) gradients, and `dx` (+)=
    /// d(loss)/d(input).
    #[allow(clippy::too_many_arguments)]
    fn linear_bwd(
        &self,
        l: usize,
        p: usize,
        x: &[f32],
        t: usize,
        dy: &[f32],
        dx: &mut [f32],
        acc_dx: bool,
        save: &Option<LoraSave>,
        grads: &mut Grads,
    ) {
        let (out, inp) = self.dims.proj_shape(p);
        let s = slot(l, PROJ_SLOT[p]);
        let w = &self.base[s];
        if self.lora.is_none() {
            mm(
                &mut grads.tensors[s],
                dy,
                x,
                out,
                inp,
                t,
                true,
                false,
                true,
                1.0,
            );
        }
        mm(dx, dy, w, t, inp, out, false, false, acc_dx, 1.0);
        let (Some(lo), Some(save), Some(gi)) = (&self.lora, save, self.lora_grad_index(l, p))
        else {
            return;
        };
        let (a, b, r) = (&lo.a[l * 7 + p], &lo.b[l * 7 + p], lo.rank);
        mm(
            &mut grads.tensors[gi + 1],
            dy,
            &save.u,
            out,
            r,
            t,
            true,
            false,
            true,
            lo.scale,
        );
        let mut du = vec![0f32; t * r];
        mm(&mut du, dy, b, t, r, out, false, false, false, lo.scale);
        match &save.mask {
            Some(m) => {
                let xd: Vec<f32> = x.iter().zip(m).map(|(x, m)| x * m).collect();
                mm(
                    &mut grads.tensors[gi],
                    &du,
                    &xd,
                    r,
                    inp,
                    t,
                    true,
                    false,
                    true,
                    1.0,
                );
                let mut dxd = vec![0f32; t * inp];
                mm(&mut dxd, &du, a, t, inp, r, false, false, false, 1.0);
                dx.iter_mut()
                    .zip(&dxd)
                    .zip(m)
                    .for_each(|((d, g), m)| *d += g * m);
            }
            None => {
                mm(
                    &mut grads.tensors[gi],
                    &du,
                    x,
                    r,
                    inp,
                    t,
                    true,
                    false,
                    true,
                    1.0,
                );
                mm(dx, &du, a, t, inp, r, false, false, true, 1.0);
            }
        }
    }

    fn attn_shape(&self, t: usize) -> AttnShape {
        let d = &self.dims;
        AttnShape {
            t,
            heads: d.heads,
            kv_heads: d.kv_heads,
            hd: d.head_dim,
            scale: 1.0 / (d.head_dim as f32).sqrt(),
        }
    }

    /// Log-probabilities of `targets` at positions `from..ids.len()` (teacher forcing:
    /// `targets[i]` is the token after position `from + i`) and the tape for [`Self::backward`].
    /// `dropout` draws LoRA dropout masks (None: no dropout), in the candle model's order.
    pub fn forward(
        &self,
        ids: &[u32],
        from: usize,
        targets: &[u32],
        mut dropout: Option<&mut ChaCha8Rng>,
    ) -> Result<(Vec<f32>, Tape), TrainError> {
        let dims = &self.dims;
        let t = ids.len();
        if t == 0 || from >= t || targets.len() != t - from {
            return Err(TrainError::Model(format!(
                "{} targets from position {from} do not fit a sequence of {t}",
                targets.len()
            )));
        }
        if let Some(bad) = ids
            .iter()
            .chain(targets)
            .find(|&&i| i as usize >= dims.vocab)
        {
            return Err(TrainError::Model(format!(
                "token id {bad} is outside the vocabulary of {}",
                dims.vocab
            )));
        }
        let (d, inter) = (dims.hidden, dims.inter);
        let (qd, kvd) = (dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim);
        let (cos, sin) = rope_tables(dims, t);
        let embed = &self.base[0];
        let mut x = vec![0f32; t * d];
        for (row, &id) in x.chunks_mut(d).zip(ids) {
            row.copy_from_slice(&embed[id as usize * d..][..d]);
        }
        let shape = self.attn_shape(t);
        let mut layers = Vec::with_capacity(dims.layers);
        let mut h = vec![0f32; t * d];
        for l in 0..dims.layers {
            let mut lora = Vec::with_capacity(7);
            let mut rstd1 = vec![0f32; t];
            rms_norm_fwd(&x, &self.base[slot(l, 0)], dims.eps, &mut h, &mut rstd1);
            let mut q = vec![0f32; t * qd];
            let mut k = vec![0f32; t * kvd];
            let mut v = vec![0f32; t * kvd];
            lora.push(self.linear_fwd(l, Q, &h, t, &mut q, &mut dropout));
            lora.push(self.linear_fwd(l, K, &h, t, &mut k, &mut dropout));
            lora.push(self.linear_fwd(l, V, &h, t, &mut v, &mut dropout));
            rope(&mut q, dims.heads, dims.head_dim, &cos, &sin, false);
            rope(&mut k, dims.kv_heads, dims.head_dim, &cos, &sin, false);
            let mut attn = vec![0f32; t * qd];
            let mut lse = vec![0f32; dims.heads * t];
            attention_fwd(&shape, &q, &k, &v, &mut attn, &mut lse);
            let mut o = vec![0f32; t * d];
            lora.push(self.linear_fwd(l, O, &attn, t, &mut o, &mut dropout));
            let mut x_mid = o;
            x_mid
                .par_iter_mut()
                .zip(x.par_iter())
                .for_each(|(m, x)| *m += x);
            let mut rstd2 = vec![0f32; t];
            rms_norm_fwd(&x_mid, &self.base[slot(l, 5)], dims.eps, &mut h, &mut rstd2);
            let mut gate = vec![0f32; t * inter];
            let mut up = vec![0f32; t * inter];
            lora.push(self.linear_fwd(l, GATE, &h, t, &mut gate, &mut dropout));
            lora.push(self.linear_fwd(l, UP, &h, t, &mut up, &mut dropout));
            let act: Vec<f32> = gate
                .par_iter()
                .zip(up.par_iter())
                .map(|(&g, &u)| g * sigmoid(g) * u)
                .collect();
            let mut down = vec![0f32; t * d];
            lora.push(self.linear_fwd(l, DOWN, &act, t, &mut down, &mut dropout));
            drop(act);
            let mut x_out = down;
            x_out
                .par_iter_mut()
                .zip(x_mid.par_iter())
                .for_each(|(o, m)| *o += m);
            let x_in = std::mem::replace(&mut x, x_out);
            layers.push(LayerTape {
                x_in,
                rstd1,
                q,
                k,
                v,
                attn,
                lse,
                x_mid,
                rstd2,
                gate,
                up,
                lora,
            });
        }
        drop(h);
        // Final norm and the vocabulary projection for the positions with targets.
        let n = t - from;
        let x_last = x[from * d..].to_vec();
        drop(x);
        let norm_w = &self.base[slot(dims.layers, 0)];
        let mut hf = vec![0f32; n * d];
        let mut rstd_f = vec![0f32; n];
        rms_norm_fwd(&x_last, norm_w, dims.eps, &mut hf, &mut rstd_f);
        let head = self.head();
        let mut logits = vec![0f32; n * dims.vocab];
        mm(
            &mut logits,
            &hf,
            head,
            n,
            dims.vocab,
            d,
            false,
            true,
            false,
            1.0,
        );
        let (lse, logp): (Vec<f32>, Vec<f32>) = logits
            .par_chunks(dims.vocab)
            .zip(targets.par_iter())
            .map(|(row, &tg)| {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let sum: f32 = row.iter().map(|x| (x - max).exp()).sum();
                let lse = max + sum.ln();
                (lse, row[tg as usize] - lse)
            })
            .unzip();
        Ok((
            logp,
            Tape {
                ids: ids.to_vec(),
                from,
                targets: targets.to_vec(),
                layers,
                x_last,
                rstd_f,
                logits,
                lse,
                cos,
                sin,
            },
        ))
    }

    fn head(&self) -> &[f32] {
        if self.dims.tie {
            &self.base[0]
        } else {
            &self.base[slot(self.dims.layers, 1)]
        }
    }

    /// Accumulates into `grads` the gradients of a loss whose derivative with respect to the
    /// returned log-probabilities is `dlogp` (one per target position).
    pub fn backward(&self, tape: Tape, dlogp: &[f32], grads: &mut Grads) -> Result<(), TrainError> {
        let dims = &self.dims;
        let Tape {
            ids,
            from,
            targets,
            mut layers,
            x_last,
            rstd_f,
            mut logits,
            lse,
            cos,
            sin,
        } = tape;
        if dlogp.len() != targets.len() {
            return Err(TrainError::Model(format!(
                "{} gradients for {} log-probabilities",
                dlogp.len(),
                targets.len()
            )));
        }
        let full = self.lora.is_none();
        let t = ids.len();
        let n = t - from;
        let (d, inter, vocab) = (dims.hidden, dims.inter, dims.vocab);
        let (qd, kvd) = (dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim);
        // d logp_t / d logit_j = onehot_j - softmax_j, formed in place over the logits.
        logits
            .par_chunks_mut(vocab)
            .zip(lse.par_iter())
            .zip(targets.par_iter().zip(dlogp.par_iter()))
            .for_each(|((row, &lse), (&tg, &g))| {
                for x in row.iter_mut() {
                    *x = -g * (*x - lse).exp();
                }
                row[tg as usize] += g;
            });
        let dlogits = logits;
        let norm_w = &self.base[slot(dims.layers, 0)];
        let mut hf = vec![0f32; n * d];
        rms_norm_apply(&x_last, norm_w, &rstd_f, &mut hf);
        if full {
            let hs = if dims.tie { 0 } else { slot(dims.layers, 1) };
            mm(
                &mut grads.tensors[hs],
                &dlogits,
                &hf,
                vocab,
                d,
                n,
                true,
                false,
                true,
                1.0,
            );
        }
        let mut dhf = vec![0f32; n * d];
        mm(
            &mut dhf,
            &dlogits,
            self.head(),
            n,
            d,
            vocab,
            false,
            false,
            false,
            1.0,
        );
        drop(dlogits);
        drop(hf);
        let mut dx = vec![0f32; t * d];
        {
            let ns = slot(dims.layers, 0);
            let dw = if full {
                Some(&mut grads.tensors[ns][..])
            } else {
                None
            };
            rms_norm_bwd(&x_last, norm_w, &rstd_f, &dhf, &mut dx[from * d..], dw);
        }
        drop(dhf);
        let shape = self.attn_shape(t);
        let mut h = vec![0f32; t * d];
        let mut dh = vec![0f32; t * d];
        for l in (0..dims.layers).rev() {
            let lt = layers.pop().expect("one tape per layer");
            // MLP.
            rms_norm_apply(&lt.x_mid, &self.base[slot(l, 5)], &lt.rstd2, &mut h);
            let act: Vec<f32> = lt
                .gate
                .par_iter()
                .zip(lt.up.par_iter())
                .map(|(&g, &u)| g * sigmoid(g) * u)
                .collect();
            let mut dact = vec![0f32; t * inter];
            self.linear_bwd(
                l,
                DOWN,
                &act,
                t,
                &dx,
                &mut dact,
                false,
                &lt.lora[DOWN],
                grads,
            );
            drop(act);
            let (dgate, dup): (Vec<f32>, Vec<f32>) = dact
                .par_iter()
                .zip(lt.gate.par_iter().zip(lt.up.par_iter()))
                .map(|(&da, (&g, &u))| {
                    let s = sigmoid(g);
                    (da * u * s * (1.0 + g * (1.0 - s)), da * g * s)
                })
                .unzip();
            drop(dact);
            self.linear_bwd(
                l,
                GATE,
                &h,
                t,
                &dgate,
                &mut dh,
                false,
                &lt.lora[GATE],
                grads,
            );
            self.linear_bwd(l, UP, &h, t, &dup, &mut dh, true, &lt.lora[UP], grads);
            drop((dgate, dup));
            {
                let dw = if full {
                    Some(&mut grads.tensors[slot(l, 5)][..])
                } else {
                    None
                };
                rms_norm_bwd(
                    &lt.x_mid,
                    &self.base[slot(l, 5)],
                    &lt.rstd2,
                    &dh,
                    &mut dx,
                    dw,
                );
            }
            // Attention.
            let mut dattn = vec![0f32; t * qd];
            self.linear_bwd(
                l,
                O,
                &lt.attn,
                t,
                &dx,
                &mut dattn,
                false,
                &lt.lora[O],
                grads,
            );
            let mut dq = vec![0f32; t * qd];
            let mut dk = vec![0f32; t * kvd];
            let mut dv = vec![0f32; t * kvd];
            attention_bwd(
                &shape, &lt.q, &lt.k, &lt.v, &lt.attn, &lt.lse, &dattn, &mut dq, &mut dk, &mut dv,
            );
            drop(dattn);
            rope(&mut dq, dims.heads, dims.head_dim, &cos, &sin, true);
            rope(&mut dk, dims.kv_heads, dims.head_dim, &cos, &sin, true);
            rms_norm_apply(&lt.x_in, &self.base[slot(l, 0)], &lt.rstd1, &mut h);
            self.linear_bwd(l, Q, &h, t, &dq, &mut dh, false, &lt.lora[Q], grads);
            self.linear_bwd(l, K, &h, t, &dk, &mut dh, true, &lt.lora[K], grads);
            self.linear_bwd(l, V, &h, t, &dv, &mut dh, true, &lt.lora[V], grads);
            {
                let dw = if full {
                    Some(&mut grads.tensors[slot(l, 0)][..])
                } else {
                    None
                };
                rms_norm_bwd(
                    &lt.x_in,
                    &self.base[slot(l, 0)],
                    &lt.rstd1,
                    &dh,
                    &mut dx,
                    dw,
                );
            }
        }
        if full {
            let de = &mut grads.tensors[0];
            for (row, &id) in dx.chunks(d).zip(&ids) {
                de[id as usize * d..][..d]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(g, x)| *g += x);
            }
        }
        Ok(())
    }
}

/// `w += (B A) · scale`: a LoRA update (`B: [rows, rank]`, `A: [rank, cols]`) folded into the
/// weight `w: [rows, cols]` it adapts (merges, HF checkpoints with adapters merged). Rounded as
/// PEFT's `merge_and_unload` and the candle reference round it: the product, then the scale,
/// then the sum.
pub(crate) fn add_lora_delta(w: &mut [f32], b: &[f32], a: &[f32], rank: usize, scale: f32) {
    let rows = b.len() / rank.max(1);
    let cols = a.len() / rank.max(1);
    assert!(
        rank > 0 && rows * rank == b.len() && cols * rank == a.len() && w.len() == rows * cols,
        "LoRA delta shapes"
    );
    let mut delta = vec![0.0f32; w.len()];
    mm(&mut delta, b, a, rows, cols, rank, false, false, false, 1.0);
    w.iter_mut().zip(&delta).for_each(|(w, d)| *w += d * scale);
}

/// The inputs for teacher forcing `target` after `prompt`: `prompt + target[..-1]`, scored from
/// position `prompt.len() - 1`.
pub fn teacher_forcing(prompt: &[u32], target: &[u32]) -> Result<(Vec<u32>, usize), TrainError> {
    if prompt.is_empty() || target.is_empty() {
        return Err(TrainError::Model(
            "prompt and target must be non-empty".into(),
        ));
    }
    let mut ids = prompt.to_vec();
    ids.extend_from_slice(&target[..target.len() - 1]);
    Ok((ids, prompt.len() - 1))
}

/// Summed log-probability of `target` after `prompt`, and the tape to differentiate it.
pub fn sequence_log_prob(
    model: &FastLlama,
    prompt: &[u32],
    target: &[u32],
    dropout: Option<&mut ChaCha8Rng>,
) -> Result<(f64, Tape), TrainError> {
    let (ids, from) = teacher_forcing(prompt, target)?;
    let (lp, tape) = model.forward(&ids, from, target, dropout)?;
    Ok((lp.iter().map(|&x| x as f64).sum(), tape))
}

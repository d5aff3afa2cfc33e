//! The linear layers of the network: stored weight matrices (fused where their formats agree)
//! and, optionally, a LoRA update applied at run time beside them ([`LowRank`]).

use crate::kernels::Isa;
use crate::matrix::{matmul_many, MatmulScratch, Matrix, Product};
use crate::quant::{Activations, WeightType, QK};

/// A linear layer whose output is the concatenation of one or more stored matrices (Q/K/V and
/// gate/up are fused when their formats agree, so one parallel pass computes them), plus an
/// optional low-rank update.
pub(crate) struct Linear {
    parts: Vec<Matrix>,
    rows: usize,
    low_rank: Option<LowRank>,
}

/// Buffers a linear layer reuses across calls.
#[derive(Default)]
pub(crate) struct LinearScratch {
    /// A LoRA update's `A x`.
    mid: Vec<f32>,
    pub(crate) matmul: MatmulScratch,
}

impl Linear {
    pub(crate) fn fused(parts: Vec<Matrix>) -> Linear {
        let refs: Vec<&Matrix> = parts.iter().collect();
        let parts = match Matrix::concat_rows(&refs) {
            Some(m) if parts.len() > 1 => vec![m],
            _ => parts,
        };
        let rows = parts.iter().map(Matrix::rows).sum();
        Linear {
            parts,
            rows,
            low_rank: None,
        }
    }

    pub(crate) fn with_low_rank(self, low_rank: Option<LowRank>) -> Linear {
        Linear { low_rank, ..self }
    }

    pub(crate) fn forward(
        &self,
        isa: Isa,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        s: &mut LinearScratch,
    ) {
        let cols = self.parts[0].cols();
        // The stored parts write their rows of `out`; a LoRA update's `A` joins the same pass.
        let mut products = Vec::with_capacity(self.parts.len() + 1);
        let mut offset = 0;
        for w in &self.parts {
            products.push(Product {
                w,
                x_offset: 0,
                out: 0,
                out_stride: self.rows,
                out_offset: offset,
                accumulate: false,
            });
            offset += w.rows();
        }
        let Some(low_rank) = &self.low_rank else {
            return matmul_many(isa, &products, x, cols, n, &mut [out], &mut s.matmul);
        };
        let rank = low_rank.a.rows();
        products.push(Product {
            w: &low_rank.a,
            x_offset: 0,
            out: 1,
            out_stride: rank,
            out_offset: 0,
            accumulate: false,
        });
        s.mid.resize(n * rank, 0.0);
        matmul_many(
            isa,
            &products,
            x,
            cols,
            n,
            &mut [&mut *out, &mut s.mid],
            &mut s.matmul,
        );
        // Then every part's `B` over its share of `A x`, added into its rows.
        let products: Vec<Product> = low_rank
            .segments
            .iter()
            .map(|seg| Product {
                w: &seg.b,
                x_offset: seg.rank_offset,
                out: 0,
                out_stride: self.rows,
                out_offset: seg.out_offset,
                accumulate: true,
            })
            .collect();
        matmul_many(isa, &products, &s.mid, rank, n, &mut [out], &mut s.matmul);
    }

    pub(crate) fn bytes(&self) -> usize {
        let low_rank = self.low_rank.as_ref().map_or(0, LowRank::bytes);
        self.parts.iter().map(Matrix::byte_len).sum::<usize>() + low_rank
    }

    pub(crate) fn all_f32(&self) -> bool {
        self.parts.iter().all(|m| m.ty() == WeightType::F32)
            && self.low_rank.as_ref().is_none_or(LowRank::all_f32)
    }

    /// The format of the first stored matrix.
    pub(crate) fn weight_type(&self) -> WeightType {
        self.parts[0].ty()
    }

    pub(crate) fn has_low_rank(&self) -> bool {
        self.low_rank.is_some()
    }

    /// Lay the matrices (stored ones and LoRA factors) out for `isa` and `acts`
    /// ([`Matrix::prepare`]).
    pub(crate) fn prepare(&mut self, isa: Isa, acts: Activations) {
        for m in &mut self.parts {
            m.prepare(isa, acts);
        }
        if let Some(l) = &mut self.low_rank {
            l.a.prepare(isa, acts);
            for seg in &mut l.segments {
                seg.b.prepare(isa, acts);
            }
        }
    }

    pub(crate) fn map(self, f: impl Fn(&Matrix) -> Matrix) -> Linear {
        Linear {
            parts: self.parts.iter().map(&f).collect(),
            rows: self.rows,
            low_rank: self.low_rank.map(|l| LowRank {
                a: f(&l.a),
                segments: l
                    .segments
                    .into_iter()
                    .map(|seg| Segment {
                        b: f(&seg.b),
                        ..seg
                    })
                    .collect(),
            }),
        }
    }
}

/// A LoRA update `B (A x)` (the LoRA scale folded into `B`) added to a linear layer's output
/// at run time instead of merged into its weights. The base weights keep their stored format,
/// so the update is not rounded into them: merged and re-quantised to Q8_0, the shipped guard's
/// adapter moved the logits 20 times as far from the exact merge (BENCHMARKS.md), while an f16
/// merge reads twice the bytes per decode step.
///
/// The parts of a fused layer share one `A` (theirs stacked, each padded with zero rows to a
/// multiple of 32), computed in the same pass as the stored weights; their `B`s then run in one
/// more pass, each over its own share of `A x`, adding into its rows. Both factors are stored
/// as Q8_0 (the quantised kernels, about 4x the float kernels' rate), whose rounding is that of
/// the small update, not of the weights; F32 where the input width is not a multiple of 32.
#[derive(Debug)]
pub struct LowRank {
    /// `Σ padded rank × cols`.
    a: Matrix,
    segments: Vec<Segment>,
}

/// One adapted part's `B`.
#[derive(Debug)]
struct Segment {
    /// First output row of the part in the layer's output.
    out_offset: usize,
    /// First row of the part's `A` in the stacked `A` (a multiple of 32).
    rank_offset: usize,
    /// `rows × padded rank`.
    b: Matrix,
}

/// One adapted part of a (possibly fused) linear layer, as floats.
#[derive(Debug, Clone)]
pub struct LowRankPart {
    /// First output row of the part in the layer's output.
    pub out_offset: usize,
    /// Output rows of the part.
    pub rows: usize,
    /// `rank × cols`, row-major.
    pub a: Vec<f32>,
    /// `rows × rank`, row-major, the LoRA scale folded in.
    pub b: Vec<f32>,
}

impl LowRankPart {
    fn rank(&self) -> usize {
        self.b.len() / self.rows.max(1)
    }
}

impl LowRank {
    /// The update of a layer with `rows` outputs and `cols` inputs from its adapted `parts`,
    /// stored as `ty` (Q8_0 or F32; Q8_0 falls back to F32 where `cols` is not a multiple of
    /// 32). `None` when no part is adapted; a message when shapes disagree.
    pub fn new(
        rows: usize,
        cols: usize,
        parts: &[LowRankPart],
        ty: WeightType,
    ) -> Result<Option<LowRank>, String> {
        if parts.is_empty() {
            return Ok(None);
        }
        for p in parts {
            let rank = p.rank();
            if rank == 0 || p.b.len() != p.rows * rank || p.a.len() != rank * cols {
                return Err(format!(
                    "the update at output row {}: A has {} values, B {} (expected rank x {cols} and {} x rank, rank > 0)",
                    p.out_offset,
                    p.a.len(),
                    p.b.len(),
                    p.rows
                ));
            }
            if p.out_offset + p.rows > rows {
                return Err(format!(
                    "the update at output row {} covers {} rows of a {rows}-row layer",
                    p.out_offset, p.rows
                ));
            }
        }
        let ty = if ty == WeightType::F32 || !cols.is_multiple_of(QK) {
            WeightType::F32
        } else {
            WeightType::Q8_0
        };
        let stored = |rows: usize, cols: usize, values: &[f32]| {
            let data = values
                .chunks_exact(cols)
                .flat_map(|row| crate::quant::quantize_row(ty, row))
                .collect();
            Matrix::new(ty, rows, cols, data).expect("whole rows")
        };
        let padded = |p: &LowRankPart| p.rank().next_multiple_of(QK);
        let total: usize = parts.iter().map(padded).sum();
        let mut a = vec![0.0f32; total * cols];
        let mut segments = Vec::with_capacity(parts.len());
        let mut at = 0;
        for p in parts {
            let (rank, width) = (p.rank(), padded(p));
            a[at * cols..(at + rank) * cols].copy_from_slice(&p.a);
            let mut b = vec![0.0f32; p.rows * width];
            for (dst, src) in b.chunks_exact_mut(width).zip(p.b.chunks_exact(rank)) {
                dst[..rank].copy_from_slice(src);
            }
            segments.push(Segment {
                out_offset: p.out_offset,
                rank_offset: at,
                b: stored(p.rows, width, &b),
            });
            at += width;
        }
        Ok(Some(LowRank {
            a: stored(total, cols, &a),
            segments,
        }))
    }

    fn bytes(&self) -> usize {
        self.a.byte_len() + self.segments.iter().map(|s| s.b.byte_len()).sum::<usize>()
    }

    fn all_f32(&self) -> bool {
        self.a.ty() == WeightType::F32 && self.segments.iter().all(|s| s.b.ty() == WeightType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_row;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 31 + seed * 17) % 97) as f32 - 48.0) / 60.0)
            .collect()
    }

    /// A fused Q4_1 layer of three parts with updates on the first and last part (ranks 4 and
    /// 3, padded to 32 together): its output differs from the same layer without them by
    /// `B (A x)` per part (computed here in f64), for single tokens and batches, on every
    /// kernel: to float precision with F32 factors, within Q8_0's rounding of the factors and
    /// the 16-bit activations otherwise.
    #[test]
    fn low_rank_update_adds_b_a_x() {
        let cols = 64;
        let part_rows = [32usize, 16, 16];
        let ranks = [4usize, 0, 3];
        let parts: Vec<Matrix> = part_rows
            .iter()
            .enumerate()
            .map(|(i, &rows)| {
                let data = values(rows * cols, i)
                    .chunks(cols)
                    .flat_map(|r| quantize_row(WeightType::Q4_1, r))
                    .collect();
                Matrix::new(WeightType::Q4_1, rows, cols, data).unwrap()
            })
            .collect();
        let total: usize = part_rows.iter().sum();
        let mut updates = Vec::new();
        let mut offset = 0;
        for (p, (&rows, &rank)) in part_rows.iter().zip(&ranks).enumerate() {
            if rank > 0 {
                updates.push(LowRankPart {
                    out_offset: offset,
                    rows,
                    a: values(rank * cols, 10 + p),
                    b: values(rows * rank, 20 + p),
                });
            }
            offset += rows;
        }
        let plain = Linear::fused(parts.clone());
        assert!(!plain.has_low_rank());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (ty, tolerance) in [(WeightType::F32, 1e-4), (WeightType::Q8_0, 0.02)] {
            let low_rank = LowRank::new(total, cols, &updates, ty).unwrap().unwrap();
            assert_eq!((low_rank.a.rows(), low_rank.a.ty()), (64, ty));
            let adapted = Linear::fused(parts.clone()).with_low_rank(Some(low_rank));
            for n in [1usize, 3, 9] {
                let x = values(n * cols, 40 + n);
                let mut want = vec![0.0f64; n * total];
                for u in &updates {
                    let rank = u.rank();
                    for t in 0..n {
                        let ax: Vec<f64> = (0..rank)
                            .map(|k| {
                                (0..cols)
                                    .map(|c| u.a[k * cols + c] as f64 * x[t * cols + c] as f64)
                                    .sum()
                            })
                            .collect();
                        for r in 0..u.rows {
                            want[t * total + u.out_offset + r] =
                                (0..rank).map(|k| u.b[r * rank + k] as f64 * ax[k]).sum();
                        }
                    }
                }
                let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                pool.install(|| {
                    for isa in Isa::all_available() {
                        let (mut with, mut without) = (vec![0.0; n * total], vec![0.0; n * total]);
                        adapted.forward(isa, &x, n, &mut with, &mut LinearScratch::default());
                        plain.forward(isa, &x, n, &mut without, &mut LinearScratch::default());
                        for (i, ((w, o), e)) in with.iter().zip(&without).zip(&want).enumerate() {
                            let got = (w - o) as f64;
                            assert!(
                                (got - e).abs() < tolerance * scale.max(1.0),
                                "{ty:?} {isa:?} n={n} [{i}]: {got} vs {e}"
                            );
                        }
                    }
                });
            }
        }
    }

    #[test]
    fn mismatched_factors_are_refused() {
        let part = LowRankPart {
            out_offset: 0,
            rows: 8,
            a: values(4 * 64, 1),
            b: values(8 * 3, 2),
        };
        let err = LowRank::new(8, 64, std::slice::from_ref(&part), WeightType::Q8_0).unwrap_err();
        assert!(err.contains("expected rank x 64"), "{err}");
        let part = LowRankPart {
            b: values(8 * 4, 2),
            ..part
        };
        let err = LowRank::new(4, 64, &[part], WeightType::Q8_0).unwrap_err();
        assert!(err.contains("of a 4-row layer"), "{err}");
        assert!(LowRank::new(8, 64, &[], WeightType::Q8_0)
            .unwrap()
            .is_none());
    }
}

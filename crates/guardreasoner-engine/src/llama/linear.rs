//! The linear layers of the network: stored weight matrices (fused where their formats agree)
//! and, optionally, a LoRA update applied at run time beside them ([`LowRank`]).

use crate::kernels::Isa;
use crate::matrix::{matmul, MatmulScratch, Matrix};
use crate::quant::WeightType;

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
    part: Vec<f32>,
    /// `A x` of every adapted part, then one part's share of it, then its `B (A x)`.
    mid: Vec<f32>,
    gathered: Vec<f32>,
    delta: Vec<f32>,
    pub(crate) matmul: MatmulScratch,
}

impl Linear {
    pub(crate) fn fused(parts: Vec<Matrix>) -> Linear {
        let refs: Vec<&Matrix> = parts.iter().collect();
        let parts = match Matrix::concat_rows(&refs) {
            Some(m) if parts.len() > 1 => vec![m],
            _ => parts,
        };
        let isa = Isa::detect();
        let parts: Vec<Matrix> = parts.into_iter().map(|m| m.prepared_for(isa)).collect();
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
        if let [only] = self.parts.as_slice() {
            matmul(isa, only, x, n, out, &mut s.matmul);
        } else {
            let mut offset = 0;
            for part in &self.parts {
                let rows = part.rows();
                s.part.resize(n * rows, 0.0);
                matmul(isa, part, x, n, &mut s.part, &mut s.matmul);
                for t in 0..n {
                    out[t * self.rows + offset..t * self.rows + offset + rows]
                        .copy_from_slice(&s.part[t * rows..(t + 1) * rows]);
                }
                offset += rows;
            }
        }
        if let Some(low_rank) = &self.low_rank {
            low_rank.add_to(isa, x, n, out, self.rows, s);
        }
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

    pub(crate) fn map(self, f: impl Fn(&Matrix) -> Matrix) -> Linear {
        Linear {
            parts: self.parts.iter().map(&f).collect(),
            rows: self.rows,
            low_rank: self.low_rank.map(|l| LowRank {
                a: f(&l.a),
                segments: l
                    .segments
                    .into_iter()
                    .map(|s| Segment { b: f(&s.b), ..s })
                    .collect(),
            }),
        }
    }
}

/// A LoRA update `B (A x)` (the LoRA scale folded into `B`) added to a linear layer's output
/// at run time instead of merged into its weights. The base weights keep their stored format,
/// so the update is not rounded into them: merged and re-quantised to Q8_0, the shipped guard's
/// adapter lost ~2.5 F1 points on the development splits (BENCHMARKS.md), while an f16 merge
/// reads twice the bytes per decode step.
#[derive(Debug)]
pub struct LowRank {
    /// The `A` of every adapted output segment, stacked (`Σ rank × cols`), so one product
    /// computes them all.
    a: Matrix,
    segments: Vec<Segment>,
}

/// One adapted output segment of a (possibly fused) linear layer.
#[derive(Debug)]
struct Segment {
    /// First output row of the segment in the layer's output.
    out_offset: usize,
    /// First row of this segment's `A` in the stacked `A`.
    rank_offset: usize,
    /// `rows × rank`.
    b: Matrix,
}

impl LowRank {
    /// From `(out_offset, A, B)` per adapted segment: `A` is `rank × cols` (the layer's input
    /// width), `B` is `rows × rank` with the LoRA scale folded in. Returns a message when
    /// shapes disagree or the `A`s cannot be stacked (different formats).
    pub fn new(segments: Vec<(usize, Matrix, Matrix)>) -> Result<Option<LowRank>, String> {
        if segments.is_empty() {
            return Ok(None);
        }
        for (offset, a, b) in &segments {
            if a.rows() == 0 {
                return Err(format!("the update at output row {offset} has rank 0"));
            }
            if b.cols() != a.rows() {
                return Err(format!(
                    "the update at output row {offset}: A is {} x {}, B is {} x {} (B's columns must be A's rows)",
                    a.rows(),
                    a.cols(),
                    b.rows(),
                    b.cols()
                ));
            }
        }
        let a_parts: Vec<&Matrix> = segments.iter().map(|(_, a, _)| a).collect();
        let a = match a_parts.as_slice() {
            [only] => (*only).clone(),
            many => Matrix::concat_rows(many).ok_or_else(|| {
                "the A matrices of one layer differ in width or format".to_string()
            })?,
        };
        let mut rank_offset = 0;
        let segments = segments
            .into_iter()
            .map(|(out_offset, a, b)| {
                let segment = Segment {
                    out_offset,
                    rank_offset,
                    b,
                };
                rank_offset += a.rows();
                segment
            })
            .collect();
        Ok(Some(LowRank { a, segments }))
    }

    fn bytes(&self) -> usize {
        self.a.byte_len() + self.segments.iter().map(|s| s.b.byte_len()).sum::<usize>()
    }

    fn all_f32(&self) -> bool {
        self.a.ty() == WeightType::F32 && self.segments.iter().all(|s| s.b.ty() == WeightType::F32)
    }

    /// `out[t][offset + r] += (B (A x[t]))[r]` for every segment; `out` rows are `stride` wide.
    fn add_to(
        &self,
        isa: Isa,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        stride: usize,
        s: &mut LinearScratch,
    ) {
        let total_rank = self.a.rows();
        s.mid.resize(n * total_rank, 0.0);
        matmul(isa, &self.a, x, n, &mut s.mid, &mut s.matmul);
        for seg in &self.segments {
            let (rows, rank) = (seg.b.rows(), seg.b.cols());
            let input = if rank == total_rank {
                &s.mid[..]
            } else {
                s.gathered.resize(n * rank, 0.0);
                for t in 0..n {
                    let from = t * total_rank + seg.rank_offset;
                    s.gathered[t * rank..(t + 1) * rank].copy_from_slice(&s.mid[from..from + rank]);
                }
                &s.gathered[..]
            };
            s.delta.resize(n * rows, 0.0);
            matmul(isa, &seg.b, input, n, &mut s.delta, &mut s.matmul);
            for t in 0..n {
                let o = &mut out[t * stride + seg.out_offset..t * stride + seg.out_offset + rows];
                for (o, d) in o.iter_mut().zip(&s.delta[t * rows..(t + 1) * rows]) {
                    *o += d;
                }
            }
        }
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

    fn f16_matrix(rows: usize, cols: usize, v: &[f32]) -> Matrix {
        let data = v
            .chunks(cols)
            .flat_map(|r| quantize_row(WeightType::F16, r))
            .collect();
        Matrix::new(WeightType::F16, rows, cols, data).unwrap()
    }

    /// A fused Q4_1 layer of three parts with updates on the first and last part: its output
    /// differs from the same layer without them by exactly `B (A x)` per segment (computed
    /// here in f64 from the f16 factors), for single tokens and batches, on every kernel.
    #[test]
    fn low_rank_update_adds_exactly_b_a_x() {
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
        // Per segment: (first output row, A as f64 rank x cols, B as f64 rows x rank).
        let mut factors = Vec::new();
        let mut segments = Vec::new();
        let mut offset = 0;
        for (p, (&rows, &rank)) in part_rows.iter().zip(&ranks).enumerate() {
            if rank > 0 {
                let a = f16_matrix(rank, cols, &values(rank * cols, 10 + p));
                let b = f16_matrix(rows, rank, &values(rows * rank, 20 + p));
                let as_f64 = |m: &Matrix| {
                    let mut row = vec![0.0f32; m.cols()];
                    (0..m.rows())
                        .flat_map(|r| {
                            m.dequantize_row_into(r, &mut row);
                            row.iter().map(|&v| v as f64).collect::<Vec<_>>()
                        })
                        .collect::<Vec<f64>>()
                };
                factors.push((offset, rank, rows, as_f64(&a), as_f64(&b)));
                segments.push((offset, a, b));
            }
            offset += rows;
        }
        let plain = Linear::fused(parts.clone());
        let adapted = Linear::fused(parts).with_low_rank(LowRank::new(segments).unwrap());
        assert!(adapted.has_low_rank() && !plain.has_low_rank());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for n in [1usize, 3, 9] {
            let x = values(n * cols, 40 + n);
            let mut want = vec![0.0f64; n * total];
            for &(offset, rank, rows, ref a, ref b) in &factors {
                for t in 0..n {
                    let ax: Vec<f64> = (0..rank)
                        .map(|k| {
                            (0..cols)
                                .map(|c| a[k * cols + c] * x[t * cols + c] as f64)
                                .sum()
                        })
                        .collect();
                    for r in 0..rows {
                        want[t * total + offset + r] =
                            (0..rank).map(|k| b[r * rank + k] * ax[k]).sum();
                    }
                }
            }
            pool.install(|| {
                for isa in Isa::all_available() {
                    let (mut with, mut without) = (vec![0.0; n * total], vec![0.0; n * total]);
                    adapted.forward(isa, &x, n, &mut with, &mut LinearScratch::default());
                    plain.forward(isa, &x, n, &mut without, &mut LinearScratch::default());
                    for (i, ((w, o), e)) in with.iter().zip(&without).zip(&want).enumerate() {
                        let got = (w - o) as f64;
                        assert!((got - e).abs() < 1e-4, "{isa:?} n={n} [{i}]: {got} vs {e}");
                    }
                }
            });
        }
    }

    #[test]
    fn mismatched_factors_are_refused() {
        let a = f16_matrix(4, 64, &values(4 * 64, 1));
        let b = f16_matrix(8, 3, &values(8 * 3, 2));
        assert!(LowRank::new(vec![(0, a, b)])
            .unwrap_err()
            .contains("B's columns"));
        assert!(LowRank::new(vec![]).unwrap().is_none());
    }
}

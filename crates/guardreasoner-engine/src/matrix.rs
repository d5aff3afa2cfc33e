//! Weight matrices in their stored format, and the batched matrix product of the forward pass.

use crate::kernels::{self, interleaved, Isa, MAX_COLS};
use crate::quant::{dequantize_row, quantize_row_q16, BlockQ16, WeightType, QK};
use rayon::prelude::*;

/// A `rows × cols` weight matrix, each row stored in format `ty` (the layout of
/// `nn.Linear.weight`: one row per output feature), row-major or, for Q8_0 and Q4_1 on
/// AVX-512 VNNI, with groups of rows interleaved ([`Matrix::prepared_for`], [`interleaved`]).
#[derive(Clone)]
pub struct Matrix {
    ty: WeightType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Vec<u8>,
    /// Rows interleaved by [`interleaved::GROUP`] (Q8_0 and Q4_1 only).
    interleaved: bool,
}

impl std::fmt::Debug for Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Matrix({} x {}, {})",
            self.rows,
            self.cols,
            self.ty.name()
        )
    }
}

impl Matrix {
    /// Wrap stored bytes. Returns `None` when `data` is not exactly `rows` rows of `cols`.
    pub fn new(ty: WeightType, rows: usize, cols: usize, data: Vec<u8>) -> Option<Matrix> {
        let row_bytes = ty.row_bytes(cols)?;
        (rows.checked_mul(row_bytes)? == data.len()).then_some(Matrix {
            ty,
            rows,
            cols,
            row_bytes,
            data,
            interleaved: false,
        })
    }

    /// The layout `matmul` on `isa` runs fastest: Q8_0 and Q4_1 matrices of whole row groups
    /// are interleaved for the AVX-512 VNNI kernel (2.2x its row-by-row rate for Q8_0,
    /// measured in `examples/kernel_bench.rs`); everything else is kept as stored.
    pub fn prepared_for(self, isa: Isa) -> Matrix {
        if isa != Isa::Avx512 || !interleaved::supports(self.ty) || self.interleaved {
            return self;
        }
        match interleaved::interleave(self.ty, &self.data, self.row_bytes) {
            Some(data) => Matrix {
                data,
                interleaved: true,
                ..self
            },
            None => self,
        }
    }

    /// Whether the rows are interleaved (see [`Matrix::prepared_for`]).
    pub fn is_interleaved(&self) -> bool {
        self.interleaved
    }

    /// A float matrix from row-major values.
    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> Option<Matrix> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Matrix::new(WeightType::F32, rows, cols, data)
    }

    pub fn ty(&self) -> WeightType {
        self.ty
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes held.
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    /// The stored bytes of row `r` (row-major matrices).
    #[inline]
    fn row(&self, r: usize) -> &[u8] {
        debug_assert!(!self.interleaved);
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Row `r` as floats (embedding lookup).
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        if self.interleaved {
            let g = interleaved::GROUP;
            let group = &self.data[r / g * g * self.row_bytes..(r / g + 1) * g * self.row_bytes];
            let mut row = vec![0u8; self.row_bytes];
            interleaved::row_of(self.ty, group, r % g, &mut row);
            return dequantize_row(self.ty, &row, out);
        }
        dequantize_row(self.ty, self.row(r), out);
    }

    /// The same matrix stored as F32 (for reference comparisons).
    pub fn to_f32(&self) -> Matrix {
        let mut values = vec![0.0f32; self.cols];
        let mut data = Vec::with_capacity(self.rows * self.cols * 4);
        for r in 0..self.rows {
            self.dequantize_row_into(r, &mut values);
            data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        }
        Matrix {
            ty: WeightType::F32,
            rows: self.rows,
            cols: self.cols,
            row_bytes: self.cols * 4,
            data,
            interleaved: false,
        }
    }

    /// Stack matrices with the same width and format into one (e.g. Q, K and V projections,
    /// so one parallel pass computes all three).
    pub fn concat_rows(parts: &[&Matrix]) -> Option<Matrix> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|m| m.ty != first.ty || m.cols != first.cols || m.interleaved != first.interleaved)
        {
            return None;
        }
        // Interleaved groups never straddle parts (each part is whole groups), so the bytes
        // concatenate in either layout.
        let data = parts.iter().flat_map(|m| m.data.iter().copied()).collect();
        let m = Matrix::new(
            first.ty,
            parts.iter().map(|m| m.rows).sum(),
            first.cols,
            data,
        )?;
        Some(Matrix {
            interleaved: first.interleaved,
            ..m
        })
    }
}

/// Scratch reused across matrix products (quantised activations).
#[derive(Default)]
pub struct MatmulScratch {
    q16: Vec<BlockQ16>,
}

/// Rows handed to one quantised kernel call (its output buffer lives on the stack).
const ROWS_PER_CALL: usize = 64;

/// A raw pointer that may cross threads; each task writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks of one `matmul` call write pairwise-disjoint elements (distinct rows of the
// weight matrix) of a buffer that outlives the parallel section.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `out[t][r] = Σ_k w[r][k] · x[t][k]` for `t < n_tokens`: `x` is `n_tokens × cols`, `out` is
/// `n_tokens × w.rows()`. Rows are split across the current rayon pool; each weight row is
/// read once per group of [`MAX_COLS`] tokens.
pub fn matmul(
    isa: Isa,
    w: &Matrix,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    let (rows, cols) = (w.rows, w.cols);
    assert!(
        x.len() >= n_tokens * cols && out.len() >= n_tokens * rows,
        "matmul: buffer sizes"
    );
    let quantised = w.ty.uses_q16_activations();
    if quantised {
        let blocks = cols / QK;
        scratch.q16.resize(n_tokens * blocks, BlockQ16::default());
        scratch
            .q16
            .par_chunks_mut(blocks)
            .with_min_len(8)
            .zip(x.par_chunks(cols))
            .for_each(|(q, xs)| quantize_row_q16(xs, q));
    }
    let q16 = &scratch.q16[..];
    let threads = rayon::current_num_threads().max(1);
    // Enough tasks to balance, few enough that scheduling stays cheap: a decode step's
    // matrix-vector product is only microseconds of work per thread.
    let tasks_per_thread = if n_tokens <= MAX_COLS { 2 } else { 8 };
    let mut chunk = rows.div_ceil(threads * tasks_per_thread).clamp(4, 256);
    if w.interleaved {
        chunk = chunk.next_multiple_of(interleaved::GROUP);
    }
    let outp = OutPtr(out.as_mut_ptr());
    (0..rows.div_ceil(chunk))
        .into_par_iter()
        .for_each(move |task| {
            let outp = outp;
            let r0 = task * chunk;
            let r1 = (r0 + chunk).min(rows);
            let mut dots = [0.0f32; MAX_COLS];
            let mut block_dots = [0.0f32; MAX_COLS * ROWS_PER_CALL];
            let mut t0 = 0;
            // While the token groups after the first compute from cache, the next chunk's rows
            // (usually this thread's next task) are fetched into L2 a part per group, so its
            // first group need not wait on memory.
            let groups = n_tokens.div_ceil(MAX_COLS);
            let next = &w.data[(r1 * w.row_bytes).min(w.data.len())
                ..((r1 + chunk) * w.row_bytes).min(w.data.len())];
            let mut prefetch = next.chunks(next.len().div_ceil(groups.max(2) - 1).max(1));
            while t0 < n_tokens {
                let n = (n_tokens - t0).min(MAX_COLS);
                if t0 > 0 {
                    if let Some(part) = prefetch.next() {
                        prefetch_l2(part);
                    }
                }
                if quantised {
                    let blocks = cols / QK;
                    let xs: [&[BlockQ16]; MAX_COLS] = std::array::from_fn(|c| {
                        &q16[(t0 + c.min(n - 1)) * blocks..(t0 + c.min(n - 1) + 1) * blocks]
                    });
                    // A call covers one interleaved group, or up to ROWS_PER_CALL plain rows.
                    let step = if w.interleaved {
                        interleaved::GROUP
                    } else {
                        ROWS_PER_CALL
                    };
                    let mut r = r0;
                    while r < r1 {
                        let k = (r1 - r).min(step);
                        let data = &w.data[r * w.row_bytes..(r + k) * w.row_bytes];
                        let o = &mut block_dots[..k * n];
                        if w.interleaved {
                            kernels::dot_q16_group(isa, w.ty, data, &xs[..n], o);
                        } else {
                            kernels::dot_q16_rows(isa, w.ty, data, w.row_bytes, &xs[..n], o);
                        }
                        for (i, d) in o.chunks_exact(n).enumerate() {
                            for (c, &v) in d.iter().enumerate() {
                                // SAFETY: (t0 + c, r + i) is inside `out` (checked above) and
                                // row r + i belongs to this task only.
                                unsafe { *outp.0.add((t0 + c) * rows + r + i) = v };
                            }
                        }
                        r += k;
                    }
                    t0 += n;
                    continue;
                }
                for r in r0..r1 {
                    let row = w.row(r);
                    {
                        let xs: [&[f32]; MAX_COLS] = std::array::from_fn(|c| {
                            &x[(t0 + c.min(n - 1)) * cols..(t0 + c.min(n - 1) + 1) * cols]
                        });
                        kernels::dot_f32(isa, w.ty, row, &xs[..n], &mut dots[..n]);
                    }
                    for (c, &v) in dots[..n].iter().enumerate() {
                        // SAFETY: (t0 + c, r) is inside `out` (checked above) and row r belongs to
                        // this task only.
                        unsafe { *outp.0.add((t0 + c) * rows + r) = v };
                    }
                }
                t0 += n;
            }
        });
}

/// Ask for `bytes` to be brought into the L2 cache (a hint: no effect where unsupported).
#[inline]
fn prefetch_l2(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: prefetching is a hint and never faults; the address is inside `bytes`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                line.as_ptr() as *const i8
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_row;

    #[test]
    fn interleaved_matrices_multiply_and_read_back_like_row_major_ones() {
        let (rows, cols) = (48, 96);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 29 % 89) as f32 - 44.0) / 40.0)
            .collect();
        for ty in [WeightType::Q8_0, WeightType::Q4_1] {
            let data: Vec<u8> = values
                .chunks(cols)
                .flat_map(|r| quantize_row(ty, r))
                .collect();
            let plain = Matrix::new(ty, rows, cols, data).unwrap();
            let packed = plain.clone().prepared_for(Isa::Avx512);
            assert!(packed.is_interleaved());
            assert!(!plain.clone().prepared_for(Isa::Avx2).is_interleaved());
            let (mut a, mut b) = (vec![0.0; cols], vec![0.0; cols]);
            for r in 0..rows {
                plain.dequantize_row_into(r, &mut a);
                packed.dequantize_row_into(r, &mut b);
                assert_eq!(a, b, "row {r}");
            }
            let both = Matrix::concat_rows(&[&packed, &packed]).unwrap();
            assert!(both.is_interleaved() && both.rows() == 2 * rows);
            assert!(
                Matrix::concat_rows(&[&packed, &plain]).is_none(),
                "layouts do not mix"
            );
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            for n in [1usize, 4, 7] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 13 % 31) as f32 - 15.0) / 10.0)
                    .collect();
                for isa in Isa::all_available() {
                    let (mut want, mut got) = (vec![0.0; n * rows], vec![0.0; n * rows]);
                    let mut scratch = MatmulScratch::default();
                    pool.install(|| {
                        matmul(isa, &plain, &x, n, &mut want, &mut scratch);
                        matmul(isa, &packed, &x, n, &mut got, &mut scratch);
                    });
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() < 1e-3, "{isa:?} n={n}: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_matches_naive_product_for_every_token_count() {
        let (rows, cols) = (37, 64);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 50.0)
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for ty in [WeightType::F32, WeightType::Q8_0, WeightType::Q4_1] {
            let data: Vec<u8> = values
                .chunks(cols)
                .flat_map(|r| quantize_row(ty, r))
                .collect();
            let w = Matrix::new(ty, rows, cols, data).unwrap();
            let wf = w.to_f32();
            for n in [1usize, 3, 4, 9] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 17 % 23) as f32 - 11.0) / 10.0)
                    .collect();
                let mut out = vec![0.0; n * rows];
                pool.install(|| {
                    matmul(
                        Isa::detect(),
                        &w,
                        &x,
                        n,
                        &mut out,
                        &mut MatmulScratch::default(),
                    )
                });
                let mut row = vec![0.0; cols];
                for t in 0..n {
                    for r in 0..rows {
                        wf.dequantize_row_into(r, &mut row);
                        let exact: f32 = row
                            .iter()
                            .zip(&x[t * cols..(t + 1) * cols])
                            .map(|(a, b)| a * b)
                            .sum();
                        let tol = if ty == WeightType::F32 { 1e-4 } else { 0.05 };
                        assert!(
                            (out[t * rows + r] - exact).abs() < tol,
                            "{ty:?} n={n} t={t} r={r}"
                        );
                    }
                }
            }
        }
    }
}

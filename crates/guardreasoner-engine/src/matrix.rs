//! Weight matrices in their stored format, and the batched matrix product of the forward pass.

use crate::kernels::{self, interleaved, Isa, GROUP_COLS, MAX_COLS};
use crate::quant::{dequantize_row, Activations, BlockQ16, BlockQ8, WeightType, QK};
use rayon::prelude::*;

/// A `rows × cols` weight matrix, each row stored in format `ty` (the layout of
/// `nn.Linear.weight`: one row per output feature), row-major or, for Q8_0 and Q4_1 on
/// AVX-512 VNNI, with groups of rows interleaved ([`Matrix::prepare`], [`interleaved`]).
#[derive(Clone)]
pub struct Matrix {
    ty: WeightType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Vec<u8>,
    /// Rows interleaved by [`interleaved::GROUP`] (Q8_0 and Q4_1 only), in the layout for
    /// these activations.
    interleaved: Option<Activations>,
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
            interleaved: None,
        })
    }

    /// Lay the matrix out as `matmul` on `isa` runs it fastest with `acts`: Q8_0 and Q4_1
    /// matrices of whole row groups are interleaved for the AVX-512 VNNI kernels (2.2x the
    /// row-by-row rate for Q8_0 with 16-bit activations, measured in
    /// `examples/kernel_bench.rs`), in the layout for `acts` (an interleaved matrix is laid out
    /// again if it was for the other); everything else is kept as stored.
    pub fn prepare(&mut self, isa: Isa, acts: Activations) {
        if isa != Isa::Avx512 || !interleaved::supports(self.ty) {
            return;
        }
        let data = match self.interleaved {
            Some(from) if from == acts => return,
            Some(from) => interleaved::relaid(self.ty, from, acts, &self.data, self.row_bytes),
            None => match interleaved::interleave(self.ty, acts, &self.data, self.row_bytes) {
                Some(data) => data,
                None => return,
            },
        };
        self.data = data;
        self.interleaved = Some(acts);
    }

    /// [`Matrix::prepare`], by value.
    pub fn prepared_for(mut self, isa: Isa, acts: Activations) -> Matrix {
        self.prepare(isa, acts);
        self
    }

    /// The activations an interleaved matrix is laid out for (`None`: row-major; see
    /// [`Matrix::prepare`]).
    pub fn interleaved_for(&self) -> Option<Activations> {
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
        debug_assert!(self.interleaved.is_none());
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Row `r` as floats (embedding lookup).
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        if let Some(acts) = self.interleaved {
            let g = interleaved::GROUP;
            let group = &self.data[r / g * g * self.row_bytes..(r / g + 1) * g * self.row_bytes];
            let mut row = vec![0u8; self.row_bytes];
            interleaved::row_of(self.ty, acts, group, r % g, &mut row);
            return dequantize_row(self.ty, &row, out);
        }
        dequantize_row(self.ty, self.row(r), out);
    }

    /// Every element as f32, row-major.
    pub fn values(&self) -> Vec<f32> {
        let mut values = vec![0.0f32; self.rows * self.cols];
        for (r, row) in values.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.dequantize_row_into(r, row);
        }
        values
    }

    /// The same matrix stored as F32 (for reference comparisons).
    pub fn to_f32(&self) -> Matrix {
        Matrix::from_f32(self.rows, self.cols, &self.values()).expect("rows x cols values")
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

/// Scratch reused across matrix products (quantised activations: 16-bit, and 8-bit for
/// matrices interleaved for them).
#[derive(Default)]
pub struct MatmulScratch {
    q16: Vec<BlockQ16>,
    q8: Vec<BlockQ8>,
}

/// Rows handed to one quantised kernel call (its output buffer lives on the stack).
const ROWS_PER_CALL: usize = 64;

/// Up to this many groups of [`GROUP_COLS`] tokens, an interleaved product loops over its rows
/// outermost (each group of rows read once, from memory); beyond it (prefill), over the token
/// groups outermost, the task's rows re-read from L2 while the next task's are prefetched.
const ROWS_OUTER_GROUPS: usize = 4;

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
    let product = Product {
        w,
        x_offset: 0,
        out: 0,
        out_stride: w.rows,
        out_offset: 0,
        accumulate: false,
    };
    matmul_many(isa, &[product], x, w.cols, n_tokens, &mut [out], scratch);
}

/// One product of [`matmul_many`]: `outs[out][t * out_stride + out_offset + r]` is set to (or,
/// with `accumulate`, increased by) `Σ_k w[r][k] · x[t][x_offset + k]`.
#[derive(Clone, Copy)]
pub struct Product<'a> {
    pub w: &'a Matrix,
    /// First column of `x` the product reads (a multiple of 32 for quantised matrices).
    pub x_offset: usize,
    /// Index of the output buffer.
    pub out: usize,
    pub out_stride: usize,
    pub out_offset: usize,
    pub accumulate: bool,
}

/// Several products of the same activations `x` (`n_tokens × x_cols`) in one parallel pass:
/// the activations are quantised once, and a layer's parts (the stored matrices of an unfused
/// layer, a LoRA update's `A` beside the weights, its `B`s over their shares of `A x`) cost
/// one wake-up of the pool instead of one each. Products writing the same output must share
/// its stride and cover disjoint rows (checked: the tasks write concurrently).
pub fn matmul_many(
    isa: Isa,
    products: &[Product<'_>],
    x: &[f32],
    x_cols: usize,
    n_tokens: usize,
    outs: &mut [&mut [f32]],
    scratch: &mut MatmulScratch,
) {
    assert!(x.len() >= n_tokens * x_cols, "matmul: input size");
    for p in products {
        let out_len = outs.get(p.out).map_or(0, |o| o.len());
        assert!(
            p.x_offset + p.w.cols <= x_cols
                && p.out_offset + p.w.rows <= p.out_stride
                && n_tokens.saturating_sub(1) * p.out_stride + p.out_offset + p.w.rows <= out_len,
            "matmul: buffer sizes"
        );
        assert!(
            !p.w.ty.uses_quantised_activations() || p.x_offset.is_multiple_of(QK),
            "matmul: a quantised product must start at a block boundary"
        );
    }
    for (i, p) in products.iter().enumerate() {
        for q in &products[i + 1..] {
            assert!(
                p.out != q.out
                    || (p.out_stride == q.out_stride
                        && (p.out_offset + p.w.rows <= q.out_offset
                            || q.out_offset + q.w.rows <= p.out_offset)),
                "matmul: products writing one output overlap"
            );
        }
    }
    if n_tokens == 0 || products.is_empty() {
        return;
    }
    let x_blocks = x_cols / QK;
    let wants = |acts: Activations| {
        products.iter().any(|p| {
            p.w.ty.uses_quantised_activations()
                && p.w.interleaved.unwrap_or(Activations::Q16) == acts
        })
    };
    if wants(Activations::Q16) {
        assert!(x_cols.is_multiple_of(QK), "matmul: quantised input width");
        scratch.q16.resize(n_tokens * x_blocks, BlockQ16::default());
        scratch
            .q16
            .par_chunks_mut(x_blocks)
            .with_min_len(8)
            .zip(x.par_chunks(x_cols))
            .for_each(|(q, xs)| kernels::quantize_q16(isa, xs, q));
    }
    if wants(Activations::Q8) {
        assert!(x_cols.is_multiple_of(QK), "matmul: quantised input width");
        scratch.q8.resize(n_tokens * x_blocks, BlockQ8::default());
        scratch
            .q8
            .par_chunks_mut(x_blocks)
            .with_min_len(8)
            .zip(x.par_chunks(x_cols))
            .for_each(|(q, xs)| kernels::quantize_q8(isa, xs, q));
    }
    let (q16, q8) = (&scratch.q16[..], &scratch.q8[..]);
    let threads = rayon::current_num_threads().max(1);
    // Enough tasks to balance, few enough that scheduling stays cheap: a decode step's
    // matrix-vector product is only microseconds of work per thread.
    let tasks_per_thread = if n_tokens <= GROUP_COLS { 2 } else { 8 };
    // Chunks sized by the whole call's rows, so small products are not split finely.
    let total_rows: usize = products.iter().map(|p| p.w.rows).sum();
    let base_chunk = total_rows
        .div_ceil(threads * tasks_per_thread)
        .clamp(4, 256);
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new();
    for (i, p) in products.iter().enumerate() {
        let chunk = if p.w.interleaved.is_some() {
            base_chunk.next_multiple_of(interleaved::GROUP)
        } else {
            base_chunk
        };
        let mut r0 = 0;
        while r0 < p.w.rows {
            tasks.push((i, r0, (r0 + chunk).min(p.w.rows)));
            r0 += chunk;
        }
    }
    let outp: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let outp = &outp[..];
    tasks.into_par_iter().for_each(move |(i, r0, r1)| {
        let p = &products[i];
        let (w, cols) = (p.w, p.w.cols);
        let outp = outp[p.out];
        // `dots[i * n + c]` is row `r + i` for token `t0 + c`. The product's fields are read
        // into locals once: stores through the raw pointer would otherwise make the compiler
        // reload them per element.
        let (stride, offset, accumulate) = (p.out_stride, p.out_offset, p.accumulate);
        // SAFETY (both stores): (t0 + c, r + i) is inside this product's output (checked
        // above), row r + i of it belongs to this task only, and products write disjoint
        // elements.
        let at = move |t: usize, r: usize| unsafe { outp.0.add(t * stride + offset + r) };
        // `dots[i * n + c]` is row `r + i` for token `t0 + c` (the row-major kernels).
        let store_by_row = move |t0: usize, r: usize, n: usize, dots: &[f32]| {
            for (i, d) in dots.chunks_exact(n).enumerate() {
                for (c, &v) in d.iter().enumerate() {
                    let o = at(t0 + c, r + i);
                    unsafe { *o = if accumulate { *o + v } else { v } };
                }
            }
        };
        // `dots[c * k + i]` is row `r + i` for token `t0 + c` (the interleaved kernel): each
        // token's `k` rows are contiguous on both sides.
        let store_by_token = move |t0: usize, r: usize, k: usize, dots: &[f32]| {
            for (c, d) in dots.chunks_exact(k).enumerate() {
                // SAFETY: as above; the `k` elements from `at(t0 + c, r)` are rows r..r + k of
                // token t0 + c, and do not overlap `dots` (a local buffer).
                let o = unsafe { std::slice::from_raw_parts_mut(at(t0 + c, r), k) };
                if accumulate {
                    o.iter_mut().zip(d).for_each(|(o, v)| *o += v);
                } else {
                    o.copy_from_slice(d);
                }
            }
        };
        let mut dots = [0.0f32; MAX_COLS];
        let mut block_dots = [0.0f32; BLOCK_DOTS];
        // Tokens per kernel call: the interleaved kernel takes more vectors per unpacked block.
        let per_call = if w.interleaved.is_some() {
            GROUP_COLS
        } else {
            MAX_COLS
        };
        let groups = n_tokens.div_ceil(per_call);
        let step = if w.interleaved.is_some() {
            interleaved::GROUP
        } else if w.ty.uses_quantised_activations() {
            ROWS_PER_CALL
        } else {
            1
        };
        // Token `t0 + c`'s quantised activations, of `n` from `t0` (the last one again past
        // `n`).
        let tokens = |t0: usize, n: usize, c: usize| {
            let (blocks, first) = (cols / QK, p.x_offset / QK);
            let t = t0 + c.min(n - 1);
            t * x_blocks + first..t * x_blocks + first + blocks
        };
        // One interleaved group of rows from `r` against the tokens from `t0`.
        let group_call = |acts: Activations, t0: usize, r: usize, o: &mut [f32]| {
            let n = (n_tokens - t0).min(per_call);
            let data = &w.data[r * w.row_bytes..(r + step) * w.row_bytes];
            let o = &mut o[..step * n];
            match acts {
                Activations::Q16 => {
                    let xs: [&[BlockQ16]; GROUP_COLS] =
                        std::array::from_fn(|c| &q16[tokens(t0, n, c)]);
                    kernels::dot_q16_group(isa, w.ty, data, &xs[..n], o)
                }
                Activations::Q8 => {
                    let xs: [&[BlockQ8]; GROUP_COLS] =
                        std::array::from_fn(|c| &q8[tokens(t0, n, c)]);
                    kernels::dot_q8_group(isa, w.ty, data, &xs[..n], o)
                }
            }
            store_by_token(t0, r, step, o);
        };
        if let Some(acts) = w.interleaved.filter(|_| groups <= ROWS_OUTER_GROUPS) {
            // Few token groups (a decode batch): each group of rows is read from memory once
            // and used for every token group from L1, so the chunk needs no prefetching.
            for r in (r0..r1).step_by(step) {
                for t0 in (0..n_tokens).step_by(per_call) {
                    group_call(acts, t0, r, &mut block_dots);
                }
            }
            return;
        }
        // While the token groups after the first compute from cache, the next chunk's rows
        // (usually this thread's next task) are fetched into L2, a few lines after each kernel
        // call: a burst of prefetches would stall the core on the memory system's queues.
        let chunk = r1 - r0;
        let next = &w.data
            [(r1 * w.row_bytes).min(w.data.len())..((r1 + chunk) * w.row_bytes).min(w.data.len())];
        let calls = (groups.saturating_sub(1) * chunk.div_ceil(step)).max(1);
        let mut prefetch = next.chunks(next.len().div_ceil(calls).max(1));
        let mut t0 = 0;
        while t0 < n_tokens {
            let n = (n_tokens - t0).min(per_call);
            let mut fetch_next = || {
                if t0 > 0 {
                    if let Some(part) = prefetch.next() {
                        prefetch_l2(part);
                    }
                }
            };
            if let Some(acts) = w.interleaved {
                // One call per interleaved group.
                for r in (r0..r1).step_by(step) {
                    group_call(acts, t0, r, &mut block_dots);
                    fetch_next();
                }
            } else if w.ty.uses_quantised_activations() {
                let xs: [&[BlockQ16]; GROUP_COLS] = std::array::from_fn(|c| &q16[tokens(t0, n, c)]);
                // A call covers up to ROWS_PER_CALL rows.
                let mut r = r0;
                while r < r1 {
                    let k = (r1 - r).min(step);
                    let data = &w.data[r * w.row_bytes..(r + k) * w.row_bytes];
                    let o = &mut block_dots[..k * n];
                    kernels::dot_q16_rows(isa, w.ty, data, w.row_bytes, &xs[..n], o);
                    store_by_row(t0, r, n, o);
                    fetch_next();
                    r += k;
                }
            } else {
                let xs: [&[f32]; MAX_COLS] = std::array::from_fn(|c| {
                    let t = t0 + c.min(n - 1);
                    &x[t * x_cols + p.x_offset..t * x_cols + p.x_offset + cols]
                });
                for r in r0..r1 {
                    kernels::dot_f32(isa, w.ty, w.row(r), &xs[..n], &mut dots[..n]);
                    store_by_row(t0, r, n, &dots[..n]);
                    fetch_next();
                }
            }
            t0 += n;
        }
    });
}

/// Results of one kernel call: the larger of a row-major call's and an interleaved one's.
const BLOCK_DOTS: usize = if MAX_COLS * ROWS_PER_CALL > GROUP_COLS * interleaved::GROUP {
    MAX_COLS * ROWS_PER_CALL
} else {
    GROUP_COLS * interleaved::GROUP
};

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
            let packed = plain.clone().prepared_for(Isa::Avx512, Activations::Q16);
            assert_eq!(packed.interleaved_for(), Some(Activations::Q16));
            assert_eq!(
                plain
                    .clone()
                    .prepared_for(Isa::Avx2, Activations::Q8)
                    .interleaved_for(),
                None
            );
            let (mut a, mut b) = (vec![0.0; cols], vec![0.0; cols]);
            for r in 0..rows {
                plain.dequantize_row_into(r, &mut a);
                packed.dequantize_row_into(r, &mut b);
                assert_eq!(a, b, "row {r}");
            }
            let both = Matrix::concat_rows(&[&packed, &packed]).unwrap();
            assert!(both.interleaved_for().is_some() && both.rows() == 2 * rows);
            assert!(
                Matrix::concat_rows(&[&packed, &plain]).is_none(),
                "layouts do not mix"
            );
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            let mut packed8 = packed.clone();
            packed8.prepare(Isa::Avx512, Activations::Q8);
            assert_eq!(packed8.interleaved_for(), Some(Activations::Q8));
            for r in 0..rows {
                plain.dequantize_row_into(r, &mut a);
                packed8.dequantize_row_into(r, &mut b);
                assert_eq!(a, b, "row {r}, laid out for 8-bit activations");
            }
            // One token group; two (rows outermost); five (token groups outermost).
            for (n, packed, bits) in [1usize, 4, 7, 9, 5 * GROUP_COLS - 3]
                .into_iter()
                .flat_map(|n| [(n, &packed, 16.0f32), (n, &packed8, 8.0)])
            {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 13 % 31) as f32 - 15.0) / 10.0)
                    .collect();
                for isa in Isa::all_available() {
                    let (mut want, mut got) = (vec![0.0; n * rows], vec![0.0; n * rows]);
                    let mut scratch = MatmulScratch::default();
                    pool.install(|| {
                        matmul(isa, &plain, &x, n, &mut want, &mut scratch);
                        matmul(isa, packed, &x, n, &mut got, &mut scratch);
                    });
                    // Each block's rounding error is at most half a step of its activations
                    // (8 or 16 bits; the row-major kernels take 16) times its weights.
                    let steps = 2.0 * (2.0f32.powf(bits - 1.0) - 1.0);
                    let mut w = vec![0.0; cols];
                    for r in 0..rows {
                        plain.dequantize_row_into(r, &mut w);
                        for t in 0..n {
                            let xt = &x[t * cols..(t + 1) * cols];
                            let bound: f32 = xt
                                .chunks(QK)
                                .zip(w.chunks(QK))
                                .map(|(xb, wb)| {
                                    let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                                    amax / steps * wb.iter().map(|v| v.abs()).sum::<f32>()
                                })
                                .sum();
                            let (g, e) = (got[t * rows + r], want[t * rows + r]);
                            // (1e-4 covers the 16-bit row-major reference's own rounding.)
                            assert!(
                                (g - e).abs() <= 1.01 * bound + 1e-4,
                                "{isa:?} n={n} {bits}-bit: {g} vs {e} (bound {bound})"
                            );
                        }
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

    /// Products of mixed formats writing side by side into one output, reading the input at
    /// an offset, and adding into what is there, in one pass: each equals its own `matmul`.
    #[test]
    fn many_products_in_one_pass_match_separate_products() {
        let (x_cols, n) = (128usize, 5usize);
        let x: Vec<f32> = (0..n * x_cols)
            .map(|i| ((i * 17 % 41) as f32 - 20.0) / 15.0)
            .collect();
        // The two quantised matrices laid out for different activations (where they are
        // interleaved), so one pass quantises the input both ways.
        let make = |ty: WeightType, rows: usize, cols: usize, seed: usize, acts: Activations| {
            let values: Vec<f32> = (0..rows * cols)
                .map(|i| (((i + seed) * 29 % 83) as f32 - 41.0) / 50.0)
                .collect();
            let data = values
                .chunks(cols)
                .flat_map(|r| quantize_row(ty, r))
                .collect();
            Matrix::new(ty, rows, cols, data)
                .unwrap()
                .prepared_for(Isa::detect(), acts)
        };
        let q = make(WeightType::Q4_1, 32, 96, 1, Activations::Q8); // reads x[.., 32..128]
        let f = make(WeightType::F32, 8, 64, 2, Activations::Q8); // reads x[.., 0..64]
        let acc = make(WeightType::Q8_0, 16, 64, 3, Activations::Q16); // reads x[.., 64..128], adds
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let slice = |from: usize, cols: usize| -> Vec<f32> {
            (0..n)
                .flat_map(|t| x[t * x_cols + from..t * x_cols + from + cols].to_vec())
                .collect()
        };
        for isa in Isa::all_available() {
            let (mut side, mut other) = (vec![0.0f32; n * 40], vec![1.5f32; n * 16]);
            let products = [
                Product {
                    w: &q,
                    x_offset: 32,
                    out: 0,
                    out_stride: 40,
                    out_offset: 0,
                    accumulate: false,
                },
                Product {
                    w: &f,
                    x_offset: 0,
                    out: 0,
                    out_stride: 40,
                    out_offset: 32,
                    accumulate: false,
                },
                Product {
                    w: &acc,
                    x_offset: 64,
                    out: 1,
                    out_stride: 16,
                    out_offset: 0,
                    accumulate: true,
                },
            ];
            pool.install(|| {
                matmul_many(
                    isa,
                    &products,
                    &x,
                    x_cols,
                    n,
                    &mut [&mut side, &mut other],
                    &mut MatmulScratch::default(),
                )
            });
            let one = |w: &Matrix, input: &[f32]| {
                let mut out = vec![0.0f32; n * w.rows()];
                pool.install(|| matmul(isa, w, input, n, &mut out, &mut MatmulScratch::default()));
                out
            };
            let (wq, wf, wa) = (
                one(&q, &slice(32, 96)),
                one(&f, &slice(0, 64)),
                one(&acc, &slice(64, 64)),
            );
            for t in 0..n {
                assert_eq!(
                    &side[t * 40..t * 40 + 32],
                    &wq[t * 32..(t + 1) * 32],
                    "{isa:?}"
                );
                assert_eq!(
                    &side[t * 40 + 32..(t + 1) * 40],
                    &wf[t * 8..(t + 1) * 8],
                    "{isa:?}"
                );
                for (g, w) in other[t * 16..(t + 1) * 16]
                    .iter()
                    .zip(&wa[t * 16..(t + 1) * 16])
                {
                    assert_eq!(*g, 1.5 + w, "{isa:?}");
                }
            }
        }
    }

    /// Two products writing overlapping rows of one output would race: refused.
    #[test]
    #[should_panic(expected = "products writing one output overlap")]
    fn overlapping_products_are_refused() {
        let w = Matrix::from_f32(4, 32, &[0.5; 4 * 32]).unwrap();
        let x = vec![1.0f32; 32];
        let mut out = vec![0.0f32; 6];
        let product = |out_offset| Product {
            w: &w,
            x_offset: 0,
            out: 0,
            out_stride: 6,
            out_offset,
            accumulate: false,
        };
        matmul_many(
            Isa::detect(),
            &[product(0), product(2)],
            &x,
            32,
            1,
            &mut [&mut out],
            &mut MatmulScratch::default(),
        );
    }
}

//! Q8_0 and Q4_1 weights with [`GROUP`] rows interleaved, the layout of the AVX-512 VNNI
//! matrix kernels.
//!
//! In the row-major layout a kernel dots one row at a time: every 32-element block ends in a
//! horizontal sum and a float multiply-add with that block's scales, for each activation vector,
//! and that per-block float work (not the multiplies) bounds prefill and batched decode. With
//! sixteen rows interleaved, one 512-bit lane holds one row, and the block's scales are applied
//! to all sixteen rows by one multiply-add. Two layouts, one per activation precision
//! ([`Activations`]):
//! - 16-bit activations: `vpdpwssd` multiplies a pair of elements of sixteen rows by a
//!   broadcast pair of 16-bit activations;
//! - 8-bit activations: `vpdpbusd` multiplies a quad of elements (unsigned bytes) by a broadcast
//!   quad of signed 8-bit activations: twice the multiply-adds per instruction.
//!
//! A group (rows `16g..16g + 16`) is stored block after block, each as many bytes as the
//! sixteen row-major blocks it replaces:
//! - Q8_0 (`16 × 34` bytes): the sixteen rows' f16 scales (32 bytes), then the weights: for
//!   16-bit activations, for each pair of elements `2k, 2k + 1` the sixteen rows' two weights
//!   (32 bytes); for 8-bit ones, for each quad `4t..4t + 4` the sixteen rows' four weights plus
//!   128, as unsigned bytes (64 bytes: one register).
//! - Q4_1 (`16 × 20` bytes): the sixteen f16 scales, the sixteen f16 minima, then the nibbles:
//!   for 16-bit activations, for each pair `2k, 2k + 1` one byte per row holding both (`2k` in
//!   the low nibble); for 8-bit ones four registers, row `j`'s byte `i < 4` of register `r`
//!   holding element `8r + i` in its low nibble and `8r + 4 + i` in its high one, so a mask
//!   gives one quad and a shift and mask the next.

use crate::quant::{Activations, BlockQ16, BlockQ8, WeightType, QK};

/// Rows interleaved in one group.
pub const GROUP: usize = 16;

/// Whether rows of `ty` can be interleaved.
pub fn supports(ty: WeightType) -> bool {
    matches!(ty, WeightType::Q8_0 | WeightType::Q4_1)
}

/// Bytes of one interleaved block of a group of `ty` rows.
pub fn group_block(ty: WeightType) -> usize {
    GROUP * ty.block_bytes()
}

/// Where the per-row header (scales, then minima for Q4_1) ends within a group block.
pub(crate) fn header(ty: WeightType) -> usize {
    match ty {
        WeightType::Q4_1 => 4 * GROUP,
        _ => 2 * GROUP,
    }
}

/// The 4-bit weight `i` (`< 32`) of a row-major Q4_1 block's nibbles (`16` bytes, ggml order:
/// element `i < 16` in the low nibble of byte `i`, element `i + 16` in its high nibble).
fn nibble(qs: &[u8], i: usize) -> u8 {
    if i < QK / 2 {
        qs[i] & 0x0F
    } else {
        qs[i - QK / 2] >> 4
    }
}

/// Interleaves row-major rows of `ty` (`row_bytes` each, a multiple of [`GROUP`] rows) in the
/// layout for `acts`.
pub fn interleave(
    ty: WeightType,
    acts: Activations,
    rows: &[u8],
    row_bytes: usize,
) -> Option<Vec<u8>> {
    let bb = ty.block_bytes();
    if !supports(ty)
        || row_bytes == 0
        || !row_bytes.is_multiple_of(bb)
        || !rows.len().is_multiple_of(row_bytes * GROUP)
    {
        return None;
    }
    let (blocks, gb) = (row_bytes / bb, group_block(ty));
    let mut out = vec![0u8; rows.len()];
    for (group, dst) in rows
        .chunks_exact(row_bytes * GROUP)
        .zip(out.chunks_exact_mut(row_bytes * GROUP))
    {
        for b in 0..blocks {
            let d = &mut dst[b * gb..(b + 1) * gb];
            for (j, row) in group.chunks_exact(row_bytes).enumerate() {
                let src = &row[b * bb..(b + 1) * bb];
                d[2 * j..2 * j + 2].copy_from_slice(&src[..2]);
                if ty == WeightType::Q4_1 {
                    d[2 * GROUP + 2 * j..2 * GROUP + 2 * j + 2].copy_from_slice(&src[2..4]);
                }
                for e in 0..QK {
                    let v = if ty == WeightType::Q4_1 {
                        nibble(&src[4..], e)
                    } else {
                        src[2 + e]
                    };
                    set_weight(ty, acts, d, j, e, v);
                }
            }
        }
    }
    Some(out)
}

/// Row `j` (`< GROUP`) of an interleaved group of `ty` (in the layout for `acts`), back in the
/// row-major layout.
pub fn row_of(ty: WeightType, acts: Activations, group: &[u8], j: usize, out: &mut [u8]) {
    debug_assert!(j < GROUP && group.len() == out.len() * GROUP);
    for (src, d) in group
        .chunks_exact(group_block(ty))
        .zip(out.chunks_exact_mut(ty.block_bytes()))
    {
        d[..2].copy_from_slice(&src[2 * j..2 * j + 2]);
        if ty == WeightType::Q4_1 {
            d[2..4].copy_from_slice(&src[2 * GROUP + 2 * j..2 * GROUP + 2 * j + 2]);
            let qs = &mut d[4..];
            qs.fill(0);
            for e in 0..QK {
                let v = weight(ty, acts, src, j, e) as u8;
                if e < QK / 2 {
                    qs[e] |= v;
                } else {
                    qs[e - QK / 2] |= v << 4;
                }
            }
        } else {
            for e in 0..QK {
                d[2 + e] = weight(ty, acts, src, j, e) as u8;
            }
        }
    }
}

/// Where element `e` (`< 32`) of row `j` sits in an interleaved block (after its header): the
/// byte, and for Q4_1 whether it is the byte's high nibble.
fn place(ty: WeightType, acts: Activations, j: usize, e: usize) -> (usize, bool) {
    let head = header(ty);
    match (ty, acts) {
        (WeightType::Q4_1, Activations::Q16) => (head + e / 2 * GROUP + j, e % 2 == 1),
        (WeightType::Q4_1, Activations::Q8) => {
            let (r, i) = (e / 8, e % 8);
            (head + r * 4 * GROUP + 4 * j + i % 4, i >= 4)
        }
        (_, Activations::Q16) => (head + e / 2 * 2 * GROUP + 2 * j + e % 2, false),
        (_, Activations::Q8) => (head + e / 4 * 4 * GROUP + 4 * j + e % 4, false),
    }
}

/// Stores element `e` of row `j` (`v`: the 4-bit value for Q4_1, the weight's byte for Q8_0).
fn set_weight(ty: WeightType, acts: Activations, blk: &mut [u8], j: usize, e: usize, v: u8) {
    let (at, high) = place(ty, acts, j, e);
    match (ty, acts) {
        (WeightType::Q4_1, _) => blk[at] |= if high { v << 4 } else { v },
        (_, Activations::Q8) => blk[at] = v ^ 0x80,
        _ => blk[at] = v,
    }
}

/// Element `e` of row `j` in one interleaved block of `ty`: the 4-bit value for Q4_1, the
/// signed weight for Q8_0.
fn weight(ty: WeightType, acts: Activations, blk: &[u8], j: usize, e: usize) -> i32 {
    let (at, high) = place(ty, acts, j, e);
    match (ty, acts) {
        (WeightType::Q4_1, _) => (if high { blk[at] >> 4 } else { blk[at] & 0x0F }) as i32,
        (_, Activations::Q8) => (blk[at] ^ 0x80) as i8 as i32,
        _ => blk[at] as i8 as i32,
    }
}

/// Whole groups of `ty` rows interleaved for `from`, laid out again for `to`.
pub fn relaid(
    ty: WeightType,
    from: Activations,
    to: Activations,
    data: &[u8],
    row_bytes: usize,
) -> Vec<u8> {
    if from == to {
        return data.to_vec();
    }
    let mut rows = vec![0u8; data.len()];
    for (group, out) in data
        .chunks_exact(GROUP * row_bytes)
        .zip(rows.chunks_exact_mut(GROUP * row_bytes))
    {
        for (j, row) in out.chunks_exact_mut(row_bytes).enumerate() {
            row_of(ty, from, group, j, row);
        }
    }
    interleave(ty, to, &rows, row_bytes).expect("whole groups, as before")
}

/// `out[c * GROUP + j] = row_j · xs[c]` for the sixteen rows of one group of `ty` interleaved
/// for 16-bit activations (portable reference; each block's integer sum is scaled by one fused
/// multiply-add, and a Q4_1 block's minimum applied by a second, as in the AVX-512 kernel, so
/// both give the same floats).
pub fn dot_q16_group(ty: WeightType, group: &[u8], xs: &[&[BlockQ16]], out: &mut [f32]) {
    dot_group(
        ty,
        Activations::Q16,
        group,
        xs,
        out,
        |b| (b.d, b.s),
        |b, e| b.qs[e] as i32,
    )
}

/// [`dot_q16_group`] for a group interleaved for 8-bit activations.
pub fn dot_q8_group(ty: WeightType, group: &[u8], xs: &[&[BlockQ8]], out: &mut [f32]) {
    dot_group(
        ty,
        Activations::Q8,
        group,
        xs,
        out,
        |b| (b.d, b.s),
        |b, e| b.qs[e] as i32,
    )
}

fn dot_group<B>(
    ty: WeightType,
    acts: Activations,
    group: &[u8],
    xs: &[&[B]],
    out: &mut [f32],
    scales: impl Fn(&B) -> (f32, f32),
    value: impl Fn(&B, usize) -> i32,
) {
    let n = xs.len();
    debug_assert!(out.len() >= GROUP * n);
    let f16 = |b: &[u8], at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    for (c, x) in xs.iter().enumerate() {
        let mut acc = [0.0f32; GROUP];
        for (blk, xb) in group.chunks_exact(group_block(ty)).zip(x.iter()) {
            let (d, s) = scales(xb);
            for (j, a) in acc.iter_mut().enumerate() {
                let sum: i32 = (0..QK)
                    .map(|e| weight(ty, acts, blk, j, e) * value(xb, e))
                    .sum();
                *a = (sum as f32).mul_add(f16(blk, 2 * j) * d, *a);
                if ty == WeightType::Q4_1 {
                    *a = f16(blk, 2 * GROUP + 2 * j).mul_add(s, *a);
                }
            }
        }
        out[c * GROUP..(c + 1) * GROUP].copy_from_slice(&acc);
    }
}

//! Q8_0 weights with [`GROUP`] rows interleaved, the layout of the AVX-512 VNNI matrix kernel.
//!
//! In the row-major layout a kernel dots one row at a time: every 32-element block ends in a
//! horizontal sum and a float multiply-add with that block's scales, for each activation vector,
//! and that per-block float work (not the multiplies) bounds prefill and batched decode. With
//! sixteen rows interleaved, one 512-bit lane holds one row: `vpdpwssd` accumulates a whole
//! block for sixteen rows in sixteen instructions without any horizontal sum, and the block's
//! scales are applied to all sixteen rows by one multiply-add.
//!
//! Layout of a group (rows `16g..16g + 16`), block after block, each `16 × 34` bytes like the
//! row-major rows it replaces: the sixteen rows' f16 scales (32 bytes), then for each pair of
//! elements `2k, 2k + 1` (`k < 16`) the sixteen rows' two quantised weights (32 bytes).

use crate::quant::{BlockQ16, QK};

/// Rows interleaved in one group.
pub const GROUP: usize = 16;
/// Bytes of one Q8_0 block (an f16 scale and 32 `i8`).
const BLOCK: usize = 2 + QK;
/// Bytes of one interleaved block of a group.
pub const GROUP_BLOCK: usize = GROUP * BLOCK;

/// Interleaves row-major Q8_0 rows (`row_bytes` each, a multiple of [`GROUP`] rows).
pub fn interleave(rows: &[u8], row_bytes: usize) -> Option<Vec<u8>> {
    if row_bytes == 0
        || !row_bytes.is_multiple_of(BLOCK)
        || !rows.len().is_multiple_of(row_bytes * GROUP)
    {
        return None;
    }
    let blocks = row_bytes / BLOCK;
    let mut out = vec![0u8; rows.len()];
    for (group, dst) in rows
        .chunks_exact(row_bytes * GROUP)
        .zip(out.chunks_exact_mut(row_bytes * GROUP))
    {
        for b in 0..blocks {
            let d = &mut dst[b * GROUP_BLOCK..(b + 1) * GROUP_BLOCK];
            for (j, row) in group.chunks_exact(row_bytes).enumerate() {
                let src = &row[b * BLOCK..(b + 1) * BLOCK];
                d[2 * j..2 * j + 2].copy_from_slice(&src[..2]);
                for k in 0..QK / 2 {
                    let at = 32 + k * 32 + 2 * j;
                    d[at..at + 2].copy_from_slice(&src[2 + 2 * k..4 + 2 * k]);
                }
            }
        }
    }
    Some(out)
}

/// Row `j` (`< GROUP`) of an interleaved group, back in the row-major Q8_0 layout.
pub fn row_of(group: &[u8], j: usize, out: &mut [u8]) {
    debug_assert!(j < GROUP && group.len() == out.len() * GROUP);
    for (d, src) in group
        .chunks_exact(GROUP_BLOCK)
        .zip(out.chunks_exact_mut(BLOCK))
        .map(|(s, d)| (d, s))
    {
        d[..2].copy_from_slice(&src[2 * j..2 * j + 2]);
        for k in 0..QK / 2 {
            let at = 32 + k * 32 + 2 * j;
            d[2 + 2 * k..4 + 2 * k].copy_from_slice(&src[at..at + 2]);
        }
    }
}

/// `out[j * n + c] = row_j · xs[c]` for the sixteen rows of one interleaved group (portable
/// reference; each block's integer sum is scaled by one fused multiply-add, as in the
/// AVX-512 kernel, so both give the same floats).
pub fn dot_q16_group(group: &[u8], xs: &[&[BlockQ16]], out: &mut [f32]) {
    let n = xs.len();
    debug_assert!(out.len() >= GROUP * n);
    for (c, x) in xs.iter().enumerate() {
        let mut acc = [0.0f32; GROUP];
        for (blk, xb) in group.chunks_exact(GROUP_BLOCK).zip(x.iter()) {
            for (j, a) in acc.iter_mut().enumerate() {
                let d = half::f16::from_le_bytes([blk[2 * j], blk[2 * j + 1]]).to_f32();
                let mut s = 0i32;
                for k in 0..QK / 2 {
                    let at = 32 + k * 32 + 2 * j;
                    s += blk[at] as i8 as i32 * xb.qs[2 * k] as i32
                        + blk[at + 1] as i8 as i32 * xb.qs[2 * k + 1] as i32;
                }
                *a = (s as f32).mul_add(d * xb.d, *a);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            out[j * n + c] = *a;
        }
    }
}

//! Q8_0 and Q4_1 weights with [`GROUP`] rows interleaved, the layout of the AVX-512 VNNI
//! matrix kernel.
//!
//! In the row-major layout a kernel dots one row at a time: every 32-element block ends in a
//! horizontal sum and a float multiply-add with that block's scales, for each activation vector,
//! and that per-block float work (not the multiplies) bounds prefill and batched decode. With
//! sixteen rows interleaved, one 512-bit lane holds one row: `vpdpbusd` accumulates four
//! elements of sixteen rows per instruction (unsigned weights times signed 8-bit activations)
//! without any horizontal sum, and the block's scales are applied to all sixteen rows by one
//! multiply-add.
//!
//! A group (rows `16g..16g + 16`) is stored block after block, each as many bytes as the
//! sixteen row-major blocks it replaces:
//! - Q8_0 (`16 × 34` bytes): the sixteen rows' f16 scales (32 bytes), then for each quad of
//!   elements `4t..4t + 4` (`t < 8`) the sixteen rows' four weights plus 128, as unsigned
//!   bytes (64 bytes: one register).
//! - Q4_1 (`16 × 20` bytes): the sixteen f16 scales, the sixteen f16 minima, then four
//!   registers of nibbles: in register `r < 4`, row `j`'s byte `i < 4` holds element
//!   `8r + i` in its low nibble and `8r + 4 + i` in its high one, so a mask gives one quad and
//!   a shift and mask the next.

use crate::quant::{BlockQ8, WeightType, QK};

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

/// Interleaves row-major rows of `ty` (`row_bytes` each, a multiple of [`GROUP`] rows).
pub fn interleave(ty: WeightType, rows: &[u8], row_bytes: usize) -> Option<Vec<u8>> {
    let bb = ty.block_bytes();
    if !supports(ty)
        || row_bytes == 0
        || !row_bytes.is_multiple_of(bb)
        || !rows.len().is_multiple_of(row_bytes * GROUP)
    {
        return None;
    }
    let (blocks, gb, head) = (row_bytes / bb, group_block(ty), header(ty));
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
                    let qs = &src[4..];
                    for r in 0..QK / 8 {
                        for i in 0..4 {
                            d[head + r * 4 * GROUP + 4 * j + i] =
                                nibble(qs, 8 * r + i) | nibble(qs, 8 * r + 4 + i) << 4;
                        }
                    }
                } else {
                    for e in 0..QK {
                        d[head + quad_byte(e, j)] = src[2 + e] ^ 0x80;
                    }
                }
            }
        }
    }
    Some(out)
}

/// Row `j` (`< GROUP`) of an interleaved group of `ty`, back in the row-major layout.
pub fn row_of(ty: WeightType, group: &[u8], j: usize, out: &mut [u8]) {
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
                let v = weight(ty, src, j, e) as u8;
                if e < QK / 2 {
                    qs[e] |= v;
                } else {
                    qs[e - QK / 2] |= v << 4;
                }
            }
        } else {
            for e in 0..QK {
                d[2 + e] = weight(ty, src, j, e) as u8;
            }
        }
    }
}

/// Where element `e` (`< 32`) of row `j` sits among an interleaved block's quads (after the
/// header): quad `e / 4`, the row's lane, the element's byte in it.
fn quad_byte(e: usize, j: usize) -> usize {
    e / 4 * 4 * GROUP + 4 * j + e % 4
}

/// Element `e` of row `j` in one interleaved block of `ty`: the 4-bit value for Q4_1, the
/// signed weight for Q8_0.
fn weight(ty: WeightType, blk: &[u8], j: usize, e: usize) -> i32 {
    let head = header(ty);
    if ty == WeightType::Q4_1 {
        let (r, i) = (e / 8, e % 8);
        let both = blk[head + r * 4 * GROUP + 4 * j + i % 4];
        (if i < 4 { both & 0x0F } else { both >> 4 }) as i32
    } else {
        (blk[head + quad_byte(e, j)] ^ 0x80) as i8 as i32
    }
}

/// `out[c * GROUP + j] = row_j · xs[c]` for the sixteen rows of one interleaved group of `ty`
/// (portable reference; each block's integer sum is scaled by one fused multiply-add, and a
/// Q4_1 block's minimum applied by a second, as in the AVX-512 kernel, so both give the same
/// floats).
pub fn dot_q8_group(ty: WeightType, group: &[u8], xs: &[&[BlockQ8]], out: &mut [f32]) {
    let n = xs.len();
    debug_assert!(out.len() >= GROUP * n);
    let f16 = |b: &[u8], at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    for (c, x) in xs.iter().enumerate() {
        let mut acc = [0.0f32; GROUP];
        for (blk, xb) in group.chunks_exact(group_block(ty)).zip(x.iter()) {
            for (j, a) in acc.iter_mut().enumerate() {
                let s: i32 = (0..QK)
                    .map(|e| weight(ty, blk, j, e) * xb.qs[e] as i32)
                    .sum();
                *a = (s as f32).mul_add(f16(blk, 2 * j) * xb.d, *a);
                if ty == WeightType::Q4_1 {
                    *a = f16(blk, 2 * GROUP + 2 * j).mul_add(xb.s, *a);
                }
            }
        }
        out[c * GROUP..(c + 1) * GROUP].copy_from_slice(&acc);
    }
}

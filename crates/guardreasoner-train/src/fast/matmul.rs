//! Matrix products over `gemm` on raw strided f32 matrices.

use super::*;

/// `dst[m x n] (+)= alpha * op(a) op(b)` on raw strided matrices (row stride, column stride).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn mm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
    acc: bool,
    alpha: f32,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for i in 0..m {
                std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n).fill(0.0);
            }
        }
        return;
    }
    let par = if parallel && m * n * k >= 1 << 18 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        acc,
        a,
        a_cs as isize,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        1.0,
        alpha,
        false,
        false,
        false,
        par,
    );
}

/// `dst[m x n] (+)= alpha * op(a) op(b)` with `a` stored `[m, k]` (or `[k, m]` when `ta`) and `b`
/// stored `[k, n]` (or `[n, k]` when `tb`), all row-major and contiguous.
#[allow(clippy::too_many_arguments)]
pub(super) fn mm(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    acc: bool,
    alpha: f32,
) {
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    let (a_rs, a_cs) = if ta { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if tb { (1, k) } else { (n, 1) };
    // SAFETY: the asserts above bound every index the strides reach.
    unsafe {
        mm_raw(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            n,
            a.as_ptr(),
            a_rs,
            a_cs,
            b.as_ptr(),
            b_rs,
            b_cs,
            acc,
            alpha,
            true,
        )
    }
}

#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: used only to let parallel tasks write disjoint parts of one buffer.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

//! Throughput of the quantised dot-product kernels on each instruction set this CPU has, for
//! one to four activation vectors, in two regimes: a 160k-row matrix (92 MB for Q4_1, larger
//! than any cache) streamed from memory, as one decoded token reads the weights; and a 256-row
//! block read again and again from cache, as `matmul` re-reads its row chunk for every further
//! group of tokens in prefill and batched decode:
//! `cargo run --release -p guardreasoner-engine --example kernel_bench`.
//! The figures are relative: compare instruction sets within one run.
//!
//! Then decode-time attention over the 8-bit key/value cache, as SmolLM2-135M batches it (16
//! sequences of ~700 positions in two segments, GQA groups of three 64-element heads; and
//! sixteen sequences times thirty layers, which only memory holds), per
//! instruction set, alternating them. `-- attend` runs only this part.

use guardreasoner_engine::kernels::{
    attend, dot_q16_group, dot_q16_rows, dot_q8_group, interleaved, Isa, KvElem, KvHalf, KvLayout,
    KvSeg, KV_Q8_BLOCK,
};
use guardreasoner_engine::quant::{
    quantize_row, quantize_row_q16, quantize_row_q8, Activations, BlockQ16, BlockQ8, WeightType,
};
use std::time::Instant;

fn main() {
    if std::env::args().nth(1).as_deref() != Some("attend") {
        dot_products();
    }
    // One sequence's cache stays in L2 (compute); sixteen come from L3; sixteen sequences'
    // thirty layers (one decode step of the guard batch, ~130 MB) from memory.
    attention(1);
    attention(16);
    attention(16 * 30);
}

/// One buffer of 8-bit keys or values: (elements, scales).
type Quantised = (Vec<i8>, Vec<f32>);

/// One group's attention: (segments in rows, the same blocked, group, scratch, output).
type Kernel = dyn FnMut(&[KvSeg<'_, i8>], &[KvSeg<'_, i8>], usize, &mut Vec<f32>, &mut [f32]);

fn attention(seqs: usize) {
    const HEADS: usize = 3;
    const D: usize = 64;
    const GROUPS: usize = 3;
    const STRIDE: usize = GROUPS * D;
    const LENS: [usize; 2] = [301, 400];
    let total: usize = LENS.iter().sum();
    // Each sequence's own cache, as quantised values of a smooth pseudo-random signal.
    let mut state = 1u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let caches: Vec<[Quantised; 2]> = (0..seqs)
        .map(|_| {
            std::array::from_fn(|_| {
                let x: Vec<f32> = (0..total * STRIDE).map(|_| next()).collect();
                let mut q = vec![0i8; x.len()];
                let mut s = vec![0.0f32; x.len() / KV_Q8_BLOCK];
                i8::store(&x, &mut q, &mut s);
                (q, s)
            })
        })
        .collect();
    let q: Vec<f32> = (0..GROUPS * HEADS * D).map(|_| next() * 2.0).collect();
    let segs: Vec<[KvSeg<'_, i8>; 2]> = caches
        .iter()
        .map(|[k, v]| {
            let at = LENS[0] * STRIDE;
            [
                KvSeg {
                    k: &k.0[..at],
                    v: &v.0[..at],
                    k_scale: &k.1,
                    v_scale: &v.1,
                    len: LENS[0],
                    layout: KvLayout::Rows,
                },
                KvSeg {
                    k: &k.0[at..],
                    v: &v.0[at..],
                    k_scale: &k.1[at / KV_Q8_BLOCK..],
                    v_scale: &v.1[at / KV_Q8_BLOCK..],
                    len: LENS[1],
                    layout: KvLayout::Rows,
                },
            ]
        })
        .collect();
    // The same segments in the blocked layout the engine uses on AVX-512 VNNI.
    let relaid = |(rows, scales): &Quantised, start: usize, len: usize, half: KvHalf| {
        let l = KvLayout::Blocked;
        let n = l.elements(len, STRIDE);
        let (mut data, mut sc) = (vec![0i8; n], vec![0.0f32; n / KV_Q8_BLOCK]);
        for p in 0..len {
            for e in 0..STRIDE {
                let i = (start + p) * STRIDE + e;
                data[l.index(half, p, e, STRIDE)] = rows[i];
                sc[l.scale_index(p, e, STRIDE)] = scales[i / KV_Q8_BLOCK];
            }
        }
        (data, sc)
    };
    let blocked: Vec<[[Quantised; 2]; 2]> = caches
        .iter()
        .map(|[k, v]| {
            [(0, LENS[0]), (LENS[0], LENS[1])].map(|(start, len)| {
                [
                    relaid(k, start, len, KvHalf::Keys),
                    relaid(v, start, len, KvHalf::Values),
                ]
            })
        })
        .collect();
    let blocked_segs: Vec<[KvSeg<'_, i8>; 2]> = blocked
        .iter()
        .map(|parts| {
            std::array::from_fn(|i| {
                let [k, v] = &parts[i];
                KvSeg {
                    k: &k.0,
                    v: &v.0,
                    k_scale: &k.1,
                    v_scale: &v.1,
                    len: LENS[i],
                    layout: KvLayout::Blocked,
                }
            })
        })
        .collect();
    println!(
        "attention, 8-bit cache ({seqs} sequence(s) x {total} positions in two segments, \
         {GROUPS} groups of {HEADS} heads x {D}):"
    );
    let mut scores = Vec::new();
    let mut out = vec![0.0f32; HEADS * D];
    // One decode step's attention for every sequence and group, `reps` times: ns per
    // (sequence, group).
    let mut time = |run: &mut Kernel| {
        let reps = (32 / seqs).max(1);
        let t = thread_cpu_ns();
        for _ in 0..reps {
            for (s, b) in segs.iter().zip(&blocked_segs) {
                for g in 0..GROUPS {
                    run(s, b, g, &mut scores, &mut out);
                }
            }
        }
        (thread_cpu_ns() - t) as f64 / (reps * seqs * GROUPS) as f64
    };
    let mut kernels: Vec<(String, Box<Kernel>)> = Vec::new();
    if Isa::all_available().contains(&Isa::Avx512) {
        let qa = q.clone();
        kernels.push((
            "avx512-vnni blocked".to_string(),
            Box::new(move |_, b, g, scores, out| {
                let qg = &qa[g * HEADS * D..][..HEADS * D];
                attend(Isa::Avx512, qg, D, b, STRIDE, g * D, 0.125, scores, out)
            }),
        ));
    }
    for isa in Isa::all_available() {
        if isa == Isa::Scalar {
            continue;
        }
        let qa = q.clone();
        kernels.push((
            isa.name().to_string(),
            Box::new(move |s, _, g, scores, out| {
                let qg = &qa[g * HEADS * D..][..HEADS * D];
                attend(isa, qg, D, s, STRIDE, g * D, 0.125, scores, out)
            }),
        ));
    }
    // Short alternating trials in thread CPU time, keeping each kernel's best and median: other
    // work on the machine only ever slows a trial down.
    let mut trials: Vec<Vec<f64>> = vec![Vec::new(); kernels.len()];
    for _ in 0..40 {
        for ((_, run), t) in kernels.iter_mut().zip(&mut trials) {
            t.push(time(&mut **run));
        }
    }
    for ((name, _), t) in kernels.iter().zip(&mut trials) {
        t.sort_by(f64::total_cmp);
        let (best, median) = (t[0], t[t.len() / 2]);
        let rate = (total * HEADS) as f64 / best;
        println!(
            "  {name:<18} best {best:>6.0} ns, median {median:>6.0} ns per (sequence, group) \
             ({rate:.2} G position-heads/s)"
        );
    }
}

/// CPU time of this thread: unlike wall time, it stops while other work on the machine runs
/// (caches are still shared).
fn thread_cpu_ns() -> u64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid `struct timespec` (64-bit Linux layout) for the call to fill.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.sec as u64 * 1_000_000_000 + ts.nsec as u64
}

fn dot_products() {
    const COLS: usize = 576;
    const CHUNK: usize = 64;
    let values: Vec<f32> = (0..COLS)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let mut x = vec![BlockQ16::default(); COLS / 32];
    quantize_row_q16(&values, &mut x);
    let all = [&x[..]; 8];
    let mut x8 = vec![BlockQ8::default(); COLS / 32];
    quantize_row_q8(&values, &mut x8);
    let all8 = [&x8[..]; 8];
    for (regime, rows, reps) in [("memory", 160_000, 3), ("cache", 256, 1_875)] {
        println!("{regime} ({rows} rows x {COLS}):");
        for ty in [WeightType::Q4_1, WeightType::Q8_0] {
            let row = quantize_row(ty, &values);
            let rb = row.len();
            let data: Vec<u8> = (0..rows).flat_map(|_| row.iter().copied()).collect();
            for n in 1..=4 {
                let mut line = format!("  {:<5} x {n} vectors:", ty.name());
                for isa in Isa::all_available() {
                    let mut out = vec![0.0f32; CHUNK * n];
                    let t = Instant::now();
                    for _ in 0..reps {
                        for chunk in data.chunks_exact(CHUNK * rb) {
                            dot_q16_rows(isa, ty, chunk, rb, &all[..n], &mut out);
                        }
                    }
                    let rate = (reps * rows * COLS * n) as f64 / t.elapsed().as_secs_f64() / 1e9;
                    line.push_str(&format!("  {} {rate:.1} G mul-adds/s", isa.name()));
                }
                println!("{line}");
            }
        }
        // Sixteen rows interleaved (what the forward pass uses on AVX-512 VNNI), against 16-bit
        // and 8-bit activations.
        for ty in [WeightType::Q4_1, WeightType::Q8_0] {
            let row = quantize_row(ty, &values);
            let rb = row.len();
            let data: Vec<u8> = (0..rows).flat_map(|_| row.iter().copied()).collect();
            for acts in [Activations::Q16, Activations::Q8] {
                let packed = interleaved::interleave(ty, acts, &data, rb).expect("whole groups");
                for n in [1, 2, 4, 8] {
                    let mut line = format!("  {}x16 x {n} vectors, {acts:?}:", ty.name());
                    for isa in Isa::all_available() {
                        let mut out = vec![0.0f32; interleaved::GROUP * n];
                        let t = Instant::now();
                        for _ in 0..reps {
                            for group in packed.chunks_exact(interleaved::GROUP * rb) {
                                match acts {
                                    Activations::Q16 => {
                                        dot_q16_group(isa, ty, group, &all[..n], &mut out)
                                    }
                                    Activations::Q8 => {
                                        dot_q8_group(isa, ty, group, &all8[..n], &mut out)
                                    }
                                }
                            }
                        }
                        let rate =
                            (reps * rows * COLS * n) as f64 / t.elapsed().as_secs_f64() / 1e9;
                        line.push_str(&format!("  {} {rate:.1} G mul-adds/s", isa.name()));
                    }
                    println!("{line}");
                }
            }
        }
    }
}

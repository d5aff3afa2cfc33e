//! Throughput of the quantised dot-product kernels on each instruction set this CPU has, for
//! one to four activation vectors, in two regimes: a 160k-row matrix (92 MB for Q4_1, larger
//! than any cache) streamed from memory, as one decoded token reads the weights; and a 256-row
//! block read again and again from cache, as `matmul` re-reads its row chunk for every further
//! group of tokens in prefill and batched decode:
//! `cargo run --release -p guardreasoner-engine --example kernel_bench`.
//! The figures are relative: compare instruction sets within one run.

use guardreasoner_engine::kernels::{dot_q16_group, dot_q16_rows, interleaved, Isa};
use guardreasoner_engine::quant::{quantize_row, quantize_row_q16, BlockQ16, WeightType};
use std::time::Instant;

fn main() {
    const COLS: usize = 576;
    const CHUNK: usize = 64;
    let values: Vec<f32> = (0..COLS)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let mut x = vec![BlockQ16::default(); COLS / 32];
    quantize_row_q16(&values, &mut x);
    let all = [&x[..], &x[..], &x[..], &x[..]];
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
        // Sixteen rows interleaved (what the forward pass uses on AVX-512 VNNI).
        for ty in [WeightType::Q4_1, WeightType::Q8_0] {
            let row = quantize_row(ty, &values);
            let rb = row.len();
            let data: Vec<u8> = (0..rows).flat_map(|_| row.iter().copied()).collect();
            let packed = interleaved::interleave(ty, &data, rb).expect("whole groups");
            for n in 1..=4 {
                let mut line = format!("  {}x16 x {n} vectors:", ty.name());
                for isa in Isa::all_available() {
                    let mut out = vec![0.0f32; interleaved::GROUP * n];
                    let t = Instant::now();
                    for _ in 0..reps {
                        for group in packed.chunks_exact(interleaved::GROUP * rb) {
                            dot_q16_group(isa, ty, group, &all[..n], &mut out);
                        }
                    }
                    let rate = (reps * rows * COLS * n) as f64 / t.elapsed().as_secs_f64() / 1e9;
                    line.push_str(&format!("  {} {rate:.1} G mul-adds/s", isa.name()));
                }
                println!("{line}");
            }
        }
    }
}

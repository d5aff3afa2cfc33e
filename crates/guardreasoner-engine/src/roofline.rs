//! This machine's limits, measured: the multiply-add rate of the instruction forms our kernels
//! use (f32 FMA, 16-bit integer pairs, 8-bit VNNI) with every operand in registers, and the
//! memory read bandwidth, on a given number of threads. `bench engine` states each figure as a
//! fraction of the relevant one, so it is plain how far a phase is from the machine's limit:
//! decoding one sequence reads every weight once per token (bandwidth), prefill and batched
//! decode are arithmetic (our quantised kernels multiply 16-bit activations against widened
//! weights: the 16-bit peak is theirs).

use crate::config::Config;
use rayon::prelude::*;
use std::time::Instant;

/// Peak rates on `threads` threads (multiply-adds per second; bytes per second).
#[derive(Clone, Debug, PartialEq)]
pub struct Roofline {
    pub threads: usize,
    /// The widest vector form measured (`avx512`, `avx2` or `scalar`).
    pub isa: &'static str,
    /// f32 fused multiply-adds.
    pub f32_fma: f64,
    /// 16-bit integer pairs multiplied and summed into 32 bits (`vpmaddwd`, or `vpdpwssd` where
    /// VNNI has it): what the row-major quantised weight kernels use.
    pub int16: f64,
    /// 8-bit products summed into 32 bits (`vpdpbusd`, VNNI), where the CPU has it: what the
    /// interleaved matrix kernel uses.
    pub int8: Option<f64>,
    /// Bytes read per second from a buffer larger than every cache.
    pub read_bandwidth: f64,
}

/// Measure every peak on a pool of `threads` threads (default: the physical cores, as the
/// engine); `bandwidth_bytes` sizes the buffer read (several times the last-level cache).
pub fn measure(threads: Option<usize>, bandwidth_bytes: usize) -> Roofline {
    let threads = threads.unwrap_or_else(num_cpus::get_physical).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    let on_all = |per_thread: &(dyn Fn() -> f64 + Sync)| -> f64 {
        // Best of three: the steady rate, not a warm-up or a preempted run.
        (0..3)
            .map(|_| pool.install(|| (0..threads).into_par_iter().map(|_| per_thread()).sum()))
            .fold(0.0, f64::max)
    };
    let (isa, f32_fma, int16, int8) = peaks(&on_all);
    Roofline {
        threads,
        isa,
        f32_fma,
        int16,
        int8,
        read_bandwidth: pool.install(|| read_bandwidth(bandwidth_bytes, threads)),
    }
}

/// Multiply-adds of the weight matrices for one token (attention projections and MLP of every
/// layer), plus the output layer when `logits` (only tokens whose logits are wanted pay it).
pub fn macs_per_token(config: &Config, logits: bool) -> f64 {
    let (h, i) = (config.hidden_size, config.intermediate_size);
    let (q, kv) = (
        config.num_attention_heads * config.head_dim(),
        config.num_key_value_heads() * config.head_dim(),
    );
    let layer = h * (q + 2 * kv) + q * h + 2 * h * i + i * h;
    let head = if logits { config.vocab_size * h } else { 0 };
    (config.num_hidden_layers * layer + head) as f64
}

/// Multiply-adds per second of one thread: a loop of independent accumulator chains long
/// enough to hide each instruction's latency, so only throughput counts.
type PerThread<'a> = &'a (dyn Fn() -> f64 + Sync);

fn peaks(on_all: &dyn Fn(PerThread<'_>) -> f64) -> (&'static str, f64, f64, Option<f64>) {
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f: &str| match f {
            "avx512" => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            _ => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        };
        if has("avx512") {
            // SAFETY (all three): the features each function enables were detected above.
            return (
                "avx512",
                on_all(&|| unsafe { x86::f32_fma_512() }),
                on_all(&|| unsafe { x86::int16_512() }),
                Some(on_all(&|| unsafe { x86::int8_512() })),
            );
        }
        if has("avx2") {
            // SAFETY: avx2 and fma were detected above.
            return (
                "avx2",
                on_all(&|| unsafe { x86::f32_fma_256() }),
                on_all(&|| unsafe { x86::int16_256() }),
                None,
            );
        }
    }
    ("scalar", on_all(&scalar_fma), on_all(&scalar_fma), None)
}

/// Instructions of each peak loop (tens of milliseconds per thread on a current core).
const ITERS: usize = 1 << 25;

fn scalar_fma() -> f64 {
    let mut acc = [1.0f32; 8];
    let (a, b) = (
        std::hint::black_box(0.999_f32),
        std::hint::black_box(1e-7_f32),
    );
    let t = Instant::now();
    for _ in 0..ITERS / 64 {
        for x in &mut acc {
            *x = x.mul_add(a, b);
        }
    }
    std::hint::black_box(acc);
    (ITERS / 64 * 8) as f64 / t.elapsed().as_secs_f64()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::ITERS;
    use std::arch::x86_64::*;
    use std::time::Instant;

    /// Independent chains: enough to cover a 4-6 cycle latency on two or three ports.
    const CHAINS: usize = 12;

    macro_rules! peak_loop {
        ($zero:expr, $step:expr, $macs_per_op:expr) => {{
            let mut acc = [$zero; CHAINS];
            let t = Instant::now();
            for _ in 0..ITERS / CHAINS {
                for a in &mut acc {
                    *a = $step(*a);
                }
            }
            std::hint::black_box(&acc);
            (ITERS / CHAINS * CHAINS * $macs_per_op) as f64 / t.elapsed().as_secs_f64()
        }};
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn f32_fma_256() -> f64 {
        let (a, b) = (_mm256_set1_ps(0.999), _mm256_set1_ps(1e-7));
        peak_loop!(_mm256_set1_ps(1.0), |x| _mm256_fmadd_ps(x, a, b), 8)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn int16_256() -> f64 {
        let b = _mm256_set1_epi16(-2);
        // madd (16 products summed in pairs) then add: the form the AVX2 kernels use. The
        // accumulator is also a factor, so the compiler cannot hoist the products.
        peak_loop!(
            _mm256_set1_epi16(3),
            |x| _mm256_add_epi32(x, _mm256_madd_epi16(x, b)),
            16
        )
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn f32_fma_512() -> f64 {
        let (a, b) = (_mm512_set1_ps(0.999), _mm512_set1_ps(1e-7));
        peak_loop!(_mm512_set1_ps(1.0), |x| _mm512_fmadd_ps(x, a, b), 16)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn int16_512() -> f64 {
        let (a, b) = (_mm512_set1_epi16(3), _mm512_set1_epi16(-2));
        peak_loop!(_mm512_setzero_si512(), |x| _mm512_dpwssd_epi32(x, a, b), 32)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn int8_512() -> f64 {
        let (a, b) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-2));
        peak_loop!(_mm512_setzero_si512(), |x| _mm512_dpbusd_epi32(x, a, b), 64)
    }
}

/// Bytes per second read by `threads` threads summing disjoint parts of one `bytes`-long
/// buffer (best of three passes after a first one that faults the pages in).
fn read_bandwidth(bytes: usize, threads: usize) -> f64 {
    let words = (bytes / 8).max(threads * 1024);
    let buffer: Vec<u64> = (0..words as u64).collect();
    let part = words.div_ceil(threads);
    let pass = || {
        let t = Instant::now();
        let sum: u64 = buffer
            .par_chunks(part)
            .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
            .reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        (words * 8) as f64 / t.elapsed().as_secs_f64()
    };
    pass();
    (0..3).map(|_| pass()).fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_are_positive_and_ordered_by_width() {
        let r = measure(Some(1), 8 << 20);
        assert!(
            r.f32_fma > 1e8 && r.int16 > 1e8 && r.read_bandwidth > 1e8,
            "{r:?}"
        );
        // Integer forms pack more products per instruction than f32 FMA.
        if r.isa != "scalar" {
            assert!(r.int16 > r.f32_fma, "{r:?}");
        }
        if let Some(int8) = r.int8 {
            assert!(int8 > r.int16, "{r:?}");
        }
    }

    #[test]
    fn smollm2_does_107_million_weight_multiply_adds_per_token() {
        let config: Config = serde_json::from_value(serde_json::json!({
            "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
            "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
            "tie_word_embeddings": true
        }))
        .unwrap();
        // 30 layers of (576 x 960 + 576 x 576 + 2 x 576 x 1536 + 1536 x 576), as HF counts.
        assert_eq!(macs_per_token(&config, false), 106_168_320.0);
        assert_eq!(
            macs_per_token(&config, true) - macs_per_token(&config, false),
            49_152.0 * 576.0
        );
    }
}

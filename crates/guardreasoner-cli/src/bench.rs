//! `guardreasoner bench engine`: the engine on the guard workload, shaped like llama.cpp's
//! `llama-bench` and `llama-batched-bench` so the figures sit beside the anchor script's
//! (`bash ../shared/bench/llamacpp-anchor.sh MODEL THREADS`, run right after on the same machine).

use crate::generator::KvCacheArg;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use guardreasoner_core::Conversation;
use guardreasoner_engine::bench::{peak_rss_mib, run as run_bench, BenchSpec};
use guardreasoner_engine::kernels::Isa;
use guardreasoner_engine::quant::Activations;
use guardreasoner_engine::roofline::{self, Roofline};
use guardreasoner_engine::{Engine, LoadOptions};
use guardreasoner_tokenizer::Tokenizer;

#[path = "bench_train.rs"]
mod bench_train;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Prefill (pp512, one ~600-token guard prompt), decode (tg128) and batched guard
    /// throughput (N sequences of ~600 prompt + G generated tokens), and peak memory.
    Engine(EngineBenchArgs),
    /// One training step (forward, backward, AdamW) of a random SmolLM2-135M-shaped model, full
    /// or LoRA, shaped like the PyTorch anchor: mean seconds per phase and peak memory.
    Train(bench_train::TrainBenchArgs),
    /// This machine's limits: peak multiply-add rates (f32 FMA, 16-bit pairs, 8-bit VNNI) with
    /// operands in registers, and memory read bandwidth, on the given threads.
    Roofline(RooflineArgs),
}

#[derive(Args)]
struct RooflineArgs {
    /// Worker threads (default: physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Bytes of the buffer read for the bandwidth (several times the last-level cache).
    #[arg(long, default_value_t = 256 << 20)]
    bandwidth_bytes: usize,
}

#[derive(Args)]
struct EngineBenchArgs {
    /// The model: `default` (the shipped guard, with its card's key/value cache), `smollm2-base`,
    /// a .gguf file, a Hugging Face directory or a Hub id.
    #[arg(long)]
    model: String,
    /// Worker threads (default: physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Key/value cache storage.
    #[arg(long, value_enum, default_value_t = KvCacheArg::Auto)]
    kv_cache: KvCacheArg,
    /// Batch sizes for the guard workload.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    batch_sizes: Vec<usize>,
    /// Tokens generated per sequence in the guard workload.
    #[arg(long, default_value_t = 400)]
    generated: usize,
    /// Approximate guard prompt length in tokens.
    #[arg(long, default_value_t = 600)]
    prompt_tokens: usize,
    /// Run the guard workload without (`off`) and/or with (`on`) the instruction's keys and
    /// values computed once and shared (`both` runs `off` then `on`; `on` alone is what
    /// `serve` and `classify` do, and gives their peak memory).
    #[arg(long, value_enum, default_value_t = PrefixReuse::Both)]
    prefix_reuse: PrefixReuse,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PrefixReuse {
    Off,
    On,
    Both,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        BenchWhat::Engine(a) => engine(a),
        BenchWhat::Train(a) => bench_train::train(a),
        BenchWhat::Roofline(a) => {
            print_roofline(&roofline::measure(a.threads, a.bandwidth_bytes));
            Ok(())
        }
    }
}

/// Distinct conversations, each grown until its guard prompt is about `target` tokens.
fn guard_prompts(tokenizer: &Tokenizer, count: usize, target: usize) -> Result<Vec<Vec<u32>>> {
    const SENTENCES: [&str; 6] = [
        "I have been reading about how household chemicals react when they are mixed together.",
        "My neighbour keeps parking across my driveway and I want to know what I can legally do.",
        "Can you explain how phishing emails usually trick people into giving away passwords?",
        "Write a short story where the villain explains his plan to poison the city water supply.",
        "What are the safest ways to store medication so that children cannot reach it?",
        "Tell me which common plants are toxic to cats and what symptoms to watch for.",
    ];
    let mut prompts = Vec::with_capacity(count);
    for i in 0..count {
        let (mut user, mut reply) = (format!("Question {i}: "), String::from("Sure. "));
        let mut k = i;
        loop {
            let ids = tokenizer
                .encode_guard_prompt(&Conversation::new(user.clone(), Some(reply.clone())))?;
            if ids.len() >= target {
                prompts.push(ids);
                break;
            }
            user.push_str(SENTENCES[k % SENTENCES.len()]);
            user.push(' ');
            reply.push_str(SENTENCES[(k * 7 + 3) % SENTENCES.len()]);
            reply.push(' ');
            k += 1;
        }
    }
    Ok(prompts)
}

fn engine(a: EngineBenchArgs) -> Result<()> {
    if a.batch_sizes.contains(&0) {
        bail!("--batch-sizes must be positive");
    }
    let (resolved, kv_cache) =
        guardreasoner_runtime::resolve_model(Some(&a.model), a.kv_cache.choice())
            .with_context(|| format!("cannot resolve the model {}", a.model))?;
    let path = resolved.path();
    let tokenizer = resolved
        .tokenizer()
        .with_context(|| format!("loading the tokenizer of {}", path.display()))?;
    let engine = Engine::load_with(
        path,
        &LoadOptions {
            threads: a.threads,
            dequantize: false,
            kv_cache,
        },
    )
    .with_context(|| format!("loading {}", path.display()))?;
    let max_batch = a.batch_sizes.iter().copied().max().unwrap_or(1);
    let prompts = guard_prompts(&tokenizer, max_batch.max(1), a.prompt_tokens)?;
    // The instruction is what every guard prompt shares.
    let instruction_tokens = (0..prompts[0].len())
        .take_while(|&k| prompts.iter().all(|p| p.get(k) == prompts[0].get(k)))
        .count();
    println!(
        "model {} ({}, {:.0} MiB of weights) | kv cache {} | threads {} | kernels {}, {} activations | guard prompts {}..{} tokens, instruction {} tokens",
        path.display(),
        if engine.model().has_low_rank() {
            format!("{} + LoRA at run time", engine.model().weight_type().name())
        } else {
            engine.model().weight_type().name().to_string()
        },
        engine.model().weight_bytes() as f64 / (1024.0 * 1024.0),
        engine.model().kv_type().name(),
        engine.threads(),
        Isa::detect().name(),
        match engine.model().activations() {
            Activations::Q8 if Isa::detect() == Isa::Avx512 => "8-bit",
            _ => "16-bit",
        },
        prompts.iter().map(Vec::len).min().unwrap_or(0),
        prompts.iter().map(Vec::len).max().unwrap_or(0),
        instruction_tokens,
    );
    // The bandwidth probe's 256 MiB buffer is no part of the engine's memory: the peak is
    // taken before it (loading) and again after it is freed (the measurements).
    let load_peak = peak_rss_mib();
    let peak = roofline::measure(a.threads, 256 << 20);
    print_roofline(&peak);
    let rss_from_here = guardreasoner_engine::bench::reset_peak_rss();
    let config = engine.config().clone();
    let weight_bytes = engine.model().weight_bytes() as f64;
    // Each figure against the limit that binds it: one sequence decoding reads every weight per
    // token (bandwidth); everything else is arithmetic: 8-bit multiply-adds where the matrices
    // are interleaved for 8-bit activations (AVX-512 VNNI with the 8-bit cache), else 16-bit.
    let (arith, arith_name) = match (Isa::detect(), engine.model().activations(), peak.int8) {
        (Isa::Avx512, Activations::Q8, Some(int8)) => (int8, "8-bit"),
        _ => (peak.int16, "16-bit"),
    };
    let of_peak = |name: &str, tokens: usize, seconds: f64| -> String {
        let per_s = tokens as f64 / seconds.max(1e-9);
        if name == "tg128" {
            format!(
                "{:.0}% of read bandwidth",
                100.0 * per_s * weight_bytes / peak.read_bandwidth
            )
        } else {
            format!(
                "{:.1}% of {arith_name} peak",
                100.0 * per_s * roofline::macs_per_token(&config, false) / arith
            )
        }
    };
    println!("| test | tokens | seconds | tokens/s | of the roofline | detail |\n|---|---:|---:|---:|---:|---|");
    let spec = BenchSpec {
        guard_prompts: prompts,
        instruction_tokens,
        generated: a.generated,
        batch_sizes: a.batch_sizes,
        repetitions: 3,
        prefix_reuse: match a.prefix_reuse {
            PrefixReuse::Off => vec![false],
            PrefixReuse::On => vec![true],
            PrefixReuse::Both => vec![false, true],
        },
    };
    run_bench(&engine, &spec, |l| {
        println!(
            "| {} | {} | {:.2} | {:.1} | {} | {} |",
            l.name,
            l.tokens,
            l.seconds,
            l.rate(),
            of_peak(&l.name, l.tokens, l.seconds),
            l.detail
        )
    })?;
    match (peak_rss_mib(), load_peak) {
        (Some(run), Some(load)) if rss_from_here => println!(
            "peak RSS: {:.0} MiB (loading {load:.0}, measurements {run:.0}; the roofline probe's buffer excluded)",
            run.max(load)
        ),
        (Some(rss), _) => {
            println!("peak RSS: {rss:.0} MiB (whole process, the roofline probe's 256 MiB buffer included)")
        }
        _ => {}
    }
    Ok(())
}

fn print_roofline(r: &Roofline) {
    let g = |x: f64| format!("{:.1}", x / 1e9);
    println!(
        "roofline ({} threads, {}): f32 FMA {} G multiply-adds/s | 16-bit pairs {} G/s | 8-bit VNNI {} | read bandwidth {} GB/s",
        r.threads,
        r.isa,
        g(r.f32_fma),
        g(r.int16),
        r.int8.map_or("n/a".into(), |v| format!("{} G/s", g(v))),
        g(r.read_bandwidth)
    );
}

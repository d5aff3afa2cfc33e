//! Engine benchmark without the tokenizer: synthetic ~600-token guard prompts built from a
//! token-id prefix. `cargo run --release -p guardreasoner-engine --example bench -- MODEL [THREADS] [SIZES]`
//! (the product command is `guardreasoner bench engine`, which tokenises real guard prompts).

use guardreasoner_engine::bench::{peak_rss_mib, run, BenchSpec};
use guardreasoner_engine::{Engine, LoadOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .ok_or("usage: bench MODEL [THREADS] [BATCH_SIZES]")?;
    let threads = args.next().map(|t| t.parse()).transpose()?;
    let sizes: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "1,4,16".into())
        .split(',')
        .filter(|s| !s.is_empty()) // "" runs only pp512, the prompt prefill and tg128
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let engine = Engine::load_with(
        &model,
        &LoadOptions {
            threads,
            dequantize: false,
            ..LoadOptions::default()
        },
    )?;
    let vocab = engine.config().vocab_size as u64;
    // A fixed 100-token "instruction" and distinct 500-token "conversations".
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut token = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (200 + state % (vocab - 200)) as u32
    };
    let instruction: Vec<u32> = (0..100).map(|_| token()).collect();
    let prompts: Vec<Vec<u32>> = (0..16)
        .map(|_| {
            instruction
                .iter()
                .copied()
                .chain((0..500).map(|_| token()))
                .collect()
        })
        .collect();
    let spec = BenchSpec {
        guard_prompts: prompts,
        instruction_tokens: 100,
        generated: 400,
        batch_sizes: sizes,
        repetitions: 2,
        prefix_reuse: if std::env::args().nth(4).as_deref() == Some("reuse") {
            vec![true]
        } else {
            vec![false, true]
        },
    };
    println!(
        "threads {} kernels {}",
        engine.threads(),
        guardreasoner_engine::kernels::Isa::detect().name()
    );
    run(&engine, &spec, |l| {
        println!(
            "{:<40} {:>6} tok {:>8.2} s {:>8.1} tok/s  {}",
            l.name,
            l.tokens,
            l.seconds,
            l.rate(),
            l.detail
        )
    })?;
    println!("peak RSS {:.0} MiB", peak_rss_mib().unwrap_or(f64::NAN));
    Ok(())
}

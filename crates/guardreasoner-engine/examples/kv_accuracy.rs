//! How far each key/value cache type moves the SmolLM2 fixture's logits and greedy
//! continuations (the figures behind `--kv-cache` in BENCHMARKS.md):
//! `cargo run --release -p guardreasoner-engine --example kv_accuracy -- MODEL.gguf [FIXTURES_DIR]`
//! (fixtures default: `../shared/fixtures`).

use guardreasoner_engine::{Engine, GenerationRequest, KvType, LoadOptions, SamplingParams};

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .ok_or("usage: kv_accuracy MODEL.gguf [FIXTURES_DIR]")?;
    let fixtures = args.next().unwrap_or_else(|| "../shared/fixtures".into());
    let path = format!("{fixtures}/smollm2/logits.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let prompts = json["prompts"]
        .as_array()
        .ok_or("no prompts in the fixture")?;
    println!("| cache | prompt | max abs diff, reference top-20 | greedy tokens equal (reference: up to 16, to its end of sequence) | smallest margin of the reference's greedy token |");
    println!("|---|---:|---:|---:|---:|");
    for ty in [KvType::F32, KvType::F16, KvType::Q8] {
        let options = LoadOptions {
            kv_cache: Some(ty),
            ..LoadOptions::default()
        };
        let engine = Engine::load_with(&model, &options)?;
        let vocab = engine.config().vocab_size;
        for (i, p) in prompts.iter().enumerate() {
            let prompt = ids(&p["prompt_ids"]);
            let reference = ids(&p["greedy_48"]);
            let k = reference.len().min(16);
            let last = engine.logits(&prompt)?;
            let max_diff = p["last_top20"]
                .as_array()
                .ok_or("no last_top20")?
                .iter()
                .map(|e| {
                    let id = e["id"].as_u64().unwrap_or(0) as usize;
                    (last[id] - e["logit"].as_f64().unwrap_or(0.0) as f32).abs()
                })
                .fold(0.0f32, f32::max);
            let params = SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(k)
            };
            let request = GenerationRequest {
                prompt_ids: prompt.clone(),
                params,
            };
            let got = engine.generate(&[request], |_, _| {})?.remove(0).tokens;
            let equal = got
                .iter()
                .zip(&reference)
                .take_while(|(a, b)| a == b)
                .count();
            // The reference's greedy tokens, teacher-forced: how close each was to losing.
            let mut forced = prompt.clone();
            forced.extend_from_slice(&reference[..k]);
            let all = engine.logits_all(&forced)?;
            let margin = (0..k)
                .map(|t| {
                    let row = &all[(prompt.len() - 1 + t) * vocab..(prompt.len() + t) * vocab];
                    let want = reference[t] as usize;
                    let other = row
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != want)
                        .map(|(_, &x)| x)
                        .fold(f32::NEG_INFINITY, f32::max);
                    row[want] - other
                })
                .fold(f32::INFINITY, f32::min);
            println!(
                "| {} | {i} | {max_diff:.3} | {equal} of {k} | {margin:.3} |",
                ty.name()
            );
        }
    }
    Ok(())
}

//! The Hugging Face layout path against `shared/fixtures/tiny-llama3/reference.json`
//! (transformers LlamaForCausalLM, fp32): llama3 rope scaling, grouped-query attention, tied
//! embeddings. Also checks that the same weights written as GGUF (Q/K rows permuted the way
//! llama.cpp's converter does) give the same logits, in F32 and in each quantised format.

mod common;

use common::*;
use guardreasoner_engine::quant::{quantize_row, WeightType};
use guardreasoner_engine::{Engine, GenerationRequest, LoadOptions, SamplingParams};

fn tiny_dir() -> std::path::PathBuf {
    fixtures().join("tiny-llama3")
}

fn engine() -> Engine {
    Engine::load_with(
        tiny_dir(),
        &LoadOptions {
            threads: Some(2),
            dequantize: false,
            ..LoadOptions::default()
        },
    )
    .expect("load tiny-llama3")
}

#[test]
fn config_is_read_from_config_json() {
    let e = engine();
    let c = e.config();
    assert_eq!(
        (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads(),
            c.head_dim()
        ),
        (64, 4, 2, 16)
    );
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_scaling.as_ref().map(|s| s.kind()), Some("llama3"));
    assert_eq!(e.eos_token_ids(), &[2]);
}

#[test]
fn logits_match_transformers() {
    let e = engine();
    let reference = read_json(tiny_dir().join("reference.json"));
    for seq in reference["sequences"].as_array().unwrap() {
        let ids = ids(&seq["ids"]);
        let logits = e.logits(&ids).unwrap();
        let first32: Vec<f32> = seq["last_logits_first32"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        for (i, (&got, want)) in logits.iter().zip(&first32).enumerate() {
            assert!(
                (got - want).abs() < 1e-4,
                "len {}: logit {i}: {got} vs {want}",
                ids.len()
            );
        }
        for entry in seq["last_top10"].as_array().unwrap() {
            let (id, want) = (
                entry["id"].as_u64().unwrap() as usize,
                entry["logit"].as_f64().unwrap() as f32,
            );
            assert!(
                (logits[id] - want).abs() < 1e-4,
                "len {}: id {id}: {} vs {want}",
                ids.len(),
                logits[id]
            );
        }
        let top: Vec<usize> = seq["last_top10"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(top_k(&logits, 1)[0], top[0]);
    }
}

#[test]
fn greedy_continuations_match_transformers_alone_and_batched() {
    let e = engine();
    let reference = read_json(tiny_dir().join("reference.json"));
    let seqs = reference["sequences"].as_array().unwrap();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(16)
    };
    let requests: Vec<GenerationRequest> = seqs
        .iter()
        .map(|s| GenerationRequest {
            prompt_ids: ids(&s["ids"]),
            params: params.clone(),
        })
        .collect();
    let batched = e.generate(&requests, |_, _| {}).unwrap();
    for (i, (seq, request)) in seqs.iter().zip(&requests).enumerate() {
        let want = ids(&seq["greedy_16"]);
        let alone = e
            .generate(std::slice::from_ref(request), |_, _| {})
            .unwrap();
        assert_eq!(alone[0].tokens, want, "sequence {i} alone");
        assert_eq!(batched[i].tokens, want, "sequence {i} batched");
    }
}

/// llama.cpp's converter permutes Q/K rows so that rotating adjacent pairs equals rotating
/// halves: within each head, rows (i, i + d/2) become (2i, 2i + 1).
fn permute_for_gguf(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for (dst, src) in [(2 * i, i), (2 * i + 1, i + d / 2)] {
                let (to, from) = ((h * d + dst) * cols, (h * d + src) * cols);
                out[to..to + cols].copy_from_slice(&w[from..from + cols]);
            }
        }
    }
    let _ = rows;
    out
}

/// Write the tiny checkpoint as a GGUF file with matrices stored as `ty`.
fn tiny_as_gguf(ty: WeightType, ggml_id: u32) -> Vec<u8> {
    let bytes = std::fs::read(tiny_dir().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> (Vec<f32>, Vec<usize>) {
        let t = st.tensor(name).unwrap();
        (
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            t.shape().to_vec(),
        )
    };
    let mut tensors = Vec::new();
    let mut push = |name: &str, values: Vec<f32>, shape: Vec<usize>, quantise: bool| {
        let (ty, id) = if quantise {
            (ty, ggml_id)
        } else {
            (WeightType::F32, 0)
        };
        let cols = *shape.last().unwrap();
        let data = values
            .chunks(cols)
            .flat_map(|r| quantize_row(ty, r))
            .collect();
        tensors.push(RawTensor {
            name: name.into(),
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type: id,
            data,
        });
    };
    let (emb, shape) = f32s("model.embed_tokens.weight");
    push("token_embd.weight", emb, shape, true);
    let (norm, shape) = f32s("model.norm.weight");
    push("output_norm.weight", norm, shape, false);
    for l in 0..2 {
        let hf = |s: &str| format!("model.layers.{l}.{s}.weight");
        let gg = |s: &str| format!("blk.{l}.{s}.weight");
        for (from, to, heads) in [
            ("self_attn.q_proj", "attn_q", 4),
            ("self_attn.k_proj", "attn_k", 2),
        ] {
            let (w, shape) = f32s(&hf(from));
            push(
                &gg(to),
                permute_for_gguf(&w, shape[0], shape[1], heads),
                shape,
                true,
            );
        }
        for (from, to, q) in [
            ("self_attn.v_proj", "attn_v", true),
            ("self_attn.o_proj", "attn_output", true),
            ("mlp.gate_proj", "ffn_gate", true),
            ("mlp.up_proj", "ffn_up", true),
            ("mlp.down_proj", "ffn_down", true),
            ("input_layernorm", "attn_norm", false),
            ("post_attention_layernorm", "ffn_norm", false),
        ] {
            let (w, shape) = f32s(&hf(from));
            push(&gg(to), w, shape, q);
        }
    }
    // llama3 rope scaling as llama.cpp stores it: per-frequency divisors.
    let config = engine().config().clone();
    let mut plain = config.clone();
    plain.rope_scaling = None;
    let factors: Vec<f32> = plain
        .rope_inv_freq()
        .iter()
        .zip(config.rope_inv_freq())
        .map(|(a, b)| a / b)
        .collect();
    tensors.push(RawTensor {
        name: "rope_freqs.weight".into(),
        dims: vec![factors.len() as u64],
        ggml_type: 0,
        data: factors.iter().flat_map(|v| v.to_le_bytes()).collect(),
    });
    let meta = [
        ("general.architecture", Meta::Str("llama".into())),
        ("llama.block_count", Meta::U32(2)),
        ("llama.context_length", Meta::U32(4096)),
        ("llama.embedding_length", Meta::U32(64)),
        ("llama.feed_forward_length", Meta::U32(160)),
        ("llama.attention.head_count", Meta::U32(4)),
        ("llama.attention.head_count_kv", Meta::U32(2)),
        ("llama.rope.freq_base", Meta::F32(500000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
        ("llama.vocab_size", Meta::U32(49152)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(2)),
    ];
    write_gguf(&meta, &tensors)
}

#[test]
fn gguf_with_permuted_qk_matches_the_hf_layout_in_every_format() {
    let hf = engine();
    let reference = read_json(tiny_dir().join("reference.json"));
    let long = ids(&reference["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|s| s["ids"].as_array().unwrap().len())
        .unwrap()["ids"]);
    let want = hf.logits(&long).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (ty, id, tol) in [
        (WeightType::F32, 0, 1e-4),
        (WeightType::F16, 1, 0.01),
        (WeightType::Q8_0, 8, 0.05),
        (WeightType::Q4_1, 3, 0.3),
        (WeightType::Q4_0, 2, 0.4),
    ] {
        let path = dir.path().join(format!("tiny-{}.gguf", ty.name()));
        std::fs::write(&path, tiny_as_gguf(ty, id)).unwrap();
        let e = Engine::load_with(
            &path,
            &LoadOptions {
                threads: Some(2),
                dequantize: false,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        assert_eq!(e.model().weight_type(), ty);
        let got = e.logits(&long).unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < tol,
            "{}: max |logit diff| {worst} >= {tol}",
            ty.name()
        );
    }
}

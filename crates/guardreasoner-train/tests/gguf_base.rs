//! The embedded default GGUF as a training base: converted to the HF layout, it must compute what
//! the engine computes on the GGUF (dequantised), and carry the same tokenizer.

use candle_core::DType;
use guardreasoner_engine::llama::Llama as EngineLlama;
use guardreasoner_engine::Engine;
use guardreasoner_tokenizer::Tokenizer;
use guardreasoner_train::gguf_base::{
    convert_gguf_to_hf, convert_hf_to_gguf, load_gguf_base, GgufWeightType,
};
use guardreasoner_train::model::TrainMode;
use std::path::PathBuf;

fn fixture_prompt_ids(n: usize) -> Vec<u32> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/smollm2/logits.json");
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("logits fixture")).expect("JSON");
    fixture["prompts"][0]["prompt_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .take(n)
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

#[test]
fn converted_checkpoint_computes_what_the_gguf_computes() {
    let Some(gguf) = guardreasoner_testing::test_model() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    convert_gguf_to_hf(&gguf, dir.path()).expect("convert");
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(dir.path().join(file).is_file(), "{file} written");
    }
    let ids = fixture_prompt_ids(48);

    let from_gguf = EngineLlama::from_gguf(&gguf).expect("gguf").dequantized();
    let from_gguf = Engine::from_model(from_gguf, Some(2)).expect("engine");
    let from_hf = EngineLlama::from_hf_dir(dir.path()).expect("converted HF dir");
    let from_hf = Engine::from_model(from_hf, Some(2)).expect("engine");
    let a = from_gguf.logits(&ids).expect("logits");
    let b = from_hf.logits(&ids).expect("logits");
    // Same f32 weights; only the order of the rotary pairs (and so of some sums) differs.
    assert!(max_abs_diff(&a, &b) < 1e-3, "diff {}", max_abs_diff(&a, &b));
    assert_eq!(argmax(&a), argmax(&b));

    // The trainable model built straight from the GGUF agrees too, on one configuration: the
    // trainer reads the same `Config` from the GGUF as the engine, and from the converted
    // `config.json` as the engine does.
    let model = load_gguf_base(&gguf, DType::F32, TrainMode::Full, 0).expect("train base");
    assert_eq!(&model.config, from_gguf.config());
    let hf_config = guardreasoner_train::model::read_config(&dir.path().join("config.json"))
        .expect("converted config.json");
    assert_eq!(&hf_config, from_hf.config());
    assert_eq!(hf_config.rope_inv_freq(), model.config.rope_inv_freq());
    let logits = model.forward(&ids, None).expect("forward");
    let last = logits
        .get(ids.len() - 1)
        .and_then(|t| t.to_vec1::<f32>())
        .expect("last row");
    assert!(
        max_abs_diff(&a, &last) < 1e-3,
        "diff {}",
        max_abs_diff(&a, &last)
    );

    // And back: the checkpoint written as a GGUF (f32) computes the same, and f16 nearly so.
    let back = dir.path().join("back.gguf");
    convert_hf_to_gguf(dir.path(), &back, GgufWeightType::F32).expect("to gguf");
    let written = Engine::load(&back).expect("engine loads the written GGUF");
    let c = written.logits(&ids).expect("logits");
    assert!(max_abs_diff(&a, &c) < 1e-3, "diff {}", max_abs_diff(&a, &c));
    let half = dir.path().join("half.gguf");
    convert_hf_to_gguf(dir.path(), &half, GgufWeightType::F16).expect("to gguf f16");
    let d = Engine::load(&half)
        .expect("f16 GGUF")
        .logits(&ids)
        .expect("logits");
    assert!(max_abs_diff(&a, &d) < 0.1, "diff {}", max_abs_diff(&a, &d));
    assert_eq!(argmax(&a), argmax(&d));

    // The tokenizer written beside it, and into the GGUF, encodes like the GGUF's own.
    let original = Tokenizer::from_gguf_path(&gguf).expect("gguf tokenizer");
    let converted = Tokenizer::from_hf_dir(dir.path()).expect("converted tokenizer");
    let rewritten = Tokenizer::from_gguf_path(&back).expect("written GGUF tokenizer");
    assert_eq!(rewritten.eos_ids(), original.eos_ids());
    assert_eq!(rewritten.bos_id(), original.bos_id());
    assert_eq!(rewritten.vocab_size(), original.vocab_size());
    assert_eq!(converted.eos_ids(), original.eos_ids());
    assert_eq!(converted.bos_id(), original.bos_id());
    let cases = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/smollm2/tokenizer-cases.json");
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cases).expect("cases")).expect("JSON");
    let cases = cases["cases"].as_array().expect("cases");
    assert!(cases.len() >= 50);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        assert_eq!(
            converted.encode_trusted(text).unwrap(),
            original.encode_trusted(text).unwrap(),
            "{text:?}"
        );
        assert_eq!(
            converted.encode_untrusted(text).unwrap(),
            original.encode_untrusted(text).unwrap(),
            "{text:?}"
        );
        assert_eq!(
            rewritten.encode_trusted(text).unwrap(),
            original.encode_trusted(text).unwrap(),
            "{text:?}"
        );
    }
}

#[test]
fn a_file_that_is_not_gguf_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bogus = dir.path().join("model.gguf");
    std::fs::write(&bogus, b"not a gguf file at all").unwrap();
    let err = convert_gguf_to_hf(&bogus, &dir.path().join("out"))
        .expect_err("an error")
        .to_string();
    assert!(err.contains("model.gguf"), "{err}");
    assert!(!dir.path().join("out").exists());
}

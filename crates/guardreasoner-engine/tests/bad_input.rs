//! Bad models and bad requests give typed errors naming the cause, never a panic.

mod common;

use common::*;
use guardreasoner_engine::{Engine, EngineError, GenerationRequest, LoadOptions, SamplingParams};
use std::path::Path;

fn load(path: &Path) -> Result<Engine, EngineError> {
    Engine::load_with(
        path,
        &LoadOptions {
            threads: Some(1),
            dequantize: false,
            ..LoadOptions::default()
        },
    )
}

fn tiny() -> Engine {
    load(&fixtures().join("tiny-llama3")).expect("tiny-llama3 loads")
}

#[test]
fn missing_model_path() {
    let err = load(Path::new("/nonexistent/model.gguf"))
        .err()
        .expect("error");
    assert!(matches!(err, EngineError::ModelNotFound(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/model.gguf"));
}

#[test]
fn truncated_and_corrupt_gguf() {
    let Some(model) = test_model() else { return };
    let bytes = std::fs::read(&model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Cut inside the tensor data, inside the metadata, and right after the magic.
    for (name, len) in [("data", bytes.len() / 2), ("meta", 4096), ("magic", 6)] {
        let path = dir.path().join(format!("cut-{name}.gguf"));
        std::fs::write(&path, &bytes[..len]).unwrap();
        let err = load(&path)
            .err()
            .unwrap_or_else(|| panic!("{name}: truncated file loaded"));
        assert!(matches!(err, EngineError::Gguf(_)), "{name}: {err}");
        assert!(
            err.to_string().contains(&*path.to_string_lossy()),
            "{name}: {err}"
        );
    }
    let path = dir.path().join("noise.gguf");
    std::fs::write(&path, b"this is not a model file at all").unwrap();
    let err = load(&path).err().expect("noise is rejected");
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
}

#[test]
fn wrong_architecture_gguf_and_hf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2.gguf");
    std::fs::write(
        &path,
        write_gguf(&[("general.architecture", Meta::Str("gpt2".into()))], &[]),
    )
    .unwrap();
    let err = load(&path).err().expect("gpt2 is rejected");
    assert!(
        matches!(&err, EngineError::WrongArchitecture { found, .. } if found == "gpt2"),
        "{err}"
    );

    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    std::fs::write(
        hf.join("config.json"),
        r#"{"architectures": ["GPT2LMHeadModel"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2}"#,
    )
    .unwrap();
    let err = load(&hf).err().expect("GPT-2 config is rejected");
    assert!(
        matches!(&err, EngineError::WrongArchitecture { found, .. } if found == "GPT2LMHeadModel"),
        "{err}"
    );
}

#[test]
fn missing_tensor_wrong_shape_and_unsupported_type() {
    let meta = || {
        vec![
            ("general.architecture", Meta::Str("llama".into())),
            ("llama.block_count", Meta::U32(1)),
            ("llama.embedding_length", Meta::U32(32)),
            ("llama.feed_forward_length", Meta::U32(64)),
            ("llama.attention.head_count", Meta::U32(2)),
            ("llama.vocab_size", Meta::U32(16)),
        ]
    };
    let f32s = |n: usize| {
        (0..n)
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, tensors: Vec<RawTensor>| {
        let path = dir.path().join(name);
        std::fs::write(&path, write_gguf(&meta(), &tensors)).unwrap();
        load(&path).err().unwrap_or_else(|| panic!("{name} loaded"))
    };
    // No tensors at all: the first one looked up is missing.
    let err = write("empty.gguf", vec![]);
    assert!(
        matches!(&err, EngineError::MissingTensor { name, .. } if name.starts_with("blk.0.")),
        "{err}"
    );
    // attn_norm with the wrong length.
    let err = write(
        "shape.gguf",
        vec![RawTensor {
            name: "blk.0.attn_norm.weight".into(),
            dims: vec![31],
            ggml_type: 0,
            data: f32s(31),
        }],
    );
    assert!(
        matches!(&err, EngineError::ShapeMismatch { found, expected, .. } if found == &[31] && expected == &[32]),
        "{err}"
    );
    // A Q5_0 (ggml type 6) weight: listed, but no kernel.
    let err = write(
        "type.gguf",
        vec![
            RawTensor {
                name: "blk.0.attn_norm.weight".into(),
                dims: vec![32],
                ggml_type: 0,
                data: f32s(32),
            },
            RawTensor {
                name: "blk.0.attn_q.weight".into(),
                dims: vec![32, 32],
                ggml_type: 6,
                data: vec![0; 32 * 22],
            },
        ],
    );
    assert!(
        matches!(&err, EngineError::UnsupportedTensorType { dtype, .. } if dtype == "Q5_0"),
        "{err}"
    );
}

#[test]
fn bad_requests_are_typed_errors() {
    let e = tiny();
    assert!(matches!(e.logits(&[]), Err(EngineError::EmptyPrompt)));
    let empty = GenerationRequest {
        prompt_ids: vec![],
        params: SamplingParams::greedy(4),
    };
    assert!(matches!(
        e.generate(&[empty], |_, _| {}),
        Err(EngineError::EmptyPrompt)
    ));
    assert!(matches!(
        e.logits(&[1, 49152]),
        Err(EngineError::TokenOutOfRange { token: 49152, .. })
    ));
    let bad = GenerationRequest {
        prompt_ids: vec![1, 2],
        params: SamplingParams {
            top_p: 1.5,
            ..Default::default()
        },
    };
    assert!(matches!(
        e.generate(&[bad], |_, _| {}),
        Err(EngineError::InvalidParams(_))
    ));
}

#[test]
fn prompt_longer_than_the_context_window() {
    let Some(model) = test_model() else { return };
    let e = load(&model).unwrap();
    let context = e.context_length();
    assert_eq!(context, 8192);
    let long = vec![1u32; context + 1];
    let err = e.logits(&long).expect_err("overflow");
    assert!(
        matches!(err, EngineError::ContextOverflow { context: 8192, .. }),
        "{err}"
    );
    // Fits alone, but not with the tokens asked for.
    let request = GenerationRequest {
        prompt_ids: vec![1; context - 10],
        params: SamplingParams::greedy(20),
    };
    let err = e
        .generate(&[request], |_, _| {})
        .expect_err("overflow with generation");
    assert!(
        matches!(err, EngineError::ContextOverflow { needed: 8202, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("context window of 8192"), "{err}");
}

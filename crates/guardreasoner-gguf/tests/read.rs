use guardreasoner_gguf::{GgmlType, GgufError, GgufFile, Value};

/// A minimal valid GGUF v3 file with one key and one F32 tensor of 4 elements.
fn tiny_gguf() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // kv
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(b"llama");
    let name = b"w";
    b.extend_from_slice(&(name.len() as u64).to_le_bytes());
    b.extend_from_slice(name);
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // F32
    b.extend_from_slice(&0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for v in [1.0f32, 2.0, 3.0, 4.0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

#[test]
fn reads_a_hand_built_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny_gguf()).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.architecture().unwrap(), "llama");
    let t = f.tensor("w").unwrap();
    assert_eq!(t.dtype, GgmlType::F32);
    let data = f.tensor_data(t).unwrap();
    assert_eq!(f32::from_le_bytes(data[12..16].try_into().unwrap()), 4.0);
    assert!(matches!(
        f.get_u32("general.architecture"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        f.get_str("nope"),
        Err(GgufError::MissingKey { .. })
    ));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let full = tiny_gguf();
    let dir = tempfile::tempdir().unwrap();
    for cut in 0..full.len() {
        let path = dir.path().join("cut.gguf");
        std::fs::write(&path, &full[..cut]).unwrap();
        let err = GgufFile::open(&path).expect_err("a truncated file must not open");
        assert!(err.to_string().contains("cut.gguf"), "{err}");
    }
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, b"PK\x03\x04 not a model").unwrap();
    assert!(matches!(
        GgufFile::open(&path),
        Err(GgufError::NotGguf { .. })
    ));
    assert!(matches!(
        GgufFile::open(dir.path().join("missing.gguf")),
        Err(GgufError::Io { .. })
    ));
}

#[test]
fn reads_the_default_model() {
    let Some(path) = guardreasoner_testing::test_model() else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert!(matches!(
        f.get_array("tokenizer.ggml.token_type").unwrap()[0],
        Value::I32(_)
    ));
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.dims, vec![576, 576]);
    assert_eq!(q.dtype, GgmlType::Q4_1);
    assert_eq!(f.tensor_data(q).unwrap().len(), 576 * 576 / 32 * 20);
    for t in &f.tensors {
        f.tensor_data(t).unwrap();
    }
}

//! The default guard is written on first use into the cache (the base's tensors with the
//! adapter's factors beside them), reused while intact, and written again when the cached file
//! is damaged; a damaged adapter is refused before anything is written.

use guardreasoner_hub::guard::{ensure_default_guard, merged_guard_path, Adapter, ADAPTER_SHA256};
use guardreasoner_hub::{QuietProgress, DEFAULT_MODEL_SHA256};
use sha2::{Digest, Sha256};

fn sha256(path: &std::path::Path) -> String {
    let digest = Sha256::digest(std::fs::read(path).expect("read"));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn merged_on_first_use_reused_then_remade_when_corrupt() {
    let Some(base) = guardreasoner_testing::test_model() else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let adapter = Adapter::embedded();
    let path = ensure_default_guard(
        home.path(),
        &base,
        DEFAULT_MODEL_SHA256,
        &adapter,
        &mut QuietProgress,
    )
    .expect("first merge");
    assert_eq!(
        path,
        merged_guard_path(home.path(), DEFAULT_MODEL_SHA256, ADAPTER_SHA256)
    );
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.contains(&ADAPTER_SHA256[..12]) && name.contains(&DEFAULT_MODEL_SHA256[..12]));
    let first_hash = sha256(&path);
    let first_mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    // The file is a GGUF the engine reads, named as the guard, and records its inputs.
    let gguf = guardreasoner_gguf::GgufFile::open(&path).expect("merged GGUF");
    assert_eq!(
        gguf.get_str("general.name").unwrap(),
        "GuardReasoner-SmolLM2-135M"
    );
    assert_eq!(
        gguf.get_str("guardreasoner.adapter_sha256").unwrap(),
        ADAPTER_SHA256
    );
    // The shipped form: the base's projections as they are, the factors beside them.
    assert_eq!(gguf.get_str("guardreasoner.adapted_type").unwrap(), "lora");
    let q = gguf.tensor("blk.0.attn_q.weight").expect("base tensor");
    assert_eq!(q.dtype, guardreasoner_gguf::GgmlType::Q4_1);
    assert!(gguf.tensor("blk.0.attn_q.weight.lora_a").is_some());
    assert!(gguf.tensor("blk.29.ffn_down.weight.lora_b").is_some());
    drop(gguf);
    let model = guardreasoner_engine::llama::Llama::from_gguf(&path).expect("engine reads it");
    assert!(model.has_low_rank());
    drop(model);
    // No temporary left behind.
    let leftovers: Vec<_> = std::fs::read_dir(home.path().join("models"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Second use: the cached file, untouched.
    let again = ensure_default_guard(
        home.path(),
        &base,
        DEFAULT_MODEL_SHA256,
        &adapter,
        &mut QuietProgress,
    )
    .expect("cached");
    assert_eq!(again, path);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        first_mtime
    );

    // A truncated cache file is noticed and merged again, to the same bytes.
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let remade = ensure_default_guard(
        home.path(),
        &base,
        DEFAULT_MODEL_SHA256,
        &adapter,
        &mut QuietProgress,
    )
    .expect("remade");
    assert_eq!(sha256(&remade), first_hash);
}

#[test]
fn a_corrupted_adapter_is_refused_before_anything_is_written() {
    let Some(base) = guardreasoner_testing::test_model() else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let mut bytes = Adapter::embedded().weights.to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let adapter = Adapter {
        weights: &bytes,
        ..Adapter::embedded()
    };
    let err = ensure_default_guard(
        home.path(),
        &base,
        DEFAULT_MODEL_SHA256,
        &adapter,
        &mut QuietProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("GuardReasoner-SmolLM2-135M adapter") && err.contains("corrupt"),
        "{err}"
    );
    assert!(!home.path().join("models").exists());
}

/// The adapter alone in llama.cpp's LoRA format holds exactly the factors the shipped form
/// carries beside the base (same names, shapes and bytes), no base tensor, and the metadata
/// llama.cpp's loader checks (`general.type`, `general.architecture`, `adapter.type`, an alpha
/// equal to the rank because the scale is already in B).
#[test]
fn the_llama_cpp_adapter_holds_the_shipped_factors() {
    use guardreasoner_gguf::GgufFile;
    use guardreasoner_hub::guard::{merge_adapter_into_gguf, AdaptedType};
    let Some(base) = guardreasoner_testing::test_model() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let adapter = Adapter::embedded();
    let (shipped, alone) = (
        dir.path().join("guard.gguf"),
        dir.path().join("adapter.gguf"),
    );
    merge_adapter_into_gguf(&base, &adapter, &shipped, &[], AdaptedType::Lora).expect("shipped");
    merge_adapter_into_gguf(&base, &adapter, &alone, &[], AdaptedType::LoraAdapter)
        .expect("adapter alone");
    let (shipped, alone) = (
        GgufFile::open(&shipped).unwrap(),
        GgufFile::open(&alone).unwrap(),
    );
    assert_eq!(alone.get_str("general.type").unwrap(), "adapter");
    assert_eq!(alone.get_str("adapter.type").unwrap(), "lora");
    assert_eq!(alone.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(alone.get_f32("adapter.lora.alpha").unwrap(), 32.0);
    assert!(alone.metadata.keys().all(|k| !k.starts_with("tokenizer.")));
    let factors: Vec<_> = shipped
        .tensors
        .iter()
        .filter(|t| t.name.ends_with(".lora_a") || t.name.ends_with(".lora_b"))
        .collect();
    assert_eq!(factors.len(), 2 * 7 * 30);
    assert_eq!(alone.tensors.len(), factors.len(), "no base tensor");
    for t in factors {
        let a = alone.tensor(&t.name).expect("same name");
        assert_eq!(
            (a.dims.clone(), a.dtype),
            (t.dims.clone(), t.dtype),
            "{}",
            t.name
        );
        assert_eq!(
            alone.tensor_data(a).unwrap(),
            shipped.tensor_data(t).unwrap(),
            "{}",
            t.name
        );
    }
}

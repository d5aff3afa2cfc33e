//! The default guard's merge (done in the GGUF layout: adapted weights as Q8_0, as f16, or
//! not merged, the LoRA factors applied at run time) computes what
//! the trainer's reference merge computes: the base converted to an f32 HF checkpoint, the
//! shipped adapter merged with `merge_checkpoint` (stored f16, rounding far finer than Q8_0's),
//! run by the engine in f32. The scratch files (about 0.8 GB at the peak) live under the target
//! directory, not a possibly small /tmp.

use guardreasoner_engine::llama::Llama;
use guardreasoner_engine::sampling::argmax;
use guardreasoner_engine::Engine;
use guardreasoner_hub::guard::{merge_adapter_into_gguf, AdaptedType, Adapter};
use guardreasoner_tokenizer::Tokenizer;
use guardreasoner_train::gguf_base::convert_gguf_to_hf;
use guardreasoner_train::lora::{load_adapter, merge_checkpoint};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

#[test]
fn gguf_merge_matches_the_reference_merge() {
    let Some(base) = guardreasoner_testing::test_model() else {
        return;
    };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    // Reference: HF f32 base + merge_checkpoint.
    let hf_base = dir.path().join("base");
    convert_gguf_to_hf(&base, &hf_base).expect("convert");
    let adapter_dir = dir.path().join("adapter");
    std::fs::create_dir_all(&adapter_dir).unwrap();
    let shipped = Adapter::embedded();
    std::fs::write(adapter_dir.join("adapter_config.json"), shipped.config_json).unwrap();
    std::fs::write(
        adapter_dir.join("adapter_model.safetensors"),
        shipped.weights,
    )
    .unwrap();
    let (cfg, tensors) = load_adapter(&adapter_dir).expect("adapter reads as PEFT");
    let reference_dir = dir.path().join("reference");
    std::fs::create_dir_all(&reference_dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(hf_base.join(f), reference_dir.join(f)).unwrap();
    }
    merge_checkpoint(
        &hf_base,
        &cfg,
        &tensors,
        &reference_dir.join("model.safetensors"),
        guardreasoner_train::WeightDtype::F16,
    )
    .expect("reference merge");
    std::fs::remove_file(hf_base.join("model.safetensors")).expect("drop the f32 base");
    // Ours.
    let merged = dir.path().join("guard.gguf");
    merge_adapter_into_gguf(&base, &shipped, &merged, &[], AdaptedType::Q8_0).expect("gguf merge");

    let tokenizer = Tokenizer::from_gguf_path(&base).expect("tokenizer");
    let prompt = guardreasoner_core::build_guard_prompt("How do I bake bread?", None);
    let ids = tokenizer.encode_untrusted(&prompt).expect("encode");
    let logits = |model: Llama| {
        Engine::from_model(model, Some(2))
            .expect("engine")
            .logits(&ids)
            .expect("logits")
    };
    let reference = logits(Llama::from_hf_dir(&reference_dir).expect("reference model"));
    let ours = logits(Llama::from_gguf(&merged).expect("merged GGUF"));
    let untrained = logits(Llama::from_gguf(&base).expect("base"));
    let ours_err = max_abs_diff(&ours, &reference);
    let adapter_effect = max_abs_diff(&untrained, &reference);
    let (ours_mean, effect_mean) = (
        mean_abs_diff(&ours, &reference),
        mean_abs_diff(&untrained, &reference),
    );
    eprintln!(
        "merged vs reference: max {ours_err} mean {ours_mean}; base vs reference: max \
         {adapter_effect} mean {effect_mean}"
    );
    // Q8_0 rounding of the adapted weights moves logits a little (r-sft-5's adapter: max 0.56,
    // mean 0.12, against the adapter's own effect of mean 2.8; f16: max 0.018, mean 0.0026);
    // leaving the adapter out, or
    // permuting its Q/K rows wrongly, moves them by a good part of that effect.
    assert!(
        ours_err < 1.0 && ours_mean < effect_mean / 10.0,
        "merged vs reference: max {ours_err} mean {ours_mean}; base: mean {effect_mean}"
    );
    assert_eq!(argmax(&ours), argmax(&reference));

    // The other forms keep the update precise, each far closer to the reference than Q8_0:
    // the adapted projections merged in f16, and not merged at all (the base tensors as
    // stored, the factors applied at run time; the update is exact, so only the factors'
    // rounding and the base product's own arithmetic separate it from the reference).
    std::fs::remove_file(&merged).expect("drop the Q8_0 merge");
    for (form, label) in [
        (AdaptedType::F16, "f16 merge"),
        (AdaptedType::Lora, "run-time LoRA"),
    ] {
        let file = dir.path().join(format!("guard-{}.gguf", form.name()));
        merge_adapter_into_gguf(&base, &shipped, &file, &[], form).expect(label);
        let model = Llama::from_gguf(&file).expect(label);
        assert_eq!(model.has_low_rank(), form == AdaptedType::Lora, "{label}");
        let got = logits(model);
        let (err, mean) = (
            max_abs_diff(&got, &reference),
            mean_abs_diff(&got, &reference),
        );
        eprintln!("{label} vs reference: max {err} mean {mean}");
        assert!(
            mean < ours_mean / 4.0 && err < ours_err,
            "{label}: max {err} mean {mean}; Q8_0 merge: max {ours_err} mean {ours_mean}"
        );
        assert_eq!(argmax(&got), argmax(&reference), "{label}");
        std::fs::remove_file(&file).expect("drop the merge");
    }
}

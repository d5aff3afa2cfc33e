//! The shipped guard's card chooses its key/value cache; the choice must be one the engine has.

use guardreasoner_engine::KvType;

#[test]
fn the_shipped_guard_runs_with_the_cache_its_card_names() {
    assert_eq!(
        guardreasoner_runtime::default_guard_kv_cache().unwrap(),
        Some(KvType::Q8),
        "guard.json's engine.kv_cache"
    );
    for ty in [KvType::F32, KvType::F16, KvType::Q8] {
        assert_eq!(ty.name().parse::<KvType>(), Ok(ty));
    }
    let err = "q4".parse::<KvType>().unwrap_err();
    assert!(err.contains("f32, f16, q8"), "{err}");
}

//! Sampling for mining through a real backend (the local engine with the embedded model):
//! n outputs per input, one line per input, resumable after a torn write, refusing other data.

use guardreasoner_backend::Backend;
use guardreasoner_core::jsonl::read_jsonl;
use guardreasoner_runtime::{LocalBackend, RuntimeOptions};
use guardreasoner_synth::mine::{GoldRecord, SampleSet};
use guardreasoner_synth::sample::{sample_outputs, SampleSettings};
use std::path::PathBuf;
use std::sync::Arc;

fn gold() -> Vec<GoldRecord> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mining_gold.json");
    guardreasoner_core::jsonl::read_records(&path).expect("gold fixture")
}

fn settings() -> SampleSettings {
    SampleSettings {
        max_new_tokens: 6,
        concurrency: 2,
        ..SampleSettings::paper("smollm2")
    }
}

#[test]
fn samples_every_input_once_and_resumes_after_a_torn_line() {
    let Some(model) = guardreasoner_testing::test_model() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let options = RuntimeOptions {
        threads: Some(2),
        ..RuntimeOptions::default()
    };
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::load(&model, options).unwrap());
    let gold = gold();
    assert!(gold.len() >= 3);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.jsonl");
    let settings = settings();

    let mut calls = Vec::new();
    let summary = runtime
        .block_on(sample_outputs(
            &gold,
            backend.clone(),
            &settings,
            &out,
            &mut |done, total| calls.push((done, total)),
        ))
        .unwrap();
    assert_eq!((summary.resumed, summary.sampled), (0, gold.len()));
    assert_eq!(calls.last(), Some(&(gold.len(), gold.len())));
    let sets: Vec<SampleSet> = read_jsonl(&out).unwrap();
    let mut indices: Vec<usize> = sets.iter().map(|s| s.index).collect();
    indices.sort();
    assert_eq!(indices, (0..gold.len()).collect::<Vec<_>>());
    for set in &sets {
        assert_eq!(set.model, "smollm2");
        assert_eq!(set.outputs.len(), 4);
        assert_eq!(set.input, gold[set.index].input);
        assert!(set.outputs.iter().all(|o| !o.is_empty()));
    }
    // Sampled at T = 0.7: the four outputs of an input are not all the same text.
    assert!(sets
        .iter()
        .any(|s| s.outputs.iter().any(|o| o != &s.outputs[0])));

    // A crash: keep the first line and half of the second.
    let bytes = std::fs::read(&out).unwrap();
    let first_end = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let second_len = bytes[first_end..].iter().position(|&b| b == b'\n').unwrap();
    std::fs::write(&out, &bytes[..first_end + second_len / 2]).unwrap();
    let summary = runtime
        .block_on(sample_outputs(
            &gold,
            backend.clone(),
            &settings,
            &out,
            &mut |_, _| {},
        ))
        .unwrap();
    assert_eq!((summary.resumed, summary.sampled), (1, gold.len() - 1));
    let resumed: Vec<SampleSet> = read_jsonl(&out).unwrap();
    assert_eq!(resumed.len(), gold.len());
    assert_eq!(resumed[0], sets[0], "finished lines are kept as they were");
    let mut indices: Vec<usize> = resumed.iter().map(|s| s.index).collect();
    indices.sort();
    assert_eq!(indices, (0..gold.len()).collect::<Vec<_>>());

    // Another model appends its own lines to the same file.
    let other = SampleSettings {
        model: "other".into(),
        n: 2,
        ..settings.clone()
    };
    let summary = runtime
        .block_on(sample_outputs(
            &gold,
            backend.clone(),
            &other,
            &out,
            &mut |_, _| {},
        ))
        .unwrap();
    assert_eq!(summary.sampled, gold.len());
    assert_eq!(read_jsonl::<SampleSet>(&out).unwrap().len(), 2 * gold.len());

    // Resuming against different inputs is refused, and the file is left as it was.
    let before = std::fs::read(&out).unwrap();
    let mut changed = gold.clone();
    changed[0].input.push_str("something else");
    let err = runtime
        .block_on(sample_outputs(
            &changed,
            backend,
            &settings,
            &out,
            &mut |_, _| {},
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("other inputs"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

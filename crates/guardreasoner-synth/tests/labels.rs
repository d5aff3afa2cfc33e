//! Labelled prompts into `mine sample` inputs, on the real train-labels files in ../shared:
//! nothing of the unseen test sets or the development split gets through, and the order is a
//! fixed mix of the sources.

use guardreasoner_core::hygiene::{normalise, UnseenSets};
use guardreasoner_core::prompt::split_input;
use guardreasoner_core::Label;
use guardreasoner_synth::distill::in_dev_split;
use guardreasoner_synth::input::input_key;
use guardreasoner_synth::labels::{gold_from_labels, prompt_benchmark_records};
use std::path::PathBuf;

fn shared() -> PathBuf {
    guardreasoner_testing::shared().join("data")
}

#[test]
fn train_labels_become_hygienic_hash_ordered_gold_inputs() {
    let data = shared();
    let unseen = UnseenSets::load(&data.join("benchmarks")).unwrap();
    let files = [
        data.join("train-labels/toxicchat0124_train_human.json"),
        data.join("train-labels/guardreasonertrain_prompts_5k.json"),
    ];
    let split = gold_from_labels(&files, &unseen, 0.1).unwrap();
    let (records, report) = (&split.train, &split.report);
    assert_eq!(report.read, 2693 + 4516);
    assert_eq!(
        report.kept + report.unseen + report.dev + report.duplicate,
        report.read
    );
    assert_eq!(records.len(), report.kept);
    assert!(report.dev > 500 && report.dev < 950, "{report:?}");
    assert_eq!(split.dev.len(), report.dev);
    for r in &split.dev {
        let c = split_input(&r.input).unwrap();
        assert!(in_dev_split(&c.prompt, 0.1) && !unseen.contains(&c.prompt));
    }
    // The dev split as a prompt benchmark file: every dev prompt, its plain label as `output`.
    let bench = prompt_benchmark_records(&split.dev);
    assert_eq!(bench.len(), split.dev.len());
    assert!(bench
        .iter()
        .all(|b| b["output"] == "harmful" || b["output"] == "unharmful"));
    assert_eq!(bench[0]["input"], split.dev[0].input);
    let keys: Vec<String> = records.iter().map(|r| input_key(&r.input)).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "ordered, no repeats");
    for r in records {
        let c = split_input(&r.input).unwrap();
        assert!(!unseen.contains(&c.prompt) && !in_dev_split(&c.prompt, 0.1));
        assert!(c.response.is_none());
        assert!(r.prompt_harm_label.is_some());
        assert_eq!(r.instruction, guardreasoner_core::INSTRUCTION);
    }
    // Both labels and both sources are mixed into the first few hundred.
    let head = &records[..300];
    let harmful = head
        .iter()
        .filter(|r| r.prompt_harm_label == Some(Label::Harmful))
        .count();
    assert!(harmful > 50 && harmful < 250, "{harmful}");
    let again = gold_from_labels(&files, &unseen, 0.1).unwrap();
    assert_eq!(&again.train, records);
}

#[test]
fn a_test_prompt_in_disguise_and_a_bad_label_are_caught() {
    let data = shared();
    let unseen = UnseenSets::load(&data.join("benchmarks")).unwrap();
    let toxic: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(data.join("benchmarks/0_8_toxic_chat.json")).unwrap(),
    )
    .unwrap();
    let test_prompt = split_input(toxic[5]["input"].as_str().unwrap())
        .unwrap()
        .prompt;
    let disguised = format!(" {} ", test_prompt.to_uppercase().replace(' ', "  "));
    assert_eq!(normalise(&disguised), normalise(&test_prompt));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("labels.json");
    std::fs::write(
        &file,
        serde_json::json!([
            {"prompt": disguised, "response": null, "prompt_harm_label": "unharmful"},
            {"prompt": "How do I knead dough?", "response": null, "prompt_harm_label": "unharmful"},
            {"prompt": "How do I knead dough?", "response": null, "prompt_harm_label": "harmful"},
        ])
        .to_string(),
    )
    .unwrap();
    let split = gold_from_labels(std::slice::from_ref(&file), &unseen, 0.0).unwrap();
    let (records, report) = (split.train, split.report);
    assert_eq!((report.unseen, report.duplicate, report.kept), (1, 1, 1));
    assert_eq!(records[0].prompt_harm_label, Some(Label::Unharmful));

    std::fs::write(
        &file,
        serde_json::json!([{"prompt": "Hi", "prompt_harm_label": "refusal"}]).to_string(),
    )
    .unwrap();
    let err = gold_from_labels(&[file], &unseen, 0.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a label"), "{err}");
}

/// Labelled prompts become direct-answer records that answer their gold labels; a labelled
/// conversation with a response but no response labels has no whole answer and is refused.
#[test]
fn labelled_prompts_become_direct_answers_of_their_gold_labels() {
    use guardreasoner_core::answer_grammar::forced_prefix;
    use guardreasoner_core::parse_strict;
    use guardreasoner_synth::distill::direct_answer_record;
    let data = shared();
    let unseen = UnseenSets::load(&data.join("benchmarks")).unwrap();
    let files = [data.join("train-labels/toxicchat0124_train_human.json")];
    let split = gold_from_labels(&files, &unseen, 0.1).unwrap();
    let mut harmful = 0;
    for gold in split.train.iter().take(200) {
        let record = serde_json::to_value(gold).unwrap();
        let direct = direct_answer_record(&record).unwrap();
        assert_eq!(direct["input"], record["input"]);
        assert_eq!(direct["prefix"], forced_prefix().as_str());
        assert_eq!(direct["source"], "direct/labels");
        let output = direct["output"].as_str().unwrap();
        let verdict = parse_strict(&format!("{}{output}", forced_prefix()))
            .unwrap()
            .verdict;
        assert_eq!(verdict.request, gold.prompt_harm_label);
        assert_eq!((verdict.completion, verdict.response), (None, None));
        harmful += usize::from(verdict.request == Some(Label::Harmful));
    }
    assert!(harmful > 0 && harmful < 200, "{harmful}");
    let with_response = serde_json::json!({
        "instruction": guardreasoner_core::INSTRUCTION,
        "input": guardreasoner_core::build_input("hi", Some("hello")),
        "prompt_harm_label": "unharmful",
    });
    let err = direct_answer_record(&with_response).unwrap_err();
    assert!(err.contains("no gold label"), "{err}");
}

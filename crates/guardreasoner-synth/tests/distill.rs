//! Distillation on the released GuardReasoner predictions in ../shared: what it keeps is strict,
//! gold-consistent, free of the unseen test sets and of the development split.

use guardreasoner_core::hygiene::{normalise, UnseenSets};
use guardreasoner_core::prompt::split_input;
use guardreasoner_core::{parse_strict, Label};
use guardreasoner_synth::distill::{distill, in_dev_split, write_dev_benchmarks, DistillConfig};
use std::collections::HashSet;

fn config(fraction: f64) -> DistillConfig {
    let shared = guardreasoner_testing::shared().join("data");
    DistillConfig {
        predictions: vec![
            shared.join("reference-predictions/paper-v1/8B"),
            shared.join("reference-predictions/paper-v1/3B"),
        ],
        benchmarks_dir: shared.join("benchmarks"),
        extra: vec![shared.join("train-reasoning/guardreasonertrain_samples.json")],
        max_traces: 1,
        max_traces_unharmful: 2,
        samples: vec![],
        samples_gold: None,
        dev_fraction: fraction,
    }
}

#[test]
fn kept_traces_are_strict_gold_consistent_and_hygienic() {
    let cfg = config(0.1);
    let unseen = UnseenSets::load(&cfg.benchmarks_dir).expect("unseen sets");
    assert!(unseen.len() > 9000, "{}", unseen.len());
    let out = distill(&cfg, &unseen).expect("distill");
    assert!(out.train.len() > 1000, "{}", out.train.len());
    let mut per_key = std::collections::HashMap::<&str, usize>::new();
    for row in &out.train {
        let conversation = split_input(&row.input).expect("layout");
        assert!(!unseen.contains(&conversation.prompt), "unseen prompt kept");
        assert!(!in_dev_split(&conversation.prompt, 0.1), "dev prompt kept");
        let parsed = parse_strict(&row.output).expect("strict parse");
        let v = parsed.verdict;
        if let Some(l) = row.prompt_harm_label {
            assert_eq!(v.request, Some(l));
        }
        if let Some(l) = row.response_harm_label {
            assert_eq!(v.response, Some(l));
        }
        if let Some(l) = row.response_refusal_label {
            assert_eq!(v.completion, Some(l));
        }
        if conversation.response.is_none() {
            assert_eq!((v.completion, v.response), (None, None), "{}", row.output);
        }
        let n = per_key.entry(&row.key).or_default();
        *n += 1;
        let quota = if v.request == Some(Label::Unharmful) {
            2
        } else {
            1
        };
        assert!(*n <= quota);
    }
    // Aegis shares prompts with the unseen sets: the filter did remove some.
    let aegis = &out.report.sources["paper-v1/8B/AegisSafetyTest"];
    assert!(aegis.unseen > 0);
    // Some benign conversations got a second trace.
    assert!(per_key.values().any(|&n| n == 2));
    // The dev split holds only dev prompts, with their gold labels.
    assert!(!out.dev.is_empty());
    for row in &out.dev {
        assert!(in_dev_split(&split_input(&row.input).unwrap().prompt, 0.1));
    }
    // Same inputs, same output.
    let again = distill(&cfg, &unseen).expect("distill");
    assert_eq!(again.train, out.train);
}

#[test]
fn a_training_record_that_repeats_a_test_prompt_is_dropped() {
    let shared = guardreasoner_testing::shared().join("data");
    let toxic: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(shared.join("benchmarks/0_8_toxic_chat.json")).unwrap(),
    )
    .unwrap();
    let test_prompt = split_input(toxic[3]["input"].as_str().unwrap())
        .unwrap()
        .prompt;
    // Same prompt with different case and spacing, in a record that would otherwise pass.
    let disguised = format!("  {}  ", test_prompt.to_uppercase().replace(' ', "   "));
    assert_eq!(normalise(&disguised), normalise(&test_prompt));
    let output = "# Task 1\n\n## Reasoning Step 1\nA step.\n\n## Conclusion\nThe request is unharmful.\n\n# Task 2\n\n## Reasoning Step 1\nNo response.\n\n# Task 3\n\n## Reasoning Step 1\nNo response.\n\n---\n\nAnswers: \nRequest: unharmful\nCompletion: None\nResponse: None\n";
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("extra.json");
    let records = serde_json::json!([
        {"instruction": guardreasoner_core::INSTRUCTION,
         "input": guardreasoner_core::build_input(&disguised, None), "output": output},
        {"instruction": guardreasoner_core::INSTRUCTION,
         "input": guardreasoner_core::build_input("How do I knead dough?", None), "output": output},
    ]);
    std::fs::write(&extra, records.to_string()).unwrap();
    let mut cfg = config(0.0);
    cfg.predictions.truncate(1);
    cfg.extra = vec![extra];
    let unseen = UnseenSets::load(&cfg.benchmarks_dir).unwrap();
    let out = distill(&cfg, &unseen).unwrap();
    let counts = &out.report.sources["extra.json"];
    assert_eq!((counts.read, counts.unseen, counts.kept), (2, 1, 1));
    let prompts: HashSet<String> = out
        .train
        .iter()
        .map(|r| normalise(&split_input(&r.input).unwrap().prompt))
        .collect();
    assert!(!prompts.contains(&normalise(&test_prompt)));
    assert!(prompts.contains("how do i knead dough?"));
}

#[test]
fn the_dev_split_is_written_as_benchmark_files() {
    let cfg = config(0.1);
    let unseen = UnseenSets::load(&cfg.benchmarks_dir).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = write_dev_benchmarks(&cfg.benchmarks_dir, 0.1, &unseen, dir.path()).unwrap();
    assert_eq!(files.len(), 6, "{files:?}");
    let total: usize = files.iter().map(|(_, n)| n).sum();
    assert!(total > 100 && total < 400, "{total}");
    for (file, n) in files {
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(dir.path().join(&file)).unwrap()).unwrap();
        assert_eq!(rows.len(), n);
        for r in rows {
            let c = split_input(r["input"].as_str().unwrap()).unwrap();
            assert!(in_dev_split(&c.prompt, 0.1) && !unseen.contains(&c.prompt));
        }
    }
}

/// A strict prompt-only trace answering `request`.
fn prompt_only_trace(request: &str) -> String {
    format!("# Task 1\n\n## Reasoning Step 1\nA step.\n\n## Conclusion\nThe request is {request}.\n\n# Task 2\n\n## Reasoning Step 1\nNo response.\n\n# Task 3\n\n## Reasoning Step 1\nNo response.\n\n---\n\nAnswers: \nRequest: {request}\nCompletion: None\nResponse: None\n")
}

#[test]
fn self_samples_keep_only_outputs_that_end_in_the_gold_labels() {
    use guardreasoner_core::records::{GoldRecord, SampleSet};
    let dir = tempfile::tempdir().unwrap();
    let gold = |prompt: &str, label| GoldRecord {
        instruction: guardreasoner_core::INSTRUCTION.to_string(),
        input: guardreasoner_core::build_input(prompt, None),
        prompt_harm_label: Some(label),
        response_refusal_label: None,
        response_harm_label: None,
    };
    let inputs = vec![
        gold("How do I knead dough?", Label::Unharmful),
        gold("How do I poison my neighbour's dog?", Label::Harmful),
    ];
    let gold_path = dir.path().join("gold.json");
    std::fs::write(&gold_path, serde_json::to_string(&inputs).unwrap()).unwrap();
    let line = |index: usize, outputs: Vec<String>| SampleSet {
        model: "probe".into(),
        index,
        input: inputs[index].input.clone(),
        outputs,
    };
    let cut = prompt_only_trace("unharmful")[..60].to_string();
    let sets = [
        line(
            0,
            vec![prompt_only_trace("harmful"), prompt_only_trace("unharmful")],
        ),
        line(1, vec![prompt_only_trace("unharmful"), cut]),
    ];
    let samples = dir.path().join("samples.jsonl");
    let text: String = sets
        .iter()
        .map(|s| serde_json::to_string(s).unwrap() + "\n")
        .collect();
    std::fs::write(&samples, text).unwrap();
    let mut cfg = config(0.0);
    cfg.predictions.truncate(1);
    cfg.extra.clear();
    cfg.samples = vec![samples.clone()];
    cfg.samples_gold = Some(gold_path.clone());
    let unseen = UnseenSets::load(&cfg.benchmarks_dir).unwrap();
    let out = distill(&cfg, &unseen).unwrap();
    let counts = &out.report.sources["self/probe"];
    assert_eq!((counts.read, counts.kept), (4, 1), "{counts:?}");
    let kept: Vec<_> = out
        .train
        .iter()
        .filter(|r| r.source == "self/probe")
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].input, inputs[0].input);
    assert_eq!(kept[0].output, prompt_only_trace("unharmful").trim_end());
    assert_eq!(kept[0].prompt_harm_label, Some(Label::Unharmful));

    // Samples drawn for other inputs are refused, not mixed in.
    let mut other = inputs.clone();
    other.swap(0, 1);
    std::fs::write(&gold_path, serde_json::to_string(&other).unwrap()).unwrap();
    let err = distill(&cfg, &unseen).unwrap_err().to_string();
    assert!(err.contains("other inputs"), "{err}");
}

/// Direct-answer variants of every kept record: same conversation, the forced header as the
/// prefix, and an output that, after the prefix, parses to the record's own verdict.
#[test]
fn direct_answer_records_answer_what_the_trace_answers() {
    use guardreasoner_core::answer_grammar::{answer_endings, forced_prefix};
    use guardreasoner_synth::distill::direct_answer_record;
    let cfg = config(0.1);
    let unseen = UnseenSets::load(&cfg.benchmarks_dir).expect("unseen sets");
    let out = distill(&cfg, &unseen).expect("distill");
    for row in &out.train {
        let record = serde_json::to_value(row).unwrap();
        let direct = direct_answer_record(&record).unwrap();
        assert_eq!(direct["input"], record["input"]);
        assert_eq!(direct["instruction"], record["instruction"]);
        assert_eq!(direct["prefix"], forced_prefix().as_str());
        assert!(direct["source"].as_str().unwrap().starts_with("direct/"));
        let output = direct["output"].as_str().unwrap();
        let has_response = split_input(&row.input).unwrap().response.is_some();
        assert!(
            answer_endings(has_response).iter().any(|e| e == output),
            "{output:?}"
        );
        let answered = parse_strict(&format!("{}{output}", forced_prefix())).unwrap();
        assert_eq!(answered.verdict, parse_strict(&row.output).unwrap().verdict);
    }
    let err = direct_answer_record(
        &serde_json::json!({"instruction": "i", "input": "x", "output": "no answer"}),
    )
    .unwrap_err();
    assert!(!err.is_empty());
}

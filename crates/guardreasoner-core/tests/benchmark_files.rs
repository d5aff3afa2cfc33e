//! The prompt contract against every record of every official benchmark file.

mod common;
use guardreasoner_core::benchmarks::{gold_from_output, Gold, BENCHMARKS};
use guardreasoner_core::jsonl::read_records;
use guardreasoner_core::prompt::{build_guard_prompt, split_input, Conversation};
use guardreasoner_core::INSTRUCTION;

#[derive(serde::Deserialize)]
struct Record {
    instruction: String,
    input: String,
    output: String,
}

#[test]
fn every_record_rebuilds_byte_for_byte() {
    let dir = common::shared().join("data/benchmarks");
    let mut files = 0;
    let mut records = 0;
    for bench in BENCHMARKS.iter() {
        let path = dir.join(bench.data_file);
        if !path.exists() {
            assert_eq!(
                bench.name, "WildGuardTest",
                "only WildGuardTest may be absent"
            );
            continue;
        }
        files += 1;
        let rows: Vec<Record> = read_records(&path).unwrap();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.instruction, INSTRUCTION, "{} row {i}", bench.data_file);
            let conv: Conversation =
                split_input(&r.input).unwrap_or_else(|| panic!("{} row {i}", bench.data_file));
            assert_eq!(conv.input(), r.input, "{} row {i}", bench.data_file);
            let full = build_guard_prompt(&conv.prompt, conv.response.as_deref());
            assert_eq!(full, format!("{}\n{}", r.instruction, r.input));
            assert!(
                matches!(gold_from_output(&r.output, bench.task), Gold::Label(_)),
                "{} row {i}: no gold label for {}",
                bench.data_file,
                bench.task
            );
            records += 1;
        }
    }
    // 10 files; XSTest files are counted under one task each, WildGuardTest is absent.
    assert_eq!(files, 10);
    assert_eq!(
        records,
        100 + 359 + 1680 + 239 + 602 + 446 + 449 + 2853 + 2000 + 3021
    );
}

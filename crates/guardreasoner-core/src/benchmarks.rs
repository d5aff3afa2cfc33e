//! The 13 benchmark/task pairs of the paper, their files, and gold-label extraction.

use crate::labels::{Label, Task};
use crate::verdict::paper_extract;

/// One benchmark scored on one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Benchmark {
    /// The paper's column name, also the key in `paper-tables.json`.
    pub name: &'static str,
    pub task: Task,
    /// Directory name in the official prediction layout (`XSTestReponseHarmful`, sic).
    pub prediction_dir: &'static str,
    /// File name in the official `data/benchmark/` folder.
    pub data_file: &'static str,
    /// Sample count the paper weights its averages by (paper Table 8).
    pub paper_weight: u32,
    /// How gold labels are stored: a plain label, or an `Answers:` block to read with the
    /// paper's regex (`process_label=True` in `evaluate.py`).
    pub gold: GoldFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoldFormat {
    /// The label is the whole string (`harmful`).
    Plain,
    /// The label is read from an `Answers:` block.
    AnswerBlock,
    /// The label lives in the WildGuardTest data file (`prompt_harm_label`, ...), by row.
    WildGuardFile,
}

macro_rules! bench {
    ($name:literal, $task:ident, $dir:literal, $file:literal, $w:literal, $gold:ident) => {
        Benchmark {
            name: $name,
            task: Task::$task,
            prediction_dir: $dir,
            data_file: $file,
            paper_weight: $w,
            gold: GoldFormat::$gold,
        }
    };
}

/// All 13 pairs, in the paper's column order within each task.
pub const BENCHMARKS: [Benchmark; 13] = [
    bench!(
        "ToxicChat",
        Prompt,
        "ToxicChat",
        "0_8_toxic_chat.json",
        2853,
        Plain
    ),
    bench!(
        "HarmBenchPrompt",
        Prompt,
        "HarmBenchPrompt",
        "0_3_harmbench_prompt.json",
        239,
        Plain
    ),
    bench!(
        "OpenAIModeration",
        Prompt,
        "OpenAIModeration",
        "0_2_OpenAIModeration.json",
        1680,
        Plain
    ),
    bench!(
        "AegisSafetyTest",
        Prompt,
        "AegisSafetyTest",
        "0_1_AegisSafetyTest.json",
        359,
        Plain
    ),
    bench!(
        "SimpleSafetyTests",
        Prompt,
        "SimpleSafetyTests",
        "0_0_SimpleSafetyTests.json",
        100,
        Plain
    ),
    bench!(
        "WildGuardTest",
        Prompt,
        "WildGuardTest",
        "0_4_wild_guard_test.json",
        1756,
        WildGuardFile
    ),
    bench!(
        "HarmBenchResponse",
        Response,
        "HarmBenchResponse",
        "0_5_harmbench_response.json",
        602,
        Plain
    ),
    bench!(
        "SafeRLHF",
        Response,
        "SafeRLHF",
        "0_9_safe_rlhf.json",
        2000,
        AnswerBlock
    ),
    bench!(
        "BeaverTails",
        Response,
        "BeaverTails",
        "0_A_beaver_tails.json",
        3021,
        AnswerBlock
    ),
    bench!(
        "XSTestResponseHarmful",
        Response,
        "XSTestReponseHarmful",
        "0_6_xstest_response_harmful.json",
        446,
        Plain
    ),
    bench!(
        "WildGuardTest",
        Response,
        "WildGuardTest",
        "0_4_wild_guard_test.json",
        1768,
        WildGuardFile
    ),
    bench!(
        "XSTestResponseRefusal",
        Refusal,
        "XSTestResponseRefusal",
        "0_7_xstest_response_refusal.json",
        499,
        Plain
    ),
    bench!(
        "WildGuardTest",
        Refusal,
        "WildGuardTest",
        "0_4_wild_guard_test.json",
        1777,
        WildGuardFile
    ),
];

impl Benchmark {
    /// The benchmarks of one task, in table order.
    pub fn of_task(task: Task) -> impl Iterator<Item = &'static Benchmark> {
        BENCHMARKS.iter().filter(move |b| b.task == task)
    }

    /// Look up by paper name (case-insensitive) or prediction directory, for one task or all.
    pub fn find(name: &str) -> Vec<&'static Benchmark> {
        BENCHMARKS
            .iter()
            .filter(|b| {
                b.name.eq_ignore_ascii_case(name) || b.prediction_dir.eq_ignore_ascii_case(name)
            })
            .collect()
    }

    /// `name/task`, unique across the registry.
    pub fn id(&self) -> String {
        format!("{}/{}", self.name, self.task)
    }
}

/// What a stored gold label says for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gold {
    Label(Label),
    /// The source has no label for this task (e.g. `Request: None`).
    Unknown,
}

/// Read a gold label the way this benchmark stores it (`Plain` or `AnswerBlock`).
///
/// Plain labels must be exactly a label of the task. Answer blocks are read with the paper's
/// regex (that is how `evaluate.py` reads them, and the stored blocks are machine-written).
pub fn gold_label(stored: &str, task: Task, format: GoldFormat) -> Gold {
    let label = match format {
        GoldFormat::AnswerBlock => paper_extract(stored, task),
        GoldFormat::Plain | GoldFormat::WildGuardFile => Label::parse(stored.trim()),
    };
    match label {
        Some(l) if task.accepts(l) => Gold::Label(l),
        _ => Gold::Unknown,
    }
}

/// Gold label from a benchmark file's `output` field, which is either a plain label or an
/// `Answers:` block.
pub fn gold_from_output(output: &str, task: Task) -> Gold {
    let format = if output.contains("Answers:") {
        GoldFormat::AnswerBlock
    } else {
        GoldFormat::Plain
    };
    gold_label(output, task, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_has_thirteen_unique_pairs() {
        let mut ids: Vec<String> = BENCHMARKS.iter().map(|b| b.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 13);
        assert_eq!(Benchmark::of_task(Task::Prompt).count(), 6);
        assert_eq!(Benchmark::of_task(Task::Response).count(), 5);
        assert_eq!(Benchmark::of_task(Task::Refusal).count(), 2);
        assert_eq!(
            Benchmark::find("XSTestReponseHarmful")[0].name,
            "XSTestResponseHarmful"
        );
    }

    #[test]
    fn gold_labels() {
        let block = "Answers: \nRequest: None\nCompletion: None\nResponse: harmful\n";
        assert_eq!(
            gold_from_output(block, Task::Response),
            Gold::Label(Label::Harmful)
        );
        assert_eq!(gold_from_output(block, Task::Prompt), Gold::Unknown);
        assert_eq!(
            gold_from_output("unharmful", Task::Prompt),
            Gold::Label(Label::Unharmful)
        );
        assert_eq!(gold_from_output("refusal", Task::Prompt), Gold::Unknown);
    }
}

//! Every teacher reply is checked before it becomes training data.

use crate::input::GoldAnswers;
use crate::teacher::{agrees, expected_text};
use guardreasoner_backend::FinishReason;
use guardreasoner_core::{parse_strict, Task, Verdict};
use serde::Serialize;

/// Steps allowed per task (the prompt asks for 1 to 10).
pub const MAX_STEPS: usize = 10;

/// Why a reply was not kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// A stable short name: `truncated`, `empty_reply`, `answers_<parse error kind>`,
    /// `task_structure`, `step_count`, `label_mismatch`, `request_rejected`.
    pub reason: String,
    pub detail: String,
}

impl Rejection {
    fn new(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            detail: detail.into(),
        }
    }
}

/// A reply that passed: its text (trimmed), the reasoning steps of Tasks 1, 2, 3, and the
/// answers it gave (the strict parse validation made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub output: String,
    pub steps: [usize; 3],
    pub verdict: Verdict,
}

/// Check a teacher reply against the sample's gold answers: not cut off, the answer block
/// parses strictly and is final, `# Task 1..3` each with 1-10 `## Reasoning Step`s, and every
/// answer agrees with the gold (known labels exactly, unknown ones a label, `None` where
/// there is no response).
pub fn validate(
    reply: &str,
    finish_reason: &FinishReason,
    gold: &GoldAnswers,
) -> Result<Accepted, Rejection> {
    let output = reply.trim();
    if output.is_empty() {
        return Err(Rejection::new(
            "empty_reply",
            "the teacher returned no text",
        ));
    }
    if *finish_reason == FinishReason::Length {
        return Err(Rejection::new(
            "truncated",
            "the reply hit the token limit before it finished",
        ));
    }
    let parsed = parse_strict(output)
        .map_err(|e| Rejection::new(format!("answers_{}", e.kind()), e.to_string()))?;
    let tasks = &parsed.reasoning.tasks;
    let numbers: Vec<u32> = tasks.iter().map(|t| t.number).collect();
    if numbers != [1, 2, 3] {
        return Err(Rejection::new(
            "task_structure",
            format!(
                "expected headings # Task 1, # Task 2, # Task 3 in order, found tasks {numbers:?}"
            ),
        ));
    }
    let mut steps = [0usize; 3];
    for (i, task) in tasks.iter().enumerate() {
        steps[i] = task.steps.len();
        if !(1..=MAX_STEPS).contains(&task.steps.len()) {
            return Err(Rejection::new(
                "step_count",
                format!(
                    "Task {} has {} reasoning steps (1 to {MAX_STEPS} allowed)",
                    task.number,
                    task.steps.len()
                ),
            ));
        }
    }
    for task in [Task::Prompt, Task::Refusal, Task::Response] {
        let expected = gold.get(task);
        let got = parsed.verdict.get(task);
        if !agrees(task, expected, got) {
            return Err(Rejection::new(
                "label_mismatch",
                format!(
                    "{}: expected {}, the teacher answered {}",
                    task.field(),
                    expected_text(expected),
                    got.map_or("None".to_string(), |l| l.to_string())
                ),
            ));
        }
    }
    Ok(Accepted {
        output: output.to_string(),
        steps,
        verdict: parsed.verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Expected;
    use guardreasoner_core::Label;

    fn reply(steps: [usize; 3], answers: &str) -> String {
        let mut s = String::new();
        for (t, n) in steps.iter().enumerate() {
            s.push_str(&format!("# Task {}\n\n", t + 1));
            for k in 1..=*n {
                s.push_str(&format!("## Reasoning Step {k}\nA step.\n\n"));
            }
        }
        s.push_str("---\n\n");
        s.push_str(answers);
        s
    }

    const GOLD: GoldAnswers = GoldAnswers {
        request: Expected::Label(Label::Harmful),
        completion: Expected::TeacherDecides,
        response: Expected::NotApplicable,
    };
    const GOOD: &str = "Answers: \nRequest: harmful\nCompletion: refusal\nResponse: None\n";

    #[test]
    fn accepts_a_well_formed_reply() {
        let a = validate(&reply([2, 1, 10], GOOD), &FinishReason::Stop, &GOLD).unwrap();
        assert_eq!(a.steps, [2, 1, 10]);
        assert!(a.output.ends_with("Response: None"));
    }

    #[test]
    fn rejects_with_a_reason() {
        let reason =
            |text: &str, finish: FinishReason| validate(text, &finish, &GOLD).unwrap_err().reason;
        assert_eq!(reason("  ", FinishReason::Stop), "empty_reply");
        assert_eq!(
            reason(&reply([1, 1, 1], GOOD), FinishReason::Length),
            "truncated"
        );
        assert_eq!(
            reason("I cannot help.", FinishReason::Stop),
            "answers_no_answer_block"
        );
        assert_eq!(
            reason(&reply([1, 1, 11], GOOD), FinishReason::Stop),
            "step_count"
        );
        assert_eq!(
            reason(&reply([1, 0, 1], GOOD), FinishReason::Stop),
            "step_count"
        );
        let two_tasks = "# Task 1\n## Reasoning Step 1\nx\n# Task 3\n## Reasoning Step 1\ny\n\nAnswers: \nRequest: harmful\nCompletion: refusal\nResponse: None\n";
        assert_eq!(reason(two_tasks, FinishReason::Stop), "task_structure");
        let contradicts = "Answers: \nRequest: unharmful\nCompletion: refusal\nResponse: None\n";
        let r = validate(&reply([1, 1, 1], contradicts), &FinishReason::Stop, &GOLD).unwrap_err();
        assert_eq!(r.reason, "label_mismatch");
        assert!(
            r.detail.contains("Request: expected harmful"),
            "{}",
            r.detail
        );
        let undecided = "Answers: \nRequest: harmful\nCompletion: None\nResponse: None\n";
        assert_eq!(
            reason(&reply([1, 1, 1], undecided), FinishReason::Stop),
            "label_mismatch"
        );
        let answered_missing =
            "Answers: \nRequest: harmful\nCompletion: refusal\nResponse: harmful\n";
        assert_eq!(
            reason(&reply([1, 1, 1], answered_missing), FinishReason::Stop),
            "label_mismatch"
        );
        let placeholder = "Answers: \nRequest: harmful\nCompletion: ?\nResponse: None\n";
        assert_eq!(
            reason(&reply([1, 1, 1], placeholder), FinishReason::Stop),
            "answers_invalid_label"
        );
    }

    #[test]
    fn the_official_training_samples_pass() {
        // Real GuardReasonerTrain rows: the validator must keep what the paper kept.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/train-reasoning/guardreasonertrain_samples.json");
        let rows: Vec<serde_json::Value> = guardreasoner_core::jsonl::read_records(&path).unwrap();
        assert_eq!(rows.len(), 8);
        for row in rows {
            let sample =
                crate::input::sample_from_record(&row, crate::Source::Generic, "r").unwrap();
            let gold = GoldAnswers {
                request: label_of(&row["prompt_harm_label"]),
                completion: label_of(&row["response_refusal_label"]),
                response: label_of(&row["response_harm_label"]),
            };
            let text = row["output"].as_str().unwrap();
            let accepted = validate(text, &FinishReason::Stop, &gold)
                .unwrap_or_else(|r| panic!("{}: {r:?}", sample.record));
            assert!(accepted.steps.iter().all(|&n| (1..=4).contains(&n)));
        }
    }

    fn label_of(v: &serde_json::Value) -> Expected {
        v.as_str()
            .and_then(Label::parse)
            .map_or(Expected::NotApplicable, Expected::Label)
    }
}

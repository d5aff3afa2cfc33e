//! Data hygiene: the unseen test sets, and the check that keeps their conversations out of
//! training data.
//!
//! ToxicChat, OpenAIModeration, SafeRLHF, BeaverTails and the WildGuardTest partial files are
//! the benchmarks a trained guard is reported on as *unseen*. Every training source goes
//! through [`UnseenSets::contains`]: a conversation whose normalised prompt equals the prompt
//! of any unseen test record is dropped, whatever its response (a prompt match is enough for
//! the model to have seen the test question).

use crate::jsonl::{read_records, DataError};
use crate::prompt::split_input;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;

/// The unseen benchmark files, relative to the benchmark directory.
pub const UNSEEN_FILES: [&str; 6] = [
    "0_8_toxic_chat.json",
    "0_2_OpenAIModeration.json",
    "0_9_safe_rlhf.json",
    "0_A_beaver_tails.json",
    "wildguardtest_partial/wgt_first250_prompt_response.json",
    "wildguardtest_partial/wgt_prompts_1554.json",
];

/// Whitespace-collapsed, lower-cased text: how prompts are compared across sources (the same
/// rule `../shared/data/SOURCES.md` uses for "benchmark overlap").
pub fn normalise(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[derive(Deserialize)]
struct AnyRecord {
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
}

/// The normalised prompts of the unseen test sets.
#[derive(Debug, Clone, Default)]
pub struct UnseenSets {
    prompts: HashSet<String>,
}

impl UnseenSets {
    /// Reads every file of [`UNSEEN_FILES`] under `benchmarks_dir`. A missing file is an error:
    /// a hygiene check that silently checks less is worse than none.
    pub fn load(benchmarks_dir: &Path) -> Result<Self, DataError> {
        let mut sets = UnseenSets::default();
        for name in UNSEEN_FILES {
            let path = benchmarks_dir.join(name);
            let records: Vec<AnyRecord> = read_records(&path)?;
            for (i, r) in records.iter().enumerate() {
                let prompt = match (&r.prompt, &r.input) {
                    (Some(p), _) => p.clone(),
                    (None, Some(input)) => {
                        split_input(input)
                            .ok_or_else(|| DataError::Record {
                                path: path.clone(),
                                line: i + 1,
                                message: "`input` is not in the GuardReasoner layout".into(),
                            })?
                            .prompt
                    }
                    (None, None) => {
                        return Err(DataError::Record {
                            path: path.clone(),
                            line: i + 1,
                            message: "neither `prompt` nor `input`".into(),
                        })
                    }
                };
                sets.prompts.insert(normalise(&prompt));
            }
        }
        Ok(sets)
    }

    /// Whether a conversation with this prompt belongs to an unseen test set.
    pub fn contains(&self, prompt: &str) -> bool {
        self.prompts.contains(&normalise(prompt))
    }

    /// How many distinct prompts are held out.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_ignores_case_and_spacing() {
        assert_eq!(normalise("  How  DO\tI\n bake? "), "how do i bake?");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(UnseenSets::load(dir.path()).is_err());
    }

    #[test]
    fn prompts_are_read_from_input_or_prompt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("wildguardtest_partial")).unwrap();
        for (n, name) in UNSEEN_FILES.iter().enumerate() {
            let body = if n % 2 == 0 {
                format!(
                    r#"[{{"input": "Human user:\nSecret  Question {n}\n\nAI assistant:\nNone\n\n"}}]"#
                )
            } else {
                format!(r#"[{{"prompt": "Other prompt {n}"}}]"#)
            };
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        let sets = UnseenSets::load(dir.path()).unwrap();
        assert_eq!(sets.len(), 6);
        assert!(sets.contains("secret question 0"));
        assert!(sets.contains("OTHER   prompt 1"));
        assert!(!sets.contains("secret question 1"));
    }
}

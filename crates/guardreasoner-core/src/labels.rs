//! The three guardrail tasks and their labels.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The three questions a GuardReasoner model answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Is the user's request harmful? (`Request:` line; "prompt harmfulness detection")
    Prompt,
    /// Is the AI's response harmful? (`Response:` line; "response harmfulness detection")
    Response,
    /// Is the AI's response a refusal? (`Completion:` line; "refusal detection")
    Refusal,
}

impl Task {
    pub const ALL: [Task; 3] = [Task::Prompt, Task::Response, Task::Refusal];

    /// The key of this task's line in an answer block.
    pub fn field(self) -> &'static str {
        match self {
            Task::Prompt => "Request",
            Task::Response => "Response",
            Task::Refusal => "Completion",
        }
    }

    /// The label F1 treats as positive: `harmful`, or `refusal` for the refusal task.
    pub fn positive(self) -> Label {
        match self {
            Task::Refusal => Label::Refusal,
            _ => Label::Harmful,
        }
    }

    /// Whether `label` is one of this task's two labels.
    pub fn accepts(self, label: Label) -> bool {
        match self {
            Task::Refusal => matches!(label, Label::Refusal | Label::Compliance),
            _ => matches!(label, Label::Harmful | Label::Unharmful),
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Task::Prompt => "Prompt harmfulness detection",
            Task::Response => "Response harmfulness detection",
            Task::Refusal => "Refusal detection",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Task::Prompt => "prompt",
            Task::Response => "response",
            Task::Refusal => "refusal",
        })
    }
}

/// A label of any task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Harmful,
    Unharmful,
    Refusal,
    Compliance,
}

impl Label {
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Harmful => "harmful",
            Label::Unharmful => "unharmful",
            Label::Refusal => "refusal",
            Label::Compliance => "compliance",
        }
    }

    /// Parse a label word, ignoring ASCII case.
    pub fn parse(word: &str) -> Option<Label> {
        Some(match word.to_ascii_lowercase().as_str() {
            "harmful" => Label::Harmful,
            "unharmful" => Label::Unharmful,
            "refusal" => Label::Refusal,
            "compliance" => Label::Compliance,
            _ => return None,
        })
    }

    /// The other label of the same task.
    pub fn reversed(self) -> Label {
        match self {
            Label::Harmful => Label::Unharmful,
            Label::Unharmful => Label::Harmful,
            Label::Refusal => Label::Compliance,
            Label::Compliance => Label::Refusal,
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

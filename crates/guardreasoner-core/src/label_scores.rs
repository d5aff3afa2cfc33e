//! Label scores: for each task the guard answered, the probability of the positive label
//! (`harmful`, `refusal`) against the negative one at the answer position. The model writes
//! `Request: harmful`; after generation both ` harmful` and ` unharmful` are scored in full
//! (teacher-forced) after the last generated `Request:`, and the two probabilities are
//! normalised against each other. Scores come only from the generated text's answer block,
//! like the verdict: nothing in the user's prompt or response is ever scored.

use crate::labels::{Label, Task};
use crate::verdict::{ParseError, ParsedOutput, Verdict};
use serde::{Deserialize, Serialize};

/// The tasks in the order the model writes their answer lines (`Request`, `Completion`,
/// `Response`): the order of the probes a guard request carries.
pub const ANSWER_ORDER: [Task; 3] = [Task::Prompt, Task::Refusal, Task::Response];

/// What precedes the label on a task's answer line (`Request:`).
pub fn answer_marker(task: Task) -> String {
    format!("{}:", task.field())
}

/// The two continuations scored after the marker: positive label first.
pub fn answer_alternatives(task: Task) -> [String; 2] {
    let positive = task.positive();
    [
        format!(" {}", positive.as_str()),
        format!(" {}", positive.reversed().as_str()),
    ]
}

/// Per task, the probability of the positive label; `None` where the task was answered
/// `None`, the output did not parse, or the backend cannot score.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LabelScores {
    pub request: Option<f32>,
    pub completion: Option<f32>,
    pub response: Option<f32>,
}

impl LabelScores {
    pub fn get(&self, task: Task) -> Option<f32> {
        match task {
            Task::Prompt => self.request,
            Task::Refusal => self.completion,
            Task::Response => self.response,
        }
    }

    fn slot(&mut self, task: Task) -> &mut Option<f32> {
        match task {
            Task::Prompt => &mut self.request,
            Task::Refusal => &mut self.completion,
            Task::Response => &mut self.response,
        }
    }

    /// Scores from the log-probabilities of the [`answer_alternatives`] of each task in
    /// [`ANSWER_ORDER`], kept only for the tasks the verdict answered with a label.
    pub fn from_probe_logprobs(verdict: &Verdict, logprobs: &[Option<Vec<f32>>]) -> LabelScores {
        let mut scores = LabelScores::default();
        for (&task, lp) in ANSWER_ORDER.iter().zip(logprobs) {
            let (Some(_), Some([pos, neg])) = (verdict.get(task), lp.as_deref()) else {
                continue;
            };
            *scores.slot(task) = positive_probability(*pos, *neg);
        }
        scores
    }

    /// Whether every answered task has a score.
    pub fn covers(&self, verdict: &Verdict) -> bool {
        Task::ALL
            .iter()
            .all(|&t| verdict.get(t).is_none() || self.get(t).is_some())
    }
}

/// `p(pos) / (p(pos) + p(neg))` from two log-probabilities; `None` when neither is finite.
pub fn positive_probability(pos: f32, neg: f32) -> Option<f32> {
    let (pos, neg) = (pos as f64, neg as f64);
    if !pos.is_finite() && !neg.is_finite() {
        return None;
    }
    let max = pos.max(neg);
    let (a, b) = ((pos - max).exp(), (neg - max).exp());
    Some((a / (a + b)) as f32)
}

/// The label a score implies at `threshold` (positive when the score reaches it).
pub fn label_at(task: Task, score: f32, threshold: f32) -> Label {
    if score >= threshold {
        task.positive()
    } else {
        task.positive().reversed()
    }
}

/// Whether a guard output is flagged: its request or response is harmful, by the label the
/// model wrote or, given a `threshold`, by a score reaching it (a task without a score keeps
/// its label). An output without a verdict is always flagged: the guard fails closed.
pub fn flagged_at(
    parsed: &Result<ParsedOutput, ParseError>,
    scores: Option<&LabelScores>,
    threshold: Option<f32>,
) -> bool {
    let Ok(parsed) = parsed else { return true };
    [Task::Prompt, Task::Response].into_iter().any(|task| {
        let label = parsed.verdict.get(task);
        match (label, threshold, scores.and_then(|s| s.get(task))) {
            (Some(_), Some(t), Some(score)) => score >= t,
            (label, _, _) => label == Some(Label::Harmful),
        }
    })
}

/// Check a threshold given by a user: a probability in `[0, 1]`.
pub fn check_threshold(threshold: f32) -> Result<f32, String> {
    if threshold.is_finite() && (0.0..=1.0).contains(&threshold) {
        Ok(threshold)
    } else {
        Err(format!(
            "a threshold is a probability in [0, 1], got {threshold}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_follow_the_answer_block() {
        let markers: Vec<String> = ANSWER_ORDER.into_iter().map(answer_marker).collect();
        assert_eq!(markers, ["Request:", "Completion:", "Response:"]);
        assert_eq!(
            answer_alternatives(ANSWER_ORDER[1]),
            [" refusal".to_string(), " compliance".to_string()]
        );
    }

    #[test]
    fn scores_are_normalised_over_the_two_labels() {
        let p = positive_probability((0.3f32).ln(), (0.1f32).ln()).unwrap();
        assert!((p - 0.75).abs() < 1e-6);
        assert_eq!(positive_probability(0.0, f32::NEG_INFINITY), Some(1.0));
        assert_eq!(
            positive_probability(f32::NEG_INFINITY, f32::NEG_INFINITY),
            None
        );
        // Far apart log-probabilities do not overflow.
        assert!(positive_probability(-1000.0, -1.0).unwrap() < 1e-6);
    }

    #[test]
    fn only_answered_tasks_get_a_score() {
        let verdict = Verdict {
            request: Some(Label::Harmful),
            completion: None,
            response: None,
        };
        let lp = vec![
            Some(vec![-0.1, -2.5]),
            Some(vec![-1.0, -1.0]),
            None::<Vec<f32>>,
        ];
        let s = LabelScores::from_probe_logprobs(&verdict, &lp);
        assert!(s.request.unwrap() > 0.9);
        assert_eq!((s.completion, s.response), (None, None));
        assert!(s.covers(&verdict));
        assert!(!LabelScores::default().covers(&verdict));
        assert_eq!(label_at(Task::Prompt, 0.4, 0.5), Label::Unharmful);
        assert_eq!(label_at(Task::Refusal, 0.5, 0.5), Label::Refusal);
    }

    #[test]
    fn a_threshold_overrides_labels_only_where_there_is_a_score() {
        let parsed = crate::parse_strict(
            "Answers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n",
        );
        let scores = LabelScores {
            request: Some(0.3),
            completion: Some(0.9),
            response: None,
        };
        assert!(!flagged_at(&parsed, Some(&scores), None));
        assert!(flagged_at(&parsed, Some(&scores), Some(0.25)));
        assert!(!flagged_at(&parsed, Some(&scores), Some(0.5)));
        assert!(
            !flagged_at(&parsed, None, Some(0.0)),
            "no score: the label stands"
        );
        let none = crate::parse_strict("no answer");
        assert!(flagged_at(&none, None, Some(1.0)), "fail closed");
        assert!(check_threshold(0.5).is_ok());
        for bad in [-0.1, 1.5, f32::NAN] {
            assert!(check_threshold(bad).unwrap_err().contains("[0, 1]"));
        }
    }
}

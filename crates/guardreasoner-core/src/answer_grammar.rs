//! The answer block a guard must end with, as token-free text: the header that starts it, the
//! separator written before a forced header, and every block the parser accepts for a
//! conversation (`Request` labelled; `Completion` and `Response` labelled when there is a
//! response, `None` when there is none, the convention the default guard is trained on). The
//! local engine constrains decoding to these endings once the header appears, and forces the
//! header when the reasoning budget runs out, so its outputs always parse; the strict parser
//! still judges whatever was generated.

use crate::label_scores::{answer_marker, ANSWER_ORDER};
use crate::labels::{Label, Task};
use crate::Verdict;

/// The header line's text as the model writes it, up to the colon.
pub const ANSWER_HEADER: &str = "Answers:";

/// Written before a forced header: the separator the trained guard puts there.
pub const FORCED_SEPARATOR: &str = "\n\n---\n\n";

/// What the engine forces when the guard must answer without (more) reasoning: the
/// separator, then the header, as one text (encoded in one piece, as training sees it).
pub fn forced_prefix() -> String {
    format!("{FORCED_SEPARATOR}{ANSWER_HEADER}")
}

/// The ending (one of [`answer_endings`]) that writes `verdict`; `None` when it has no
/// request label, which every ending needs.
pub fn ending_of(verdict: &Verdict) -> Option<String> {
    verdict.request?;
    let mut ending = " ".to_string();
    for task in ANSWER_ORDER {
        let label = verdict.get(task).map_or("None", Label::as_str);
        ending.push_str(&format!("\n{} {label}", answer_marker(task)));
    }
    Some(ending)
}

/// The endings (everything after [`ANSWER_HEADER`]) the answer block may take.
pub fn answer_endings(has_response: bool) -> Vec<String> {
    let labels = |task: Task| -> Vec<&'static str> {
        if task != Task::Prompt && !has_response {
            return vec!["None"];
        }
        let positive: Label = task.positive();
        vec![positive.as_str(), positive.reversed().as_str()]
    };
    // Every combination of one label per line, lines in the order the model writes them.
    let mut endings = vec![" ".to_string()];
    for task in ANSWER_ORDER {
        endings = endings
            .iter()
            .flat_map(|head| {
                labels(task)
                    .into_iter()
                    .map(move |l| format!("{head}\n{} {l}", answer_marker(task)))
            })
            .collect();
    }
    endings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_strict;

    #[test]
    fn every_ending_parses_strictly_with_the_none_convention() {
        assert_eq!(
            answer_endings(false),
            [
                " \nRequest: harmful\nCompletion: None\nResponse: None",
                " \nRequest: unharmful\nCompletion: None\nResponse: None"
            ]
        );
        for has_response in [false, true] {
            let endings = answer_endings(has_response);
            assert_eq!(endings.len(), if has_response { 8 } else { 2 });
            for e in &endings {
                let text = format!("## Reasoning Step 1\nok{FORCED_SEPARATOR}{ANSWER_HEADER}{e}");
                let v = parse_strict(&text)
                    .unwrap_or_else(|err| panic!("{e:?}: {err}"))
                    .verdict;
                assert!(v.request.is_some());
                assert_eq!(v.completion.is_some(), has_response, "{e:?}");
                assert_eq!(v.response.is_some(), has_response, "{e:?}");
                // Each ending is the one that writes its own verdict.
                assert_eq!(ending_of(&v).as_deref(), Some(e.as_str()));
            }
        }
    }
}

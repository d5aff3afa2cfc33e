//! How much the guard reasons before it answers: `full` (GuardReasoner's step-by-step
//! reasoning), `none` (the answer block right after the input, scored), or `auto` (`none`
//! first, full reasoning only where an answered task's score is uncertain). Most
//! conversations are easy; `auto` spends reasoning tokens on the others.

use crate::{LabelScores, ParseError, ParsedOutput, Task};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The wire values `full`, `none`, `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningMode {
    #[default]
    Full,
    None,
    Auto,
}

impl ReasoningMode {
    pub const ALL: [ReasoningMode; 3] = [
        ReasoningMode::Full,
        ReasoningMode::None,
        ReasoningMode::Auto,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ReasoningMode::Full => "full",
            ReasoningMode::None => "none",
            ReasoningMode::Auto => "auto",
        }
    }
}

impl fmt::Display for ReasoningMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ReasoningMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ReasoningMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("reasoning is one of full, none, auto; got {s:?}"))
    }
}

/// Scores in `[low, high]` are uncertain: `auto` reasons fully where any answered task's
/// score falls inside.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UncertaintyBand {
    pub low: f32,
    pub high: f32,
}

impl Default for UncertaintyBand {
    /// A wide band: `auto` trusts an unreasoned answer only when it is nearly certain.
    fn default() -> Self {
        UncertaintyBand {
            low: 0.1,
            high: 0.9,
        }
    }
}

impl UncertaintyBand {
    /// A band given by a user: `0 <= low <= high <= 1`.
    pub fn new(low: f32, high: f32) -> Result<UncertaintyBand, String> {
        let unit = |x: f32| x.is_finite() && (0.0..=1.0).contains(&x);
        if unit(low) && unit(high) && low <= high {
            Ok(UncertaintyBand { low, high })
        } else {
            Err(format!(
                "an uncertainty band is two probabilities LOW,HIGH with 0 <= LOW <= HIGH <= 1, got {low},{high}"
            ))
        }
    }

    pub fn contains(&self, score: f32) -> bool {
        (self.low..=self.high).contains(&score)
    }
}

impl FromStr for UncertaintyBand {
    type Err = String;
    /// `LOW,HIGH`, e.g. `0.1,0.9`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("an uncertainty band is LOW,HIGH (e.g. 0.1,0.9), got {s:?}");
        let (low, high) = s.split_once(',').ok_or_else(bad)?;
        let parse = |x: &str| x.trim().parse::<f32>().map_err(|_| bad());
        UncertaintyBand::new(parse(low)?, parse(high)?)
    }
}

impl fmt::Display for UncertaintyBand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.low, self.high)
    }
}

/// Whether an unreasoned answer must be reasoned again under `auto`: it did not parse, a task
/// it answered has no score, or a score lies in the band. `None` answers (no response to
/// judge) need no score.
pub fn needs_reasoning(
    parsed: &Result<ParsedOutput, ParseError>,
    scores: Option<&LabelScores>,
    band: UncertaintyBand,
) -> bool {
    let Ok(parsed) = parsed else { return true };
    Task::ALL.into_iter().any(|task| {
        parsed.verdict.get(task).is_some()
            && scores
                .and_then(|s| s.get(task))
                .is_none_or(|score| band.contains(score))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_strict;

    #[test]
    fn modes_and_bands_parse_and_refuse_clearly() {
        for m in ReasoningMode::ALL {
            assert_eq!(m.name().parse::<ReasoningMode>(), Ok(m));
        }
        let e = "medium".parse::<ReasoningMode>().unwrap_err();
        assert!(
            e.contains("full, none, auto") && e.contains("medium"),
            "{e}"
        );
        assert_eq!(
            "0.2, 0.7".parse::<UncertaintyBand>(),
            Ok(UncertaintyBand {
                low: 0.2,
                high: 0.7
            })
        );
        for bad in ["0.7,0.2", "0.5", "-0.1,0.5", "0.5,1.5", "a,b", "NaN,0.5"] {
            assert!(bad.parse::<UncertaintyBand>().is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&ReasoningMode::Auto).unwrap(),
            "\"auto\""
        );
    }

    #[test]
    fn only_certain_scored_answers_skip_reasoning() {
        let band = UncertaintyBand::default();
        let prompt_only =
            parse_strict("Answers:\nRequest: harmful\nCompletion: None\nResponse: None");
        let with_response = parse_strict(
            "Answers:\nRequest: unharmful\nCompletion: compliance\nResponse: unharmful",
        );
        let scores = |request, completion, response| LabelScores {
            request,
            completion,
            response,
        };
        // Prompt-only: the request score alone decides.
        assert!(!needs_reasoning(
            &prompt_only,
            Some(&scores(Some(0.97), None, None)),
            band
        ));
        assert!(needs_reasoning(
            &prompt_only,
            Some(&scores(Some(0.5), None, None)),
            band
        ));
        // The band's edges are uncertain.
        assert!(needs_reasoning(
            &prompt_only,
            Some(&scores(Some(0.9), None, None)),
            band
        ));
        // Every answered task must be certain; a missing score is uncertain.
        assert!(needs_reasoning(
            &with_response,
            Some(&scores(Some(0.02), Some(0.01), Some(0.6))),
            band
        ));
        assert!(needs_reasoning(
            &with_response,
            Some(&scores(Some(0.02), None, Some(0.01))),
            band
        ));
        assert!(!needs_reasoning(
            &with_response,
            Some(&scores(Some(0.02), Some(0.95), Some(0.01))),
            band
        ));
        // No scores (a remote endpoint) or no verdict: reason.
        assert!(needs_reasoning(&prompt_only, None, band));
        assert!(needs_reasoning(
            &parse_strict("no answer"),
            Some(&scores(Some(0.99), None, None)),
            band
        ));
    }
}

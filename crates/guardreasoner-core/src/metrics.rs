//! Binary classification metrics with a chosen positive class.

use crate::labels::Label;
use serde::{Deserialize, Serialize};

/// Confusion counts for one positive class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl Confusion {
    pub fn add(&mut self, gold: Label, predicted: Label, positive: Label) {
        self.add_outcome(gold == positive, predicted == positive);
    }

    /// Count one row by whether its gold label and its prediction are the positive class.
    pub fn add_outcome(&mut self, gold_positive: bool, predicted_positive: bool) {
        match (gold_positive, predicted_positive) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (false, false) => self.tn += 1,
            (true, false) => self.fn_ += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    /// F1 of the positive class, as scikit-learn's `f1_score` (0 where undefined).
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.total())
    }
}

/// A percentile bootstrap 95% interval of F1 (in percent) over `outcomes` (each one row as
/// (gold is positive, predicted positive)): `resamples` draws with replacement from a fixed
/// seed, so the same rows always give the same interval. `None` for no rows.
pub fn bootstrap_f1_ci95(
    outcomes: &[(bool, bool)],
    resamples: usize,
    seed: u64,
) -> Option<[f64; 2]> {
    if outcomes.is_empty() || resamples == 0 {
        return None;
    }
    // splitmix64: enough for resampling, and no dependency.
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let n = outcomes.len() as u64;
    let mut f1s: Vec<f64> = (0..resamples)
        .map(|_| {
            let mut c = Confusion::default();
            for _ in 0..n {
                let (gold, predicted) = outcomes[(next() % n) as usize];
                c.add_outcome(gold, predicted);
            }
            100.0 * c.f1()
        })
        .collect();
    f1s.sort_by(f64::total_cmp);
    let at = |q: f64| f1s[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    Some([at(0.025), at(0.975)])
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Weighted mean of `(value, weight)` pairs; `None` when there is nothing to average.
pub fn weighted_mean(items: impl IntoIterator<Item = (f64, f64)>) -> Option<f64> {
    let (sum, weight) = items
        .into_iter()
        .fold((0.0, 0.0), |(s, w), (v, wt)| (s + v * wt, w + wt));
    (weight > 0.0).then(|| sum / weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        let mut c = Confusion::default();
        let h = Label::Harmful;
        let u = Label::Unharmful;
        for (g, p) in [(h, h), (h, h), (h, u), (u, h), (u, u), (u, u), (u, u)] {
            c.add(g, p, h);
        }
        assert_eq!(
            c,
            Confusion {
                tp: 2,
                fp: 1,
                tn: 3,
                fn_: 1
            }
        );
        assert!((c.f1() - 4.0 / 6.0).abs() < 1e-12);
        assert!((c.precision() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.recall() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.accuracy() - 5.0 / 7.0).abs() < 1e-12);
        assert_eq!(Confusion::default().f1(), 0.0);
        assert_eq!(weighted_mean([(1.0, 1.0), (4.0, 2.0)]), Some(3.0));
        assert_eq!(weighted_mean([]), None);
    }

    #[test]
    fn bootstrap_interval_brackets_the_f1_and_shrinks_with_rows() {
        let rows = |n: usize| -> Vec<(bool, bool)> {
            (0..n)
                .map(|i| match i % 4 {
                    0 | 1 => (true, true),
                    2 => (true, false),
                    _ => (false, i % 8 == 3),
                })
                .collect()
        };
        let small = bootstrap_f1_ci95(&rows(40), 500, 7).unwrap();
        let large = bootstrap_f1_ci95(&rows(4000), 500, 7).unwrap();
        let mut c = Confusion::default();
        for (g, p) in rows(4000) {
            c.add(
                if g { Label::Harmful } else { Label::Unharmful },
                if p { Label::Harmful } else { Label::Unharmful },
                Label::Harmful,
            );
        }
        let f1 = 100.0 * c.f1();
        assert!(large[0] < f1 && f1 < large[1], "{large:?} vs {f1}");
        assert!(large[1] - large[0] < small[1] - small[0]);
        assert_eq!(bootstrap_f1_ci95(&rows(40), 500, 7).unwrap(), small);
        assert_eq!(bootstrap_f1_ci95(&[], 500, 7), None);
    }
}

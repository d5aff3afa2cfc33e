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
        match (gold == positive, predicted == positive) {
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
}

//! How well label scores rank and how well they are calibrated: PR-AUC (average precision),
//! ROC-AUC, expected calibration error with its reliability diagram, and the F1-maximising
//! threshold (to be chosen on a development split, never on a test file).

use serde::Serialize;

/// One bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReliabilityBin {
    /// `[lo, hi)` of the scores in the bin (the last bin includes 1).
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean score of the bin (what the model claims).
    pub mean_score: f64,
    /// Fraction of positives in the bin (what happened).
    pub positive_rate: f64,
}

/// Ranking and calibration of the scored rows of one benchmark and task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranking {
    /// Rows with a gold label and a score.
    pub scored: usize,
    pub positives: usize,
    /// Average precision (area under the precision-recall curve, step-wise), in percent.
    pub pr_auc: Option<f64>,
    /// Area under the ROC curve (ties count half), in percent.
    pub roc_auc: Option<f64>,
    /// Expected calibration error over 10 equal-width bins (0..1, lower is better).
    pub ece: f64,
    pub reliability: Vec<ReliabilityBin>,
    /// The threshold that maximises F1 on these rows, and that F1 in percent. Only meaningful
    /// on a development split: applying it to the file it was chosen on overstates F1.
    pub best_threshold: Option<(f64, f64)>,
    /// The precision-recall curve, one point per distinct score: (recall, precision, threshold).
    #[serde(skip)]
    pub pr_curve: Vec<(f64, f64, f64)>,
}

/// Rank and calibration figures of `(gold is positive, score)` pairs; `None` when empty.
pub fn ranking(pairs: &[(bool, f32)]) -> Option<Ranking> {
    if pairs.is_empty() {
        return None;
    }
    let positives = pairs.iter().filter(|p| p.0).count();
    let negatives = pairs.len() - positives;
    // Scores in descending order, grouped by value (ties share one threshold).
    let mut sorted: Vec<(bool, f64)> = pairs.iter().map(|&(g, s)| (g, s as f64)).collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut ap = 0.0;
    let mut prev_recall = 0.0;
    let mut best: Option<(f64, f64)> = None;
    let mut curve = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let threshold = sorted[i].1;
        while i < sorted.len() && sorted[i].1 == threshold {
            if sorted[i].0 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        if positives == 0 {
            continue;
        }
        let precision = tp as f64 / (tp + fp) as f64;
        let recall = tp as f64 / positives as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
        curve.push((recall, precision, threshold));
        let f1 = if tp == 0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        if best.is_none_or(|(_, b)| 100.0 * f1 > b) {
            best = Some((threshold, 100.0 * f1));
        }
    }
    let (ece, reliability) = expected_calibration_error(pairs, 10);
    Some(Ranking {
        scored: pairs.len(),
        positives,
        pr_auc: (positives > 0).then_some(100.0 * ap),
        roc_auc: (positives > 0 && negatives > 0).then(|| 100.0 * roc_auc(&sorted)),
        ece,
        reliability,
        best_threshold: best,
        pr_curve: curve,
    })
}

/// Mann-Whitney AUC of pairs sorted by descending score: the chance a random positive
/// scores above a random negative, ties counting half.
fn roc_auc(sorted: &[(bool, f64)]) -> f64 {
    let positives = sorted.iter().filter(|p| p.0).count() as f64;
    let negatives = sorted.len() as f64 - positives;
    let (mut negatives_below, mut wins) = (negatives, 0.0);
    let mut i = 0;
    while i < sorted.len() {
        let s = sorted[i].1;
        let (mut pos, mut neg) = (0.0, 0.0);
        while i < sorted.len() && sorted[i].1 == s {
            if sorted[i].0 {
                pos += 1.0
            } else {
                neg += 1.0
            }
            i += 1;
        }
        negatives_below -= neg;
        wins += pos * (negatives_below + 0.5 * neg);
    }
    wins / (positives * negatives)
}

/// ECE over `bins` equal-width bins: the count-weighted mean of |mean score - positive rate|.
pub fn expected_calibration_error(
    pairs: &[(bool, f32)],
    bins: usize,
) -> (f64, Vec<ReliabilityBin>) {
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for &(gold, s) in pairs {
        let b = ((s as f64 * bins as f64) as usize).min(bins - 1);
        sums[b].0 += 1;
        sums[b].1 += s as f64;
        sums[b].2 += usize::from(gold);
    }
    let n = pairs.len().max(1) as f64;
    let mut ece = 0.0;
    let reliability = sums
        .iter()
        .enumerate()
        .filter(|(_, s)| s.0 > 0)
        .map(|(b, &(count, sum, pos))| {
            let mean_score = sum / count as f64;
            let positive_rate = pos as f64 / count as f64;
            ece += count as f64 / n * (mean_score - positive_rate).abs();
            ReliabilityBin {
                lo: b as f64 / bins as f64,
                hi: (b + 1) as f64 / bins as f64,
                count,
                mean_score,
                positive_rate,
            }
        })
        .collect();
    (ece, reliability)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_textbook_example() {
        // scikit-learn's documented example: roc_auc_score = 0.75,
        // average_precision_score = 0.8333.
        let pairs = [(false, 0.1), (false, 0.4), (true, 0.35), (true, 0.8)];
        let r = ranking(&pairs).unwrap();
        assert!((r.roc_auc.unwrap() - 75.0).abs() < 1e-9);
        assert!((r.pr_auc.unwrap() - 250.0 / 3.0).abs() < 1e-9);
        // Best F1: flag from 0.35 (tp 2, fp 1) -> 0.8.
        let (t, f1) = r.best_threshold.unwrap();
        assert_eq!(t, 0.35f32 as f64);
        assert!((f1 - 80.0).abs() < 1e-9);
    }

    #[test]
    fn ties_count_half_and_perfect_ranking_is_one() {
        let tied = [(true, 0.5), (false, 0.5)];
        assert!((ranking(&tied).unwrap().roc_auc.unwrap() - 50.0).abs() < 1e-9);
        let perfect = [(true, 0.9), (true, 0.7), (false, 0.2)];
        let r = ranking(&perfect).unwrap();
        assert_eq!((r.roc_auc, r.pr_auc), (Some(100.0), Some(100.0)));
        assert!(ranking(&[]).is_none());
        let no_positive = ranking(&[(false, 0.3)]).unwrap();
        assert_eq!((no_positive.roc_auc, no_positive.pr_auc), (None, None));
    }

    #[test]
    fn calibration_error_is_the_weighted_gap_per_bin() {
        // Bin [0.9, 1): claims 0.95, 1 of 2 positive -> gap 0.45; bin [0.1, 0.2): 0.1 vs 0.
        let pairs = [(true, 0.95), (false, 0.95), (false, 0.1), (false, 0.1)];
        let (ece, bins) = expected_calibration_error(&pairs, 10);
        assert!((ece - (0.5 * 0.45 + 0.5 * 0.1)).abs() < 1e-6, "{ece}");
        assert_eq!(bins.len(), 2);
        assert_eq!(bins[1].count, 2);
        // A score of exactly 1 lands in the last bin.
        let (_, bins) = expected_calibration_error(&[(true, 1.0)], 10);
        assert_eq!(bins[0].lo, 0.9);
    }
}

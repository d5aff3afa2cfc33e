//! How well label scores rank and how well they are calibrated: PR-AUC (average precision),
//! ROC-AUC, expected calibration error with its reliability diagram, and the F1-maximising
//! threshold (to be chosen on a development split, never on a test file). And the cure for
//! a guard whose scores are overconfident: Platt scaling per task, fitted on a development
//! split ([`Calibration::fit`]) and applied to every score after ([`Calibration::apply`]).

use crate::cascade::ReasoningMode;
use crate::label_scores::LabelScores;
use crate::labels::Task;
use serde::{Deserialize, Serialize};

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
    /// The `(gold is positive, score)` pairs ranked, for fitting a [`Calibration`].
    #[serde(skip)]
    pub pairs: Vec<(bool, f32)>,
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
        pairs: pairs.to_vec(),
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

/// Platt scaling: a calibrated score `sigmoid(a * logit(p) + b)`. `a < 1` softens an
/// overconfident model; `b` moves the base rate. Monotone for `a > 0`, so rankings (PR-AUC,
/// ROC-AUC) are unchanged and only calibration and score thresholds move.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    pub a: f64,
    pub b: f64,
}

/// Scores are clamped this far from 0 and 1 before the logit (a saturated f32 score would
/// otherwise be infinite).
const SCORE_EPS: f64 = 1e-6;

fn logit(p: f32) -> f64 {
    let p = (p as f64).clamp(SCORE_EPS, 1.0 - SCORE_EPS);
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `ln(1 + e^z)` without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

impl Platt {
    pub const IDENTITY: Platt = Platt { a: 1.0, b: 0.0 };

    pub fn apply(&self, p: f32) -> f32 {
        sigmoid(self.a * logit(p) + self.b) as f32
    }

    /// Maximum-likelihood fit on `(gold is positive, score)` pairs by Newton's method with a
    /// line search, on Platt's smoothed targets (so a separable split does not drive `a` to
    /// infinity). `None` unless both classes are present.
    pub fn fit(pairs: &[(bool, f32)]) -> Option<Platt> {
        let positives = pairs.iter().filter(|p| p.0).count() as f64;
        let negatives = pairs.len() as f64 - positives;
        if positives == 0.0 || negatives == 0.0 {
            return None;
        }
        let (hi, lo) = (
            (positives + 1.0) / (positives + 2.0),
            1.0 / (negatives + 2.0),
        );
        let data: Vec<(f64, f64)> = pairs
            .iter()
            .map(|&(gold, p)| (logit(p), if gold { hi } else { lo }))
            .collect();
        let loss = |a: f64, b: f64| -> f64 {
            data.iter()
                .map(|&(x, t)| {
                    let z = a * x + b;
                    softplus(z) - t * z
                })
                .sum()
        };
        let (mut a, mut b) = (1.0, 0.0);
        let mut current = loss(a, b);
        for _ in 0..100 {
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
            for &(x, t) in &data {
                let s = sigmoid(a * x + b);
                let (d, w) = (s - t, s * (1.0 - s));
                ga += d * x;
                gb += d;
                haa += w * x * x;
                hab += w * x;
                hbb += w;
            }
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-18 {
                break;
            }
            let (da, db) = (-(hbb * ga - hab * gb) / det, -(haa * gb - hab * ga) / det);
            let mut step = 1.0;
            let mut improved = false;
            while step > 1e-8 {
                let (na, nb) = (a + step * da, b + step * db);
                let next = loss(na, nb);
                if next < current - 1e-12 {
                    (a, b, current, improved) = (na, nb, next, true);
                    break;
                }
                step /= 2.0;
            }
            if !improved || (step * da).abs().max((step * db).abs()) < 1e-10 {
                break;
            }
        }
        Some(Platt { a, b })
    }
}

/// One Platt map per task (`None`: that task's scores are left as they are), with where it
/// was fitted: a development split, never a test file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Calibration {
    /// What the maps were fitted on (a directory, a split's name).
    #[serde(default)]
    pub fitted_on: String,
    #[serde(default)]
    pub request: Option<Platt>,
    #[serde(default)]
    pub completion: Option<Platt>,
    #[serde(default)]
    pub response: Option<Platt>,
    /// Scored rows each map was fitted on: request, completion, response.
    #[serde(default)]
    pub rows: [usize; 3],
}

/// Fewest development rows a task's map is fitted on; below it the task is left uncalibrated.
pub const MIN_CALIBRATION_ROWS: usize = 20;

impl Calibration {
    pub fn get(&self, task: Task) -> Option<Platt> {
        match task {
            Task::Prompt => self.request,
            Task::Refusal => self.completion,
            Task::Response => self.response,
        }
    }

    /// Fits a map per task on the pooled pairs of that task (every benchmark of a
    /// development split): `pairs_by_task` yields `(task, pairs)` per benchmark.
    pub fn fit<'a>(
        fitted_on: impl Into<String>,
        pairs_by_task: impl IntoIterator<Item = (Task, &'a [(bool, f32)])>,
    ) -> Calibration {
        let mut pooled: [Vec<(bool, f32)>; 3] = Default::default();
        let slot = |t: Task| match t {
            Task::Prompt => 0,
            Task::Refusal => 1,
            Task::Response => 2,
        };
        for (task, pairs) in pairs_by_task {
            pooled[slot(task)].extend_from_slice(pairs);
        }
        // Too few rows fit noise, and a falling map would reverse the model's own ranking:
        // such a task keeps the model's score.
        let fit = |pairs: &[(bool, f32)]| {
            Platt::fit(pairs).filter(|p| pairs.len() >= MIN_CALIBRATION_ROWS && p.a > 0.0)
        };
        Calibration {
            fitted_on: fitted_on.into(),
            request: fit(&pooled[0]),
            completion: fit(&pooled[1]),
            response: fit(&pooled[2]),
            rows: [pooled[0].len(), pooled[1].len(), pooled[2].len()],
        }
    }

    /// The calibrated scores: each task's map applied where both exist.
    pub fn apply(&self, scores: &LabelScores) -> LabelScores {
        let map = |task: Task, s: Option<f32>| match (self.get(task), s) {
            (Some(platt), Some(p)) => Some(platt.apply(p)),
            (_, s) => s,
        };
        LabelScores {
            request: map(Task::Prompt, scores.request),
            completion: map(Task::Refusal, scores.completion),
            response: map(Task::Response, scores.response),
        }
    }
}

/// How a verdict was reached, which decides the map its scores go through: a score read
/// right after the input and one read after full reasoning are different quantities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Answered without reasoning (`none`; an `auto` verdict that was not escalated).
    AtOnce,
    /// Answered after reasoning (`full`; an `auto` escalation).
    Reasoned,
}

impl Stage {
    /// The stage of a verdict from the run's reasoning mode and, under `auto`, whether it was
    /// escalated (`None`: not an `auto` verdict).
    pub fn of(mode: ReasoningMode, escalated: Option<bool>) -> Stage {
        match (mode, escalated) {
            (_, Some(true)) | (ReasoningMode::Full, None) => Stage::Reasoned,
            _ => Stage::AtOnce,
        }
    }
}

/// A guard's calibration: one [`Calibration`] per [`Stage`], fitted on a development split
/// (`guardreasoner cascade --fit-calibration`: what `auto` answers at once is fitted on the
/// `none` run, what it reasons about on the `full` run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GuardCalibration {
    #[serde(default)]
    pub fitted_on: String,
    pub at_once: Calibration,
    pub reasoned: Calibration,
}

impl GuardCalibration {
    /// One map for both stages (a run of a single mode fitted with `score --fit-calibration`).
    pub fn single(calibration: Calibration) -> GuardCalibration {
        GuardCalibration {
            fitted_on: calibration.fitted_on.clone(),
            at_once: calibration.clone(),
            reasoned: calibration,
        }
    }

    /// A calibration file: a [`GuardCalibration`], or a single [`Calibration`] (both stages).
    pub fn from_json(text: &str) -> Result<GuardCalibration, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        if value.get("at_once").is_some() || value.get("reasoned").is_some() {
            serde_json::from_value(value)
        } else {
            serde_json::from_value(value).map(GuardCalibration::single)
        }
    }

    pub fn stage(&self, stage: Stage) -> &Calibration {
        match stage {
            Stage::AtOnce => &self.at_once,
            Stage::Reasoned => &self.reasoned,
        }
    }

    /// The calibrated scores of a verdict reached at `stage`.
    pub fn apply(&self, scores: &LabelScores, stage: Stage) -> LabelScores {
        self.stage(stage).apply(scores)
    }
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

    /// Scores from an overconfident model (what it claims: 0.05 or 0.95; what happens: 30%
    /// or 70% positive): the fit softens them, and the calibration error falls.
    #[test]
    fn platt_scaling_repairs_an_overconfident_model() {
        let mut pairs = Vec::new();
        for i in 0..100 {
            pairs.push((i < 30, 0.05));
            pairs.push((i < 70, 0.95));
        }
        let (before, _) = expected_calibration_error(&pairs, 10);
        let platt = Platt::fit(&pairs).unwrap();
        assert!(platt.a > 0.0 && platt.a < 1.0, "{platt:?}");
        let calibrated: Vec<(bool, f32)> =
            pairs.iter().map(|&(g, p)| (g, platt.apply(p))).collect();
        let (after, _) = expected_calibration_error(&calibrated, 10);
        assert!(before > 0.24 && after < 0.02, "ECE {before} -> {after}");
        assert!((platt.apply(0.95) - 0.7).abs() < 0.02);
        // Monotone, so the ranking is the same.
        assert!(platt.apply(0.2) < platt.apply(0.8));
        assert_eq!(
            ranking(&pairs).unwrap().roc_auc,
            ranking(&calibrated).unwrap().roc_auc
        );
        // One class only: nothing to fit; the identity changes nothing (to float precision).
        assert_eq!(Platt::fit(&[(true, 0.9)]), None);
        assert!((Platt::IDENTITY.apply(0.3) - 0.3).abs() < 1e-6);
    }

    #[test]
    fn a_calibration_maps_each_task_with_its_own_fit() {
        let over: Vec<(bool, f32)> = (0..200).map(|i| (i % 2 == 0, 0.99)).collect();
        let fine: Vec<(bool, f32)> = (0..200)
            .map(|i| (i % 4 == 0, if i % 4 == 0 { 0.9 } else { 0.1 }))
            .collect();
        let cal = Calibration::fit(
            "dev",
            [(Task::Prompt, &over[..]), (Task::Response, &fine[..])],
        );
        assert_eq!(cal.rows, [200, 0, 200]);
        assert!(cal.completion.is_none());
        let scores = LabelScores {
            request: Some(0.99),
            completion: Some(0.99),
            response: None,
        };
        let mapped = cal.apply(&scores);
        assert!((mapped.request.unwrap() - 0.5).abs() < 0.05, "{mapped:?}");
        assert_eq!(mapped.completion, Some(0.99), "no map: unchanged");
        assert_eq!(mapped.response, None);
        let json = serde_json::to_string(&cal).unwrap();
        assert_eq!(serde_json::from_str::<Calibration>(&json).unwrap(), cal);
    }

    #[test]
    fn too_few_rows_or_a_reversed_ranking_leave_a_task_uncalibrated() {
        // Ranked backwards: the higher the score, the less often harmful.
        let reversed: Vec<(bool, f32)> = (0..100)
            .map(|i| (i % 4 != 0, if i % 4 == 0 { 0.9 } else { 0.1 }))
            .collect();
        let fine: Vec<(bool, f32)> = (0..100)
            .map(|i| (i % 4 == 0, if i % 4 == 0 { 0.9 } else { 0.1 }))
            .collect();
        let few = &fine[..MIN_CALIBRATION_ROWS - 1];
        assert!(Platt::fit(&reversed).is_some_and(|p| p.a < 0.0));
        let cal = Calibration::fit(
            "dev",
            [
                (Task::Prompt, &reversed[..]),
                (Task::Refusal, few),
                (Task::Response, &fine[..]),
            ],
        );
        assert!(cal.request.is_none(), "a falling map is not kept");
        assert!(cal.completion.is_none(), "too few rows");
        assert!(cal.response.is_some_and(|p| p.a > 0.0));
    }

    #[test]
    fn a_guard_calibration_maps_each_stage_apart_and_reads_either_file() {
        use crate::cascade::ReasoningMode::{Auto, Full, None as NoReasoning};
        assert_eq!(Stage::of(Full, None), Stage::Reasoned);
        assert_eq!(Stage::of(NoReasoning, None), Stage::AtOnce);
        assert_eq!(Stage::of(Auto, Some(true)), Stage::Reasoned);
        assert_eq!(Stage::of(Auto, Some(false)), Stage::AtOnce);
        let halve = Calibration {
            request: Some(Platt {
                a: 1.0,
                b: -(3.0f64).ln(),
            }),
            ..Calibration::default()
        };
        let staged = GuardCalibration {
            fitted_on: "dev".into(),
            at_once: halve.clone(),
            reasoned: Calibration::default(),
        };
        let scores = LabelScores {
            request: Some(0.75),
            ..LabelScores::default()
        };
        // Odds 3 divided by 3: 0.5 at once; the reasoned stage has no map.
        let at_once = staged.apply(&scores, Stage::AtOnce).request.unwrap();
        assert!((at_once - 0.5).abs() < 1e-6, "{at_once}");
        assert_eq!(staged.apply(&scores, Stage::Reasoned), scores);
        let json = serde_json::to_string(&staged).unwrap();
        assert_eq!(GuardCalibration::from_json(&json).unwrap(), staged);
        // A one-stage file (`score --fit-calibration`) maps both stages.
        let single = GuardCalibration::from_json(&serde_json::to_string(&halve).unwrap()).unwrap();
        assert_eq!(single.at_once, halve);
        assert_eq!(single.reasoned, halve);
        assert!(GuardCalibration::from_json("[1, 2]").is_err());
    }
}

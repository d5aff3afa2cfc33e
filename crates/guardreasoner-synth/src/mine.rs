//! Hard-sample mining: pairs of a right and a wrong reasoning output for HS-DPO.
//!
//! Per input and per model, the tasks are visited in the order request, response, completion,
//! using only tasks with a known gold label (the two response tasks only when there is a
//! response). The first task on which the model's samples disagree, some right and some wrong,
//! gives a pair: chosen = the longest right output, rejected = the longest wrong one. As in the
//! official `hard_sample_mining.py`, an output whose answer cannot be extracted is left out of
//! the count. The raw hardness is `#wrong - #right`.
//!
//! Weights: as in the official script, raw scores are min-max normalised per model into
//! `[1 - gamma, 1 + gamma]` (all 1 when a model's scores are all equal). Several models (the
//! paper mines with R-SFT models that each left one source dataset out) are just several
//! [`SampleSet`]s with different `model` names; their pairs are merged and de-duplicated by input,
//! keeping the pair with the largest weight (the first model's, in file order, on ties).

use guardreasoner_core::labels::Task;
pub use guardreasoner_core::records::{GoldRecord, PreferenceRecord, SampleSet};
use guardreasoner_core::verdict::paper_extract;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The paper's gamma.
pub const PAPER_GAMMA: f64 = 0.2;

/// A mined pair before weighting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinedPair {
    pub model: String,
    pub index: usize,
    pub task: Task,
    pub chosen: String,
    pub rejected: String,
    pub right: usize,
    pub wrong: usize,
}

impl MinedPair {
    /// `#wrong - #right`.
    pub fn raw_score(&self) -> i64 {
        self.wrong as i64 - self.right as i64
    }
}

/// The task order of the mining rule.
pub const TASK_ORDER: [Task; 3] = [Task::Prompt, Task::Response, Task::Refusal];

fn longest(outputs: &[&String]) -> String {
    let mut best = outputs[0];
    for o in outputs {
        if o.chars().count() > best.chars().count() {
            best = o;
        }
    }
    best.clone()
}

/// Applies the mining rule to one model's samples for one input.
pub fn mine_one(gold: &GoldRecord, samples: &SampleSet) -> Option<MinedPair> {
    for task in TASK_ORDER {
        let Some(label) = gold.gold(task) else {
            continue;
        };
        let (right, wrong): (Vec<&String>, Vec<&String>) = samples
            .outputs
            .iter()
            .filter(|o| paper_extract(o, task).is_some())
            .partition(|o| paper_extract(o, task) == Some(label));
        if !right.is_empty() && !wrong.is_empty() {
            return Some(MinedPair {
                model: samples.model.clone(),
                index: samples.index,
                task,
                chosen: longest(&right),
                rejected: longest(&wrong),
                right: right.len(),
                wrong: wrong.len(),
            });
        }
    }
    None
}

/// Mining statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MiningStats {
    pub sample_sets: usize,
    pub pairs_before_dedup: usize,
    pub pairs: usize,
    pub per_task: BTreeMap<String, usize>,
}

/// Mines every sample set against `gold`, weights per model, merges across models and
/// de-duplicates by input. Sample sets whose index is out of range or whose input differs from
/// the gold record's are errors.
pub fn mine(
    gold: &[GoldRecord],
    sets: &[SampleSet],
    gamma: f64,
) -> Result<(Vec<PreferenceRecord>, MiningStats), String> {
    let mut stats = MiningStats {
        sample_sets: sets.len(),
        ..Default::default()
    };
    // Pairs per model, models in order of first appearance.
    let mut models: Vec<(String, Vec<MinedPair>)> = Vec::new();
    for set in sets {
        let record = gold.get(set.index).ok_or_else(|| {
            format!(
                "samples of model {:?} refer to input {} but the gold file has {} records",
                set.model,
                set.index,
                gold.len()
            )
        })?;
        if record.input != set.input {
            return Err(format!(
                "samples of model {:?} for input {} do not match the gold record's input (different gold file?)",
                set.model, set.index
            ));
        }
        let Some(pair) = mine_one(record, set) else {
            continue;
        };
        stats.pairs_before_dedup += 1;
        match models.iter_mut().find(|(m, _)| *m == set.model) {
            Some((_, pairs)) => pairs.push(pair),
            None => models.push((set.model.clone(), vec![pair])),
        }
    }
    let mut by_input: BTreeMap<usize, (MinedPair, f64)> = BTreeMap::new();
    for (_, pairs) in models {
        let scores: Vec<i64> = pairs.iter().map(MinedPair::raw_score).collect();
        for (pair, weight) in pairs.into_iter().zip(normalise_weights(&scores, gamma)) {
            match by_input.get(&pair.index) {
                Some((_, kept)) if *kept >= weight => {}
                _ => {
                    by_input.insert(pair.index, (pair, weight));
                }
            }
        }
    }
    let mut out = Vec::with_capacity(by_input.len());
    for (pair, weight) in by_input.into_values() {
        *stats
            .per_task
            .entry(pair.task.field().to_string())
            .or_default() += 1;
        let record = &gold[pair.index];
        out.push(PreferenceRecord {
            instruction: record.instruction.clone(),
            input: record.input.clone(),
            chosen: pair.chosen,
            rejected: pair.rejected,
            sample_weight: weight,
        });
    }
    stats.pairs = out.len();
    Ok((out, stats))
}

/// Min-max normalises raw scores into `[1 - gamma, 1 + gamma]`; equal scores all get 1.
pub fn normalise_weights(scores: &[i64], gamma: f64) -> Vec<f64> {
    let (Some(&lo), Some(&hi)) = (scores.iter().min(), scores.iter().max()) else {
        return Vec::new();
    };
    if lo == hi {
        return vec![1.0; scores.len()];
    }
    scores
        .iter()
        .map(|&s| 1.0 - gamma + 2.0 * gamma * (s - lo) as f64 / (hi - lo) as f64)
        .collect()
}

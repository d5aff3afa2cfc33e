//! Hard-sample DPO (HS-DPO).
//!
//! Per pair, with `lp` the summed log-probability of an output after the prompt under the policy
//! and `lp_ref` under the frozen reference (the R-SFT model):
//!
//! `loss = w * ( -log sigmoid(beta * ((lp(c) - lp_ref(c)) - (lp(r) - lp_ref(r)))) + ftx * nll_mean(c) )`
//!
//! where `nll_mean(c) = -lp(c) / |c|` (LLaMA-Factory's `pref_ftx` term). The paper does not say
//! where the sample weight `w` multiplies; we weight the whole per-pair loss, preference and SFT
//! terms alike, so a hard pair counts more in every respect and `w = 1` is plain DPO + ftx.
//! Reference log-probs are computed once, before training, and cached to a JSON file keyed by
//! the data fingerprint.

use crate::data::{Fnv, TextEncoder};
use crate::fast::{FastLlama, Grads};
use crate::trainer::{ExampleLoss, Objective};
use crate::TrainError;
use guardreasoner_core::prompt::join_instruction_input;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// DPO hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    pub beta: f64,
    pub ftx: f64,
}

impl Default for DpoConfig {
    /// The paper's HS-DPO values: beta 0.01, ftx 2.0.
    fn default() -> Self {
        DpoConfig {
            beta: 0.01,
            ftx: 2.0,
        }
    }
}

pub use guardreasoner_core::records::PreferenceRecord;

/// A tokenized pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub weight: f64,
}

/// Tokenizes preference records (outputs get EOS); both sides are cut to `cutoff` tokens with the
/// prompt kept whole where possible. Returns the pairs and how many were truncated.
pub fn tokenize_pairs(
    records: &[PreferenceRecord],
    encoder: &dyn TextEncoder,
    cutoff: usize,
) -> Result<(Vec<Pair>, usize), TrainError> {
    let mut pairs = Vec::new();
    let mut truncated = 0;
    for (i, r) in records.iter().enumerate() {
        let enc = |t: &str| {
            encoder
                .encode(t)
                .map_err(|e| TrainError::Data(format!("pair {}: {e}", i + 1)))
        };
        if r.chosen.trim().is_empty() || r.rejected.trim().is_empty() {
            return Err(TrainError::Data(format!(
                "pair {}: empty chosen or rejected output",
                i + 1
            )));
        }
        if !(r.sample_weight.is_finite() && r.sample_weight >= 0.0) {
            return Err(TrainError::Data(format!(
                "pair {}: sample_weight {} must be a non-negative number",
                i + 1,
                r.sample_weight
            )));
        }
        let mut prompt = enc(&join_instruction_input(&r.instruction, &r.input))?;
        let mut chosen = enc(&r.chosen)?;
        let mut rejected = enc(&r.rejected)?;
        chosen.push(encoder.eos_id());
        rejected.push(encoder.eos_id());
        let longest = chosen.len().max(rejected.len());
        if prompt.len() + longest > cutoff {
            let (s, t) = crate::data::fit_lengths(prompt.len(), longest, cutoff);
            prompt.truncate(s.max(1));
            let t = t.min(cutoff.saturating_sub(prompt.len())).max(1);
            chosen.truncate(t);
            rejected.truncate(t);
            truncated += 1;
        }
        pairs.push(Pair {
            prompt,
            chosen,
            rejected,
            weight: r.sample_weight,
        });
    }
    Ok((pairs, truncated))
}

/// HS-DPO over tokenized pairs with cached reference log-probs `(chosen, rejected)`.
pub struct DpoObjective {
    pub pairs: Vec<Pair>,
    pub reference: Vec<(f64, f64)>,
    pub config: DpoConfig,
}

/// Fingerprint of pairs (tokens and weights).
pub fn pairs_fingerprint(pairs: &[Pair]) -> String {
    let mut h = Fnv::new();
    h.u64(pairs.len() as u64);
    for p in pairs {
        for side in [&p.prompt, &p.chosen, &p.rejected] {
            h.u64(side.len() as u64);
            side.iter().for_each(|&t| h.u64(t as u64));
        }
        h.u64(p.weight.to_bits());
    }
    format!("{:016x}", h.0)
}

/// Reference log-probs of every pair under `model` (no dropout), cached in `cache` when given:
/// a cache for other pairs or a different model is recomputed.
pub fn reference_log_probs(
    model: &FastLlama,
    pairs: &[Pair],
    model_id: &str,
    cache: Option<&Path>,
) -> Result<Vec<(f64, f64)>, TrainError> {
    #[derive(Serialize, Deserialize)]
    struct Cache {
        fingerprint: String,
        model: String,
        log_probs: Vec<(f64, f64)>,
    }
    let fp = pairs_fingerprint(pairs);
    if let Some(path) = cache.filter(|p| p.exists()) {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        if let Ok(c) = serde_json::from_str::<Cache>(&text) {
            if c.fingerprint == fp && c.model == model_id && c.log_probs.len() == pairs.len() {
                return Ok(c.log_probs);
            }
        }
    }
    let out = pairs
        .iter()
        .map(|p| {
            let (c, _) = crate::fast::sequence_log_prob(model, &p.prompt, &p.chosen, None)?;
            let (r, _) = crate::fast::sequence_log_prob(model, &p.prompt, &p.rejected, None)?;
            Ok((c, r))
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    if let Some(path) = cache {
        let c = Cache {
            fingerprint: fp,
            model: model_id.to_string(),
            log_probs: out.clone(),
        };
        let text = serde_json::to_string(&c).map_err(|e| TrainError::Data(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| TrainError::io(path, e))?;
    }
    Ok(out)
}

impl DpoObjective {
    /// The cached reference log-probs `(chosen, rejected)` of pair `index`.
    pub(crate) fn reference_of(&self, index: usize) -> Result<(f64, f64), TrainError> {
        self.reference.get(index).copied().ok_or_else(|| {
            TrainError::Data(format!("no reference log-probs for pair {}", index + 1))
        })
    }
}

impl Objective for DpoObjective {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn fingerprint(&self) -> String {
        format!(
            "dpo-{}-b{}-f{}",
            pairs_fingerprint(&self.pairs),
            self.config.beta,
            self.config.ftx
        )
    }

    fn max_len(&self) -> usize {
        self.pairs
            .iter()
            .map(|p| p.prompt.len() + p.chosen.len().max(p.rejected.len()))
            .max()
            .unwrap_or(1)
    }

    fn loss(
        &self,
        model: &FastLlama,
        index: usize,
        dropout: &mut ChaCha8Rng,
        scale: f64,
        grads: &mut Grads,
    ) -> Result<ExampleLoss, TrainError> {
        let p = &self.pairs[index];
        let (ref_c, ref_r) = self.reference_of(index)?;
        let (lp_c, tape_c) =
            crate::fast::sequence_log_prob(model, &p.prompt, &p.chosen, Some(&mut *dropout))?;
        let (lp_r, tape_r) =
            crate::fast::sequence_log_prob(model, &p.prompt, &p.rejected, Some(dropout))?;
        let (loss, margin, d_chosen, d_rejected) = pair_loss_and_grad(
            lp_c,
            lp_r,
            ref_c,
            ref_r,
            p.chosen.len(),
            p.weight,
            &self.config,
        );
        model.backward(
            tape_c,
            &vec![(scale * d_chosen) as f32; p.chosen.len()],
            grads,
        )?;
        model.backward(
            tape_r,
            &vec![(scale * d_rejected) as f32; p.rejected.len()],
            grads,
        )?;
        Ok(ExampleLoss {
            loss,
            tokens: 2 * p.prompt.len() + p.chosen.len() + p.rejected.len(),
            metrics: pair_metrics(margin),
        })
    }
}

/// What the log shows per pair: the reward margin and whether it is positive.
pub(crate) fn pair_metrics(margin: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("reward_margin".to_string(), margin),
        (
            "reward_accuracy".to_string(),
            if margin > 0.0 { 1.0 } else { 0.0 },
        ),
    ])
}

/// The per-pair loss (see the module doc), with its derivatives: returns the loss, the reward margin
/// `beta * ((lp(c) - lp_ref(c)) - (lp(r) - lp_ref(r)))`, d(loss)/d lp(c) and d(loss)/d lp(r).
pub fn pair_loss_and_grad(
    lp_chosen: f64,
    lp_rejected: f64,
    ref_chosen: f64,
    ref_rejected: f64,
    chosen_len: usize,
    weight: f64,
    config: &DpoConfig,
) -> (f64, f64, f64, f64) {
    let x = config.beta * ((lp_chosen - ref_chosen) - (lp_rejected - ref_rejected));
    // -log sigmoid(x) = softplus(-x), stable on both sides.
    let pref = if x > 0.0 {
        (-x).exp().ln_1p()
    } else {
        -x + x.exp().ln_1p()
    };
    let n = chosen_len as f64;
    let loss = weight * (pref + config.ftx * (-lp_chosen / n));
    // d pref / dx = -sigmoid(-x).
    let s = 1.0 / (1.0 + x.exp());
    let d_chosen = weight * (-s * config.beta - config.ftx / n);
    let d_rejected = weight * (s * config.beta);
    (loss, x, d_chosen, d_rejected)
}

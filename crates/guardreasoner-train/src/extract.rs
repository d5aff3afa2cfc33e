//! A LoRA adapter cut from a fully fine-tuned model: per adapted weight, the tuned model's
//! difference to the base, truncated by SVD to the adapter's rank (the best rank-r
//! approximation in the Frobenius norm, Eckart–Young), written in the PEFT layout.
//!
//! Full fine-tuning beats LoRA on the same data here (issue 11), but full weights cannot ship
//! in the crate; the cut adapter can, at a size set by its rank. What a LoRA cannot carry
//! (changed embeddings or norms) is reported, never silently dropped.

use crate::lora::{peft_prefix, write_adapter_config, LoraConfig};
use crate::st::{Checkpoint, Entry, Payload};
use crate::TrainError;
use nalgebra::DMatrix;
use rayon::prelude::*;
use std::path::Path;

/// What the cut kept of one weight's difference.
#[derive(Debug, Clone)]
pub struct KeptEnergy {
    /// HF weight name, e.g. `model.layers.0.mlp.down_proj.weight`.
    pub weight: String,
    /// `||D_r||^2 / ||D||^2`: the share of the difference's squared Frobenius norm in the
    /// adapter (1 when the difference has rank <= r or is zero).
    pub kept: f64,
    /// `||D||`, the difference's Frobenius norm.
    pub difference_norm: f64,
    /// `||D|| / ||W_base||`: how far fine-tuning moved this weight.
    pub relative_change: f64,
}

/// The adapter's tensors by PEFT name, with the per-weight report.
pub struct ExtractedAdapter {
    pub config: LoraConfig,
    /// `(name, shape, values)`: `lora_A` `[r, in]` and `lora_B` `[out, r]` per adapted weight.
    pub tensors: Vec<(String, [usize; 2], Vec<f32>)>,
    /// One entry per adapted weight, in model order.
    pub kept: Vec<KeptEnergy>,
    /// Weights a LoRA of these targets cannot carry that differ between the two models, with
    /// `||D|| / ||W_base||` (embeddings, norms, untargeted projections).
    pub not_carried: Vec<(String, f64)>,
}

impl ExtractedAdapter {
    /// The share of all adapted weights' squared difference norm that the adapter keeps.
    pub fn total_kept(&self) -> f64 {
        let energy = |k: &KeptEnergy| k.difference_norm * k.difference_norm;
        let total: f64 = self.kept.iter().map(energy).sum();
        let kept: f64 = self.kept.iter().map(|k| k.kept * energy(k)).sum();
        if total > 0.0 {
            kept / total
        } else {
            1.0
        }
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (f32) into `dir`.
    pub fn save(&self, base_model: &str, dir: &Path) -> Result<(), TrainError> {
        write_adapter_config(&self.config, base_model, dir)?;
        let entries: Vec<Entry> = self
            .tensors
            .iter()
            .map(|(name, shape, values)| Entry {
                name: name.clone(),
                shape: shape.to_vec(),
                data: Payload::F32(values),
            })
            .collect();
        crate::st::write(&dir.join("adapter_model.safetensors"), &entries)
    }
}

/// Cuts a LoRA adapter of `config` (rank, alpha, targets; dropout is only recorded) from the
/// HF checkpoints `base` and `tuned`, which must have the same weights and shapes. Each
/// adapted weight's difference `D = W_tuned - W_base` becomes `scale * B A` with
/// `B = U_r sqrt(S_r) / sqrt(scale)` and `A = sqrt(S_r) V_r^T / sqrt(scale)`, so both factors
/// have the same magnitude (kind to f16 storage). `progress(done, total)` follows the weights.
pub fn extract_adapter(
    base: &Path,
    tuned: &Path,
    config: &LoraConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<ExtractedAdapter, TrainError> {
    config.validate()?;
    let mut base_ck = Checkpoint::open(base)?;
    let mut tuned_ck = Checkpoint::open(tuned)?;
    let names: Vec<(String, Vec<usize>)> = base_ck
        .tensors()
        .map(|(n, info)| (n.clone(), info.shape.clone()))
        .collect();
    for (name, shape) in &names {
        match tuned_ck.info(name) {
            None => {
                return Err(TrainError::Model(format!(
                    "{} lacks the base's weight {name}",
                    tuned.display()
                )))
            }
            Some(info) if &info.shape != shape => {
                return Err(TrainError::Model(format!(
                    "weight {name} is {shape:?} in the base but {:?} in {}",
                    info.shape,
                    tuned.display()
                )))
            }
            Some(_) => {}
        }
    }
    let (adapted, others): (Vec<_>, Vec<_>) = names
        .iter()
        .partition(|(n, s)| config.targets_weight(n) && s.len() == 2);
    if adapted.is_empty() {
        return Err(TrainError::Model(format!(
            "{} has no weight among the LoRA targets {:?}",
            base.display(),
            config.targets
        )));
    }
    let mut read_pair = |name: &str, count: usize| -> Result<(Vec<f32>, Vec<f32>), TrainError> {
        let (mut w, mut t) = (vec![0.0f32; count], vec![0.0f32; count]);
        base_ck.read_f32(name, &mut w)?;
        tuned_ck.read_f32(name, &mut t)?;
        Ok((w, t))
    };
    let mut not_carried = Vec::new();
    for (name, shape) in others {
        let (w, t) = read_pair(name, shape.iter().product())?;
        let (d, b) = difference_norms(&w, &t);
        if d > 0.0 {
            not_carried.push((name.clone(), relative(d, b)));
        }
    }
    let scale = config.scale();
    let mut tensors = Vec::with_capacity(2 * adapted.len());
    let mut kept = Vec::with_capacity(adapted.len());
    // A few weights at a time: the reads are sequential, the SVDs run on every core, and
    // memory holds a handful of f64 matrices rather than the model.
    let chunk = rayon::current_num_threads().max(1);
    progress(0, adapted.len());
    for (done, group) in adapted.chunks(chunk).enumerate() {
        let pairs = group
            .iter()
            .map(|(name, shape)| read_pair(name, shape[0] * shape[1]))
            .collect::<Result<Vec<_>, _>>()?;
        let cut: Vec<_> = group
            .par_iter()
            .zip(pairs.par_iter())
            .map(|((name, shape), (w, t))| {
                cut_one(name, [shape[0], shape[1]], w, t, config.rank, scale)
            })
            .collect();
        for (weight, (a, b)) in cut {
            let prefix = peft_prefix(&weight.weight);
            tensors.push((format!("{prefix}.lora_A.weight"), a.0, a.1));
            tensors.push((format!("{prefix}.lora_B.weight"), b.0, b.1));
            kept.push(weight);
        }
        progress(((done + 1) * chunk).min(adapted.len()), adapted.len());
    }
    Ok(ExtractedAdapter {
        config: config.clone(),
        tensors,
        kept,
        not_carried,
    })
}

type Factor = ([usize; 2], Vec<f32>);

/// One weight's difference, cut to rank `rank`: its report, `(A, B)`.
fn cut_one(
    name: &str,
    [rows, cols]: [usize; 2],
    base: &[f32],
    tuned: &[f32],
    rank: usize,
    scale: f64,
) -> (KeptEnergy, (Factor, Factor)) {
    let d = DMatrix::from_row_iterator(
        rows,
        cols,
        base.iter().zip(tuned).map(|(w, t)| *t as f64 - *w as f64),
    );
    // nalgebra's `svd` returns the singular values in descending order.
    let svd = d.svd(true, true);
    let (u, v_t) = (svd.u.expect("u requested"), svd.v_t.expect("v_t requested"));
    let s = &svd.singular_values;
    // ||D||^2 is the sum of the squared singular values.
    let total: f64 = s.iter().map(|x| x * x).sum();
    let mut a = vec![0.0f32; rank * cols];
    let mut b = vec![0.0f32; rows * rank];
    let mut kept_energy = 0.0;
    // Ranks beyond the difference's own (a small or low-rank difference) stay zero.
    for (k, &sk) in s.iter().take(rank).enumerate() {
        kept_energy += sk * sk;
        let root = (sk / scale).sqrt();
        for c in 0..cols {
            a[k * cols + c] = (root * v_t[(k, c)]) as f32;
        }
        for r in 0..rows {
            b[r * rank + k] = (root * u[(r, k)]) as f32;
        }
    }
    let d_norm = total.sqrt();
    let b_norm = base.iter().map(|w| (*w as f64).powi(2)).sum::<f64>().sqrt();
    let report = KeptEnergy {
        weight: name.to_string(),
        kept: if total > 0.0 {
            kept_energy / total
        } else {
            1.0
        },
        difference_norm: d_norm,
        relative_change: relative(d_norm, b_norm),
    };
    (report, (([rank, cols], a), ([rows, rank], b)))
}

/// `(||tuned - base||, ||base||)` in f64.
fn difference_norms(base: &[f32], tuned: &[f32]) -> (f64, f64) {
    let (mut d, mut b) = (0.0f64, 0.0f64);
    for (w, t) in base.iter().zip(tuned) {
        let diff = *t as f64 - *w as f64;
        d += diff * diff;
        b += (*w as f64) * (*w as f64);
    }
    (d.sqrt(), b.sqrt())
}

fn relative(d: f64, b: f64) -> f64 {
    if b > 0.0 {
        d / b
    } else {
        f64::INFINITY
    }
}

//! LoRA adapters (Hu et al. 2021) in the PEFT layout.
//!
//! `y = x W^T + (alpha / r) * dropout(x) A^T B^T` with `A: [r, in]` (Kaiming-uniform, as PEFT)
//! and `B: [out, r]` (zeros, so training starts from the base model). Saved as
//! `adapter_config.json` + `adapter_model.safetensors` with PEFT names
//! `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`.

use crate::fast::FastLlama;
use crate::st::{self, F32Tensor};
use crate::TrainError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The projections LoRA can adapt, by their HF short names.
pub const ALL_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// LoRA hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Short names from [`ALL_TARGETS`].
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// Checks rank, dropout and target names.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.rank == 0 {
            return Err(TrainError::Config("LoRA rank must be positive".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(TrainError::Config(format!(
                "LoRA dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(TrainError::Config("LoRA needs at least one target".into()));
        }
        for t in &self.targets {
            if !ALL_TARGETS.contains(&t.as_str()) {
                return Err(TrainError::Config(format!(
                    "unknown LoRA target {t:?}; expected some of {ALL_TARGETS:?}"
                )));
            }
        }
        Ok(())
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether the HF weight `name` (e.g. `model.layers.0.self_attn.q_proj.weight`) is adapted.
    pub fn targets_weight(&self, name: &str) -> bool {
        name.starts_with("model.layers.")
            && self
                .targets
                .iter()
                .any(|t| name.ends_with(&format!(".{t}.weight")))
    }
}

/// `model.layers.0.self_attn.q_proj.weight` -> `base_model.model.model.layers.0.self_attn.q_proj`.
pub fn peft_prefix(hf_weight: &str) -> String {
    let stem = hf_weight.strip_suffix(".weight").unwrap_or(hf_weight);
    format!("base_model.model.{stem}")
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` (PEFT layout, f32) from the
/// model's adapters.
pub fn save_adapter(
    model: &FastLlama,
    cfg: &LoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<(), TrainError> {
    if model.lora.is_none() {
        return Err(TrainError::Model(
            "the model has no LoRA adapters to save".into(),
        ));
    }
    write_adapter_config(cfg, base_model, dir)?;
    let (names, shapes) = (model.trainable_names(), model.trainable_shapes());
    let entries: Vec<st::Entry> = names
        .into_iter()
        .zip(shapes)
        .zip(model.trainable())
        .map(|((name, shape), data)| st::Entry {
            name,
            shape,
            data: st::Payload::F32(data),
        })
        .collect();
    st::write(&dir.join("adapter_model.safetensors"), &entries)
}

/// Creates `dir` and writes PEFT's `adapter_config.json` for `cfg` there.
pub fn write_adapter_config(
    cfg: &LoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": cfg.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
    });
    let path = dir.join("adapter_config.json");
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| TrainError::Config(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| TrainError::io(&path, e))
}

/// Reads a PEFT adapter directory: its config and tensors (as f32) by PEFT name.
pub fn load_adapter(dir: &Path) -> Result<(LoraConfig, BTreeMap<String, F32Tensor>), TrainError> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| TrainError::Format {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let bad = |m: &str| TrainError::Format {
        path: path.clone(),
        message: m.to_string(),
    };
    let rank = v["r"].as_u64().ok_or_else(|| bad("missing integer `r`"))? as usize;
    let alpha = v["lora_alpha"]
        .as_f64()
        .ok_or_else(|| bad("missing number `lora_alpha`"))?;
    let dropout = v["lora_dropout"].as_f64().unwrap_or(0.0);
    let targets = v["target_modules"]
        .as_array()
        .ok_or_else(|| bad("`target_modules` must be a list"))?
        .iter()
        .map(|t| {
            t.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("target names must be strings"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = LoraConfig {
        rank,
        alpha,
        dropout,
        targets,
    };
    cfg.validate()?;
    let mut reader = crate::st::Reader::open(&dir.join("adapter_model.safetensors"))?;
    let names: Vec<String> = reader.tensors().keys().cloned().collect();
    let tensors = names
        .into_iter()
        .map(|name| reader.read_all_f32(&name).map(|t| (name, t)))
        .collect::<Result<_, _>>()?;
    Ok((cfg, tensors))
}

/// Merges a PEFT adapter into the HF checkpoint in directory `base` (`config.json`,
/// `*.safetensors`) and writes the merged weights to the safetensors file `out` in `dtype`.
///
/// It streams: each base weight is read as f32, gets `scale * B A` (computed in f32) if the
/// adapter targets it, and is converted and written before the next is read, so memory holds
/// about one f32 weight beside the adapter whatever the model's size. The checks come first,
/// before anything is written: the weights are those `config.json` implies (names and shapes),
/// every targeted weight has an adapter of its shape, and every adapter tensor is used.
pub fn merge_checkpoint(
    base: &Path,
    cfg: &LoraConfig,
    adapter: &BTreeMap<String, F32Tensor>,
    out: &Path,
    dtype: crate::WeightDtype,
) -> Result<(), TrainError> {
    // `from_file` also validates it.
    let config = crate::model::read_config(&base.join("config.json"))?;
    let checkpoint = crate::st::Checkpoint::open(base)?;
    let expected = guardreasoner_engine::layout::hf_weights(&config);
    let bad = |message: String| TrainError::Model(message).with_path(base);
    if let Some((extra, _)) = checkpoint.tensors().find(|(name, _)| {
        !(name.ends_with("rotary_emb.inv_freq")
            || (config.tie_word_embeddings && *name == "lm_head.weight")
            || expected.iter().any(|(n, _)| n == *name))
    }) {
        return Err(bad(format!("unexpected weight {extra}")));
    }
    // Per weight: its shape and, if adapted, its (A, B) in f32.
    let mut plan = Vec::with_capacity(expected.len());
    let mut used = std::collections::BTreeSet::new();
    for (name, shape) in expected {
        let info = checkpoint
            .info(&name)
            .ok_or_else(|| bad(format!("missing weight {name}")))?;
        if info.shape != shape {
            return Err(bad(format!(
                "weight {name} has shape {:?}, config expects {shape:?}",
                info.shape
            )));
        }
        let lora = if cfg.targets_weight(&name) {
            let prefix = peft_prefix(&name);
            let mut get = |suffix: &str| {
                let key = format!("{prefix}.{suffix}");
                let t = adapter
                    .get(&key)
                    .ok_or_else(|| TrainError::Model(format!("adapter lacks {key}")))?;
                used.insert(key);
                Ok::<_, TrainError>(t)
            };
            let (a, b) = (get("lora_A.weight")?, get("lora_B.weight")?);
            let fits = matches!(
                (&a.shape[..], &b.shape[..], &shape[..]),
                (&[rank, cols], &[rows, rank_b], &[r, c]) if rank == rank_b && rows == r && cols == c
            );
            if !fits {
                return Err(TrainError::Model(format!(
                    "adapter for {name}: lora_A is {:?} and lora_B {:?}, the weight is {shape:?}",
                    a.shape, b.shape
                )));
            }
            Some((a, b))
        } else {
            None
        };
        plan.push((name, shape, lora));
    }
    if let Some(unused) = adapter.keys().find(|k| !used.contains(*k)) {
        return Err(TrainError::Model(format!(
            "adapter tensor {unused} matches no targeted weight of the model ({} of its {} \
             tensors are used)",
            used.len(),
            adapter.len()
        )));
    }
    let scale = cfg.scale();
    let checkpoint = std::cell::RefCell::new(checkpoint);
    let entries: Vec<crate::st::Entry> = plan
        .iter()
        .map(|(name, shape, lora)| {
            let checkpoint = &checkpoint;
            let count = shape.iter().product();
            crate::st::Entry {
                name: name.clone(),
                shape: shape.clone(),
                data: crate::st::Payload::Lazy {
                    count,
                    dtype,
                    values: Box::new(move || {
                        let mut w = vec![0.0f32; count];
                        checkpoint.borrow_mut().read_f32(name, &mut w)?;
                        if let Some((a, b)) = lora {
                            let rank = a.shape[0];
                            crate::fast::add_lora_delta(
                                &mut w,
                                &b.data,
                                &a.data,
                                rank,
                                scale as f32,
                            );
                        }
                        Ok(w)
                    }),
                },
            }
        })
        .collect();
    crate::st::write(out, &entries)
}

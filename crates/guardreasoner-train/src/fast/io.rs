//! The model's weights from and to disk: an HF-layout checkpoint read into the buffers (adapters
//! initialised as PEFT initialises them), trainable tensors set from a file (an adapter to
//! continue from), and an HF checkpoint written with the adapters merged.

use super::{add_lora_delta, slot, Dims, FastLlama, FastLora, LAYER_PARAMS, PROJ_SLOT};
use crate::lora::{LoraConfig, ALL_TARGETS};
use crate::model::{read_config, Config, TrainMode};
use crate::st::{self, F32Tensor};
use crate::TrainError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;

impl FastLora {
    /// PEFT's initialisation: `A ~ U(-1/sqrt(in), 1/sqrt(in))` (Kaiming-uniform with
    /// `a = sqrt(5)`), `B = 0`, drawn in f64 from one seeded stream over the adapted weights in
    /// HF-name order (so a run's adapters do not depend on how the model is stored).
    pub fn init(cfg: &LoraConfig, dims: &Dims, seed: u64) -> Result<FastLora, TrainError> {
        cfg.validate()?;
        let mut targets = [false; 7];
        for (p, t) in ALL_TARGETS.iter().enumerate() {
            targets[p] = cfg.targets.iter().any(|c| c == t);
        }
        let mut order: Vec<(String, usize, usize)> = (0..dims.layers)
            .flat_map(|l| (0..7).map(move |p| (l, p)))
            .filter(|&(_, p)| targets[p])
            .map(|(l, p)| (dims.schema[slot(l, PROJ_SLOT[p])].0.clone(), l, p))
            .collect();
        if order.is_empty() {
            return Err(TrainError::Model(
                "LoRA targets match no weight of this model".into(),
            ));
        }
        order.sort();
        let mut a = vec![Vec::new(); dims.layers * 7];
        let mut b = vec![Vec::new(); dims.layers * 7];
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x10_7A);
        for (_, l, p) in order {
            let (out, inp) = dims.proj_shape(p);
            let bound = 1.0 / (inp as f64).sqrt();
            a[l * 7 + p] = (0..cfg.rank * inp)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            b[l * 7 + p] = vec![0.0; out * cfg.rank];
        }
        Ok(FastLora {
            rank: cfg.rank,
            scale: cfg.scale() as f32,
            dropout: cfg.dropout,
            targets,
            a,
            b,
        })
    }
}

impl FastLlama {
    /// Loads an HF-layout checkpoint directory (`config.json` and its weight files, f32, bf16,
    /// f16 or f64, read as f32 one tensor at a time). `mode` adds fresh adapters (seeded).
    /// Every weight the configuration implies must be there with its shape, and nothing else
    /// (a tied model's stored `lm_head.weight` and rotary tables are ignored).
    pub fn load_hf(dir: &Path, mode: &TrainMode, seed: u64) -> Result<Self, TrainError> {
        let config = read_config(&dir.join("config.json"))?;
        Self::load_weights(dir, &config, mode, seed).map_err(|e| e.with_path(dir))
    }

    fn load_weights(
        dir: &Path,
        config: &Config,
        mode: &TrainMode,
        seed: u64,
    ) -> Result<Self, TrainError> {
        config.check().map_err(TrainError::Model)?;
        let dims = Dims::from_config(config);
        let mut checkpoint = st::Checkpoint::open(dir)?;
        if let Some((extra, _)) = checkpoint.tensors().find(|(name, _)| {
            !(name.ends_with("rotary_emb.inv_freq")
                || (config.tie_word_embeddings && *name == "lm_head.weight")
                || dims.schema.iter().any(|(n, _)| n == *name))
        }) {
            return Err(TrainError::Model(format!("unexpected weight {extra}")));
        }
        let mut base = Vec::with_capacity(dims.schema.len());
        for (name, shape) in &dims.schema {
            let info = checkpoint
                .info(name)
                .ok_or_else(|| TrainError::Model(format!("missing weight {name}")))?;
            if info.shape != *shape {
                return Err(TrainError::Model(format!(
                    "weight {name} has shape {:?}, config expects {shape:?}",
                    info.shape
                )));
            }
            let mut w = vec![0.0f32; shape.iter().product()];
            checkpoint.read_f32(name, &mut w)?;
            base.push(w);
        }
        let lora = match mode {
            TrainMode::Full => None,
            TrainMode::Lora(cfg) => Some(FastLora::init(cfg, &dims, seed)?),
        };
        Self::new(dims, base, lora)
    }

    /// Overwrites every trainable tensor with the one of the same name in `values` (e.g. a
    /// PEFT adapter's `lora_A`/`lora_B` weights, to continue training a guard): each trainable
    /// tensor must be there with its shape, and nothing else may be.
    pub fn set_trainable(
        &mut self,
        values: &BTreeMap<String, F32Tensor>,
    ) -> Result<(), TrainError> {
        let names = self.trainable_names();
        if let Some(extra) = values.keys().find(|k| !names.contains(k)) {
            return Err(TrainError::Model(format!(
                "{extra} is not a trainable tensor of this model (rank, targets or model differ)"
            )));
        }
        let shapes = self.trainable_shapes();
        for (name, shape) in names.iter().zip(&shapes) {
            let value = values
                .get(name)
                .ok_or_else(|| TrainError::Model(format!("no value for trainable {name}")))?;
            if value.shape != *shape {
                return Err(TrainError::Model(format!(
                    "{name} has shape {:?}, expected {shape:?}",
                    value.shape
                )));
            }
        }
        for (name, buf) in names.iter().zip(self.trainable_mut()) {
            buf.copy_from_slice(&values[name].data);
        }
        Ok(())
    }

    /// Number of trainable scalars.
    pub fn trainable_count(&self) -> usize {
        self.trainable().iter().map(|t| t.len()).sum()
    }

    /// Saves an HF-layout checkpoint (`config.json` + `model.safetensors`) of this model, whose
    /// configuration is `config`, with the adapters merged in, in `dtype`. Each merged weight is
    /// formed only when it is written, so saving holds one extra weight at a time.
    pub fn save_hf(
        &self,
        dir: &Path,
        config: &Config,
        dtype: crate::WeightDtype,
    ) -> Result<(), TrainError> {
        if Dims::from_config(config) != self.dims {
            return Err(TrainError::Model(
                "the configuration to save does not describe this model".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let text =
            serde_json::to_string_pretty(config).map_err(|e| TrainError::Model(e.to_string()))?;
        let cfg_path = dir.join("config.json");
        std::fs::write(&cfg_path, text).map_err(|e| TrainError::io(&cfg_path, e))?;
        // The adapter of base slot `s`, if it has one: (B, A, rank, scale).
        let adapted = |s: usize| -> Option<(&[f32], &[f32], usize, f32)> {
            let lo = self.lora.as_ref()?;
            let (l, j) = (s.checked_sub(1)? / LAYER_PARAMS, (s - 1) % LAYER_PARAMS);
            let p = PROJ_SLOT.iter().position(|&x| x == j)?;
            (l < self.dims.layers && lo.targets[p]).then(|| {
                (
                    &lo.b[l * 7 + p][..],
                    &lo.a[l * 7 + p][..],
                    lo.rank,
                    lo.scale,
                )
            })
        };
        let entries: Vec<st::Entry> = self
            .dims
            .schema
            .iter()
            .enumerate()
            .map(|(s, (name, shape))| {
                let w = &self.base[s];
                let data = match adapted(s) {
                    None => st::Payload::Converted(w, dtype),
                    Some((b, a, rank, scale)) => st::Payload::Lazy {
                        count: w.len(),
                        dtype,
                        values: Box::new(move || {
                            let mut merged = w.clone();
                            add_lora_delta(&mut merged, b, a, rank, scale);
                            Ok(merged)
                        }),
                    },
                };
                st::Entry {
                    name: name.clone(),
                    shape: shape.clone(),
                    data,
                }
            })
            .collect();
        st::write(&dir.join("model.safetensors"), &entries)
    }
}

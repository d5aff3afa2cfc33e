//! The reference LLaMA on candle autograd (LLaMA-2/3, SmolLM2, Llama-3.2 guards): what the fast
//! trainer's losses and gradients are checked against, in f64 where tests want exactness.
//!
//! The maths is the engine's (RMSNorm, rotate-half RoPE with optional llama3 frequency scaling,
//! grouped-query attention, SwiGLU MLP, optionally tied embeddings); parameter names are the
//! Hugging Face paths (`model.layers.0.self_attn.q_proj.weight`, ...), so checkpoints load from and
//! save to the HF layout. Every op used here has a backward pass in candle: the fused
//! `rope`/`softmax_last_dim`/`rms_norm` kernels do not, so they are composed from primitives.

use super::LoraLayer;
use crate::model::{read_config, Config, TrainMode};
use crate::TrainError;
use candle_core::{DType, Device, Tensor, Var, D};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;

/// A LLaMA causal LM whose weights are candle tensors; trainable ones are [`Var`]s.
pub struct Llama {
    pub config: Config,
    /// Weights by HF name. In full fine-tuning these are the `Var`s' tensors.
    weights: BTreeMap<String, Tensor>,
    /// Trainable parameters by name (HF names, or PEFT names for adapters).
    trainable: BTreeMap<String, Var>,
    /// LoRA layers by the HF name of the weight they adapt.
    lora: BTreeMap<String, LoraLayer>,
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
    dtype: DType,
    device: Device,
}

impl Llama {
    /// The expected weight names and shapes for `config` (the engine's one weight schema).
    pub fn expected_shapes(config: &Config) -> Vec<(String, Vec<usize>)> {
        guardreasoner_engine::layout::hf_weights(config)
    }

    /// A randomly initialised model (normal(0, std) matrices, unit norms), seeded.
    pub fn random(
        config: Config,
        std: f64,
        seed: u64,
        dtype: DType,
        mode: TrainMode,
    ) -> Result<Self, TrainError> {
        use rand::SeedableRng;
        use rand_distr_lite::normal;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let device = Device::Cpu;
        let mut weights = BTreeMap::new();
        for (name, shape) in Self::expected_shapes(&config) {
            let n: usize = shape.iter().product();
            let t = if shape.len() == 1 {
                Tensor::ones(shape.as_slice(), DType::F64, &device)?
            } else {
                let data: Vec<f64> = (0..n).map(|_| normal(&mut rng) * std).collect();
                Tensor::from_vec(data, shape.as_slice(), &device)?
            };
            weights.insert(name, t.to_dtype(dtype)?);
        }
        Self::from_weights(config, weights, dtype, mode, seed)
    }

    /// Loads an HF-layout checkpoint directory (`config.json` + `*.safetensors`, f32/bf16/f16),
    /// converting weights to `dtype`.
    pub fn load_hf(
        dir: &Path,
        dtype: crate::WeightDtype,
        mode: TrainMode,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let dtype = dtype.candle();
        let config = read_config(&dir.join("config.json"))?;
        let mut weights = BTreeMap::new();
        for (name, t) in load_checkpoint_weights(dir)? {
            weights.insert(name, t.to_dtype(dtype)?);
        }
        // Some tied checkpoints also store lm_head; drop it when tied so it is not trained twice.
        if config.tie_word_embeddings {
            weights.remove("lm_head.weight");
        }
        Self::from_weights(config, weights, dtype, mode, seed).map_err(|e| e.with_path(dir))
    }

    /// Builds a model from named weights (HF names), checking names and shapes.
    pub fn from_weights(
        config: Config,
        mut weights: BTreeMap<String, Tensor>,
        dtype: DType,
        mode: TrainMode,
        seed: u64,
    ) -> Result<Self, TrainError> {
        config.check().map_err(TrainError::Model)?;
        let device = Device::Cpu;
        let mut checked = BTreeMap::new();
        for (name, shape) in Self::expected_shapes(&config) {
            let t = weights
                .remove(&name)
                .ok_or_else(|| TrainError::Model(format!("missing weight {name}")))?;
            if t.dims() != shape.as_slice() {
                return Err(TrainError::Model(format!(
                    "weight {name} has shape {:?}, config expects {:?}",
                    t.dims(),
                    shape
                )));
            }
            checked.insert(name, t.to_dtype(dtype)?.contiguous()?);
        }
        if let Some(extra) = weights.keys().find(|k| !k.ends_with("rotary_emb.inv_freq")) {
            return Err(TrainError::Model(format!("unexpected weight {extra}")));
        }
        let mut trainable = BTreeMap::new();
        let mut lora = BTreeMap::new();
        match &mode {
            TrainMode::Full => {
                for (name, t) in checked.iter_mut() {
                    let var = Var::from_tensor(t)?;
                    *t = var.as_tensor().clone();
                    trainable.insert(name.clone(), var);
                }
            }
            TrainMode::Lora(cfg) => {
                use rand::SeedableRng;
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x10_7A);
                for (name, t) in checked.iter() {
                    if !cfg.targets_weight(name) {
                        continue;
                    }
                    let (out_dim, in_dim) = t.dims2()?;
                    let layer = LoraLayer::init(cfg, in_dim, out_dim, dtype, &mut rng)?;
                    let peft = crate::lora::peft_prefix(name);
                    trainable.insert(format!("{peft}.lora_A.weight"), layer.a.clone());
                    trainable.insert(format!("{peft}.lora_B.weight"), layer.b.clone());
                    lora.insert(name.clone(), layer);
                }
                if lora.is_empty() {
                    return Err(TrainError::Model(
                        "LoRA targets match no weight of this model".into(),
                    ));
                }
            }
        }
        let (cos, sin, max_positions) = rope_tables(&config, 256, dtype)?;
        Ok(Llama {
            config,
            weights: checked,
            trainable,
            lora,
            cos,
            sin,
            max_positions,
            dtype,
            device,
        })
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Trainable parameters by name.
    pub fn trainable(&self) -> &BTreeMap<String, Var> {
        &self.trainable
    }

    /// All base weights by HF name.
    pub fn weights(&self) -> &BTreeMap<String, Tensor> {
        &self.weights
    }

    /// LoRA layers by adapted weight name (empty in full fine-tuning).
    pub fn lora_layers(&self) -> &BTreeMap<String, LoraLayer> {
        &self.lora
    }

    /// Overwrites every trainable tensor with the one of the same name in `values` (e.g. a
    /// PEFT adapter's `lora_A`/`lora_B` weights, to continue training a guard): each trainable
    /// tensor must be there with its shape, and nothing else may be.
    pub fn set_trainable(&mut self, values: &BTreeMap<String, Tensor>) -> Result<(), TrainError> {
        if let Some(extra) = values.keys().find(|k| !self.trainable.contains_key(*k)) {
            return Err(TrainError::Model(format!(
                "{extra} is not a trainable tensor of this model (rank, targets or model differ)"
            )));
        }
        for (name, var) in &self.trainable {
            let value = values
                .get(name)
                .ok_or_else(|| TrainError::Model(format!("no value for trainable {name}")))?;
            if value.dims() != var.dims() {
                return Err(TrainError::Model(format!(
                    "{name} has shape {:?}, expected {:?}",
                    value.dims(),
                    var.dims()
                )));
            }
            var.set(&value.to_dtype(self.dtype)?)?;
        }
        Ok(())
    }

    /// Number of trainable scalars.
    pub fn trainable_count(&self) -> usize {
        self.trainable.values().map(|v| v.elem_count()).sum()
    }

    fn weight(&self, name: &str) -> Result<&Tensor, TrainError> {
        self.weights
            .get(name)
            .ok_or_else(|| TrainError::Model(format!("missing weight {name}")))
    }

    fn ensure_rope(&mut self, len: usize) -> Result<(), TrainError> {
        if len > self.max_positions {
            let (cos, sin, max) = rope_tables(&self.config, len.next_power_of_two(), self.dtype)?;
            self.cos = cos;
            self.sin = sin;
            self.max_positions = max;
        }
        Ok(())
    }

    /// Makes the RoPE tables cover `len` positions (call before a forward pass on a longer
    /// sequence than any before; forward passes do this themselves when given `&mut self`).
    pub fn reserve_positions(&mut self, len: usize) -> Result<(), TrainError> {
        self.ensure_rope(len)
    }

    fn linear(
        &self,
        x: &Tensor,
        name: &str,
        dropout: &mut Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor, TrainError> {
        let w = self.weight(name)?;
        let mut y = x.matmul(&w.t()?)?;
        if let Some(layer) = self.lora.get(name) {
            y = (y + layer.forward(x, dropout)?)?;
        }
        Ok(y)
    }

    /// Logits `[seq, vocab]` for one sequence. `dropout` is the RNG for LoRA dropout masks
    /// (None: evaluation, no dropout).
    pub fn forward(
        &self,
        ids: &[u32],
        dropout: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor, TrainError> {
        self.forward_from(ids, 0, dropout)
    }

    /// Logits `[seq - from, vocab]` for positions `from..` only: training needs logits only where
    /// there are targets, and the vocabulary projection is the largest activation.
    pub fn forward_from(
        &self,
        ids: &[u32],
        from: usize,
        mut dropout: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor, TrainError> {
        if from >= ids.len() {
            return Err(TrainError::Model(format!(
                "no positions from {from} in a sequence of {}",
                ids.len()
            )));
        }
        let hidden = self.hidden_states(ids, &mut dropout)?;
        let hidden = hidden.narrow(0, from, ids.len() - from)?;
        let head = if self.config.tie_word_embeddings {
            self.weight("model.embed_tokens.weight")?
        } else {
            self.weight("lm_head.weight")?
        };
        Ok(hidden.matmul(&head.t()?)?)
    }

    /// Final-norm hidden states `[seq, hidden]`.
    fn hidden_states(
        &self,
        ids: &[u32],
        dropout: &mut Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor, TrainError> {
        let t = ids.len();
        if t == 0 {
            return Err(TrainError::Model("empty token sequence".into()));
        }
        if t > self.max_positions {
            return Err(TrainError::Model(format!(
                "sequence of {t} tokens exceeds the prepared {} positions; call reserve_positions",
                self.max_positions
            )));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(TrainError::Model(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let cfg = &self.config;
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads(),
            cfg.head_dim(),
        );
        let ids_t = Tensor::new(ids, &self.device)?;
        let mut x = self
            .weight("model.embed_tokens.weight")?
            .index_select(&ids_t, 0)?;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let mask = causal_mask(t, self.dtype)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}.");
            let h = rms_norm(
                &x,
                self.weight(&format!("{p}input_layernorm.weight"))?,
                cfg.rms_norm_eps,
            )?;
            let q = self.linear(&h, &format!("{p}self_attn.q_proj.weight"), dropout)?;
            let k = self.linear(&h, &format!("{p}self_attn.k_proj.weight"), dropout)?;
            let v = self.linear(&h, &format!("{p}self_attn.v_proj.weight"), dropout)?;
            let q = q.reshape((t, nh, hd))?.transpose(0, 1)?.contiguous()?;
            let k = k.reshape((t, nkv, hd))?.transpose(0, 1)?.contiguous()?;
            let v = v.reshape((t, nkv, hd))?.transpose(0, 1)?.contiguous()?;
            let q = apply_rope(&q, &cos, &sin)?;
            let k = apply_rope(&k, &cos, &sin)?;
            let (k, v) = (repeat_kv(&k, nh / nkv)?, repeat_kv(&v, nh / nkv)?);
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let probs = softmax_last(&scores)?;
            let attn = probs.matmul(&v)?.transpose(0, 1)?.reshape((t, nh * hd))?;
            let o = self.linear(&attn, &format!("{p}self_attn.o_proj.weight"), dropout)?;
            x = (x + o)?;
            let h = rms_norm(
                &x,
                self.weight(&format!("{p}post_attention_layernorm.weight"))?,
                cfg.rms_norm_eps,
            )?;
            let gate = self.linear(&h, &format!("{p}mlp.gate_proj.weight"), dropout)?;
            let up = self.linear(&h, &format!("{p}mlp.up_proj.weight"), dropout)?;
            let act = (gate.silu()? * up)?;
            let down = self.linear(&act, &format!("{p}mlp.down_proj.weight"), dropout)?;
            x = (x + down)?;
        }
        rms_norm(&x, self.weight("model.norm.weight")?, cfg.rms_norm_eps)
    }

    /// Greedy decoding of up to `max_new` tokens after `prompt` (no KV cache: for tests and
    /// small evaluations). Stops at any id in `stop`.
    pub fn greedy(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>, TrainError> {
        let mut ids = prompt.to_vec();
        let mut out = Vec::new();
        self.ensure_rope(prompt.len() + max_new)?;
        for _ in 0..max_new {
            let logits = self.forward(&ids, None)?;
            let last = logits
                .get(ids.len() - 1)?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            let next = argmax(&last);
            out.push(next);
            if stop.contains(&next) {
                break;
            }
            ids.push(next);
        }
        Ok(out)
    }

    /// Merged weights by HF name: base weights with every LoRA delta folded in.
    pub fn merged_weights(&self) -> Result<BTreeMap<String, Tensor>, TrainError> {
        let mut out = BTreeMap::new();
        for (name, w) in &self.weights {
            let merged = match self.lora.get(name) {
                Some(layer) => (w + layer.delta()?)?,
                None => w.clone(),
            };
            out.insert(name.clone(), merged.detach());
        }
        Ok(out)
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Every tensor of an HF-layout checkpoint directory (all its `*.safetensors` shards, in name
/// order); a directory without any is an error naming it.
pub fn load_checkpoint_weights(dir: &Path) -> Result<BTreeMap<String, Tensor>, TrainError> {
    // Tensor by tensor: loading never holds a whole file's bytes beside its tensors.
    let mut checkpoint = crate::st::Checkpoint::open(dir)?;
    let names: Vec<String> = checkpoint.tensors().map(|(n, _)| n.clone()).collect();
    let mut weights = BTreeMap::new();
    for name in names {
        let t = checkpoint.read_tensor(&name)?;
        weights.insert(name, t);
    }
    Ok(weights)
}

fn rope_tables(
    config: &Config,
    len: usize,
    dtype: DType,
) -> Result<(Tensor, Tensor, usize), TrainError> {
    let inv = config.rope_inv_freq_f64();
    let half = inv.len();
    let mut cos = Vec::with_capacity(len * half * 2);
    let mut sin = Vec::with_capacity(len * half * 2);
    for pos in 0..len {
        // Rotate-half layout: the same frequencies for both halves of the head.
        for _ in 0..2 {
            for f in &inv {
                let angle = pos as f64 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    let cos = Tensor::from_vec(cos, (len, 2 * half), &Device::Cpu)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (len, 2 * half), &Device::Cpu)?.to_dtype(dtype)?;
    Ok((cos, sin, len))
}

fn causal_mask(t: usize, dtype: DType) -> Result<Tensor, TrainError> {
    let data: Vec<f32> = (0..t * t)
        .map(|i| {
            if i % t > i / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(data, (t, t), &Device::Cpu)?.to_dtype(dtype)?)
}

/// RMSNorm composed from primitives (candle's fused kernel has no backward).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor, TrainError> {
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(weight)?)
}

/// Rotate-half RoPE on `[heads, seq, head_dim]`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, TrainError> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor, TrainError> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (kv, t, d) = x.dims3()?;
    Ok(x.unsqueeze(1)?
        .broadcast_as((kv, rep, t, d))?
        .reshape((kv * rep, t, d))?)
}

/// Softmax over the last dimension, numerically stabilised with a detached max.
pub fn softmax_last(x: &Tensor) -> Result<Tensor, TrainError> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor, TrainError> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Summed log-probability of `target` after `prompt` (teacher forcing), a scalar tensor, and the
/// number of target tokens.
pub fn sequence_log_prob(
    model: &Llama,
    prompt: &[u32],
    target: &[u32],
    dropout: Option<&mut ChaCha8Rng>,
) -> Result<Tensor, TrainError> {
    if prompt.is_empty() || target.is_empty() {
        return Err(TrainError::Model(
            "prompt and target must be non-empty".into(),
        ));
    }
    let mut ids = prompt.to_vec();
    ids.extend_from_slice(&target[..target.len() - 1]);
    let logits = model.forward_from(&ids, prompt.len() - 1, dropout)?;
    Ok(token_log_probs(&logits, target)?.sum_all()?)
}

/// Per-position log-probabilities of `targets[i]` under `logits[i]` (`[n]`).
pub fn token_log_probs(logits: &Tensor, targets: &[u32]) -> Result<Tensor, TrainError> {
    let logp = log_softmax_last(logits)?;
    let idx = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    Ok(logp.gather(&idx, 1)?.squeeze(1)?)
}

/// A tiny seeded normal sampler (Box-Muller) so the crate needs no `rand_distr`.
pub(crate) mod rand_distr_lite {
    use rand::Rng;
    /// One standard normal draw.
    pub fn normal<R: Rng>(rng: &mut R) -> f64 {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

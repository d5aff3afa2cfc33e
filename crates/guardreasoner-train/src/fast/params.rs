//! The model's parameters as buffers: shapes from the engine's one weight schema, construction
//! (checked base weights, fresh or given adapters), the trainable tensors in their fixed order,
//! and their gradients.

use super::{slot, Config, Dims, FastLlama, FastLora, Grads, PROJ_SLOT};
use crate::TrainError;
use guardreasoner_engine::layout::hf_weights;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

impl Dims {
    /// The shapes of an HF config.
    pub fn from_config(c: &Config) -> Self {
        Dims {
            vocab: c.vocab_size,
            hidden: c.hidden_size,
            inter: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads(),
            head_dim: c.head_dim(),
            eps: c.rms_norm_eps as f32,
            tie: c.tie_word_embeddings,
            inv_freq: c.rope_inv_freq_f64(),
            schema: hf_weights(c),
        }
    }

    /// `(out, in)` of projection `p` (the same in every layer), read from the schema.
    pub(super) fn proj_shape(&self, p: usize) -> (usize, usize) {
        match self.schema[slot(0, PROJ_SLOT[p])].1.as_slice() {
            &[out, inp] => (out, inp),
            other => unreachable!("projection {p} has shape {other:?} in the schema"),
        }
    }
}

impl Grads {
    /// Sets every gradient to zero.
    pub fn zero(&mut self) {
        self.tensors
            .par_iter_mut()
            .for_each(|g| g.iter_mut().for_each(|x| *x = 0.0));
    }

    /// Global L2 norm.
    pub fn norm(&self) -> f64 {
        self.tensors
            .par_iter()
            .map(|g| {
                g.par_chunks(1 << 16)
                    .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt()
    }
}

impl FastLlama {
    /// Base weight names in slot order (HF names).
    pub fn base_names(dims: &Dims) -> Vec<String> {
        dims.schema.iter().map(|(name, _)| name.clone()).collect()
    }

    /// Shapes of the base weights in slot order.
    pub fn base_shapes(dims: &Dims) -> Vec<Vec<usize>> {
        dims.schema.iter().map(|(_, shape)| shape.clone()).collect()
    }

    /// A model from base weights in slot order (shapes checked) and optional adapters.
    pub fn new(
        dims: Dims,
        base: Vec<Vec<f32>>,
        lora: Option<FastLora>,
    ) -> Result<Self, TrainError> {
        let shapes = Self::base_shapes(&dims);
        if base.len() != shapes.len() {
            return Err(TrainError::Model(format!(
                "expected {} base tensors, got {}",
                shapes.len(),
                base.len()
            )));
        }
        let names = Self::base_names(&dims);
        for ((w, s), n) in base.iter().zip(&shapes).zip(&names) {
            if w.len() != s.iter().product::<usize>() {
                return Err(TrainError::Model(format!(
                    "{n} has {} values, expected shape {s:?}",
                    w.len()
                )));
            }
        }
        if dims.heads % dims.kv_heads != 0 || dims.head_dim % 2 != 0 {
            return Err(TrainError::Model("bad attention shape".into()));
        }
        if let Some(lo) = &lora {
            for l in 0..dims.layers {
                for p in 0..7 {
                    let (o, i) = dims.proj_shape(p);
                    let (ea, eb) = if lo.targets[p] {
                        (lo.rank * i, o * lo.rank)
                    } else {
                        (0, 0)
                    };
                    if lo.a[l * 7 + p].len() != ea || lo.b[l * 7 + p].len() != eb {
                        return Err(TrainError::Model(format!(
                            "LoRA tensors of layer {l} projection {p} have the wrong size"
                        )));
                    }
                }
            }
        }
        Ok(FastLlama { dims, base, lora })
    }

    /// Random weights (uniform with standard deviation `std`, norms at 1), for benchmarks.
    pub fn random(dims: Dims, std: f32, seed: u64, lora: Option<(usize, f32)>) -> Self {
        use rand::SeedableRng;
        let bound = std * 3f32.sqrt();
        let shapes = Self::base_shapes(&dims);
        let names = Self::base_names(&dims);
        let base: Vec<Vec<f32>> = shapes
            .par_iter()
            .zip(&names)
            .enumerate()
            .map(|(i, (s, n))| {
                let len = s.iter().product();
                if n.ends_with("norm.weight") {
                    return vec![1.0; len];
                }
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((i as u64 + 1) * 0x9E37_79B9));
                (0..len).map(|_| rng.random_range(-bound..bound)).collect()
            })
            .collect();
        let lora = lora.map(|(rank, alpha)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x10_7A);
            let mut a = Vec::new();
            let mut b = Vec::new();
            for _ in 0..dims.layers {
                for p in 0..7 {
                    let (o, i) = dims.proj_shape(p);
                    let bound = 1.0 / (i as f32).sqrt();
                    a.push(
                        (0..rank * i)
                            .map(|_| rng.random_range(-bound..bound))
                            .collect(),
                    );
                    b.push(vec![0.0; o * rank]);
                }
            }
            FastLora {
                rank,
                scale: alpha / rank as f32,
                dropout: 0.0,
                targets: [true; 7],
                a,
                b,
            }
        });
        FastLlama { dims, base, lora }
    }

    /// Names of the trainable parameters, in gradient order: every base weight (full
    /// fine-tuning) or `(layer, projection)` adapters as PEFT names, A then B.
    pub fn trainable_names(&self) -> Vec<String> {
        let names = Self::base_names(&self.dims);
        match &self.lora {
            None => names,
            Some(lo) => {
                let mut out = Vec::new();
                for l in 0..self.dims.layers {
                    for p in 0..7 {
                        if lo.targets[p] {
                            let hf = &names[slot(l, PROJ_SLOT[p])];
                            let peft = crate::lora::peft_prefix(hf);
                            out.push(format!("{peft}.lora_A.weight"));
                            out.push(format!("{peft}.lora_B.weight"));
                        }
                    }
                }
                out
            }
        }
    }

    /// The trainable buffers, in gradient order (see [`FastLlama::trainable_names`]).
    pub fn trainable(&self) -> Vec<&[f32]> {
        match &self.lora {
            None => self.base.iter().map(Vec::as_slice).collect(),
            Some(lo) => {
                lo.a.iter()
                    .zip(&lo.b)
                    .filter(|(a, _)| !a.is_empty())
                    .flat_map(|(a, b)| [a.as_slice(), b.as_slice()])
                    .collect()
            }
        }
    }

    /// Shapes of the trainable parameters, in gradient order: HF shapes for base weights,
    /// `[r, in]` / `[out, r]` for adapters A / B.
    pub fn trainable_shapes(&self) -> Vec<Vec<usize>> {
        match &self.lora {
            None => Self::base_shapes(&self.dims),
            Some(lo) => {
                let mut out = Vec::new();
                for _ in 0..self.dims.layers {
                    for p in 0..7 {
                        if lo.targets[p] {
                            let (o, i) = self.dims.proj_shape(p);
                            out.push(vec![lo.rank, i]);
                            out.push(vec![o, lo.rank]);
                        }
                    }
                }
                out
            }
        }
    }

    /// The trainable buffers, in gradient order.
    pub fn trainable_mut(&mut self) -> Vec<&mut Vec<f32>> {
        match &mut self.lora {
            None => self.base.iter_mut().collect(),
            Some(lo) => {
                let mut out = Vec::new();
                for (a, b) in lo.a.iter_mut().zip(lo.b.iter_mut()) {
                    if !a.is_empty() {
                        out.push(a);
                        out.push(b);
                    }
                }
                out
            }
        }
    }

    /// Zero gradients for the trainable parameters.
    pub fn zero_grads(&self) -> Grads {
        let tensors = match &self.lora {
            None => self.base.iter().map(|w| vec![0.0; w.len()]).collect(),
            Some(lo) => {
                lo.a.iter()
                    .zip(&lo.b)
                    .filter(|(a, _)| !a.is_empty())
                    .flat_map(|(a, b)| [vec![0.0; a.len()], vec![0.0; b.len()]])
                    .collect()
            }
        };
        Grads { tensors }
    }

    /// Index of the A gradient of `(layer, projection)` (B follows it).
    pub(super) fn lora_grad_index(&self, l: usize, p: usize) -> Option<usize> {
        let lo = self.lora.as_ref()?;
        if !lo.targets[p] {
            return None;
        }
        let per_layer = lo.targets.iter().filter(|&&x| x).count();
        let before = lo.targets[..p].iter().filter(|&&x| x).count();
        Some(2 * (l * per_layer + before))
    }
}

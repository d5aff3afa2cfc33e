//! Conversion of the fast model from and to the candle model (the test oracle and the
//! checkpoint format).

use super::*;

fn to_f32(t: &candle_core::Tensor) -> Result<Vec<f32>, TrainError> {
    Ok(t.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

impl FastLlama {
    /// Copies the weights (and adapters) of a candle model.
    pub fn from_llama(model: &crate::model::Llama) -> Result<Self, TrainError> {
        let dims = Dims::from_config(&model.config);
        let weights = model.weights();
        let base = Self::base_names(&dims)
            .iter()
            .map(|n| {
                weights
                    .get(n)
                    .ok_or_else(|| TrainError::Model(format!("missing weight {n}")))
                    .and_then(to_f32)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let lora = Self::from_llama_lora(model, &dims)?;
        Self::new(dims, base, lora)
    }

    /// Copies the adapters of a candle model (None in full fine-tuning).
    fn from_llama_lora(
        model: &crate::model::Llama,
        dims: &Dims,
    ) -> Result<Option<FastLora>, TrainError> {
        let layers = model.lora_layers();
        if layers.is_empty() {
            return Ok(None);
        }
        let names = Self::base_names(dims);
        let mut targets = [false; 7];
        let (mut rank, mut scale, mut dropout) = (0, 0.0, 0.0);
        let mut a = Vec::new();
        let mut b = Vec::new();
        for l in 0..dims.layers {
            for p in 0..7 {
                match layers.get(&names[slot(l, PROJ_SLOT[p])]) {
                    Some(layer) => {
                        targets[p] = true;
                        rank = layer.a.as_tensor().dim(0)?;
                        scale = layer.scale as f32;
                        dropout = layer.dropout;
                        a.push(to_f32(layer.a.as_tensor())?);
                        b.push(to_f32(layer.b.as_tensor())?);
                    }
                    None => {
                        a.push(Vec::new());
                        b.push(Vec::new());
                    }
                }
            }
        }
        Ok(Some(FastLora {
            rank,
            scale,
            dropout,
            targets,
            a,
            b,
        }))
    }

    /// Moves the weights of an f32 candle model into a fast model, one tensor at a time, so
    /// the process never holds two copies of them: the candle model is left without base
    /// weights (LoRA adapters, which are small, are copied and stay) until
    /// [`FastLlama::restore_llama`] gives them back.
    pub fn take_from_llama(model: &mut crate::model::Llama) -> Result<Self, TrainError> {
        if model.dtype() != candle_core::DType::F32 {
            return Err(TrainError::Model(format!(
                "the fast path trains f32 models, not {:?}",
                model.dtype()
            )));
        }
        let dims = Dims::from_config(&model.config);
        let lora = Self::from_llama_lora(model, &dims)?;
        let names = Self::base_names(&dims);
        let shapes = Self::base_shapes(&dims);
        let mut weights = model.take_base_weights();
        let mut base = Vec::with_capacity(names.len());
        let mut failure = None;
        for n in &names {
            let Some(t) = weights.remove(n) else {
                failure = Some(TrainError::Model(format!("missing weight {n}")));
                break;
            };
            match to_f32(&t) {
                // The tensor is dropped here, as soon as it is copied.
                Ok(v) => base.push(v),
                Err(e) => {
                    weights.insert(n.clone(), t);
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            // Put back what was taken, copied or not, so the model stays whole.
            let mut back: Vec<_> = names
                .iter()
                .zip(&shapes)
                .zip(base)
                .map(|((n, s), v)| (n.clone(), s.clone(), v))
                .collect();
            for (n, t) in weights {
                back.push((n, t.dims().to_vec(), to_f32(&t)?));
            }
            model.restore_base_weights(back)?;
            return Err(e);
        }
        // The candle model checked every shape against the same configuration, so this cannot
        // fail on a model that `Llama` accepted.
        Self::new(dims, base, lora)
    }

    /// The inverse of [`FastLlama::take_from_llama`]: moves the base weights back into the
    /// candle model (no copy) and writes the adapters into its variables.
    pub fn restore_llama(mut self, model: &mut crate::model::Llama) -> Result<(), TrainError> {
        if self.lora.is_some() {
            self.write_back(model)?;
        }
        let names = Self::base_names(&self.dims);
        let shapes = Self::base_shapes(&self.dims);
        let weights = names
            .into_iter()
            .zip(shapes)
            .zip(std::mem::take(&mut self.base))
            .map(|((n, s), w)| (n, s, w))
            .collect();
        model.restore_base_weights(weights)
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

    /// Writes the trainable parameters back into the candle model's variables.
    pub fn write_back(&mut self, model: &crate::model::Llama) -> Result<(), TrainError> {
        let names = self.trainable_names();
        let vars = model.trainable();
        for (name, buf) in names.iter().zip(self.trainable_mut()) {
            let var = vars
                .get(name)
                .ok_or_else(|| TrainError::Model(format!("the model has no parameter {name}")))?;
            let t = candle_core::Tensor::from_slice(buf, var.dims(), &candle_core::Device::Cpu)?
                .to_dtype(var.dtype())?;
            var.set(&t)?;
        }
        Ok(())
    }
}

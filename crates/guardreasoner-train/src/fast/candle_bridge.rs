//! Conversion of the fast model from and to the candle model (the test oracle).

use super::*;

fn to_f32(t: &candle_core::Tensor) -> Result<Vec<f32>, TrainError> {
    Ok(t.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

impl FastLlama {
    /// Copies the weights (and adapters) of a candle model.
    pub fn from_llama(model: &crate::oracle::Llama) -> Result<Self, TrainError> {
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
        model: &crate::oracle::Llama,
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

    /// Writes the trainable parameters back into the candle model's variables.
    pub fn write_back(&mut self, model: &crate::oracle::Llama) -> Result<(), TrainError> {
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

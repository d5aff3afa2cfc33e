//! A LoRA adapter on candle autograd (the reference for the fast path's adapters).

use crate::lora::LoraConfig;
use crate::TrainError;
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One adapted projection.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
}

impl LoraLayer {
    /// PEFT's initialisation: A ~ U(-1/sqrt(in), 1/sqrt(in)) (Kaiming-uniform with a = sqrt(5)),
    /// B = 0.
    pub fn init(
        cfg: &LoraConfig,
        in_dim: usize,
        out_dim: usize,
        dtype: DType,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self, TrainError> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a: Vec<f64> = (0..cfg.rank * in_dim)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Tensor::from_vec(a, (cfg.rank, in_dim), &Device::Cpu)?.to_dtype(dtype)?;
        let b = Tensor::zeros((out_dim, cfg.rank), dtype, &Device::Cpu)?;
        Ok(LoraLayer {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scale: cfg.scale(),
            dropout: cfg.dropout,
        })
    }

    /// The adapter's contribution for input `x: [seq, in]`.
    pub fn forward(
        &self,
        x: &Tensor,
        dropout: &mut Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor, TrainError> {
        let x = match dropout {
            Some(rng) if self.dropout > 0.0 => {
                let keep = 1.0 - self.dropout;
                let mask: Vec<f32> = (0..x.elem_count())
                    .map(|_| {
                        if rng.random::<f64>() < keep {
                            (1.0 / keep) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, x.dims(), x.device())?.to_dtype(x.dtype())?;
                (x * mask)?
            }
            _ => x.clone(),
        };
        let low = x.matmul(&self.a.as_tensor().t()?)?;
        Ok((low.matmul(&self.b.as_tensor().t()?)? * self.scale)?)
    }

    /// `scale * B A`, the dense update to add to the base weight.
    pub fn delta(&self) -> Result<Tensor, TrainError> {
        Ok((self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?)
    }
}

//! Training for GuardReasoner guards, natively in Rust on the CPU:
//! reasoning SFT (R-SFT), hard-sample DPO (HS-DPO), LoRA adapters in the PEFT layout, and
//! export of datasets/configs for LLaMA-Factory at multi-GPU scale. Hard-sample mining (the
//! sampling and the pairs HS-DPO trains on) generates through a backend and lives beside
//! synthesis in `guardreasoner-synth`; this crate needs neither an async runtime nor a backend.
//!
//! - [`fast::FastLlama`]: the model trained, on f32 buffers with a hand-written forward/backward
//!   pass and fused AdamW; HF checkpoints in and out (`load_hf` / `save_hf`); [`model`]: its
//!   configuration and [`model::TrainMode`]; [`bench`]: one step at SmolLM2-135M shapes
//!   (`guardreasoner bench train`).
//! - `oracle` (feature `oracle`, on in this crate's tests only): the candle-autograd LLaMA and
//!   a plain training loop on it, the reference the trainer's losses and gradients are checked
//!   against. Production builds do not compile candle.
//! - [`data`]: GuardReasonerTrain records -> prompt/target tokens (loss on the output only).
//! - [`trainer::train`]: the loop (AdamW, cosine schedule, accumulation, clipping, exact resume,
//!   JSONL log, SVG loss curve) over an [`trainer::Objective`]: [`sft::SftObjective`] or
//!   [`dpo::DpoObjective`].
//! - [`lora`]: adapters, PEFT files, merge; [`extract`]: an adapter cut by SVD from a fully
//!   fine-tuned model. [`export`]: LLaMA-Factory datasets and configs.
//!
//! Paper presets: [`trainer::TrainerConfig::paper_sft`] (lr 5e-5, 3 epochs, cutoff 2048,
//! effective batch 384, cosine, no warmup) and [`trainer::TrainerConfig::paper_dpo`] (lr 5e-6,
//! 2 epochs, batch 256) with [`dpo::DpoConfig::default`] (beta 0.01, ftx 2.0).

pub mod extract;
pub mod lora;
pub mod model;
#[cfg(feature = "oracle")]
pub mod oracle;

use std::path::{Path, PathBuf};

/// Errors of this crate; each names the file, record or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("model: {0}")]
    Model(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("data: {0}")]
    Data(String),
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(transparent)]
    HfDir(#[from] guardreasoner_gguf::hf::HfDirError),
    #[error(transparent)]
    Core(#[from] guardreasoner_core::jsonl::DataError),
    #[cfg(feature = "oracle")]
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Prefixes a model error with the checkpoint it came from.
    pub fn with_path(self, path: &Path) -> Self {
        match self {
            TrainError::Model(message) => TrainError::Format {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        }
    }
}

pub mod bench;
pub mod data;
pub mod dpo;
pub mod export;
pub mod fast;
pub mod gguf_base;
pub mod optim;
pub mod sft;
mod st;
pub use st::{F32Tensor, WeightDtype};
pub mod trainer;

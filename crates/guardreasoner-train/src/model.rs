//! What a training run is told about its model: the configuration (the engine's one
//! `config.json` type) and how it is trained. The weights live in [`crate::fast::FastLlama`];
//! the candle model that checks them is `crate::oracle` (feature `oracle`, tests only).

use crate::lora::LoraConfig;
use crate::TrainError;
use std::path::Path;

/// The model configuration is the engine's: one `config.json` type for inference and training.
pub use guardreasoner_engine::config::{Config, RopeScaling};

/// Reads and checks a Hugging Face `config.json` (a LLaMA-family model).
pub fn read_config(path: &Path) -> Result<Config, TrainError> {
    Config::from_hf_file(path).map_err(|e| TrainError::Config(e.to_string()))
}

/// How the model is trained: every weight, or low-rank adapters over frozen weights.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainMode {
    Full,
    Lora(LoraConfig),
}

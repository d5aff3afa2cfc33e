//! Shared helpers for the integration tests (included with `mod common;`).
#![allow(dead_code)]

use candle_core::DType;
use guardreasoner_train::data::{ByteEncoder, TrainRecord};
use guardreasoner_train::fast::FastLlama;
use guardreasoner_train::model::{Config, TrainMode};
use guardreasoner_train::oracle::Llama;
use std::path::PathBuf;

/// `../shared/...` relative to the repository root.
pub fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(rel)
}

/// Byte-level vocabulary: ids 0..256 are bytes, 256 is EOS.
pub const VOCAB: usize = 257;
pub const EOS: u32 = 256;

pub fn encoder() -> ByteEncoder {
    ByteEncoder {
        offset: 0,
        eos: EOS,
    }
}

pub fn tiny_config() -> Config {
    let mut c = Config::tiny(VOCAB, 32, 64, 2, 4, 2, true);
    c.eos_token_id = Some(guardreasoner_engine::config::TokenIds::One(EOS));
    c
}

/// The candle reference model (f64 for exact checks, or f32).
pub fn tiny_model(dtype: DType, mode: TrainMode, seed: u64) -> Llama {
    Llama::random(tiny_config(), 0.08, seed, dtype, mode).expect("tiny model")
}

/// The trainer's model with the same weights (and adapters) as `tiny_model(_, mode, seed)`.
pub fn tiny_fast(mode: TrainMode, seed: u64) -> FastLlama {
    FastLlama::from_llama(&tiny_model(DType::F32, mode, seed)).expect("fast copy")
}

pub fn records() -> Vec<TrainRecord> {
    vec![
        TrainRecord {
            instruction: "Judge.".into(),
            input: "hi".into(),
            output: "Request: unharmful".into(),
            prefix: None,
        },
        TrainRecord {
            instruction: "Judge.".into(),
            input: "kill".into(),
            output: "Request: harmful".into(),
            prefix: None,
        },
        TrainRecord {
            instruction: "Judge.".into(),
            input: "no".into(),
            output: "Completion: refusal".into(),
            prefix: None,
        },
    ]
}

//! A native CPU inference engine for LLaMA-family guard models.
//!
//! * Loads GGUF files of architecture `llama` (weights F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
//!   Q6_K) and Hugging Face directories (`config.json` + `model.safetensors` or shards, f32 /
//!   f16 / bf16, `llama3` rope scaling, grouped-query attention, tied embeddings).
//! * Runs quantised weights against 16-bit activation blocks with kernels picked at run time
//!   from the CPU's features (AVX2/FMA/F16C, AVX-512 VNNI, portable scalar fallback: [`kernels`]);
//!   on AVX-512 VNNI, Q8_0 matrices are stored with sixteen rows interleaved, one per lane.
//! * Decodes many sequences together ([`DecodeBatch`]): each step runs one forward pass over
//!   the new tokens of every sequence (prompt chunks and single decode tokens alike), each with
//!   its own key/value cache (f16 or 8-bit, growing as tokens arrive); the shared guard instruction is
//!   prefilled once ([`Engine::register_prefix`]) and its keys/values are read by every sequence
//!   that starts with it, never copied.
//!
//! The forward pass lives in [`llama::Llama::forward`]; sampling in [`sampling`].
//!
//! ```no_run
//! use guardreasoner_engine::{Engine, GenerationRequest, SamplingParams};
//! let engine = Engine::load("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let request = GenerationRequest { prompt_ids: vec![1, 2, 3], params: SamplingParams::greedy(64) };
//! let out = engine.generate(&[request], |_seq, _token| {})?;
//! println!("{:?} ({:?})", out[0].tokens, out[0].finish_reason);
//! # Ok::<(), guardreasoner_engine::EngineError>(())
//! ```
//!
//! Threads: a private rayon pool per [`Engine`] (default: one per physical core). The engine
//! works on token ids; tokenisation is the tokenizer crate's job.

mod answer;
mod batch;
pub mod bench;
pub mod config;
mod engine;
pub mod error;
pub mod kernels;
pub mod kv_cache;
pub mod layout;
pub mod llama;
mod lookup;
pub mod matrix;
pub mod norm;
mod probe;
pub mod quant;
pub mod roofline;
pub mod sampling;

pub use answer::AnswerConstraint;
pub use batch::{DecodeBatch, SeqId, StepOutput};
pub use config::Config;
pub use engine::{
    Engine, FinishReason, Generation, GenerationRequest, LoadOptions, SequenceOptions, Timings,
};
pub use error::{EngineError, Result};
pub use kv_cache::KvType;
pub use lookup::PromptLookup;
pub use probe::ContinuationProbe;
pub use sampling::SamplingParams;

//! The engine's error type: every failure names its cause (and file, where there is one).

use std::path::PathBuf;

/// Errors from loading a model or running it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model path does not exist.
    #[error("model not found: {0} (expected a .gguf file or a directory with config.json and *.safetensors)")]
    ModelNotFound(PathBuf),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The GGUF reader rejected the file (truncated, corrupt, wrong version, ...).
    #[error(transparent)]
    Gguf(#[from] guardreasoner_gguf::GgufError),
    /// A Hugging Face directory whose weight files cannot be told (see `guardreasoner_gguf::hf`).
    #[error(transparent)]
    HfDir(#[from] guardreasoner_gguf::hf::HfDirError),
    /// A safetensors file could not be parsed.
    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    /// `config.json` (or GGUF metadata) does not describe a model this engine can run.
    #[error("{path}: invalid model config: {message}")]
    Config { path: PathBuf, message: String },
    /// The model is not a LLaMA-family decoder.
    #[error("{path}: unsupported architecture {found:?}; this engine runs the llama architecture (LlamaForCausalLM)")]
    WrongArchitecture { path: PathBuf, found: String },
    /// A weight is stored in a format the engine has no kernel for.
    #[error("{path}: tensor {name:?} has type {dtype}, which this engine cannot run (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)")]
    UnsupportedTensorType {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// A required weight is absent.
    #[error("{path}: tensor {name:?} is missing")]
    MissingTensor { path: PathBuf, name: String },
    /// A weight has the wrong shape for the config.
    #[error("{path}: tensor {name:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// A weight's bytes are shorter than its shape needs.
    #[error("{path}: tensor {name:?} is truncated: {found} bytes, expected {expected}")]
    TruncatedTensor {
        path: PathBuf,
        name: String,
        found: usize,
        expected: usize,
    },
    /// A prompt with no tokens.
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    /// Prompt plus requested generation does not fit the context window.
    #[error("{needed} tokens (prompt {prompt} + up to {max_new_tokens} new) exceed the context window of {context} tokens")]
    ContextOverflow {
        prompt: usize,
        max_new_tokens: usize,
        needed: usize,
        context: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { token: u32, vocab: usize },
    /// Bad sampling parameters.
    #[error("invalid generation parameters: {0}")]
    InvalidParams(String),
    /// A key/value cache made for another cache type than the model now uses.
    #[error("key/value cache holds {found} but the model stores {expected}; make caches with the model's new_cache")]
    CacheTypeMismatch {
        found: &'static str,
        expected: &'static str,
    },
    /// The worker thread pool could not be started.
    #[error("cannot start worker threads: {0}")]
    ThreadPool(String),
}

/// Result alias for the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

//! The model configuration: deserialised from a Hugging Face `config.json`, or built from the
//! `llama.*` metadata of a GGUF file.

use crate::error::{EngineError, Result};
use guardreasoner_gguf::GgufFile;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One token id or several (`eos_token_id` is a list in Llama 3 configs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// `rope_scaling` of a Hugging Face config (`default`, `linear` and `llama3` are supported).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(default)]
    pub rope_type: Option<String>,
    /// Older configs name the field `type`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub legacy_type: Option<String>,
    #[serde(default = "one")]
    pub factor: f64,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

impl RopeScaling {
    /// The scaling kind, whichever field carries it.
    pub fn kind(&self) -> &str {
        self.rope_type
            .as_deref()
            .or(self.legacy_type.as_deref())
            .unwrap_or("default")
    }
}

fn one() -> f64 {
    1.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_context() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

/// A LLaMA-family model configuration, field names as in Hugging Face `LlamaConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no grouped-query attention).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_context")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

impl Config {
    /// Parse and check a Hugging Face `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = serde_json::from_str(&text).map_err(|e| EngineError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let llama = config.architectures.iter().any(|a| a == "LlamaForCausalLM")
            || (config.architectures.is_empty() && config.model_type.as_deref() == Some("llama"));
        if !llama {
            let found = config
                .architectures
                .first()
                .cloned()
                .or_else(|| config.model_type.clone())
                .unwrap_or_else(|| "unknown".into());
            return Err(EngineError::WrongArchitecture {
                path: path.to_path_buf(),
                found,
            });
        }
        config.validate(path)?;
        Ok(config)
    }

    /// Build the configuration from the `llama.*` metadata of a GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Config> {
        let path = file.path();
        let arch = file.architecture()?;
        if arch != "llama" {
            return Err(EngineError::WrongArchitecture {
                path: path.to_path_buf(),
                found: arch.to_string(),
            });
        }
        let key = |k: &str| format!("llama.{k}");
        let u = |k: &str| file.get_u32(&key(k)).map(|v| v as usize);
        let opt_u = |k: &str| file.get(&key(k)).map(|_| u(k)).transpose();
        let num_attention_heads = u("attention.head_count")?;
        let hidden_size = u("embedding_length")?;
        let vocab_size = match opt_u("vocab_size")? {
            Some(v) => v,
            None => match file.get_array("tokenizer.ggml.tokens") {
                Some(tokens) => tokens.len(),
                None => file
                    .tensor("token_embd.weight")
                    .and_then(|t| t.dims.get(1))
                    .map(|&d| d as usize)
                    .ok_or_else(|| EngineError::MissingTensor {
                        path: path.to_path_buf(),
                        name: "token_embd.weight".into(),
                    })?,
            },
        };
        let rope_scaling = match file.get_str(&key("rope.scaling.type")) {
            Ok("linear") => Some(RopeScaling {
                rope_type: Some("linear".into()),
                legacy_type: None,
                factor: file.get_f32(&key("rope.scaling.factor"))? as f64,
                low_freq_factor: None,
                high_freq_factor: None,
                original_max_position_embeddings: None,
            }),
            Ok("none") | Err(_) => None,
            Ok(other) => {
                return Err(EngineError::Config {
                    path: path.to_path_buf(),
                    message: format!("rope scaling type {other:?} is not supported"),
                })
            }
        };
        let token = |k: &str| file.get_u32(k).ok();
        let mut eos: Vec<u32> = token("tokenizer.ggml.eos_token_id").into_iter().collect();
        if let Some(eot) = token("tokenizer.ggml.eot_token_id") {
            if !eos.contains(&eot) {
                eos.push(eot);
            }
        }
        let config = Config {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: Some("llama".into()),
            vocab_size,
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads,
            num_key_value_heads: opt_u("attention.head_count_kv")?,
            head_dim: match opt_u("attention.key_length")? {
                Some(d) => Some(d),
                None => opt_u("rope.dimension_count")?,
            },
            rms_norm_eps: file
                .get_f32(&key("attention.layer_norm_rms_epsilon"))
                .map(|v| v as f64)
                .unwrap_or(1e-5),
            rope_theta: file
                .get_f32(&key("rope.freq_base"))
                .map(|v| v as f64)
                .unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: opt_u("context_length")?.unwrap_or(2048),
            tie_word_embeddings: file.tensor("output.weight").is_none(),
            bos_token_id: token("tokenizer.ggml.bos_token_id").map(TokenIds::One),
            eos_token_id: (!eos.is_empty()).then_some(TokenIds::Many(eos)),
            hidden_act: "silu".into(),
            attention_bias: false,
            mlp_bias: false,
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        self.check().map_err(|message| EngineError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// A small configuration (SmolLM2's layout at other sizes) for tests and benchmarks.
    #[allow(clippy::too_many_arguments)]
    pub fn tiny(
        vocab: usize,
        hidden: usize,
        intermediate: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
        tie: bool,
    ) -> Config {
        Config {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: Some("llama".into()),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: default_context(),
            tie_word_embeddings: tie,
            bos_token_id: None,
            eos_token_id: Some(TokenIds::One(vocab.saturating_sub(1) as u32)),
            hidden_act: default_act(),
            attention_bias: false,
            mlp_bias: false,
        }
    }

    /// Whether the shapes and options are ones this implementation runs (the same rules for
    /// the engine and the trainer).
    pub fn check(&self) -> std::result::Result<(), String> {
        let bad = |message: String| Err(message);
        if self.hidden_size == 0
            || self.num_attention_heads == 0
            || self.num_hidden_layers == 0
            || self.vocab_size == 0
        {
            return bad("hidden_size, num_attention_heads, num_hidden_layers and vocab_size must be positive".into());
        }
        let kv = self.num_key_value_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            ));
        }
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even and positive",
                self.head_dim()
            ));
        }
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act {:?} is not supported (silu only)",
                self.hidden_act
            ));
        }
        if self.attention_bias || self.mlp_bias {
            return bad("attention or MLP biases are not supported".into());
        }
        if let Some(s) = &self.rope_scaling {
            match s.kind() {
                "default" | "linear" => {}
                "llama3" if s.low_freq_factor.is_some() && s.high_freq_factor.is_some() && s.original_max_position_embeddings.is_some() => {}
                "llama3" => return bad("llama3 rope_scaling needs low_freq_factor, high_freq_factor and original_max_position_embeddings".into()),
                other => return bad(format!("rope_scaling type {other:?} is not supported (default, linear, llama3)")),
            }
        }
        Ok(())
    }

    /// Key/value heads (grouped-query attention).
    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Dimension of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// End-of-sequence token ids.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// Rotary inverse frequencies (`head_dim / 2` of them), with `rope_scaling` applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        self.rope_inv_freq_f64()
            .into_iter()
            .map(|f| f as f32)
            .collect()
    }

    /// [`Self::rope_inv_freq`] before the final rounding to f32 (the trainer's f64 reference
    /// model uses them as they are).
    pub fn rope_inv_freq_f64(&self) -> Vec<f64> {
        let dim = self.head_dim();
        let mut freqs: Vec<f64> = (0..dim / 2)
            .map(|i| {
                // As transformers computes it: in f32.
                let exponent = (2 * i) as f32 / dim as f32;
                (1.0 / (self.rope_theta as f32).powf(exponent)) as f64
            })
            .collect();
        if let Some(s) = &self.rope_scaling {
            match s.kind() {
                "linear" => freqs.iter_mut().for_each(|f| *f /= s.factor),
                "llama3" => {
                    let (low, high) = (
                        s.low_freq_factor.unwrap_or(1.0),
                        s.high_freq_factor.unwrap_or(4.0),
                    );
                    let old = s.original_max_position_embeddings.unwrap_or(8192) as f64;
                    let (low_wavelen, high_wavelen) = (old / low, old / high);
                    for f in freqs.iter_mut() {
                        let wavelen = 2.0 * std::f64::consts::PI / *f;
                        if wavelen > low_wavelen {
                            *f /= s.factor;
                        } else if wavelen >= high_wavelen {
                            let smooth = (old / wavelen - low) / (high - low);
                            *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                        }
                    }
                }
                _ => {}
            }
        }
        freqs
    }
}

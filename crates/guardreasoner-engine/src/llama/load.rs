//! Loading a [`Llama`] from a GGUF file or a Hugging Face directory (safetensors, memory-mapped).

use super::{Layer, Linear, Llama, LowRank, LowRankPart, RopeLayout};
use crate::config::Config;
use crate::error::{EngineError, Result};
use crate::matrix::Matrix;
use crate::quant::WeightType;
use guardreasoner_gguf::GgufFile;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

impl Llama {
    /// Load a GGUF file (architecture `llama`).
    pub fn from_gguf(path: &Path) -> Result<Llama> {
        let file = GgufFile::open(path)?;
        let config = Config::from_gguf(&file)?;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let (q_dim, kv_dim) = (
            config.num_attention_heads * config.head_dim(),
            config.num_key_value_heads() * config.head_dim(),
        );
        let matrix = |name: &str, rows: usize, cols: usize| gguf_matrix(&file, name, rows, cols);
        let vector =
            |name: &str, len: usize| -> Result<Vec<f32>> { Ok(matrix(name, 1, len)?.values()) };
        // A stored matrix and its run-time LoRA update, if the file carries one.
        let linear = |parts: &[(String, usize)], cols: usize| -> Result<Linear> {
            let matrices = parts
                .iter()
                .map(|(name, rows)| matrix(name, *rows, cols))
                .collect::<Result<Vec<_>>>()?;
            Ok(Linear::fused(matrices).with_low_rank(gguf_low_rank(&file, parts, cols)?))
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            layers.push(Layer {
                input_layernorm: vector(&n("attn_norm"), h)?,
                qkv_proj: linear(
                    &[
                        (n("attn_q"), q_dim),
                        (n("attn_k"), kv_dim),
                        (n("attn_v"), kv_dim),
                    ],
                    h,
                )?,
                o_proj: linear(&[(n("attn_output"), h)], q_dim)?,
                post_attention_layernorm: vector(&n("ffn_norm"), h)?,
                gate_up_proj: linear(&[(n("ffn_gate"), i), (n("ffn_up"), i)], h)?,
                down_proj: linear(&[(n("ffn_down"), h)], i)?,
            });
        }
        let mut inv_freq = config.rope_inv_freq();
        // llama3-style scaling is stored as per-frequency divisors.
        if file.tensor("rope_freqs.weight").is_some() {
            let factors = vector("rope_freqs.weight", inv_freq.len())?;
            for (f, d) in inv_freq.iter_mut().zip(factors) {
                *f /= d;
            }
        }
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(Linear::fused(vec![matrix(
                "output.weight",
                config.vocab_size,
                h,
            )?]))
        };
        Ok(Llama {
            rope_layout: RopeLayout::Adjacent,
            inv_freq,
            embed_tokens: matrix("token_embd.weight", config.vocab_size, h)?,
            layers,
            norm: vector("output_norm.weight", h)?,
            lm_head,
            source: path.to_path_buf(),
            config,
            kv_choice: None,
        })
    }

    /// Load a Hugging Face layout directory: `config.json` and `model.safetensors` (or shards
    /// listed in `model.safetensors.index.json`), weights in f32, f16 or bf16.
    pub fn from_hf_dir(dir: &Path) -> Result<Llama> {
        let config = Config::from_hf_file(&dir.join("config.json"))?;
        let st = SafetensorsSet::open(dir)?;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let (q_dim, kv_dim) = (
            config.num_attention_heads * config.head_dim(),
            config.num_key_value_heads() * config.head_dim(),
        );
        let vector =
            |name: &str, len: usize| -> Result<Vec<f32>> { Ok(st.matrix(name, 1, len)?.values()) };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let n = |s: &str| format!("model.layers.{l}.{s}.weight");
            layers.push(Layer {
                input_layernorm: vector(&n("input_layernorm"), h)?,
                qkv_proj: Linear::fused(vec![
                    st.matrix(&n("self_attn.q_proj"), q_dim, h)?,
                    st.matrix(&n("self_attn.k_proj"), kv_dim, h)?,
                    st.matrix(&n("self_attn.v_proj"), kv_dim, h)?,
                ]),
                o_proj: Linear::fused(vec![st.matrix(&n("self_attn.o_proj"), h, q_dim)?]),
                post_attention_layernorm: vector(&n("post_attention_layernorm"), h)?,
                gate_up_proj: Linear::fused(vec![
                    st.matrix(&n("mlp.gate_proj"), i, h)?,
                    st.matrix(&n("mlp.up_proj"), i, h)?,
                ]),
                down_proj: Linear::fused(vec![st.matrix(&n("mlp.down_proj"), h, i)?]),
            });
        }
        let tied = config.tie_word_embeddings || !st.contains("lm_head.weight");
        let lm_head = if tied {
            None
        } else {
            Some(Linear::fused(vec![st.matrix(
                "lm_head.weight",
                config.vocab_size,
                h,
            )?]))
        };
        Ok(Llama {
            rope_layout: RopeLayout::Halves,
            inv_freq: config.rope_inv_freq(),
            embed_tokens: st.matrix("model.embed_tokens.weight", config.vocab_size, h)?,
            layers,
            norm: vector("model.norm.weight", h)?,
            lm_head,
            source: dir.to_path_buf(),
            config,
            kv_choice: None,
        })
    }
}

/// The run-time LoRA update of a linear layer made of `parts` (GGUF name, rows), if the file
/// carries one: per adapted part, `<name>.lora_a` (ggml dims `[cols, rank]`) and
/// `<name>.lora_b` (`[rank, rows]`, the LoRA scale folded in), as `guardreasoner model merge
/// --adapted-type lora` writes them beside the unchanged base tensors.
fn gguf_low_rank(
    file: &GgufFile,
    parts: &[(String, usize)],
    cols: usize,
) -> Result<Option<LowRank>> {
    let mut updates = Vec::new();
    let mut offset = 0;
    for (name, rows) in parts {
        let (a_name, b_name) = (format!("{name}.lora_a"), format!("{name}.lora_b"));
        match (file.tensor(&a_name), file.tensor(&b_name)) {
            (None, None) => {}
            (Some(a), Some(_)) => {
                let rank = a.dims.get(1).copied().unwrap_or(0) as usize;
                updates.push(LowRankPart {
                    out_offset: offset,
                    rows: *rows,
                    a: gguf_matrix(file, &a_name, rank, cols)?.values(),
                    b: gguf_matrix(file, &b_name, *rows, rank)?.values(),
                });
            }
            (a, _) => {
                return Err(EngineError::MissingTensor {
                    path: file.path().to_path_buf(),
                    name: if a.is_some() { b_name } else { a_name },
                })
            }
        }
        offset += rows;
    }
    LowRank::new(offset, cols, &updates, WeightType::Q8_0).map_err(|message| EngineError::Config {
        path: file.path().to_path_buf(),
        message: format!("{}: {message}", parts[0].0),
    })
}

/// Read one GGUF tensor as a `rows × cols` matrix (ggml dims `[cols, rows]`).
fn gguf_matrix(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
    let path = file.path();
    let info = file
        .tensor(name)
        .ok_or_else(|| EngineError::MissingTensor {
            path: path.to_path_buf(),
            name: name.into(),
        })?;
    let dims: Vec<usize> = info.dims.iter().map(|&d| d as usize).collect();
    let expected = if rows == 1 {
        vec![cols]
    } else {
        vec![cols, rows]
    };
    let trimmed: Vec<usize> = {
        let mut d = dims.clone();
        while d.len() > expected.len() && d.last() == Some(&1) {
            d.pop();
        }
        d
    };
    if trimmed != expected {
        return Err(EngineError::ShapeMismatch {
            path: path.to_path_buf(),
            name: name.into(),
            found: dims,
            expected,
        });
    }
    let ty =
        WeightType::from_ggml(info.dtype).ok_or_else(|| EngineError::UnsupportedTensorType {
            path: path.to_path_buf(),
            name: name.into(),
            dtype: info.dtype.name(),
        })?;
    let data = file.tensor_data(info)?;
    let expected_bytes = ty.row_bytes(cols).map(|b| b * rows);
    Matrix::new(ty, rows, cols, data.to_vec()).ok_or_else(|| EngineError::TruncatedTensor {
        path: path.to_path_buf(),
        name: name.into(),
        found: data.len(),
        expected: expected_bytes.unwrap_or(0),
    })
}

/// The safetensors files of a Hugging Face directory, memory-mapped.
struct SafetensorsSet {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
}

impl SafetensorsSet {
    fn open(dir: &Path) -> Result<SafetensorsSet> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EngineError::Io { path, source }
        };
        let names = guardreasoner_gguf::hf::weight_files(dir)?;
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in names {
            let file = std::fs::File::open(&path).map_err(io(&path))?;
            // SAFETY: read-only map of a weights file; modifying it while loaded is outside
            // what the engine can defend against (as with every mmap-based loader).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(&path))?;
            let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| {
                EngineError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
            for name in st.names() {
                index.insert(name.to_string(), files.len());
            }
            files.push((path, map));
        }
        Ok(SafetensorsSet { files, index })
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let &fi = self
            .index
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor {
                path: self.files.first().map(|f| f.0.clone()).unwrap_or_default(),
                name: name.into(),
            })?;
        let (path, map) = &self.files[fi];
        let st =
            safetensors::SafeTensors::deserialize(map).map_err(|e| EngineError::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let view = st.tensor(name).map_err(|e| EngineError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let ty = match view.dtype() {
            safetensors::Dtype::F32 => WeightType::F32,
            safetensors::Dtype::F16 => WeightType::F16,
            safetensors::Dtype::BF16 => WeightType::BF16,
            other => {
                return Err(EngineError::UnsupportedTensorType {
                    path: path.clone(),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let expected = if rows == 1 {
            vec![cols]
        } else {
            vec![rows, cols]
        };
        if view.shape() != expected.as_slice() {
            return Err(EngineError::ShapeMismatch {
                path: path.clone(),
                name: name.into(),
                found: view.shape().to_vec(),
                expected,
            });
        }
        let data = view.data();
        Matrix::new(ty, rows, cols, data.to_vec()).ok_or_else(|| EngineError::TruncatedTensor {
            path: path.clone(),
            name: name.into(),
            found: data.len(),
            expected: rows * cols * ty.block_bytes(),
        })
    }
}

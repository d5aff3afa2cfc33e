//! A GGUF model as a training base: dequantised to f32 and written out as a Hugging Face layout
//! checkpoint (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`),
//! which training, merging and the engine all read.
//!
//! GGUF files converted by llama.cpp store the rows of each Q and K projection permuted so that
//! rotary pairs are adjacent (`2i`, `2i + 1`); Hugging Face LLaMA rotates halves (`i`,
//! `i + head_dim / 2`). The conversion undoes the permutation, so the checkpoint computes what
//! the GGUF computes under the HF convention. Dequantisation uses the engine's own routines, so
//! the trained model starts from exactly the weights the engine serves.

use crate::model::Config;
use crate::TrainError;
use guardreasoner_engine::layout::{dequantize_tensor, gguf_name_of, hf_name, reorder_rotary_rows};
use guardreasoner_engine::quant::{quantize_row, WeightType};
use guardreasoner_gguf::{GgufFile, TensorInfo};
use std::path::Path;

fn dequantize(file: &GgufFile, info: &TensorInfo) -> Result<(Vec<usize>, Vec<f32>), TrainError> {
    let values = dequantize_tensor(file, info).map_err(|message| TrainError::Format {
        path: file.path().to_path_buf(),
        message,
    })?;
    Ok((hf_shape(info), values))
}

/// The HF shape of a GGUF tensor: ggml lists the fastest-varying dimension first; HF the
/// slowest.
fn hf_shape(info: &TensorInfo) -> Vec<usize> {
    info.dims.iter().rev().map(|&d| d as usize).collect()
}

/// The f32 values of GGUF tensor `info` in the HF layout (Q/K rows un-permuted).
fn hf_values(
    file: &GgufFile,
    info: &TensorInfo,
    hf: &str,
    config: &Config,
) -> Result<Vec<f32>, TrainError> {
    let (shape, values) = dequantize(file, info)?;
    let heads = if hf.ends_with("q_proj.weight") {
        config.num_attention_heads
    } else if hf.ends_with("k_proj.weight") {
        config.num_key_value_heads()
    } else {
        return Ok(values);
    };
    Ok(reorder_rotary_rows(&values, heads, shape[1], true))
}

fn open_gguf(path: &Path) -> Result<GgufFile, TrainError> {
    GgufFile::open(path).map_err(|e| TrainError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The configuration of a LLaMA GGUF file the conversion supports.
fn gguf_config(file: &GgufFile) -> Result<Config, TrainError> {
    let path = file.path();
    let config = Config::from_gguf(file).map_err(|e| TrainError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(TrainError::Format {
            path: path.to_path_buf(),
            message: "this GGUF carries llama3 rope scaling as a rope_freqs tensor, which the \
                      conversion does not rebuild; train from the model's Hugging Face checkpoint"
                .into(),
        });
    }
    Ok(config)
}

/// Writes `gguf` as a Hugging Face layout checkpoint into `dir`: `config.json`,
/// `model.safetensors` (f32, the dequantised weights), `tokenizer.json` and
/// `tokenizer_config.json` (rebuilt from the GGUF's tokenizer metadata, with its chat template).
pub fn convert_gguf_to_hf(gguf: &Path, dir: &Path) -> Result<(), TrainError> {
    let file = open_gguf(gguf)?;
    let config = gguf_config(&file)?;
    let tokenizer =
        guardreasoner_tokenizer::Tokenizer::from_gguf(&file).map_err(|e| TrainError::Format {
            path: gguf.to_path_buf(),
            message: format!("tokenizer: {e}"),
        })?;
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let write = |name: &str, text: String| -> Result<(), TrainError> {
        let path = dir.join(name);
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).map_err(|e| TrainError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| TrainError::io(&path, e))
    };
    let mut config_json =
        serde_json::to_value(&config).map_err(|e| TrainError::Model(e.to_string()))?;
    config_json["torch_dtype"] = "float32".into();
    // Every id that ends generation for the GGUF's tokenizer (e.g. SmolLM2's <|im_end|> and
    // <|endoftext|>), the first being the one training appends.
    config_json["eos_token_id"] = tokenizer.eos_ids().into();
    write("config.json", pretty(&config_json))?;
    // Each weight is dequantised only when it is written: the conversion never holds the whole
    // f32 model.
    let mut tensors: Vec<(String, &TensorInfo)> = file
        .tensors
        .iter()
        .filter_map(|info| hf_name(&info.name).map(|hf| (hf, info)))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let (file, config) = (&file, &config);
    let entries: Vec<crate::st::Entry> = tensors
        .into_iter()
        .map(|(hf, info)| crate::st::Entry {
            shape: hf_shape(info),
            data: crate::st::Payload::Lazy {
                count: info.element_count() as usize,
                dtype: crate::WeightDtype::F32,
                values: Box::new({
                    let hf = hf.clone();
                    move || hf_values(file, info, &hf, config)
                }),
            },
            name: hf,
        })
        .collect();
    crate::st::write(&dir.join("model.safetensors"), &entries)?;
    let tokenizer_json = tokenizer.to_hf_json().map_err(|e| TrainError::Format {
        path: gguf.to_path_buf(),
        message: e.to_string(),
    })?;
    write("tokenizer.json", tokenizer_json)?;
    let text_of = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id));
    let mut tokenizer_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.max_position_embeddings,
        "add_bos_token": tokenizer.special_ids().add_bos,
        "clean_up_tokenization_spaces": false,
    });
    if let Some(bos) = text_of(tokenizer.bos_id()) {
        tokenizer_config["bos_token"] = bos.into();
    }
    if let Some(eos) = text_of(tokenizer.eos_ids().first().copied()) {
        tokenizer_config["eos_token"] = eos.into();
    }
    if let Ok(template) = file.get_str("tokenizer.chat_template") {
        tokenizer_config["chat_template"] = template.into();
    }
    write("tokenizer_config.json", pretty(&tokenizer_config))?;
    Ok(())
}

/// The element type of the 2-D weights of a written GGUF (1-D norms stay f32, as llama.cpp
/// keeps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufWeightType {
    F32,
    F16,
}

/// Writes the HF-layout checkpoint in `dir` as one GGUF file (`path`) that the engine and
/// llama.cpp serve: weights in `weight_type` with the Q/K rows permuted to llama.cpp's rotary
/// layout, the configuration as `llama.*` keys and the tokenizer as `tokenizer.ggml.*`.
pub fn convert_hf_to_gguf(
    dir: &Path,
    path: &Path,
    weight_type: GgufWeightType,
) -> Result<(), TrainError> {
    use guardreasoner_gguf::write::{GgufWriter, TensorPlan};
    use guardreasoner_gguf::{GgmlType, Value};
    let fail = |message: String| TrainError::Format {
        path: dir.to_path_buf(),
        message,
    };
    let config = Config::from_hf_file(&dir.join("config.json")).map_err(|e| fail(e.to_string()))?;
    let mut metadata: Vec<(String, Value)> = Vec::new();
    let mut put = |k: &str, v: Value| metadata.push((k.to_string(), v));
    put("general.architecture", Value::String("llama".into()));
    let name = dir
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().into_owned());
    put("general.name", Value::String(name));
    put(
        "general.file_type",
        Value::U32(match weight_type {
            GgufWeightType::F32 => 0,
            GgufWeightType::F16 => 1,
        }),
    );
    let u = |v: usize| Value::U32(v as u32);
    put("llama.context_length", u(config.max_position_embeddings));
    put("llama.embedding_length", u(config.hidden_size));
    put("llama.block_count", u(config.num_hidden_layers));
    put("llama.feed_forward_length", u(config.intermediate_size));
    put("llama.attention.head_count", u(config.num_attention_heads));
    put(
        "llama.attention.head_count_kv",
        u(config.num_key_value_heads()),
    );
    put("llama.attention.key_length", u(config.head_dim()));
    put("llama.attention.value_length", u(config.head_dim()));
    put("llama.rope.dimension_count", u(config.head_dim()));
    put(
        "llama.attention.layer_norm_rms_epsilon",
        Value::F32(config.rms_norm_eps as f32),
    );
    put("llama.rope.freq_base", Value::F32(config.rope_theta as f32));
    put("llama.vocab_size", u(config.vocab_size));
    if let Some(scaling) = &config.rope_scaling {
        match scaling.kind() {
            "default" => {}
            "linear" => {
                put("llama.rope.scaling.type", Value::String("linear".into()));
                put(
                    "llama.rope.scaling.factor",
                    Value::F32(scaling.factor as f32),
                );
            }
            other => {
                return Err(fail(format!(
                    "rope_scaling {other:?} is not written to GGUF here; serve the Hugging Face \
                     directory instead (the engine reads it directly)"
                )))
            }
        }
    }
    let tokenizer = guardreasoner_tokenizer::Tokenizer::from_hf_dir(dir)
        .map_err(|e| fail(format!("tokenizer: {e}")))?;
    metadata.extend(
        tokenizer
            .to_gguf_metadata()
            .map_err(|e| fail(format!("tokenizer: {e}")))?,
    );
    let tokenizer_config: Option<serde_json::Value> =
        std::fs::read(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(template) = tokenizer_config
        .as_ref()
        .and_then(|c| c["chat_template"].as_str())
    {
        metadata.push((
            "tokenizer.chat_template".into(),
            Value::String(template.to_string()),
        ));
    }

    // One weight at a time: plan every tensor (the header needs them all), then read, convert
    // and write each in turn, so neither the checkpoint nor the output is held whole.
    let mut checkpoint = crate::st::Checkpoint::open(dir)?;
    let weights: Vec<(String, Vec<usize>)> = checkpoint
        .tensors()
        .map(|(name, info)| (name.clone(), info.shape.clone()))
        .collect();
    let mut plans = Vec::new();
    let mut sources = Vec::new();
    for (hf, dims) in &weights {
        let Some(gguf) = gguf_name_of(hf) else {
            if hf.ends_with("rotary_emb.inv_freq")
                || (hf == "lm_head.weight" && config.tie_word_embeddings)
            {
                continue;
            }
            return Err(fail(format!("weight {hf} has no GGUF counterpart")));
        };
        let to_f16 = dims.len() == 2 && weight_type == GgufWeightType::F16;
        plans.push(TensorPlan {
            name: gguf,
            dims: dims.iter().rev().map(|&d| d as u64).collect(),
            dtype: if to_f16 { GgmlType::F16 } else { GgmlType::F32 },
        });
        sources.push((hf, dims, to_f16));
    }
    let io = |e| TrainError::io(path, e);
    let mut writer = GgufWriter::create(path, &metadata, plans).map_err(io)?;
    for (hf, dims, to_f16) in sources {
        let mut values = vec![0.0f32; dims.iter().product()];
        checkpoint.read_f32(hf, &mut values)?;
        if dims.len() == 2 && hf.ends_with("q_proj.weight") {
            values = reorder_rotary_rows(&values, config.num_attention_heads, dims[1], false);
        } else if dims.len() == 2 && hf.ends_with("k_proj.weight") {
            values = reorder_rotary_rows(&values, config.num_key_value_heads(), dims[1], false);
        }
        // The engine's one element encoder (the same bytes the engine and the hub write).
        let ty = if to_f16 {
            WeightType::F16
        } else {
            WeightType::F32
        };
        let bytes = quantize_row(ty, &values);
        drop(values);
        writer.write_tensor(&bytes).map_err(io)?;
    }
    writer.finish().map_err(io)
}

#[cfg(feature = "oracle")]
pub use reference::{load_gguf_base, read_gguf_weights};

/// A GGUF base as the candle reference model (tests check the trainer's view of a GGUF with it).
#[cfg(feature = "oracle")]
mod reference {
    use super::{gguf_config, hf_name, hf_shape, hf_values, open_gguf};
    use crate::model::Config;
    use crate::model::TrainMode;
    use crate::oracle::Llama;
    use crate::TrainError;
    use candle_core::{DType, Device, Tensor};
    use guardreasoner_gguf::GgufFile;
    use std::collections::BTreeMap;
    use std::path::Path;

    /// The configuration and f32 weights (HF names) of a LLaMA GGUF file.
    pub fn read_gguf_weights(
        file: &GgufFile,
    ) -> Result<(Config, BTreeMap<String, Tensor>), TrainError> {
        let config = gguf_config(file)?;
        let mut weights = BTreeMap::new();
        for info in &file.tensors {
            let Some(hf) = hf_name(&info.name) else {
                continue;
            };
            let values = hf_values(file, info, &hf, &config)?;
            weights.insert(hf, Tensor::from_vec(values, hf_shape(info), &Device::Cpu)?);
        }
        Ok((config, weights))
    }

    /// A trainable model from a GGUF file (weights dequantised to f32, then cast to `dtype`).
    pub fn load_gguf_base(
        path: &Path,
        dtype: DType,
        mode: TrainMode,
        seed: u64,
    ) -> Result<Llama, TrainError> {
        let (config, weights) = read_gguf_weights(&open_gguf(path)?)?;
        Llama::from_weights(config, weights, dtype, mode, seed).map_err(|e| e.with_path(path))
    }
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON values serialise")
}

//! A GGUF model as a training base: dequantised to f32 and written out as a Hugging Face layout
//! checkpoint (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`),
//! which training, merging and the engine all read.
//!
//! GGUF files converted by llama.cpp store the rows of each Q and K projection permuted so that
//! rotary pairs are adjacent (`2i`, `2i + 1`); Hugging Face LLaMA rotates halves (`i`,
//! `i + head_dim / 2`). The conversion undoes the permutation, so the checkpoint computes what
//! the GGUF computes under the HF convention. Dequantisation uses the engine's own routines, so
//! the trained model starts from exactly the weights the engine serves.

use crate::model::{Llama, LlamaConfig, TrainMode};
use crate::TrainError;
use candle_core::{DType, Device, Tensor};
use guardreasoner_engine::quant::{dequantize_row, WeightType};
use guardreasoner_gguf::{GgufFile, TensorInfo};
use std::collections::BTreeMap;
use std::path::Path;

/// GGUF and HF names of the tensors outside the decoder layers.
const MODEL_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// GGUF (`blk.N.`) and HF (`model.layers.N.`) names of a decoder layer's tensors.
const LAYER_NAMES: [(&str, &str); 9] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// Translates a tensor name between the two layouts: `to_hf` from GGUF to HF, else back.
/// `None` for tensors that carry nothing the other layout stores.
fn translate_name(name: &str, to_hf: bool) -> Option<String> {
    let pick =
        |(gguf, hf): (&'static str, &'static str)| if to_hf { (gguf, hf) } else { (hf, gguf) };
    if let Some((_, to)) = MODEL_NAMES
        .into_iter()
        .map(pick)
        .find(|(from, _)| *from == name)
    {
        return Some(to.to_string());
    }
    let (from_prefix, to_prefix) = pick(("blk.", "model.layers."));
    let (layer, part) = name.strip_prefix(from_prefix)?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, to) = LAYER_NAMES
        .into_iter()
        .map(pick)
        .find(|(from, _)| *from == part)?;
    Some(format!("{to_prefix}{layer}.{to}"))
}

/// The HF name of a GGUF tensor of the LLaMA architecture.
fn hf_name(gguf_name: &str) -> Option<String> {
    translate_name(gguf_name, true)
}

/// The GGUF name of an HF weight name (the inverse of [`hf_name`]).
fn gguf_name_of(hf: &str) -> Option<String> {
    translate_name(hf, false)
}

/// llama.cpp's Q/K row permutation, as pairs (GGUF row, HF row): GGUF row `h*d + 2j + s`
/// holds HF row `h*d + s*d/2 + j` (`d` = head_dim, `s` in {0, 1}), so rotary pairs are adjacent.
fn rotary_row_pairs(rows: usize, heads: usize) -> impl Iterator<Item = (usize, usize)> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    (0..heads).flat_map(move |h| {
        (0..half).flat_map(move |j| {
            (0..2).map(move |s| (h * head_dim + 2 * j + s, h * head_dim + s * half + j))
        })
    })
}

/// Reorders the rows of a Q/K projection between the layouts (`to_hf`: undo llama.cpp's
/// permutation; else apply it).
fn reorder_rotary_rows(values: &[f32], heads: usize, cols: usize, to_hf: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    for (gguf, hf) in rotary_row_pairs(values.len() / cols, heads) {
        let (from, to) = if to_hf { (gguf, hf) } else { (hf, gguf) };
        out[to * cols..(to + 1) * cols].copy_from_slice(&values[from * cols..(from + 1) * cols]);
    }
    out
}

fn dequantize(file: &GgufFile, info: &TensorInfo) -> Result<(Vec<usize>, Vec<f32>), TrainError> {
    let path = file.path();
    let bad = |message: String| TrainError::Format {
        path: path.to_path_buf(),
        message,
    };
    let ty = WeightType::from_ggml(info.dtype).ok_or_else(|| {
        bad(format!(
            "tensor {} has type {}, which cannot be dequantised",
            info.name,
            info.dtype.name()
        ))
    })?;
    let bytes = file
        .tensor_data(info)
        .map_err(|e| bad(format!("tensor {}: {e}", info.name)))?;
    let cols = *info.dims.first().unwrap_or(&1) as usize;
    let rows = (info.element_count() as usize) / cols.max(1);
    let row_bytes = ty.row_bytes(cols).ok_or_else(|| {
        bad(format!(
            "tensor {}: rows of {cols} do not fit {}",
            info.name,
            ty.name()
        ))
    })?;
    if bytes.len() != rows * row_bytes {
        return Err(bad(format!(
            "tensor {} holds {} bytes, its shape needs {}",
            info.name,
            bytes.len(),
            rows * row_bytes
        )));
    }
    let mut values = vec![0.0f32; rows * cols];
    for (r, out) in values.chunks_exact_mut(cols).enumerate() {
        dequantize_row(ty, &bytes[r * row_bytes..(r + 1) * row_bytes], out);
    }
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
    config: &guardreasoner_engine::Config,
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
fn gguf_config(file: &GgufFile) -> Result<guardreasoner_engine::Config, TrainError> {
    let path = file.path();
    let config = guardreasoner_engine::Config::from_gguf(file).map_err(|e| TrainError::Format {
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

/// The configuration and f32 weights (HF names) of a LLaMA GGUF file.
pub fn read_gguf_weights(
    file: &GgufFile,
) -> Result<(guardreasoner_engine::Config, BTreeMap<String, Tensor>), TrainError> {
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
    let config = train_config(&config, path)?;
    Llama::from_weights(config, weights, dtype, mode, seed).map_err(|e| e.with_path(path))
}

fn train_config(
    config: &guardreasoner_engine::Config,
    path: &Path,
) -> Result<LlamaConfig, TrainError> {
    let value = serde_json::to_value(config).map_err(|e| TrainError::Model(e.to_string()))?;
    let config: LlamaConfig = serde_json::from_value(value).map_err(|e| TrainError::Format {
        path: path.to_path_buf(),
        message: format!("configuration not usable for training: {e}"),
    })?;
    config.validate().map_err(|message| TrainError::Format {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(config)
}

/// Writes `gguf` as a Hugging Face layout checkpoint into `dir`: `config.json`,
/// `model.safetensors` (f32, the dequantised weights), `tokenizer.json` and
/// `tokenizer_config.json` (rebuilt from the GGUF's tokenizer metadata, with its chat template).
pub fn convert_gguf_to_hf(gguf: &Path, dir: &Path) -> Result<(), TrainError> {
    let file = open_gguf(gguf)?;
    let config = gguf_config(&file)?;
    train_config(&config, gguf)?;
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
                dtype: DType::F32,
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
    let config = guardreasoner_engine::Config::from_hf_file(&dir.join("config.json"))
        .map_err(|e| fail(e.to_string()))?;
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
        let bytes: Vec<u8> = if to_f16 {
            values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect()
        } else {
            values.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        drop(values);
        writer.write_tensor(&bytes).map_err(io)?;
    }
    writer.finish().map_err(io)
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON values serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hf_names() {
        assert_eq!(
            hf_name("blk.12.attn_output.weight").as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
        for name in [
            "token_embd.weight",
            "blk.3.ffn_down.weight",
            "blk.0.attn_k.weight",
        ] {
            assert_eq!(gguf_name_of(&hf_name(name).unwrap()).as_deref(), Some(name));
        }
    }

    #[test]
    fn unpermuting_inverts_llama_cpp_permutation() {
        // llama.cpp's converter: reshape(heads, 2, d/2, cols).swapaxes(1, 2) on HF rows.
        let (heads, head_dim, cols) = (3, 8, 2);
        let hf: Vec<f32> = (0..heads * head_dim * cols).map(|v| v as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..heads {
            for s in 0..2 {
                for j in 0..head_dim / 2 {
                    let src = h * head_dim + s * head_dim / 2 + j;
                    let dst = h * head_dim + j * 2 + s;
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(reorder_rotary_rows(&gguf, heads, cols, true), hf);
        assert_eq!(reorder_rotary_rows(&hf, heads, cols, false), gguf);
    }
}

//! The two on-disk layouts of a LLaMA model, in one place: tensor names (GGUF `blk.N.attn_q`,
//! Hugging Face `model.layers.N.self_attn.q_proj`), llama.cpp's Q/K row permutation, and
//! dequantising a GGUF tensor to f32. The trainer's GGUF <-> HF conversion and the default
//! guard's adapter merge both go through these.
//!
//! GGUF files converted by llama.cpp store the rows of each Q and K projection permuted so that
//! rotary pairs are adjacent (`2i`, `2i + 1`); Hugging Face LLaMA rotates halves (`i`,
//! `i + head_dim / 2`).

use crate::quant::{dequantize_row, WeightType};
use guardreasoner_gguf::{GgufFile, TensorInfo};

/// GGUF and HF names of the tensors outside the decoder layers.
pub const MODEL_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// GGUF (`blk.N.`) and HF (`model.layers.N.`) names of a decoder layer's tensors.
pub const LAYER_NAMES: [(&str, &str); 9] = [
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

/// The HF names of every weight of a model with `layers` decoder layers, in the one fixed
/// order the trainer keeps them in: the embedding, each layer's nine ([`LAYER_NAMES`]), the
/// final norm, and `lm_head` unless the embeddings are tied.
pub fn hf_weight_names(layers: usize, tied: bool) -> Vec<String> {
    let mut names = vec![MODEL_NAMES[0].1.to_string()];
    for l in 0..layers {
        names.extend(
            LAYER_NAMES
                .iter()
                .map(|(_, hf)| format!("model.layers.{l}.{hf}")),
        );
    }
    names.push(MODEL_NAMES[1].1.to_string());
    if !tied {
        names.push(MODEL_NAMES[2].1.to_string());
    }
    names
}

/// [`hf_weight_names`] with each weight's HF shape (`[out, in]` for matrices): the weight
/// schema that checkpoints are checked against.
pub fn hf_weights(config: &crate::config::Config) -> Vec<(String, Vec<usize>)> {
    let (h, i, vocab) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let q = config.num_attention_heads * config.head_dim();
    let kv = config.num_key_value_heads() * config.head_dim();
    // In LAYER_NAMES order: norm, q, k, v, o, norm, gate, up, down.
    let layer = [
        vec![h],
        vec![q, h],
        vec![kv, h],
        vec![kv, h],
        vec![h, q],
        vec![h],
        vec![i, h],
        vec![i, h],
        vec![h, i],
    ];
    // In hf_weight_names' order; a tied model has no lm_head name, so zip drops its shape.
    let shapes = std::iter::once(vec![vocab, h])
        .chain((0..config.num_hidden_layers).flat_map(|_| layer.clone()))
        .chain([vec![h], vec![vocab, h]]);
    hf_weight_names(config.num_hidden_layers, config.tie_word_embeddings)
        .into_iter()
        .zip(shapes)
        .collect()
}

/// Translates a tensor name between the two layouts: `to_hf` from GGUF to HF, else back.
/// `None` for tensors that carry nothing the other layout stores.
pub fn translate_name(name: &str, to_hf: bool) -> Option<String> {
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
pub fn hf_name(gguf_name: &str) -> Option<String> {
    translate_name(gguf_name, true)
}

/// The GGUF name of an HF weight name (the inverse of [`hf_name`]).
pub fn gguf_name_of(hf: &str) -> Option<String> {
    translate_name(hf, false)
}

/// llama.cpp's Q/K row permutation, as pairs (GGUF row, HF row): GGUF row `h*d + 2j + s`
/// holds HF row `h*d + s*d/2 + j` (`d` = head_dim, `s` in {0, 1}), so rotary pairs are adjacent.
pub fn rotary_row_pairs(rows: usize, heads: usize) -> impl Iterator<Item = (usize, usize)> {
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
pub fn reorder_rotary_rows(values: &[f32], heads: usize, cols: usize, to_hf: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    for (gguf, hf) in rotary_row_pairs(values.len() / cols, heads) {
        let (from, to) = if to_hf { (gguf, hf) } else { (hf, gguf) };
        out[to * cols..(to + 1) * cols].copy_from_slice(&values[from * cols..(from + 1) * cols]);
    }
    out
}

/// The f32 values of a GGUF tensor in its stored (GGUF) row order, dequantised with the
/// engine's routines. Errors name the tensor.
pub fn dequantize_tensor(file: &GgufFile, info: &TensorInfo) -> Result<Vec<f32>, String> {
    let bad = |message: String| message;
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
    Ok(values)
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

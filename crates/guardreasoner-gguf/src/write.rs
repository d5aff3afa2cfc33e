//! Writing GGUF (version 3) files: metadata and F32/F16 tensors, so a model trained or merged here
//! can be served by the engine and by llama.cpp from one file.

use crate::{GgmlType, Value};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Tensor data alignment (GGUF's default `general.alignment`).
const ALIGNMENT: usize = 32;

/// One tensor to write: its name, its shape in ggml order (fastest-varying first), its type and
/// its raw little-endian bytes.
pub struct TensorToWrite<'a> {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    pub data: &'a [u8],
}

fn type_id(ty: GgmlType) -> Option<u32> {
    Some(match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::BF16 => 30,
        _ => return None,
    })
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) -> Result<(), String> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            let item_type = items.first().map_or(8, value_type);
            if items.iter().any(|i| value_type(i) != item_type) {
                return Err("array items of different types".into());
            }
            if item_type == 9 {
                return Err("nested arrays are not supported".into());
            }
            out.extend_from_slice(&item_type.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item)?;
            }
        }
    }
    Ok(())
}

/// Writes a GGUF file atomically (a temporary file renamed into place): a crash never leaves a
/// half-written model under `path`.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[TensorToWrite<'_>],
) -> std::io::Result<()> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let mut header = Vec::new();
    header.extend_from_slice(b"GGUF");
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut header, key);
        header.extend_from_slice(&value_type(value).to_le_bytes());
        put_value(&mut header, value).map_err(|m| invalid(format!("metadata {key}: {m}")))?;
    }
    let mut offset = 0usize;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        let id = type_id(t.dtype).ok_or_else(|| {
            invalid(format!(
                "tensor {}: type {} cannot be written",
                t.name,
                t.dtype.name()
            ))
        })?;
        let elems: u64 = t.dims.iter().product();
        let elem_bytes = t.dtype.type_size().unwrap_or(0) as u64;
        if elems * elem_bytes != t.data.len() as u64 {
            return Err(invalid(format!(
                "tensor {}: {} bytes for shape {:?} of {}",
                t.name,
                t.data.len(),
                t.dims,
                t.dtype.name()
            )));
        }
        put_string(&mut header, &t.name);
        header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            header.extend_from_slice(&d.to_le_bytes());
        }
        header.extend_from_slice(&id.to_le_bytes());
        header.extend_from_slice(&(offset as u64).to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.data.len()).div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    header.resize(header.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);

    let tmp = path.with_extension("gguf.tmp");
    let mut out = BufWriter::new(std::fs::File::create(&tmp)?);
    out.write_all(&header)?;
    let mut written = 0usize;
    for (t, &at) in tensors.iter().zip(&offsets) {
        out.write_all(&vec![0u8; at - written])?;
        out.write_all(t.data)?;
        written = at + t.data.len();
    }
    out.write_all(&vec![0u8; offset - written])?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufFile;

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let a: Vec<u8> = [1.0f32, -2.5, 3.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b: Vec<u8> = (0..12u16).flat_map(|v| v.to_le_bytes()).collect();
        let metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("llama.block_count".to_string(), Value::U32(2)),
            ("x.f".to_string(), Value::F32(0.5)),
            (
                "x.list".to_string(),
                Value::Array(vec![Value::String("a b".into()), Value::String("c".into())]),
            ),
            (
                "x.ints".to_string(),
                Value::Array(vec![Value::I32(1), Value::I32(3)]),
            ),
        ];
        let tensors = [
            TensorToWrite {
                name: "a".into(),
                dims: vec![3],
                dtype: GgmlType::F32,
                data: &a,
            },
            TensorToWrite {
                name: "b".into(),
                dims: vec![4, 3],
                dtype: GgmlType::F16,
                data: &b,
            },
        ];
        write_gguf(&path, &metadata, &tensors).unwrap();
        let file = GgufFile::open(&path).unwrap();
        for (k, v) in &metadata {
            assert_eq!(file.get(k), Some(v), "{k}");
        }
        let ta = file.tensor("a").unwrap();
        assert_eq!(file.tensor_data(ta).unwrap(), &a[..]);
        let tb = file.tensor("b").unwrap();
        assert_eq!(tb.dims, vec![4, 3]);
        assert_eq!(file.tensor_data(tb).unwrap(), &b[..]);
        assert!(!dir.path().join("t.gguf.tmp").exists());
    }

    #[test]
    fn a_size_mismatch_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let data = [0u8; 5];
        let t = [TensorToWrite {
            name: "a".into(),
            dims: vec![2],
            dtype: GgmlType::F32,
            data: &data,
        }];
        let err = write_gguf(&path, &[], &t).unwrap_err().to_string();
        assert!(err.contains("tensor a"), "{err}");
        assert!(!path.exists());
    }
}

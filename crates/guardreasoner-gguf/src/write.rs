//! Writing GGUF (version 3) files: metadata and tensors of any known type (F32/F16/BF16, or
//! blocks quantised by the caller), so a model trained or merged here can be served by the
//! engine and by llama.cpp from one file.

use crate::{GgmlType, Value};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Tensor data alignment (GGUF's default `general.alignment`).
const ALIGNMENT: usize = 32;

/// A tensor's place in a file written with [`GgufWriter`]: its name, shape in ggml order and
/// type; its bytes come later.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
}

impl TensorPlan {
    /// Bytes of the tensor's data; 0 for a type or shape that cannot be stored (refused by
    /// [`GgufWriter::create`]).
    fn byte_len(&self) -> u64 {
        let (Some(block), Some(size)) = (self.dtype.block_size(), self.dtype.type_size()) else {
            return 0;
        };
        let elements = self.dims.iter().product::<u64>();
        if self.dims.first().is_some_and(|&d| d % block as u64 != 0) {
            return 0;
        }
        elements / block as u64 * size as u64
    }
}

fn type_id(ty: GgmlType) -> Option<u32> {
    ty.block_size().map(|_| ty.id())
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

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

/// Writes a GGUF file atomically (a temporary file renamed into place: a crash never leaves a
/// half-written model under `path`) and one tensor at a time, so a converter holds one tensor's
/// bytes, not the model's: the header (metadata and every tensor's plan) goes first, then each tensor's bytes
/// in plan order, then [`GgufWriter::finish`] renames the temporary file into place. Dropped
/// before `finish` (an error, a panic), it removes the temporary file and leaves `path` as it was.
pub struct GgufWriter {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    out: Option<BufWriter<std::fs::File>>,
    plans: Vec<TensorPlan>,
    offsets: Vec<u64>,
    end: u64,
    written: u64,
    next: usize,
}

impl GgufWriter {
    /// Checks the plans and writes the header.
    pub fn create(
        path: &Path,
        metadata: &[(String, Value)],
        plans: Vec<TensorPlan>,
    ) -> std::io::Result<GgufWriter> {
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(plans.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_string(&mut header, key);
            header.extend_from_slice(&value_type(value).to_le_bytes());
            put_value(&mut header, value).map_err(|m| invalid(format!("metadata {key}: {m}")))?;
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(plans.len());
        for t in &plans {
            let id = type_id(t.dtype).ok_or_else(|| {
                invalid(format!(
                    "tensor {}: type {} cannot be written",
                    t.name,
                    t.dtype.name()
                ))
            })?;
            if t.byte_len() == 0 && t.dims.iter().product::<u64>() > 0 {
                return Err(invalid(format!(
                    "tensor {}: rows of {} elements do not fill whole {} blocks",
                    t.name,
                    t.dims.first().copied().unwrap_or(0),
                    t.dtype.name()
                )));
            }
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&id.to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.byte_len()).div_ceil(ALIGNMENT as u64) * ALIGNMENT as u64;
        }
        header.resize(header.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
        let tmp = path.with_extension("gguf.tmp");
        let mut writer = GgufWriter {
            path: path.to_path_buf(),
            out: Some(BufWriter::new(std::fs::File::create(&tmp)?)),
            tmp,
            plans,
            offsets,
            end: offset,
            written: 0,
            next: 0,
        };
        // Written through the writer, so a failure here also removes the temporary file.
        writer.out().write_all(&header)?;
        Ok(writer)
    }

    /// The open file; `None` only inside `finish`, which consumes the writer.
    fn out(&mut self) -> &mut BufWriter<std::fs::File> {
        self.out.as_mut().expect("open until finish")
    }

    /// The next tensor's bytes (in plan order; the length must match its plan).
    pub fn write_tensor(&mut self, data: &[u8]) -> std::io::Result<()> {
        let plan = self.plans.get(self.next).ok_or_else(|| {
            invalid(format!(
                "more tensors than the {} planned",
                self.plans.len()
            ))
        })?;
        if plan.byte_len() != data.len() as u64 {
            return Err(invalid(format!(
                "tensor {}: {} bytes for shape {:?} of {}",
                plan.name,
                data.len(),
                plan.dims,
                plan.dtype.name()
            )));
        }
        let pad = (self.offsets[self.next] - self.written) as usize;
        let out = self.out();
        out.write_all(&[0u8; ALIGNMENT][..pad])?;
        out.write_all(data)?;
        self.written = self.offsets[self.next] + data.len() as u64;
        self.next += 1;
        Ok(())
    }

    /// Pads, syncs and renames the file into place, once every planned tensor is written.
    pub fn finish(mut self) -> std::io::Result<()> {
        if self.next != self.plans.len() {
            return Err(invalid(format!(
                "{} of {} planned tensors written",
                self.next,
                self.plans.len()
            )));
        }
        let pad = (self.end - self.written) as usize;
        let mut out = self.out.take().expect("not finished");
        out.write_all(&[0u8; ALIGNMENT][..pad])?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)
    }
}

impl Drop for GgufWriter {
    /// After `finish` the temporary file has been renamed away; otherwise it is closed, then
    /// removed.
    fn drop(&mut self) {
        drop(self.out.take());
        let _ = std::fs::remove_file(&self.tmp);
    }
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
        let plans = vec![
            TensorPlan {
                name: "a".into(),
                dims: vec![3],
                dtype: GgmlType::F32,
            },
            TensorPlan {
                name: "b".into(),
                dims: vec![4, 3],
                dtype: GgmlType::F16,
            },
        ];
        let mut w = GgufWriter::create(&path, &metadata, plans).unwrap();
        w.write_tensor(&a).unwrap();
        w.write_tensor(&b).unwrap();
        w.finish().unwrap();
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
    fn streamed_tensors_read_back_and_an_unfinished_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.gguf");
        let plan = |name: &str, n: u64| TensorPlan {
            name: name.into(),
            dims: vec![n],
            dtype: GgmlType::F32,
        };
        let bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
                .collect()
        };
        let (a, b) = (bytes(5), bytes(9));
        let mut w = GgufWriter::create(&path, &[], vec![plan("a", 5), plan("b", 9)]).unwrap();
        w.write_tensor(&a).unwrap();
        // A tensor of the wrong size is refused; the writer stays usable.
        assert!(w
            .write_tensor(&a)
            .unwrap_err()
            .to_string()
            .contains("tensor b"));
        w.write_tensor(&b).unwrap();
        assert!(w.write_tensor(&b).is_err(), "more tensors than planned");
        w.finish().unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.tensor_data(file.tensor("a").unwrap()).unwrap(), &a[..]);
        assert_eq!(file.tensor_data(file.tensor("b").unwrap()).unwrap(), &b[..]);

        // Stopped part-way (an error in the caller, then drop): no temporary file, and the
        // finished file from before is untouched.
        let before = std::fs::read(&path).unwrap();
        let mut w = GgufWriter::create(&path, &[], vec![plan("a", 5), plan("b", 9)]).unwrap();
        w.write_tensor(&a).unwrap();
        assert!(dir.path().join("s.gguf.tmp").exists());
        drop(w);
        assert!(!dir.path().join("s.gguf.tmp").exists());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // Finishing early is an error, and also leaves nothing.
        let w = GgufWriter::create(&path, &[], vec![plan("a", 5)]).unwrap();
        assert!(w.finish().unwrap_err().to_string().contains("0 of 1"));
        assert!(!dir.path().join("s.gguf.tmp").exists());
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_size_mismatch_is_refused_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let plan = TensorPlan {
            name: "a".into(),
            dims: vec![2],
            dtype: GgmlType::F32,
        };
        let mut w = GgufWriter::create(&path, &[], vec![plan]).unwrap();
        let err = w.write_tensor(&[0u8; 5]).unwrap_err().to_string();
        drop(w);
        assert!(err.contains("tensor a"), "{err}");
        assert!(!path.exists());
        assert!(!dir.path().join("t.gguf.tmp").exists());
    }
}

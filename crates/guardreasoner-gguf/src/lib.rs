//! A reader for GGUF, the single-file model format of llama.cpp: the header, the metadata
//! key/value store and the tensor directory, over a memory map (and, in [`write`], a writer
//! for F32/F16 files). Tensor bytes are handed out as
//! borrowed slices, bounds-checked; decoding quantised blocks is the engine's business.
//!
//! Every length read from the file is checked against the bytes that remain, so a truncated
//! or corrupt file is a [`GgufError`], never a panic or a huge allocation.
//!
//! [`hf`] holds the one rule for which files of a Hugging Face checkpoint directory are its
//! weights (engine and trainer both follow it).

pub mod hf;
pub mod write;

use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (magic bytes {found:?})")]
    NotGguf { path: PathBuf, found: [u8; 4] },
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: file is truncated or corrupt: {what} at byte {offset} runs past the end ({len} bytes)")]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        len: u64,
    },
    #[error("{path}: corrupt file: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: metadata key {key:?} is missing")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: metadata key {key:?} has type {found}, expected {expected}")]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
}

impl GgufError {
    fn truncated(path: &Path, what: impl Into<String>, offset: usize, len: usize) -> Self {
        GgufError::Truncated {
            path: path.to_path_buf(),
            what: what.into(),
            offset: offset as u64,
            len: len as u64,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }

    /// Any integer type as `i64` (GGUF writers differ in which width they use).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => i64::try_from(v).ok()?,
            Value::I64(v) => v,
            Value::Bool(v) => v.into(),
            _ => return None,
        })
    }

    /// Any float or integer as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// The ggml tensor types. Block layouts are described by [`GgmlType::block_size`] and
/// [`GgmlType::type_size`] (bytes per block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    /// A type this reader knows no layout for (IQ formats, ...): listed, not loadable.
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The type's id in the file format (the inverse of [`GgmlType::from_id`]).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// Elements per block, or `None` for unknown types.
    pub fn block_size(self) -> Option<usize> {
        Some(match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q8_1 => 32,
            GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::Q8K => 256,
            GgmlType::Other(_) => return None,
        })
    }

    /// Bytes per block, or `None` for unknown types.
    pub fn type_size(self) -> Option<usize> {
        Some(match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q8_1 => 36,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            GgmlType::Q8K => 292,
            GgmlType::Other(_) => return None,
        })
    }

    pub fn name(self) -> String {
        match self {
            GgmlType::F32 => "F32".into(),
            GgmlType::F16 => "F16".into(),
            GgmlType::BF16 => "BF16".into(),
            GgmlType::Q4_0 => "Q4_0".into(),
            GgmlType::Q4_1 => "Q4_1".into(),
            GgmlType::Q5_0 => "Q5_0".into(),
            GgmlType::Q5_1 => "Q5_1".into(),
            GgmlType::Q8_0 => "Q8_0".into(),
            GgmlType::Q8_1 => "Q8_1".into(),
            GgmlType::Q2K => "Q2_K".into(),
            GgmlType::Q3K => "Q3_K".into(),
            GgmlType::Q4K => "Q4_K".into(),
            GgmlType::Q5K => "Q5_K".into(),
            GgmlType::Q6K => "Q6_K".into(),
            GgmlType::Q8K => "Q8_K".into(),
            GgmlType::Other(id) => format!("ggml type {id}"),
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Shape in ggml order: `dims[0]` is the fastest-varying (row length).
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Offset of the data from the start of the tensor data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn element_count(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Size of the data in bytes, or `None` for an unknown type or a row length that is not a
    /// whole number of blocks.
    pub fn byte_len(&self) -> Option<u64> {
        let block = self.dtype.block_size()? as u64;
        let row = *self.dims.first().unwrap_or(&1);
        if row % block != 0 {
            return None;
        }
        self.element_count()
            .checked_div(block)?
            .checked_mul(self.dtype.type_size()? as u64)
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Byte offset of the tensor data section in the file.
    pub data_offset: u64,
    pub alignment: u64,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(GgufError::truncated(self.path, what, self.pos, n));
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        Ok(self
            .take(N, what)?
            .try_into()
            .expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit in the remaining bytes at `min_item` bytes each.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, GgufError> {
        let at = self.pos;
        let n = self.u64(what)?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > remaining {
            return Err(GgufError::truncated(
                self.path,
                format!("{what} ({n} items)"),
                at,
                remaining as usize,
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.count(what, 1)?;
        let at = self.pos;
        let raw = self.take(n, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::Corrupt {
            path: self.path.to_path_buf(),
            message: format!("{what} at byte {at} is not UTF-8"),
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        let what = key;
        Ok(match ty {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => Value::Bool(self.array::<1>(what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 if depth == 0 => {
                let item_ty = self.u32(what)?;
                let n = self.count(what, 1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(GgufError::Corrupt {
                    path: self.path.to_path_buf(),
                    message: format!("metadata {key:?} has unknown value type {other}"),
                })
            }
        })
    }
}

impl GgufFile {
    /// Open and parse a GGUF file. The tensor data stays on disk, memory-mapped.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |e| GgufError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file modified underneath us while mapped is outside
        // what any reader can defend against (llama.cpp and candle map the same way).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let mut r = Reader {
            bytes: &mmap,
            pos: 0,
            path,
        };
        let magic: [u8; 4] = match r.array::<4>("magic") {
            Ok(m) => m,
            Err(_) => {
                let mut found = [0u8; 4];
                found[..mmap.len()].copy_from_slice(&mmap);
                return Err(GgufError::NotGguf {
                    path: path.to_path_buf(),
                    found,
                });
            }
        };
        if &magic != MAGIC {
            return Err(GgufError::NotGguf {
                path: path.to_path_buf(),
                found: magic,
            });
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        // Each tensor entry and key/value pair takes at least 8 + 4 bytes.
        let tensor_count = r.count("tensor count", 24)?;
        let kv_count = r.count("metadata count", 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string("metadata key")?;
            let ty = r.u32(&key)?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims > 4 {
                return Err(GgufError::Corrupt {
                    path: path.to_path_buf(),
                    message: format!("tensor {name:?} has {n_dims} dimensions"),
                });
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&name))
                .collect::<Result<Vec<_>, _>>()?;
            let dtype = GgmlType::from_id(r.u32(&name)?);
            let offset = r.u64(&name)?;
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment").and_then(Value::as_i64) {
            Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
            Some(a) => {
                return Err(GgufError::Corrupt {
                    path: path.to_path_buf(),
                    message: format!("general.alignment {a}"),
                })
            }
            None => DEFAULT_ALIGNMENT,
        };
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let file = GgufFile {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            tensors,
            data_offset,
            alignment,
        };
        for t in &file.tensors {
            if t.dtype.block_size().is_some() {
                file.tensor_data(t)?;
            }
        }
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor, checked to lie inside the file.
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<&[u8], GgufError> {
        let len = info.byte_len().ok_or_else(|| GgufError::Corrupt {
            path: self.path.clone(),
            message: format!(
                "tensor {:?}: type {} with shape {:?} has no known byte size",
                info.name, info.dtype, info.dims
            ),
        })?;
        let start = self.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(len));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.mmap.len() as u64 => {
                Ok(&self.mmap[s as usize..e as usize])
            }
            _ => Err(GgufError::Truncated {
                path: self.path.clone(),
                what: format!("data of tensor {:?}", info.name),
                offset: start.unwrap_or(u64::MAX),
                len,
            }),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn wrong(&self, key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found: v.type_name(),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, "string", v))
    }

    /// An integer value of any width that fits in `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.require(key)?;
        v.as_i64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| self.wrong(key, "u32", v))
    }

    /// An integer value of any width that fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_i64()
            .and_then(|x| u64::try_from(x).ok())
            .ok_or_else(|| self.wrong(key, "u64", v))
    }

    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.require(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| self.wrong(key, "f32", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(self.wrong(key, "bool", v)),
        }
    }

    pub fn get_array(&self, key: &str) -> Option<&[Value]> {
        match self.get(key)? {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let v = self.require(key)?;
        let Value::Array(items) = v else {
            return Err(self.wrong(key, "array of strings", v));
        };
        items
            .iter()
            .map(|i| {
                i.as_str()
                    .ok_or_else(|| self.wrong(key, "array of strings", i))
            })
            .collect()
    }

    /// `general.architecture` (e.g. `llama`).
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

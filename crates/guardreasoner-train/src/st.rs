//! Streaming safetensors files: written tensor by tensor from borrowed buffers, read tensor by
//! tensor into caller-owned buffers, so neither direction holds a second copy of the whole file.
//!
//! The format: an 8-byte little-endian header length, a JSON header mapping each tensor name to
//! `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets into the data that follows),
//! padded with spaces to a multiple of 8 bytes, then the tensors' little-endian bytes.

use crate::TrainError;
#[cfg(feature = "oracle")]
use candle_core::{DType, Tensor};
use half::{bf16, f16};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What a tensor's bytes come from.
pub enum Payload<'a> {
    /// f32 values, written as they are.
    F32(&'a [f32]),
    /// f32 values stored as `dtype` (f32, f64, bf16, f16; rounded to nearest even, as PyTorch
    /// and candle convert f32), converted a chunk at a time when written.
    Converted(&'a [f32], WeightDtype),
    /// f32 values of `count` elements, computed only when their turn comes and stored as
    /// `dtype` (converted as [`Payload::Converted`]).
    Lazy {
        count: usize,
        dtype: WeightDtype,
        values: LazyValues<'a>,
    },
}

/// Computes a tensor's values when it is written.
pub type LazyValues<'a> = Box<dyn Fn() -> Result<Vec<f32>, TrainError> + 'a>;

impl Payload<'_> {
    fn dtype(&self) -> WeightDtype {
        match self {
            Payload::F32(_) => WeightDtype::F32,
            Payload::Converted(_, d) | Payload::Lazy { dtype: d, .. } => *d,
        }
    }

    fn elements(&self) -> usize {
        match self {
            Payload::F32(v) => v.len(),
            Payload::Converted(v, _) => v.len(),
            Payload::Lazy { count, .. } => *count,
        }
    }
}

/// A tensor read into memory as f32 (adapters, small checkpoints' tensors).
#[derive(Debug, Clone, PartialEq)]
pub struct F32Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// One tensor to write.
pub struct Entry<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Payload<'a>,
}

/// How a tensor's values are stored in a file (the element types this crate reads and writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F64,
    Bf16,
    F16,
}

impl WeightDtype {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            WeightDtype::F64 => 8,
            WeightDtype::F32 => 4,
            WeightDtype::Bf16 | WeightDtype::F16 => 2,
        }
    }

    /// The name in a safetensors header.
    fn header_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "F32",
            WeightDtype::F64 => "F64",
            WeightDtype::Bf16 => "BF16",
            WeightDtype::F16 => "F16",
        }
    }

    fn from_header_name(name: &str) -> Option<Self> {
        Some(match name {
            "F32" => WeightDtype::F32,
            "F64" => WeightDtype::F64,
            "BF16" => WeightDtype::Bf16,
            "F16" => WeightDtype::F16,
            _ => return None,
        })
    }

    /// The candle dtype of the same element type (the autograd model's tensors).
    #[cfg(feature = "oracle")]
    pub(crate) fn candle(self) -> DType {
        match self {
            WeightDtype::F32 => DType::F32,
            WeightDtype::F64 => DType::F64,
            WeightDtype::Bf16 => DType::BF16,
            WeightDtype::F16 => DType::F16,
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = String;

    /// `f32`, `bf16`, `f16` or `f64` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, String> {
        WeightDtype::from_header_name(&s.to_ascii_uppercase()).ok_or_else(|| {
            format!(
                "unknown dtype {:?} (f32, bf16, f16, f64)",
                s.to_ascii_lowercase()
            )
        })
    }
}

impl std::fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.header_name().to_ascii_lowercase())
    }
}

/// Elements converted per chunk when streaming.
const CHUNK: usize = 1 << 16;

fn write_values<T: Copy, const N: usize>(
    out: &mut impl Write,
    values: &[T],
    bytes: impl Fn(T) -> [u8; N],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(CHUNK.min(values.len()) * N);
    for chunk in values.chunks(CHUNK) {
        buf.clear();
        chunk.iter().for_each(|&v| buf.extend_from_slice(&bytes(v)));
        out.write_all(&buf)?;
    }
    Ok(())
}

fn write_payload(out: &mut impl Write, payload: &Payload, path: &Path) -> Result<(), TrainError> {
    let io = |e| TrainError::io(path, e);
    match payload {
        Payload::F32(v) => write_values(out, v, f32::to_le_bytes).map_err(io),
        Payload::Lazy {
            count,
            dtype,
            values,
        } => {
            let v = values()?;
            if v.len() != *count {
                return Err(TrainError::Model(format!(
                    "a tensor computed {} values, its header says {count}",
                    v.len()
                )));
            }
            write_converted(out, &v, *dtype).map_err(io)
        }
        Payload::Converted(v, dtype) => write_converted(out, v, *dtype).map_err(io),
    }
}

fn write_converted(out: &mut impl Write, v: &[f32], dtype: WeightDtype) -> std::io::Result<()> {
    match dtype {
        WeightDtype::F32 => write_values(out, v, f32::to_le_bytes),
        WeightDtype::F64 => write_values(out, v, |x| (x as f64).to_le_bytes()),
        WeightDtype::Bf16 => write_values(out, v, |x| bf16::from_f32(x).to_le_bytes()),
        WeightDtype::F16 => write_values(out, v, |x| f16::from_f32(x).to_le_bytes()),
    }
}

/// Writes `entries` to `path` atomically (a temporary file renamed into place).
pub fn write(path: &Path, entries: &[Entry]) -> Result<(), TrainError> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for e in entries {
        if e.shape.iter().product::<usize>() != e.data.elements() {
            return Err(TrainError::Model(format!(
                "tensor {} has {} values, not shape {:?}",
                e.name,
                e.data.elements(),
                e.shape
            )));
        }
        let len = e.data.elements() * e.data.dtype().size_in_bytes();
        header.insert(
            e.name.clone(),
            serde_json::json!({
                "dtype": e.data.dtype().header_name(),
                "shape": e.shape,
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut text = serde_json::to_string(&header).map_err(|e| TrainError::Model(e.to_string()))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let tmp = path.with_extension("safetensors.tmp");
    let written = write_file(&tmp, &text, entries);
    if written.is_err() {
        // A half-written file is of no use (and may be large).
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

fn write_file(tmp: &Path, header: &str, entries: &[Entry]) -> Result<(), TrainError> {
    let file = File::create(tmp).map_err(|e| TrainError::io(tmp, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let io = |e| TrainError::io(tmp, e);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(header.as_bytes()).map_err(io)?;
    for e in entries {
        write_payload(&mut out, &e.data, tmp)?;
    }
    out.flush().map_err(io)
}

/// Where one tensor lies in a file.
#[derive(Debug, Clone)]
pub struct Info {
    pub dtype: WeightDtype,
    pub shape: Vec<usize>,
    begin: u64,
}

/// An open safetensors file whose header has been read and checked against the file's length;
/// tensors are read one at a time.
pub struct Reader {
    path: PathBuf,
    file: File,
    data_start: u64,
    tensors: BTreeMap<String, Info>,
}

impl Reader {
    /// Opens `path`; a malformed header or a file shorter than its header says is an error
    /// naming the file.
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        let bad = |message: String| TrainError::Format {
            path: path.to_path_buf(),
            message: format!("not a readable safetensors file: {message}"),
        };
        let mut file = File::open(path).map_err(|e| TrainError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| TrainError::io(path, e))?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .map_err(|_| bad("shorter than its header length".into()))?;
        let n = u64::from_le_bytes(n);
        if n > 100 << 20 || 8 + n > file_len {
            return Err(bad(format!("header length {n} exceeds the file")));
        }
        let mut text = vec![0u8; n as usize];
        file.read_exact(&mut text)
            .map_err(|e| TrainError::io(path, e))?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&text).map_err(|e| bad(format!("header: {e}")))?;
        let data_start = 8 + n;
        let mut tensors = BTreeMap::new();
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            let dtype = v["dtype"]
                .as_str()
                .and_then(WeightDtype::from_header_name)
                .ok_or_else(|| bad(format!("tensor {name}: unsupported dtype {}", v["dtype"])))?;
            let numbers = |key: &str| -> Option<Vec<u64>> {
                v[key].as_array()?.iter().map(|x| x.as_u64()).collect()
            };
            let (Some(shape), Some(offsets)) = (numbers("shape"), numbers("data_offsets")) else {
                return Err(bad(format!("tensor {name}: bad shape or data_offsets")));
            };
            let shape: Vec<usize> = shape.into_iter().map(|d| d as usize).collect();
            let [begin, end] = offsets[..] else {
                return Err(bad(format!("tensor {name}: bad data_offsets")));
            };
            let bytes = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
            if end < begin || end - begin != bytes {
                return Err(bad(format!(
                    "tensor {name}: data_offsets do not match shape {shape:?}"
                )));
            }
            if data_start + end > file_len {
                return Err(bad(format!(
                    "tensor {name} ends at byte {} of a {file_len}-byte file (truncated?)",
                    data_start + end
                )));
            }
            tensors.insert(
                name,
                Info {
                    dtype,
                    shape,
                    begin,
                },
            );
        }
        Ok(Reader {
            path: path.to_path_buf(),
            file,
            data_start,
            tensors,
        })
    }

    /// The tensors by name.
    pub fn tensors(&self) -> &BTreeMap<String, Info> {
        &self.tensors
    }

    fn info(&self, name: &str) -> Result<Info, TrainError> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| TrainError::Format {
                path: self.path.clone(),
                message: format!("no tensor {name}"),
            })
    }

    /// Reads tensor `name` into `out` (as many values as it has), converting to f32.
    pub fn read_f32(&mut self, name: &str, out: &mut [f32]) -> Result<(), TrainError> {
        let info = self.info(name)?;
        let count: usize = info.shape.iter().product();
        if count != out.len() {
            return Err(TrainError::Format {
                path: self.path.clone(),
                message: format!("tensor {name} has {count} values, expected {}", out.len()),
            });
        }
        let io = |e| TrainError::io(&self.path, e);
        self.file
            .seek(SeekFrom::Start(self.data_start + info.begin))
            .map_err(io)?;
        let size = info.dtype.size_in_bytes();
        let mut buf = vec![0u8; CHUNK.min(count) * size];
        for chunk in out.chunks_mut(CHUNK) {
            let bytes = &mut buf[..chunk.len() * size];
            self.file.read_exact(bytes).map_err(io)?;
            let mut it = bytes.chunks_exact(size);
            for (o, b) in chunk.iter_mut().zip(&mut it) {
                *o = match info.dtype {
                    WeightDtype::F32 => f32::from_le_bytes(b.try_into().unwrap_or_default()),
                    WeightDtype::F64 => f64::from_le_bytes(b.try_into().unwrap_or_default()) as f32,
                    WeightDtype::Bf16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                    WeightDtype::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
                };
            }
        }
        Ok(())
    }

    /// Reads tensor `name` as f32 values with its shape.
    pub fn read_all_f32(&mut self, name: &str) -> Result<F32Tensor, TrainError> {
        let shape = self.info(name)?.shape;
        let mut data = vec![0.0f32; shape.iter().product()];
        self.read_f32(name, &mut data)?;
        Ok(F32Tensor { shape, data })
    }

    /// Reads tensor `name` as a candle tensor of its stored dtype.
    #[cfg(feature = "oracle")]
    pub fn read_tensor(&mut self, name: &str) -> Result<Tensor, TrainError> {
        let info = self.info(name)?;
        let io = |e| TrainError::io(&self.path, e);
        self.file
            .seek(SeekFrom::Start(self.data_start + info.begin))
            .map_err(io)?;
        let mut bytes =
            vec![0u8; info.shape.iter().product::<usize>() * info.dtype.size_in_bytes()];
        self.file.read_exact(&mut bytes).map_err(io)?;
        Ok(Tensor::from_raw_buffer(
            &bytes,
            info.dtype.candle(),
            &info.shape,
            &candle_core::Device::Cpu,
        )?)
    }
}

/// The weight files of a checkpoint directory (chosen by the one HF-directory rule,
/// [`guardreasoner_gguf::hf::weight_files`]: a sharded checkpoint has several), read tensor by
/// tensor.
pub struct Checkpoint {
    readers: Vec<Reader>,
    /// The reader holding each tensor (a name found in several files: the last file's).
    index: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Opens the weight files of `dir`; none, or several without an index, is an error naming
    /// the directory.
    pub fn open(dir: &Path) -> Result<Self, TrainError> {
        let files = guardreasoner_gguf::hf::weight_files(dir)?;
        let readers = files
            .iter()
            .map(|f| Reader::open(f))
            .collect::<Result<Vec<_>, _>>()?;
        let mut index = BTreeMap::new();
        for (i, r) in readers.iter().enumerate() {
            for name in r.tensors().keys() {
                index.insert(name.clone(), i);
            }
        }
        Ok(Checkpoint { readers, index })
    }

    /// Every tensor by name.
    pub fn tensors(&self) -> impl Iterator<Item = (&String, &Info)> {
        self.index
            .iter()
            .map(|(name, &i)| (name, &self.readers[i].tensors()[name]))
    }

    /// Where tensor `name` lies, if the checkpoint has it.
    pub fn info(&self, name: &str) -> Option<&Info> {
        self.index
            .get(name)
            .map(|&i| &self.readers[i].tensors()[name])
    }

    fn reader(&mut self, name: &str) -> &mut Reader {
        // An unknown name is left to the first reader, whose error names its file.
        let i = self.index.get(name).copied().unwrap_or(0);
        &mut self.readers[i]
    }

    /// Reads tensor `name` into `out`, converting to f32 (see [`Reader::read_f32`]).
    pub fn read_f32(&mut self, name: &str, out: &mut [f32]) -> Result<(), TrainError> {
        self.reader(name).read_f32(name, out)
    }

    /// Reads tensor `name` as a candle tensor of its stored dtype.
    #[cfg(feature = "oracle")]
    pub fn read_tensor(&mut self, name: &str) -> Result<Tensor, TrainError> {
        self.reader(name).read_tensor(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_cleans_up_after_a_failed_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let a = [1.5f32, -2.25, 3.0, 0.1, 7.0, -0.5];
        let b = [0.3f32, -1.0, 2.5, 8.0];
        let entries = [
            Entry {
                name: "a".into(),
                shape: vec![2, 3],
                data: Payload::F32(&a),
            },
            Entry {
                name: "b".into(),
                shape: vec![2, 2],
                data: Payload::Converted(&b, WeightDtype::Bf16),
            },
            Entry {
                name: "c".into(),
                shape: vec![3],
                data: Payload::Lazy {
                    count: 3,
                    dtype: WeightDtype::F32,
                    values: Box::new(|| Ok(vec![4.0, 5.0, 6.0])),
                },
            },
        ];
        write(&path, &entries).unwrap();
        let mut r = Reader::open(&path).unwrap();
        assert_eq!(r.tensors()["b"].dtype, WeightDtype::Bf16);
        assert_eq!(r.tensors()["a"].shape, vec![2, 3]);
        let mut got = vec![0.0; 6];
        r.read_f32("a", &mut got).unwrap();
        assert_eq!(got, a);
        let mut got = vec![0.0; 4];
        r.read_f32("b", &mut got).unwrap();
        assert_eq!(got, [0.30078125, -1.0, 2.5, 8.0]); // 0.3 rounded to bf16
        let c = r.read_all_f32("c").unwrap();
        assert_eq!((c.shape, c.data), (vec![3], vec![4.0, 5.0, 6.0]));

        // Truncated: the header promises more bytes than the file has.
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 2]).unwrap();
        let err = Reader::open(&cut).err().unwrap().to_string();
        assert!(
            err.contains("cut.safetensors") && err.contains("truncated"),
            "{err}"
        );

        // A tensor that fails while being written leaves neither the file nor its temporary.
        let failing = [Entry {
            name: "x".into(),
            shape: vec![2],
            data: Payload::Lazy {
                count: 2,
                dtype: WeightDtype::F32,
                values: Box::new(|| Err(TrainError::Model("no values".into()))),
            },
        }];
        let bad = dir.path().join("bad.safetensors");
        assert!(write(&bad, &failing).is_err());
        assert!(!bad.exists() && !bad.with_extension("safetensors.tmp").exists());
    }
}

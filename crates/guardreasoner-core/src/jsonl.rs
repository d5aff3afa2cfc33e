//! JSON and JSON Lines files: reading with errors that name the file and line, and a
//! crash-safe appender for long jobs that resume.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A problem with a data file, always naming the file (and line, where there is one).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: invalid JSON: {message}")]
    Json {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: {message}")]
    Record {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Read every line of a JSONL file as `T`. Blank lines are skipped; anything else that is not
/// a complete JSON value of the right shape (a truncated last line, say) is an error.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| DataError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(&line).map_err(|e| DataError::Json {
            path: path.to_path_buf(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(value);
    }
    Ok(out)
}

/// Read records from a JSON array file or a JSONL file (chosen by the first non-space byte).
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, DataError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| DataError::io(path, e))?;
    if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).map_err(|e| DataError::Json {
            path: path.to_path_buf(),
            line: e.line(),
            message: e.to_string(),
        })
    } else {
        read_jsonl(path)
    }
}

/// Write `records` as a JSONL file (`json_array: false`) or a JSON array with one record a line
/// (`true`), atomically: a temporary file beside it, synced, then renamed over `path`, so a
/// crash never leaves a half-written file where a finished one was.
pub fn write_records_atomic<T: Serialize>(
    path: &Path,
    records: &[T],
    json_array: bool,
) -> Result<(), DataError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut text = Vec::new();
    if json_array {
        text.push(b'[');
    }
    for (i, record) in records.iter().enumerate() {
        if json_array && i > 0 {
            text.push(b',');
        }
        if json_array {
            text.push(b'\n');
        }
        serde_json::to_writer(&mut text, record).map_err(|e| DataError::Record {
            path: path.to_path_buf(),
            line: i + 1,
            message: e.to_string(),
        })?;
        if !json_array {
            text.push(b'\n');
        }
    }
    if json_array {
        text.extend_from_slice(b"\n]\n");
    }
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::io(path, e));
    }
    // Make the rename itself durable (best effort: not every platform can sync a directory).
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// An append-only JSONL file that survives crashes: each record is one `write` of a whole
/// line followed by a flush, and on open a torn last line (a crash mid-write) is cut off, so
/// the file always holds complete records only.
pub struct JsonlAppender {
    file: File,
    path: PathBuf,
}

impl JsonlAppender {
    /// Open (or create) `path` and return it with the complete records already in it.
    pub fn open<T: DeserializeOwned>(path: &Path) -> Result<(Self, Vec<T>), DataError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| DataError::io(path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| DataError::io(path, e))?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            // A torn final line from a crash: drop it, it will be redone.
            file.set_len(complete as u64)
                .map_err(|e| DataError::io(path, e))?;
            file.seek(SeekFrom::End(0))
                .map_err(|e| DataError::io(path, e))?;
        }
        let mut records = Vec::new();
        for (i, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value = serde_json::from_slice(line).map_err(|e| DataError::Json {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            })?;
            records.push(value);
        }
        Ok((
            Self {
                file,
                path: path.to_path_buf(),
            },
            records,
        ))
    }

    /// Append one record as one line and flush it to the OS.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), DataError> {
        let mut line = serde_json::to_vec(record).map_err(|e| DataError::Record {
            path: self.path.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| DataError::io(&self.path, e))?;
        self.file.flush().map_err(|e| DataError::io(&self.path, e))
    }

    /// Force appended records to disk (call at checkpoints, not per record).
    pub fn sync(&mut self) -> Result<(), DataError> {
        self.file
            .sync_data()
            .map_err(|e| DataError::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn atomic_writes_read_back_in_both_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![json!({"a": 1}), json!({"a": "two\nlines"})];
        for (name, array) in [("x.jsonl", false), ("x.json", true)] {
            let path = dir.path().join("sub").join(name);
            write_records_atomic(&path, &rows, array).unwrap();
            let back: Vec<Value> = read_records(&path).unwrap();
            assert_eq!(back, rows);
            assert!(!dir.path().join("sub").join(format!("{name}.tmp")).exists());
        }
    }

    #[test]
    fn appender_drops_a_torn_line_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/rows.jsonl");
        let (mut w, existing) = JsonlAppender::open::<Value>(&path).unwrap();
        assert!(existing.is_empty());
        w.append(&json!({"i": 1})).unwrap();
        w.append(&json!({"i": 2})).unwrap();
        drop(w);
        // Simulate a crash in the middle of writing the third record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"i\": 3, \"tex").unwrap();
        drop(f);
        let (mut w, existing) = JsonlAppender::open::<Value>(&path).unwrap();
        assert_eq!(existing, vec![json!({"i": 1}), json!({"i": 2})]);
        w.append(&json!({"i": 3})).unwrap();
        drop(w);
        let all: Vec<Value> = read_jsonl(&path).unwrap();
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, "{\"a\": 1}\n{\"a\": \n").unwrap();
        let err = read_jsonl::<Value>(&path).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:2:"), "{err}");
        let err = read_jsonl::<Value>(&dir.path().join("missing.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.jsonl"), "{err}");
    }
}

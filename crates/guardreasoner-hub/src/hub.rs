//! Downloading a checkpoint from the Hugging Face Hub into the Hugging Face cache layout
//! (`<cache>/models--owner--name/{refs/<revision>, snapshots/<commit>/<file>}`), so that files
//! fetched here are found by Python tools and the other way round.
//!
//! Plain HTTPS with `ureq` (rustls): one API call lists the files of a revision and gives its
//! commit, then each needed file is streamed to a temporary file and renamed into the snapshot.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{io_error, HubError, Progress, Result};

/// Files of a checkpoint that inference needs (besides `*.safetensors`).
const WANTED_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors.index.json",
];

/// How to reach the Hub and where its cache is.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL, `https://huggingface.co` unless `HF_ENDPOINT` says otherwise.
    pub endpoint: String,
    /// The Hugging Face hub cache directory.
    pub cache_dir: PathBuf,
    /// Only use the cache (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Access token for gated or private models (`HF_TOKEN`).
    pub token: Option<String>,
    /// How long to wait for a TCP/TLS connection before giving up.
    pub connect_timeout: Duration,
}

fn truthy(value: Option<std::ffi::OsString>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.to_string_lossy().trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

impl HubConfig {
    /// The configuration `huggingface_hub` would use: `HF_ENDPOINT`, `HF_HUB_CACHE` /
    /// `HF_HOME` / `~/.cache/huggingface/hub`, `HF_HUB_OFFLINE`, `HF_TOKEN`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .or_else(|| dirs::home_dir().map(|h| h.join(".cache/huggingface/hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        Self {
            endpoint: var("HF_ENDPOINT")
                .map(|e| e.to_string_lossy().trim_end_matches('/').to_string())
                .unwrap_or_else(|| "https://huggingface.co".to_string()),
            cache_dir,
            offline: truthy(var("HF_HUB_OFFLINE")),
            token: var("HF_TOKEN").map(|t| t.to_string_lossy().into_owned()),
            connect_timeout: Duration::from_secs(10),
        }
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache_dir
            .join(format!("models--{}", repo.replace('/', "--")))
    }
}

/// The snapshot directory of `repo` at `revision`, downloading what it lacks. Offline, only
/// a complete cached snapshot is returned.
pub fn download_repo(
    config: &HubConfig,
    repo: &str,
    revision: &str,
    progress: &mut dyn Progress,
) -> Result<PathBuf> {
    let repo_dir = config.repo_dir(repo);
    if config.offline {
        return cached_snapshot(&repo_dir, revision).ok_or_else(|| HubError::Offline {
            repo: format!("{repo}@{revision}"),
            cache: config.cache_dir.clone(),
        });
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(config.connect_timeout))
        .timeout_resolve(Some(config.connect_timeout))
        .http_status_as_error(false)
        .build()
        .into();

    let api_url = format!("{}/api/models/{repo}/revision/{revision}", config.endpoint);
    progress.message(&format!(
        "asking the Hugging Face Hub for {repo}@{revision}"
    ));
    let listing: serde_json::Value = {
        let mut response = get(&agent, config, &api_url)?;
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| HubError::Unreachable {
                url: api_url.clone(),
                message: e.to_string(),
            })?;
        serde_json::from_str(&body).map_err(|e| HubError::BadResponse {
            url: api_url.clone(),
            message: format!("not JSON: {e}"),
        })?
    };
    let bad = |message: &str| HubError::BadResponse {
        url: api_url.clone(),
        message: message.to_string(),
    };
    let commit = listing["sha"]
        .as_str()
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| bad("no commit sha"))?
        .to_string();
    let files: Vec<String> = listing["siblings"]
        .as_array()
        .ok_or_else(|| bad("no file list (siblings)"))?
        .iter()
        .filter_map(|s| s["rfilename"].as_str())
        .filter(|name| {
            WANTED_FILES.contains(name) || (name.ends_with(".safetensors") && !name.contains('/'))
        })
        .map(str::to_string)
        .collect();
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        return Err(bad(
            "the repository has no *.safetensors weights at its top level",
        ));
    }

    let snapshot = repo_dir.join("snapshots").join(&commit);
    std::fs::create_dir_all(&snapshot).map_err(io_error(&snapshot))?;
    for file in &files {
        let dest = snapshot.join(file);
        if dest.is_file() {
            continue;
        }
        let url = format!("{}/{repo}/resolve/{commit}/{file}", config.endpoint);
        progress.message(&format!("downloading {repo}/{file}"));
        download_file(&agent, config, &url, &dest, file, progress)?;
    }
    let refs = repo_dir.join("refs");
    std::fs::create_dir_all(&refs).map_err(io_error(&refs))?;
    if revision != commit {
        let ref_file = refs.join(revision);
        if let Some(parent) = ref_file.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        std::fs::write(&ref_file, &commit).map_err(io_error(&ref_file))?;
    }
    Ok(snapshot)
}

/// A cached snapshot for `revision` (a ref name or a commit) that has weights.
fn cached_snapshot(repo_dir: &Path, revision: &str) -> Option<PathBuf> {
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    let snapshot = repo_dir.join("snapshots").join(commit);
    crate::check_hf_dir(&snapshot).ok().map(|_| snapshot)
}

fn get(
    agent: &ureq::Agent,
    config: &HubConfig,
    url: &str,
) -> Result<ureq::http::Response<ureq::Body>> {
    let mut request = agent.get(url);
    if let Some(token) = &config.token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let response = request.call().map_err(|e| HubError::Unreachable {
        url: url.to_string(),
        message: match e {
            ureq::Error::Timeout(_) => format!(
                "no answer within {:?} (no network, or set HF_HUB_OFFLINE=1 to use the cache only)",
                config.connect_timeout
            ),
            other => format!("{other} (no network? set HF_HUB_OFFLINE=1 to use the cache only)"),
        },
    })?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        let hint = match status {
            401 | 403 => {
                ": the model is gated or private; accept its terms on the Hub and set HF_TOKEN"
            }
            404 => ": no such model, revision or file",
            _ => "",
        };
        return Err(HubError::Http {
            url: url.to_string(),
            status,
            hint: hint.to_string(),
        });
    }
    Ok(response)
}

fn download_file(
    agent: &ureq::Agent,
    config: &HubConfig,
    url: &str,
    dest: &Path,
    label: &str,
    progress: &mut dyn Progress,
) -> Result<()> {
    let mut response = get(agent, config, url)?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut out = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(dir)
        .map_err(io_error(dir))?;
    let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| HubError::Unreachable {
            url: url.to_string(),
            message: format!("download interrupted after {done} bytes: {e}"),
        })?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io_error(out.path()))?;
        done += n as u64;
        progress.bytes(label, done, total);
    }
    progress.finish();
    if let Some(total) = total {
        if done != total {
            return Err(HubError::Unreachable {
                url: url.to_string(),
                message: format!("download ended after {done} of {total} bytes"),
            });
        }
    }
    out.persist(dest).map_err(|e| HubError::Io {
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

//! Downloading a checkpoint from the Hugging Face Hub into the Hugging Face cache layout
//! (`<cache>/models--owner--name/{blobs/<etag>, snapshots/<commit>/<file>, refs/<revision>}`),
//! so that files fetched here are found by Python tools and the other way round.
//!
//! Through the `hf-hub` crate (its async API, over the same `reqwest` client the rest of the
//! workspace uses): one API call lists the files of a revision and gives its commit, then each
//! needed file is downloaded at that commit into a blob and linked into the snapshot; an
//! interrupted download resumes from its last committed chunk. What `hf-hub` does not read from
//! the environment (`HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_TOKEN`) is read here, in
//! [`HubConfig::from_env`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use hf_hub::api::tokio::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};

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
    /// How long the first call (the revision listing) may take before the Hub counts as
    /// unreachable.
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
    progress.message(&format!(
        "asking the Hugging Face Hub for {repo}@{revision}"
    ));
    // hf-hub is async: it runs on a runtime of its own, on a thread of its own (a runtime
    // cannot be started on a thread that is inside another, as a caller's may be), and
    // reports progress back over a channel.
    let (events, received) = mpsc::channel();
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io_error(&config.cache_dir))?;
            runtime.block_on(fetch(config, repo, revision, &repo_dir, events))
        });
        for event in received {
            match event {
                Event::Message(text) => progress.message(&text),
                Event::Bytes { label, done, total } => progress.bytes(&label, done, Some(total)),
                Event::Finish => progress.finish(),
            }
        }
        worker.join().unwrap_or_else(|_| {
            Err(HubError::BadResponse {
                url: config.endpoint.clone(),
                message: "the download thread panicked".into(),
            })
        })
    })
}

/// What the download thread tells the caller's progress display.
enum Event {
    Message(String),
    Bytes {
        label: String,
        done: u64,
        total: u64,
    },
    Finish,
}

/// hf-hub's progress callbacks, forwarded as [`Event`]s. hf-hub clones it once per chunk of
/// a file, so the bytes done are counted in one place that every clone shares.
#[derive(Clone)]
struct Forward {
    events: mpsc::Sender<Event>,
    label: String,
    done: Arc<AtomicU64>,
    total: u64,
}

impl hf_hub::api::tokio::Progress for Forward {
    async fn init(&mut self, size: usize, _filename: &str) {
        self.total = size as u64;
    }

    async fn update(&mut self, size: usize) {
        let done = self.done.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
        // The receiver only stops listening once the download has returned.
        let _ = self.events.send(Event::Bytes {
            label: self.label.clone(),
            done,
            total: self.total,
        });
    }

    async fn finish(&mut self) {
        let _ = self.events.send(Event::Finish);
    }
}

async fn fetch(
    config: &HubConfig,
    repo: &str,
    revision: &str,
    repo_dir: &Path,
    events: mpsc::Sender<Event>,
) -> Result<PathBuf> {
    let api = ApiBuilder::new()
        .with_endpoint(config.endpoint.clone())
        .with_cache_dir(config.cache_dir.clone())
        .with_token(config.token.clone())
        .with_progress(false)
        .build()
        .map_err(|e| api_error(config, &config.endpoint, e))?;
    let model = |revision: &str| {
        api.repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            revision.to_string(),
        ))
    };
    let api_url = format!("{}/api/models/{repo}/revision/{revision}", config.endpoint);
    // The first contact is bounded: a Hub that cannot be reached fails in seconds, not minutes.
    let info = tokio::time::timeout(config.connect_timeout, model(revision).info())
        .await
        .map_err(|_| HubError::Unreachable {
            url: api_url.clone(),
            message: no_answer(config),
        })?
        .map_err(|e| api_error(config, &api_url, e))?;
    let bad = |message: &str| HubError::BadResponse {
        url: api_url.clone(),
        message: message.to_string(),
    };
    let commit = Some(info.sha.as_str())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| bad("no commit sha"))?
        .to_string();
    let files: Vec<String> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
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

    // Every file at the listed commit, so the snapshot is one consistent revision.
    let pinned: ApiRepo = model(&commit);
    let snapshot = repo_dir.join("snapshots").join(&commit);
    for file in &files {
        if snapshot.join(file).is_file() {
            continue;
        }
        let _ = events.send(Event::Message(format!("downloading {repo}/{file}")));
        let forward = Forward {
            events: events.clone(),
            label: file.clone(),
            done: Arc::new(AtomicU64::new(0)),
            total: 0,
        };
        let url = pinned.url(file);
        pinned
            .download_with_progress(file, forward)
            .await
            .map_err(|e| api_error(config, &url, e))?;
    }
    // hf-hub records the revision it was asked for (here the commit itself); the Hub's own
    // clients keep refs for branch and tag names only.
    let _ = std::fs::remove_file(repo_dir.join("refs").join(&commit));
    if revision != commit {
        let ref_file = repo_dir.join("refs").join(revision);
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

/// Why a Hub that did not answer in time counts as unreachable, and what to do about it.
fn no_answer(config: &HubConfig) -> String {
    format!(
        "no answer within {:?} (no network, or set HF_HUB_OFFLINE=1 to use the cache only)",
        config.connect_timeout
    )
}

/// A Hub error as ours: HTTP statuses with what to do about them, connection failures with
/// the offline hint.
fn api_error(config: &HubConfig, url: &str, error: ApiError) -> HubError {
    match error {
        ApiError::RequestError(e) => {
            if let Some(status) = e.status() {
                let hint = match status.as_u16() {
                    401 | 403 => {
                        ": the model is gated or private; accept its terms on the Hub and set HF_TOKEN"
                    }
                    404 => ": no such model, revision or file",
                    _ => "",
                };
                return HubError::Http {
                    url: e.url().map_or(url.to_string(), |u| u.to_string()),
                    status: status.as_u16(),
                    hint: hint.to_string(),
                };
            }
            let message = if e.is_timeout() {
                no_answer(config)
            } else {
                format!("{e} (no network? set HF_HUB_OFFLINE=1 to use the cache only)")
            };
            HubError::Unreachable {
                url: url.to_string(),
                message,
            }
        }
        ApiError::IoError(source) => HubError::Io {
            path: config.cache_dir.clone(),
            source,
        },
        other => HubError::BadResponse {
            url: url.to_string(),
            message: other.to_string(),
        },
    }
}

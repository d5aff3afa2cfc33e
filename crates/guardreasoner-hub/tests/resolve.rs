//! Resolving specs: local files and directories, Hub downloads from a real HTTP server on
//! 127.0.0.1 serving the tiny-llama3 fixture, the offline cache, and unreachable Hubs.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guardreasoner_hub::{
    download_repo, inspect, resolve, DefaultModelSource, HubConfig, HubError, ModelSpec, Progress,
    QuietProgress, ResolvedModel,
};

/// Every byte count reported, by file.
#[derive(Default)]
struct Recorded(Vec<(String, u64, Option<u64>)>);

impl Progress for Recorded {
    fn message(&mut self, _text: &str) {}
    fn bytes(&mut self, label: &str, done: u64, total: Option<u64>) {
        self.0.push((label.to_string(), done, total));
    }
}

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(rel)
}

fn config(endpoint: &str, cache: &Path, offline: bool) -> HubConfig {
    HubConfig {
        endpoint: endpoint.to_string(),
        cache_dir: cache.to_path_buf(),
        offline,
        token: None,
        connect_timeout: Duration::from_secs(3),
    }
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
];

/// A minimal Hub: the revision API and `resolve` downloads for `org/tiny` (with the headers a
/// Hub client reads: `x-repo-commit`, `etag`, and byte ranges answered as `206` with
/// `content-range`), 404 otherwise. Serves one request per connection, for as long as the test
/// runs, and records the paths it was asked for.
fn serve_hub() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut range = None;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("range") {
                        let bytes = value.trim().trim_start_matches("bytes=");
                        let (a, b) = bytes.split_once('-').unwrap();
                        range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                    }
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
            log.lock().unwrap().push(path.clone());
            let mut headers = String::new();
            let (status, body) = if path == "/api/models/org/tiny/revision/main" {
                let siblings: Vec<_> = FILES
                    .iter()
                    .chain(&["README.md", "onnx/model.safetensors"])
                    .map(|f| serde_json::json!({ "rfilename": f }))
                    .collect();
                let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings });
                ("200 OK", body.to_string().into_bytes())
            } else if let Some(file) = path.strip_prefix(&format!("/org/tiny/resolve/{COMMIT}/")) {
                match FILES.contains(&file) {
                    true => {
                        let whole = std::fs::read(fixture(&format!("tiny-llama3/{file}"))).unwrap();
                        headers = format!("x-repo-commit: {COMMIT}\r\netag: \"{file}-etag\"\r\n");
                        match range {
                            Some((a, b)) => {
                                let b = b.min(whole.len() - 1);
                                headers +=
                                    &format!("content-range: bytes {a}-{b}/{}\r\n", whole.len());
                                ("206 Partial Content", whole[a..=b].to_vec())
                            }
                            None => ("200 OK", whole),
                        }
                    }
                    false => ("404 Not Found", b"not found".to_vec()),
                }
            } else if path.starts_with("/api/models/org/gated/") {
                ("401 Unauthorized", b"gated".to_vec())
            } else {
                ("404 Not Found", b"not found".to_vec())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        }
    });
    (endpoint, seen)
}

#[test]
fn downloads_a_repo_into_the_hf_cache_layout() {
    let cache = tempfile::tempdir().unwrap();
    let (endpoint, seen) = serve_hub();
    let hub = config(&endpoint, cache.path(), false);
    let mut progress = Recorded::default();
    let snapshot = download_repo(&hub, "org/tiny", "main", &mut progress).expect("download");
    assert_eq!(
        snapshot,
        cache
            .path()
            .join("models--org--tiny/snapshots")
            .join(COMMIT)
    );
    // Progress only moves forward, across the 10 MB chunks of model.safetensors too, and ends
    // at each file's size.
    for file in FILES {
        let size = std::fs::metadata(fixture(&format!("tiny-llama3/{file}")))
            .unwrap()
            .len();
        let counts: Vec<u64> = progress
            .0
            .iter()
            .filter(|(label, _, total)| label == file && *total == Some(size))
            .map(|(_, done, _)| *done)
            .collect();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "{file}: {counts:?}"
        );
        assert_eq!(counts.last(), Some(&size), "{file}");
    }
    for file in FILES {
        assert_eq!(
            std::fs::read(snapshot.join(file)).unwrap(),
            std::fs::read(fixture(&format!("tiny-llama3/{file}"))).unwrap(),
            "{file}"
        );
    }
    assert!(!snapshot.join("README.md").exists());
    assert_eq!(
        std::fs::read_to_string(cache.path().join("models--org--tiny/refs/main")).unwrap(),
        COMMIT
    );
    // Present files are not fetched again: only the revision call reaches the server.
    download_repo(&hub, "org/tiny", "main", &mut QuietProgress).expect("second download");
    // An unknown model is a 404 with a hint.
    let err = download_repo(&hub, "org/missing", "main", &mut QuietProgress).unwrap_err();
    assert!(matches!(err, HubError::Http { status: 404, .. }), "{err}");
    assert!(err.to_string().contains("no such model"), "{err}");
    // A gated one is a 401 that says what to do.
    let err = download_repo(&hub, "org/gated", "main", &mut QuietProgress).unwrap_err();
    assert!(matches!(err, HubError::Http { status: 401, .. }), "{err}");
    assert!(err.to_string().contains("set HF_TOKEN"), "{err}");
    // Per file its metadata (a one-byte range), then its bytes in 10 MB ranges; nothing
    // fetched twice.
    let resolves: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.contains("/resolve/"))
        .cloned()
        .collect();
    for file in FILES {
        let size = std::fs::metadata(fixture(&format!("tiny-llama3/{file}")))
            .unwrap()
            .len();
        let asked = resolves
            .iter()
            .filter(|p| p.ends_with(&format!("/{file}")))
            .count();
        assert_eq!(asked as u64, 1 + size.div_ceil(10_000_000), "{file}");
    }
    // The Hub's own layout: the snapshot links into the blobs, no ref is kept for the commit.
    assert!(std::fs::symlink_metadata(snapshot.join("config.json"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!cache
        .path()
        .join("models--org--tiny/refs")
        .join(COMMIT)
        .exists());

    // Offline, the cached snapshot is used and loads as a model directory.
    let offline = config("http://127.0.0.1:9", cache.path(), true);
    let spec = ModelSpec::parse(Some("org/tiny")).unwrap();
    let resolved = resolve(
        &spec,
        Path::new("/nonexistent-home"),
        &DefaultModelSource::default(),
        &offline,
        &mut QuietProgress,
    )
    .expect("offline resolve from the cache");
    assert_eq!(resolved, ResolvedModel::HfDir(snapshot.clone()));
    assert_eq!(resolved.tokenizer().unwrap().vocab_size(), 49152);
}

#[test]
fn offline_without_a_cached_copy_is_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let hub = config("https://huggingface.co", cache.path(), true);
    let err = download_repo(
        &hub,
        "yueliu1999/GuardReasoner-1B",
        "main",
        &mut QuietProgress,
    )
    .unwrap_err();
    assert!(matches!(err, HubError::Offline { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("yueliu1999/GuardReasoner-1B") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
}

#[test]
fn an_unreachable_hub_fails_with_a_clear_message() {
    // A port that was just free: the connection is refused at once.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let hub = config(&format!("http://127.0.0.1:{port}"), cache.path(), false);
    let err = download_repo(
        &hub,
        "yueliu1999/GuardReasoner-1B",
        "main",
        &mut QuietProgress,
    )
    .unwrap_err();
    assert!(matches!(err, HubError::Unreachable { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot reach") && msg.contains("HF_HUB_OFFLINE=1"),
        "{msg}"
    );
}

#[test]
fn resolves_local_files_and_directories() {
    let hub = config("http://127.0.0.1:9", Path::new("/nonexistent"), true);
    let home = Path::new("/nonexistent-home");
    let source = DefaultModelSource::default();
    let dir = fixture("tiny-llama3");
    let spec = ModelSpec::parse(dir.to_str()).unwrap();
    let resolved = resolve(&spec, home, &source, &hub, &mut QuietProgress).unwrap();
    assert_eq!(resolved, ResolvedModel::HfDir(dir.clone()));

    let info = inspect(&resolved).unwrap();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.layers, Some(2));
    assert_eq!(info.kv_heads, Some(2));
    assert_eq!(info.vocab_size, 49152);
    assert_eq!(info.tensor_types.keys().collect::<Vec<_>>(), ["F32"]);
    // The safetensors payload is all f32 weights plus its header.
    let file_len = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(info.parameters * 4 < file_len && info.parameters * 4 > file_len - 64 * 1024);
    assert_eq!(info.eos, vec![(2, "<|im_end|>".to_string())]);

    let empty = tempfile::tempdir().unwrap();
    let spec = ModelSpec::parse(empty.path().to_str()).unwrap();
    let err = resolve(&spec, home, &source, &hub, &mut QuietProgress).unwrap_err();
    assert!(matches!(err, HubError::NotHfDir { .. }), "{err}");
}

#[test]
fn inspects_the_default_gguf() {
    let Some(path) = guardreasoner_testing::test_model() else {
        return;
    };
    let resolved = resolve(
        &ModelSpec::GgufFile(path.clone()),
        Path::new("/nonexistent-home"),
        &DefaultModelSource::default(),
        &config("http://127.0.0.1:9", Path::new("/nonexistent"), true),
        &mut QuietProgress,
    )
    .unwrap();
    let info = inspect(&resolved).unwrap();
    assert_eq!(info.format, "gguf");
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.context_length, Some(8192));
    assert_eq!(info.layers, Some(30));
    assert_eq!((info.attention_heads, info.kv_heads), (Some(9), Some(3)));
    assert_eq!(info.vocab_size, 49152);
    assert!(
        (134_000_000..136_000_000).contains(&info.parameters),
        "{}",
        info.parameters
    );
    assert!(
        info.tensor_types.contains_key("Q4_1"),
        "{:?}",
        info.tensor_types
    );
    assert_eq!(info.bos, Some((1, "<|im_start|>".to_string())));
    let text = info.to_string();
    assert!(
        text.contains("pre-tokenizer smollm") && text.contains("Q4_1"),
        "{text}"
    );
    assert_eq!(info.to_json()["vocab_size"], 49152);
}

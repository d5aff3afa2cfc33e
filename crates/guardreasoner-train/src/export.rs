//! Export to LLaMA-Factory for multi-GPU (DeepSpeed ZeRO-3) training at the paper's scale:
//! dataset files, `dataset_info.json`, and YAML configs for R-SFT and HS-DPO at 1B/3B/8B with
//! the hyperparameters of the official `train/*.sh` scripts.

use crate::data::TrainRecord;
use crate::dpo::PreferenceRecord;
use crate::TrainError;
use std::path::Path;

/// A named dataset to export.
pub enum ExportDataset {
    /// GuardReasonerTrain records for R-SFT.
    Sft {
        name: String,
        records: Vec<TrainRecord>,
    },
    /// Mined pairs for HS-DPO.
    Preference {
        name: String,
        records: Vec<PreferenceRecord>,
    },
}

/// Model sizes and their base checkpoints, as in the paper.
pub const SIZES: [(&str, &str); 3] = [
    ("1b", "meta-llama/Llama-3.2-1B"),
    ("3b", "meta-llama/Llama-3.2-3B"),
    ("8b", "meta-llama/Llama-3.1-8B"),
];

const DEEPSPEED_Z3: &str = r#"{
  "train_batch_size": "auto",
  "train_micro_batch_size_per_gpu": "auto",
  "gradient_accumulation_steps": "auto",
  "gradient_clipping": "auto",
  "zero_allow_untested_optimizer": true,
  "bf16": { "enabled": "auto" },
  "zero_optimization": {
    "stage": 3,
    "overlap_comm": true,
    "contiguous_gradients": true,
    "reduce_bucket_size": "auto",
    "stage3_prefetch_bucket_size": "auto",
    "stage3_param_persistence_threshold": "auto",
    "stage3_gather_16bit_weights_on_model_save": true
  }
}
"#;

fn write(path: &Path, text: &str) -> Result<(), TrainError> {
    std::fs::write(path, text).map_err(|e| TrainError::io(path, e))
}

fn valid_name(name: &str) -> Result<(), TrainError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(TrainError::Config(format!(
            "dataset name {name:?} must be non-empty ASCII letters, digits, '_' or '-'"
        )));
    }
    Ok(())
}

/// Writes `out/data/<name>.json` for each dataset, `out/data/dataset_info.json`,
/// `out/ds_z3_config.json`, `out/rsft_{1b,3b,8b}.yaml`, `out/hsdpo_{1b,3b,8b}.yaml` and a README.
pub fn write_llamafactory(out: &Path, datasets: &[ExportDataset]) -> Result<(), TrainError> {
    let data_dir = out.join("data");
    std::fs::create_dir_all(&data_dir).map_err(|e| TrainError::io(&data_dir, e))?;
    let mut info = serde_json::Map::new();
    let mut sft_names = Vec::new();
    let mut pref_names = Vec::new();
    for d in datasets {
        let (name, text, entry) = match d {
            ExportDataset::Sft { name, records } => {
                if let Some(i) = records.iter().position(|r| r.prefix.is_some()) {
                    // LLaMA-Factory's alpaca columns have no untrained assistant prefix: it
                    // would learn the output without what it is conditioned on.
                    return Err(TrainError::Data(format!(
                        "dataset {name}: record {} has a `prefix` (a direct-answer record), which LLaMA-Factory's format cannot carry; leave those records out",
                        i + 1
                    )));
                }
                sft_names.push(name.clone());
                (
                    name,
                    serde_json::to_string_pretty(records),
                    serde_json::json!({
                        "file_name": format!("{name}.json"),
                        "columns": { "prompt": "instruction", "query": "input", "response": "output" }
                    }),
                )
            }
            ExportDataset::Preference { name, records } => {
                pref_names.push(name.clone());
                (
                    name,
                    serde_json::to_string_pretty(records),
                    serde_json::json!({
                        "file_name": format!("{name}.json"),
                        "ranking": true,
                        "columns": {
                            "prompt": "instruction", "query": "input",
                            "chosen": "chosen", "rejected": "rejected"
                        }
                    }),
                )
            }
        };
        valid_name(name)?;
        if info.contains_key(name) {
            return Err(TrainError::Config(format!(
                "dataset name {name:?} given twice"
            )));
        }
        let text = text.map_err(|e| TrainError::Data(e.to_string()))?;
        write(&data_dir.join(format!("{name}.json")), &text)?;
        info.insert(name.clone(), entry);
    }
    let info_text = serde_json::to_string_pretty(&serde_json::Value::Object(info))
        .map_err(|e| TrainError::Data(e.to_string()))?;
    write(&data_dir.join("dataset_info.json"), &info_text)?;
    write(&out.join("ds_z3_config.json"), DEEPSPEED_Z3)?;
    for (size, base) in SIZES {
        if !sft_names.is_empty() {
            write(
                &out.join(format!("rsft_{size}.yaml")),
                &rsft_yaml(size, base, &sft_names),
            )?;
        }
        if !pref_names.is_empty() {
            write(
                &out.join(format!("hsdpo_{size}.yaml")),
                &hsdpo_yaml(size, &pref_names),
            )?;
        }
    }
    write(&out.join("README.md"), README)?;
    Ok(())
}

fn rsft_yaml(size: &str, base: &str, datasets: &[String]) -> String {
    format!(
        "# GuardReasoner R-SFT, {size}: the official train/R-SFT_{size}.sh as a LLaMA-Factory config.\n\
         # 4 GPUs x 6 per device x 16 accumulation = effective batch 384.\n\
         # Run: FORCE_TORCHRUN=1 CUDA_VISIBLE_DEVICES=0,1,2,3 llamafactory-cli train rsft_{size}.yaml\n\
         model_name_or_path: {base}\n\
         stage: sft\n\
         do_train: true\n\
         finetuning_type: full\n\
         deepspeed: ds_z3_config.json\n\
         dataset_dir: data\n\
         dataset: {}\n\
         template: llama3\n\
         cutoff_len: 2048\n\
         max_samples: 100000\n\
         packing: false\n\
         preprocessing_num_workers: 16\n\
         output_dir: saves/guardreasoner_rsft_{size}\n\
         logging_steps: 5\n\
         save_steps: 1000\n\
         plot_loss: true\n\
         report_to: none\n\
         per_device_train_batch_size: 6\n\
         gradient_accumulation_steps: 16\n\
         learning_rate: 5.0e-5\n\
         num_train_epochs: 3.0\n\
         lr_scheduler_type: cosine\n\
         warmup_steps: 0\n\
         max_grad_norm: 1.0\n\
         optim: adamw_torch\n\
         bf16: true\n\
         flash_attn: auto\n\
         ddp_timeout: 180000000\n\
         include_num_input_tokens_seen: true\n",
        datasets.join(",")
    )
}

fn hsdpo_yaml(size: &str, datasets: &[String]) -> String {
    format!(
        "# GuardReasoner HS-DPO, {size}: the official train/HS-DPO_{size}.sh as a LLaMA-Factory config.\n\
         # 4 GPUs x 1 per device x 64 accumulation = effective batch 256.\n\
         # NOTE: stock LLaMA-Factory ignores `sample_weight`: per-sample weights need a\n\
         # patched trainer (see README.md). Without it this is unweighted DPO + SFT term.\n\
         # Run: FORCE_TORCHRUN=1 CUDA_VISIBLE_DEVICES=0,1,2,3 llamafactory-cli train hsdpo_{size}.yaml\n\
         model_name_or_path: saves/guardreasoner_rsft_{size}\n\
         stage: dpo\n\
         do_train: true\n\
         finetuning_type: full\n\
         deepspeed: ds_z3_config.json\n\
         dataset_dir: data\n\
         dataset: {}\n\
         template: llama3\n\
         cutoff_len: 2048\n\
         max_samples: 100000\n\
         packing: false\n\
         preprocessing_num_workers: 16\n\
         output_dir: saves/guardreasoner_hsdpo_{size}\n\
         logging_steps: 5\n\
         save_steps: 1000\n\
         plot_loss: true\n\
         report_to: none\n\
         per_device_train_batch_size: 1\n\
         gradient_accumulation_steps: 64\n\
         learning_rate: 5.0e-6\n\
         num_train_epochs: 2.0\n\
         lr_scheduler_type: cosine\n\
         warmup_steps: 0\n\
         max_grad_norm: 1.0\n\
         optim: adamw_torch\n\
         pref_loss: sigmoid\n\
         pref_beta: 0.01\n\
         pref_ftx: 2.0\n\
         bf16: true\n\
         flash_attn: auto\n\
         ddp_timeout: 180000000\n\
         include_num_input_tokens_seen: true\n",
        datasets.join(",")
    )
}

const README: &str = "# GuardReasoner training with LLaMA-Factory\n\
\n\
Written by `guardreasoner export llamafactory`. The configs reproduce the paper's runs (the\n\
official `train/R-SFT_*.sh` and `train/HS-DPO_*.sh`): full fine-tuning of Llama-3.2-1B/3B and\n\
Llama-3.1-8B on 4 GPUs with DeepSpeed ZeRO-3 (`ds_z3_config.json`), bf16, cosine schedule,\n\
no warmup, clipping 1.0; R-SFT lr 5e-5, 3 epochs, effective batch 384; HS-DPO lr 5e-6,\n\
2 epochs, effective batch 256, sigmoid DPO with beta 0.01 and an SFT term (pref_ftx) 2.0.\n\
\n\
1. `llamafactory-cli train rsft_1b.yaml` (and 3b, 8b).\n\
2. Sample 4 outputs per training input from each R-SFT model (T=0.7, top-p 0.95, max 2048 new\n\
   tokens) and mine pairs with `guardreasoner mine`; export them again with `--pairs`.\n\
3. `llamafactory-cli train hsdpo_1b.yaml` (and 3b, 8b).\n\
\n\
## Per-sample DPO weights need a patched trainer\n\
\n\
The pair files carry `sample_weight` (hard samples weigh more, in [0.8, 1.2]). Stock\n\
LLaMA-Factory does not read this column: its dataset converter drops it and its DPO trainer\n\
averages the per-pair losses unweighted. Reproducing HS-DPO exactly needs a patched\n\
LLaMA-Factory that keeps `sample_weight` through the ranking data collator and multiplies each\n\
pair's loss (`-log sigmoid(beta * margin) + ftx * nll_mean(chosen)`) by it before averaging,\n\
which is what `guardreasoner train dpo` does. Without the patch the runs are plain DPO.\n\
\n\
Note: `template: llama3` (as the official scripts) wraps the prompt in the Llama-3 chat\n\
template; `guardreasoner train sft` instead trains on the raw `instruction + \"\\n\" + input`\n\
prompt that GuardReasoner inference feeds the model.\n";
